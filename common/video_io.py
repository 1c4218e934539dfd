"""Video and image files in and out: decoding with frame selection, fitting to the working size,
H.264 MP4 writing, PNG writing. PyAV (FFmpeg's libraries) does the decoding and encoding, so any
container FFmpeg reads (mp4, mov, avi, webm, gif) works. Main entry points: ``read_video``,
``write_video``, ``fit_image``.
"""
import os
from dataclasses import dataclass
from fractions import Fraction

import av
import cv2
import numpy as np
from PIL import Image

from common import files
from common.errors import UserError

DEFAULT_FPS = 24.0  # the frame rate of a video or pose file that gives none (film's)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
H264_CRF = "18"  # visually lossless for this content; the file stays small


@dataclass
class Fit:
    """How a source canvas maps to the working size: x' = scale x + offset_x (same for y)."""

    scale: float
    offset_x: float
    offset_y: float


def fit_params(src_width, src_height, width, height, mode):
    """Centre crop (``crop``: fill the frame) or letterbox (``pad``: show all) -> Fit."""
    ratio = (max if mode == "crop" else min)(width / src_width, height / src_height)
    return Fit(ratio, (width - src_width * ratio) / 2, (height - src_height * ratio) / 2)


def fit_image(image, width, height, mode):
    """Resize an (h, w, 3) uint8 image to (height, width, 3) by centre crop or black padding."""
    fit = fit_params(image.shape[1], image.shape[0], width, height, mode)
    # The affine map places the scaled image at its offset; area interpolation when shrinking.
    matrix = np.float32([[fit.scale, 0, fit.offset_x], [0, fit.scale, fit.offset_y]])
    interpolation = cv2.INTER_AREA if fit.scale < 1 else cv2.INTER_LINEAR
    return cv2.warpAffine(image, matrix, (width, height), flags=interpolation,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def probe_video(path):
    """(width, height, fps, frame count or 0 if unknown) of a video; UserError if unreadable."""
    with _open_video(path) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 0) or DEFAULT_FPS
        return stream.codec_context.width, stream.codec_context.height, fps, stream.frames or 0


def _open_video(path):
    if not os.path.exists(path):
        raise UserError(f"video not found: {path}")
    try:
        container = av.open(path)
    except (av.FFmpegError, OSError, ValueError) as error:
        raise UserError(f"cannot read video {path} ({error}); is it a video file FFmpeg can decode?") from None
    if not container.streams.video:
        container.close()
        raise UserError(f"{path} has no video stream")
    return container


def select_frames(num_available, source_fps, start=0.0, max_frames=None, stride=1, fps=None):
    """Indices of the source frames to use, and the output frame rate.

    ``start`` is in seconds; ``fps`` resamples to that rate (nearest earlier frame), otherwise
    every ``stride``-th frame is kept.
    """
    first = int(round(start * source_fps))
    if fps:
        step = source_fps / fps
        indices, position = [], float(first)
        while int(position) < num_available:
            indices.append(int(position))
            position += step
        out_fps = fps
    else:
        indices = list(range(first, num_available, stride))
        out_fps = source_fps / stride
    if max_frames:
        indices = indices[:max_frames]
    return indices, out_fps


def read_video(path, indices, width, height, fit):
    """Decode the frames at ``indices`` fitted to (height, width) -> list of (H, W, 3) uint8."""
    wanted = set(indices)
    frames = {}
    with _open_video(path) as container:
        try:
            for index, frame in enumerate(container.decode(video=0)):
                if index in wanted:
                    frames[index] = fit_image(frame.to_ndarray(format="rgb24"), width, height, fit)
                if index >= max(indices):
                    break
        except (av.FFmpegError, ValueError) as error:
            raise UserError(f"video {path} is corrupt at frame {len(frames)} ({error}); "
                            "re-encode it with ffmpeg or pass --max-frames") from None
    missing = [i for i in indices if i not in frames]
    if missing:
        raise UserError(f"video {path} ended before frame {missing[0]} ({len(frames)} frames decoded); "
                        "lower --start/--max-frames")
    return [frames[i] for i in indices]


def count_frames(path):
    """Exact frame count by decoding headers (containers often store none or a wrong one)."""
    with _open_video(path) as container:
        try:
            return sum(1 for _ in container.demux(video=0) if _.size)
        except (av.FFmpegError, ValueError) as error:
            raise UserError(f"video {path} is corrupt ({error}); re-encode it with ffmpeg") from None


def read_images(paths):
    """RGB images (H, W, 3) uint8 from files; an unreadable one is a UserError naming it."""
    images = []
    for path in paths:
        try:
            with Image.open(path) as image:
                images.append(np.asarray(image.convert("RGB")))
        except OSError as error:
            raise UserError(f"cannot read image {path} ({error}); it is damaged or not an image") from None
    return images


def read_image_folder(path, width, height, fit):
    """Every image in a folder, in name order, fitted to (height, width) -> list of (H, W, 3) uint8."""
    names = sorted(n for n in os.listdir(path) if n.lower().endswith(IMAGE_EXTENSIONS))
    if not names:
        raise UserError(f"folder {path} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    return [fit_image(image, width, height, fit) for image in read_images([os.path.join(path, n) for n in names])]


def write_png(path, image):
    """Write an (H, W, 3) uint8 image as PNG via a temporary name, so no half-written file remains."""
    with files.atomic_path(path, ".png") as tmp:
        Image.fromarray(image).save(tmp)


class VideoWriter:
    """Stream (H, W, 3) uint8 frames into an H.264 yuv420p MP4 (plays in browsers).

    Frames go to a temporary file that ``close`` renames into place and ``abort`` deletes, so an
    interrupted run never leaves a half-written video under the final name.
    """

    def __init__(self, path, fps):
        self.path, self.tmp = path, f"{path}.tmp.mp4"
        self.fps = Fraction(fps).limit_denominator(1001)  # 29.97 -> 30000/1001
        self.container, self.stream = av.open(self.tmp, "w"), None

    def write(self, frame):
        if self.stream is None:
            self.stream = self.container.add_stream("libx264", rate=self.fps, options={"crf": H264_CRF})
            self.stream.height, self.stream.width = frame.shape[:2]
            self.stream.pix_fmt = "yuv420p"
        self.container.mux(self.stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))

    def close(self):
        if self.stream is not None:
            self.container.mux(self.stream.encode())
        self.container.close()
        os.replace(self.tmp, self.path)

    def abort(self):
        self.container.close()
        if os.path.exists(self.tmp):
            os.remove(self.tmp)


def write_video(path, frames, fps):
    """Write a sequence of (H, W, 3) uint8 frames as an MP4 (see VideoWriter)."""
    writer = VideoWriter(path, fps)
    try:
        for frame in frames:
            writer.write(frame)
    except BaseException:
        writer.abort()
        raise
    writer.close()
