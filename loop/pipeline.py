"""The denoising loop: every frame of a clip through ControlNet + UNet, step by step, in chunks.

``denoise(pipe, pose_maps, config, techniques)`` returns the clean latents of all frames;
``decode(pipe, latents, batch_size)`` yields the frames as uint8 images. The loop runs all
frames at each step (frames-inner), so a technique sees every frame's latent at every step and
plugs in through the hooks of ``Technique`` without touching the loop. Per frame and step it
computes exactly what diffusers' StableDiffusionControlNetPipeline computes for that frame alone.
"""
import logging
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

import latent_ops
from loop.predict import Batcher, pose_maps_to_control
from noise import NOISE

log = logging.getLogger(__name__)


@dataclass
class GenerationConfig:
    """Everything the loop needs besides models and poses; names follow the CLI flags."""

    prompt: str
    negative_prompt: str = ""
    steps: int = 20
    guidance: float = 7.5
    controlnet_scale: float | list = 1.0  # a list: one per ControlNet (extra controls)
    control_start: float = 0.0
    control_end: float = 1.0
    seed: int = 0
    noise: str = "independent"
    noise_settings: dict = field(default_factory=dict)
    batch_size: int = 4  # 0: auto (start with every frame on a GPU, halve on out-of-memory)
    eta: float = 0.0


@dataclass
class LoopStats:
    """What the loop did: UNet and ControlNet evaluations (one per frame per CFG branch), full ones
    and DeepCache's shallow ones (its shallow branch only) apart."""

    unet_evals: int = 0
    controlnet_evals: int = 0
    unet_shallow_evals: int = 0
    controlnet_shallow_evals: int = 0

    def count(self, model, evaluations, shallow=False):
        """Add ``evaluations`` of ``model`` ("unet" or "controlnet")."""
        name = f"{model}_shallow_evals" if shallow else f"{model}_evals"
        setattr(self, name, getattr(self, name) + evaluations)


@dataclass
class PassInfo:
    """What a technique learns at the start of a pass over (a subset of) the clip's frames."""

    frame_ids: list  # clip index of each frame of the pass, in pass order
    timesteps: torch.Tensor
    scheduler: object
    noise: torch.Tensor  # (F_pass, C, h, w): the pass's initial noise before the scheduler's scaling
    prediction_type: str = "epsilon"

    def alpha_bar(self, step):
        """Cumulative alpha of the latents entering ``step``; after the last step, the final alpha."""
        if step >= len(self.timesteps):
            return float(getattr(self.scheduler, "final_alpha_cumprod", self.scheduler.alphas_cumprod[0]))
        return float(self.scheduler.alphas_cumprod[int(self.timesteps[step])])

    def signal_scale(self, step):
        """How much a clean-latent change moves the latents entering ``step``.

        sqrt(alpha_bar) for variance-preserving schedulers (z = sqrt(abar) x0 + sqrt(1-abar) eps);
        1 for sigma-space ones (Euler: z = x0 + sigma eps, init_noise_sigma > 1).
        """
        if float(self.scheduler.init_noise_sigma) > 1.0:
            return 1.0
        return self.alpha_bar(step) ** 0.5


class Technique:
    """A temporal-consistency technique: hooks the loop calls with and for plain tensors.

    Latent hooks receive the latents of the pass's frames, (F, 4, H/8, W/8), and return them,
    changed or not. The base class changes nothing; a technique overrides what it needs.
    """

    sets_start = False  # True for a technique that chooses the frames' starting latents (SDEdit-like)

    def setup(self, info):
        """Called once at the start of a pass with its PassInfo."""

    def first_steps(self):
        """Per frame of the pass, the first step it is computed at (it is skipped before), or None."""
        return None

    def initial_latents(self, latents):
        """Called once after the noise is drawn (and scaled by the scheduler's init sigma)."""
        return latents

    def plan_batch(self, chunk, active):
        """Frames (pass indices) a chunk's model call needs, ending with ``chunk``, and attention
        kwargs for them; None keeps the chunk as it is. At most one technique of a run plans
        (batches or grids)."""
        return None

    def plan_grids(self, step, computed):
        """(groups, K): the computed frames (pass indices) in groups of K*K, each group tiled into one
        grid picture per model input (RAVE); a frame may appear twice (its first result counts).
        None: a frame per input."""
        return None

    def plan_evaluations(self, step, computed):
        """How step ``step`` evaluates the computed frames (pass indices): [(frames, make_models)], run
        in that order, ``make_models(pipe, batch, chunk)`` giving each call's predict.Models (DeepCache: full
        evaluations that keep deep features, then shallow ones that reuse them). None: every frame in
        full. At most one technique of a run does this."""
        return None

    def before_step(self, step, t, latents, active):
        """Called before step ``step`` (timestep ``t``) predicts noise. ``active``, here and in every
        hook: (F,) bool, the frames computed at this step."""
        return latents

    def after_step(self, step, t, latents, x0_pred, active):
        """Called after the scheduler's step; x0_pred: the clean-latent estimate of this step
        (zero for frames not computed)."""
        return latents

    def attach(self, pipe):
        """Called before the first pass, to install what the technique needs in the models."""

    def detach(self, pipe):
        """Called after the last pass (also on errors), to undo ``attach``."""


def batch_planner(techniques):
    """The one technique that plans the model's batches or grids (overrides plan_batch or
    plan_grids), or None; two are a ValueError: their plans would not compose."""
    planners = [t for t in techniques if type(t).plan_batch is not Technique.plan_batch
                or type(t).plan_grids is not Technique.plan_grids]
    if len(planners) > 1:
        names = " and ".join(getattr(t, "name", type(t).__name__) for t in planners)
        raise ValueError(f"{names} both plan the model's batch")
    return planners[0] if planners else None


def evaluation_planner(techniques, planner):
    """The one technique that plans the step's evaluations (overrides plan_evaluations), or None; a
    ValueError beside another such technique or a grid planner (a grid picture's features are not
    one frame's)."""
    found = [t for t in techniques if type(t).plan_evaluations is not Technique.plan_evaluations]
    if len(found) > 1 or (found and planner is not None and type(planner).plan_grids is not Technique.plan_grids):
        names = " and ".join(getattr(t, "name", type(t).__name__) for t in (*found, planner) if t is not None)
        raise ValueError(f"{names} cannot share a run: each decides how a step's frames are evaluated")
    return found[0] if found else None


def control_scales(num_steps, scale, start, end):
    """ControlNet scale per step: ``scale`` (a float, or a list with one per ControlNet) inside
    [start, end] of the schedule, else 0 (as diffusers)."""
    inside = [1.0 - float(i / num_steps < start or (i + 1) / num_steps > end) for i in range(num_steps)]
    if isinstance(scale, (list, tuple)):
        return [[s * on for s in scale] for on in inside]
    return [scale * on for on in inside]


def latent_shape(pipe, height, width):
    """(C, H/8, W/8) of a frame's latent."""
    return (pipe.unet.config.in_channels, height // pipe.vae_scale_factor, width // pipe.vae_scale_factor)


def frame_generators(seed, frame_ids):
    """Frame i's CPU generator is seeded seed + i, as a per-frame diffusers call with that seed."""
    return [torch.Generator("cpu").manual_seed(seed + i) for i in frame_ids]


@torch.no_grad()
def encode_prompt(pipe, config):
    """(2, L, D) [negative, positive] text embeddings with guidance, else (1, L, D); guidance <= 1
    means no negative branch, as in diffusers."""
    do_cfg = config.guidance > 1
    positive, negative = pipe.encode_prompt(config.prompt, pipe._execution_device, 1, do_cfg,
                                            config.negative_prompt or None)
    return torch.cat([negative, positive]) if do_cfg else positive


def step_x0(output, noise_pred, latents, alpha_bar, prediction_type):
    """A scheduler step's clean estimate (F, 4, h, w) of the frames it stepped: DDIM's and Euler's
    ``pred_original_sample``, LCM's ``denoised`` (its boundary-condition mix of x0 and z_t); the
    multistep solvers (DPM++, UniPC) and TCD give none, so it is computed from the model output."""
    for name in ("pred_original_sample", "denoised"):
        x0 = getattr(output, name, None)
        if x0 is not None:
            return x0
    return latent_ops.predicted_x0(noise_pred, latents, alpha_bar, prediction_type)


@torch.no_grad()
def denoise(pipe, pose_maps, config, techniques=(), frame_ids=None, noise=None, generators=None,
            progress=True, stats=None, text_embeds=None):
    """Denoise a pass over frames; pose_maps: (F, H, W, 3) uint8 -> (clean latents (F, 4, H/8, W/8), LoopStats).

    frame_ids are the frames' clip indices (default 0..F-1); noise (F, 4, H/8, W/8), generators
    and text_embeds (encode_prompt) are made from config when not given (a multi-pass driver makes
    them once for the clip).
    """
    device, dtype = pipe._execution_device, pipe.unet.dtype  # the GPU also under --offload
    num_frames, height, width = pose_maps.shape[:3]
    frame_ids = list(range(num_frames)) if frame_ids is None else list(frame_ids)
    stats = LoopStats() if stats is None else stats
    planner = batch_planner(techniques)
    batcher = Batcher(pipe, pose_maps, frame_ids, config, stats, planner, evaluation_planner(techniques, planner))

    # 1. encode prompt (once for the clip)
    if text_embeds is None:
        text_embeds = encode_prompt(pipe, config)

    # 2. schedule: timesteps and the ControlNet scale of each step
    pipe.scheduler.set_timesteps(config.steps, device=device)
    timesteps = pipe.scheduler.timesteps
    cond_scales = control_scales(len(timesteps), config.controlnet_scale, config.control_start, config.control_end)

    # 3. initial latents, and the step each frame starts at (techniques may skip early steps)
    if generators is None:
        generators = frame_generators(config.seed, frame_ids)
    if noise is None:
        noise = NOISE[config.noise](generators, latent_shape(pipe, height, width), dtype, **config.noise_settings)
    noise = noise.to(device=device, dtype=dtype)
    latents = noise * pipe.scheduler.init_noise_sigma
    info = PassInfo(frame_ids, timesteps, pipe.scheduler, noise, pipe.scheduler.config.get("prediction_type", "epsilon"))
    for technique in techniques:
        technique.setup(info)
    starts = [0] * num_frames
    for technique in techniques:
        starts = [max(a, b) for a, b in zip(starts, technique.first_steps() or starts)]
    for technique in techniques:
        latents = technique.initial_latents(latents)

    # 4. denoise: the frames computed at a step (started ones) through the hooks and the scheduler
    for i, t in enumerate(tqdm(timesteps, desc="denoising", unit="step", disable=not progress)):
        computed = [j for j in range(num_frames) if starts[j] <= i]
        if not computed:
            continue
        index = torch.tensor(computed, device=device)
        active = torch.zeros(num_frames, dtype=torch.bool, device=device).index_fill(0, index, True)
        for technique in techniques:
            latents = technique.before_step(i, t, latents, active)
        noise_pred = batcher.predict(latents, computed, active, i, t, text_embeds, cond_scales[i])
        step_kwargs = pipe.prepare_extra_step_kwargs([generators[j] for j in computed], config.eta)
        output = pipe.scheduler.step(noise_pred, t, latents[index], **step_kwargs)
        x0_computed = step_x0(output, noise_pred, latents[index], info.alpha_bar(i), info.prediction_type)
        latents = latents.index_copy(0, index, output.prev_sample.to(dtype))
        x0_pred = torch.zeros_like(latents).index_copy(0, index, x0_computed.to(dtype))
        for technique in techniques:
            latents = technique.after_step(i, t, latents, x0_pred, active)
    return latents, stats


@torch.no_grad()
def encode(pipe, frames, batch_size):
    """VAE latents of RGB frames, in chunks; frames (F, H, W, 3) uint8 -> (F, 4, H/8, W/8) scaled.

    The distribution's mean (not a sample) so the result is deterministic: E(v) = scale * mu(v).
    """
    device, dtype = pipe._execution_device, pipe.vae.dtype
    latents = []
    for start in range(0, len(frames), batch_size):
        images = pose_maps_to_control(frames[start:start + batch_size], device, dtype) * 2 - 1
        encoded = pipe.vae.encode(images)
        # AutoencoderTiny (--vae tiny) encodes to latents directly, AutoencoderKL to a distribution
        mean = encoded.latents if hasattr(encoded, "latents") else encoded.latent_dist.mean
        latents.append(mean * pipe.vae.config.scaling_factor)
    return torch.cat(latents)


def generate(pipe, pose_maps, config, techniques=(), driver=None, progress=True):
    """The clip's clean latents -> ((F, 4, h, w), LoopStats): one pass over every frame, or the
    passes a driver plans (keyframes.KeyframePlan). Noise, generators and the prompt's embeddings
    are made once for the clip."""
    num_frames, height, width = pose_maps.shape[:3]
    generators = frame_generators(config.seed, range(num_frames))
    noise = NOISE[config.noise](generators, latent_shape(pipe, height, width), pipe.unet.dtype,
                                **config.noise_settings)
    stats = LoopStats()
    text_embeds = encode_prompt(pipe, config)

    def run_pass(ids, pass_techniques):
        ids = list(ids)
        latents, _ = denoise(pipe, pose_maps[ids], config, pass_techniques, frame_ids=ids, noise=noise[ids],
                             generators=[generators[i] for i in ids], progress=progress, stats=stats,
                             text_embeds=text_embeds)
        return latents

    for technique in techniques:
        technique.attach(pipe)
    try:
        if driver is None:
            return run_pass(range(num_frames), techniques), stats
        return driver.run(run_pass, num_frames, techniques), stats
    finally:
        for technique in techniques:
            technique.detach(pipe)


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
