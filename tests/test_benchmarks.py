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


def test_a_peer_claim_is_judged_in_each_setting_and_not_measurable_where_the_probe_says_so(monkeypatch):
    monkeypatch.syspath_prepend(os.path.join(ROOT, "benchmarks"))
    import toy_claims

    names = {n for _, _, _, settings in toy_claims.PEER_CLAIMS for _, a, b in settings for n in (a, b)}
    metrics = dict(warping_error=1.0, warp_ssim=0.5, background_flickering=0.9, pose_iou=0.7, seconds_per_frame=1.0,
                   peak_memory_gib=1.0)
    by_name = {n: dict(metrics) for n in names | set(toy_claims.ON_POSE)}
    by_name["rave"].update(warping_error=0.5, warp_ssim=0.6)  # RAVE in its own setting: steadier, higher SSIM
    by_name["streamv2v"]["warping_error"] = 2.0  # StreamV2V in its own setting: less steady
    table = toy_claims.verdicts(toy_claims.peer_claims(by_name))
    rave = "RAVE: the grid steadies the clip against per-frame generation from the same start"
    assert table[f"{rave}: own setting: inversion with the ControlNet, K=3"] == "holds"
    assert table[f"{rave}: from noise, K=3"] == "does not hold"
    stream = "StreamV2V: its feature bank lowers warping error against per-frame generation (102.99 vs 117.01, its scale)"
    assert table[f"{stream}: own setting: img2img at 0.4, fixed noise"] == "does not hold"
    moved = toy_claims.moved_by_setting(by_name)
    assert f"- {rave}: holds in its own setting; does not hold from noise, K=3 (moved)" in moved.splitlines()
    probe = {"ratios": {m: {"a prompt": 0.5} for m in toy_claims.MECHANISM.values()}}
    probe["ratios"]["grid (RAVE, K=2)"]["another"] = 1.3  # one prompt above target: the grid cannot be judged
    table = toy_claims.verdicts(toy_claims.peer_claims(by_name, probe))
    assert table[f"{rave}: own setting: inversion with the ControlNet, K=3"] == (
        "not measurable on the toy world (grid (RAVE, K=2): probe ratio 1.30) (measured: holds)")
    assert table[f"{stream}: own setting: img2img at 0.4, fixed noise"] == "does not hold"
