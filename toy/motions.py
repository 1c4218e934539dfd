"""The toy world's poses and training examples: ``random_pose`` (a plausible standing body),
``jittered`` (a known pose moved a little), ``heldout_poses`` (the evaluation set, from a seed no
training stream uses), ``jumping_jacks`` (a second motion beside the golf swing) and ``sample``
(one training example: a pose, a look and its nuisances, rendered by toyworld.py).
Keypoints are COCO-18 (18, 3) in pixels of a size x size picture.
"""
import math
from dataclasses import replace

import numpy as np

from toy.looks import SUBJECTS, random_look, random_nuisance
from toy.toyworld import (L_ANK, L_EAR, L_ELB, L_EYE, L_HIP, L_KNE, L_SHO, L_WRI, NECK, NOSE, R_ANK, R_EAR, R_ELB,
                          R_EYE, R_HIP, R_KNE, R_SHO, R_WRI, SIZE, render, torso_length)


def _at(origin, length, angle):
    """origin + length * (sin a, cos a): angle 0 points down the picture."""
    return origin + length * np.array([math.sin(angle), math.cos(angle)])


def random_pose(rng, size=SIZE):
    """A plausible standing body seen from the front, COCO-18 (18, 3) in pixels of a size x size
    picture: random height, place, lean, turn, arm and leg angles, some face joints hidden."""
    height = rng.uniform(0.55, 0.9) * size
    length = 0.3 * height  # torso
    mid_hip = np.array([rng.uniform(0.3, 0.7) * size, 0.0])
    leg = 1.45 * length
    mid_hip[1] = rng.uniform(0.93 * size - leg - 0.05 * size, 0.95 * size - leg + 0.02 * size)
    lean = rng.normal(0, 0.15)
    neck = _at(mid_hip, length, math.pi + lean)
    turn = rng.uniform(0, 1)
    shoulder_half = length * rng.uniform(0.28, 0.42) * (0.45 + 0.55 * math.cos(turn * 1.2))
    hip_half = length * rng.uniform(0.2, 0.3) * (0.5 + 0.5 * math.cos(turn * 1.2))
    across = np.array([math.cos(lean), -math.sin(lean)])
    points = np.zeros((18, 3), np.float64)
    points[NECK, :2] = neck
    points[R_SHO, :2], points[L_SHO, :2] = neck - shoulder_half * across + (0, 0.08 * length), neck + shoulder_half * across + (0, 0.08 * length)
    points[R_HIP, :2], points[L_HIP, :2] = mid_hip - hip_half * across, mid_hip + hip_half * across
    for shoulder, elbow, wrist, side in ((R_SHO, R_ELB, R_WRI, -1), (L_SHO, L_ELB, L_WRI, 1)):
        upper = side * rng.uniform(-0.4, 2.9) if rng.random() < 0.85 else side * rng.uniform(-2.0, 3.1)
        bend = side * rng.uniform(-0.2, 2.0)
        points[elbow, :2] = _at(points[shoulder, :2], 0.55 * length, upper)
        points[wrist, :2] = _at(points[elbow, :2], 0.5 * length, upper + bend)
    for hip, knee, ankle, side in ((R_HIP, R_KNE, R_ANK, -1), (L_HIP, L_KNE, L_ANK, 1)):
        thigh = side * rng.uniform(-0.15, 0.5)
        bend = -side * rng.uniform(0, 0.6) if rng.random() < 0.7 else side * rng.uniform(0, 0.6)
        points[knee, :2] = _at(points[hip, :2], 0.75 * length, thigh)
        points[ankle, :2] = _at(points[knee, :2], 0.7 * length, thigh + bend)
    tilt, facing = rng.normal(0, 0.15), rng.uniform(-0.25, 0.25)
    nose = _at(neck, 0.45 * length, math.pi + lean + tilt) + (facing * length, 0)
    points[NOSE, :2] = nose
    for joint, dx, dy in ((R_EYE, -0.13, -0.12), (L_EYE, 0.13, -0.12), (R_EAR, -0.26, -0.04), (L_EAR, 0.26, -0.04)):
        points[joint, :2] = nose + length * np.array([dx - 0.3 * facing, dy])
    points[:, 2] = 1.0
    for joint in (R_EYE, L_EYE, R_EAR, L_EAR):
        if rng.random() < 0.15:
            points[joint, 2] = 0.0
    if facing > 0.15:
        points[R_EAR, 2] = 0.0
    if facing < -0.15:
        points[L_EAR, 2] = 0.0
    return points.astype(np.float32)


def jumping_jacks(num_frames=48, size=SIZE, period=24):
    """A second motion beside the golf swing: jumping jacks seen from the front, (F, 18, 3) in pixels
    of a size x size picture; the arms swing from the sides to overhead and the feet apart and back,
    one jack every ``period`` frames (a fixed body, drawn from its own seed)."""
    base = random_pose(np.random.default_rng([HELDOUT_SEED, 1]), size)
    length = torso_length(base)
    mid_hip = (base[R_HIP, :2] + base[L_HIP, :2]) / 2
    base[:, :2] += (size / 2 - mid_hip[0], 0.0)  # centred, so that the arms stay in the picture
    poses = []
    for frame in range(num_frames):
        phase = 0.5 - 0.5 * math.cos(2 * math.pi * frame / period)  # 0: arms down, 1: arms up
        pose = base.copy()
        for shoulder, elbow, wrist, side in ((R_SHO, R_ELB, R_WRI, -1), (L_SHO, L_ELB, L_WRI, 1)):
            upper = side * (0.25 + 2.55 * phase)
            pose[elbow, :2] = _at(pose[shoulder, :2], 0.55 * length, upper)
            pose[wrist, :2] = _at(pose[elbow, :2], 0.5 * length, upper + side * 0.15)
        for hip, knee, ankle, side in ((R_HIP, R_KNE, R_ANK, -1), (L_HIP, L_KNE, L_ANK, 1)):
            thigh = side * (0.05 + 0.3 * phase)
            pose[knee, :2] = _at(pose[hip, :2], 0.75 * length, thigh)
            pose[ankle, :2] = _at(pose[knee, :2], 0.7 * length, thigh)
        poses.append(pose)
    return np.stack(poses).astype(np.float32)


def jittered(keypoints, rng, size=SIZE):
    """A pose (18, 3) moved, scaled and shaken a little (for training on a known pose family)."""
    seen = keypoints[:, 2] > 0
    centre = keypoints[seen, :2].mean(axis=0)
    scale = rng.uniform(0.85, 1.15)
    shift = rng.normal(0, 0.06 * size, 2)
    moved = keypoints.copy()
    moved[:, :2] = (keypoints[:, :2] - centre) * scale + centre + shift + rng.normal(0, 0.006 * size, (18, 2))
    return moved


HELDOUT_SEED = 2_000_000_007  # training draws from seeds below 2**31 - 1 in their own streams


def heldout_poses(count, size=SIZE):
    """The evaluation poses (count, 18, 3): random bodies from a seed no training stream uses."""
    rng = np.random.default_rng([HELDOUT_SEED])
    return np.stack([random_pose(rng, size) for _ in range(count)])


def sample(rng, swing=None, size=SIZE, swing_share=0.3, golfer_share=None, accent=False, nuisance=None):
    """One training example: (image uint8 (size, size, 3), mask, keypoints (18, 3), prompt, look).

    swing: optional (F, 18, 3) poses in picture pixels (the bundled demo swing), jittered.
    golfer_share: the chance that the subject is "a golfer" (None: one subject of SUBJECTS, 1/4).
    accent: looks.random_nuisance's (a toy world 3 candidate's accent colour).
    nuisance: the picture's nuisances (None: drawn here)."""
    if swing is not None and rng.random() < swing_share:
        keypoints = jittered(swing[rng.integers(len(swing))], rng, size)
    else:
        keypoints = random_pose(rng, size)
    look = random_look(rng)
    nuisance = random_nuisance(rng, accent) if nuisance is None else nuisance
    if golfer_share is None:
        subject = SUBJECTS[rng.integers(len(SUBJECTS))]
    else:
        others = [s for s in SUBJECTS if s != "a golfer"]
        subject = "a golfer" if rng.random() < golfer_share else others[rng.integers(len(others))]
    look = replace(look, golfer=subject == "a golfer")
    image, mask = render(keypoints, look, nuisance, size)
    return image, mask, keypoints, look.prompt(subject), look
