"""The techniques that plan the model's calls: which frames go into one ControlNet + UNet call and
how they see each other. Text2Video-Zero's cross-frame attention and FLATTEN's trajectory
attention bring frames into the batch and change what self-attention reads (loop/attention.py);
StreamV2V's feature bank and VidToMe's token merging tell self-attention which frames a call
holds; RAVE's grid tiles the frames into grid pictures. A run has at most one of them (their plans
would not compose); the registry interface is loop/techniques.py's.
"""
import argparse
from dataclasses import dataclass

import torch

import latent_ops
from common.errors import UserError
from loop import predict
from loop.attention import (BankState, CrossFrameAttnProcessor, FeatureBankProcessor, MergeState, TokenMergeProcessor,
                            TrajectoryAttnProcessor)
from loop.indices import previous_index, resolve_anchor
from loop.pipeline import Technique
from loop.techniques import Registered, needs_source


def requested(args):
    """The flags of the planning techniques a command line asks for (a run may have one)."""
    asked = {"--cross-frame-attn": args.cross_frame_attn != "off", "--trajectory-attn": args.trajectory_attn,
             "--grid": args.grid is not None, "--feature-bank": args.feature_bank > 0,
             "--token-merge": args.token_merge > 0}
    return [flag for flag, on in asked.items() if on]


def wrap_attention(pipe, processor, named=False):
    """Wrap every attention processor of the UNet and ControlNet in ``processor(inner)`` (with
    ``named``, ``processor(inner, name)``, the name prefixed by the model: "unet." or "controlnet0."
    ...); returns what ``unwrap_attention`` needs to put them back."""
    saved = [(model, model.attn_processors) for model in (pipe.unet, *predict.controlnets(pipe))]
    for index, (model, processors) in enumerate(saved):
        prefix = "unet." if index == 0 else f"controlnet{index - 1}."
        model.set_attn_processor({name: processor(inner, prefix + name) if named else processor(inner)
                                  for name, inner in processors.items()})
    return saved


def unwrap_attention(saved):
    for model, processors in saved:
        model.set_attn_processor(processors)


@dataclass
class CrossFrameAttention(Technique, Registered):
    """Every frame's self-attention (UNet and ControlNet) reads the anchor's and/or previous frame's
    tokens (Text2Video-Zero, Sec. 3.3), through attention.CrossFrameAttnProcessor."""

    mode: str  # "anchor", "previous" or "anchor+previous"
    anchor: str = "first"
    name, summary = "cross-frame-attention", "self-attention keys and values from the anchor/previous frame"
    flags = {"mode": "cross_frame_attn"}

    @staticmethod
    def add_arguments(group):
        group.add_argument("--cross-frame-attn", choices=("off", "anchor", "previous", "anchor+previous"),
                           default="off", help="self-attention keys and values from these frames (UNet and ControlNet)")

    @classmethod
    def from_args(cls, args, sources):
        return None if args.cross_frame_attn == "off" else cls(args.cross_frame_attn, args.anchor)

    def attach(self, pipe):
        self.saved = wrap_attention(pipe, CrossFrameAttnProcessor)

    def detach(self, pipe):
        unwrap_attention(self.saved)

    def setup(self, info):
        self.anchor_index = resolve_anchor(self.anchor, info.frame_ids)
        self.previous = previous_index(info.frame_ids)

    def plan_batch(self, chunk, active):
        references = [[r for r in self._references(j) if active[r]] or [j] for j in chunk]
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


def first_attention_level(unet_config):
    """How many times the UNet halves the latent before its first attention layer (0 for SD)."""
    types = list(unet_config.down_block_types)
    return next((i for i, kind in enumerate(types) if "Attn" in kind), len(types))


@dataclass
class TrajectoryAttention(Technique, Registered):
    """FLATTEN (Cong et al., ICLR 2024), its cheap variant: in the highest-resolution self-attention
    layers (UNet and ControlNet) each token also attends to the tokens on its flow trajectory in
    the batch's other frames, one softmax over both. Trajectories follow the source clip's optical
    flow from frame to frame (nearest token), broken where the forward-backward check fails
    (latent_ops.token_links, trajectory_indices; attention.TrajectoryAttnProcessor)."""

    flows: torch.Tensor  # (F_clip - 1, h, w, 2): backward flow at latent size (sources.flows)
    masks: torch.Tensor  # (F_clip - 1, 1, h, w): 1 where it passed the forward-backward check
    name, summary = "trajectory-attention", "FLATTEN: tokens also attend along the source's flow trajectories"
    flags = {"on": "trajectory_attn"}

    @staticmethod
    def add_arguments(group):
        group.add_argument("--trajectory-attn", action="store_true",
                           help="FLATTEN: in the highest-resolution self-attention layers each token also attends "
                                "to the tokens on its optical-flow trajectory in the batch's other frames "
                                "(needs --video)")

    @staticmethod
    def check(args):
        if args.trajectory_attn:
            needs_source(args, "--trajectory-attn")

    @classmethod
    def from_args(cls, args, sources):
        return cls(*sources.flows()) if args.trajectory_attn else None

    def attach(self, pipe):
        self.saved = wrap_attention(pipe, TrajectoryAttnProcessor)
        self.device = pipe._execution_device
        self.links = latent_ops.token_links(self.flows, self.masks, 2 ** first_attention_level(pipe.unet.config))
        self.trajectories = {}  # clip frame ids of a batch -> (B, B, N) on the device

    def detach(self, pipe):
        unwrap_attention(self.saved)

    def setup(self, info):
        self.frame_ids = info.frame_ids

    def plan_batch(self, chunk, active):
        ids = tuple(self.frame_ids[j] for j in chunk)
        if ids not in self.trajectories:
            self.trajectories[ids] = latent_ops.trajectory_indices(self.links, ids).to(self.device)
        return list(chunk), {"trajectories": self.trajectories[ids]}


@dataclass
class Grid(Technique, Registered):
    """RAVE (Kara et al., CVPR 2024): at every step the frames, in a fresh seeded random order, are
    tiled K*K at a time into grid pictures (latents and pose conditioning alike), each denoised as
    one input, so that a grid's frames share one self-attention; untiled after the step. When the
    frames do not fill the last grid, it is completed with the first frames of the step's order
    (computed twice; their first result counts). K = 1 is the plain run."""

    k: int
    shuffle: bool = True
    seed: int = 0
    name, summary = "grid", "RAVE: frames tiled K x K into one picture, in a new random order every step"
    flags = {"k": "grid", "shuffle": "grid_shuffle"}

    @staticmethod
    def add_arguments(group):
        group.add_argument("--grid", type=int, choices=(1, 2, 3), default=None,
                           help="RAVE: denoise the frames K x K at a time as one grid picture (K = 2 or 3; "
                                "1 = the plain run)")
        group.add_argument("--grid-shuffle", action=argparse.BooleanOptionalAction, default=True,
                           help="--grid: a new seeded random grouping of the frames at every step")

    @classmethod
    def from_args(cls, args, sources):
        return None if args.grid is None else cls(args.grid, args.grid_shuffle, args.seed)

    def cost(self, num_frames, num_steps):
        size = self.k * self.k
        return -(-num_frames // size) * size / num_frames  # the last grid's fill is computed too

    def setup(self, info):
        self.generator = torch.Generator().manual_seed(self.seed)

    def plan_grids(self, step, computed):
        order = list(computed)
        if self.shuffle:
            order = [order[p] for p in torch.randperm(len(order), generator=self.generator).tolist()]
        size = self.k * self.k
        missing = -len(order) % size
        order += (order * size)[:missing]  # fill the last grid from the start of the order
        return [order[i:i + size] for i in range(0, len(order), size)], self.k



class FramesPlanner:
    """What the feature bank and token merging share: their processors (installed by ``attach``)
    learn each call's frames, as clip frame ids, through the ``batch_frames`` attention kwarg."""

    def detach(self, pipe):
        unwrap_attention(self.saved)

    def plan_batch(self, chunk, active):
        return list(chunk), {"batch_frames": torch.tensor([self.frame_ids[j] for j in chunk])}


@dataclass
class FeatureBank(FramesPlanner, Technique, Registered):
    """StreamV2V (Liang et al., ICLR 2025): every self-attention (UNet and ControlNet) also reads a
    bank of earlier frames' keys and values, at most ``frames`` frames' worth, merged ToMe-style
    into one frame's worth when a frame more arrives (attention.FeatureBankProcessor); with
    ``fusion`` > 0, in the UNet's middle and low-resolution decoder layers each token's output
    moves toward its nearest banked output where their cosine similarity reaches ``threshold``.

    Causal, as in the paper's streaming use: frame i sees only frames before it. Steps are the outer
    loop and frames the inner, so each step has its own bank, filled by the frames in clip order
    as the calls reach them; within a call the frames are taken one after another."""

    frames: int
    fusion: float = 0.0
    threshold: float = 0.98
    seed: int = 0
    name, summary = "feature-bank", "StreamV2V: self-attention also reads a bank of earlier frames' keys and values"
    flags = {"frames": "feature_bank", "fusion": "feature_fusion", "threshold": "fusion_threshold"}
    FUSED = ("unet.mid_block", "unet.up_blocks.0.", "unet.up_blocks.1.")  # StreamV2V's fusion layers

    @staticmethod
    def add_arguments(group):
        group.add_argument("--feature-bank", type=int, default=0, metavar="N",
                           help="StreamV2V: self-attention also reads earlier frames' keys and values, a bank of at "
                                "most N frames' worth, merged into one frame's worth when full (0: off)")
        group.add_argument("--feature-fusion", type=float, default=0.0, metavar="W",
                           help="--feature-bank: move decoder outputs toward their nearest banked output by W")
        group.add_argument("--fusion-threshold", type=float, default=0.98,
                           help="--feature-fusion: only where the cosine similarity reaches this")

    @staticmethod
    def check(args):
        if args.feature_bank < 0:
            raise UserError("--feature-bank must be >= 0 frames")
        if not 0 <= args.feature_fusion <= 1 or not -1 <= args.fusion_threshold <= 1:
            raise UserError("--feature-fusion must be in [0, 1] and --fusion-threshold in [-1, 1]")
        if args.feature_fusion > 0 and args.feature_bank == 0:
            raise UserError("--feature-fusion fuses with the feature bank: give --feature-bank N too")

    @classmethod
    def from_args(cls, args, sources):
        if args.feature_bank <= 0:
            return None
        return cls(args.feature_bank, args.feature_fusion, args.fusion_threshold, args.seed)

    def attach(self, pipe):
        self.state = BankState(self.frames, self.fusion, self.threshold, self.seed)
        self.saved = wrap_attention(pipe, lambda inner, name: FeatureBankProcessor(
            inner, name, self.state, fuse=name.startswith(self.FUSED)), named=True)

    def setup(self, info):
        self.frame_ids = info.frame_ids
        self.state.banks = {}

    def before_step(self, step, t, latents, active):
        self.state.step = step
        self.state.banks = {k: v for k, v in self.state.banks.items() if k[2] == step}  # earlier steps' are done
        return latents


@dataclass
class TokenMerge(FramesPlanner, Technique, Registered):
    """VidToMe (Li et al., CVPR 2024): in the self-attention of the layers at the latent's resolution
    and half of it (UNet and ControlNet), the tokens of each chunk of ``chunk`` frames of a call are
    merged across frames (local merging against a random target frame, ratio ``ratio``) and against
    the global tokens the previous chunk of the step left (``global_ratio``), attention runs once
    over the merged set, and the outputs are unmerged (attention.TokenMergeProcessor). Frames of a
    chunk share merged tokens (consistency), and attention runs on fewer tokens."""

    ratio: float
    chunk: int = 4
    global_ratio: float = 0.8
    seed: int = 0
    name, summary = "token-merge", "VidToMe: self-attention tokens merged across a chunk's frames, then unmerged"
    flags = {"ratio": "token_merge", "chunk": "merge_chunk", "global_ratio": "global_merge"}

    @staticmethod
    def add_arguments(group):
        group.add_argument("--token-merge", type=float, default=0.0, metavar="R",
                           help="VidToMe: merge this share of a chunk's self-attention tokens into a random target "
                                "frame's, attend once over the chunk, unmerge (0: off)")
        group.add_argument("--merge-chunk", type=int, default=4, help="--token-merge: frames merged together")
        group.add_argument("--global-merge", type=float, default=0.8,
                           help="--token-merge: share merged against the previous chunk's tokens (0: none)")

    @staticmethod
    def check(args):
        if not 0 <= args.token_merge < 1 or not 0 <= args.global_merge < 1:
            raise UserError("--token-merge and --global-merge must be in [0, 1)")
        if args.merge_chunk < 1:
            raise UserError("--merge-chunk must be at least 1 frame")

    @classmethod
    def from_args(cls, args, sources):
        if args.token_merge <= 0:
            return None
        return cls(args.token_merge, args.merge_chunk, args.global_merge, args.seed)

    def attach(self, pipe):
        self.state = MergeState(self.ratio, self.chunk, self.global_ratio, self.seed)
        self.saved = wrap_attention(pipe, lambda inner, name: TokenMergeProcessor(inner, name, self.state), named=True)

    def setup(self, info):
        self.frame_ids = info.frame_ids
        self.state.latent_tokens = info.noise.shape[-2] * info.noise.shape[-1]

    def before_step(self, step, t, latents, active):
        self.state.step, self.state.global_tokens = step, {}  # global tokens last one step, as VidToMe's
        return latents
