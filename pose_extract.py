"""Poses into ControlNet pose maps, and video into poses: ``draw_openpose`` renders one COCO-18
pose the way ControlNet's OpenPose annotator does; ``extract_sequence`` detects (poses/detectors.py),
tracks and cleans up (poses/pose_tracking.py) the poses of a clip; the ``extract`` command
(``python pose_extract.py --video swing.mp4 --out poses.json``, or ``sdvideo.py extract``) writes
them as a pose file (poses/pose_files.py, whose ``read_poses``/``write_poses`` are re-exported here).
"""
import argparse
import logging
import math
import os
import shutil
import sys

import cv2
import numpy as np
from tqdm.auto import tqdm

from common import files
from common.errors import HelpFormatter, UserError
from poses import detectors, pose_tracking
from poses.pose_files import PoseSequence, read_poses, write_poses  # noqa: F401 (this module's API too)
from poses.pose_tracking import CleanUp

log = logging.getLogger("pose_extract")

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
# The annotator's hand skeleton: the wrist (0) to each finger's first joint, then along the finger.
HAND_EDGES = tuple((0 if j % 4 == 0 else j, j + 1) for j in range(20))


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
    keypoints = inside_canvas(keypoints, width, height)
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


def draw_hands_and_face(canvas, hands=None, face=None):
    """Add hands (2, 21, 3) and face (K, 3) to a pose map in place, as the annotator draws them:
    hand edges in rainbow colours (width 2) with blue joints, face points as white dots."""
    scale = min(canvas.shape[:2]) / ANNOTATOR_SIZE
    for hand in ([] if hands is None else hands):
        for index, (a, b) in enumerate(HAND_EDGES):
            if hand[a, 2] > 0 and hand[b, 2] > 0:
                hue = np.uint8([[[int(180 * index / len(HAND_EDGES)), 255, 255]]])
                color = tuple(int(c) for c in cv2.cvtColor(hue, cv2.COLOR_HSV2RGB)[0, 0])
                cv2.line(canvas, tuple(int(v) for v in hand[a, :2]), tuple(int(v) for v in hand[b, :2]), color,
                         max(1, round(2 * scale)))
        for point in hand:
            if point[2] > 0:
                cv2.circle(canvas, (int(point[0]), int(point[1])), max(1, round(4 * scale)), (0, 0, 255), -1)
    for point in ([] if face is None else face):
        if point[2] > 0:
            cv2.circle(canvas, (int(point[0]), int(point[1])), max(1, round(3 * scale)), (255, 255, 255), -1)
    return canvas


def draw_pose_frame(sequence, index, height, width, hands_and_face=False):
    """Frame ``index`` of a sequence as a pose map: the body, and hands and face when asked and present."""
    canvas = draw_openpose(sequence.keypoints[index], height, width)
    if hands_and_face:
        draw_hands_and_face(canvas, None if sequence.hands is None else sequence.hands[index],
                            None if sequence.face is None else sequence.face[index])
    return canvas


def fit_keypoints(keypoints, scale, offset):
    """Map keypoints (..., 18, 3) by x' = scale x + offset[0], y' = scale y + offset[1]."""
    fitted = keypoints.copy()
    fitted[..., 0] = keypoints[..., 0] * scale + offset[0]
    fitted[..., 1] = keypoints[..., 1] * scale + offset[1]
    return fitted


def inside_canvas(keypoints, width, height):
    """Keypoints (..., 18, 3) with the joints outside the [0, width) x [0, height) canvas marked
    missing (confidence 0): a joint cropped away is not drawn, nor counted by PCK."""
    kept = keypoints.copy()
    x, y = keypoints[..., 0], keypoints[..., 1]
    kept[..., 2] = np.where((x >= 0) & (x < width) & (y >= 0) & (y < height), keypoints[..., 2], 0.0)
    return kept


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


def extract_sequence(frames, detector, fps, settings, progress=True):
    """Detect, track and clean up poses on frames (F, H, W, 3) -> (PoseSequence, kept frame indices).

    Coordinates are pixels of the frames given; hands and face are the tracked person's, where
    the backend gives them (not smoothed)."""
    height, width = frames[0].shape[:2]
    people = [detector(frame) for frame in tqdm(frames, desc="poses", unit="frame", disable=not progress)]
    tracked, chosen = pose_tracking.track_person(people, width, height)
    keypoints, kept = pose_tracking.clean_up(tracked, fps, settings)
    hands = face = None
    if any(p is not None and "hands" in p for p in chosen):
        hands = np.stack([chosen[i]["hands"] if chosen[i] is not None and "hands" in chosen[i]
                          else np.zeros((2, 21, 3), np.float32) for i in kept])
    faces = [chosen[i].get("face") if chosen[i] is not None else None for i in kept]
    sizes = {len(f) for f in faces if f is not None}
    if len(sizes) == 1:
        size = sizes.pop()
        face = np.stack([f if f is not None else np.zeros((size, 3), np.float32) for f in faces])
    return PoseSequence(keypoints, (width, height), fps, hands, face, kept), kept


# ---- command line -----------------------------------------------------------------------------

def add_extraction_arguments(parser):
    """The extraction flags, shared with sdvideo.py."""
    group = parser.add_argument_group("pose extraction")
    group.add_argument("--pose-backend", choices=("auto", *sorted(detectors.DETECTORS)), default="auto",
                       help="detector: auto (the best installed, in the order below), controlnet_aux OpenPose "
                            "(what ControlNet was trained on), DWPose via rtmlib, or MediaPipe (CPU, offline)")
    group.add_argument("--annotator-path", default=None, help="folder with the detector's weights (else the HF cache)")
    group.add_argument("--pose-min-conf", type=float, default=0.3, help="joints below this confidence are missing")
    group.add_argument("--pose-fill", type=int, default=4, help="fill a joint missing for at most N frames")
    group.add_argument("--pose-smooth", choices=("one-euro", "none"), default="one-euro",
                       help="jitter filter that keeps fast motion")
    group.add_argument("--pose-smooth-cutoff", type=float, default=1.0, help="One-Euro minimum cutoff (Hz)")
    group.add_argument("--pose-smooth-beta", type=float, default=0.2,
                       help="One-Euro speed coefficient (larger: less lag on fast motion, more jitter)")
    group.add_argument("--on-missing", choices=("fill", "fail", "skip"), default="fill",
                       help="frames with no person: fill from neighbours, stop, or drop them")
    group.add_argument("--draw-hands-face", action="store_true", help="also draw hands and face where detected")
    return group


def cleanup_settings(args):
    if not 0 <= args.pose_min_conf <= 1:
        raise UserError("--pose-min-conf must be in [0, 1]")
    if args.pose_fill < 0 or args.pose_smooth_cutoff <= 0 or args.pose_smooth_beta < 0:
        raise UserError("--pose-fill and --pose-smooth-beta must be >= 0, --pose-smooth-cutoff > 0")
    return CleanUp(args.pose_min_conf, args.pose_fill, args.pose_smooth, args.pose_smooth_cutoff,
                   args.pose_smooth_beta, args.on_missing)


def check_output_path(flag, path, overwrite):
    """An output path a user gave: in an existing, writable folder; not replacing anything without overwrite."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UserError(f"{flag} {path}: the folder {folder} does not exist; create it or choose another path")
    files.check_writable(path, flag)
    if os.path.exists(path) and not overwrite:
        raise UserError(f"{flag} {path} exists; pass --overwrite to replace it")


def write_folder(folder, images, write_png):
    """PNGs 00000.png... into ``folder``, written whole under a temporary name and then swapped in,
    so a replaced folder never mixes old and new images."""
    parent, name = os.path.split(os.path.abspath(folder))
    staging = os.path.join(parent, f".{name}.{os.getpid()}.tmp")
    try:
        os.makedirs(staging)
        for i, image in enumerate(images):
            write_png(os.path.join(staging, f"{i:05d}.png"), image)
        old = os.path.join(parent, f".{name}.{os.getpid()}.old")
        if os.path.exists(folder):
            os.rename(folder, old)
        os.rename(staging, folder)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def add_extract_arguments(parser):
    parser.add_argument("--video", required=True, help="source video")
    parser.add_argument("--out", required=True, help="OpenPose JSON sequence to write")
    parser.add_argument("--render", default=None, help="also write the pose maps as PNGs to this folder")
    parser.add_argument("--preview", default=None, help="also write the skeleton over the video to this MP4")
    parser.add_argument("--device", default="cpu", help="where the detector runs (cpu, cuda)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or info messages")
    add_extraction_arguments(parser)


def extract_command_parser(subparsers):
    parser = subparsers.add_parser("extract", help="OpenPose keypoints from a video, tracked and cleaned up",
                                   formatter_class=HelpFormatter)
    add_extract_arguments(parser)
    parser.set_defaults(func=extract_command)
    return parser


def extract_command(args):
    """sdvideo.py extract (or python pose_extract.py) --video swing.mp4 --out poses.json [--render DIR]."""
    from common import video_io  # here, not at the top: the benchmark draws pose maps where PyAV is not installed

    for flag, path in (("--out", args.out), ("--render", args.render), ("--preview", args.preview)):
        if path:
            check_output_path(flag, path, args.overwrite)
    settings = cleanup_settings(args)
    width, height, fps, _ = video_io.probe_video(args.video)
    frames = video_io.read_video(args.video, list(range(video_io.count_frames(args.video))), width, height, "crop")
    detector = detectors.make_detector(args.pose_backend, args.annotator_path, args.device)
    sequence, kept = extract_sequence(frames, detector, fps, settings, progress=not args.quiet)
    maps = [draw_pose_frame(sequence, i, height, width, args.draw_hands_face) for i in range(len(sequence.keypoints))]
    try:
        write_poses(args.out, sequence)
        if args.render:
            write_folder(args.render, maps, video_io.write_png)
        if args.preview:
            overlay = (np.maximum(frames[k] // 2, pose_map) for k, pose_map in zip(kept, maps))
            video_io.write_video(args.preview, overlay, fps)
    except OSError as error:  # disk full, read-only: each output is written whole or not at all
        raise UserError(f"cannot write ({error.strerror or error}); free space or choose other outputs") from None
    log.info("wrote %d frames of poses to %s", len(sequence.keypoints), args.out)
    return 0


def main(argv=None):
    """python pose_extract.py --video swing.mp4 --out poses.json [--render DIR] [--preview preview.mp4]"""
    parser = argparse.ArgumentParser(description="OpenPose keypoints from a video, tracked and cleaned up.",
                                     formatter_class=HelpFormatter)
    add_extract_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    try:
        return extract_command(args)
    except UserError as error:
        print(f"pose_extract: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
