"""The toy world: a procedural renderer that draws a person from COCO-18 keypoints and a prompt.

``render(keypoints, look, nuisance, size)`` draws one picture and its true figure mask;
``render_clip(keypoints, prompt, seed, size)`` a source video of a pose sequence (one look and one
set of nuisances for the whole clip, as a real video has). The prompt fixes the shirt and trouser
colours and the background kind; the nuisances (background texture, lighting, skin and hair,
cap, shadow) are fixed by neither the prompt nor the pose. A per-frame generator redraws them at
every frame: that is the flicker the temporal techniques exist to remove. ``random_pose`` draws
plausible bodies for training and the held-out evaluation set; ``sample`` a training example.

Two worlds share this renderer, told apart by picture size (``body_for``): the first toy model's
64 px world (chunky limbs, no hands, no club) and toy world 2 at 128 px, SD's shape (limbs as thin
as a body's, hands, and a golf club in the hands whenever the prompt names a golfer).
"""
import math
import re
from dataclasses import dataclass, replace

import cv2
import numpy as np

SIZE = 64  # the committed toy model's native picture size (its VAE downsamples by 4: 16x16 latents)
SIZE2 = 128  # toy world 2: SD's shape (an 8x VAE, 16x16 latents); train_toy.py --size 128
SUPERSAMPLE = 2  # drawn at 2x and area-averaged, for anti-aliased edges
COLORS = {
    "red": (205, 35, 35), "blue": (35, 70, 210), "green": (35, 165, 55),
    "yellow": (240, 210, 40), "black": (25, 25, 28), "white": (242, 242, 242),
}
BACKGROUNDS = ("golf course", "studio", "beach", "night")
BACKGROUND_WORDS = {"golf course": ("golf", "grass", "course"), "studio": ("studio", "wall"),
                    "beach": ("beach", "sand", "sea"), "night": ("night", "dark")}
SUBJECTS = ("a person", "a golfer", "a man", "a woman")
TEXTURES = ("none", "clouds", "stripes", "grain")
SKIN_TONES = ((238, 198, 160), (214, 160, 120), (170, 115, 80), (110, 72, 48))
HAIR_COLORS = ((40, 28, 20), (100, 65, 30), (210, 180, 110), (150, 150, 150))
CAP_COLORS = ((255, 140, 0), (150, 60, 200), (20, 30, 90), (255, 120, 180), (0, 150, 150))
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
    """The proportions of the world drawn at this picture size: SLIM from SIZE2 up, else CHUNKY."""
    return SLIM if size >= SIZE2 else CHUNKY


@dataclass(frozen=True)
class Look:
    """What a prompt fixes: shirt and trouser colour names, the background kind, and whether the
    person is a golfer (who holds a club, in a world that draws clubs)."""

    shirt: str = "red"
    trousers: str = "black"
    background: str = "golf course"
    golfer: bool = False

    def prompt(self, subject=None):
        """The prompt naming this look; subject defaults to "a golfer" or "a person"."""
        subject = subject or ("a golfer" if self.golfer else "a person")
        return f"{subject} in a {self.shirt} shirt and {self.trousers} trousers, {_place(self.background)}"


@dataclass(frozen=True)
class Nuisance:
    """What neither prompt nor pose fixes; drawn at random per sample."""

    texture: str = "none"
    texture_seed: int = 0
    light: float = 1.0  # global brightness factor
    light_slope: float = 0.0  # left-to-right brightness change, as a fraction
    skin: int = 0
    hair: int = 0
    cap: int = -1  # index into CAP_COLORS, -1: no cap
    shadow: float = 0.0  # 0: none, else its darkness (fraction of the ground's brightness removed)
    shadow_width: float = 1.0


def _place(background):
    return {"golf course": "on a golf course", "studio": "in a studio", "beach": "on a beach",
            "night": "at night"}[background]


def parse_prompt(prompt, default=Look()):
    """The Look a prompt names ("a golfer in a red shirt and blue trousers on a beach"); words it
    does not name keep ``default``'s."""
    text = prompt.lower()
    found = {}
    for part, words in (("shirt", r"shirt|top|jersey"), ("trousers", r"trousers|pants|shorts")):
        match = re.search(rf"\b({'|'.join(COLORS)})\s+(?:{words})\b", text)
        if match:
            found[part] = match.group(1)
    for background, words in BACKGROUND_WORDS.items():
        if any(re.search(rf"\b{w}\b", text) for w in words):
            found["background"] = background
            break
    found["golfer"] = bool(re.search(r"\bgolfers?\b", text))
    return Look(**{**default.__dict__, **found})


def random_look(rng):
    names = list(COLORS)
    return Look(names[rng.integers(len(names))], names[rng.integers(len(names))],
                BACKGROUNDS[rng.integers(len(BACKGROUNDS))])


def random_nuisance(rng):
    return Nuisance(texture=TEXTURES[rng.integers(len(TEXTURES))], texture_seed=int(rng.integers(2 ** 31)),
                    light=float(rng.uniform(0.85, 1.15)), light_slope=float(rng.uniform(-0.12, 0.12)),
                    skin=int(rng.integers(len(SKIN_TONES))), hair=int(rng.integers(len(HAIR_COLORS))),
                    cap=int(rng.integers(len(CAP_COLORS))) if rng.random() < 0.5 else -1,
                    shadow=float(rng.uniform(0.1, 0.25)) if rng.random() < 0.6 else 0.0,
                    shadow_width=float(rng.uniform(0.7, 1.4)))


# ---- background -------------------------------------------------------------------------------

def _bands(height, width, bands):
    """Horizontal colour bands [(until_fraction, top_rgb, bottom_rgb), ...] -> (H, W, 3) float."""
    image = np.zeros((height, width, 3), np.float32)
    top = 0
    for until, color_top, color_bottom in bands:
        bottom = int(round(until * height))
        ramp = np.linspace(0, 1, max(1, bottom - top), dtype=np.float32)[:, None, None]
        image[top:bottom] = (1 - ramp) * np.float32(color_top) + ramp * np.float32(color_bottom)
        top = bottom
    return image


def clean_background(background, height, width):
    """The background kind with no nuisance: (H, W, 3) float in [0, 255]; the ground starts at the
    returned row fraction."""
    if background == "golf course":
        return _bands(height, width, [(0.55, (120, 180, 235), (175, 212, 242)), (1.0, (85, 160, 65), (60, 135, 45))]), 0.55
    if background == "studio":
        return _bands(height, width, [(0.8, (132, 132, 136), (124, 124, 128)), (1.0, (104, 104, 110), (96, 96, 102))]), 0.8
    if background == "beach":
        return _bands(height, width, [(0.4, (140, 195, 240), (180, 215, 245)), (0.55, (30, 100, 165), (45, 125, 180)),
                                      (1.0, (228, 205, 155), (215, 190, 140))]), 0.55
    return _bands(height, width, [(0.7, (10, 14, 40), (25, 30, 65)), (1.0, (32, 36, 42), (26, 28, 34))]), 0.7


def _texture(kind, seed, height, width):
    """An additive texture layer (H, W, 3) float: clouds, stripes, grain or nothing."""
    rng = np.random.default_rng(seed)
    layer = np.zeros((height, width, 3), np.float32)
    if kind == "clouds":
        for _ in range(rng.integers(2, 5)):
            centre = (int(rng.uniform(0, width)), int(rng.uniform(0, 0.45 * height)))
            axes = (int(rng.uniform(0.08, 0.2) * width), int(rng.uniform(0.04, 0.08) * height))
            blob = np.zeros((height, width), np.float32)
            cv2.ellipse(blob, centre, axes, 0, 0, 360, 1.0, -1)
            layer += cv2.GaussianBlur(blob, (0, 0), 0.03 * width)[..., None] * 30.0
    elif kind == "stripes":
        angle, period = rng.uniform(0, math.pi), rng.uniform(0.06, 0.16) * width
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        wave = np.sin(2 * math.pi * (xx * math.cos(angle) + yy * math.sin(angle)) / period)
        layer += (wave * 14.0)[..., None]
    elif kind == "grain":
        layer += rng.normal(0, 9.0, (height, width, 1)).astype(np.float32)
    return layer


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
            for target, value in ((canvas, SHOE_COLOR), (mask, 255)):
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


def thin_parts_mask(keypoints, golfer, size=SIZE2):
    """The parts the toy world's measures find hardest: the arms and, for a golfer, the club;
    (size, size) bool (train_toy.py weights them in the VAE's loss)."""
    body, big = body_for(size), size * SUPERSAMPLE
    points = keypoints.astype(np.float64).copy()
    points[:, :2] *= SUPERSAMPLE
    mask = np.zeros((big, big), np.uint8)
    if golfer:
        _draw_club(np.zeros((big, big, 3), np.uint8), mask, points, body, (0, 0, 0))
    small = cv2.resize(mask.astype(np.float32) / 255, (size, size), interpolation=cv2.INTER_AREA) > 0.5
    return small | limb_mask(keypoints, ARMS, size)


def limb_mask(keypoints, limbs=ARMS, size=SIZE2):
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
    background = background + _texture(nuisance.texture, nuisance.texture_seed, big, big)
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


# ---- poses ------------------------------------------------------------------------------------

def _at(origin, length, angle):
    """origin + length * (sin a, cos a): angle 0 points down the picture."""
    return origin + length * np.array([math.sin(angle), math.cos(angle)])


def random_pose(rng, size=SIZE):
    """A plausible standing body seen from the front, COCO-18 (18, 3) in pixels of a size x size
    picture: random height, place, lean, turn, arm and leg angles, some face joints hidden."""
    height = rng.uniform(0.55, 0.9) * size
    length = 0.3 * height  # torso
    mid_hip = np.array([rng.uniform(0.3, 0.7) * size, 0.0])
    leg = 1.45 * length
    mid_hip[1] = rng.uniform(0.93 * size - leg - 0.05 * size, 0.95 * size - leg + 0.02 * size)
    lean = rng.normal(0, 0.15)
    neck = _at(mid_hip, length, math.pi + lean)
    turn = rng.uniform(0, 1)
    shoulder_half = length * rng.uniform(0.28, 0.42) * (0.45 + 0.55 * math.cos(turn * 1.2))
    hip_half = length * rng.uniform(0.2, 0.3) * (0.5 + 0.5 * math.cos(turn * 1.2))
    across = np.array([math.cos(lean), -math.sin(lean)])
    points = np.zeros((18, 3), np.float64)
    points[NECK, :2] = neck
    points[R_SHO, :2], points[L_SHO, :2] = neck - shoulder_half * across + (0, 0.08 * length), neck + shoulder_half * across + (0, 0.08 * length)
    points[R_HIP, :2], points[L_HIP, :2] = mid_hip - hip_half * across, mid_hip + hip_half * across
    for shoulder, elbow, wrist, side in ((R_SHO, R_ELB, R_WRI, -1), (L_SHO, L_ELB, L_WRI, 1)):
        upper = side * rng.uniform(-0.4, 2.9) if rng.random() < 0.85 else side * rng.uniform(-2.0, 3.1)
        bend = side * rng.uniform(-0.2, 2.0)
        points[elbow, :2] = _at(points[shoulder, :2], 0.55 * length, upper)
        points[wrist, :2] = _at(points[elbow, :2], 0.5 * length, upper + bend)
    for hip, knee, ankle, side in ((R_HIP, R_KNE, R_ANK, -1), (L_HIP, L_KNE, L_ANK, 1)):
        thigh = side * rng.uniform(-0.15, 0.5)
        bend = -side * rng.uniform(0, 0.6) if rng.random() < 0.7 else side * rng.uniform(0, 0.6)
        points[knee, :2] = _at(points[hip, :2], 0.75 * length, thigh)
        points[ankle, :2] = _at(points[knee, :2], 0.7 * length, thigh + bend)
    tilt, facing = rng.normal(0, 0.15), rng.uniform(-0.25, 0.25)
    nose = _at(neck, 0.45 * length, math.pi + lean + tilt) + (facing * length, 0)
    points[NOSE, :2] = nose
    for joint, dx, dy in ((R_EYE, -0.13, -0.12), (L_EYE, 0.13, -0.12), (R_EAR, -0.26, -0.04), (L_EAR, 0.26, -0.04)):
        points[joint, :2] = nose + length * np.array([dx - 0.3 * facing, dy])
    points[:, 2] = 1.0
    for joint in (R_EYE, L_EYE, R_EAR, L_EAR):
        if rng.random() < 0.15:
            points[joint, 2] = 0.0
    if facing > 0.15:
        points[R_EAR, 2] = 0.0
    if facing < -0.15:
        points[L_EAR, 2] = 0.0
    return points.astype(np.float32)


def jumping_jacks(num_frames=48, size=SIZE, period=24):
    """A second motion beside the golf swing: jumping jacks seen from the front, (F, 18, 3) in pixels
    of a size x size picture; the arms swing from the sides to overhead and the feet apart and back,
    one jack every ``period`` frames (a fixed body, drawn from its own seed)."""
    base = random_pose(np.random.default_rng([HELDOUT_SEED, 1]), size)
    length = torso_length(base)
    mid_hip = (base[R_HIP, :2] + base[L_HIP, :2]) / 2
    base[:, :2] += (size / 2 - mid_hip[0], 0.0)  # centred, so that the arms stay in the picture
    poses = []
    for frame in range(num_frames):
        phase = 0.5 - 0.5 * math.cos(2 * math.pi * frame / period)  # 0: arms down, 1: arms up
        pose = base.copy()
        for shoulder, elbow, wrist, side in ((R_SHO, R_ELB, R_WRI, -1), (L_SHO, L_ELB, L_WRI, 1)):
            upper = side * (0.25 + 2.55 * phase)
            pose[elbow, :2] = _at(pose[shoulder, :2], 0.55 * length, upper)
            pose[wrist, :2] = _at(pose[elbow, :2], 0.5 * length, upper + side * 0.15)
        for hip, knee, ankle, side in ((R_HIP, R_KNE, R_ANK, -1), (L_HIP, L_KNE, L_ANK, 1)):
            thigh = side * (0.05 + 0.3 * phase)
            pose[knee, :2] = _at(pose[hip, :2], 0.75 * length, thigh)
            pose[ankle, :2] = _at(pose[knee, :2], 0.7 * length, thigh)
        poses.append(pose)
    return np.stack(poses).astype(np.float32)


def jittered(keypoints, rng, size=SIZE):
    """A pose (18, 3) moved, scaled and shaken a little (for training on a known pose family)."""
    seen = keypoints[:, 2] > 0
    centre = keypoints[seen, :2].mean(axis=0)
    scale = rng.uniform(0.85, 1.15)
    shift = rng.normal(0, 0.06 * size, 2)
    moved = keypoints.copy()
    moved[:, :2] = (keypoints[:, :2] - centre) * scale + centre + shift + rng.normal(0, 0.006 * size, (18, 2))
    return moved


HELDOUT_SEED = 2_000_000_007  # training draws from seeds below 2**31 - 1 in their own streams


def heldout_poses(count, size=SIZE):
    """The evaluation poses (count, 18, 3): random bodies from a seed no training stream uses."""
    rng = np.random.default_rng([HELDOUT_SEED])
    return np.stack([random_pose(rng, size) for _ in range(count)])


def sample(rng, swing=None, size=SIZE, swing_share=0.3):
    """One training example: (image uint8 (size, size, 3), mask, keypoints (18, 3), prompt, look).

    swing: optional (F, 18, 3) poses in picture pixels (the bundled demo swing), jittered."""
    if swing is not None and rng.random() < swing_share:
        keypoints = jittered(swing[rng.integers(len(swing))], rng, size)
    else:
        keypoints = random_pose(rng, size)
    look, nuisance = random_look(rng), random_nuisance(rng)
    subject = SUBJECTS[rng.integers(len(SUBJECTS))]
    look = replace(look, golfer=subject == "a golfer")
    image, mask = render(keypoints, look, nuisance, size)
    return image, mask, keypoints, look.prompt(subject), look
