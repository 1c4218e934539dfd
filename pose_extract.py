"""Poses: OpenPose COCO-18 keypoints in and out of files, and keypoints into ControlNet pose maps.

Keypoints are float arrays of shape (F, 18, 3): x, y in pixels of the sequence's canvas and a
confidence, 0 meaning the joint is missing. ``read_poses`` reads an OpenPose sequence file (ours,
or a list of OpenPose ``--write_json`` frames, BODY_25 or COCO-18) or a folder of OpenPose's
per-frame ``*_keypoints.json`` files; ``write_poses`` writes ours; ``draw_openpose`` renders one
frame the way ControlNet's OpenPose annotator does.
"""
import json
import math
import os
from dataclasses import dataclass

import cv2
import numpy as np

from errors import UserError

NUM_JOINTS = 18
# COCO-18 order: nose, neck, r-shoulder, r-elbow, r-wrist, l-shoulder, l-elbow, l-wrist, r-hip,
# r-knee, r-ankle, l-hip, l-knee, l-ankle, r-eye, l-eye, r-ear, l-ear.
JOINT_NAMES = (
    "nose", "neck", "r_shoulder", "r_elbow", "r_wrist", "l_shoulder", "l_elbow", "l_wrist",
    "r_hip", "r_knee", "r_ankle", "l_hip", "l_knee", "l_ankle", "r_eye", "l_eye", "r_ear", "l_ear",
)
# The ControlNet OpenPose annotator's limb list (1-based joints) and colours (RGB). It draws only
# the first 17 limbs; the last two (shoulder to ear) are in its list but never drawn.
LIMBS = (
    (2, 3), (2, 6), (3, 4), (4, 5), (6, 7), (7, 8), (2, 9), (9, 10), (10, 11), (2, 12),
    (12, 13), (13, 14), (2, 1), (1, 15), (15, 17), (1, 16), (16, 18), (3, 17), (6, 18),
)
LIMBS_DRAWN = 17
COLORS = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0),
    (0, 255, 0), (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255),
    (0, 0, 255), (85, 0, 255), (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85),
)
ANNOTATOR_SIZE = 512  # the annotator's stick width 4 and joint radius 4 are at 512 px
STICK_WIDTH = 4
JOINT_RADIUS = 4
LIMB_DIM = 0.6  # the annotator multiplies the limb canvas by 0.6 before drawing the joints
# OpenPose's default BODY_25 model: its joints that are COCO-18's, in COCO-18 order
# (BODY_25 adds mid-hip at 8 and six foot points at 19-24).
BODY25_TO_COCO18 = (0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18)
FORMAT_NAME = "sdvideo-openpose-sequence"


@dataclass
class PoseSequence:
    """Keypoints (F, 18, 3) with the canvas they are measured on and the clip's frame rate."""

    keypoints: np.ndarray
    canvas_size: tuple | None = None  # (width, height) in pixels, None where the file gives none
    fps: float | None = None


def draw_openpose(keypoints, height, width):
    """Render one COCO-18 pose as the ControlNet annotator does; keypoints: (18, 3) -> (H, W, 3) uint8.

    Limbs are filled ellipses in the annotator's colours, the limb layer is dimmed to 60 %, then
    each joint is a filled circle. Stick width and radius are the annotator's at 512 px, scaled
    with min(H, W).
    """
    scale = min(height, width) / ANNOTATOR_SIZE
    stick_width = max(1, round(STICK_WIDTH * scale))
    radius = max(1, round(JOINT_RADIUS * scale))
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    present = keypoints[:, 2] > 0
    for (a, b), color in zip(LIMBS[:LIMBS_DRAWN], COLORS):
        if not (present[a - 1] and present[b - 1]):
            continue
        xs, ys = keypoints[[a - 1, b - 1], 0], keypoints[[a - 1, b - 1], 1]
        length = math.hypot(xs[0] - xs[1], ys[0] - ys[1])
        angle = math.degrees(math.atan2(ys[0] - ys[1], xs[0] - xs[1]))
        centre = (int(np.mean(xs)), int(np.mean(ys)))
        polygon = cv2.ellipse2Poly(centre, (int(length / 2), stick_width), int(angle), 0, 360, 1)
        cv2.fillConvexPoly(canvas, polygon, color)
    canvas = (canvas * LIMB_DIM).astype(np.uint8)
    for joint, color in zip(keypoints, COLORS):
        if joint[2] > 0:
            cv2.circle(canvas, (int(joint[0]), int(joint[1])), radius, color, thickness=-1)
    return canvas


def fit_keypoints(keypoints, scale, offset):
    """Map keypoints (..., 18, 3) by x' = scale x + offset[0], y' = scale y + offset[1]."""
    fitted = keypoints.copy()
    fitted[..., 0] = keypoints[..., 0] * scale + offset[0]
    fitted[..., 1] = keypoints[..., 1] * scale + offset[1]
    return fitted


def _person_keypoints(person, where):
    """COCO-18 (18, 3) from one OpenPose person entry (COCO-18 or BODY_25 layout)."""
    flat = person.get("pose_keypoints_2d") if isinstance(person, dict) else None
    if not isinstance(flat, list):
        raise UserError(f"{where}: a person has no 'pose_keypoints_2d' list")
    try:
        values = np.asarray(flat, dtype=np.float64)
    except (TypeError, ValueError):
        raise UserError(f"{where}: 'pose_keypoints_2d' holds something that is not a number") from None
    if values.size == 3 * NUM_JOINTS:
        joints = values.reshape(NUM_JOINTS, 3)
    elif values.size == 3 * 25:
        joints = values.reshape(25, 3)[list(BODY25_TO_COCO18)]
    else:
        raise UserError(f"{where}: 'pose_keypoints_2d' has {values.size} numbers; expected "
                        f"{3 * NUM_JOINTS} (COCO-18) or 75 (BODY_25) as x, y, confidence triples")
    if not np.isfinite(joints).all():
        raise UserError(f"{where}: keypoints contain NaN or infinity")
    return joints.astype(np.float32)


def _main_person(people, where):
    """The person to keep in one frame: the one with the largest keypoint box (18, 3), or zeros."""
    candidates = [_person_keypoints(p, where) for p in people]
    if not candidates:
        return np.zeros((NUM_JOINTS, 3), dtype=np.float32)

    def box_area(joints):
        seen = joints[joints[:, 2] > 0]
        return 0.0 if len(seen) == 0 else float(np.ptp(seen[:, 0]) * np.ptp(seen[:, 1]))

    return max(candidates, key=box_area)


def _frames_to_keypoints(frames, source):
    """(F, 18, 3) from a list of OpenPose frame dicts."""
    keypoints = []
    for index, frame in enumerate(frames):
        where = f"{source}, frame {index}"
        people = frame.get("people") if isinstance(frame, dict) else None
        if not isinstance(people, list):
            raise UserError(f"{where}: expected an OpenPose frame with a 'people' list")
        keypoints.append(_main_person(people, where))
    return np.stack(keypoints)


def _load_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"cannot read pose file {path}: {error}") from None
    except json.JSONDecodeError as error:
        raise UserError(f"pose file {path} is not valid JSON ({error}); expected OpenPose keypoints") from None


def read_poses(path):
    """Read a pose sequence file or a folder of OpenPose per-frame JSON files -> PoseSequence."""
    if os.path.isdir(path):
        names = sorted(n for n in os.listdir(path) if n.endswith(".json"))
        if not names:
            raise UserError(f"pose folder {path} holds no .json files; expected OpenPose --write_json output")
        frames = [_load_json(os.path.join(path, n)) for n in names]
        return PoseSequence(_frames_to_keypoints(frames, path))
    if not os.path.exists(path):
        raise UserError(f"pose file not found: {path}")
    data = _load_json(path)
    if isinstance(data, list):
        frames, canvas, fps = data, None, None
    elif isinstance(data, dict) and isinstance(data.get("frames"), list):
        frames, fps = data["frames"], data.get("fps")
        width, height = data.get("canvas_width"), data.get("canvas_height")
        canvas = (int(width), int(height)) if width and height else None
    elif isinstance(data, dict) and "people" in data:
        frames, canvas, fps = [data], None, None
    else:
        raise UserError(f"pose file {path}: expected a list of OpenPose frames or an object with 'frames'")
    if not frames:
        raise UserError(f"pose file {path} holds no frames")
    return PoseSequence(_frames_to_keypoints(frames, path), canvas, fps)


def write_poses(path, sequence):
    """Write a PoseSequence as our JSON: OpenPose frames plus canvas size and fps."""
    frames = [
        {"version": 1.3, "people": [] if not (joints[:, 2] > 0).any()
         else [{"person_id": [-1], "pose_keypoints_2d": [round(float(v), 3) for v in joints.flatten()]}]}
        for joints in sequence.keypoints
    ]
    data = {"format": FORMAT_NAME, "version": 1, "fps": sequence.fps, "frames": frames}
    if sequence.canvas_size is not None:
        data["canvas_width"], data["canvas_height"] = sequence.canvas_size
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f)
    os.replace(tmp, path)


def similarity_transform(source, target, min_joints=2):
    """2x3 similarity (rotation, uniform scale, shift) mapping source joints onto target joints.

    source, target: (18, 3); joints present in both are used (least squares, OpenCV). Identity
    when fewer than ``min_joints`` are shared.
    """
    shared = (source[:, 2] > 0) & (target[:, 2] > 0)
    if shared.sum() < min_joints:
        return np.float32([[1, 0, 0], [0, 1, 0]])
    matrix, _ = cv2.estimateAffinePartial2D(source[shared, :2].astype(np.float32),
                                            target[shared, :2].astype(np.float32), method=cv2.LMEDS)
    return np.float32([[1, 0, 0], [0, 1, 0]]) if matrix is None else matrix.astype(np.float32)
