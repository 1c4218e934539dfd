"""The layout: imports go one way (each layer imports only the layers before it, and itself), no
module imports itself back through another, and the top level holds the files users know."""
import ast
import glob
import os

from conftest import ROOT

# lowest first; a module may import its own layer and those before it. The web app (cli/app*.py)
# drives runs and their measures, so it sits above measure/, below sdvideo.py which registers it.
LAYERS = (("common",), ("latent_ops", "noise", "convert_original_controlnet_to_diffusers"), ("poses",),
          ("pose_extract",), ("loop",), ("loading",), ("toy",), ("cli",), ("measure",), ("cli.app",), ("sdvideo",))
RANK = {unit: rank for rank, units in enumerate(LAYERS) for unit in units}
TOP_LEVEL = {"sdvideo", "convert_original_controlnet_to_diffusers", "latent_ops", "noise", "pose_extract"}


def layer(name):
    """The LAYERS unit of a dotted module name: cli.app and its parts cli.app_*, else the top-level name."""
    return "cli.app" if name == "cli.app" or name.startswith("cli.app_") else name.split(".")[0]


def modules():
    """Every module of ours (tests, benchmarks and demo scripts aside) -> its dotted name and path."""
    paths = glob.glob(os.path.join(ROOT, "*.py")) + glob.glob(os.path.join(ROOT, "*", "*.py"))
    found = {}
    for path in paths:
        parts = os.path.relpath(path, ROOT)[:-3].split(os.sep)
        if parts[0] in ("tests", "benchmarks", "demo"):
            continue
        found[".".join(p for p in parts if p != "__init__")] = path
    return found


def imports(path, known):
    """The modules of ours that a file imports, anywhere in it (function-level imports too)."""
    names = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names |= {f"{node.module}.{a.name}" for a in node.names} | {node.module}
    return {n for n in names if n in known}


def test_every_import_goes_down_or_within_its_layer():
    known = modules()
    upward = [(name, other) for name, path in known.items() for other in imports(path, known)
              if RANK[layer(other)] > RANK[layer(name)]]
    assert not upward, f"upward imports (module, imported): {upward}"


def test_there_are_no_import_cycles():
    known = modules()
    graph = {name: imports(path, known) - {name, name.split(".")[0]} for name, path in known.items()}
    state = {}

    def visit(name, trail):
        if state.get(name) == "done":
            return
        assert state.get(name) != "open", f"import cycle: {' -> '.join(trail + [name])}"
        state[name] = "open"
        for other in sorted(graph[name]):
            visit(other, trail + [name])
        state[name] = "done"

    for name in sorted(graph):
        visit(name, [])


def test_the_top_level_holds_the_files_users_know_and_packages_the_rest():
    known = modules()
    assert {name for name in known if "." not in name and name not in RANK} == set(), "a package or module outside LAYERS"
    assert {name for name in known if "." not in name and os.path.isfile(os.path.join(ROOT, f"{name}.py"))} == TOP_LEVEL
    assert all(os.path.isfile(os.path.join(ROOT, package, "__init__.py")) for package in RANK
               if package not in TOP_LEVEL and "." not in package)


def test_latent_ops_and_noise_import_nothing_of_ours():
    known = modules()
    assert imports(known["latent_ops"], known) == set() and imports(known["noise"], known) == set()


MAX_MODULE_LINES, MAX_FUNCTION_LINES = 350, 60  # STYLE.md's bounds: split a module by job before it passes them


def test_every_module_and_function_is_within_its_bounds():
    scripts = {os.path.relpath(p, ROOT): p for folder in ("benchmarks", "demo")
               for p in glob.glob(os.path.join(ROOT, folder, "*.py"))}
    too_long = []
    for name, path in {**modules(), **scripts}.items():
        text = open(path, encoding="utf-8").read()
        if text.count("\n") > MAX_MODULE_LINES:
            too_long.append((name, text.count("\n")))
        too_long += [(f"{name}.{node.name}", node.end_lineno - node.lineno + 1) for node in ast.walk(ast.parse(text))
                     if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                     and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not too_long, f"past the bounds (lines): {too_long}"
