"""Optical flow of the source video with OpenCV's DIS (no weights), and where to trust it.

``backward_flows(frames)`` gives, for each frame i >= 1, where each pixel was in frame i - 1 and
a mask of pixels passing the forward-backward check; ``to_latent_resolution`` shrinks both to
the latent grid. Used by the flow-warp technique; the warping-error metric uses the same flow.
"""
import cv2
import numpy as np

# Forward-backward check of Sundaram et al. (2010), as used by Rerender-A-Video and FRESCO:
# |f_b(p) + f_f(p + f_b(p))|^2 < ALPHA (|f_b(p)|^2 + |f_f(p + f_b(p))|^2) + BETA
ALPHA, BETA = 0.01, 0.5


def _sample(flow, coordinates):
    """Bilinear lookup of a flow (H, W, 2) at float pixel coordinates (H, W, 2)."""
    map_x, map_y = coordinates[..., 0].astype(np.float32), coordinates[..., 1].astype(np.float32)
    return cv2.remap(flow, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def backward_flows(frames):
    """frames (F, H, W, 3) uint8 -> flows (F-1, H, W, 2) float32 and masks (F-1, H, W) float32.

    flows[i-1](p) = d such that frame i at p shows what frame i-1 shows at p + d.
    """
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
    """Shrink flows (N, H, W, 2) and masks (N, H, W) by ``factor`` (area average; flow in new pixels)."""
    if len(flows) == 0:
        return flows[:, ::factor, ::factor], masks[:, ::factor, ::factor]
    height, width = flows.shape[1] // factor, flows.shape[2] // factor
    small_flows = np.stack([cv2.resize(f, (width, height), interpolation=cv2.INTER_AREA) / factor for f in flows])
    small_masks = np.stack([cv2.resize(m, (width, height), interpolation=cv2.INTER_AREA) for m in masks])
    return small_flows, (small_masks > 0.5).astype(np.float32)
