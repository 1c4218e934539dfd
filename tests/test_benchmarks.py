"""The benchmark scripts' argument checks (their numbers are in BENCHMARKS.md, never asserted here)."""
import os
import subprocess
import sys

import numpy as np
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


def _runs(names, values, pairs=((0, "swing"), (1, "swing"), (2, "swing"), (0, "jacks"), (1, "jacks"), (2, "jacks"))):
    """{setting: {(seed, input): row}} with each setting's metric rows from ``values(name, index)``."""
    return {n: {pair: values(n, i) for i, pair in enumerate(pairs)} for n in names}


def test_a_toy_claim_holds_fails_or_is_undetermined_by_its_interval_over_seeds_and_inputs(monkeypatch):
    monkeypatch.syspath_prepend(os.path.join(ROOT, "benchmarks"))
    import toy_claims

    names = {n for _, _, _, settings in toy_claims.SEED_CLAIMS for _, a, b in settings for n in (a, b)}
    jitter = (0.01, -0.02, 0.015, -0.01, 0.02, -0.015)

    def values(name, i):  # fixed noise steadier on every pair; copying as blending up to noise of both signs
        warping = {"independent-noise": 1.0, "fixed-noise": 0.5, "progressive-noise": 1.5}.get(name, 1.0)
        return dict(warping_error=warping * (1 + (jitter[i] if name == "copying" else 0)), warp_ssim=0.5,
                    pose_iou=0.7)

    table = toy_claims.verdicts(toy_claims.claims_table(_runs(names, values), toy_claims.SEED_CLAIMS))
    assert table["fixed noise makes frames more coherent than independent noise: from noise"] == "holds"
    assert table["progressive noise makes frames more coherent than independent noise: from noise"] == "does not hold"
    assert table["naive blending is limited next to intermediate copying (copying is steadier): from fixed noise"] \
        == "undetermined"
    runs = _runs(names - {"keyframes"}, values)
    claim = ("keyframes plus aligned differences scale (steadier than independent noise, at fewer UNet "
             "evaluations): from noise")
    assert toy_claims.verdicts(toy_claims.claims_table(runs, toy_claims.SEED_CLAIMS))[claim] == "not run"


def test_the_toy_report_names_the_claims_whose_verdict_changed():
    import importlib
    import sys

    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    toy_claims = importlib.import_module("toy_claims")
    now = {"a": "holds", "b": "undetermined", "c": "not run"}
    assert toy_claims.changed_verdicts(now, dict(now)).startswith("- none")
    assert toy_claims.changed_verdicts(now, {"a": "holds", "b": "holds", "c": "holds"}) == (
        "- b: holds in the single-run table, undetermined now")
    assert "not at hand" in toy_claims.changed_verdicts(now, None)


def test_a_peer_claim_is_judged_in_each_setting_and_not_measurable_where_the_probe_says_so(monkeypatch):
    monkeypatch.syspath_prepend(os.path.join(ROOT, "benchmarks"))
    import toy_claims

    names = {n for _, _, _, settings in toy_claims.PEER_CLAIMS for _, a, b in settings for n in (a, b)}

    def values(name, i):
        row = dict(warping_error=1.0 + 0.01 * i, warp_ssim=0.5 + 0.01 * i, background_flickering=0.9, pose_iou=0.7)
        if name == "rave":  # RAVE in its own setting: steadier, higher SSIM
            row.update(warping_error=0.5 + 0.01 * i, warp_ssim=0.6 + 0.01 * i)
        if name == "streamv2v":  # StreamV2V in its own setting: less steady
            row["warping_error"] = 2.0 + 0.01 * i
        return row

    runs = _runs(names | set(toy_claims.ON_POSE), values)
    table = toy_claims.verdicts(toy_claims.peer_claims(runs))
    rave = "RAVE: the grid steadies the clip against per-frame generation from the same start"
    assert table[f"{rave}: own setting: inversion with the ControlNet, K=3"] == "holds"
    assert table[f"{rave}: from noise, K=2"] == "undetermined"  # the same numbers: a change of exactly 0
    stream = "StreamV2V: its feature bank lowers warping error against per-frame generation (102.99 vs 117.01, its scale)"
    assert table[f"{stream}: own setting: img2img at 0.4, fixed noise"] == "does not hold"
    assert table["every peer in its own setting stays on the pose (IoU >= 0.6)"] == "holds"
    moved = toy_claims.moved_by_setting(runs)
    assert f"- {rave}: holds in its own setting; undetermined from noise, K=2 (moved)" in moved.splitlines()
    probe = {"ratios": {m: {"a prompt": 0.5} for m in toy_claims.MECHANISM.values()}}
    probe["ratios"]["grid (RAVE, K=2)"]["another"] = 1.3  # one prompt above target: the grid cannot be judged
    table = toy_claims.verdicts(toy_claims.peer_claims(runs, probe))
    assert table[f"{rave}: own setting: inversion with the ControlNet, K=3"] == (
        "not measurable on the toy world (grid (RAVE, K=2): probe ratio 1.30) (measured: holds)")
    assert table[f"{stream}: own setting: img2img at 0.4, fixed noise"] == "does not hold"


def test_deepcaches_pose_cost_is_judged_against_its_margin_by_its_interval(monkeypatch):
    monkeypatch.syspath_prepend(os.path.join(ROOT, "benchmarks"))
    import toy_cache

    losses = {"cache-3": 0.005, "cache-5": 0.05, "frames-2": 0.02}  # the cached settings' pose IoU loss per pair
    jitter = (0.0, 0.03, -0.03, 0.03, -0.03, 0.0)  # frames-2's loss spreads across the margin

    def values(name, i):
        loss = losses.get(name, 0.0) + (jitter[i] if name == "frames-2" else 0.0)
        return dict(pose_iou=0.7 - loss, warping_error=1.0 - 0.1 * (name != "plain"), shirt_color_accuracy=1.0,
                    unet_evals_per_frame=10.0, seconds_per_frame=1.0)

    rows = [dict(row, setting=name, seed=seed, input=clip)
            for name, pairs in _runs({"plain", *losses}, values).items() for (seed, clip), row in pairs.items()]
    lines = {line.split(" (")[0].strip("| "): line for line in toy_cache.table(rows).splitlines()[2:]}
    assert "| holds |" in lines["cache-3"] and "| does not hold |" in lines["cache-5"]
    assert "| undetermined |" in lines["frames-2"] and "-10.0%" in lines["cache-3"]
    assert "not run" in lines["copying-cache-3"]


def test_the_probes_split_of_a_spread_into_mean_colour_and_detail(monkeypatch):
    """attention_probe's split: a frame shifted by one colour differs in its mean colour alone, a frame
    with its pixels moved around the same mean in its detail alone; the parts' squares add up to the
    whole's."""
    monkeypatch.syspath_prepend(os.path.join(ROOT, "benchmarks"))
    import attention_probe

    rng = np.random.default_rng(0)
    base = rng.uniform(50, 200, (1, 8, 8, 3))
    shifted = np.concatenate([base, base + [10, 20, 30]])
    assert attention_probe.colour_and_detail(shifted) == pytest.approx((np.sqrt(1400 / 3), 0), abs=1e-9)
    moved = np.concatenate([base, base[:, ::-1]])  # the same pixels mirrored: the same mean colour
    colour, detail = attention_probe.colour_and_detail(moved)
    assert colour == pytest.approx(0, abs=1e-9) and detail > 1
    frames = rng.uniform(0, 255, (4, 8, 8, 3))
    colour, detail = attention_probe.colour_and_detail(frames)
    whole = np.sqrt(((frames[1:] - frames[:1]) ** 2).mean())
    assert colour ** 2 + detail ** 2 == pytest.approx(whole ** 2, rel=1e-9) and colour > 0


def test_the_probe_runs_on_real_weights_given_as_folders_and_writes_nothing(tiny_pipe, tmp_path, monkeypatch,
                                                                           capsys):
    """attention_probe --base/--controlnet (how a user with SD measures what the toy's target stands for),
    here on the tiny random model: a full table printed, benchmarks/results untouched; a missing folder or
    a --base without its ControlNet is one line."""
    monkeypatch.syspath_prepend(os.path.join(ROOT, "benchmarks"))
    import attention_probe

    tiny_pipe.save_pretrained(tmp_path / "base")
    tiny_pipe.controlnet.save_pretrained(tmp_path / "controlnet")
    results = os.path.join(ROOT, "benchmarks", "results", "attention_probe.json")
    before = os.stat(results).st_mtime_ns
    attention_probe.main(["--base", str(tmp_path / "base"), "--controlnet", str(tmp_path / "controlnet"),
                          "--steps", "1", "--size", "64"])
    table = capsys.readouterr().out
    assert "guidance 7.5" in table and os.stat(results).st_mtime_ns == before
    for name in (*attention_probe.TECHNIQUES, *attention_probe.DIAGNOSTICS):
        row = next(line for line in table.splitlines() if line.startswith(f"| {name} |"))
        assert all(float(cell) > 0 for cell in row.split("|")[2:5]), row
    for argv, message in ((["--base", str(tmp_path / "base")], "--controlnet with --base"),
                          (["--base", str(tmp_path / "none"), "--controlnet", str(tmp_path / "controlnet")],
                           "base model path not found")):
        with pytest.raises(SystemExit) as exit_info:
            attention_probe.main(argv)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and message in err.strip().splitlines()[-1] and "Traceback" not in err


def test_the_probes_cell_local_attention_is_each_frames_own_attention(monkeypatch):
    """attention_probe's diagnostic: on a 2x2 grid picture, self-attention within each cell equals
    attending over that frame alone; cross-attention passes through."""
    import torch
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    monkeypatch.syspath_prepend(os.path.join(ROOT, "benchmarks"))
    import attention_probe

    torch.manual_seed(0)
    attn = Attention(16, heads=2, dim_head=8)
    cells = torch.randn(4, 2, 9, 16)  # 4 cells of a 6x6 grid (3x3 tokens each), batch 2, 16 channels
    grid = torch.cat([torch.cat([cells[0].view(2, 3, 3, 16), cells[1].view(2, 3, 3, 16)], 2),
                      torch.cat([cells[2].view(2, 3, 3, 16), cells[3].view(2, 3, 3, 16)], 2)], 1).reshape(2, 36, 16)
    processor = attention_probe.CellLocalAttention(AttnProcessor2_0())
    out = processor(attn, grid).view(2, 2, 3, 2, 3, 16).permute(1, 3, 0, 2, 4, 5).reshape(4, 2, 9, 16)
    for cell in range(4):
        torch.testing.assert_close(out[cell], AttnProcessor2_0()(attn, cells[cell]), rtol=1e-5, atol=1e-6)
    text = torch.randn(2, 5, 16)
    torch.testing.assert_close(processor(attn, grid, text), AttnProcessor2_0()(attn, grid, text))
