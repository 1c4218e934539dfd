"""Metrics on synthetic clips with known answers, and `sdvideo.py evaluate`."""
import json
import os
import sys

import numpy as np
import pytest
import torch

import sdvideo
from conftest import ROOT
from measure import metrics


def texture(height=64, width=96, seed=0):
    """A smooth random texture (flow needs structure, not noise)."""
    import cv2

    noise = np.random.default_rng(seed).uniform(0, 255, (height // 8, width // 8, 3)).astype(np.float32)
    return cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC).clip(0, 255).astype(np.uint8)


def shifted_clip(seed=0, frames=6, step=2):
    """The same texture moving right by `step` pixels a frame."""
    base = texture(64, 96 + step * frames, seed)
    return np.stack([base[:, step * (frames - i):step * (frames - i) + 96] for i in range(frames)])


def test_a_static_clip_has_zero_warping_error_and_flicker():
    clip = np.stack([texture()] * 5)
    assert metrics.warping_error(clip, clip) == pytest.approx(0.0, abs=1e-9)
    assert metrics.flicker(clip, clip) == pytest.approx(0.0, abs=1e-9)


def test_motion_along_the_source_flow_is_recovered_and_random_frames_score_worse():
    source = shifted_clip(seed=1)
    follows = shifted_clip(seed=2)  # other content, same motion
    rng = np.random.default_rng(3)
    random_frames = np.stack([texture(seed=int(s)) for s in rng.integers(0, 1000, 6)])
    smooth_error = metrics.warping_error(follows, source)
    assert smooth_error < 2e-3
    assert metrics.warping_error(random_frames, source) > 10 * smooth_error
    assert metrics.flicker(random_frames, source) > 2 * metrics.flicker(follows, source)
    assert metrics.flicker(source, source) == pytest.approx(1.0)


def test_pck_counts_joints_within_a_tenth_of_the_box():
    control = np.zeros((2, 18, 3), np.float32)
    control[:, :, 0], control[:, :, 1], control[:, :, 2] = np.linspace(0, 100, 18), np.linspace(0, 200, 18), 1
    assert metrics.pck(control, control) == 1.0
    near, far = control.copy(), control.copy()
    near[..., 0] += 15  # 0.075 of the 200-pixel box
    far[..., 0] += 25  # 0.125
    assert metrics.pck(near, control) == 1.0 and metrics.pck(far, control) == 0.0
    half = control.copy()
    half[:, :9, 2] = 0  # undetected joints count as misses
    assert metrics.pck(half, control) == pytest.approx(0.5)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A random-weight CLIP saved as a folder, loaded like a real one."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from loading import builtin

    tokenizer = builtin.build_tiny_tokenizer()
    config = CLIPConfig(text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37,
                                         num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
                                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                         pad_token_id=tokenizer.pad_token_id),
                        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                           num_attention_heads=4, image_size=32, patch_size=8), projection_dim=16)
    torch.manual_seed(0)
    folder = str(tmp_path_factory.mktemp("clip"))
    CLIPModel(config).save_pretrained(folder)
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                                 crop_size={"height": 32, "width": 32}),
                              tokenizer=tokenizer)
    processor.save_pretrained(folder)
    return folder


def test_clip_scores_with_a_tiny_random_clip(tiny_clip):
    model, processor = metrics.load_clip_model(tiny_clip)
    same = np.stack([texture()] * 3)
    frame_consistency, all_pairs, prompt_consistency = metrics.clip_scores(same, "a golfer", model, processor)
    assert all_pairs == pytest.approx(1.0, abs=1e-5)
    assert frame_consistency == pytest.approx(1.0, abs=1e-5) and -1.0 <= prompt_consistency <= 1.0
    different = np.stack([texture(seed=s) for s in range(3)])
    assert metrics.clip_scores(different, "a golfer", model, processor)[0] < frame_consistency
    # A, A, B, B: consecutive pairs (A,A), (A,B), (B,B); all pairs also (A,B) four times of six
    a_b = np.stack([texture(seed=0)] * 2 + [texture(seed=9)] * 2)
    consecutive, all_pairs, _ = metrics.clip_scores(a_b, "a golfer", model, processor)
    cosine = metrics.clip_scores(a_b[1:3], "a golfer", model, processor)[0]
    assert consecutive == pytest.approx((2 + cosine) / 3, abs=1e-5)
    assert all_pairs == pytest.approx((2 + 4 * cosine) / 6, abs=1e-5)


def test_warp_ssim_is_one_along_the_source_motion_and_lower_for_random_frames():
    source, follows = shifted_clip(seed=1), shifted_clip(seed=2)
    random_frames = np.stack([texture(seed=s) for s in range(10, 16)])
    assert metrics.warp_ssim(follows, source) > 0.95
    assert metrics.warp_ssim(random_frames, source) < 0.5
    assert metrics.ssim_map(source[0], source[0]) == pytest.approx(np.ones((64, 96)))


def test_background_flickering_counts_only_where_the_source_is_still():
    still = np.stack([texture(seed=1)] * 5)
    source = still.copy()
    for i in range(5):  # a bright square moving through the middle; the rest of the source is still
        source[i, 20:40, 20 + 6 * i:40 + 6 * i] = 255
    moving_where_source_moves = still.copy()
    for i in range(5):
        moving_where_source_moves[i, 20:40, 20 + 6 * i:40 + 6 * i] = 255 - 40 * i
    noisy = np.clip(still.astype(int) + np.random.default_rng(0).integers(-40, 40, still.shape), 0, 255).astype(np.uint8)
    assert metrics.background_flickering(still, still) == pytest.approx(1.0)
    assert metrics.background_flickering(moving_where_source_moves, source) > 0.99
    assert metrics.background_flickering(noisy, source) < 0.9


def test_evaluate_writes_metrics_json_and_prints_a_table(tmp_path, tiny_clip, capsys):
    out = tmp_path / "run"
    assert sdvideo.main(["--model", "tiny", "--height", "64", "--width", "64", "--steps", "2", "--max-frames", "4",
                         "--quiet", "--out", str(out)]) == 0
    assert sdvideo.main(["evaluate", str(out), "--clip-model", tiny_clip]) == 0
    table = capsys.readouterr().out
    assert "warping_error" in table and "clip_consistency_consecutive" in table and "clip_consistency_all_pairs" in table
    result = json.loads((out / "metrics.json").read_text())
    assert result["frames"] == 4 and result["unet_evals_per_frame"] == 4 and result["peak_memory_gib"] > 0
    assert sdvideo.main(["evaluate", str(tmp_path / "nothing"), "--no-clip"]) == 2


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished 4-frame tiny run with a source video, to damage in copies."""
    from conftest import make_video

    folder = tmp_path_factory.mktemp("evaluate")
    make_video(folder / "clip.mp4", num_frames=4, height=64, width=64)
    poses = os.path.join(ROOT, "demo", "golf_swing.json")
    import pose_extract

    demo = pose_extract.read_poses(poses)
    pose_extract.write_poses(str(folder / "poses.json"), pose_extract.PoseSequence(demo.keypoints[:4], (512, 512), 12.0))
    assert sdvideo.main(["--model", "tiny", "--height", "64", "--width", "64", "--steps", "2", "--quiet",
                         "--video", str(folder / "clip.mp4"), "--poses", str(folder / "poses.json"),
                         "--out", str(folder / "run")]) == 0
    return folder / "run"


def test_metrics_read_the_lossless_source_frames(finished_run):
    import shutil

    record = json.loads((finished_run / "run.json").read_text())
    source = metrics.read_source(str(finished_run), record, 64)
    frames = metrics.read_pngs(str(finished_run), "source")
    assert np.array_equal(source, frames) and source.shape == (4, 64, 64, 3)
    # the video's frames themselves, as the run read them (no second lossy encoding)
    from common import video_io

    decoded = video_io.read_video(str(finished_run.parent / "clip.mp4"), list(range(4)), 64, 64, "crop")
    assert np.array_equal(source, np.stack(decoded))
    copy = finished_run.parent / "no-side-by-side"
    shutil.copytree(finished_run, copy)
    os.remove(copy / "side_by_side.mp4")
    assert sdvideo.main(["evaluate", str(copy), "--no-clip", "--quiet"]) == 0  # not needed any more


@pytest.mark.parametrize("damage, message", [
    (lambda run: (run / "run.json").write_text("{not json"), "run.json is damaged"),
    (lambda run: (run / "run.json").write_text("[]"), "not an sdvideo run record"),
    (lambda run: [os.remove(run / "frames" / n) for n in os.listdir(run / "frames")], "has no frames/*.png"),
    (lambda run: (run / "frames" / "00001.png").write_bytes(b"\x89PNG broken"), "00001.png ("),
    (lambda run: (run / "source" / "00002.png").write_bytes(b"nothing"), "00002.png ("),
    (lambda run: os.remove(run / "source" / "00003.png"), "4 frames but 3 source frames"),
])
def test_evaluate_on_a_damaged_run_is_one_line(finished_run, tmp_path, capsys, damage, message):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy)
    damage(copy)
    assert sdvideo.main(["evaluate", str(copy), "--no-clip"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (copy / "metrics.json").exists()


def test_evaluate_without_clip_weights_says_so_at_once(finished_run, tmp_path):
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}  # as a user: online mode, no network
    env["HF_HOME"] = str(tmp_path / "hf")
    result = subprocess.run([sys.executable, os.path.join(ROOT, "sdvideo.py"), "evaluate", str(finished_run)],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "not in the Hugging Face cache" in result.stderr and "--no-clip" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
