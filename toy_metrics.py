"""The toy world's measures of a generated picture: where the figure is (pose IoU against the
renderer's true mask) and what colour its shirt is. ``pose_iou`` and ``color_accuracy`` are the
entry points (metrics.py calls them for toy-model runs); docs/toy_world.md says how they read.
"""
import cv2
import numpy as np

from toyworld import (COLORS, L_HIP, L_SHO, R_HIP, R_SHO, SIZE, SKIN_TONES, Look, Nuisance, clean_background,
                      parse_prompt, render)

FIGURE_THRESHOLD = 60.0
LIGHTING_RANGE = (0.7, 1.35)  # what random_nuisance's light and light_slope can make  # RGB distance from the nuisance-free background that counts as figure


def lighting(image, background):
    """The picture's lighting as a gain per column (1, W, 1): the median brightness ratio of each
    column to the clean background (the figure is a minority of most columns), fitted by a line."""
    clean, _ = clean_background(background, *image.shape[:2])
    ratio = np.median(image.astype(np.float32).sum(-1) / np.maximum(clean.sum(-1), 1.0), axis=0)
    columns = np.arange(len(ratio))
    gain = np.polyval(np.polyfit(columns, ratio, 1), columns)
    # additive textures inflate the ratio on dark backgrounds: keep to the nuisances' range
    return np.clip(gain, *LIGHTING_RANGE)[None, :, None].astype(np.float32)


def segment_figure(image, background):
    """The figure in a generated picture: pixels whose colour is further than FIGURE_THRESHOLD from
    the prompt's nuisance-free background under the picture's own ``lighting``, cleaned by a 3x3
    opening. image (H, W, 3) uint8 -> bool (H, W)."""
    clean, _ = clean_background(background, *image.shape[:2])
    distance = np.linalg.norm(image.astype(np.float32) - clean * lighting(image, background), axis=-1)
    figure = (distance > FIGURE_THRESHOLD).astype(np.uint8)
    return cv2.morphologyEx(figure, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8)).astype(bool)


def iou(a, b):
    """Intersection over union of two boolean masks."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def torso_mask(keypoints, size=SIZE):
    """The inner torso (shoulders to hips, shrunk toward its centre) as a bool mask, or None."""
    if not (keypoints[[R_SHO, L_SHO, R_HIP, L_HIP], 2] > 0).all():
        return None
    corners = keypoints[[R_SHO, L_SHO, L_HIP, R_HIP], :2]
    centre = corners.mean(axis=0)
    inner = centre + 0.6 * (corners - centre)
    mask = np.zeros((size, size), np.uint8)
    cv2.fillConvexPoly(mask, np.round(inner).astype(np.int32), 1)
    return mask.astype(bool)


def dominant_color(image, region):
    """The vocabulary colour nearest to most pixels of a region (bool mask) of an image, each
    colour also under the nuisances' dimmest and brightest light; pixels nearer to a skin tone
    (an arm across the torso) do not vote. None where none votes."""
    pixels = image[region].astype(np.float32)
    names = [*COLORS, *(None for _ in SKIN_TONES)]
    base = np.array([*COLORS.values(), *SKIN_TONES], np.float32)
    palette = np.concatenate([np.clip(base * gain, 0, 255) for gain in (LIGHTING_RANGE[0], 1.0, LIGHTING_RANGE[1])])
    nearest = np.linalg.norm(pixels[:, None, :] - palette[None], axis=-1).argmin(axis=1) % len(base)
    votes = np.bincount(nearest, minlength=len(base))[:len(COLORS)]
    return names[votes.argmax()] if votes.any() else None


def figure_masks(keypoints, size=SIZE):
    """The true figure mask of each pose (F, 18, 3) -> (F, size, size) bool (no cap, no shadow)."""
    return np.stack([render(k, Look(background="studio"), Nuisance(), size)[1] for k in keypoints])


def pose_iou(frames, keypoints, prompt):
    """Mean IoU of the figure segmented in each generated frame with the true mask of its pose;
    frames (F, S, S, 3) uint8, keypoints (F, 18, 3) in their pixels."""
    background = parse_prompt(prompt).background
    truths = figure_masks(keypoints, frames.shape[1])
    return float(np.mean([iou(segment_figure(f, background), t) for f, t in zip(frames, truths)]))


def color_accuracy(frames, keypoints, prompt):
    """Fraction of frames whose torso's dominant colour is the prompt's shirt colour (frames whose
    pose shows no torso are left out); None where the prompt names no shirt colour or no torso shows."""
    shirt = parse_prompt(prompt, Look(shirt=None)).shirt
    torsos = [(f, torso_mask(k, f.shape[0])) for f, k in zip(frames, keypoints)]
    hits = [dominant_color(f, m) == shirt for f, m in torsos if m is not None and m.any()]
    return float(np.mean(hits)) if shirt and hits else None
