"""Metrics on synthetic clips with known answers, and `sdvideo.py evaluate`."""
import json
import os

import numpy as np
import pytest
import torch

import metrics
import sdvideo


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

    import models

    tokenizer = models.build_tiny_tokenizer()
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
    model, processor = metrics.load_clip(tiny_clip, local_files_only=True)
    same = np.stack([texture()] * 3)
    frame_consistency, prompt_consistency = metrics.clip_scores(same, "a golfer", model, processor)
    assert frame_consistency == pytest.approx(1.0, abs=1e-5) and -1.0 <= prompt_consistency <= 1.0
    different = np.stack([texture(seed=s) for s in range(3)])
    assert metrics.clip_scores(different, "a golfer", model, processor)[0] < frame_consistency


def test_evaluate_writes_metrics_json_and_prints_a_table(tmp_path, tiny_clip, capsys):
    out = tmp_path / "run"
    assert sdvideo.main(["--model", "tiny", "--height", "64", "--width", "64", "--steps", "2", "--max-frames", "4",
                         "--quiet", "--out", str(out)]) == 0
    assert sdvideo.main(["evaluate", str(out), "--clip-model", tiny_clip, "--local-files-only"]) == 0
    table = capsys.readouterr().out
    assert "warping_error" in table and "clip_frame_consistency" in table
    result = json.loads((out / "metrics.json").read_text())
    assert result["frames"] == 4 and result["unet_evals_per_frame"] == 4 and result["peak_memory_gib"] > 0
    assert sdvideo.main(["evaluate", str(tmp_path / "nothing"), "--no-clip"]) == 2
