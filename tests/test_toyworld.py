"""The toy world's renderer and its measurements, against cases with known answers."""
import cv2
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


def test_prompt_words_set_shirt_trousers_and_background():
    look = looks.parse_prompt("A woman in a Yellow shirt and white pants, on a beach at noon")
    assert look == looks.Look("yellow", "white", "beach")
    assert looks.parse_prompt("a golfer at night", looks.Look("red", "blue", "studio")) == looks.Look("red", "blue", "night",
                                                                                             golfer=True)
    for look in (looks.Look(s, t, b, g) for s in looks.COLORS for t in ("black", "green") for b in looks.BACKGROUNDS
                 for g in (False, True)):
        assert looks.parse_prompt(look.prompt("a golfer" if look.golfer else "a man")) == look  # training prompts read back


def test_the_mask_follows_the_pose_and_ignores_the_nuisances(swing):
    look = looks.Look("red", "black", "golf course")
    plain, mask = tw.render(swing[0], look, looks.Nuisance())
    busy, busy_mask = tw.render(swing[0], look, looks.Nuisance(texture="clouds", light=1.15, shadow=0.25, cap=1))
    _, moved_mask = tw.render(swing[40], look, looks.Nuisance())
    assert np.abs(busy.astype(int) - plain.astype(int)).mean() > 5  # the nuisances change the picture
    assert tm.iou(mask, busy_mask) > 0.95  # ... not the figure (a cap adds its peak)
    assert tm.iou(mask, moved_mask) < 0.8  # another pose, another figure
    assert 0.015 < mask.mean() < 0.3  # toy world 2's slim limbs: a few % of the picture


def test_a_source_clip_keeps_one_look_and_one_nuisance_draw(swing):
    frames, masks = tw.render_clip(swing[:2].repeat(2, axis=0)[[0, 2]], "a golfer in a green shirt", seed=3)
    assert np.array_equal(frames[0], frames[1]) and np.array_equal(masks[0], masks[1])
    other, _ = tw.render_clip(swing[:1], "a golfer in a green shirt", seed=4)
    assert not np.array_equal(other[0], frames[0])


def test_random_poses_are_plausible_and_the_held_out_set_is_fixed():
    rng = np.random.default_rng(0)
    poses = np.stack([motions.random_pose(rng) for _ in range(200)])
    body = poses[:, :14]
    assert (body[..., 2] == 1).all()  # body joints always present; only face joints may hide
    assert (body[..., :2] > -16).all() and (body[..., :2] < tw.SIZE + 16).all()
    lengths = np.linalg.norm(poses[:, 1, :2] - (poses[:, 8, :2] + poses[:, 11, :2]) / 2, axis=-1)
    assert 18 < lengths.min() and lengths.max() < 40  # torso 0.3 of a 0.55-0.9 picture-high figure
    held = motions.heldout_poses(4)
    assert np.array_equal(held, motions.heldout_poses(4))
    assert min(np.abs(held[i] - p).max() for i in range(4) for p in poses) > 1.0


@pytest.fixture(scope="module")
def swing2():
    sequence = pose_extract.read_poses("demo/golf_swing.json")
    return pose_extract.fit_keypoints(sequence.keypoints, tw.SIZE / 512, (0.0, 0.0))


def test_toy_world_2_draws_a_club_for_a_golfer_only(swing2):
    golfer, person = looks.Look("red", "black", "golf course", golfer=True), looks.Look("red", "black", "golf course")
    for frame in (0, 28, 44):
        with_club, club_mask = tw.render(swing2[frame], golfer, looks.Nuisance(), tw.SIZE)
        without, mask = tw.render(swing2[frame], person, looks.Nuisance(), tw.SIZE)
        extra = club_mask & ~mask
        assert 15 < extra.sum() < 0.1 * mask.sum()  # a thin shaft and a head, nothing else changes
        near_club = cv2.dilate(club_mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        assert np.abs(with_club.astype(int) - without.astype(int))[~near_club].max() == 0  # edges anti-aliased
        grip, end = tw.club_line(swing2[frame], tw.SLIM)
        assert np.linalg.norm(end - grip) == pytest.approx(tw.SLIM.club * tw.torso_length(swing2[frame]), rel=1e-6)
    half = swing2[28].copy()
    half[:, :2] *= tw.FIRST_SIZE / tw.SIZE
    first_world, _ = tw.render(half, golfer, looks.Nuisance(), tw.FIRST_SIZE)
    plain, _ = tw.render(half, person, looks.Nuisance(), tw.FIRST_SIZE)
    assert np.array_equal(first_world, plain)  # the 64 px world draws no club (its model never saw one)


def test_the_club_continues_the_forearms_from_the_hands():
    pose = motions.heldout_poses(1, tw.SIZE)[0].copy()
    pose[tw.L_ELB, :2], pose[tw.L_WRI, :2] = (60, 60), (70, 70)  # the left forearm points down-right
    pose[tw.R_WRI, :2] = (20, 20)  # the right hand far away: the left (lead) hand holds the club
    grip, end = tw.club_line(pose, tw.SLIM)
    direction = (end - grip) / np.linalg.norm(end - grip)
    assert direction == pytest.approx(np.array([1, 1]) / np.sqrt(2), abs=1e-6)
    assert np.linalg.norm(grip - pose[tw.L_WRI, :2]) < 0.2 * tw.torso_length(pose)
    pose[tw.R_ELB, :2], pose[tw.R_WRI, :2] = (80, 60), (72, 70)  # both hands together: a two-handed grip
    grip, end = tw.club_line(pose, tw.SLIM)
    assert np.linalg.norm(grip - (71, 70)) < 0.2 * tw.torso_length(pose)  # between the hands
    mean_forearm = (np.array([10, 10]) / np.hypot(10, 10) + np.array([-8, 10]) / np.hypot(8, 10))
    expected = mean_forearm / np.linalg.norm(mean_forearm)
    assert (end - grip) / np.linalg.norm(end - grip) == pytest.approx(expected, abs=1e-6)
    assert tw.club_line(pose, tw.CHUNKY) is None


def test_toy_world_2_limbs_are_thin_and_the_arm_mask_is_the_arms_alone(swing2):
    pose = swing2[18]
    _, figure = tw.render(pose, looks.Look(background="studio"), looks.Nuisance(), tw.SIZE)
    arms = tw.limb_mask(pose, tw.ARMS, tw.SIZE)
    assert arms.sum() > 0 and (arms & ~figure).sum() == 0  # inside the figure
    forearm = tw.limb_mask(pose, ((tw.L_ELB, tw.L_WRI),), tw.SIZE)
    length = np.linalg.norm(pose[tw.L_WRI, :2] - pose[tw.L_ELB, :2])
    width = forearm.sum() / length  # area / length of a capsule ~ its width (plus the round ends)
    assert 0.6 * tw.SLIM.forearm * tw.torso_length(pose) < width < 1.8 * tw.SLIM.forearm * tw.torso_length(pose)
    assert tw.SLIM.arm < 0.7 * tw.CHUNKY.arm


def test_toy_world_2_held_out_poses_scale_with_the_picture():
    assert np.allclose(motions.heldout_poses(3, tw.SIZE)[..., :2], 2 * motions.heldout_poses(3, tw.FIRST_SIZE)[..., :2], atol=1e-4)


def test_an_accent_colour_is_worn_on_cap_and_shoes_and_tints_the_stripes_and_leaves_toy_world_2_draws_alone(swing2):
    from dataclasses import replace

    plain = looks.random_nuisance(np.random.default_rng(5))
    accented = looks.random_nuisance(np.random.default_rng(5), accent=True)
    assert plain.accent == -1 and replace(accented, accent=-1, cap=plain.cap, texture=plain.texture) == plain
    assert accented.cap == accented.accent >= 0 and accented.texture == "stripes"
    keypoints = swing2[0]
    image, _ = tw.render(keypoints, looks.Look(background="studio"), accented)
    colour = np.float32(looks.CAP_COLORS[accented.accent])
    for joint in (tw.R_ANK, tw.L_ANK):  # the shoes, just below each ankle
        x, y = keypoints[joint, :2] + (0.0, 0.12 * tw.torso_length(keypoints))
        assert np.abs(image[int(round(y)), int(round(x))].astype(np.float32) * 1.0 / accented.light - colour).max() < 60
    stripes = looks.texture("stripes", 3, 64, 64, accent=accented.accent)
    direction = colour / 255 - 0.5
    assert np.corrcoef(stripes.reshape(-1, 3).std(0), np.abs(direction))[0, 1] > 0.99  # tinted in its colour
