"""The toy model's diffusion training pieces: SD's noise schedule applied to VAE latents, the
training timesteps, and the Min-SNR-weighted loss, for epsilon or v prediction (SD 2.1-base
predicts epsilon, SD 2.1 at 768 px v)."""
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from loading import builtin

MIN_SNR_GAMMA = 5.0  # Min-SNR loss weighting (Hang et al. 2023): faster convergence at small budgets
NOISE_OFFSET = 0.1  # offset noise (diffusers' --noise_offset): SD's schedule leaves brightness in its last step's noise
PREDICTIONS = ("epsilon", "v_prediction")


def diffusion_loss(model_output, target, timesteps, scheduler):
    """MSE with Min-SNR-gamma weights, as the scheduler's prediction type needs them: w = min(SNR, gamma)
    / SNR for epsilon, / (SNR + 1) for v (Hang et al. 2023, Sec. 3.4). model_output, target (B, C, h, w)."""
    alpha_bar = scheduler.alphas_cumprod.to(timesteps.device)[timesteps]
    snr = alpha_bar / (1 - alpha_bar)
    weight = torch.clamp(snr, max=MIN_SNR_GAMMA) / (snr + (scheduler.config.prediction_type == "v_prediction"))
    return (weight * F.mse_loss(model_output, target, reduction="none").mean(dim=(1, 2, 3))).mean()


def draw_timesteps(count, total, kind="uniform"):
    """Training timesteps (count,) in [0, total): uniform, or cubic, t = (1 - u^3) total with u
    uniform, T2I-Adapter's sampling for a control branch (Mou et al. 2023, sec. 3.4; diffusers'
    train_t2i_adapter_sdxl.py): most draws at high noise, where the picture's layout is decided."""
    if kind == "uniform":
        return torch.randint(0, total, (count,))
    return ((1 - torch.rand(count) ** 3) * total).long().clamp(0, total - 1)


class Noiser:
    """Pictures -> (noisy latents, target, timesteps), through the trained VAE and SD's schedule;
    timesteps drawn as draw_timesteps' ``kind``; ``offset`` > 0 adds offset noise (diffusers'
    --noise_offset: that times a normal per picture and channel), so that the model cannot take a
    picture's brightness from the noise that SD's schedule leaves at its last step (docs/toy_world.md);
    the target is the noise (``prediction`` "epsilon") or the velocity ("v_prediction")."""

    def __init__(self, vae, timesteps="uniform", offset=0.0, prediction="epsilon"):
        self.vae, self.scaling, self.timesteps, self.offset = vae, vae.config.scaling_factor, timesteps, offset
        schedule = {k: v for k, v in builtin.SD_SCHEDULE.items() if k != "set_alpha_to_one"}
        self.scheduler = DDPMScheduler(**schedule, prediction_type=prediction)

    def __call__(self, images):
        with torch.no_grad():
            latents = self.vae.encode(images).latent_dist.sample() * self.scaling
        noise = torch.randn_like(latents)
        if self.offset:
            noise = noise + self.offset * torch.randn_like(latents[:, :, :1, :1])
        timesteps = draw_timesteps(len(latents), self.scheduler.config.num_train_timesteps, self.timesteps)
        timesteps = timesteps.to(latents.device)  # drawn on the CPU: the same draws on every device
        # z_t = sqrt(abar_t) z_0 + sqrt(1 - abar_t) eps
        noisy = self.scheduler.add_noise(latents, noise, timesteps)
        if self.scheduler.config.prediction_type == "epsilon":
            return noisy, noise, timesteps
        # v = sqrt(abar_t) eps - sqrt(1 - abar_t) z_0
        return noisy, self.scheduler.get_velocity(latents, noise, timesteps), timesteps
