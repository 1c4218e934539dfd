"""The denoising loop: every frame of a clip through ControlNet + UNet, step by step, in chunks.

``denoise(pipe, pose_maps, config, techniques)`` returns the clean latents of all frames;
``decode(pipe, latents, batch_size)`` yields the frames as uint8 images. The loop runs all
frames at each step (frames-inner), so a technique sees every frame's latent at every step and
plugs in through the hooks of ``Technique`` without touching the loop. Per frame and step it
computes exactly what diffusers' StableDiffusionControlNetPipeline computes for that frame alone.
"""
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from noise import NOISE


@dataclass
class GenerationConfig:
    """Everything the loop needs besides models and poses; names follow the CLI flags."""

    prompt: str
    negative_prompt: str = ""
    steps: int = 20
    guidance: float = 7.5
    controlnet_scale: float = 1.0
    control_start: float = 0.0
    control_end: float = 1.0
    seed: int = 0
    noise: str = "independent"
    noise_settings: dict = field(default_factory=dict)
    batch_size: int = 4
    eta: float = 0.0


@dataclass
class LoopStats:
    """What the loop did: UNet and ControlNet evaluations (one per frame per CFG branch)."""

    unet_evals: int = 0
    controlnet_evals: int = 0


class Technique:
    """A temporal-consistency technique: hooks the loop calls with and for plain tensors.

    Each hook receives the latents of all frames, (F, 4, H/8, W/8), and returns them, changed or
    not. The base class changes nothing; a technique overrides what it needs.
    """

    def initial_latents(self, latents):
        """Called once after the noise is drawn (and scaled by the scheduler's init sigma)."""
        return latents

    def before_step(self, step, t, latents):
        """Called before step ``step`` (timestep ``t``) predicts noise."""
        return latents

    def after_step(self, step, t, latents):
        """Called after the scheduler's step ``step`` produced the latents for the next one."""
        return latents


def control_scales(num_steps, scale, start, end):
    """ControlNet scale per step: ``scale`` inside [start, end] of the schedule, else 0 (as diffusers)."""
    return [scale * (1.0 - float(i / num_steps < start or (i + 1) / num_steps > end)) for i in range(num_steps)]


def pose_maps_to_control(pose_maps, device, dtype):
    """(B, H, W, 3) uint8 pose maps -> (B, 3, H, W) in [0, 1], as diffusers' control preprocessing."""
    control = torch.from_numpy(np.ascontiguousarray(pose_maps)).permute(0, 3, 1, 2).float() / 255.0
    return control.to(device=device, dtype=dtype)


def predict_noise(pipe, latents, control, t, text_embeds, cond_scale, guidance, stats):
    """Guided noise prediction for one chunk; latents (B, 4, h, w), control (B, 3, H, W).

    text_embeds is (2, L, D) as [negative, positive] with guidance, else (1, L, D).
    eps = eps_uncond + guidance * (eps_text - eps_uncond)   (classifier-free guidance)
    """
    batch = latents.shape[0]
    do_cfg = text_embeds.shape[0] == 2
    if do_cfg:
        latents, control = torch.cat([latents] * 2), torch.cat([control] * 2)
    embeds = text_embeds.repeat_interleave(batch, dim=0)  # (2B or B, L, D): [neg]*B + [pos]*B
    model_input = pipe.scheduler.scale_model_input(latents, t)
    residuals = {}
    if cond_scale > 0:  # outside the control window ControlNet adds zeros: skip it
        down, mid = pipe.controlnet(model_input, t, encoder_hidden_states=embeds, controlnet_cond=control,
                                    conditioning_scale=cond_scale, return_dict=False)
        residuals = dict(down_block_additional_residuals=down, mid_block_additional_residual=mid)
        stats.controlnet_evals += model_input.shape[0]
    noise_pred = pipe.unet(model_input, t, encoder_hidden_states=embeds, return_dict=False, **residuals)[0]
    stats.unet_evals += model_input.shape[0]
    if do_cfg:
        noise_uncond, noise_text = noise_pred.chunk(2)
        noise_pred = noise_uncond + guidance * (noise_text - noise_uncond)
    return noise_pred


@torch.no_grad()
def denoise(pipe, pose_maps, config, techniques=(), progress=True):
    """Denoise a clip; pose_maps: (F, H, W, 3) uint8 -> (clean latents (F, 4, H/8, W/8), LoopStats)."""
    device, dtype = pipe.unet.device, pipe.unet.dtype
    num_frames, height, width = pose_maps.shape[:3]
    stats = LoopStats()

    # 1. encode prompt (once for the clip); guidance <= 1 means no negative branch, as in diffusers
    do_cfg = config.guidance > 1
    positive, negative = pipe.encode_prompt(config.prompt, device, 1, do_cfg, config.negative_prompt or None)
    text_embeds = torch.cat([negative, positive]) if do_cfg else positive

    # 2. schedule: timesteps and the ControlNet scale of each step
    pipe.scheduler.set_timesteps(config.steps, device=device)
    timesteps = pipe.scheduler.timesteps
    cond_scales = control_scales(len(timesteps), config.controlnet_scale, config.control_start, config.control_end)

    # 3. initial latents: frame i's generator is seeded seed + i, as a per-frame diffusers call
    generators = [torch.Generator("cpu").manual_seed(config.seed + i) for i in range(num_frames)]
    shape = (pipe.unet.config.in_channels, height // pipe.vae_scale_factor, width // pipe.vae_scale_factor)
    latents = NOISE[config.noise](generators, shape, **config.noise_settings).to(device=device, dtype=dtype)
    latents = latents * pipe.scheduler.init_noise_sigma
    for technique in techniques:
        latents = technique.initial_latents(latents)
    step_kwargs = pipe.prepare_extra_step_kwargs(generators, config.eta)

    # 4. denoise: every frame at every step, in chunks of batch_size frames
    chunks = [slice(s, s + config.batch_size) for s in range(0, num_frames, config.batch_size)]
    for i, t in enumerate(tqdm(timesteps, desc="denoising", unit="step", disable=not progress)):
        for technique in techniques:
            latents = technique.before_step(i, t, latents)
        noise_pred = torch.cat([
            predict_noise(pipe, latents[chunk], pose_maps_to_control(pose_maps[chunk], device, dtype),
                          t, text_embeds, cond_scales[i], config.guidance, stats)
            for chunk in chunks
        ])
        latents = pipe.scheduler.step(noise_pred, t, latents, **step_kwargs, return_dict=False)[0]
        for technique in techniques:
            latents = technique.after_step(i, t, latents)
    return latents, stats


@torch.no_grad()
def decode(pipe, latents, batch_size, progress=True):
    """VAE-decode latents (F, 4, h, w) in chunks; yields (H, W, 3) uint8 frames in order."""
    with tqdm(total=len(latents), desc="decoding", unit="frame", disable=not progress) as bar:
        for start in range(0, len(latents), batch_size):
            chunk = latents[start:start + batch_size]
            images = pipe.vae.decode(chunk / pipe.vae.config.scaling_factor, return_dict=False)[0]
            images = pipe.image_processor.postprocess(images, output_type="np")  # (B, H, W, 3) in [0, 1]
            for image in images:
                yield (image * 255).round().astype(np.uint8)
                bar.update()
