"""The "adding a technique" example (docs/techniques.md, which the README points to), run as
written: one class and one list entry give a working technique with its own flag, check and record."""
import json
import re

import pytest

from conftest import ROOT
from loop import registry


@pytest.fixture
def example(monkeypatch):
    text = open(f"{ROOT}/docs/techniques.md", encoding="utf-8").read()
    code = re.search(r"## Adding a technique.*?```python\n(.*?)```", text, re.S).group(1)
    monkeypatch.setattr(registry, "TECHNIQUES", list(registry.TECHNIQUES))  # the example appends to it
    namespace = {}
    exec(compile(code, "docs/techniques.md", "exec"), namespace)
    return namespace["Damp"]


def test_the_readme_example_adds_a_working_technique(example, tmp_path, capsys):
    import sdvideo

    flags = ["--model", "tiny", "--height", "64", "--width", "64", "--steps", "3", "--max-frames", "3", "--quiet"]
    assert sdvideo.main([*flags, "--out", str(tmp_path / "plain")]) == 0
    assert sdvideo.main([*flags, "--damp", "0.9", "--out", str(tmp_path / "damped")]) == 0
    record = json.loads((tmp_path / "damped" / "run.json").read_text())
    assert record["techniques"]["hooks"] == [{"technique": "Damp", "factor": 0.9}]
    plain = (tmp_path / "plain" / "frames" / "00001.png").read_bytes()
    assert (tmp_path / "damped" / "frames" / "00001.png").read_bytes() != plain
    assert sdvideo.main([*flags, "--damp", "2", "--out", str(tmp_path / "bad")]) == 2
    assert "--damp must be in (0, 1]" in capsys.readouterr().err
