"""Latent-space math of the temporal-consistency techniques: pure tensor functions, torch only.

Shapes: a latent is (C, H, W) (C = 4 for SD, H, W = image size / 8); a clip of latents is
(F, C, H, W). ``alpha_bar`` is the scheduler's cumulative alpha at a timestep (VP form:
z_t = sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) eps). The technique objects that call these
from the denoising loop's hooks live in loop/techniques.py.
"""
import torch
import torch.nn.functional as F


def blend(latents, reference, weight):
    """Naive latent blending; latents (F, C, H, W), reference broadcastable to it.

    z_i <- (1 - w) z_i + w z_ref
    """
    return (1 - weight) * latents + weight * reference


def predicted_x0(model_output, sample, alpha_bar, prediction_type):
    """Clean-latent estimate from a VP model output; all (F, C, H, W) but alpha_bar (scalar or (F, 1, 1, 1)).

    epsilon:      x0 = (z_t - sqrt(1 - abar) eps) / sqrt(abar)
    v_prediction: x0 = sqrt(abar) z_t - sqrt(1 - abar) v
    sample:       x0 = model output
    """
    alpha_bar = torch.as_tensor(alpha_bar, dtype=sample.dtype, device=sample.device)
    if prediction_type == "epsilon":
        return (sample - (1 - alpha_bar).sqrt() * model_output) / alpha_bar.sqrt()
    if prediction_type == "v_prediction":
        return alpha_bar.sqrt() * sample - (1 - alpha_bar).sqrt() * model_output
    if prediction_type == "sample":
        return model_output
    raise ValueError(f"unknown prediction_type {prediction_type}")


def predicted_noise(model_output, sample, alpha_bar, prediction_type):
    """Noise estimate from a VP model output; shapes as ``predicted_x0``.

    epsilon:      eps = model output
    v_prediction: eps = sqrt(abar) v + sqrt(1 - abar) z_t
    sample:       eps = (z_t - sqrt(abar) x0) / sqrt(1 - abar)
    """
    alpha_bar = torch.as_tensor(alpha_bar, dtype=sample.dtype, device=sample.device)
    if prediction_type == "epsilon":
        return model_output
    if prediction_type == "v_prediction":
        return alpha_bar.sqrt() * model_output + (1 - alpha_bar).sqrt() * sample
    if prediction_type == "sample":
        return (sample - alpha_bar.sqrt() * model_output) / (1 - alpha_bar).sqrt()
    raise ValueError(f"unknown prediction_type {prediction_type}")


def ddim_inverse_step(model_output, sample, alpha_bar, alpha_bar_next, prediction_type="epsilon"):
    """One step of DDIM inversion: latents (F, C, H, W) at noise level ``alpha_bar`` -> at the
    noisier ``alpha_bar_next``, with the model output taken at the next level's timestep.

    DDIM's deterministic update (Song et al. 2021, Eq. 12 with eta = 0) run up the schedule:
    z_next = sqrt(abar_next) x0 + sqrt(1 - abar_next) eps,  x0 = (z - sqrt(1 - abar) eps) / sqrt(abar).
    It assumes eps(z_next, t_next) ~ eps(z, t_next), exact as the steps shrink.
    """
    x0_pred = predicted_x0(model_output, sample, alpha_bar, prediction_type)
    noise = predicted_noise(model_output, sample, alpha_bar, prediction_type)
    alpha_bar_next = torch.as_tensor(alpha_bar_next, dtype=sample.dtype, device=sample.device)
    return alpha_bar_next.sqrt() * x0_pred + (1 - alpha_bar_next).sqrt() * noise


def inject_differences(latents, anchor_latent, differences, strength, signal_scale):
    """Move latents toward the anchor's plus the source's differences; (F, C, H, W) -> (F, C, H, W).

    With noise shared across frames, z_t^i - z_t^a = sqrt(abar_t) (x0^i - x0^a), so the latent of
    frame i is predicted as z_a + sqrt(abar_t) d_i, d_i = E(v_i) - E(v_a) (aligned source latent
    difference), sqrt(abar_t) = ``signal_scale``; strength lambda moves toward it:
    z_i <- z_i + lambda (z_a + sqrt(abar_t) d_i - z_i)   (lambda = 1: the prediction itself).
    """
    target = anchor_latent.unsqueeze(0) + signal_scale * differences
    return latents + strength * (target - latents)


def channel_stats(latents):
    """Per-channel mean and std over space (and frames); (..., C, H, W) -> two (C, 1, 1)."""
    flat = latents.transpose(0, -3).flatten(1) if latents.dim() == 4 else latents.flatten(1)
    return flat.mean(1)[:, None, None], flat.std(1)[:, None, None]


def flow_grid(flow):
    """Sampling grid for grid_sample from a flow in pixels; (F, H, W, 2) (dx, dy) -> (F, H, W, 2) in [-1, 1]."""
    _, height, width, _ = flow.shape
    ys, xs = torch.meshgrid(torch.arange(height, dtype=flow.dtype, device=flow.device),
                            torch.arange(width, dtype=flow.dtype, device=flow.device), indexing="ij")
    x = (xs + flow[..., 0]) * 2 / max(width - 1, 1) - 1
    y = (ys + flow[..., 1]) * 2 / max(height - 1, 1) - 1
    return torch.stack([x, y], dim=-1)


def warp(latents, flow, mode="bilinear"):
    """Backward warp: out(p) = latents(p + flow(p)); latents (F, C, H, W), flow (F, H, W, 2).

    mode "bilinear", or "nearest" (keeps a noise field's variance, which bilinear mixing shrinks)."""
    grid = flow_grid(flow.to(latents.dtype))
    return F.grid_sample(latents, grid, mode=mode, padding_mode="border", align_corners=True)


def compose_flows(outer, outer_mask, inner, inner_mask):
    """Chain backward flows: outer maps frame k to k', inner maps k' to k'' -> k to k''.

    flow(p) = outer(p) + inner(p + outer(p)); mask(p) = outer_mask(p) * [warp(inner_mask)(p) > 0.5]
    flows (F, H, W, 2) in pixels, masks (F, 1, H, W) in {0, 1}.
    """
    inner_at = warp(inner.permute(0, 3, 1, 2), outer).permute(0, 2, 3, 1)
    mask_at = warp(inner_mask, outer)
    return outer + inner_at, outer_mask * (mask_at > 0.5).to(outer_mask.dtype)


def affine_warp(latents, matrices):
    """Apply 2x3 pixel-space maps dst = A src + b to latents; (F, C, H, W), matrices (F, 2, 3).

    Each output pixel p samples the input at A^-1 (p - b) (the inverse map), bilinear, zeros outside.
    """
    count, _, height, width = latents.shape
    linear, offset = matrices[:, :, :2].to(latents.dtype), matrices[:, :, 2:].to(latents.dtype)
    inverse = torch.linalg.inv(linear)
    ys, xs = torch.meshgrid(torch.arange(height, dtype=latents.dtype, device=latents.device),
                            torch.arange(width, dtype=latents.dtype, device=latents.device), indexing="ij")
    points = torch.stack([xs.flatten(), ys.flatten()]).expand(count, 2, -1)  # (F, 2, H*W)
    source = inverse @ (points - offset)
    flow = (source - points).reshape(count, 2, height, width).permute(0, 2, 3, 1)
    grid = flow_grid(flow)
    return F.grid_sample(latents, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def fuse_warped(x0_pred, warped, mask, weight):
    """Blend a warped clean latent where the flow is reliable; x0 (F, C, H, W), mask (F, 1, H, W) in [0, 1].

    x0 <- x0 + w m (warp(x0_prev) - x0)
    """
    return x0_pred + weight * mask * (warped - x0_pred)


def align_differences(differences, align, source_reference=None, target_reference=None, matrices=None):
    """Align source latent differences (F, C, h, w) to the generated clip.

    "stats": rescale per channel by sigma_target / sigma_source (the mean cancels in a
    difference); "pose": warp each frame's difference by its source-to-target similarity
    (matrices (F, 2, 3) in latent pixels); "none": as they are.
    """
    if align == "stats" and source_reference is not None and target_reference is not None:
        _, std_source = channel_stats(source_reference)
        _, std_target = channel_stats(target_reference)
        return differences * (std_target / (std_source + 1e-6))
    if align == "pose" and matrices is not None:
        return affine_warp(differences, matrices.to(differences.device))
    return differences


def tile(frames, k):
    """K*K frames per grid picture, row-major (RAVE); (G*K*K, C, H, W) -> (G, C, K*H, K*W)."""
    count, channels, height, width = frames.shape
    grids = frames.reshape(count // (k * k), k, k, channels, height, width)  # (G, row, col, C, H, W)
    return grids.permute(0, 3, 1, 4, 2, 5).reshape(count // (k * k), channels, k * height, k * width)


def untile(grids, k):
    """The inverse of ``tile``; (G, C, K*H, K*W) -> (G*K*K, C, H, W)."""
    count, channels, height, width = grids.shape
    frames = grids.reshape(count, channels, k, height // k, k, width // k)  # (G, C, row, H, col, W)
    return frames.permute(0, 2, 4, 1, 3, 5).reshape(count * k * k, channels, height // k, width // k)


def token_links(flows, masks, factor):
    """Where each attention token of frame i was in frame i - 1, from the backward flows.

    flows (F-1, h, w, 2) in latent pixels, masks (F-1, 1, h, w) (1: passed the forward-backward
    check); tokens on the grid (h / factor, w / factor) -> (F, N) long, N = h * w / factor^2: the
    token index in the previous frame, -1 where occluded, unreliable or outside (all -1 for frame 0).
    """
    count, height, width, _ = flows.shape
    rows, cols = height // factor, width // factor
    links = torch.full((count + 1, rows * cols), -1, dtype=torch.long)
    if count == 0:
        return links
    # area average over each token's latent pixels; the flow in token units
    flow = F.avg_pool2d(flows.permute(0, 3, 1, 2).float(), factor) / factor  # (F-1, 2, rows, cols)
    reliable = F.avg_pool2d(masks.float(), factor)[:, 0] > 0.5  # (F-1, rows, cols)
    ys, xs = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    target_x, target_y = (xs + flow[:, 0]).round().long(), (ys + flow[:, 1]).round().long()
    inside = (target_x >= 0) & (target_x < cols) & (target_y >= 0) & (target_y < rows)
    index = torch.where(reliable & inside, target_y * cols + target_x, -1)
    links[1:] = index.flatten(1)
    return links


def trajectory_indices(links, frame_ids):
    """Per pair of a batch's frames, the token each token's flow trajectory passes through.

    links (F_clip, N) from ``token_links``; frame_ids: the B clip indices of the batch -> (B, B, N)
    long: [f, g, p] = the token of frame g on the trajectory of token p of frame f, -1 where the
    trajectory is broken (occluded, unreliable or outside) and on the diagonal. Backward along the
    links where g is earlier; forward through their inverse (of several tokens, the highest index).
    """
    count, tokens = len(frame_ids), links.shape[1]
    result = torch.full((count, count, tokens), -1, dtype=torch.long)
    everyone = torch.arange(tokens)
    for f, later in enumerate(frame_ids):
        for g, earlier in enumerate(frame_ids):
            if earlier >= later:
                continue
            index = everyone.clone()  # token p of frame `later`, followed back to frame `earlier`
            for frame in range(later, earlier, -1):
                index = torch.where(index >= 0, links[frame][index.clamp(min=0)], -1)
            result[f, g] = index
            found = index >= 0
            inverse = torch.full((tokens,), -1, dtype=torch.long)
            result[g, f] = inverse.scatter_reduce(0, index[found], everyone[found], "amax")
    return result
