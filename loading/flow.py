"""Optical flow of the source video with OpenCV's DIS (no weights), and where to trust it.

``backward_flows(frames)`` gives, for each frame i >= 1, where each pixel was in frame i - 1 and
a mask of pixels passing the forward-backward check; ``to_latent_resolution`` shrinks both to
the latent grid. Every user of flow reads it from here: flow fusion, flow-gated noise, the
trajectories of trajectory attention, and the warping-error and warp-SSIM metrics.

DIS works at the scale of real footage: on 64 px toy frames it finds 1.8 px where the joints move
11.8 px a frame, and its forward-backward check then passes the moving limbs too. So frames
smaller than FLOW_SIZE are upscaled (by a whole factor) before the flow is computed, and the
vectors divided back.
"""
import math

import cv2
import numpy as np

FLOW_SIZE = 256  # the shorter side flow is computed at, at least (smaller clips are upscaled)

# Forward-backward check of Sundaram et al. (2010), as used by Rerender-A-Video and FRESCO:
# |f_b(p) + f_f(p + f_b(p))|^2 < ALPHA (|f_b(p)|^2 + |f_f(p + f_b(p))|^2) + BETA
ALPHA, BETA = 0.01, 0.5


def _sample(flow, coordinates):
    """Bilinear lookup of a flow (H, W, 2) at float pixel coordinates (H, W, 2)."""
    map_x, map_y = coordinates[..., 0].astype(np.float32), coordinates[..., 1].astype(np.float32)
    return cv2.remap(flow, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def _max_pool(image, factor):
    """(H*k, W*k[, C]) -> (H, W[, C]): the maximum of each k x k block."""
    height, width = image.shape[0] // factor, image.shape[1] // factor
    blocks = image[:height * factor, :width * factor].reshape(height, factor, width, factor, *image.shape[2:])
    return blocks.max(axis=(1, 3))


def upscale_factor(height, width, min_size=FLOW_SIZE):
    """The whole factor that brings the shorter side to at least ``min_size`` (1 if it is already)."""
    return max(1, math.ceil(min_size / min(height, width)))


def backward_flows(frames, min_size=FLOW_SIZE):
    """frames (F, H, W, 3) uint8 -> flows (F-1, H, W, 2) float32 and masks (F-1, H, W) float32.

    flows[i-1](p) = d such that frame i at p shows what frame i-1 shows at p + d. Computed on
    the frames upscaled by ``upscale_factor`` (cubic), then brought back: vectors area-averaged and
    divided by the factor; a pixel is reliable only where all of its upscaled pixels are.
    """
    height, width = np.asarray(frames).shape[1:3]
    factor = upscale_factor(height, width, min_size)
    if factor == 1:
        return _flows_at_size(frames)
    big = [cv2.resize(np.ascontiguousarray(f), (width * factor, height * factor), interpolation=cv2.INTER_CUBIC)
           for f in frames]
    flows, masks = _flows_at_size(big)
    if len(flows) == 0:
        return np.zeros((0, height, width, 2), np.float32), np.zeros((0, height, width), np.float32)
    small = np.stack([cv2.resize(f, (width, height), interpolation=cv2.INTER_AREA) / factor for f in flows])
    reliable = np.stack([1 - _max_pool(1 - m, factor) for m in masks])
    return small.astype(np.float32), reliable.astype(np.float32)


def _flows_at_size(frames):
    """backward_flows at the frames' own size."""
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    gray = [cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY) for f in frames]
    height, width = gray[0].shape
    grid = np.stack(np.meshgrid(np.arange(width), np.arange(height)), axis=-1).astype(np.float32)
    flows, masks = [], []
    for previous, current in zip(gray, gray[1:]):
        backward = dis.calc(current, previous, None)
        forward = dis.calc(previous, current, None)
        forward_at_target = _sample(forward, grid + backward)
        error = np.sum((backward + forward_at_target) ** 2, axis=-1)
        bound = ALPHA * (np.sum(backward ** 2, axis=-1) + np.sum(forward_at_target ** 2, axis=-1)) + BETA
        flows.append(backward)
        masks.append((error < bound).astype(np.float32))
    if not flows:
        return np.zeros((0, height, width, 2), np.float32), np.zeros((0, height, width), np.float32)
    return np.stack(flows), np.stack(masks)


def to_latent_resolution(flows, masks, factor):
    """Shrink flows (N, H, W, 2) and masks (N, H, W) by ``factor``: the flow area-averaged (in
    latent pixels); the unreliable pixels dilated by a (factor + 1)-px square and max-pooled, as
    Rerender and FRESCO do, so a latent pixel is trusted only where none of its pixels, nor their
    neighbours, failed the check."""
    if len(flows) == 0:
        return flows[:, ::factor, ::factor], masks[:, ::factor, ::factor]
    height, width = flows.shape[1] // factor, flows.shape[2] // factor
    small_flows = np.stack([cv2.resize(f, (width, height), interpolation=cv2.INTER_AREA) / factor for f in flows])
    kernel = np.ones((factor + 1, factor + 1), np.uint8)
    unreliable = [cv2.dilate((m < 0.5).astype(np.uint8), kernel) for m in masks]
    small_masks = np.stack([1 - _max_pool(u, factor) for u in unreliable])
    return small_flows.astype(np.float32), small_masks.astype(np.float32)
