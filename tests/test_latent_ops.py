"""latent_ops against formulas and diffusers' schedulers."""
import math

import torch
from diffusers import DDIMScheduler

import latent_ops
from conftest import assert_tensors_close
from loading.builtin import SD_SCHEDULE


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_blend_weight_zero_is_a_no_op_and_one_is_the_reference():
    latents, reference = randn(3, 4, 8, 8), randn(4, 8, 8, seed=1)
    assert torch.equal(latent_ops.blend(latents, reference, 0.0), latents)
    assert torch.allclose(latent_ops.blend(latents, reference, 1.0), reference.expand_as(latents))


def test_injection_is_exact_for_a_ddim_schedule_with_shared_noise():
    scheduler = DDIMScheduler(**SD_SCHEDULE)
    scheduler.set_timesteps(10)
    x0 = randn(3, 4, 8, 8, seed=2)
    eps = randn(1, 4, 8, 8, seed=3).expand(3, -1, -1, -1)  # one noise for all frames
    for t in scheduler.timesteps:
        noisy = scheduler.add_noise(x0, eps, t.repeat(3))  # the true z_t of each frame
        signal = math.sqrt(float(scheduler.alphas_cumprod[t]))
        start = randn(3, 4, 8, 8, seed=4)  # anything: lambda = 1 replaces it entirely
        injected = latent_ops.inject_differences(start, noisy[0], x0 - x0[0], 1.0, signal)
        assert torch.allclose(injected, noisy, atol=1e-5)
        # and a DDIM step with the true noise keeps the relation at the next timestep
        stepped = scheduler.step(eps, t, noisy).prev_sample
        previous = int(t) - scheduler.config.num_train_timesteps // 10
        alpha_prev = scheduler.alphas_cumprod[previous] if previous >= 0 else scheduler.final_alpha_cumprod
        assert torch.allclose(stepped - stepped[0], math.sqrt(float(alpha_prev)) * (x0 - x0[0]), atol=1e-5)


def test_injection_strength_zero_is_a_no_op():
    latents = randn(3, 4, 8, 8)
    assert torch.equal(latent_ops.inject_differences(latents, latents[0], randn(3, 4, 8, 8, seed=1), 0.0, 0.7), latents)


def test_predicted_x0_inverts_the_forward_process():
    x0, eps = randn(2, 4, 8, 8), randn(2, 4, 8, 8, seed=1)
    abar = torch.tensor(0.3)
    z = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
    v = abar.sqrt() * eps - (1 - abar).sqrt() * x0
    assert torch.allclose(latent_ops.predicted_x0(eps, z, abar, "epsilon"), x0, atol=1e-5)
    assert torch.allclose(latent_ops.predicted_x0(v, z, abar, "v_prediction"), x0, atol=1e-5)


def test_channel_stats_are_the_per_channel_moments_over_frames_and_space():
    latents = randn(3, 4, 8, 8) * torch.arange(1.0, 5.0)[None, :, None, None] + 2
    mean, std = latent_ops.channel_stats(latents)
    flat = latents.transpose(0, 1).reshape(4, -1)
    assert mean.shape == (4, 1, 1) and torch.allclose(mean[:, 0, 0], flat.mean(1)) and torch.allclose(std[:, 0, 0], flat.std(1))


def test_warp_with_zero_flow_is_identity_and_a_shift_moves_content():
    latents = randn(2, 4, 8, 8)
    assert torch.allclose(latent_ops.warp(latents, torch.zeros(2, 8, 8, 2)), latents, atol=1e-6)
    flow = torch.zeros(2, 8, 8, 2)
    flow[..., 0] = 1.0  # each pixel comes from one pixel to its right
    shifted = latent_ops.warp(latents, flow)
    assert torch.allclose(shifted[..., :, :-1], latents[..., :, 1:], atol=1e-6)


def test_affine_warp_identity_and_translation():
    latents = randn(1, 4, 8, 8)
    identity = torch.tensor([[[1.0, 0, 0], [0, 1.0, 0]]])
    assert torch.allclose(latent_ops.affine_warp(latents, identity), latents, atol=1e-6)
    down = torch.tensor([[[1.0, 0, 0], [0, 1.0, 2.0]]])  # dst = src + (0, 2)
    moved = latent_ops.affine_warp(latents, down)
    assert torch.allclose(moved[..., 2:, :], latents[..., :-2, :], atol=1e-6) and moved[..., :2, :].abs().max() < 1e-5


def test_fuse_warped_respects_mask_and_weight():
    x0, warped = randn(2, 4, 8, 8), randn(2, 4, 8, 8, seed=1)
    mask = torch.zeros(2, 1, 8, 8)
    mask[..., :4, :] = 1
    fused = latent_ops.fuse_warped(x0, warped, mask, 1.0)
    assert torch.equal(fused[..., 4:, :], x0[..., 4:, :]) and torch.allclose(fused[..., :4, :], warped[..., :4, :], atol=1e-6)
    assert torch.equal(latent_ops.fuse_warped(x0, warped, mask, 0.0), x0)


def test_pose_alignment_warps_differences_by_the_similarity():
    differences = torch.zeros(1, 4, 8, 8)
    differences[..., 2, 2] = 1.0
    shift = torch.tensor([[[1.0, 0, 3.0], [0, 1.0, 1.0]]])
    aligned = latent_ops.align_differences(differences, "pose", matrices=shift)
    assert torch.allclose(aligned[..., 3, 5], torch.ones(4), atol=1e-6)
    source_reference = torch.randn(4, 8, 8, generator=torch.Generator().manual_seed(0))
    target_reference = 3 * torch.randn(4, 8, 8, generator=torch.Generator().manual_seed(1)) + 5
    scaled = latent_ops.align_differences(differences, "stats", source_reference, target_reference)
    ratio = target_reference.flatten(1).std(1) / source_reference.flatten(1).std(1)  # the mean cancels in a difference
    assert_tensors_close(scaled[0, :, 2, 2], ratio, rtol=1e-3)
    assert_tensors_close(latent_ops.align_differences(differences, "none"), differences)
