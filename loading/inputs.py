"""A run's inputs at the working size: pose maps, source frames, keypoints, frame rate.

``load_clip(spec)`` (a ``ClipSpec``) reads poses from a file or folder, or extracts them from the video (cached by
the video's hash and the extraction settings), applies the frame selection (--start, --stride,
--fps, --max-frames) and fits everything to --height x --width (--fit).
"""
import hashlib
import json
import logging
import os
from dataclasses import dataclass

import numpy as np

import pose_extract
from common import files, video_io
from common.errors import UserError
from loading import models
from poses import detectors
from poses.pose_tracking import CleanUp

log = logging.getLogger("sdvideo")


@dataclass
class ClipSpec:
    """What a run reads and how: its input and pose-extraction settings."""

    video: str | None
    poses: str | None
    width: int
    height: int
    start: float = 0.0
    max_frames: int | None = None
    stride: int = 1
    fps: float | None = None
    fit: str = "crop"
    pose_backend: str = "auto"
    annotator_path: str | None = None
    cleanup: CleanUp | None = None  # extraction clean-up; None: pose_tracking's defaults
    draw_hands_face: bool = False
    device: str = "cpu"
    progress: bool = True

    @classmethod
    def from_args(cls, args):
        return cls(args.video, args.poses, args.width, args.height, args.start, args.max_frames, args.stride,
                   args.fps, args.fit, args.pose_backend, args.annotator_path, pose_extract.cleanup_settings(args),
                   args.draw_hands_face, models.pick_device(args.device).type, not args.quiet)


class Clip:
    """The inputs of a run at the working size: pose maps (F, H, W, 3), source frames or None, fps,
    keypoints (F, 18, 3) where known, and the extracted PoseSequence where poses came from the video."""

    def __init__(self, pose_maps, fps, source_frames=None, keypoints=None, extracted=None):
        self.pose_maps, self.fps, self.source_frames = pose_maps, fps, source_frames
        self.keypoints, self.extracted = keypoints, extracted


def extracted_clip(spec):
    """Poses detected on the video's selected frames at the working size, cached by video and settings."""
    settings = spec.cleanup or CleanUp()
    width, height, source_fps, _ = video_io.probe_video(spec.video)
    backend = detectors.resolve_backend(spec.pose_backend, spec.annotator_path)
    indices, fps = video_io.select_frames(video_io.count_frames(spec.video), source_fps, spec.start,
                                          spec.max_frames, spec.stride, spec.fps)
    if not indices:
        raise UserError(f"no frames selected from {spec.video}; lower --start")
    frames = video_io.read_video(spec.video, indices, spec.width, spec.height, spec.fit)
    key = json.dumps([files.file_hash(spec.video), indices, spec.width, spec.height, spec.fit, backend,
                      spec.annotator_path, vars(settings)], sort_keys=True)
    cached = os.path.join(models.cache_dir(), "poses", hashlib.sha256(key.encode()).hexdigest()[:24] + ".json")
    if os.path.isfile(cached):
        log.info("poses: reusing %s", cached)
        sequence = pose_extract.read_poses(cached)
        kept = sequence.kept
    else:
        detector = detectors.make_detector(backend, spec.annotator_path, spec.device)
        sequence, kept = pose_extract.extract_sequence(frames, detector, fps, settings, progress=spec.progress)
        os.makedirs(os.path.dirname(cached), exist_ok=True)
        pose_extract.write_poses(cached, sequence)
    sequence.keypoints = pose_extract.inside_canvas(sequence.keypoints, spec.width, spec.height)
    frames = [frames[k] for k in kept]
    pose_maps = np.stack([pose_extract.draw_pose_frame(sequence, i, spec.height, spec.width, spec.draw_hands_face)
                          for i in range(len(kept))])
    return Clip(pose_maps, fps, frames, sequence.keypoints, sequence)


def load_clip(spec):
    """Read poses (and the video, if any), select frames, fit them to --height x --width."""
    if spec.video and not spec.poses:
        return extracted_clip(spec)
    poses_path = spec.poses
    if not os.path.exists(poses_path):
        raise UserError(f"pose file not found: {poses_path}")
    is_image_folder = os.path.isdir(poses_path) and not any(n.endswith(".json") for n in os.listdir(poses_path))
    video_size = None
    if spec.video:
        width, height, source_fps, _ = video_io.probe_video(spec.video)
        video_size, num_available = (width, height), video_io.count_frames(spec.video)

    if is_image_folder:
        maps = video_io.read_image_folder(poses_path, spec.width, spec.height, spec.fit)
        num_poses, keypoints, sequence_fps = len(maps), None, None
    else:
        sequence = pose_extract.read_poses(poses_path)
        num_poses, sequence_fps = len(sequence.keypoints), sequence.fps
        canvas = sequence.canvas_size or video_size
        if canvas is None:
            raise UserError(f"{poses_path} gives no canvas size for its pixel coordinates; add "
                            "canvas_width/canvas_height to it or pass the --video it came from")

    if spec.video and num_poses != num_available:
        raise UserError(f"{poses_path} has {num_poses} pose frames but {spec.video} has {num_available} frames; "
                        "they must correspond one to one")
    if not spec.video:
        source_fps, num_available = float(sequence_fps or video_io.DEFAULT_FPS), num_poses
    indices, fps = video_io.select_frames(num_available, source_fps, spec.start, spec.max_frames, spec.stride, spec.fps)
    if not indices:
        raise UserError(f"no frames selected: the clip has {num_available} frames at {source_fps:g} fps; lower --start")

    if is_image_folder:
        pose_maps = np.stack([maps[i] for i in indices])
    else:
        fit = video_io.fit_params(*canvas, spec.width, spec.height, spec.fit)
        keypoints = pose_extract.fit_keypoints(sequence.keypoints[indices], fit.scale, (fit.offset_x, fit.offset_y))
        keypoints = pose_extract.inside_canvas(keypoints, spec.width, spec.height)
        pose_maps = np.stack([pose_extract.draw_openpose(k, spec.height, spec.width) for k in keypoints])
        empty = [i for i, k in enumerate(keypoints) if not (k[:, 2] > 0).any()]
        if empty:
            log.warning("%d of %d frames have no person (frames %s); their pose maps are blank",
                        len(empty), len(indices), ", ".join(map(str, empty[:10])) + ("..." if len(empty) > 10 else ""))
    source = video_io.read_video(spec.video, indices, spec.width, spec.height, spec.fit) if spec.video else None
    return Clip(pose_maps, fps, source, keypoints)
