"""The temporal-consistency techniques as hook objects for the denoising loop (pipeline.py).

Each class holds its settings as fields and calls the math in latent_ops.py from the loop's
hooks; adding one never touches the loop. ``KeyframePlan`` drives the two-pass keyframe scheme,
``PRESETS`` names the combinations worth comparing, and ``save_bank``/``load_bank`` keep a
reference clip's source latents so one swing can drive any prompt and subject.
"""
import json
import math
from dataclasses import dataclass

import torch

import latent_ops
import outputs
from pipeline import Technique

PRESETS = {
    "baseline": dict(noise="independent"),
    # the original project's best: fixed noise, copying at 30 %, source latent differences after it
    "seed": dict(noise="fixed", copy_step="0.3", copy_from="anchor", diff_steps="0.3:0.7", diff_scale=1.0),
    "keyframe": dict(noise="fixed", mode="keyframe", keyframe_interval=8, residual_strength=0.5),
    # Text2Video-Zero without its motion dynamics: one noise, every frame attends to the first
    "t2v-zero": dict(noise="fixed", cross_frame_attn="anchor", anchor="first"),
}


def parse_step(spec, num_steps):
    """A step index from "k" (an integer) or "0.f" (a fraction of the schedule)."""
    value = float(spec)
    step = int(value * num_steps) if "." in str(spec) else int(value)
    if not 0 <= step < num_steps:
        raise ValueError(f"step {spec} is outside 0..{num_steps - 1}")
    return step


def parse_step_range(spec, num_steps):
    """Steps [a, b) from "a:b" (integers, or fractions of the schedule with a dot; b may be empty)."""
    first, _, last = str(spec).partition(":")
    start = parse_step(first or "0", num_steps)
    stop = num_steps if last == "" else (math.ceil(float(last) * num_steps) if "." in last else int(last))
    if not start < stop <= num_steps:
        raise ValueError(f"step range {spec} is empty or beyond {num_steps} steps")
    return range(start, stop)


def resolve_anchor(anchor, frame_ids):
    """Pass index of the anchor: "first", "middle", or the frame nearest to clip index N."""
    if anchor == "first":
        return 0
    if anchor == "middle":
        return len(frame_ids) // 2
    target = int(anchor)
    return min(range(len(frame_ids)), key=lambda j: abs(frame_ids[j] - target))


def previous_index(frame_ids):
    """Per pass frame, the pass index of the clip's previous frame (itself where absent)."""
    position = {frame: j for j, frame in enumerate(frame_ids)}
    return [position.get(frame - 1, j) for j, frame in enumerate(frame_ids)]


@dataclass
class Blend(Technique):
    """Naive blending toward a reference latent at the chosen steps (the known-bad baseline)."""

    steps: range
    weight: float
    reference: str = "anchor"  # or "previous"
    anchor: str = "first"

    def setup(self, info):
        self.anchor_index = resolve_anchor(self.anchor, info.frame_ids)
        self.previous = previous_index(info.frame_ids)

    def after_step(self, step, t, latents, x0_pred, active):
        if step not in self.steps:
            return latents
        reference = latents[self.anchor_index] if self.reference == "anchor" else latents[self.previous]
        blended = latent_ops.blend(latents, reference, self.weight)
        return torch.where(active[:, None, None, None], blended, latents)


@dataclass
class Copy(Technique):
    """Intermediate latent copying at step k; frames whose work before k is discarded are not computed."""

    step: int
    source: str = "anchor"  # "anchor": all take the anchor's; "previous": each its predecessor's
    anchor: str = "first"

    def setup(self, info):
        self.count = len(info.frame_ids)
        self.anchor_index = resolve_anchor(self.anchor, info.frame_ids)
        self.previous = previous_index(info.frame_ids)

    def first_steps(self):
        if self.source == "anchor":
            return [0 if j == self.anchor_index else self.step for j in range(self.count)]
        # with "previous", only frames that are nobody's predecessor can skip the early steps
        needed = set(self.previous)
        return [0 if j in needed else self.step for j in range(self.count)]

    def before_step(self, step, t, latents, active):
        if step != self.step:
            return latents
        if self.source == "anchor":
            return latents[self.anchor_index].expand_as(latents).clone()
        return latents[self.previous].clone()


def align_differences(differences, align, source_reference=None, target_reference=None, matrices=None):
    """Align source latent differences (F, C, h, w) to the generated clip.

    "stats": rescale per channel by sigma_target / sigma_source (the mean cancels in a
    difference); "pose": warp each frame's difference by its source-to-target similarity
    (matrices (F, 2, 3) in latent pixels); "none": as they are.
    """
    if align == "stats" and source_reference is not None and target_reference is not None:
        _, std_source = latent_ops.channel_stats(source_reference)
        _, std_target = latent_ops.channel_stats(target_reference)
        return differences * (std_target / (std_source + 1e-6))
    if align == "pose" and matrices is not None:
        return latent_ops.affine_warp(differences, matrices.to(differences.device))
    return differences


@dataclass
class LatentDifferences(Technique):
    """Carry the source video's motion: z_i <- z_i + lambda (z_anchor + sqrt(abar_t) d_i - z_i),
    d_i = align(E(v_i) - E(v_anchor)) (see latent_ops.inject_differences)."""

    steps: range
    scale: float
    source_latents: torch.Tensor  # (F_clip, 4, h, w): E(v) of every source frame
    align: str = "none"
    anchor: str = "first"
    matrices: torch.Tensor | None = None  # (F_clip, 2, 3) source-to-target maps for align="pose"

    def setup(self, info):
        self.info = info
        self.anchor_index = resolve_anchor(self.anchor, info.frame_ids)
        source = self.source_latents[info.frame_ids].to(info.noise.device, info.noise.dtype)
        self.differences = source - source[self.anchor_index]
        self.source_anchor = source[self.anchor_index]
        self.anchor_x0 = None
        self.frame_matrices = None if self.matrices is None else self.matrices[info.frame_ids]

    def before_step(self, step, t, latents, active):
        if step not in self.steps or not active[self.anchor_index]:
            return latents
        differences = align_differences(self.differences, self.align, self.source_anchor, self.anchor_x0,
                                        self.frame_matrices)
        injected = latent_ops.inject_differences(latents, latents[self.anchor_index], differences, self.scale,
                                                 self.info.signal_scale(step))
        return torch.where(active[:, None, None, None], injected, latents)

    def after_step(self, step, t, latents, x0_pred, active):
        if active[self.anchor_index]:
            self.anchor_x0 = x0_pred[self.anchor_index]  # the anchor's latest clean estimate, for "stats"
        return latents


@dataclass
class StartFromLatents(Technique):
    """Start frames from clean latents noised to ``strength`` (SDEdit): run the last s of the schedule.

    z_start = sqrt(abar) x0 + sqrt(1 - abar) eps at the first step run, via the scheduler's add_noise.
    """

    clean_latents: torch.Tensor  # (F_clip, 4, h, w) when select_by_frame_id, else (F_pass, 4, h, w)
    strength: float
    select_by_frame_id: bool = True
    sets_start = True

    def setup(self, info):
        self.info = info
        num_steps = len(info.timesteps)
        self.start = num_steps - min(int(round(num_steps * self.strength)), num_steps)

    def first_steps(self):
        return [self.start] * len(self.info.frame_ids)

    def initial_latents(self, latents):
        clean = self.clean_latents[self.info.frame_ids] if self.select_by_frame_id else self.clean_latents
        clean = clean.to(latents.device, latents.dtype)
        if self.start >= len(self.info.timesteps):
            return clean
        timestep = self.info.timesteps[self.start:self.start + 1].repeat(len(clean))
        return self.info.scheduler.add_noise(clean, self.info.noise, timestep)


@dataclass
class KeyframePlan:
    """Keyframes every ``interval`` frames (and the last) in full; the rest from their nearest
    keyframe's clean latent plus the aligned source difference, noised to ``strength``."""

    interval: int
    strength: float
    source_latents: torch.Tensor  # (F, 4, h, w)
    align: str = "none"
    matrices: torch.Tensor | None = None

    def split(self, num_frames):
        keys = sorted(set(range(0, num_frames, self.interval)) | {num_frames - 1})
        return keys, [i for i in range(num_frames) if i not in keys]

    def between_start(self, key_latents, keys, between):
        nearest = [min(range(len(keys)), key=lambda k: abs(keys[k] - i)) for i in between]
        source = self.source_latents.to(key_latents.device, key_latents.dtype)
        key_source = source[[keys[k] for k in nearest]]
        differences = align_differences(source[between] - key_source, self.align, source[keys], key_latents,
                                        None if self.matrices is None else self.matrices[between])
        return StartFromLatents(key_latents[nearest] + differences, self.strength, select_by_frame_id=False)


class CrossFrameAttnProcessor:
    """Self-attention with keys and values from reference frames of the batch (Text2Video-Zero, Sec. 3.3).

    Wraps the processor it replaces, handing it the references' hidden states as the K/V source,
    so the attention backend chosen before (SDPA, xformers, ...) still computes it.
    """

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 frame_refs=None, *args, **kwargs):
        if encoder_hidden_states is None and frame_refs is not None:
            refs = frame_refs.to(hidden_states.device)
            if hidden_states.shape[0] == 2 * refs.shape[0]:  # both guidance branches: [uncond, cond]
                refs = torch.cat([refs, refs + refs.shape[0]])
            encoder_hidden_states = hidden_states[refs].flatten(1, 2)  # (B, R*N, C): the references' tokens
        return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)


@dataclass
class CrossFrameAttention(Technique):
    """Every frame's self-attention (UNet and ControlNet) reads the anchor's and/or previous frame's tokens."""

    mode: str  # "anchor", "previous" or "anchor+previous"
    anchor: str = "first"

    def attach(self, pipe):
        self.saved = [(model, model.attn_processors) for model in (pipe.unet, pipe.controlnet)]
        for model, processors in self.saved:
            model.set_attn_processor({name: CrossFrameAttnProcessor(p) for name, p in processors.items()})

    def detach(self, pipe):
        for model, processors in self.saved:
            model.set_attn_processor(processors)

    def setup(self, info):
        self.anchor_index = resolve_anchor(self.anchor, info.frame_ids)
        self.previous = previous_index(info.frame_ids)

    def plan_batch(self, chunk, active):
        references = [[r for r in self._references(j) if r in active] or [j] for j in chunk]
        extras = sorted({r for refs in references for r in refs} - set(chunk))
        batch = extras + list(chunk)
        position = {frame: p for p, frame in enumerate(batch)}
        width = max(len(refs) for refs in references)
        rows = [[p] * width for p in range(len(extras))]  # extras attend to themselves; output discarded
        rows += [[position[r] for r in refs] + [position[refs[-1]]] * (width - len(refs)) for refs in references]
        return batch, {"frame_refs": torch.tensor(rows)}

    def _references(self, j):
        return {"anchor": [self.anchor_index], "previous": [self.previous[j]],
                "anchor+previous": [self.anchor_index, self.previous[j]]}[self.mode]


@dataclass
class FlowWarp(Technique):
    """Flow-guided fusion: warp the previous frame's predicted clean latent along the source video's
    optical flow into each frame where the flow passes the forward-backward check, weight w.

    x0_i <- x0_i + w m (warp(x0_{i-1}) - x0_i); the latents move by the same change times the
    signal scale of the next step, so the step's noise estimate is kept.
    """

    weight: float
    steps: range
    flows: torch.Tensor  # (F_clip - 1, h, w, 2): for frame i >= 1, where each latent pixel was in frame i - 1
    masks: torch.Tensor  # (F_clip - 1, 1, h, w): 1 where that flow is reliable

    def setup(self, info):
        self.info = info
        self.previous = previous_index(info.frame_ids)

    def after_step(self, step, t, latents, x0_pred, active):
        if step not in self.steps:
            return latents
        frames = [j for j, p in enumerate(self.previous) if p != j and active[j] and active[p]]
        if not frames:
            return latents
        clip_ids = [self.info.frame_ids[j] - 1 for j in frames]  # flow index of clip frame i is i - 1
        flows = self.flows[clip_ids].to(latents.device, latents.dtype)
        masks = self.masks[clip_ids].to(latents.device, latents.dtype)
        warped = latent_ops.warp(x0_pred[[self.previous[j] for j in frames]], flows)
        fused = latent_ops.fuse_warped(x0_pred[frames], warped, masks, self.weight)
        latents = latents.clone()
        latents[frames] += self.info.signal_scale(step + 1) * (fused - x0_pred[frames])
        return latents


def save_bank(path, source_latents, keypoints=None, metadata=None):
    """Save a reference clip's source latents (F, 4, h, w) and keypoints (F, 18, 3) as safetensors."""
    from safetensors.torch import save_file

    tensors = {"source_latents": source_latents.float().cpu().contiguous()}
    if keypoints is not None:
        tensors["keypoints"] = torch.as_tensor(keypoints, dtype=torch.float32)
    with outputs.atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata={"sdvideo": json.dumps(metadata or {})})


def load_bank(path):
    """(source_latents, keypoints or None, metadata) from save_bank's file."""
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        metadata = json.loads((f.metadata() or {}).get("sdvideo", "{}"))
    return tensors["source_latents"], tensors.get("keypoints"), metadata
