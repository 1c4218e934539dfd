"""The toy world's measures of a generated picture: where the figure is (pose IoU against the
renderer's true mask), where its arms are (arm IoU), whether a golfer's club shows, and what
colour its shirt is. ``pose_iou``, ``arm_iou``, ``club_visibility`` and ``color_accuracy`` are the
entry points (measure/metrics.py calls them for toy-model runs); docs/toy_world.md says how they read.
"""
import cv2
import numpy as np

from toy.looks import COLORS, SKIN_TONES, Look, Nuisance, clean_background, parse_prompt
from toy.toyworld import (ARMS, CLUB_COLORS, L_HIP, L_SHO, R_HIP, R_SHO, SIZE, body_for, club_line, limb_mask, render,
                          torso_length)

FIGURE_THRESHOLD = 60.0  # RGB distance from the nuisance-free background that counts as figure
LIGHTING_RANGE = (0.7, 1.35)  # what random_nuisance's light and light_slope can make
CLUB_THRESHOLD = 50.0  # a club point is off the background by this much (the shadow darkens by <= ~40)
CLUB_SEEN = 0.5  # a club is visible where this share of its shaft's free points is off the background


def lighting(image, background):
    """The picture's lighting as a gain per column (1, W, 1): the median brightness ratio of each
    column to the clean background (the figure is a minority of most columns), fitted by a line."""
    clean, _ = clean_background(background, *image.shape[:2])
    ratio = np.median(image.astype(np.float32).sum(-1) / np.maximum(clean.sum(-1), 1.0), axis=0)
    columns = np.arange(len(ratio))
    gain = np.polyval(np.polyfit(columns, ratio, 1), columns)
    # additive textures inflate the ratio on dark backgrounds: keep to the nuisances' range
    return np.clip(gain, *LIGHTING_RANGE)[None, :, None].astype(np.float32)


def background_distance(image, background):
    """RGB distance of each pixel from the prompt's nuisance-free background under the picture's
    own ``lighting``: image (H, W, 3) uint8 -> (H, W) float."""
    clean, _ = clean_background(background, *image.shape[:2])
    return np.linalg.norm(image.astype(np.float32) - clean * lighting(image, background), axis=-1)


def segment_figure(image, background):
    """The figure in a generated picture: pixels whose colour is further than FIGURE_THRESHOLD from
    the prompt's nuisance-free background under the picture's own ``lighting``, cleaned by a 3x3
    opening. image (H, W, 3) uint8 -> bool (H, W)."""
    figure = (background_distance(image, background) > FIGURE_THRESHOLD).astype(np.uint8)
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


def figure_masks(keypoints, size=SIZE, golfer=False):
    """The true figure mask of each pose (F, 18, 3) -> (F, size, size) bool (no cap, no shadow; a
    golfer's club included)."""
    return np.stack([render(k, Look(background="studio", golfer=golfer), Nuisance(), size)[1] for k in keypoints])


def pose_iou(frames, keypoints, prompt):
    """Mean IoU of the figure segmented in each generated frame with the true mask of its pose;
    frames (F, S, S, 3) uint8, keypoints (F, 18, 3) in their pixels. A golfer's figure holds his club."""
    look = parse_prompt(prompt)
    truths = figure_masks(keypoints, frames.shape[1], look.golfer)
    return float(np.mean([iou(segment_figure(f, look.background), t) for f, t in zip(frames, truths)]))


def color_accuracy(frames, keypoints, prompt):
    """Fraction of frames whose torso's dominant colour is the prompt's shirt colour (frames whose
    pose shows no torso are left out); None where the prompt names no shirt colour or no torso shows."""
    shirt = parse_prompt(prompt, Look(shirt=None)).shirt
    torsos = [(f, torso_mask(k, f.shape[0])) for f, k in zip(frames, keypoints)]
    hits = [dominant_color(f, m) == shirt for f, m in torsos if m is not None and m.any()]
    return float(np.mean(hits)) if shirt and hits else None


def _disc(radius):
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def club_mask(keypoints, size):
    """A golfer's club as the renderer draws it, (size, size) bool (all False where none is drawn)."""
    with_club = render(keypoints, Look(background="studio", golfer=True), Nuisance(), size)[1]
    return with_club & ~render(keypoints, Look(background="studio"), Nuisance(), size)[1]


def arm_iou(frames, keypoints, prompt):
    """Mean IoU of the arms alone: the figure segmented in each frame against the upper-arm and
    forearm capsules' true mask, both taken inside the arms' neighbourhood (the true arms dilated
    by a quarter of the torso length) less the rest of the true figure (torso, head, and a golfer's
    club), where an arm over the body cannot be told from it. Frames whose arms lie wholly over
    the body are left out; None where every frame is. frames (F, S, S, 3), keypoints (F, 18, 3)."""
    look = parse_prompt(prompt)
    size = frames.shape[1]
    scores = []
    for frame, points in zip(frames, keypoints):
        arms = limb_mask(points, ARMS, size)
        rest = render(points, Look(background="studio"), Nuisance(), size)[1] & ~arms
        if look.golfer:
            rest |= club_mask(points, size)
        radius = max(1, int(round(0.25 * torso_length(points))))
        region = cv2.dilate(arms.astype(np.uint8), _disc(radius)).astype(bool) & ~rest
        if (arms & region).sum() == 0:
            continue
        scores.append(iou(segment_figure(frame, look.background) & region, arms & region))
    return float(np.mean(scores)) if scores else None


def club_points(keypoints, size):
    """Integer pixels (N, 2) x, y along a golfer's true shaft, one per pixel of its length, inside
    the picture; empty where no club is drawn."""
    line = club_line(keypoints.astype(np.float64), body_for(size))
    if line is None:
        return np.zeros((0, 2), int)
    grip, end = line
    count = max(2, int(np.linalg.norm(end - grip)))
    points = np.round(grip[None] + np.linspace(0, 1, count)[:, None] * (end - grip)[None]).astype(int)
    inside = (points >= 0).all(axis=1) & (points < size).all(axis=1)
    return points[inside]


def club_visibility(frames, keypoints, prompt, min_points=5):
    """Share of frames whose club shows: along the true shaft, away from the rest of the figure (its
    true mask dilated by 2 px), at least CLUB_SEEN of the points have a pixel within 1 px that is
    off the background by CLUB_THRESHOLD and nearer the club's colour than the background's (a
    shirt is off the background too, but not club-coloured). Frames with fewer than ``min_points`` free shaft points
    are left out. None where the prompt names no golfer or no frame counts."""
    look = parse_prompt(prompt)
    if not look.golfer:
        return None
    size = frames.shape[1]
    seen = []
    for frame, points in zip(frames, keypoints):
        body = render(points, Look(background="studio"), Nuisance(), size)[1]
        near_body = cv2.dilate(body.astype(np.uint8), _disc(2)).astype(bool)
        shaft = [p for p in club_points(points, size) if not near_body[p[1], p[0]]]
        if len(shaft) < min_points:
            continue
        distance = background_distance(frame, look.background)
        to_club = np.linalg.norm(frame.astype(np.float32) - np.float32(CLUB_COLORS[look.background]), axis=-1)
        club_like = ((distance > CLUB_THRESHOLD) & (to_club < distance)).astype(np.uint8)
        near = cv2.dilate(club_like, np.ones((3, 3), np.uint8)).astype(bool)  # within 1 px of the line
        seen.append(np.mean([near[y, x] for x, y in shaft]) >= CLUB_SEEN)
    return float(np.mean(seen)) if seen else None
