"""The toy world's measures against the renderer's own pictures, whose answers are known."""
import dataclasses

import numpy as np
import pytest

import pose_extract
from toy import looks, motions
from toy import toy_metrics as tm
from toy import toyworld as tw


@pytest.fixture(scope="module")
def swing():
    sequence = pose_extract.read_poses("demo/golf_swing.json")
    return pose_extract.fit_keypoints(sequence.keypoints, tw.SIZE / 512, (0.0, 0.0))


def test_the_shirt_colour_is_drawn_on_the_torso_and_read_back(swing):
    rng = np.random.default_rng(0)
    for shirt in looks.COLORS:
        trousers = "white" if shirt != "white" else "black"
        image, _ = tw.render(swing[0], looks.Look(shirt, trousers, "studio"), looks.random_nuisance(rng))
        assert tm.dominant_color(image, tm.torso_mask(swing[0])) == shirt


def test_segmentation_finds_the_rendered_figure_on_every_background():
    rng = np.random.default_rng(1)
    scores = {b: [] for b in looks.BACKGROUNDS}
    for _ in range(120):
        image, mask, _, _, look = motions.sample(rng)
        scores[look.background].append(tm.iou(tm.segment_figure(image, look.background), mask))
    assert np.mean(scores["studio"]) > 0.85 and np.mean(scores["golf course"]) > 0.8
    assert all(np.mean(v) > 0.7 for v in scores.values())


def test_pose_iou_and_colour_accuracy_of_true_renders_and_of_wrong_ones(swing):
    prompt = "a golfer in a blue shirt and black trousers, in a studio"
    frames, _ = tw.render_clip(swing[::8], prompt, seed=0)
    assert tm.pose_iou(frames, swing[::8], prompt) > 0.85
    assert tm.pose_iou(frames, swing[::8][::-1], prompt) < 0.75  # frames against other poses
    assert tm.color_accuracy(frames, swing[::8], prompt) == 1.0
    assert tm.color_accuracy(frames, swing[::8], prompt.replace("blue", "red")) == 0.0
    assert tm.color_accuracy(frames, swing[::8], "a golfer") is None


def test_arm_iou_and_club_visibility_of_toy_world_2_renders_and_of_wrong_ones():
    poses = motions.heldout_poses(12, tw.SIZE)
    rng = np.random.default_rng(2)
    look = looks.Look("green", "black", "golf course", golfer=True)
    frames = np.stack([tw.render(p, look, looks.random_nuisance(rng), tw.SIZE)[0] for p in poses])
    prompt = look.prompt()
    assert tm.arm_iou(frames, poses, prompt) > 0.8
    assert tm.arm_iou(frames, poses[::-1], prompt) < 0.4  # the same pictures against other poses
    assert tm.club_visibility(frames, poses, prompt) == 1.0
    assert tm.club_visibility(frames, poses[::-1], prompt) < 0.3  # clubs elsewhere
    plain = np.stack([tw.render(p, dataclasses.replace(look, golfer=False), looks.Nuisance(), tw.SIZE)[0] for p in poses])
    assert tm.club_visibility(plain, poses, prompt) == 0.0  # no club drawn: none seen
    assert tm.club_visibility(frames, poses, looks.Look("green", "black", "golf course").prompt()) is None
    armless = frames.copy()
    for frame, pose in zip(armless, poses):  # the arms painted over with the background
        arms = tw.limb_mask(pose, tw.ARMS, tw.SIZE)
        frame[arms] = looks.clean_background("golf course", tw.SIZE, tw.SIZE)[0][arms].astype(np.uint8)
    assert tm.arm_iou(armless, poses, prompt) < 0.25
