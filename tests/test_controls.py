"""Extra controls beside the pose (--control pose,canny): the maps, diffusers' MultiControlNetModel
on the tiny model (a second tiny ControlNet), every technique with them, and the refusals."""
import importlib.util

import numpy as np
import pytest
import torch
from PIL import Image

import pose_extract
import sdvideo
from common.errors import UserError
from conftest import ROOT, random_keypoints
from loading import controls, models
from loop import pipeline, predict

DEMO = ["--video", f"{ROOT}/demo/golf_swing_poses.mp4", "--poses", f"{ROOT}/demo/golf_swing.json"]
FAST = ["--model", "tiny", "--height", "64", "--width", "64", "--steps", "3", "--max-frames", "3", "--quiet", *DEMO]


def frames(out):
    return np.stack([np.asarray(Image.open(out / "frames" / f"{i:05d}.png")) for i in range(3)])


def test_controls_parse_pose_first_and_each_once():
    assert controls.parse_controls("pose, canny,depth") == ("pose", "canny", "depth")
    for bad in ("canny", "pose,pose", "pose,normal", ""):
        with pytest.raises(ValueError):
            controls.parse_controls(bad)


def test_canny_maps_are_white_edges_on_black_at_the_thresholds_given():
    picture = np.zeros((1, 32, 32, 3), np.uint8)
    picture[0, 8:24, 8:24] = 255  # a strong square
    picture[0, 2:6, 26:30] = 10  # a faint one (Sobel response 40)
    strong = controls.canny_maps(picture, 100, 200)
    assert strong.shape == (1, 32, 32, 3) and set(np.unique(strong)) == {0, 255}
    assert strong[0, 16, 16].max() == 0 and strong[0, 8:24, 7:10].max() == 255  # edges, not the inside
    assert strong[0, 0:8, 24:32].max() == 0  # the faint square is below these thresholds
    assert controls.canny_maps(picture, 10, 20)[0, 0:8, 24:32].max() == 255


def test_an_extra_control_at_scale_0_gives_the_pose_only_frames_and_at_1_changes_them(tmp_path):
    assert sdvideo.main([*FAST, "--out", str(tmp_path / "pose")]) == 0
    assert sdvideo.main([*FAST, "--control", "pose,canny", "--controlnet-scale", "1", "0",
                         "--out", str(tmp_path / "zero")]) == 0
    assert sdvideo.main([*FAST, "--control", "pose,canny", "--controlnet-scale", "1,0",  # as --control: commas
                         "--out", str(tmp_path / "commas")]) == 0
    assert sdvideo.main([*FAST, "--control", "pose,canny", "--out", str(tmp_path / "both")]) == 0
    assert np.array_equal(frames(tmp_path / "zero"), frames(tmp_path / "pose"))
    assert np.array_equal(frames(tmp_path / "commas"), frames(tmp_path / "zero"))
    assert np.abs(frames(tmp_path / "both").astype(int) - frames(tmp_path / "pose").astype(int)).mean() > 1


@pytest.mark.parametrize("flags", [["--cross-frame-attn", "anchor"], ["--grid", "2"], ["--trajectory-attn"],
                                   ["--noise", "fixed", "--copy-step", "1", "--diff-steps", "1:3"],
                                   ["--mode", "keyframe", "--keyframe-interval", "2", "--flow-warp", "0.5"],
                                   ["--recompute-control-embedding", "--attention", "classic"]])
def test_every_technique_runs_with_an_extra_control(tmp_path, flags):
    assert sdvideo.main([*FAST, "--control", "pose,canny", *flags, "--out", str(tmp_path / "run")]) == 0
    assert len(list((tmp_path / "run" / "frames").iterdir())) == 3


def test_each_controlnet_embeds_its_own_maps_once_per_frame():
    pipe = models.load_pipeline(models.ModelSpec(model="tiny", device="cpu", extra_controlnets=("canny",)))
    calls = []
    for index, cache in enumerate(predict.control_embedding_caches(pipe)):
        cache.inner.register_forward_hook(lambda m, a, out, index=index: calls.append((index, a[0].shape[0])))
    keypoints = random_keypoints(np.random.default_rng(2), 64, 64, 4)
    pose = np.stack([pose_extract.draw_openpose(k, 64, 64) for k in keypoints])
    edges = controls.canny_maps(pose, 100, 200)
    config = pipeline.GenerationConfig(prompt="a golfer", steps=3, batch_size=2, controlnet_scale=[1.0, 0.5])
    latents, _ = pipeline.generate(pipe, controls.stack(pose, [edges]), config, progress=False)
    assert latents.shape == (4, 4, 8, 8) and torch.isfinite(latents).all()
    assert sorted(calls) == [(0, 2), (0, 2), (1, 2), (1, 2)]  # 4 frames in chunks of 2, per ControlNet, once


@pytest.mark.parametrize("flags, message", [
    (["--control", "pose,canny", "--controlnet-scale", "1", "0", "0"], "--controlnet-scale takes one value, or one per"),
    (["--control", "canny"], "argument --control: expected pose, then"),
    (["--control", "pose,depth"], "--control depth needs controlnet_aux"),
    (["--canny-low", "50", "--canny-high", "10"], "need 0 <= --canny-low <= --canny-high"),
])
def test_control_mistakes_are_one_line_errors(tmp_path, capsys, flags, message):
    if "depth" in flags and importlib.util.find_spec("controlnet_aux") is not None:
        pytest.skip("controlnet_aux is installed here")
    assert sdvideo.main([*FAST, *flags, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and not (tmp_path / "run").exists()


def test_extra_controls_need_the_source_clip_and_a_model_with_their_controlnets(tmp_path, capsys):
    cases = [(["--model", "tiny", "--control", "pose,canny"], "--control pose,canny needs --video"),
             (["--model", "toy", "--control", "pose,canny", *DEMO], "--model toy has a pose ControlNet only")]
    for flags, message in cases:
        assert sdvideo.main([*flags, "--quiet", "--out", str(tmp_path / "run")]) == 2
        assert message in capsys.readouterr().err


def test_depth_maps_go_through_controlnet_aux_midas_at_the_clip_size(monkeypatch):
    """controlnet_aux needs torchvision, which this machine cannot install: a stand-in MidasDetector
    with its interface checks sdvideo's side (arguments, sizes, channels)."""
    import sys
    import types

    seen = []

    class MidasDetector:
        @classmethod
        def from_pretrained(cls, name):
            seen.append(name)
            return cls()

        def __call__(self, image, output_type, detect_resolution, image_resolution):
            seen.append((image.shape, output_type, detect_resolution, image_resolution))
            return np.full((image_resolution, image_resolution, 3), image.mean(), np.uint8)  # square, as MiDaS gives

    monkeypatch.setitem(sys.modules, "controlnet_aux", types.SimpleNamespace(MidasDetector=MidasDetector))
    clip = np.stack([np.full((48, 64, 3), 10 * i, np.uint8) for i in range(3)])
    depth = controls.depth_maps(clip, "annotators")
    assert depth.shape == (3, 48, 64, 3) and depth.dtype == np.uint8 and depth[2].max() == 20
    assert seen[0] == "annotators" and seen[1] == ((48, 64, 3), "np", 64, 64)
    monkeypatch.setitem(sys.modules, "controlnet_aux", None)  # not installed: one line
    with pytest.raises(UserError, match="--control depth needs controlnet_aux"):
        controls.depth_maps(clip)
