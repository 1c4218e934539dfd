"""The compression-like scheme as a driver of passes: keyframes generated in full, the frames
between them from their nearest keyframe plus the aligned source latent difference.

A driver decides which frames each pass of the loop denoises (pipeline.generate calls
``driver.run(run_pass, num_frames, techniques)``); the loop itself knows nothing of keyframes.
``KeyframePlan`` is the one driver besides the plain single pass (``--mode keyframe``).
"""
from dataclasses import dataclass

import torch

from common.errors import UserError
from latent_ops import align_differences
from loop.techniques import StartFromLatents, needs_source


@dataclass
class KeyframePlan:
    """Keyframes every ``interval`` frames (and the last) in full; the rest from their nearest
    keyframe's clean latent plus the aligned source difference, noised to ``strength``."""

    interval: int
    strength: float
    source_latents: torch.Tensor  # (F, 4, h, w)
    align: str = "none"
    matrices: torch.Tensor | None = None
    name, summary = "keyframe", "keyframes in full, the frames between from keyframe + source difference"
    flags = {"mode": "mode", "interval": "keyframe_interval", "strength": "residual_strength"}

    @staticmethod
    def add_arguments(group):
        group.add_argument("--mode", choices=("plain", "keyframe"), default="plain",
                           help="keyframe: every K-th frame in full, the rest from keyframe + residual")
        group.add_argument("--keyframe-interval", type=int, default=8, help="keyframe mode: K")
        group.add_argument("--residual-strength", type=float, default=0.5,
                           help="keyframe mode: fraction of the schedule run for frames between keyframes")

    @staticmethod
    def check(args):
        if args.keyframe_interval < 1:
            raise UserError("--keyframe-interval must be at least 1")
        if not 0 <= args.residual_strength <= 1:
            raise UserError("--residual-strength must be in [0, 1]")
        if args.mode == "keyframe":
            needs_source(args, "--mode keyframe", residuals_too=True)

    @classmethod
    def from_args(cls, args, sources):
        if args.mode != "keyframe":
            return None
        matrices = sources.matrices() if args.diff_align == "pose" else None
        return cls(args.keyframe_interval, args.residual_strength, sources.latents(), args.diff_align, matrices)

    def cost(self, num_frames, num_steps):
        keys, between = self.split(num_frames)
        run = min(int(round(num_steps * self.strength)), num_steps)
        return (len(keys) * num_steps + len(between) * run) / (num_frames * num_steps)

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

    def run(self, run_pass, num_frames, techniques):
        """Two passes: the keyframes with every technique, then the rest from their starts (a
        technique that sets its own start gives way to the keyframe's)."""
        keys, between = self.split(num_frames)
        key_latents = run_pass(keys, techniques)
        latents = torch.empty((num_frames, *key_latents.shape[1:]), dtype=key_latents.dtype,
                              device=key_latents.device)
        latents[keys] = key_latents
        if between:
            start = self.between_start(key_latents, keys, between)
            latents[between] = run_pass(between, [t for t in techniques if not t.sets_start] + [start])
        return latents
