"""The toy world's renderer and its measurements, against cases with known answers."""
import numpy as np
import pytest

import pose_extract
import toy_metrics as tm
import toyworld as tw


@pytest.fixture(scope="module")
def swing():
    sequence = pose_extract.read_poses("demo/golf_swing.json")
    return pose_extract.fit_keypoints(sequence.keypoints, tw.SIZE / 512, (0.0, 0.0))


def test_prompt_words_set_shirt_trousers_and_background():
    look = tw.parse_prompt("A woman in a Yellow shirt and white pants, on a beach at noon")
    assert look == tw.Look("yellow", "white", "beach")
    assert tw.parse_prompt("a golfer at night", tw.Look("red", "blue", "studio")) == tw.Look("red", "blue", "night")
    for look in (tw.Look(s, t, b) for s in tw.COLORS for t in ("black", "green") for b in tw.BACKGROUNDS):
        assert tw.parse_prompt(look.prompt("a man")) == look  # the training prompts read back


def test_the_mask_follows_the_pose_and_ignores_the_nuisances(swing):
    look = tw.Look("red", "black", "golf course")
    plain, mask = tw.render(swing[0], look, tw.Nuisance())
    busy, busy_mask = tw.render(swing[0], look, tw.Nuisance(texture="clouds", light=1.15, shadow=0.25, cap=1))
    _, moved_mask = tw.render(swing[40], look, tw.Nuisance())
    assert np.abs(busy.astype(int) - plain.astype(int)).mean() > 5  # the nuisances change the picture
    assert tm.iou(mask, busy_mask) > 0.95  # ... not the figure (a cap adds its peak)
    assert tm.iou(mask, moved_mask) < 0.8  # another pose, another figure
    assert 0.05 < mask.mean() < 0.4


def test_a_source_clip_keeps_one_look_and_one_nuisance_draw(swing):
    frames, masks = tw.render_clip(swing[:2].repeat(2, axis=0)[[0, 2]], "a golfer in a green shirt", seed=3)
    assert np.array_equal(frames[0], frames[1]) and np.array_equal(masks[0], masks[1])
    other, _ = tw.render_clip(swing[:1], "a golfer in a green shirt", seed=4)
    assert not np.array_equal(other[0], frames[0])


def test_random_poses_are_plausible_and_the_held_out_set_is_fixed():
    rng = np.random.default_rng(0)
    poses = np.stack([tw.random_pose(rng) for _ in range(200)])
    body = poses[:, :14]
    assert (body[..., 2] == 1).all()  # body joints always present; only face joints may hide
    assert (body[..., :2] > -8).all() and (body[..., :2] < tw.SIZE + 8).all()
    lengths = np.linalg.norm(poses[:, 1, :2] - (poses[:, 8, :2] + poses[:, 11, :2]) / 2, axis=-1)
    assert 9 < lengths.min() and lengths.max() < 20  # torso 0.3 of a 0.55-0.9 picture-high figure
    held = tw.heldout_poses(4)
    assert np.array_equal(held, tw.heldout_poses(4))
    assert min(np.abs(held[i] - p).max() for i in range(4) for p in poses) > 1.0
