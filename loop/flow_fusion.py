"""Flow fusion (Rerender's cross-frame fusion, one technique): each frame's predicted x0 early in
the schedule, then its noisy latent, pulled toward its reference frame warped by the source
clip's optical flow where the flow is reliable. The math is latent_ops.py's; the flow is
loading/flow.py's (DIS at >= 256 px), read through ``Sources``.
"""
import math
from dataclasses import dataclass

import torch

import latent_ops
from common.errors import UserError
from loop.indices import check_steps, parse_step_range
from loop.pipeline import Technique
from loop.techniques import Registered, needs_source

# Flow fusion's phases (measured on the toy model, docs/techniques.md): x0 early, as Rerender's
# warp_period (0, 0.1); the noisy latent after it; x0 fusion past X0_FUSION_LIMIT is refused.
FLOW_X0_STEPS, FLOW_LATENT_STEPS, X0_FUSION_LIMIT = "0:0.1", "0.1:0.5", 0.25


@dataclass
class FlowFusion(Technique, Registered):
    """Flow-guided fusion (Rerender-A-Video; FRESCO's chain): each frame is pulled toward its
    reference frame warped along the source video's optical flow, where the flow passes the
    forward-backward check (m), in two phases as Rerender does:

    - early (``x0_steps``, default the first 10 %): the clean estimate,
      x0_i <- x0_i + w m (warp(x0_ref) - x0_i), the latents moved by sqrt(abar_next) times that
      change (the step's noise estimate kept);
    - later (``latent_steps``): the noisy latent itself, z_i <- z_i + w m (warp(z_ref) - z_i),
      warped nearest-neighbour (bilinear mixing would shrink the noise in it).

    Moving x0 alone later overshoots: a DDIM step keeps only a small share of the x0 gap between
    neighbours, so the added warped gap flips sign and grows step after step (docs/techniques.md).
    The reference is each frame's predecessor, already fused (a chain, in clip order), or the
    pass's first frame through the chained flow.
    """

    weight: float
    x0_steps: range
    latent_steps: range  # or a list of steps
    flows: torch.Tensor  # (F_clip - 1, h, w, 2): for frame i >= 1, where each latent pixel was in frame i - 1
    masks: torch.Tensor  # (F_clip - 1, 1, h, w): 1 where that flow is reliable
    reference: str = "previous"  # or "first"
    name, summary = "flow-fusion", "pull each frame toward its predecessor warped by the source's optical flow"
    flags = {"weight": "flow_warp", "x0_steps": "flow_steps", "latent_steps": "flow_latent_steps",
             "reference": "flow_reference"}

    @staticmethod
    def add_arguments(group):
        group.add_argument("--flow-warp", type=float, default=0.0,
                           help="flow fusion weight w: pull each frame toward its reference frame warped by the "
                                "source's optical flow (0: off)")
        group.add_argument("--flow-steps", default=FLOW_X0_STEPS,
                           help="flow fusion of the clean estimate x0 at steps a:b (early only; '' for none)")
        group.add_argument("--flow-latent-steps", default=FLOW_LATENT_STEPS,
                           help="flow fusion of the noisy latent at steps a:b ('' for none)")
        group.add_argument("--flow-reference", choices=("previous", "first"), default="previous",
                           help="fuse toward each frame's fused predecessor (a chain) or toward the first frame")

    @staticmethod
    def check(args):
        if not 0 <= args.flow_warp <= 1:
            raise UserError("--flow-warp must be in [0, 1]")
        if args.flow_warp <= 0:
            return
        needs_source(args, "--flow-warp")
        for flag, spec in (("--flow-steps", args.flow_steps), ("--flow-latent-steps", args.flow_latent_steps)):
            if spec:
                check_steps(flag, spec, args.steps)
        if not (args.flow_steps or args.flow_latent_steps):
            raise UserError("--flow-warp needs --flow-steps or --flow-latent-steps")
        limit = max(1, math.ceil(X0_FUSION_LIMIT * args.steps))  # the first step is always allowed (1-4 steps)
        if args.flow_steps and parse_step_range(args.flow_steps, args.steps).stop > limit:
            raise UserError(f"--flow-steps {args.flow_steps}: x0 fusion past {X0_FUSION_LIMIT:.0%} of the steps "
                            "overshoots; fuse the noisy latent there (--flow-latent-steps)")

    @classmethod
    def from_args(cls, args, sources):
        if args.flow_warp <= 0:
            return None
        x0_steps, latent_steps = (parse_step_range(s, args.steps) if s else range(0)
                                  for s in (args.flow_steps, args.flow_latent_steps))
        # a step fuses one thing: x0 where both ranges hold it (at a few steps they round together)
        latent_steps = [s for s in latent_steps if s not in x0_steps]
        return cls(args.flow_warp, x0_steps, latent_steps, *sources.flows(), args.flow_reference)

    def setup(self, info):
        """Each pass frame's reference (pass index) and the backward flow to it, chained through the
        clip's consecutive flows (the frames between two pass frames may be in other passes)."""
        self.info = info
        ids = info.frame_ids
        order = sorted(range(len(ids)), key=lambda j: ids[j])
        self.order, self.references, self.ref_flows = order[1:], {}, {}
        chains = {}  # clip frame k -> backward flow and mask from k to the reference's clip frame

        def chain(k, target):
            if (k, target) not in chains:
                step = (self.flows[k - 1:k], self.masks[k - 1:k])  # k -> k - 1
                chains[(k, target)] = (step if k - 1 == target
                                       else latent_ops.compose_flows(*step, *chain(k - 1, target)))
            return chains[(k, target)]

        for position, j in enumerate(self.order, start=1):
            ref = order[0] if self.reference == "first" else order[position - 1]
            self.references[j], self.ref_flows[j] = ref, chain(ids[j], ids[ref])

    def _fuse_chain(self, values, active, mode):
        """values (F, C, h, w) with each frame fused toward its (already fused) reference, in clip order."""
        fused = values.clone()
        for j in self.order:
            ref = self.references[j]
            if not (active[j] and active[ref]):
                continue
            flow, mask = (tensor.to(values.device, values.dtype) for tensor in self.ref_flows[j])
            warped = latent_ops.warp(fused[ref:ref + 1], flow, mode)
            fused[j:j + 1] = latent_ops.fuse_warped(fused[j:j + 1], warped, mask, self.weight)
        return fused

    def after_step(self, step, t, latents, x0_pred, active):
        if step in self.x0_steps:
            fused = self._fuse_chain(x0_pred, active, "bilinear")
            latents = latents + self.info.signal_scale(step + 1) * (fused - x0_pred)
        if step in self.latent_steps:
            latents = self._fuse_chain(latents, active, "nearest")
        return latents
