"""The few-step path: LCM and TCD samplers equal diffusers' pipeline with them, SD-Turbo's own
scheduler kept with --scheduler model and guidance 0 (one branch), the tiny VAE (TAESD's class) in
place of the base's for decoding and encoding, and every technique's step arguments at 1-4 steps."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from diffusers import AutoencoderTiny, EulerDiscreteScheduler

import sdvideo
from conftest import ROOT
from loading import builtin, models
from loop import pipeline
from test_pipeline import NEGATIVE, PROMPT, diffusers_frames, ours

DEMO = ["--video", f"{ROOT}/demo/golf_swing_poses.mp4", "--poses", f"{ROOT}/demo/golf_swing.json"]
FAST = ["--model", "tiny", "--height", "64", "--width", "64", "--max-frames", "3", "--quiet"]


@pytest.mark.parametrize("scheduler", ["lcm", "tcd"])
def test_few_step_samplers_equal_diffusers_pipeline(pose_maps, scheduler):
    pipe = builtin.build_tiny_pipeline()
    pipe.scheduler = models.make_scheduler(scheduler, pipe.scheduler)
    config = pipeline.GenerationConfig(prompt=PROMPT, negative_prompt=NEGATIVE, steps=4, guidance=1.0, seed=3,
                                       batch_size=2)
    latents, frames, stats = ours(pipe, pose_maps, config)
    assert stats.unet_evals == 4 * len(pose_maps)  # guidance 1: no unconditional branch
    assert np.abs(frames / 255.0 - diffusers_frames(pipe, pose_maps, config)).max() <= 1 / 255
    assert_latents = diffusers_frames(pipe, pose_maps, config, output_type="latent")
    torch.testing.assert_close(latents, assert_latents, rtol=1e-4, atol=1e-4 * float(assert_latents.abs().max()))


@pytest.fixture(scope="module")
def turbo_folder(tmp_path_factory):
    """The tiny model saved as a base folder with SD-Turbo's scheduler config (Euler, trailing)."""
    pipe = builtin.build_tiny_pipeline()
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing")
    folder = tmp_path_factory.mktemp("turbo")
    pipe.save_pretrained(folder / "base")
    pipe.controlnet.save_pretrained(folder / "controlnet")
    return folder


def test_sd_turbo_setting_keeps_its_scheduler_and_computes_one_branch(turbo_folder, tmp_path, pose_maps):
    out = tmp_path / "run"
    # a process of its own, as a user runs it: warnings reach stderr there (pytest would catch them)
    done = subprocess.run([sys.executable, f"{ROOT}/sdvideo.py", "--base", str(turbo_folder / "base"),
                           "--controlnet", str(turbo_folder / "controlnet"), "--scheduler", "model", "--steps", "1",
                           "--guidance", "0", "--height", "64", "--width", "64", "--max-frames", "2", "--quiet",
                           "--local-files-only", *DEMO, "--out", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # --quiet with a folder-loaded base: not even diffusers' torch_dtype FutureWarning
    record = json.loads((out / "run.json").read_text())
    assert record["models"]["scheduler"] == "EulerDiscreteScheduler"
    assert record["models"]["timestep_spacing"] == "trailing"
    assert record["cost"]["unet_evals_per_frame"] == 1  # one step, guidance 0: half the work of guidance > 1

    pipe = models.load_pipeline(models.ModelSpec(base=str(turbo_folder / "base"), scheduler="model",
                                                 controlnet=str(turbo_folder / "controlnet"), local_files_only=True))
    config = pipeline.GenerationConfig(prompt=PROMPT, negative_prompt="", steps=1, guidance=0.0, seed=0, batch_size=3)
    _, frames, _ = ours(pipe, pose_maps, config)
    assert np.abs(frames / 255.0 - diffusers_frames(pipe, pose_maps, config)).max() <= 1 / 255


def tiny_taesd(factor_blocks=4):
    """An AutoencoderTiny at toy width with TAESD's layout (downsampling 2^(blocks-1))."""
    torch.manual_seed(0)
    return AutoencoderTiny(encoder_block_out_channels=(8,) * factor_blocks, decoder_block_out_channels=(8,) * factor_blocks,
                           num_encoder_blocks=(1,) * factor_blocks, num_decoder_blocks=(1,) * factor_blocks).eval()


def test_the_tiny_vae_decodes_and_encodes_in_place_of_the_base_vae(tmp_path):
    tiny_vae = tiny_taesd()
    tiny_vae.save_pretrained(tmp_path / "taesd")
    runs = {}
    for name, flags in (("full", []), ("tiny", ["--vae", f"tiny={tmp_path / 'taesd'}"])):
        out = tmp_path / name
        assert sdvideo.main([*FAST, *DEMO, "--steps", "2", "--init-from-source", "--out", str(out), *flags]) == 0
        runs[name] = out
    record = json.loads((runs["tiny"] / "run.json").read_text())
    assert record["models"]["vae"] == str(tmp_path / "taesd")
    frames = [np.asarray(pipeline_png(runs[n])) for n in ("full", "tiny")]
    assert np.abs(frames[0].astype(int) - frames[1].astype(int)).mean() > 5  # another decoder drew them

    pipe = models.load_pipeline(models.ModelSpec(model="tiny", vae=str(tmp_path / "taesd")))
    assert isinstance(pipe.vae, AutoencoderTiny)
    latents = pipeline.encode(pipe, np.zeros((2, 64, 64, 3), np.uint8), 2)
    assert latents.shape == (2, 4, 8, 8)
    expected = tiny_vae.encode(-torch.ones(2, 3, 64, 64)).latents
    torch.testing.assert_close(latents, expected, rtol=1e-4, atol=1e-5)


def pipeline_png(run):
    from PIL import Image

    return Image.open(run / "frames" / "00000.png").convert("RGB")


def test_a_tiny_vae_that_does_not_fit_the_base_is_one_line(tmp_path, capsys):
    tiny_taesd(3).save_pretrained(tmp_path / "taesd4x")  # downsamples by 4, the base by 8
    code = sdvideo.main([*FAST, *DEMO, "--vae", f"tiny={tmp_path / 'taesd4x'}", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "does not fit the base: it downsamples by 4" in err[0]
    assert not (tmp_path / "run").exists()


TECHNIQUE_FLAGS = [["--noise", "fixed", "--copy-step", "0.4"], ["--noise", "fixed", "--copy-step", "0.3",
                                                               "--diff-steps", "0.3:0.7"],
                   ["--blend-steps", "0:0.5", "--blend-weight", "0.3"], ["--init-from-source", "--strength", "0.7"],
                   ["--mode", "keyframe", "--keyframe-interval", "2", "--residual-strength", "0.5"],
                   ["--cross-frame-attn", "anchor"], ["--flow-warp", "0.5"], ["--grid", "2"], ["--trajectory-attn"],
                   ["--noise", "flow-gated"], ["--preset", "seed"], ["--preset", "keyframe"]]


@pytest.mark.parametrize("steps", [1, 4])
@pytest.mark.parametrize("flags", TECHNIQUE_FLAGS, ids=lambda f: " ".join(f))
def test_every_technique_runs_at_one_to_four_steps(tmp_path, steps, flags):
    """Step arguments given as fractions of the schedule hold at few-step counts."""
    assert sdvideo.main([*FAST, *DEMO, "--steps", str(steps), "--scheduler", "lcm", "--guidance", "1", *flags,
                         "--out", str(tmp_path / "run")]) == 0
