"""Every flag an error message suggests exists (a message naming a flag that is gone misleads)."""
import ast
import glob
import os
import re

from conftest import ROOT

FLAG = re.compile(r"--[a-z][a-z0-9_-]*[a-z0-9]")
OTHER_TOOLS = {"--help": "argparse's own", "--no-deps": "pip's", "--write_json": "OpenPose's"}


def project_files():
    return glob.glob(os.path.join(ROOT, "*.py")) + glob.glob(os.path.join(ROOT, "*", "*.py"))


def strings_in(node):
    return [n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def test_every_flag_named_in_an_error_message_is_defined():
    defined, named = set(), {}
    for path in project_files():
        tree = ast.parse(open(path, encoding="utf-8").read())
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            function = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if function == "add_argument":
                defined.update(s for s in strings_in(node) if s.startswith("--"))
            elif function in ("UserError", "error", "_missing_backend", "print", "ArgumentTypeError", "exit"):
                for text in strings_in(node):
                    for flag in FLAG.findall(text):
                        named.setdefault(flag, os.path.basename(path))
    assert len(defined) > 60 and len(named) > 30  # the scan found the parsers and the messages
    unknown = {flag: where for flag, where in named.items() if flag not in defined and flag not in OTHER_TOOLS}
    assert unknown == {}
