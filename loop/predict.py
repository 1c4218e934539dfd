"""A step's model calls: frames in batches through ControlNet + UNet with classifier-free guidance.

``Batcher(pipe, pose_maps, frame_ids, config, stats, planner).predict(...)`` is what the loop
(pipeline.denoise) calls once per step. It chunks the computed frames (``--batch-size``, halved on
out-of-memory with ``auto``), lets at most one technique plan each call's batch (cross-frame
attention brings its reference frames along) or tile the frames into grid pictures (RAVE), lets
DeepCache (loop/deep_cache.py) order the step's frames and say how each call is evaluated, and
hands each ControlNet (one per control) each frame's conditioning embedding computed once per pass
(``PassThroughEmbedding``) rather than at every step.
"""
import logging

import numpy as np
import torch

import latent_ops

log = logging.getLogger(__name__)
AUTO_BATCH_CPU = 8  # --batch-size auto on a CPU, where running out of memory cannot be caught
CONTROL_CACHE_BYTES = 512 * 2 ** 20  # ControlNet conditioning embeddings kept per pass (the rest recomputed)
IMAGE_CHANNELS = 3  # a pose map; ControlNet's conditioning embedding has more channels


def pose_maps_to_control(pose_maps, device, dtype):
    """(B, H, W, 3) uint8 pose maps -> (B, 3, H, W) in [0, 1], as diffusers' control preprocessing."""
    control = torch.from_numpy(np.ascontiguousarray(pose_maps)).permute(0, 3, 1, 2).float() / 255.0
    return control.to(device=device, dtype=dtype)


def predict_noise(pipe, latents, control, t, text_embeds, cond_scale, guidance, stats, attention_kwargs=None,
                  frames_per_input=1, models=None):
    """Guided noise prediction for one batch; latents (B, 4, h, w), control (B, 3, H, W) pose maps
    or their conditioning embeddings (B, C, h, w) (see PassThroughEmbedding), or a list of those,
    one per ControlNet, with ``cond_scale`` a list too. Model evaluations are counted in frames:
    ``frames_per_input`` per input (a grid picture holds K*K). ``models`` evaluates the call
    (default ``Models``: ControlNet and UNet in full; DeepCache's shallow evaluations are counted apart).

    text_embeds is (2, L, D) as [negative, positive] with guidance, else (1, L, D).
    eps = eps_uncond + guidance * (eps_text - eps_uncond)   (classifier-free guidance)
    """
    batch = latents.shape[0]
    do_cfg = text_embeds.shape[0] == 2
    if do_cfg:
        latents, control = torch.cat([latents] * 2), each(control, lambda c: torch.cat([c] * 2))
    embeds = text_embeds.repeat_interleave(batch, dim=0)  # (2B or B, L, D): [neg]*B + [pos]*B
    model_input = pipe.scheduler.scale_model_input(latents, t)
    models = models or Models(pipe)
    evaluations = model_input.shape[0] * frames_per_input
    residuals = None
    if max(np.atleast_1d(cond_scale)) > 0:  # outside the control window ControlNet adds zeros: skip it
        residuals = models.controlnet(model_input, t, embeds, control, cond_scale, attention_kwargs)
        stats.count("controlnet", evaluations, models.shallow)
    noise_pred = models.unet(model_input, t, embeds, residuals, attention_kwargs)
    stats.count("unet", evaluations, models.shallow)
    if do_cfg:
        noise_uncond, noise_text = noise_pred.chunk(2)
        noise_pred = noise_uncond + guidance * (noise_text - noise_uncond)
    return noise_pred


class Models:
    """One call's ControlNet and UNet evaluation in full, through the models' own forward: the plain
    run's (loop/deep_cache.py has DeepCache's). Model inputs are (R, 4, h, w), R = 2B with guidance."""

    shallow = False  # counted as a full evaluation

    def __init__(self, pipe):
        self.pipe = pipe

    def controlnet(self, model_input, t, embeds, control, cond_scale, attention_kwargs):
        """The ControlNet residuals the UNet adds, as the UNet's keyword arguments."""
        down, mid = self.pipe.controlnet(model_input, t, encoder_hidden_states=embeds, controlnet_cond=control,
                                         conditioning_scale=cond_scale, cross_attention_kwargs=attention_kwargs,
                                         return_dict=False)
        return dict(down_block_additional_residuals=down, mid_block_additional_residual=mid)

    def unet(self, model_input, t, embeds, residuals, attention_kwargs):
        """The UNet's output (R, 4, h, w); residuals: ``controlnet``'s, or None outside the control window."""
        return self.pipe.unet(model_input, t, encoder_hidden_states=embeds, cross_attention_kwargs=attention_kwargs,
                              return_dict=False, **(residuals or {}))[0]


def each(control, function):
    """``function`` applied to a control tensor, or to each of a list of them (several ControlNets)."""
    return [function(c) for c in control] if isinstance(control, list) else function(control)


class PassThroughEmbedding(torch.nn.Module):
    """Stands in for ``controlnet.controlnet_cond_embedding`` (pose map -> (C, H/8, W/8) features) so
    that the loop can hand the ControlNet embeddings it computed once per frame and pass, instead of
    the map at every step and guidance branch. The embedding depends on the pose map alone (not on
    the step, the latent or the prompt), so reusing it changes no number. A 3-channel input (a pose
    map, as diffusers' own pipeline passes) is embedded as usual; anything else is an embedding
    already and passes through. ``budget``: bytes of embeddings a pass keeps (the rest recomputed)."""

    def __init__(self, inner, budget=CONTROL_CACHE_BYTES):
        super().__init__()
        self.inner, self.budget = inner, budget

    def forward(self, cond):
        return self.inner(cond) if cond.shape[1] == IMAGE_CHANNELS else cond


class ControlEmbeddings:
    """One pass's ControlNet conditioning embeddings, computed once per frame, kept up to a budget."""

    def __init__(self, module):
        self.module, self.kept, self.used = module, {}, 0

    def __call__(self, frame_ids, control):
        """Embeddings (B, C, h, w) of the B frames ``frame_ids`` whose maps are ``control`` (B, 3, H, W)."""
        missing = [k for k, frame in enumerate(frame_ids) if frame not in self.kept]
        fresh = dict(zip(missing, self.module.inner(control[missing]))) if missing else {}
        for k, embedding in fresh.items():
            size = embedding.numel() * embedding.element_size()
            if self.used + size <= self.module.budget:
                self.kept[frame_ids[k]], self.used = embedding, self.used + size
        return torch.stack([fresh[k] if k in fresh else self.kept[frame] for k, frame in enumerate(frame_ids)])


def controlnets(pipe):
    """The pipeline's ControlNet modules, in control order (several under MultiControlNetModel),
    also under torch.compile."""
    controlnet = getattr(pipe.controlnet, "_orig_mod", pipe.controlnet)
    return list(getattr(controlnet, "nets", [controlnet]))


def reuse_control_embedding(pipe, budget=CONTROL_CACHE_BYTES):
    """Install PassThroughEmbedding in each of the pipeline's ControlNets (once)."""
    for controlnet, cache in zip(controlnets(pipe), control_embedding_caches(pipe)):
        if cache is None:
            controlnet.controlnet_cond_embedding = PassThroughEmbedding(controlnet.controlnet_cond_embedding, budget)


def control_embedding_caches(pipe):
    """Per ControlNet its PassThroughEmbedding, or None where it is not installed."""
    modules = [getattr(c, "controlnet_cond_embedding", None) for c in controlnets(pipe)]
    return [m if isinstance(m, PassThroughEmbedding) else None for m in modules]


class Batcher:
    """A step's noise prediction for the computed frames, batch_size frames per model call (halved
    on out-of-memory with --batch-size auto), each call's batch planned by at most one technique and
    evaluated as the cache technique (DeepCache) says, if any; pose maps enter the ControlNet as
    embeddings computed once per frame where that is installed."""

    def __init__(self, pipe, pose_maps, frame_ids, config, stats, planner=None, cache=None):
        self.planner = planner  # the technique whose plan_batch shapes each call, or None
        self.cache = cache  # the technique whose plan_evaluations orders and evaluates each step's frames, or None
        self.pipe, self.pose_maps, self.frame_ids, self.config, self.stats = pipe, pose_maps, frame_ids, config, stats
        self.device, self.dtype = pipe._execution_device, pipe.unet.dtype
        self.auto = config.batch_size == 0
        self.size = config.batch_size or (len(pose_maps) if self.device.type == "cuda" else AUTO_BATCH_CPU)
        self.embeddings = [ControlEmbeddings(m) if m is not None else None for m in control_embedding_caches(pipe)]

    def control(self, batch):
        """The batch's ControlNet conditioning: a tensor, or a list with one per ControlNet (the
        control maps hold 3 channels per control, pose first; see controls.stack)."""
        maps = pose_maps_to_control(self.pose_maps[batch], self.device, self.dtype).split(IMAGE_CHANNELS, dim=1)
        ids = [self.frame_ids[j] for j in batch]
        conditioning = [m if e is None else e(ids, m) for e, m in zip(self.embeddings, maps)]
        return conditioning[0] if len(conditioning) == 1 else conditioning

    def predict(self, latents, computed, active, step, t, text_embeds, cond_scale):
        """Guided noise of the computed frames (len(computed), 4, h, w), in their order."""
        grids = self.planner.plan_grids(step, computed) if self.planner else None
        if grids is not None:
            return self.predict_grids(latents, computed, *grids, t, text_embeds, cond_scale)
        groups = (self.cache.plan_evaluations(step, computed) if self.cache else None) or [(computed, None)]
        found = {}
        for frames, make_models in groups:  # one after another: DeepCache's full evaluations before the shallow
            found.update(zip(frames, self.predict_frames(latents, frames, active, t, text_embeds, cond_scale,
                                                         make_models)))
        return torch.stack([found[j] for j in computed])

    def predict_frames(self, latents, frames, active, t, text_embeds, cond_scale, make_models=None):
        """Guided noise of ``frames`` in chunks of the batch size; ``make_models(pipe, batch, chunk)``
        gives the Models that evaluate a call (None: the plain ones)."""
        noise_pred, first = [], 0
        while first < len(frames):
            chunk = frames[first:first + self.size]
            batch, attention_kwargs = (self.planner.plan_batch(chunk, active) if self.planner else None) or (chunk, None)
            models = make_models(self.pipe, batch, chunk) if make_models else None
            try:
                chunk_pred = predict_noise(self.pipe, latents[batch], self.control(batch), t, text_embeds, cond_scale,
                                           self.config.guidance, self.stats, attention_kwargs, models=models)
            except torch.OutOfMemoryError:
                if not self.shrink(len(chunk)):
                    raise
                continue
            noise_pred.append(chunk_pred[len(batch) - len(chunk):])  # the chunk's frames come last
            first += len(chunk)
        return torch.cat(noise_pred)

    def predict_grids(self, latents, computed, groups, k, t, text_embeds, cond_scale):
        """The computed frames' noise through grid pictures of K*K frames (RAVE): each call tiles
        --batch-size / K^2 groups (at least one), latents and ControlNet conditioning alike."""
        found, first = {}, 0
        while first < len(groups):
            calls = groups[first:first + max(1, self.size // (k * k))]
            frames = [j for group in calls for j in group]
            try:
                grid_pred = predict_noise(self.pipe, latent_ops.tile(latents[frames], k),
                                          each(self.control(frames), lambda c: latent_ops.tile(c, k)), t, text_embeds,
                                          cond_scale,
                                          self.config.guidance, self.stats, frames_per_input=k * k)
            except torch.OutOfMemoryError:
                if len(calls) == 1 or not self.shrink(len(frames)):  # one grid is as small as it gets
                    raise
                continue
            for frame, frame_pred in zip(frames, latent_ops.untile(grid_pred, k)):
                found.setdefault(frame, frame_pred)  # a frame filling the last grid again: its first result
            first += len(calls)
        return torch.stack([found[j] for j in computed])

    def shrink(self, frames):
        """After out-of-memory on a call of ``frames`` frames: halve the batch and say so (True), or
        False where the size is fixed (--batch-size N) or one frame already."""
        if not self.auto or frames == 1:
            return False
        self.size = (frames + 1) // 2  # retry halved; later calls keep the size that fits
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        log.info("out of memory: --batch-size auto now %d frames", self.size)
        return True
