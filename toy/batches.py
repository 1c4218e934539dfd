"""The toy model's training batches: pictures, figure masks, pose maps and prompts drawn from the
toy world (motions.sample), as 2x2 grids of one look (or of one clip) for RAVE's grid steps, with
the arms and club marked for the VAE's loss. ``swing_poses`` gives the bundled demo swing at a
picture size.
"""
import os

import numpy as np
import torch

import pose_extract
from common.files import ROOT
from toy import looks, motions, toyworld

PROMPT_DROPOUT = 0.1  # as SD's training: the empty prompt is the unconditional branch of guidance


def swing_poses(size):
    """The bundled demo swing in pixels of a size x size picture, (F, 18, 3)."""
    sequence = pose_extract.read_poses(os.path.join(ROOT, "demo", "golf_swing.json"))
    width, height = sequence.canvas_size
    return pose_extract.fit_keypoints(sequence.keypoints, size / max(width, height), (0.0, 0.0))


def _tile(pictures, grid):
    """grid * grid pictures (H, W, C) -> one (grid*H, grid*W, C), row-major (latent_ops.tile's order)."""
    rows = [np.concatenate(pictures[r * grid:(r + 1) * grid], axis=1) for r in range(grid)]
    return np.concatenate(rows, axis=0)


def batch(rng, count, swing, size, grid=1, thin=False, golfer_share=None, device="cpu", accent=False, clips=False):
    """A training batch of ``count`` pictures: (B, 3, H, W) in [-1, 1], masks (B, H, W), pose maps
    (B, 3, H, W) in [0, 1], prompts. With grid > 1 each picture is a grid x grid tiling of
    size-px frames of one look (one prompt) in different poses, H = W = grid * size. With thin
    (grid 1), the masks are 1 on the figure and 2 on its arms and club (toyworld.thin_parts_mask).
    golfer_share, accent: as motions.sample's (None: a quarter of the subjects are golfers). clips: a
    grid's frames share their nuisances too (background texture, light, cap, skin), as one clip's
    frames do in RAVE's grids; without it (toy world 2's recipe) each frame draws its own. Drawn on
    the CPU; the tensors are then put on ``device`` (the training device)."""
    images, masks, maps, prompts = [], [], [], []
    for _ in range(count):
        shared = looks.random_nuisance(rng, accent) if clips and grid > 1 else None
        cells = [motions.sample(rng, swing, size, golfer_share=golfer_share, accent=accent, nuisance=shared)]
        if thin:
            image, mask, keypoints, prompt, look = cells[0]
            cells[0] = (image, mask.astype(np.float32) + toyworld.thin_parts_mask(keypoints, look.golfer, size),
                        keypoints, prompt, look)
        for _ in range(grid * grid - 1):  # the same look (and with clips, nuisances), another pose
            keypoints = (motions.jittered(swing[rng.integers(len(swing))], rng, size) if rng.random() < 0.3
                         else motions.random_pose(rng, size))
            nuisance = looks.random_nuisance(rng, accent) if shared is None else shared
            cells.append((*toyworld.render(keypoints, cells[0][4], nuisance, size), keypoints))
        images.append(_tile([c[0] for c in cells], grid))
        masks.append(_tile([c[1][..., None] for c in cells], grid)[..., 0])
        maps.append(_tile([pose_extract.draw_openpose(c[2], size, size) for c in cells], grid))
        prompts.append("" if rng.random() < PROMPT_DROPOUT else cells[0][3])
    to_tensor = lambda a: (torch.from_numpy(np.stack(a)).permute(0, 3, 1, 2).float() / 255.0).to(device)  # noqa: E731
    return to_tensor(images) * 2 - 1, torch.from_numpy(np.stack(masks)).float().to(device), to_tensor(maps), prompts
