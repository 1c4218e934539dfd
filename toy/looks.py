"""What the toy world's prompt and nuisances name: ``Look`` (shirt and trouser colours, the
background kind, a golfer or not; ``parse_prompt`` reads it from a prompt), ``Nuisance`` (texture,
light, skin, hair, cap, shadow: what neither prompt nor pose fixes, drawn by ``random_nuisance``),
and the backgrounds (``clean_background``, the additive ``texture``). toyworld.py draws with them.
"""
import math
import re
from dataclasses import dataclass, replace

import cv2
import numpy as np

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
    accent: int = -1  # toy world 3 candidate (issue 34): an index into CAP_COLORS worn on cap and shoes and
    # tinting the background's stripes, one look across distant parts of the picture; -1: none


ACCENT_STRIPES = 28.0  # the accent-tinted stripes' amplitude (0-255)


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


def random_nuisance(rng, accent=False):
    """A nuisance draw; with ``accent`` (a toy world 3 candidate), a cap always, one accent colour on the
    cap, the shoes and the background's stripes (drawn after the others, so that the rest match)."""
    nuisance = _random_nuisance(rng)
    if not accent:
        return nuisance
    index = int(rng.integers(len(CAP_COLORS)))
    return replace(nuisance, accent=index, cap=index, texture="stripes")


def _random_nuisance(rng):
    return Nuisance(texture=TEXTURES[rng.integers(len(TEXTURES))], texture_seed=int(rng.integers(2 ** 31)),
                    light=float(rng.uniform(0.85, 1.15)), light_slope=float(rng.uniform(-0.12, 0.12)),
                    skin=int(rng.integers(len(SKIN_TONES))), hair=int(rng.integers(len(HAIR_COLORS))),
                    cap=int(rng.integers(len(CAP_COLORS))) if rng.random() < 0.5 else -1,
                    shadow=float(rng.uniform(0.1, 0.25)) if rng.random() < 0.6 else 0.0,
                    shadow_width=float(rng.uniform(0.7, 1.4)))


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


def texture(kind, seed, height, width, accent=-1):
    """An additive texture layer (H, W, 3) float: clouds, stripes, grain or nothing; stripes tinted in
    CAP_COLORS[accent] where accent >= 0 (toward the colour and away from it)."""
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
        if accent >= 0:
            tint = np.float32(CAP_COLORS[accent]) / 255.0 - 0.5
            layer += wave[..., None] * ACCENT_STRIPES * tint / max(1e-3, float(np.abs(tint).max()))
        else:
            layer += (wave * 14.0)[..., None]
    elif kind == "grain":
        layer += rng.normal(0, 9.0, (height, width, 1)).astype(np.float32)
    return layer
