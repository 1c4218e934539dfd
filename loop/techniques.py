"""The temporal-consistency techniques that work on latents, each one class: its hooks into the
denoising loop, its flags, its checks, its construction and its cost (those that plan the model's
calls are in loop/planners.py).

A technique subclasses ``pipeline.Technique`` (the hooks), keeps its math in latent_ops.py and
is registered in ``registry.TECHNIQUES``, the one ordered list that says in which order the hooks
apply. Each class has ``name`` (the key presets use), ``summary`` (one line), ``flags`` (its
preset fields -> argparse dests), ``add_arguments(group)``, ``check(args)`` (before any model
loads), ``from_args(args, sources)`` (None when not asked for) and ``cost(num_frames,
num_steps)`` (model evaluations against the plain run). ``PRESETS`` are plain data keyed by
technique and field. The keyframe scheme is a driver (loop/keyframes.py), not a technique.
"""
from dataclasses import dataclass

import torch

import latent_ops
from common.errors import UserError
from loop.indices import check_steps, parse_step, parse_step_range, previous_index, resolve_anchor
from loop.inversion import start_step
from loop.pipeline import Technique
from noise import gate_by_motion

MULTISTEP = ("dpm++", "unipc")  # schedulers that keep the model outputs of earlier steps


def needs_source(args, flag, residuals_too=False):
    if args.video is None and not (residuals_too and args.residuals):
        either = "--video or --residuals (a --save-residuals file)" if residuals_too else "--video"
        raise UserError(f"{flag} needs {either}: it reads the source clip")


class Registered:
    """Defaults of the registry interface (see the module docstring)."""

    flags = {}

    @staticmethod
    def add_arguments(group):
        pass

    @staticmethod
    def check(args):
        pass

    def cost(self, num_frames, num_steps):
        return 1.0


@dataclass
class StartFromLatents(Technique, Registered):
    """Start frames from clean latents noised to ``strength`` (SDEdit): run the last s of the schedule.

    z_start = sqrt(abar) x0 + sqrt(1 - abar) eps at the first step run, via the scheduler's add_noise.
    """

    clean_latents: torch.Tensor  # (F_clip, 4, h, w) when select_by_frame_id, else (F_pass, 4, h, w)
    strength: float
    select_by_frame_id: bool = True
    sets_start = True
    name, summary = "sdedit", "start each frame from its source frame's latent, noised (SDEdit)"
    flags = {"on": "init_from_source", "strength": "strength"}

    @staticmethod
    def add_arguments(group):
        group.add_argument("--init-from-source", action="store_true",
                           help="start each frame from its source frame's latent noised to --strength (SDEdit)")
        group.add_argument("--strength", type=float, default=0.7,
                           help="--init-from-source, --invert-source: fraction of the schedule run (where denoising "
                                "starts)")

    @staticmethod
    def check(args):
        if not 0 < args.strength <= 1:
            raise UserError("--strength must be in (0, 1]")
        if args.init_from_source:
            needs_source(args, "--init-from-source")

    @classmethod
    def from_args(cls, args, sources):
        return cls(sources.latents(), args.strength) if args.init_from_source else None

    def cost(self, num_frames, num_steps):
        return 1 - start_step(num_steps, self.strength) / num_steps

    def setup(self, info):
        self.info = info
        self.start = start_step(len(info.timesteps), self.strength)

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
class StartFromInversion(Technique, Registered):
    """Start frames from their source frame's DDIM inversion (RAVE, FLATTEN, VidToMe): the source
    latents run up the schedule to the step ``strength`` starts at (loop/inversion.py)."""

    inverted_latents: torch.Tensor  # (F_clip, 4, h, w) at the timestep denoising starts
    inversion: dict  # what run.json records: the climb's timesteps and evaluations, the cache
    strength: float
    sets_start = True
    name, summary = "inversion", "start each frame from its source frame's DDIM inversion"
    flags = {"on": "invert_source", "strength": "strength", "prompt": "source_prompt", "steps": "inversion_steps",
             "control": "inversion_control"}

    @staticmethod
    def add_arguments(group):
        group.add_argument("--invert-source", action="store_true",
                           help="start each frame from its source frame's DDIM inversion, climbed to where --strength "
                                "starts (needs --video and --scheduler ddim)")
        group.add_argument("--source-prompt", default="", help="--invert-source: the prompt inversion runs with")
        group.add_argument("--inversion-steps", type=int, default=None,
                           help="--invert-source: the inversion's schedule (default: --steps)")
        group.add_argument("--inversion-control", action="store_true",
                           help="--invert-source: run the ControlNet with the clip's control maps while inverting "
                                "(RAVE's give_control_inversion)")

    @staticmethod
    def check(args):
        if args.inversion_steps is not None and args.inversion_steps < 1:
            raise UserError("--inversion-steps must be at least 1")
        if not args.invert_source:
            return
        needs_source(args, "--invert-source")
        if args.init_from_source:
            raise UserError("--invert-source and --init-from-source both choose where frames start; give one")
        if args.scheduler != "ddim":
            raise UserError(f"--invert-source runs DDIM inversion and needs --scheduler ddim (got {args.scheduler})")

    @classmethod
    def from_args(cls, args, sources):
        if not args.invert_source:
            return None
        latents, record = sources.inverted()
        if args.noise == "flow-gated":  # Ground-A-Video smooths the inverted latents, not fresh noise
            latents = gate_by_motion(latents, sources.moving(args.noise_flow_threshold, args.noise_flow_relative)
                                     .to(latents.device))
            record = {**record, "flow_gated": True}
        return cls(latents, record, args.strength)

    def cost(self, num_frames, num_steps):
        climb = 0 if self.inversion["from_cache"] else self.inversion["unet_evals_per_frame"]
        return 1 - start_step(num_steps, self.strength) / num_steps + climb / num_steps

    def setup(self, info):
        self.frame_ids = info.frame_ids
        self.start = start_step(len(info.timesteps), self.strength)

    def first_steps(self):
        return [self.start] * len(self.frame_ids)

    def initial_latents(self, latents):
        return self.inverted_latents[self.frame_ids].to(latents.device, latents.dtype)


@dataclass
class Copy(Technique, Registered):
    """Intermediate latent copying at step k; frames whose work before k is discarded are not computed."""

    step: int
    source: str = "anchor"  # "anchor": all take the anchor's; "previous": each its predecessor's
    anchor: str = "first"
    name, summary = "copy", "every frame takes the anchor's (or its predecessor's) latent at step k"
    flags = {"step": "copy_step", "source": "copy_from"}

    @staticmethod
    def add_arguments(group):
        group.add_argument("--copy-step", default=None, help="intermediate latent copying at step k (int, or a "
                                                             "fraction like 0.3)")
        group.add_argument("--copy-from", choices=("anchor", "previous"), default="anchor",
                           help="copy the anchor's latent, or each frame its predecessor's")

    @staticmethod
    def check(args):
        if args.copy_step is None:
            return
        check_steps("--copy-step", args.copy_step, args.steps, single=True)
        start = start_step(args.steps, args.strength) if args.init_from_source or args.invert_source else 0
        if parse_step(args.copy_step, args.steps) < start:
            raise UserError(f"--copy-step {args.copy_step} comes before step {start}, where --strength {args.strength:g} "
                            "starts denoising: the copy would never happen; copy at a later step")
        if args.copy_from == "previous" and args.scheduler in MULTISTEP:
            raise UserError(f"--copy-from previous cannot run with --scheduler {args.scheduler}: a multistep solver "
                            "keeps each frame's history, which a frame given its predecessor's latent does not have; "
                            "use --scheduler ddim, euler or euler-a, or --copy-from anchor")

    @classmethod
    def from_args(cls, args, sources):
        if args.copy_step is None:
            return None
        return cls(parse_step(args.copy_step, args.steps), args.copy_from, args.anchor)

    def cost(self, num_frames, num_steps):
        full = 1 if self.source == "anchor" else num_frames - 1  # frames that run every step
        return (full * num_steps + (num_frames - full) * (num_steps - self.step)) / (num_frames * num_steps)

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


@dataclass
class LatentDifferences(Technique, Registered):
    """Carry the source video's motion: z_i <- z_i + lambda (z_anchor + sqrt(abar_t) d_i - z_i),
    d_i = align(E(v_i) - E(v_anchor)) (see latent_ops.inject_differences)."""

    steps: range
    scale: float
    source_latents: torch.Tensor  # (F_clip, 4, h, w): E(v) of every source frame
    align: str = "none"
    anchor: str = "first"
    matrices: torch.Tensor | None = None  # (F_clip, 2, 3) source-to-target maps for align="pose"
    name, summary = "differences", "pull frames toward the anchor plus the source's latent differences"
    flags = {"steps": "diff_steps", "scale": "diff_scale", "align": "diff_align"}

    @staticmethod
    def add_arguments(group):
        group.add_argument("--diff-steps", default=None,
                           help="inject source latent differences at steps a:b (needs --video or --residuals)")
        group.add_argument("--diff-scale", type=float, default=1.0,
                           help="differences: z_i <- z_i + lambda (z_anchor + sqrt(abar_t) d_i - z_i); 1 = full")
        group.add_argument("--diff-align", choices=("none", "stats", "pose"), default="none",
                           help="align source differences (and keyframe residuals): as they are, by channel "
                                "statistics, or by pose similarity")

    @staticmethod
    def check(args):
        if args.diff_scale < 0:
            raise UserError("--diff-scale must be >= 0")
        if args.diff_steps:
            check_steps("--diff-steps", args.diff_steps, args.steps)
            needs_source(args, "--diff-steps", residuals_too=True)

    @classmethod
    def from_args(cls, args, sources):
        if not args.diff_steps:
            return None
        matrices = sources.matrices() if args.diff_align == "pose" else None
        return cls(parse_step_range(args.diff_steps, args.steps), args.diff_scale, sources.latents(), args.diff_align,
                   args.anchor, matrices)

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
        differences = latent_ops.align_differences(self.differences, self.align, self.source_anchor, self.anchor_x0,
                                        self.frame_matrices)
        injected = latent_ops.inject_differences(latents, latents[self.anchor_index], differences, self.scale,
                                                 self.info.signal_scale(step))
        return torch.where(active[:, None, None, None], injected, latents)

    def after_step(self, step, t, latents, x0_pred, active):
        if active[self.anchor_index]:
            self.anchor_x0 = x0_pred[self.anchor_index]  # the anchor's latest clean estimate, for "stats"
        return latents


@dataclass
class Blend(Technique, Registered):
    """Naive blending toward a reference latent at the chosen steps (the known-bad baseline)."""

    steps: range
    weight: float
    reference: str = "anchor"  # or "previous"
    anchor: str = "first"
    name, summary = "blend", "blend latents toward the anchor's or previous frame's (known-bad baseline)"
    flags = {"steps": "blend_steps", "weight": "blend_weight", "reference": "blend_ref"}

    @staticmethod
    def add_arguments(group):
        group.add_argument("--blend-steps", default=None, help="latent blending at steps a:b (ints, or fractions "
                                                               "like 0:0.5)")
        group.add_argument("--blend-weight", type=float, default=0.5, help="blending: z <- (1-w) z + w z_ref")
        group.add_argument("--blend-ref", choices=("anchor", "previous"), default="anchor", help="blending reference")

    @staticmethod
    def check(args):
        if not 0 <= args.blend_weight <= 1:
            raise UserError("--blend-weight must be in [0, 1]")
        if args.blend_steps:
            check_steps("--blend-steps", args.blend_steps, args.steps)

    @classmethod
    def from_args(cls, args, sources):
        if not args.blend_steps:
            return None
        return cls(parse_step_range(args.blend_steps, args.steps), args.blend_weight, args.blend_ref, args.anchor)

    def setup(self, info):
        self.anchor_index = resolve_anchor(self.anchor, info.frame_ids)
        self.previous = previous_index(info.frame_ids)

    def after_step(self, step, t, latents, x0_pred, active):
        if step not in self.steps:
            return latents
        reference = latents[self.anchor_index] if self.reference == "anchor" else latents[self.previous]
        blended = latent_ops.blend(latents, reference, self.weight)
        return torch.where(active[:, None, None, None], blended, latents)
