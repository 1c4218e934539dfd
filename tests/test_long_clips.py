"""Long clips, --resume, --batch-size auto and the speed options (tiny model, no timing asserted)."""
import json
import signal
import subprocess
import sys
import os

import av
import numpy as np
import pytest
import torch

import pose_extract
import sdvideo
from cli import outputs
from conftest import ROOT, assert_tensors_close
from loading import models, speed
from loop import pipeline, predict
from loop.pipeline import GenerationConfig

FAST = ["--model", "tiny", "--height", "64", "--width", "64", "--steps", "2", "--quiet", "--batch-size", "16"]


def decoded(path):
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


@pytest.fixture(scope="module")
def long_poses(tmp_path_factory):
    """300 frames: the demo swing looped, on its 512x512 canvas."""
    demo = pose_extract.read_poses(os.path.join(ROOT, "demo", "golf_swing.json"))
    keypoints = np.concatenate([demo.keypoints] * 5)[:300]
    path = str(tmp_path_factory.mktemp("long") / "long.json")
    pose_extract.write_poses(path, pose_extract.PoseSequence(keypoints, demo.canvas_size, 30.0))
    return path


def interrupt_decoding_after(monkeypatch, frames):
    real = pipeline.decode
    state = {"yielded": 0}

    def decode(*args, **kwargs):
        for frame in real(*args, **kwargs):
            if state["yielded"] == frames:
                raise KeyboardInterrupt
            state["yielded"] += 1
            yield frame

    monkeypatch.setattr(pipeline, "decode", decode)


def test_a_300_frame_clip_resumes_to_the_same_video(tmp_path, long_poses, monkeypatch):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert sdvideo.main([*FAST, "--poses", long_poses, "--noise", "fixed", "--out", str(whole)]) == 0
    assert len(os.listdir(whole / "frames")) == 300
    with monkeypatch.context() as patch:
        interrupt_decoding_after(patch, 150)
        assert sdvideo.main([*FAST, "--poses", long_poses, "--noise", "fixed", "--out", str(cut)]) == 130
    partial = tmp_path / "cut.partial"
    assert len(os.listdir(partial / "frames")) == 150 and (partial / outputs.CHECKPOINT).exists()

    def no_denoising(*args, **kwargs):
        raise AssertionError("a resumed run must reuse the saved latents")

    monkeypatch.setattr(pipeline, "generate", no_denoising)
    assert sdvideo.main([*FAST, "--poses", long_poses, "--noise", "fixed", "--out", str(cut), "--resume"]) == 0
    assert np.array_equal(decoded(cut / "video.mp4"), decoded(whole / "video.mp4"))
    assert sorted(os.listdir(cut)) == sorted(os.listdir(whole))  # no checkpoint or resume file left
    record = json.loads((cut / "run.json").read_text())
    assert record["cost"]["unet_evals_per_frame"] == 4.0


def test_resume_refuses_other_settings_and_missing_runs(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    assert sdvideo.main([*FAST, "--max-frames", "3", "--out", str(out), "--resume"]) == 2
    assert "no interrupted run" in capsys.readouterr().err
    with monkeypatch.context() as patch:
        interrupt_decoding_after(patch, 1)
        assert sdvideo.main([*FAST, "--max-frames", "3", "--out", str(out)]) == 130
    assert sdvideo.main([*FAST, "--max-frames", "3", "--seed", "7", "--out", str(out), "--resume"]) == 2
    assert "other settings" in capsys.readouterr().err


def test_auto_batch_size_halves_on_out_of_memory_and_keeps_the_result(tiny_pipe, pose_maps, monkeypatch):
    config = GenerationConfig(prompt="a golfer", steps=2, batch_size=2)
    expected, _ = pipeline.denoise(tiny_pipe, pose_maps, config, progress=False)
    real, sizes = predict.predict_noise, []

    def small_memory(pipe, latents, *args, **kwargs):
        sizes.append(latents.shape[0])
        if latents.shape[0] > 2:
            raise torch.OutOfMemoryError("simulated")
        return real(pipe, latents, *args, **kwargs)

    monkeypatch.setattr(predict, "predict_noise", small_memory)
    config.batch_size = 0  # auto: starts at 8 frames on a CPU
    latents, _ = pipeline.denoise(tiny_pipe, pose_maps, config, progress=False)
    assert sizes[:2] == [3, 2]
    assert_tensors_close(latents, expected)
    config.batch_size = 3  # a fixed size is not changed behind the user's back
    with pytest.raises(torch.OutOfMemoryError):
        pipeline.denoise(tiny_pipe, pose_maps, config, progress=False)


@pytest.mark.parametrize("option", [dict(attention="classic"), dict(channels_last=True), dict(vae_slicing=True)])
def test_speed_options_keep_the_result(pose_maps, option):
    config = GenerationConfig(prompt="a golfer", steps=2, batch_size=3)
    plain = models.load_pipeline(models.ModelSpec(model="tiny", device="cpu"))
    tuned = models.load_pipeline(models.ModelSpec(model="tiny", device="cpu", **option))
    a, _ = pipeline.denoise(plain, pose_maps, config, progress=False)
    b, _ = pipeline.denoise(tuned, pose_maps, config, progress=False)
    assert_tensors_close(b, a)
    frames_a = np.stack(list(pipeline.decode(plain, a, 3, progress=False))).astype(int)
    frames_b = np.stack(list(pipeline.decode(tuned, b, 3, progress=False))).astype(int)
    assert np.abs(frames_a - frames_b).max() <= 1


def test_xformers_missing_is_a_user_error():
    try:
        import xformers  # noqa: F401
        pytest.skip("xformers is installed here")
    except ImportError:
        pass
    with pytest.raises(models.UserError, match="xformers"):
        models.load_pipeline(models.ModelSpec(model="tiny", device="cpu", attention="xformers"))


def embedded_rows(pipe):
    """Count the pose maps ControlNet's conditioning embedding computes (rows of its input)."""
    inner = pipe.controlnet.controlnet_cond_embedding
    inner = getattr(inner, "inner", inner)
    counter = {"rows": 0}
    inner.register_forward_pre_hook(lambda module, args: counter.__setitem__("rows", counter["rows"] + args[0].shape[0]))
    return counter


@pytest.mark.parametrize("cross_frame", [False, True])
def test_control_embedding_is_computed_once_per_frame_with_the_same_result(pose_maps, cross_frame):
    from loop import planners

    config = GenerationConfig(prompt="a golfer", steps=3, batch_size=2)
    every_step = models.load_pipeline(models.ModelSpec(model="tiny", device="cpu", reuse_control_embedding=False))
    reused = models.load_pipeline(models.ModelSpec(model="tiny", device="cpu"))
    results, rows = [], []
    for pipe in (every_step, reused):
        counter = embedded_rows(pipe)
        found = [planners.CrossFrameAttention("anchor")] if cross_frame else []
        latents, _ = pipeline.generate(pipe, pose_maps, config, found, progress=False)
        results.append(latents)
        rows.append(counter["rows"])
    frames_per_step = 4 if cross_frame else 3  # the anchor rides along with the second chunk
    assert rows == [frames_per_step * 2 * 3, 3]  # (frames x guidance x steps) against once per frame
    assert_tensors_close(results[1], results[0])


def test_control_embedding_budget_recomputes_what_does_not_fit(pose_maps):
    config = GenerationConfig(prompt="a golfer", steps=3, batch_size=3)
    pipe = models.load_pipeline(models.ModelSpec(model="tiny", device="cpu"))
    expected, _ = pipeline.generate(pipe, pose_maps, config, progress=False)
    cache = predict.control_embedding_caches(pipe)[0]
    one_frame = 16 * 8 * 12 * 4  # tiny ControlNet: 16 channels at 64x96 / 8, fp32
    cache.budget = one_frame
    counter = embedded_rows(pipe)
    latents, _ = pipeline.generate(pipe, pose_maps, config, progress=False)
    assert counter["rows"] == 3 + 2 * 2  # step 1 embeds all three; later steps the two not kept
    assert_tensors_close(latents, expected)


def test_model_offloading_keeps_the_result(pose_maps):
    # accelerate's hooks run here with the CPU as the execution device: the plumbing, not the saving
    config = GenerationConfig(prompt="a golfer", steps=2, batch_size=3)
    plain = models.load_pipeline(models.ModelSpec(model="tiny", device="cpu"))
    offloaded = models.load_pipeline(models.ModelSpec(model="tiny", device="cpu"))
    speed.enable_offload(offloaded, "model", torch.device("cpu"))
    assert hasattr(offloaded.unet, "_hf_hook")
    a, _ = pipeline.generate(plain, pose_maps, config, progress=False)
    b, _ = pipeline.generate(offloaded, pose_maps, config, progress=False)
    assert_tensors_close(b, a)
    frames = np.stack(list(pipeline.decode(offloaded, b, 3, progress=False)))
    assert frames.shape == (3, 64, 96, 3)


def test_sequential_offloading_is_installed():
    # Running it needs a GPU: with the CPU as the execution device accelerate (1.x) swaps parameters
    # for plain tensors and fails on the way back. Checked here: the hooks and the loop's device.
    pipe = models.load_pipeline(models.ModelSpec(model="tiny", device="cpu"))
    speed.enable_offload(pipe, "sequential", torch.device("cpu"))
    assert pipe.unet.conv_in.weight.device.type == "meta" and hasattr(pipe.unet.conv_in, "_hf_hook")
    assert pipe._execution_device == torch.device("cpu", 0)


def test_offload_on_a_cpu_run_is_a_user_error(capsys, tmp_path):
    assert sdvideo.main([*FAST, "--device", "cpu", "--offload", "model", "--out", str(tmp_path / "run")]) == 2
    assert "drop --offload" in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_resume_refuses_a_pose_file_whose_content_changed_under_the_same_name(tmp_path, monkeypatch, capsys):
    poses = tmp_path / "poses.json"
    demo = pose_extract.read_poses(os.path.join(ROOT, "demo", "golf_swing.json"))
    pose_extract.write_poses(str(poses), pose_extract.PoseSequence(demo.keypoints[:3], demo.canvas_size, 30.0))
    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        interrupt_decoding_after(patch, 1)
        assert sdvideo.main([*FAST, "--poses", str(poses), "--out", str(out)]) == 130
    pose_extract.write_poses(str(poses), pose_extract.PoseSequence(demo.keypoints[30:33], demo.canvas_size, 30.0))
    assert sdvideo.main([*FAST, "--poses", str(poses), "--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "other settings" in err[-1] and len([e for e in err if "error" in e]) == 1


KILL_MID_WRITE = """
import os, signal, sys
sys.path.insert(0, {root!r})
import sdvideo
from common import files
from common import video_io
real = video_io.write_png
def write_png(path, image):
    if path.endswith(os.path.join("frames", "00003.png")):  # the fourth frame: its temporary written, then death
        with files.atomic_path(path, ".png") as tmp:
            from PIL import Image
            Image.fromarray(image).save(tmp)
            os.kill(os.getpid(), signal.SIGKILL)
    real(path, image)
video_io.write_png = write_png
sdvideo.main({argv!r})
"""


def test_a_run_killed_while_writing_a_frame_resumes_without_its_temporary(tmp_path):
    out = tmp_path / "run"
    argv = [*FAST, "--max-frames", "6", "--out", str(out)]
    killed = subprocess.run([sys.executable, "-c", KILL_MID_WRITE.format(root=ROOT, argv=argv)], capture_output=True)
    assert killed.returncode == -signal.SIGKILL
    partial = tmp_path / "run.partial" / "frames"
    assert any(".tmp" in name for name in os.listdir(partial))  # the dead write's temporary is there
    assert sdvideo.main([*argv, "--resume"]) == 0
    assert sorted(os.listdir(out / "frames")) == [f"{i:05d}.png" for i in range(6)]  # and gone after --resume
    assert not [name for d, _, names in os.walk(out) for name in names if ".tmp" in name]
