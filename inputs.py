"""A run's inputs at the working size: pose maps, source frames, keypoints, frame rate.

``load_clip(args)`` reads poses from a file or folder, or extracts them from the video (cached by
the video's hash and the extraction settings), applies the frame selection (--start, --stride,
--fps, --max-frames) and fits everything to --height x --width (--fit).
"""
import hashlib
import json
import logging
import os

import numpy as np

import models
import pose_extract
import video_io
from errors import UserError

log = logging.getLogger("sdvideo")
DEFAULT_FPS = 24.0


class Clip:
    """The inputs of a run at the working size: pose maps (F, H, W, 3), source frames or None, fps,
    keypoints (F, 18, 3) where known, and the extracted PoseSequence where poses came from the video."""

    def __init__(self, pose_maps, fps, source_frames=None, keypoints=None, extracted=None):
        self.pose_maps, self.fps, self.source_frames = pose_maps, fps, source_frames
        self.keypoints, self.extracted = keypoints, extracted


def extracted_clip(args):
    """Poses detected on the video's selected frames at the working size, cached by video and settings."""
    settings = pose_extract.cleanup_settings(args)
    backend = pose_extract.resolve_backend(args.pose_backend, args.annotator_path)
    width, height, source_fps, _ = video_io.probe_video(args.video)
    indices, fps = video_io.select_frames(video_io.count_frames(args.video), source_fps, args.start,
                                          args.max_frames, args.stride, args.fps)
    if not indices:
        raise UserError(f"no frames selected from {args.video}; lower --start")
    frames = video_io.read_video(args.video, indices, args.width, args.height, args.fit)
    key = json.dumps([models.file_hash(args.video), indices, args.width, args.height, args.fit, backend,
                      args.annotator_path, vars(settings)], sort_keys=True)
    cached = os.path.join(models.cache_dir(), "poses", hashlib.sha256(key.encode()).hexdigest()[:24] + ".json")
    if os.path.isfile(cached):
        log.info("poses: reusing %s", cached)
        sequence = pose_extract.read_poses(cached)
        kept = sequence.kept
    else:
        detector = pose_extract.make_detector(backend, args.annotator_path, models.pick_device(args.device).type)
        sequence, kept = pose_extract.extract_sequence(frames, detector, fps, settings, progress=not args.quiet)
        os.makedirs(os.path.dirname(cached), exist_ok=True)
        pose_extract.write_poses(cached, sequence)
    sequence.keypoints = pose_extract.inside_canvas(sequence.keypoints, args.width, args.height)
    frames = [frames[k] for k in kept]
    pose_maps = np.stack([pose_extract.draw_pose_frame(sequence, i, args.height, args.width, args.draw_hands_face)
                          for i in range(len(kept))])
    return Clip(pose_maps, fps, frames, sequence.keypoints, sequence)


def load_clip(args):
    """Read poses (and the video, if any), select frames, fit them to --height x --width."""
    if args.video and not args.poses:
        return extracted_clip(args)
    poses_path = args.poses
    if not os.path.exists(poses_path):
        raise UserError(f"pose file not found: {poses_path}")
    is_image_folder = os.path.isdir(poses_path) and not any(n.endswith(".json") for n in os.listdir(poses_path))
    video_size = None
    if args.video:
        width, height, source_fps, _ = video_io.probe_video(args.video)
        video_size, num_available = (width, height), video_io.count_frames(args.video)

    if is_image_folder:
        maps = video_io.read_image_folder(poses_path, args.width, args.height, args.fit)
        num_poses, keypoints, sequence_fps = len(maps), None, None
    else:
        sequence = pose_extract.read_poses(poses_path)
        num_poses, sequence_fps = len(sequence.keypoints), sequence.fps
        canvas = sequence.canvas_size or video_size
        if canvas is None:
            raise UserError(f"{poses_path} gives no canvas size for its pixel coordinates; add "
                            "canvas_width/canvas_height to it or pass the --video it came from")

    if args.video and num_poses != num_available:
        raise UserError(f"{poses_path} has {num_poses} pose frames but {args.video} has {num_available} frames; "
                        "they must correspond one to one")
    if not args.video:
        source_fps, num_available = float(sequence_fps or DEFAULT_FPS), num_poses
    indices, fps = video_io.select_frames(num_available, source_fps, args.start, args.max_frames, args.stride, args.fps)
    if not indices:
        raise UserError(f"no frames selected: the clip has {num_available} frames at {source_fps:g} fps; lower --start")

    if is_image_folder:
        pose_maps = np.stack([maps[i] for i in indices])
    else:
        fit = video_io.fit_params(*canvas, args.width, args.height, args.fit)
        keypoints = pose_extract.fit_keypoints(sequence.keypoints[indices], fit.scale, (fit.offset_x, fit.offset_y))
        keypoints = pose_extract.inside_canvas(keypoints, args.width, args.height)
        pose_maps = np.stack([pose_extract.draw_openpose(k, args.height, args.width) for k in keypoints])
        empty = [i for i, k in enumerate(keypoints) if not (k[:, 2] > 0).any()]
        if empty:
            log.warning("%d of %d frames have no person (frames %s); their pose maps are blank",
                        len(empty), len(indices), ", ".join(map(str, empty[:10])) + ("..." if len(empty) > 10 else ""))
    source = video_io.read_video(args.video, indices, args.width, args.height, args.fit) if args.video else None
    return Clip(pose_maps, fps, source, keypoints)
