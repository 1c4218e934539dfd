"""Pose extraction: backends (through fakes of their raw output), tracking, clean-up, CLIs."""
import json
import os
import sys
import types

import numpy as np
import pytest

import pose_extract
import sdvideo
from common.errors import UserError
from conftest import make_video
from poses import detectors, pose_tracking
from poses.pose_tracking import CleanUp


def test_mediapipe_landmarks_map_to_coco18():
    landmarks = np.zeros((33, 4), np.float32)
    landmarks[:, 0] = np.arange(33) / 100  # x encodes the landmark index
    landmarks[:, 1] = 0.5
    landmarks[:, 3] = np.linspace(0.5, 1.0, 33)
    keypoints = detectors.mediapipe_to_coco18(landmarks, 200, 100)
    assert keypoints.shape == (18, 3)
    expected = {0: 0, 2: 12, 3: 14, 4: 16, 5: 11, 8: 24, 10: 28, 13: 27, 14: 5, 15: 2, 16: 8, 17: 7}
    for joint, landmark in expected.items():
        assert keypoints[joint, 0] == pytest.approx(landmark * 2) and keypoints[joint, 1] == pytest.approx(50)
    assert keypoints[1, 0] == pytest.approx((11 + 12) / 100 / 2 * 200)  # neck: the shoulders' midpoint
    assert keypoints[1, 2] == pytest.approx(min(landmarks[11, 3], landmarks[12, 3]))


def person(cx, cy, size):
    """A stick person as (18, 3): joints spread on a size x 2*size box around (cx, cy)."""
    rng = np.random.default_rng(int(size))
    joints = np.ones((18, 3), np.float32)
    joints[:, 0] = cx + rng.uniform(-size / 2, size / 2, 18)
    joints[:, 1] = cy + rng.uniform(-size, size, 18)
    return joints


def test_tracking_follows_one_of_two_people_crossing():
    frames, truth = [], []
    for i in range(30):
        a = person(40 + 8 * i, 100, 50)  # the main subject walks right
        b = person(280 - 8 * i, 104, 36)  # a smaller bystander walks left through them
        frames.append([{"body": b}, {"body": a}] if i % 2 else [{"body": a}, {"body": b}])
        truth.append(a)
    tracked, chosen = pose_tracking.track_person(frames, 320, 200)
    assert np.allclose(tracked, np.stack(truth))
    assert all(c is not None for c in chosen)


def test_tracking_never_jumps_to_a_bystander_when_the_subject_leaves():
    frames = [[{"body": person(100 + 2 * i, 100, 40)}] for i in range(10)]
    frames += [[{"body": person(300, 100, 40)}]]  # only someone far away
    frames += [[{"body": person(122, 100, 40)}, {"body": person(300, 100, 40)}]]
    tracked, _ = pose_tracking.track_person(frames, 400, 200)
    assert not tracked[10].any() and np.allclose(tracked[11], person(122, 100, 40))


def test_the_first_frame_picks_the_largest_most_central_person():
    small_central, large_off = person(160, 100, 20), person(40, 100, 60)
    tracked, _ = pose_tracking.track_person([[{"body": small_central}, {"body": large_off}]], 320, 200)
    assert np.allclose(tracked[0], large_off)


def linear_track(num_frames=20):
    keypoints = np.ones((num_frames, 18, 3), np.float32)
    keypoints[..., 0] = np.arange(num_frames)[:, None] * 3.0 + np.arange(18)[None, :]
    keypoints[..., 1] = 50.0
    return keypoints


def test_gaps_up_to_the_limit_are_filled_exactly_on_linear_motion():
    truth = linear_track()
    holed = truth.copy()
    holed[5:8, 3] = 0  # 3 frames missing
    holed[10:16, 4] = 0  # 6 frames missing
    filled = pose_tracking.fill_gaps(holed, max_gap=4)
    assert np.abs(filled[5:8, 3] - truth[5:8, 3]).max() < 1e-4
    assert not filled[10:16, 4, 2].any()  # longer than the limit: stays missing


def test_one_euro_reduces_jitter_and_keeps_a_fast_swing():
    fps, t = 30.0, np.arange(90) / 30.0
    noise = np.random.default_rng(0).normal(0, 2.0, t.shape)
    raw = np.sqrt(np.mean(noise[10:] ** 2))

    def error(truth, **kwargs):
        return np.sqrt(np.mean((pose_tracking.one_euro(truth + noise, fps, **kwargs) - truth)[10:] ** 2))

    still = np.full_like(t, 100.0)
    slow = 100 + 20 * np.sin(2 * np.pi * 0.5 * t)
    fast = 100 + 80 * np.sin(2 * np.pi * 2.0 * t)  # a club-head-like 2 Hz swing, 1000 px/s at its fastest
    assert error(still) < 0.7 * raw and error(slow) < raw
    # a plain low-pass (beta 0) lags the fast swing by tens of pixels; One-Euro stays within a few
    assert error(fast) < 4 * raw and error(fast) < 0.25 * error(fast, beta=0.0)


def test_clean_up_handles_frames_without_anyone(caplog):
    keypoints = linear_track(10)
    keypoints[4] = 0
    keypoints[:, :, 2] = 0.9
    keypoints[4, :, 2] = 0
    filled, kept = pose_tracking.clean_up(keypoints, 30, CleanUp(fill=0, smooth="none", on_missing="fill"))
    assert kept == list(range(10)) and np.allclose(filled[4, :, 0], linear_track(10)[4, :, 0])
    assert "no person in 1 of 10 frames (4)" in caplog.text
    skipped, kept = pose_tracking.clean_up(keypoints, 30, CleanUp(fill=0, smooth="none", on_missing="skip"))
    assert kept == [0, 1, 2, 3, 5, 6, 7, 8, 9] and len(skipped) == 9
    with pytest.raises(UserError, match="no person in 1 of 10 frames"):
        pose_tracking.clean_up(keypoints, 30, CleanUp(on_missing="fail"))
    with pytest.raises(UserError, match="no person was found in any frame"):
        pose_tracking.clean_up(np.zeros((5, 18, 3), np.float32), 30, CleanUp())
    low = linear_track(3)
    low[:, :, 2] = 0.2
    low[:, 0, 2] = 0.9
    cleaned, _ = pose_tracking.clean_up(low, 30, CleanUp(min_conf=0.3, smooth="none"))
    assert (cleaned[:, 1:, 2] == 0).all() and (cleaned[:, 0, 2] > 0).all()


def test_hands_and_face_survive_the_json_round_trip_and_are_drawn(tmp_path):
    keypoints = linear_track(2)
    hands = np.zeros((2, 2, 21, 3), np.float32)
    hands[:, 0, :, 0], hands[:, 0, :, 1], hands[:, 0, :, 2] = np.linspace(100, 140, 21), 200, 1
    face = np.zeros((2, 70, 3), np.float32)
    face[:, :, 0], face[:, :, 1], face[:, :, 2] = 300, np.linspace(100, 170, 70), 1
    sequence = pose_extract.PoseSequence(keypoints, (512, 512), 30.0, hands, face, [0, 2])
    path = str(tmp_path / "p.json")
    pose_extract.write_poses(path, sequence)
    back = pose_extract.read_poses(path)
    assert np.allclose(back.hands, hands, atol=1e-3) and np.allclose(back.face, face, atol=1e-3) and back.kept == [0, 2]
    canvas = pose_extract.draw_pose_frame(back, 0, 512, 512, hands_and_face=True)
    assert tuple(canvas[200, 100]) == (0, 0, 255) and tuple(canvas[150, 300]) == (255, 255, 255)
    assert not pose_extract.draw_pose_frame(back, 0, 512, 512)[150, 300].any()


# ---- backends through fakes of their raw output -----------------------------------------------

class FakeKeypoint:
    def __init__(self, x, y):
        self.x, self.y = x, y


@pytest.fixture
def fake_backends(monkeypatch):
    """controlnet_aux, rtmlib and mediapipe stand-ins returning each one's raw format for one person
    whose COCO-18 joint j sits at x = 10 + j, y = 20 + j pixels of a 128x96 frame."""
    calls = {"count": 0}
    width, height = 128, 96

    class OpenposeDetector:
        @classmethod
        def from_pretrained(cls, name):
            return cls()

        def to(self, device):
            return self

        def detect_poses(self, image, include_hand=False, include_face=False):
            calls["count"] += 1
            body = types.SimpleNamespace(keypoints=[FakeKeypoint((10 + j) / width, (20 + j) / height) if j != 17 else None
                                                    for j in range(18)])
            hand = [FakeKeypoint(0.5, 0.5)] * 21
            return [types.SimpleNamespace(body=body, left_hand=hand, right_hand=None, face=None)]

    class Wholebody:
        def __init__(self, **kwargs):
            pass

        def __call__(self, image_bgr):
            calls["count"] += 1
            points = np.stack([10 + np.arange(134), 20 + np.arange(134)], axis=1)[None].astype(np.float32)
            return points, np.full((1, 134), 0.8, np.float32)

    class Pose:
        def __init__(self, **kwargs):
            pass

        def process(self, image):
            calls["count"] += 1
            inverse = {m: j for j, m in detectors.MEDIAPIPE_TO_COCO18.items()}
            landmarks = []
            for m in range(33):
                j = inverse.get(m, 1)
                landmarks.append(types.SimpleNamespace(x=(10 + j) / width, y=(20 + j) / height, z=0.0, visibility=0.9))
            return types.SimpleNamespace(pose_landmarks=types.SimpleNamespace(landmark=landmarks))

    solutions = types.ModuleType("mediapipe.python.solutions")
    solutions.pose = types.SimpleNamespace(Pose=Pose)
    monkeypatch.setitem(sys.modules, "controlnet_aux", types.SimpleNamespace(OpenposeDetector=OpenposeDetector))
    monkeypatch.setitem(sys.modules, "rtmlib", types.SimpleNamespace(Wholebody=Wholebody))
    monkeypatch.setitem(sys.modules, "mediapipe", types.ModuleType("mediapipe"))
    monkeypatch.setitem(sys.modules, "mediapipe.python", types.ModuleType("mediapipe.python"))
    monkeypatch.setitem(sys.modules, "mediapipe.python.solutions", solutions)
    monkeypatch.setitem(sys.modules, "mediapipe.python.solutions.pose", solutions.pose)
    return calls


@pytest.mark.parametrize("backend", ["openpose", "dwpose", "mediapipe"])
def test_every_backend_returns_coco18_pixels(fake_backends, backend):
    detector = detectors.make_detector(backend)
    people = detector(np.zeros((96, 128, 3), np.uint8))
    body = people[0]["body"]
    joints = [j for j in range(18) if not (backend == "openpose" and j == 17) and not (backend == "mediapipe" and j == 1)]
    assert np.allclose(body[joints, 0], 10 + np.array(joints), atol=1e-3)
    assert np.allclose(body[joints, 1], 20 + np.array(joints), atol=1e-3)
    if backend == "openpose":
        assert body[17, 2] == 0 and people[0]["hands"].shape == (2, 21, 3)
    if backend == "dwpose":
        assert people[0]["hands"].shape == (2, 21, 3) and people[0]["face"].shape == (68, 3)
    if backend == "mediapipe":  # the neck is the midpoint of the shoulders (joints 2 and 5)
        assert np.allclose(body[1, :2], (body[2, :2] + body[5, :2]) / 2, atol=1e-3)


def test_missing_backends_say_what_to_install():
    try:
        import controlnet_aux  # noqa: F401
    except Exception:
        with pytest.raises(UserError, match="requirements-optional.txt"):
            detectors.make_detector("openpose")
    else:
        pytest.skip("controlnet_aux is importable here")


def test_pose_extract_cli_writes_json_maps_and_preview(tmp_path, fake_backends, capsys):
    video = tmp_path / "clip.mp4"
    make_video(video, num_frames=4, height=96, width=128)
    out = tmp_path / "poses.json"
    args = ["--video", str(video), "--out", str(out), "--render", str(tmp_path / "maps"),
            "--preview", str(tmp_path / "preview.mp4"), "--pose-backend", "dwpose"]
    assert pose_extract.main(args) == 0
    sequence = pose_extract.read_poses(str(out))
    assert sequence.keypoints.shape == (4, 18, 3) and sequence.canvas_size == (128, 96) and sequence.fps == 12
    assert len(os.listdir(tmp_path / "maps")) == 4 and (tmp_path / "preview.mp4").exists()
    assert pose_extract.main(args) == 2 and "--overwrite" in capsys.readouterr().err


def test_sdvideo_extracts_poses_from_the_video_once_and_keeps_them(tmp_path, fake_backends, monkeypatch):
    monkeypatch.setenv("SDVIDEO_CACHE", str(tmp_path / "cache"))
    video = tmp_path / "clip.mp4"
    make_video(video, num_frames=4, height=96, width=128)
    flags = ["--model", "tiny", "--height", "64", "--width", "64", "--steps", "1", "--quiet", "--video", str(video),
             "--pose-backend", "mediapipe"]
    assert sdvideo.main([*flags, "--out", str(tmp_path / "one")]) == 0
    first_calls = fake_backends["count"]
    assert first_calls == 4
    assert sdvideo.main([*flags, "--out", str(tmp_path / "two")]) == 0
    assert fake_backends["count"] == first_calls  # the second run reused the cached poses
    saved = json.loads((tmp_path / "two" / "poses.json").read_text())
    assert len(saved["frames"]) == 4 and saved["canvas_width"] == 64


def test_pose_extract_outputs_are_checked_first_and_replaced_whole(tmp_path, fake_backends, capsys, monkeypatch):
    video = tmp_path / "clip.mp4"
    make_video(video, num_frames=3, height=96, width=128)
    base = ["--video", str(video), "--pose-backend", "dwpose"]
    assert pose_extract.main([*base, "--out", str(tmp_path / "missing" / "poses.json")]) == 2
    assert "does not exist" in capsys.readouterr().err and fake_backends["count"] == 0
    maps = tmp_path / "maps"
    maps.mkdir()
    for i in range(5):  # an earlier, longer render: none of it may survive an overwrite
        (maps / f"{i:05d}.png").write_bytes(b"old")
    (tmp_path / "poses.json").write_text("old")
    args = [*base, "--out", str(tmp_path / "poses.json"), "--render", str(maps)]
    assert pose_extract.main(args) == 2 and "--overwrite" in capsys.readouterr().err
    assert pose_extract.main([*args, "--overwrite"]) == 0
    capsys.readouterr()
    assert sorted(os.listdir(maps)) == ["00000.png", "00001.png", "00002.png"]
    assert pose_extract.read_poses(str(tmp_path / "poses.json")).keypoints.shape == (3, 18, 3)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, m: False if str(p) == str(tmp_path) else real_access(p, m))
    assert pose_extract.main([*args, "--overwrite"]) == 2  # read-only (faked: root ignores chmod)
    err = capsys.readouterr().err.strip()
    assert "is read-only" in err and len(err.splitlines()) == 1
    monkeypatch.setattr(os, "access", real_access)
    monkeypatch.setattr(pose_extract, "write_poses", lambda *a: (_ for _ in ()).throw(OSError(28, "No space left")))
    assert pose_extract.main([*args, "--overwrite"]) == 2
    assert "No space left" in capsys.readouterr().err
    assert sorted(n for n in os.listdir(tmp_path) if n.startswith(".")) == []


def test_auto_picks_the_best_installed_detector_and_names_it(monkeypatch, caplog, tmp_path):
    import logging

    installed = {"mediapipe"}
    monkeypatch.setattr(detectors, "_installed", lambda name: name in installed)
    with caplog.at_level(logging.INFO, logger="pose_extract"):
        assert detectors.resolve_backend("auto") == "mediapipe"
    assert "pose backend: mediapipe (auto" in caplog.text
    installed |= {"rtmlib", "onnxruntime"}
    assert detectors.resolve_backend("auto") == "mediapipe"  # DWPose without its weights cannot run offline
    for name in detectors.DWPOSE_FILES:
        (tmp_path / name).write_bytes(b"weights")
    assert detectors.resolve_backend("auto", str(tmp_path)) == "dwpose"
    installed.add("controlnet_aux")
    assert detectors.resolve_backend("auto", str(tmp_path)) == "openpose"
    assert detectors.resolve_backend("dwpose") == "dwpose"  # a named backend is taken as named
    installed.clear()
    with pytest.raises(UserError, match="no pose detector is installed"):
        detectors.resolve_backend("auto")


def test_a_video_alone_runs_with_the_default_backend_on_a_base_install(tmp_path, fake_backends, monkeypatch):
    video = tmp_path / "clip.mp4"
    make_video(video, num_frames=3, height=96, width=128)
    out = tmp_path / "run"  # no --pose-backend: auto finds the (faked) MediaPipe, as the real one on a base install
    monkeypatch.setitem(sys.modules, "controlnet_aux", None)  # OpenPose not installed
    monkeypatch.setenv("SDVIDEO_CACHE", str(tmp_path / "cache"))
    assert sdvideo.main(["--model", "tiny", "--height", "64", "--width", "64", "--steps", "1", "--quiet",
                         "--video", str(video), "--out", str(out)]) == 0
    assert fake_backends["count"] == 3
