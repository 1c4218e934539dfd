import json

import numpy as np
import pytest

import pose_extract
from common.errors import UserError
from pose_extract import COLORS, PoseSequence, draw_openpose, read_poses, write_poses


def two_joints(neck=(100, 100), shoulder=(150, 100)):
    keypoints = np.zeros((18, 3), dtype=np.float32)
    keypoints[1] = (*neck, 1.0)  # neck
    keypoints[2] = (*shoulder, 1.0)  # right shoulder
    return keypoints


def test_joints_are_full_colour_circles_and_limbs_dimmed_to_60_percent():
    canvas = draw_openpose(two_joints(), 512, 512)
    assert tuple(canvas[100, 100]) == COLORS[1]  # neck joint
    assert tuple(canvas[100, 150]) == COLORS[2]  # right shoulder joint
    assert tuple(canvas[100, 125]) == tuple(int(c * 0.6) for c in COLORS[0])  # limb neck-shoulder
    # stick width 4 at 512 px: the limb covers y = 100 +- 4, not +- 6
    assert canvas[103, 125].any() and not canvas[106, 125].any()
    assert not canvas[300, 300].any()


def test_a_missing_joint_draws_nothing_and_cuts_its_limbs():
    keypoints = two_joints()
    keypoints[2, 2] = 0.0
    canvas = draw_openpose(keypoints, 512, 512)
    assert tuple(canvas[100, 100]) == COLORS[1]
    assert not canvas[100, 125].any() and not canvas[100, 150].any()


def test_stick_and_joint_size_scale_with_resolution():
    keypoints = two_joints((200, 200), (300, 200))
    canvas = draw_openpose(keypoints, 1024, 1024)  # radius 8, stick width 8
    assert tuple(canvas[207, 200]) == COLORS[1] and not canvas[210, 200].any()
    assert canvas[207, 250].any() and not canvas[211, 250].any()
    small = draw_openpose(keypoints / np.array([4, 4, 1], dtype=np.float32), 256, 256)  # radius 2
    assert tuple(small[52, 50]) == COLORS[1] and not small[54, 50].any()


def test_draw_returns_uint8_of_the_asked_size():
    canvas = draw_openpose(two_joints(), 64, 96)
    assert canvas.shape == (64, 96, 3) and canvas.dtype == np.uint8


def test_round_trip_keeps_keypoints_canvas_and_fps(tmp_path):
    keypoints = np.random.default_rng(0).uniform(0, 100, (5, 18, 3)).astype(np.float32)
    keypoints[..., 2] = 0.9
    keypoints[2] = 0  # a frame with nobody
    path = str(tmp_path / "p.json")
    write_poses(path, PoseSequence(keypoints, (320, 240), 25.0))
    back = read_poses(path)
    assert back.canvas_size == (320, 240) and back.fps == 25.0
    assert np.allclose(back.keypoints, keypoints, atol=1e-3)


def openpose_frame(people):
    return {"version": 1.3, "people": [{"person_id": [-1], "pose_keypoints_2d": p,
                                        "face_keypoints_2d": [], "hand_left_keypoints_2d": []} for p in people]}


def test_reads_openpose_body25_frames_as_coco18(tmp_path):
    body25 = np.arange(75, dtype=np.float32).reshape(25, 3)
    path = tmp_path / "body25.json"
    path.write_text(json.dumps([openpose_frame([body25.flatten().tolist()])]))
    keypoints = read_poses(str(path)).keypoints[0]
    # COCO-18 r-hip (8) is BODY_25's joint 9; mid-hip (BODY_25 8) is dropped
    assert np.array_equal(keypoints[8], body25[9]) and np.array_equal(keypoints[:8], body25[:8])
    assert np.array_equal(keypoints[17], body25[18])


def test_reads_a_folder_of_openpose_write_json_files(tmp_path):
    for i in range(3):
        flat = [float(i)] * 54
        (tmp_path / f"clip_{i:012d}_keypoints.json").write_text(json.dumps(openpose_frame([flat])))
    sequence = read_poses(str(tmp_path))
    assert sequence.keypoints.shape == (3, 18, 3) and sequence.keypoints[2, 0, 0] == 2.0
    assert sequence.canvas_size is None


def test_keeps_the_largest_person_of_a_frame(tmp_path):
    small = np.zeros((18, 3)); small[:, 2] = 1; small[:, 0] = np.linspace(0, 10, 18); small[:, 1] = np.linspace(0, 10, 18)
    large = small.copy(); large[:, :2] *= 20
    path = tmp_path / "two.json"
    path.write_text(json.dumps([openpose_frame([small.flatten().tolist(), large.flatten().tolist()])]))
    assert np.allclose(read_poses(str(path)).keypoints[0], large)


@pytest.mark.parametrize("content, message", [
    ("not json", "not valid JSON"),
    ("[]", "holds no frames"),
    ('{"foo": 1}', "expected a list of OpenPose frames"),
    ('[{"people": [{"pose_keypoints_2d": [1, 2, 3]}]}]', "has 3 numbers"),
    ('[{"people": [{"pose_keypoints_2d": [NaN' + ", 1" * 53 + ']}]}]', "NaN"),
    ('[{"people": [{"pose_keypoints_2d": ["a"' + ", 1" * 53 + ']}]}]', "not a number"),
    ('[{"nobody": []}]', "'people' list"),
])
def test_malformed_pose_files_are_refused_with_a_reason(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(UserError, match=message):
        read_poses(str(path))


def test_missing_pose_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not found"):
        read_poses(str(tmp_path / "none.json"))


def test_fit_keypoints_scales_and_offsets_xy_only():
    keypoints = two_joints()
    fitted = pose_extract.fit_keypoints(keypoints, 0.5, (10, -4))
    assert np.allclose(fitted[1], (60, 46, 1.0)) and np.allclose(fitted[0], (10, -4, 0.0))


def test_a_pose_read_back_from_its_file_draws_the_same_map(tmp_path):
    keypoints = np.full((1, 18, 3), 1.0, np.float32)
    keypoints[0, :, 0] = 10.99996 + 3 * np.arange(18)  # int() of the value and of its 3-decimal rounding differ
    keypoints[0, :, 1] = 20.49999 + 2 * np.arange(18)
    path = str(tmp_path / "poses.json")
    write_poses(path, pose_extract.PoseSequence(keypoints, (128, 128), 30.0))
    back = read_poses(path).keypoints
    assert np.array_equal(back, keypoints)
    assert np.array_equal(pose_extract.draw_openpose(back[0], 128, 128), pose_extract.draw_openpose(keypoints[0], 128, 128))


def test_joints_outside_the_canvas_are_dropped_before_drawing_and_in_saved_poses(tmp_path):
    from conftest import random_keypoints

    import sdvideo

    keypoints = random_keypoints(np.random.default_rng(4), 64, 64, 1)[0]
    keypoints[4, :2] = (70.0, 30.0)  # right wrist beyond the right edge: the limb to it must vanish
    missing = keypoints.copy()
    missing[4, 2] = 0
    assert np.array_equal(draw_openpose(keypoints, 64, 64), draw_openpose(missing, 64, 64))
    assert pose_extract.inside_canvas(keypoints, 64, 64)[4, 2] == 0
    wide = np.tile(keypoints, (2, 1, 1))
    wide[:, :, 0] *= 2  # on a 128x64 canvas; a centre crop to 64x64 cuts the sides away
    path = str(tmp_path / "wide.json")
    write_poses(path, PoseSequence(wide, (128, 64), 10.0))
    out = tmp_path / "run"
    assert sdvideo.main(["--model", "tiny", "--height", "64", "--width", "64", "--steps", "1", "--quiet",
                         "--poses", path, "--out", str(out)]) == 0
    saved = read_poses(str(out / "poses.json")).keypoints
    outside = (wide[..., 0] - 32 < 0) | (wide[..., 0] - 32 >= 64)
    assert outside.any() and (saved[outside][:, 2] == 0).all() and (saved[~outside][:, 2] > 0).all()
