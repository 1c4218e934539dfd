"""DDIM inversion of the source clip: each frame's clean latent run up the schedule to the step
where denoising starts, so that generation starts from latents that carry the source's layout and
motion (RAVE, FLATTEN, VidToMe and TokenFlow start there).

``inversion_schedule(scheduler, steps, inversion_steps, strength)`` gives the timesteps to climb and
their noise levels; ``invert(pipe, clean_latents, control_maps, text_embeds, schedule, ...)`` climbs
them with ``latent_ops.ddim_inverse_step``, without guidance (as RAVE and VidToMe invert), through
the loop's own Batcher, so the ControlNet (when asked for) and the batching are the loop's.
"""
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

import latent_ops
from loop.pipeline import GenerationConfig
from loop.predict import Batcher


def start_step(num_steps, strength):
    """The denoising step where a start at ``strength`` begins (num_steps: nothing is run)."""
    return num_steps - min(int(round(num_steps * strength)), num_steps)


@dataclass
class InversionSchedule:
    """The timesteps inversion climbs, ascending, and the noise level of each latent on the way:
    alpha_bars[k] before step k, alpha_bars[k + 1] after it (alpha_bars[0]: the clean latent)."""

    timesteps: list
    alpha_bars: list


def inversion_schedule(scheduler, steps, inversion_steps, strength):
    """Climb to the timestep where denoising (``steps`` of ``scheduler``, a DDIM one) starts at
    ``strength``, in the timesteps of an ``inversion_steps`` schedule below it. With
    inversion_steps == steps these are the denoising steps reversed, as diffusers'
    DDIMInverseScheduler takes them; the clean latent sits at DDIM's final alpha."""
    denoising = _timesteps(scheduler, steps)
    start = start_step(steps, strength)
    if start >= steps:
        return InversionSchedule([], [float(scheduler.final_alpha_cumprod)])
    target = denoising[start]
    climb = [t for t in reversed(_timesteps(scheduler, inversion_steps)) if t < target] + [target]
    alpha_bars = [float(scheduler.final_alpha_cumprod)] + [float(scheduler.alphas_cumprod[t]) for t in climb]
    return InversionSchedule(climb, alpha_bars)


def _timesteps(scheduler, steps):
    """A DDIM schedule's timesteps for ``steps`` (descending), without changing ``scheduler``."""
    copy = type(scheduler).from_config(scheduler.config)
    copy.set_timesteps(steps)
    return [int(t) for t in copy.timesteps]


@torch.no_grad()
def invert(pipe, clean_latents, control_maps, text_embeds, schedule, cond_scale, batch_size, stats, progress=True):
    """The clean latents (F, 4, h, w) run up ``schedule`` -> (F, 4, h, w) float32 at its last timestep.

    control_maps (F, H, W, 3 K) feed the ControlNet at ``cond_scale`` (0: not run); text_embeds
    (1, L, D), the source prompt's, no guidance. Evaluations are counted in ``stats``.
    """
    device, dtype = pipe._execution_device, pipe.unet.dtype
    frames = list(range(len(clean_latents)))
    batcher = Batcher(pipe, control_maps, frames, GenerationConfig(prompt="", guidance=1.0, batch_size=batch_size),
                      stats)
    active = torch.ones(len(frames), dtype=torch.bool, device=device)
    prediction_type = pipe.scheduler.config.get("prediction_type", "epsilon")
    latents = clean_latents.to(device=device, dtype=torch.float32)  # the update in float32, the model in its dtype
    for k, t in enumerate(tqdm(schedule.timesteps, desc="inverting", unit="step", disable=not progress)):
        timestep = torch.tensor(t, device=device)
        model_output = batcher.predict(latents.to(dtype), frames, active, k, timestep, text_embeds, cond_scale)
        latents = latent_ops.ddim_inverse_step(model_output.float(), latents, schedule.alpha_bars[k],
                                               schedule.alpha_bars[k + 1], prediction_type)
    return latents
