"""One person's keypoints over time: tracking among several people, gap filling, smoothing, and
the policy for frames with nobody. Pure numpy on (F, 18, 3) arrays (x, y, confidence);
``track_person`` and ``clean_up`` are the entry points, used by pose_extract.extract_sequence.
"""
import logging
import math
from dataclasses import dataclass

import numpy as np

from common.errors import UserError

log = logging.getLogger("pose_extract")
NUM_JOINTS = 18


def keypoint_box(joints):
    """(x0, y0, x1, y1) of the present joints of (18, 3), or None."""
    seen = joints[joints[:, 2] > 0]
    if len(seen) == 0:
        return None
    return float(seen[:, 0].min()), float(seen[:, 1].min()), float(seen[:, 0].max()), float(seen[:, 1].max())


def _main_subject(people, width, height):
    """The largest, most central person of a frame: area times closeness to the centre."""
    diagonal = math.hypot(width, height)

    def score(person):
        box = keypoint_box(person["body"])
        if box is None:
            return -1.0
        area = max(box[2] - box[0], 1.0) * max(box[3] - box[1], 1.0)
        centre = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
        return area * (1.0 - math.hypot(centre[0] - width / 2, centre[1] - height / 2) / diagonal)

    return max(people, key=score)


def _distance(a, b):
    """Mean distance between the joints present in both (18, 3) poses; inf if none are shared."""
    shared = (a[:, 2] > 0) & (b[:, 2] > 0)
    return float(np.linalg.norm(a[shared, :2] - b[shared, :2], axis=1).mean()) if shared.any() else math.inf


def track_person(people_per_frame, width, height, max_jump=0.5):
    """Follow one person: the main subject of the first frame with anyone, then whoever is nearest
    to where that person should be (last pose moved by its last velocity). A candidate further
    than ``max_jump`` times the person's box diagonal is a bystander: the frame counts as empty.
    -> ((F, 18, 3) keypoints, zeros where the person is not found; the chosen person dict or None per frame)."""
    tracked = np.zeros((len(people_per_frame), NUM_JOINTS, 3), dtype=np.float32)
    chosen_people = [None] * len(people_per_frame)
    last, velocity = None, np.zeros((NUM_JOINTS, 2), dtype=np.float32)
    for index, people in enumerate(people_per_frame):
        bodies = [p for p in people if keypoint_box(p["body"]) is not None]
        if not bodies:
            continue
        if last is None:
            person = _main_subject(bodies, width, height)
        else:
            predicted = last.copy()
            predicted[:, :2] += velocity
            box = keypoint_box(last)
            reach = max_jump * math.hypot(box[2] - box[0], box[3] - box[1]) + 1.0
            distances = [_distance(p["body"], predicted) for p in bodies]
            if min(distances) > reach:
                continue
            person = bodies[int(np.argmin(distances))]
            shared = (person["body"][:, 2] > 0) & (last[:, 2] > 0)
            velocity = np.where(shared[:, None], person["body"][:, :2] - last[:, :2], 0.0).astype(np.float32)
        tracked[index], last, chosen_people[index] = person["body"], person["body"], person
    return tracked, chosen_people


def fill_gaps(keypoints, max_gap):
    """Interpolate each joint linearly over runs of at most ``max_gap`` missing frames; (F, 18, 3)."""
    filled = keypoints.copy()
    for joint in range(keypoints.shape[1]):
        present = np.flatnonzero(keypoints[:, joint, 2] > 0)
        for before, after in zip(present, present[1:]):
            gap = after - before - 1
            if 0 < gap <= max_gap:
                for frame in range(before + 1, after):
                    u = (frame - before) / (after - before)
                    filled[frame, joint, :2] = (1 - u) * keypoints[before, joint, :2] + u * keypoints[after, joint, :2]
                    filled[frame, joint, 2] = min(keypoints[before, joint, 2], keypoints[after, joint, 2])
    return filled


def one_euro(values, fps, min_cutoff=1.0, beta=0.2, derivative_cutoff=1.0):
    """One-Euro filter (Casiez et al., CHI 2012) over a 1-D signal (F,): smooths jitter when
    still, follows fast motion (the cutoff grows with speed: f_c = min_cutoff + beta |dx/dt|)."""

    def alpha(cutoff):
        tau = 1.0 / (2 * math.pi * cutoff)
        return 1.0 / (1.0 + tau * fps)

    out = np.array(values, dtype=np.float64)
    derivative = 0.0
    for i in range(1, len(out)):
        raw_derivative = (values[i] - out[i - 1]) * fps
        derivative += alpha(derivative_cutoff) * (raw_derivative - derivative)
        out[i] = out[i - 1] + alpha(min_cutoff + beta * abs(derivative)) * (values[i] - out[i - 1])
    return out


def smooth(keypoints, fps, min_cutoff=1.0, beta=0.2):
    """One-Euro smoothing of every joint's x and y over each run of frames where it is present."""
    smoothed = keypoints.copy()
    for joint in range(keypoints.shape[1]):
        present = keypoints[:, joint, 2] > 0
        edges = np.flatnonzero(np.diff(np.r_[0, present.astype(int), 0]))
        for start, stop in zip(edges[::2], edges[1::2]):
            for axis in (0, 1):
                smoothed[start:stop, joint, axis] = one_euro(keypoints[start:stop, joint, axis], fps, min_cutoff, beta)
    return smoothed


def frames_without_person(keypoints):
    """Indices of frames where no joint is present."""
    return [i for i, joints in enumerate(keypoints) if not (joints[:, 2] > 0).any()]


def fill_empty_frames(keypoints):
    """Frames with nobody take the pose interpolated between the nearest frames with someone."""
    empty = set(frames_without_person(keypoints))
    found = [i for i in range(len(keypoints)) if i not in empty]
    filled = keypoints.copy()
    for frame in sorted(empty):
        before = max((i for i in found if i < frame), default=None)
        after = min((i for i in found if i > frame), default=None)
        if before is None or after is None:
            filled[frame] = keypoints[after if before is None else before]
        else:
            u = (frame - before) / (after - before)
            both = (keypoints[before, :, 2] > 0) & (keypoints[after, :, 2] > 0)
            filled[frame, :, :2] = (1 - u) * keypoints[before, :, :2] + u * keypoints[after, :, :2]
            filled[frame, :, 2] = np.where(both, np.minimum(keypoints[before, :, 2], keypoints[after, :, 2]), 0)
    return filled


@dataclass
class CleanUp:
    """Temporal clean-up settings: confidence floor, gap filling, smoothing, empty frames."""

    min_conf: float = 0.3
    fill: int = 4  # frames
    smooth: str = "one-euro"  # or "none"
    smooth_cutoff: float = 1.0  # Hz, One-Euro's minimum cutoff
    smooth_beta: float = 0.2  # One-Euro's speed coefficient: larger follows fast motion more closely
    on_missing: str = "fill"  # "fill", "fail" or "skip"


def clean_up(keypoints, fps, settings):
    """Apply CleanUp to tracked keypoints (F, 18, 3) -> (keypoints, kept frame indices)."""
    keypoints = keypoints.copy()
    keypoints[keypoints[..., 2] < settings.min_conf] = 0
    empty = frames_without_person(keypoints)
    if len(empty) == len(keypoints):
        raise UserError("no person was found in any frame; check the video, lower --pose-min-conf, "
                        "or try another --pose-backend")
    if empty:
        shown = ", ".join(map(str, empty[:12])) + ("..." if len(empty) > 12 else "")
        if settings.on_missing == "fail":
            raise UserError(f"no person in {len(empty)} of {len(keypoints)} frames ({shown}); "
                            "use --on-missing fill or skip")
        log.warning("no person in %d of %d frames (%s): %s", len(empty), len(keypoints), shown,
                    "dropped" if settings.on_missing == "skip" else "filled from neighbours")
    kept = [i for i in range(len(keypoints)) if settings.on_missing != "skip" or i not in empty]
    keypoints = keypoints[kept]
    keypoints = fill_gaps(keypoints, settings.fill)
    if settings.on_missing == "fill":
        keypoints = fill_empty_frames(keypoints)
    if settings.smooth == "one-euro":
        keypoints = smooth(keypoints, fps, settings.smooth_cutoff, settings.smooth_beta)
    return keypoints, kept
