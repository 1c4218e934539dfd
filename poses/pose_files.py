"""Pose files: OpenPose JSON in and out. Keypoints are float arrays (F, 18, 3): x, y in pixels of
the sequence's canvas and a confidence, 0 meaning the joint is missing, in COCO-18 order.

``read_poses`` reads our sequence file, a list of OpenPose ``--write_json`` frames (BODY_25 or
COCO-18) or a folder of per-frame ``*_keypoints.json`` files; ``write_poses`` writes ours, at full
precision, so a pose read back draws the same map.
"""
import json
import os
from dataclasses import dataclass

import numpy as np

from common import files
from common.errors import UserError

# COCO-18 order: nose, neck, r-shoulder, r-elbow, r-wrist, l-shoulder, l-elbow, l-wrist, r-hip,
# r-knee, r-ankle, l-hip, l-knee, l-ankle, r-eye, l-eye, r-ear, l-ear.
NUM_JOINTS = 18
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
    hands: np.ndarray | None = None  # (F, 2, 21, 3): left, right; zeros where not detected
    face: np.ndarray | None = None  # (F, K, 3): K = 68 or 70 face points
    kept: list | None = None  # source frame indices the frames are (after --on-missing skip)


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


def _points(person, key, count):
    """(count, 3) from an OpenPose person's flat list under key, or None."""
    values = person.get(key) if isinstance(person, dict) else None
    if not values or len(values) % 3:
        return None
    points = np.asarray(values, dtype=np.float32).reshape(-1, 3)[:count]
    return points if np.isfinite(points).all() else None


def _main_person(people, where):
    """The index of the person to keep in one frame (largest keypoint box) and its body (18, 3)."""
    candidates = [_person_keypoints(p, where) for p in people]
    if not candidates:
        return None, np.zeros((NUM_JOINTS, 3), dtype=np.float32)

    def box_area(joints):
        seen = joints[joints[:, 2] > 0]
        return 0.0 if len(seen) == 0 else float(np.ptp(seen[:, 0]) * np.ptp(seen[:, 1]))

    index = max(range(len(candidates)), key=lambda i: box_area(candidates[i]))
    return index, candidates[index]


def _frames_to_sequence(frames, source, canvas=None, fps=None):
    """PoseSequence from a list of OpenPose frame dicts (hands and face kept where present)."""
    keypoints, hands, faces = [], [], []
    for index, frame in enumerate(frames):
        where = f"{source}, frame {index}"
        people = frame.get("people") if isinstance(frame, dict) else None
        if not isinstance(people, list):
            raise UserError(f"{where}: expected an OpenPose frame with a 'people' list")
        chosen, body = _main_person(people, where)
        keypoints.append(body)
        person = people[chosen] if chosen is not None else {}
        pair = [_points(person, f"hand_{side}_keypoints_2d", 21) for side in ("left", "right")]
        hands.append(np.stack([p if p is not None and len(p) == 21 else np.zeros((21, 3), np.float32) for p in pair]))
        faces.append(_points(person, "face_keypoints_2d", 70))
    has_hands = any(h.any() for h in hands)
    face_sizes = {len(f) for f in faces if f is not None}
    face = None
    if len(face_sizes) == 1:
        size = face_sizes.pop()
        face = np.stack([f if f is not None else np.zeros((size, 3), np.float32) for f in faces])
    return PoseSequence(np.stack(keypoints), canvas, fps, np.stack(hands) if has_hands else None, face)


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
        return _frames_to_sequence(frames, path)
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
    sequence = _frames_to_sequence(frames, path, canvas, fps)
    if isinstance(data, dict) and isinstance(data.get("kept_frames"), list):
        sequence.kept = [int(k) for k in data["kept_frames"]]
    return sequence


def write_poses(path, sequence):
    """Write a PoseSequence as our JSON: OpenPose frames plus canvas size and fps."""

    def flat(points):  # full precision: a pose read back draws the same map (no rounding before int())
        return [float(v) for v in points.flatten()]

    frames = []
    for i, joints in enumerate(sequence.keypoints):
        person = {"person_id": [-1], "pose_keypoints_2d": flat(joints)}
        if sequence.hands is not None:
            person["hand_left_keypoints_2d"], person["hand_right_keypoints_2d"] = map(flat, sequence.hands[i])
        if sequence.face is not None:
            person["face_keypoints_2d"] = flat(sequence.face[i])
        frames.append({"version": 1.3, "people": [person] if (joints[:, 2] > 0).any() else []})
    data = {"format": FORMAT_NAME, "version": 1, "fps": sequence.fps, "frames": frames}
    if sequence.kept is not None:
        data["kept_frames"] = [int(k) for k in sequence.kept]
    if sequence.canvas_size is not None:
        data["canvas_width"], data["canvas_height"] = sequence.canvas_size
    with files.atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f)
