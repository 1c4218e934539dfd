"""The toy world: a procedural renderer that draws a person from COCO-18 keypoints and a prompt.

``render(keypoints, look, nuisance, size)`` draws one picture and its true figure mask;
``render_clip(keypoints, prompt, seed, size)`` a source video of a pose sequence (one look and one
set of nuisances for the whole clip, as a real video has). The prompt fixes the look (looks.py:
shirt and trouser colours, the background kind, a golfer or not); the nuisances (background
texture, lighting, skin and hair, cap, shadow) are fixed by neither the prompt nor the pose. A
per-frame generator redraws them at every frame: that is the flicker the temporal techniques
exist to remove. The poses (random, held-out, jumping jacks) and training examples are motions.py's.

Two worlds share this renderer, told apart by picture size (``body_for``): the first toy model's
64 px world (chunky limbs, no hands, no club) and toy world 2 at 128 px, SD's shape (limbs as thin
as a body's, hands, and a golf club in the hands whenever the prompt names a golfer).
"""
from dataclasses import dataclass

import cv2
import numpy as np

from toy.looks import (CAP_COLORS, COLORS, HAIR_COLORS, SKIN_TONES, clean_background, parse_prompt, random_nuisance,
                       texture)

SIZE = 128  # toy world 2, --model toy's picture size: SD's shape (an 8x VAE, 16x16 latents)
FIRST_SIZE = 64  # the first toy world, --model toy64 (a 4x VAE, 16x16 latents); train_toy.py --size 64
SUPERSAMPLE = 2  # drawn at 2x and area-averaged, for anti-aliased edges
SHOE_COLOR = (45, 40, 38)
# COCO-18 joints
NOSE, NECK, R_SHO, R_ELB, R_WRI, L_SHO, L_ELB, L_WRI, R_HIP, R_KNE, R_ANK, L_HIP, L_KNE, L_ANK = range(14)
R_EYE, L_EYE, R_EAR, L_EAR = range(14, 18)
ARMS = ((R_SHO, R_ELB), (R_ELB, R_WRI), (L_SHO, L_ELB), (L_ELB, L_WRI))  # the limbs arm IoU measures
# The club: a dark shaft and head on the day backgrounds, steel under the night's floodlights, so it
# stands out from every background the prompt can name.
CLUB_COLORS = {"golf course": (38, 38, 44), "studio": (38, 38, 44), "beach": (38, 38, 44), "night": (205, 205, 212)}


@dataclass(frozen=True)
class Body:
    """A world's proportions, as fractions of the torso length (neck to mid-hip)."""

    arm: float
    forearm: float
    thigh: float
    shin: float
    head: float  # radius
    shoulder_pad: float = 0.12
    hip_pad: float = 0.10
    hand: float = 0.0  # radius; 0: no hands drawn
    club: float = 0.0  # shaft length from the grip; 0: no club, even for a golfer
    shaft: float = 0.07  # shaft width
    club_head: tuple = (0.17, 0.07)  # the head's half-length and half-width


# The first toy model's world: chunky, so that a figure at 64 px still has limbs a few pixels wide.
CHUNKY = Body(arm=0.30, forearm=0.26, thigh=0.36, shin=0.30, head=0.36)
# Toy world 2: a body's proportions (an upper arm ~0.18 of the torso length), hands, and a club
# about as long as an iron (1.6 torso lengths from the grip).
SLIM = Body(arm=0.19, forearm=0.15, thigh=0.27, shin=0.21, head=0.31, shoulder_pad=0.10, hip_pad=0.09,
            hand=0.10, club=1.6)


def body_for(size):
    """The proportions of the world drawn at this picture size: SLIM from SIZE up, else CHUNKY."""
    return SLIM if size >= SIZE else CHUNKY


# ---- the figure -------------------------------------------------------------------------------

def _capsule(canvas, a, b, radius, color):
    """A thick limb from a to b (pixels) with round ends."""
    a, b = tuple(int(round(v)) for v in a), tuple(int(round(v)) for v in b)
    cv2.line(canvas, a, b, color, max(1, int(round(2 * radius))), cv2.LINE_AA)
    cv2.circle(canvas, a, int(round(radius)), color, -1, cv2.LINE_AA)
    cv2.circle(canvas, b, int(round(radius)), color, -1, cv2.LINE_AA)


def torso_length(keypoints):
    """Neck to mid-hip in pixels (or a stand-in from the shoulders when the hips are hidden)."""
    seen = keypoints[:, 2] > 0
    hips = [keypoints[j, :2] for j in (R_HIP, L_HIP) if seen[j]]
    if seen[NECK] and hips:
        return max(2.0, float(np.linalg.norm(keypoints[NECK, :2] - np.mean(hips, axis=0))))
    if seen[R_SHO] and seen[L_SHO]:
        return max(2.0, 1.6 * float(np.linalg.norm(keypoints[R_SHO, :2] - keypoints[L_SHO, :2])))
    return 8.0


def head_centre(keypoints, length):
    """Where the head is drawn: the mean of the face points seen, else above the neck."""
    face = [j for j in (NOSE, R_EYE, L_EYE, R_EAR, L_EAR) if keypoints[j, 2] > 0]
    if face:
        return keypoints[face, :2].mean(axis=0) + (0.0, -0.05 * length)
    return keypoints[NECK, :2] + (0.0, -0.55 * length)


def _forearm_direction(keypoints, elbow, wrist):
    step = keypoints[wrist, :2] - keypoints[elbow, :2]
    return step / max(1e-3, float(np.linalg.norm(step)))


def club_line(keypoints, body):
    """Where a golfer's club is: (grip, head end) in the keypoints' pixels, or None. The grip is
    the hands (both, where the wrists are close as in a golf grip, else the left hand, the lead
    hand of a right-handed swing); the shaft continues the forearms' line."""
    if body.club <= 0:
        return None
    seen = keypoints[:, 2] > 0
    length = torso_length(keypoints)
    hands = [(e, w) for e, w in ((L_ELB, L_WRI), (R_ELB, R_WRI)) if seen[e] and seen[w]]
    if not hands:
        return None
    if len(hands) == 2 and np.linalg.norm(keypoints[L_WRI, :2] - keypoints[R_WRI, :2]) < 0.35 * length:
        grip = keypoints[[L_WRI, R_WRI], :2].mean(axis=0)
        direction = sum(_forearm_direction(keypoints, e, w) for e, w in hands)
        direction = direction / max(1e-3, float(np.linalg.norm(direction)))
    else:
        elbow, wrist = hands[0]
        grip, direction = keypoints[wrist, :2], _forearm_direction(keypoints, elbow, wrist)
    grip = grip + body.hand * length * direction  # held in the fist, past the wrist
    return grip, grip + body.club * length * direction


def _draw_club(canvas, mask, keypoints, body, color):
    """Shaft and head along ``club_line``, drawn in place (supersampled pixels)."""
    line = club_line(keypoints, body)
    if line is None:
        return
    grip, end = line
    length = torso_length(keypoints)
    direction = (end - grip) / max(1e-3, float(np.linalg.norm(end - grip)))
    for target, value in ((canvas, color), (mask, 255)):
        _capsule(target, grip, end, max(0.5, body.shaft * length / 2), value)
        # the head sticks out sideways from the shaft's end, toe away from the golfer
        toe = end + body.club_head[0] * length * np.array([-direction[1], direction[0]])
        _capsule(target, end, toe, body.club_head[1] * length, value)


def _draw_head(canvas, mask, keypoints, nuisance, body, length, skin):
    """The neck, head and hair or cap, drawn in place (_draw_figure's last layer)."""
    seen = keypoints[:, 2] > 0
    centre = head_centre(keypoints, length)
    radius = body.head * length
    if seen[NECK]:
        limb_end = keypoints[NECK, :2]
        for target, value in ((canvas, skin), (mask, 255)):
            _capsule(target, limb_end, centre, 0.15 * length, value)
    at = tuple(int(round(v)) for v in centre)
    for target, value in ((canvas, skin), (mask, 255)):
        cv2.circle(target, at, max(1, int(round(radius))), value, -1, cv2.LINE_AA)
    top = (at[0], int(round(centre[1] - 0.25 * radius)))
    head_cover = CAP_COLORS[nuisance.cap] if nuisance.cap >= 0 else HAIR_COLORS[nuisance.hair]
    cv2.ellipse(canvas, top, (max(1, int(round(radius * 1.02))), max(1, int(round(radius * 0.8)))),
                0, 180, 360, head_cover, -1, cv2.LINE_AA)
    if nuisance.cap >= 0:  # the peak, facing the viewer's right
        for target, value in ((canvas, head_cover), (mask, 255)):
            cv2.ellipse(target, (int(round(at[0] + 0.6 * radius)), top[1]),
                        (max(1, int(round(0.7 * radius))), max(1, int(round(0.2 * radius)))),
                        0, 0, 360, value, -1, cv2.LINE_AA)


def _draw_figure(canvas, mask, keypoints, look, nuisance, body):
    """The person, back to front: legs, torso, arms, hands, club, head; canvas (H, W, 3) uint8 and
    mask (H, W) uint8 drawn in place (keypoints in canvas pixels)."""
    seen = keypoints[:, 2] > 0
    length = torso_length(keypoints)
    shirt, trousers = COLORS[look.shirt], COLORS[look.trousers]
    skin = SKIN_TONES[nuisance.skin]

    def limb(a, b, width, color):
        if seen[a] and seen[b]:
            for target, value in ((canvas, color), (mask, 255)):
                _capsule(target, keypoints[a, :2], keypoints[b, :2], width * length / 2, value)

    def polygon(points, color):
        points = np.round(np.array(points)).astype(np.int32)
        for target, value in ((canvas, color), (mask, 255)):
            cv2.fillConvexPoly(target, points, value, cv2.LINE_AA)

    for hip, knee, ankle in ((R_HIP, R_KNE, R_ANK), (L_HIP, L_KNE, L_ANK)):
        limb(hip, knee, body.thigh, trousers)
        limb(knee, ankle, body.shin, trousers)
        if seen[ankle]:
            foot = keypoints[ankle, :2] + (0.0, 0.12 * length)
            shoe = CAP_COLORS[nuisance.accent] if nuisance.accent >= 0 else SHOE_COLOR
            for target, value in ((canvas, shoe), (mask, 255)):
                cv2.ellipse(target, tuple(int(round(v)) for v in foot),
                            (max(1, int(0.22 * length)), max(1, int(0.12 * length))), 0, 0, 360, value, -1, cv2.LINE_AA)
    if seen[R_HIP] and seen[L_HIP]:
        r_hip, l_hip = keypoints[R_HIP, :2], keypoints[L_HIP, :2]
        side = (l_hip - r_hip) / max(1e-3, np.linalg.norm(l_hip - r_hip)) * body.hip_pad * length
        drop = np.array([0.0, 0.18 * length])
        polygon([r_hip - side, l_hip + side, l_hip + side + drop, r_hip - side + drop], trousers)
    if seen[R_SHO] and seen[L_SHO] and seen[R_HIP] and seen[L_HIP]:
        r_sho, l_sho = keypoints[R_SHO, :2], keypoints[L_SHO, :2]
        r_hip, l_hip = keypoints[R_HIP, :2], keypoints[L_HIP, :2]
        pad = (l_sho - r_sho) / max(1e-3, np.linalg.norm(l_sho - r_sho)) * body.shoulder_pad * length
        polygon([r_sho - pad, l_sho + pad, l_hip, r_hip], shirt)
        polygon([r_sho - pad, l_sho + pad, (l_hip + r_hip) / 2], shirt)
    elif seen[NECK] and (seen[R_HIP] or seen[L_HIP]):
        hip = keypoints[R_HIP if seen[R_HIP] else L_HIP, :2]
        for target, value in ((canvas, shirt), (mask, 255)):
            _capsule(target, keypoints[NECK, :2], hip, 0.3 * length, value)
    for shoulder, elbow, wrist in ((R_SHO, R_ELB, R_WRI), (L_SHO, L_ELB, L_WRI)):
        limb(shoulder, elbow, body.arm, shirt)
        limb(elbow, wrist, body.forearm, skin)
    if look.golfer:
        _draw_club(canvas, mask, keypoints, body, CLUB_COLORS[look.background])
    if body.hand > 0:  # a fist just past each wrist, over the club's grip
        for elbow, wrist in ((R_ELB, R_WRI), (L_ELB, L_WRI)):
            if seen[elbow] and seen[wrist]:
                centre = keypoints[wrist, :2] + 0.6 * body.hand * length * _forearm_direction(keypoints, elbow, wrist)
                for target, value in ((canvas, skin), (mask, 255)):
                    cv2.circle(target, tuple(int(round(v)) for v in centre), max(1, int(round(body.hand * length))),
                               value, -1, cv2.LINE_AA)
    if seen[NECK] or seen[NOSE]:
        _draw_head(canvas, mask, keypoints, nuisance, body, length, skin)


def thin_parts_mask(keypoints, golfer, size=SIZE):
    """The parts the toy world's measures find hardest: the arms and, for a golfer, the club;
    (size, size) bool (toy/train_toy.py weights them in the VAE's loss)."""
    body, big = body_for(size), size * SUPERSAMPLE
    points = keypoints.astype(np.float64).copy()
    points[:, :2] *= SUPERSAMPLE
    mask = np.zeros((big, big), np.uint8)
    if golfer:
        _draw_club(np.zeros((big, big, 3), np.uint8), mask, points, body, (0, 0, 0))
    small = cv2.resize(mask.astype(np.float32) / 255, (size, size), interpolation=cv2.INTER_AREA) > 0.5
    return small | limb_mask(keypoints, ARMS, size)


def limb_mask(keypoints, limbs=ARMS, size=SIZE):
    """The true mask of some limbs alone (pairs of joints, default the arms): the capsules the
    renderer draws for them, (size, size) bool; keypoints (18, 3) in the picture's pixels."""
    body, big = body_for(size), size * SUPERSAMPLE
    points = keypoints.astype(np.float64).copy()
    points[:, :2] *= SUPERSAMPLE
    length = torso_length(points)
    widths = {(R_SHO, R_ELB): body.arm, (L_SHO, L_ELB): body.arm, (R_ELB, R_WRI): body.forearm,
              (L_ELB, L_WRI): body.forearm}
    mask = np.zeros((big, big), np.uint8)
    for a, b in limbs:
        if points[a, 2] > 0 and points[b, 2] > 0:
            _capsule(mask, points[a, :2], points[b, :2], widths.get((a, b), body.forearm) * length / 2, 255)
    return cv2.resize(mask.astype(np.float32) / 255, (size, size), interpolation=cv2.INTER_AREA) > 0.5


def render(keypoints, look, nuisance, size=SIZE):
    """One picture of a person; keypoints (18, 3) in pixels of the (size x size) picture.

    -> (image (size, size, 3) uint8, mask (size, size) bool: where the figure is (a golfer's club
    included), shadow excluded).
    """
    big = size * SUPERSAMPLE
    points = keypoints.astype(np.float64).copy()
    points[:, :2] *= SUPERSAMPLE
    background, ground = clean_background(look.background, big, big)
    background = background + texture(nuisance.texture, nuisance.texture_seed, big, big, nuisance.accent)
    if nuisance.shadow > 0 and (points[[R_ANK, L_ANK], 2] > 0).any():
        feet = points[[R_ANK, L_ANK]][points[[R_ANK, L_ANK], 2] > 0, :2].mean(axis=0)
        length = torso_length(points)
        shade = np.zeros((big, big), np.float32)
        cv2.ellipse(shade, (int(feet[0] + 0.3 * length), int(feet[1] + 0.15 * length)),
                    (max(1, int(0.9 * length * nuisance.shadow_width)), max(1, int(0.15 * length))),
                    0, 0, 360, 1.0, -1, cv2.LINE_AA)
        background *= 1 - nuisance.shadow * shade[..., None]
    canvas = np.clip(background, 0, 255).astype(np.uint8)
    mask = np.zeros((big, big), np.uint8)
    _draw_figure(canvas, mask, points, look, nuisance, body_for(size))
    ramp = 1 + nuisance.light_slope * np.linspace(-1, 1, big, dtype=np.float32)[None, :, None]
    lit = np.clip(canvas.astype(np.float32) * nuisance.light * ramp, 0, 255)
    image = cv2.resize(lit, (size, size), interpolation=cv2.INTER_AREA)
    small_mask = cv2.resize(mask.astype(np.float32) / 255, (size, size), interpolation=cv2.INTER_AREA)
    return np.round(image).astype(np.uint8), small_mask > 0.5


def render_clip(keypoints, prompt, seed=0, size=SIZE):
    """A source video of a pose sequence: keypoints (F, 18, 3) in pixels of the picture; one look
    (from the prompt) and one nuisance draw (from the seed) for every frame.
    -> (frames (F, size, size, 3) uint8, masks (F, size, size) bool)."""
    look, nuisance = parse_prompt(prompt), random_nuisance(np.random.default_rng(seed))
    pictures = [render(k, look, nuisance, size) for k in keypoints]
    return np.stack([p[0] for p in pictures]), np.stack([p[1] for p in pictures])
