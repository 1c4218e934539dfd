"""Shared fixtures: the tiny model, synthetic poses and videos (all built here, offline)."""
import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pose_extract  # noqa: E402
from common import video_io  # noqa: E402
from loading import builtin  # noqa: E402


@pytest.fixture(scope="session")
def tiny_pipe():
    return builtin.build_tiny_pipeline()


def random_keypoints(rng, height, width, num_frames):
    """(F, 18, 3) keypoints inside a (height, width) canvas, all joints present."""
    keypoints = np.ones((num_frames, 18, 3), dtype=np.float32)
    keypoints[..., 0] = rng.uniform(4, width - 4, (num_frames, 18))
    keypoints[..., 1] = rng.uniform(4, height - 4, (num_frames, 18))
    return keypoints


@pytest.fixture
def pose_maps():
    """Three distinct 64x96 pose maps, (3, 64, 96, 3) uint8."""
    keypoints = random_keypoints(np.random.default_rng(0), 64, 96, 3)
    return np.stack([pose_extract.draw_openpose(k, 64, 96) for k in keypoints])


@pytest.fixture
def pose_file(tmp_path):
    """A 6-frame pose sequence on a 128x128 canvas at 12 fps."""
    keypoints = random_keypoints(np.random.default_rng(1), 128, 128, 6)
    path = str(tmp_path / "poses.json")
    pose_extract.write_poses(path, pose_extract.PoseSequence(keypoints, (128, 128), 12.0))
    return path


def make_video(path, num_frames=6, height=96, width=128, fps=12):
    """A synthetic clip: a bright square moving right on a gradient."""
    frames = []
    for i in range(num_frames):
        frame = np.zeros((height, width, 3), dtype=np.uint8)
        frame[..., 0] = np.linspace(0, 200, width, dtype=np.uint8)[None, :]
        frame[20:40, 10 + 8 * i:30 + 8 * i] = 255
        frames.append(frame)
    video_io.write_video(str(path), frames, fps)
    return frames


def assert_tensors_close(actual, expected, rtol=1e-4):
    """assert_close with tolerances scaled to the expected values' size: float results differ
    between CPUs and thread counts by ~1e-5 relative, so an absolute 1e-6 fails on values near 10."""
    import torch

    scale = float(expected.detach().abs().max()) if expected.numel() else 1.0
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * max(scale, 1e-3))
