"""Extra controls beside the pose, taken from the source clip: Canny edges (OpenCV, no weights) and
depth (controlnet_aux's MiDaS, where installed). Each is a 3-channel map per frame, as its
ControlNet takes it; the loop receives the pose map and the extra maps stacked on the channel
axis, (F, H, W, 3 K), pose first, in ``--control`` order (``stack``).
"""
import importlib.util

import cv2
import numpy as np

from common.errors import UserError

CONTROLS = ("pose", "canny", "depth")
DEFAULT_CONTROLNETS = {"canny": "thibaud/controlnet-sd21-canny-diffusers",
                       "depth": "thibaud/controlnet-sd21-depth-diffusers"}  # SD2.1's, as the pose default
DEPTH_MISSING = ("--control depth needs controlnet_aux (pip install controlnet_aux; it needs torchvision) and the "
                 "MiDaS weights (lllyasviel/Annotators, or --annotator-path)")


def parse_controls(value):
    """"pose,canny" -> ("pose", "canny"): known names, each once, the pose first."""
    names = tuple(name.strip() for name in value.split(",") if name.strip())
    unknown = [n for n in names if n not in CONTROLS]
    if unknown or not names or names[0] != "pose" or len(set(names)) != len(names):
        raise ValueError(f"expected pose, then any of canny, depth, comma-separated (got {value!r})")
    return names


def canny_maps(frames, low, high):
    """Canny edges of RGB frames (F, H, W, 3) uint8 -> (F, H, W, 3) uint8, white edges on black."""
    edges = [cv2.Canny(cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY), low, high) for f in frames]
    return np.repeat(np.stack(edges)[..., None], 3, axis=-1)


def check_available(names):
    """Refuse, before anything loads, a control whose library is not installed (depth: controlnet_aux)."""
    if "depth" in names and importlib.util.find_spec("controlnet_aux") is None:
        raise UserError(DEPTH_MISSING)


def depth_maps(frames, annotator_path=None):
    """MiDaS depth of RGB frames (F, H, W, 3) uint8 -> (F, H, W, 3) uint8, through controlnet_aux."""
    try:
        from controlnet_aux import MidasDetector
    except ImportError:
        raise UserError(DEPTH_MISSING) from None
    detector = MidasDetector.from_pretrained(annotator_path or "lllyasviel/Annotators")
    height, width = frames.shape[1:3]
    maps = [np.asarray(detector(f, output_type="np", detect_resolution=max(height, width), image_resolution=width))
            for f in frames]
    return np.stack([cv2.resize(np.atleast_3d(m)[..., :3].astype(np.uint8), (width, height)) for m in maps])


def extra_maps(names, source_frames, canny_low=100, canny_high=200, annotator_path=None):
    """The extra controls' maps from the source clip, in ``names`` order (the pose excluded)."""
    makers = {"canny": lambda: canny_maps(source_frames, canny_low, canny_high),
              "depth": lambda: depth_maps(source_frames, annotator_path)}
    return [makers[name]() for name in names if name != "pose"]


def loop_scales(names, controlnet_scale):
    """--controlnet-scale for the loop: a float for the pose alone, else one per control (a single
    value given for several controls serves each)."""
    scales = list(controlnet_scale) * (len(names) if len(controlnet_scale) == 1 else 1)
    return scales[0] if len(names) == 1 else scales


def stack(pose_maps, maps):
    """The loop's control maps: (F, H, W, 3) pose maps and extra maps -> (F, H, W, 3 K)."""
    return np.concatenate([pose_maps, *maps], axis=-1) if maps else pose_maps
