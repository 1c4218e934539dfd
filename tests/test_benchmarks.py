"""The benchmark scripts' argument checks (their numbers are in BENCHMARKS.md, never asserted here)."""
import os
import subprocess
import sys

import pytest

from conftest import ROOT


@pytest.mark.parametrize("flags, message", [
    (["--frames", "0"], "--frames, --steps and --batch-size must be at least 1"),
    (["--configs", "axz"], "--configs takes letters of abcde"),
])
def test_bench_refuses_bad_arguments_before_any_work(flags, message):
    result = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "bench.py"), *flags],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_bench_uses_no_fixed_temporary_file_names():
    text = open(os.path.join(ROOT, "benchmarks", "bench.py")).read()
    assert "/tmp/" not in text and "tempfile.mkdtemp" in text


def test_the_toy_report_names_the_claims_whose_verdict_changed(monkeypatch):
    import copy
    import json

    monkeypatch.syspath_prepend(os.path.join(ROOT, "benchmarks"))
    import toy_claims

    with open(os.path.join(ROOT, "benchmarks", "results", "toy_world_64.json"), encoding="utf-8") as f:
        first = {r["run"].removeprefix("swing-"): r for r in json.load(f)["techniques"]}
    assert toy_claims.changed_verdicts(first, first).startswith("- none")
    flipped = copy.deepcopy(first)
    flipped["copying"]["warping_error"] = 10 * flipped["blending"]["warping_error"]
    assert toy_claims.changed_verdicts(flipped, first) == (
        "- naive blending is limited next to intermediate copying (less steady): holds on the 64 px model, "
        "does not hold now")
