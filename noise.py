"""Initial noise for a clip: one latent per frame, drawn from per-frame generators.

Every function here has the signature ``noise_<kind>(generators, shape, dtype, **settings)``
and returns a float32 tensor of shape (F, C, H, W) with F = len(generators) and unit variance
per element. ``generators[i]`` is frame i's CPU generator (seeded ``seed + i`` by the pipeline).
Each per-frame draw is made as diffusers' ``randn_tensor`` makes it, in the model's ``dtype``
(on torch <= 2.11 a half-precision CPU draw is unrelated to the float32 draw of the same seed),
then widened to float32 for the noise maths. So ``noise_independent`` reproduces bit for bit what
diffusers draws for frame i alone, in every dtype, and ``noise_fixed`` its draw for the first
frame; the others start from those draws (docs/techniques.md). ``NOISE`` maps the CLI's
``--noise`` choices to these functions. Imports only torch.
"""
import math

import torch


def _draw(generator, shape, dtype=torch.float32):
    """One standard normal latent (C, H, W) from ``generator``: drawn on the CPU in ``dtype`` (as
    diffusers draws for a pipeline in that dtype), returned as float32."""
    return torch.randn((1, *shape), generator=generator, dtype=dtype)[0].float()


def noise_independent(generators, shape, dtype=torch.float32):
    """Independent noise per frame: frame i is drawn from generators[i]; returns (F, C, H, W)."""
    return torch.stack([_draw(g, shape, dtype) for g in generators])


def noise_fixed(generators, shape, dtype=torch.float32):
    """One noise for every frame, drawn from generators[0]; returns (F, C, H, W)."""
    return _draw(generators[0], shape, dtype).expand(len(generators), *shape).clone()


def noise_progressive(generators, shape, dtype=torch.float32, drift=0.1):
    """Variance-preserving random walk; returns (F, C, H, W).

    z_0 = e_0,  z_i = cos(d) z_{i-1} + sin(d) e_i  with e_i ~ N(0, I) from generators[i].
    Var z_i = cos^2 d + sin^2 d = 1 and corr(z_i, z_{i+k}) = cos(d)^k.
    """
    cos_d, sin_d = math.cos(drift), math.sin(drift)
    latents = [_draw(generators[0], shape, dtype)]
    for generator in generators[1:]:
        latents.append(cos_d * latents[-1] + sin_d * _draw(generator, shape, dtype))
    return torch.stack(latents)


def slerp(a, b, t):
    """Spherical interpolation; a, b: (C, H, W), t in [0, 1]; returns (C, H, W).

    slerp(a, b, t) = sin((1 - t) theta) / sin(theta) a + sin(t theta) / sin(theta) b,
    theta the angle between a and b (about pi/2 for independent high-dimensional Gaussians,
    so the result keeps unit variance all along the arc).
    """
    cos_theta = (a.flatten() @ b.flatten()) / (a.norm() * b.norm())
    theta = torch.arccos(cos_theta.clamp(-1.0, 1.0))
    if theta.abs() < 1e-4:  # nearly parallel: the arc is a line
        return (1 - t) * a + t * b
    return (torch.sin((1 - t) * theta) * a + torch.sin(t * theta) * b) / torch.sin(theta)


def noise_slerp(generators, shape, dtype=torch.float32):
    """Slerp from frame 0's noise to the last frame's noise across the clip; returns (F, C, H, W).

    The two ends are the independent noises of seeds ``seed`` and ``seed + F - 1``.
    """
    first, last = _draw(generators[0], shape, dtype), _draw(generators[-1], shape, dtype)
    num_frames = len(generators)
    ts = [i / (num_frames - 1) if num_frames > 1 else 0.0 for i in range(num_frames)]
    return torch.stack([slerp(first, last, t) for t in ts])


def gate_by_motion(latents, moving):
    """Flow-gated latents (Ground-A-Video, ICLR 2024, its optical-flow-guided smoothing); latents
    (F, C, H, W), moving (F-1, H, W) in {0, 1}, 1 where the source clip moves between frames n-1 and
    n -> (F, C, H, W).

    z_0 = x_0,  z_n = z_(n-1) + m_n (x_n - z_(n-1)): where the source is still a frame keeps its
    predecessor's latent, where it moves its own.
    """
    gated = [latents[0]]
    for own, mask in zip(latents[1:], moving):
        gated.append(torch.where(mask.bool()[None], own, gated[-1]))  # the formula, exactly
    return torch.stack(gated)


def noise_flow_gated(generators, shape, dtype=torch.float32, moving=None):
    """Flow-gated noise: ``gate_by_motion`` on each frame's independent noise; returns (F, C, H, W),
    every element still N(0, 1). (Ground-A-Video gates the DDIM inversion of its source; with
    --invert-source the loop gates that instead, loop/techniques.py.)"""
    return gate_by_motion(noise_independent(generators, shape, dtype), moving)


NOISE = {
    "independent": noise_independent,
    "fixed": noise_fixed,
    "progressive": noise_progressive,
    "slerp": noise_slerp,
    "flow-gated": noise_flow_gated,
}
