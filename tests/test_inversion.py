"""DDIM inversion of the source clip (loop/inversion.py, loading/inversions.py): its known answers,
its cache, its refusals, the presets that start from the source, and every technique on inverted
latents."""
import json

import numpy as np
import pytest
import torch
from diffusers import DDIMInverseScheduler

import latent_ops
import sdvideo
from conftest import ROOT, assert_tensors_close
from loop import indices, inversion, pipeline
from measure.metrics import psnr
from test_sdvideo import DEMO_POSES, DEMO_VIDEO, run_cli

CLIP = ["--video", DEMO_VIDEO, "--poses", DEMO_POSES, "--max-frames", "4"]


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """Each test its own inversion cache (SDVIDEO_CACHE)."""
    monkeypatch.setenv("SDVIDEO_CACHE", str(tmp_path / "cache"))


def test_an_inverse_step_undone_by_ddims_step_gives_the_latent_back():
    generator = torch.Generator().manual_seed(0)
    sample, model_output = torch.randn(2, 4, 8, 8, generator=generator), torch.randn(2, 4, 8, 8, generator=generator)
    for prediction_type in ("epsilon", "v_prediction", "sample"):
        up = latent_ops.ddim_inverse_step(model_output, sample, 0.9, 0.4, prediction_type)
        # DDIM's step down with the same x0 and eps: z = sqrt(abar) x0 + sqrt(1 - abar) eps
        x0 = latent_ops.predicted_x0(model_output, sample, 0.9, prediction_type)
        eps = latent_ops.predicted_noise(model_output, sample, 0.9, prediction_type)
        assert_tensors_close(0.4 ** 0.5 * x0 + 0.6 ** 0.5 * eps, up)
        assert_tensors_close((up - 0.6 ** 0.5 * eps) / 0.4 ** 0.5 * 0.9 ** 0.5 + 0.1 ** 0.5 * eps, sample)


@pytest.mark.parametrize("strength", [1.0, 0.5])
def test_inversion_equals_diffusers_ddim_inverse_scheduler(tiny_pipe, strength):
    clean = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    maps = np.zeros((3, 64, 64, 3), np.uint8)
    embeds = pipeline.encode_prompt(tiny_pipe, pipeline.GenerationConfig(prompt="a cat", guidance=1.0))
    schedule = inversion.inversion_schedule(tiny_pipe.scheduler, 10, 10, strength)
    ours = inversion.invert(tiny_pipe, clean, maps, embeds, schedule, 0.0, 2, pipeline.LoopStats(), progress=False)
    reference = DDIMInverseScheduler.from_config(tiny_pipe.scheduler.config)
    reference.set_timesteps(10)
    latents = clean.clone()
    with torch.no_grad():
        for t in reference.timesteps[:len(schedule.timesteps)]:
            noise_pred = tiny_pipe.unet(latents, t, encoder_hidden_states=embeds.expand(3, -1, -1)).sample
            latents = reference.step(noise_pred, t, latents).prev_sample
    assert len(schedule.timesteps) == round(10 * strength)
    assert_tensors_close(ours, latents)


@pytest.mark.parametrize("steps, inversion_steps, strength", [(20, 20, 0.7), (20, 50, 1.0), (10, 4, 0.6)])
def test_inversion_climbs_to_the_timestep_where_denoising_starts(tiny_pipe, steps, inversion_steps, strength):
    schedule = inversion.inversion_schedule(tiny_pipe.scheduler, steps, inversion_steps, strength)
    tiny_pipe.scheduler.set_timesteps(steps)
    start = inversion.start_step(steps, strength)
    assert schedule.timesteps[-1] == int(tiny_pipe.scheduler.timesteps[start])
    assert schedule.timesteps == sorted(set(schedule.timesteps))
    assert len(schedule.alpha_bars) == len(schedule.timesteps) + 1
    assert schedule.alpha_bars == sorted(schedule.alpha_bars, reverse=True)  # each step noisier


def test_inverting_and_denoising_with_the_same_prompt_gives_the_toy_source_back():
    """Known answer: at guidance 1, ControlNet off, the inverted swing comes back within 1.5 dB of
    the VAE round trip (benchmarks/inversion.py: 0.0-0.7 dB), SDEdit at the same strength far from it."""
    from demo.make_toy_source import TOY_SOURCE_PROMPT

    pipe = sdvideo.load(model="toy", device="cpu")
    common = dict(pipe=pipe, video=f"{ROOT}/demo/golf_swing_toy.mp4", poses=DEMO_POSES, max_frames=4, stride=8,
                  prompt=TOY_SOURCE_PROMPT, guidance=1.0, controlnet_scale=0.0, quiet=True)
    inverted = sdvideo.generate(**common, invert_source=True, source_prompt=TOY_SOURCE_PROMPT, strength=1.0)
    sdedit = sdvideo.generate(**common, init_from_source=True, strength=1.0)
    from common import video_io

    source = np.stack(video_io.read_video(common["video"], [0, 8, 16, 24], 128, 128, "crop"))
    latents = pipeline.encode(pipe.pipe, source, 4)
    round_trip = np.stack(list(pipeline.decode(pipe.pipe, latents, 4, progress=False)))
    assert psnr(inverted.frames, source) > psnr(round_trip, source) - 1.5
    assert psnr(inverted.frames, source) > psnr(sdedit.frames, source) + 6


def inversion_cost(out):
    return json.loads((out / "run.json").read_text())["cost"]["inversion"]


def test_a_second_run_reads_the_cached_inversion_and_a_changed_clip_or_setting_does_not(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    assert run_cli(*CLIP, "--invert-source", "--strength", "1", "--out", str(first)) == 0
    assert run_cli(*CLIP, "--invert-source", "--strength", "1", "--prompt", "another", "--out", str(second)) == 0
    assert inversion_cost(first) == {"unet_evals_per_frame": 2, "controlnet_evals_per_frame": 0, "from_cache": False}
    assert inversion_cost(second)["from_cache"] is True  # the target prompt is not the inversion's
    for index, flags in enumerate([["--source-prompt", "a dancer"], ["--inversion-control"], ["--strength", "0.5"],
                                   ["--inversion-steps", "4"], ["--max-frames", "3"]]):
        out = tmp_path / f"changed{index}"
        assert run_cli(*CLIP, "--invert-source", "--strength", "1", *flags, "--out", str(out)) == 0
        assert inversion_cost(out)["from_cache"] is False, flags
    assert inversion_cost(tmp_path / "changed1")["controlnet_evals_per_frame"] == 2


def test_the_cached_inversion_gives_the_frames_of_a_fresh_one(tmp_path):
    runs = [sdvideo.generate(model="tiny", height=64, width=64, steps=2, video=DEMO_VIDEO, poses=DEMO_POSES,
                             max_frames=3, invert_source=True, quiet=True) for _ in range(2)]
    assert [r.record["cost"]["inversion"]["from_cache"] for r in runs] == [False, True]
    assert np.array_equal(runs[0].frames, runs[1].frames)


@pytest.mark.parametrize("flags, message", [
    (["--invert-source"], "--invert-source needs --video"),
    (["--preset", "rave"], "--preset rave starts from the DDIM inversion of the source clip: give the clip with --video"),
    (["--preset", "streamv2v"], "--preset streamv2v starts from the source clip, noised (img2img): give the clip"),
    ([*CLIP, "--invert-source", "--scheduler", "euler"], "--invert-source runs DDIM inversion and needs --scheduler ddim"),
    ([*CLIP, "--invert-source", "--init-from-source"], "give one"),
    ([*CLIP, "--invert-source", "--inversion-steps", "0"], "--inversion-steps must be at least 1"),
    ([*CLIP, "--invert-source", "--steps", "4", "--strength", "0.5", "--copy-step", "1"],
     "--copy-step 1 comes before step 2, where --strength 0.5 starts denoising"),
    ([*CLIP, "--init-from-source", "--steps", "4", "--strength", "0.5", "--copy-step", "1"], "comes before step 2"),
])
def test_inversion_without_what_it_needs_is_refused_in_one_line(tmp_path, capsys, flags, message):
    assert run_cli(*flags, "--out", str(tmp_path / "run")) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and not (tmp_path / "run").exists()


def test_flow_gated_inversion_keeps_each_inverted_latent_pixel_where_the_source_is_still():
    from types import SimpleNamespace

    from loop.techniques import StartFromInversion

    inverted = torch.randn(4, 4, 2, 2, generator=torch.Generator().manual_seed(0))
    moving = torch.zeros(3, 2, 2)
    moving[:, 0, 0] = 1  # one latent pixel moves at every frame pair
    sources = SimpleNamespace(inverted=lambda: (inverted, {"steps": 4}), moving=lambda threshold, relative: moving)
    args = SimpleNamespace(invert_source=True, strength=1.0, noise_flow_threshold=0.2, noise_flow_relative=True)
    gated = StartFromInversion.from_args(SimpleNamespace(**vars(args), noise="flow-gated"), sources)
    assert torch.equal(gated.inverted_latents[:, :, 0, 0], inverted[:, :, 0, 0])  # moving: each frame its own
    assert torch.equal(gated.inverted_latents[:, :, 1:], inverted[:1, :, 1:].expand(4, -1, -1, -1))  # still: frame 0's
    assert gated.inversion == {"steps": 4, "flow_gated": True}
    plain = StartFromInversion.from_args(SimpleNamespace(**vars(args), noise="independent"), sources)
    assert torch.equal(plain.inverted_latents, inverted) and plain.inversion == {"steps": 4}


def test_relative_flow_threshold_is_a_fraction_of_each_pairs_largest_flow():
    from types import SimpleNamespace

    from loading.sources import Sources

    flows = torch.zeros(2, 1, 3, 2)  # latent pixels: pair 0 moves 0.1, 0.5, 1.0; pair 1 ten times as far
    flows[0, 0, :, 0] = torch.tensor([0.1, 0.5, 1.0])
    flows[1] = 10 * flows[0]
    fake = SimpleNamespace(flows=lambda: (flows, torch.ones(2, 1, 1, 3)), pipe=SimpleNamespace(vae_scale_factor=8))
    assert Sources.moving(fake, 0.2, relative=True).tolist() == [[[0, 1, 1]], [[0, 1, 1]]]
    assert Sources.moving(fake, 2.0).tolist() == [[[0, 1, 1]], [[1, 1, 1]]]  # 8 px per latent pixel


PRESET_HOOKS = {
    "rave": {"StartFromInversion": {"strength": 1.0}, "Grid": {"k": 3, "shuffle": True}},
    "flatten": {"StartFromInversion": {"strength": 1.0}, "TrajectoryAttention": {}},
    "vidtome": {"StartFromInversion": {"strength": 1.0}, "TokenMerge": {"ratio": 0.9, "chunk": 4, "global_ratio": 0.8}},
    "ground-a-video": {"StartFromInversion": {"strength": 1.0}},
    "streamv2v": {"StartFromLatents": {"strength": 0.4}, "FeatureBank": {"frames": 1, "fusion": 0.8, "threshold": 0.98}},
    "rerender": {"StartFromLatents": {"strength": 0.75}, "CrossFrameAttention": {"mode": "anchor+previous"},
                 "FlowFusion": {"weight": 0.5, "x0_steps": list(indices.parse_step_range("0:0.1", 4)),
                                "latent_steps": list(indices.parse_step_range("0.5:0.8", 4))}},
}
INVERSION_SETTINGS = {"rave": ("", True, 4), "flatten": ("", False, 100), "vidtome": ("", False, 4),  # at --steps 4
                      "ground-a-video": ("", False, 4)}


@pytest.mark.parametrize("preset", sorted(PRESET_HOOKS))
def test_each_peer_preset_runs_in_its_papers_setting_and_records_it(tmp_path, preset):
    out = tmp_path / preset
    assert run_cli(*CLIP, "--steps", "4", "--preset", preset, "--out", str(out)) == 0
    record = json.loads((out / "run.json").read_text())
    hooks = {h["technique"]: h for h in record["techniques"]["hooks"]}
    assert set(hooks) == set(PRESET_HOOKS[preset])
    for name, fields in PRESET_HOOKS[preset].items():
        assert {k: hooks[name][k] for k in fields} == fields
    if preset in INVERSION_SETTINGS:
        inverted = hooks["StartFromInversion"]["inversion"]
        assert (inverted["source_prompt"], inverted["control"], inverted["steps"]) == INVERSION_SETTINGS[preset]
        assert len(inverted["timesteps"]) == record["cost"]["inversion"]["unet_evals_per_frame"]
    if preset == "streamv2v":
        assert record["techniques"]["noise"] == "fixed"
    if preset == "ground-a-video":
        assert hooks["StartFromInversion"]["inversion"]["flow_gated"] is True
        assert record["techniques"]["noise_settings"] == {"threshold": 0.2, "threshold_of": "largest flow",
                                                          "gates": "inverted latents"}


@pytest.mark.parametrize("flags", [
    ["--copy-step", "1"], ["--copy-step", "2", "--copy-from", "previous"], ["--diff-steps", "1:3"],
    ["--blend-steps", "1:3"], ["--cross-frame-attn", "anchor"], ["--trajectory-attn"], ["--grid", "2"],
    ["--feature-bank", "1", "--feature-fusion", "0.5"], ["--token-merge", "0.5"], ["--flow-warp", "0.5"],
    ["--mode", "keyframe", "--keyframe-interval", "2"], ["--noise", "flow-gated"],
])
def test_every_technique_runs_on_inverted_latents(tmp_path, flags):
    out = tmp_path / "run"
    assert run_cli(*CLIP, "--steps", "4", "--invert-source", "--inversion-control", *flags, "--out", str(out)) == 0
    record = json.loads((out / "run.json").read_text())
    assert record["techniques"]["hooks"][0]["technique"] == "StartFromInversion"
    assert len(list((out / "frames").iterdir())) == 4
