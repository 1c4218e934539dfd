"""DeepCache (Ma et al., CVPR 2024) across steps, and deep features shared across neighbouring frames.

The shallow branch is named by DeepCache's branch id (``split``): 3 a down block, plus the layers of
that block it runs. A full evaluation runs the whole UNet and keeps, per frame, the deep features:
the hidden state the first up layer of the branch receives (``deep_capture``). A shallow evaluation
runs only the input conv, the down layers before the branch point and their mirror on the way up, on
such kept features (``shallow_unet``); id 0 is the input conv and the last up layer alone.
``DeepCache`` plans each step's evaluations: with ``interval`` N, steps 0, N, 2N, ... of a pass
(counted from its first step run) are full and the rest shallow, DeepCache's uniform schedule; with
``frames`` K, the clip's frames go in groups of K neighbours whose key frame (nearest the group's
centre) is the only one evaluated in full, the others reuse its features.

The ControlNet: DeepCache's own code (``DeepCacheSDHelper``) wraps the UNet's blocks only, so the
ControlNet runs at every step and the UNet adds its residuals to whatever the (possibly cached)
layers return. At a shallow step the cached layers ignore their inputs, so only the residuals of the
branch's own levels reach the output; ``shallow_controlnet`` computes just those, the same numbers
for less work (tests/test_deep_cache.py checks the frames against DeepCacheSDHelper's).
"""
import itertools
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from common.errors import UserError
from loop import predict
from loop.indices import parse_step, parse_step_range
from loop.pipeline import Technique
from loop.techniques import Registered

# UNet and ControlNet settings the shallow functions do not feed (SD 1.x/2.x use none of them)
UNSUPPORTED = ("class_embed_type", "num_class_embeds", "addition_embed_type", "encoder_hid_dim_type",
               "time_cond_proj_dim", "center_input_sample", "global_pool_conditions")


def time_embedding(model, sample, t):
    """A UNet's or ControlNet's timestep embedding (R, D) for its blocks, as their forward makes it."""
    timesteps = torch.as_tensor(t, device=sample.device).reshape(-1).expand(sample.shape[0])
    embedding = model.time_embedding(model.time_proj(timesteps).to(sample.dtype))
    activation = getattr(model, "time_embed_act", None)
    return embedding if activation is None else activation(embedding)


def down_block(block, hidden, embedding, embeds, attention_kwargs):
    """One down block, called as the UNet's forward calls it -> (hidden, its skip outputs)."""
    if getattr(block, "has_cross_attention", False):
        return block(hidden_states=hidden, temb=embedding, encoder_hidden_states=embeds,
                     cross_attention_kwargs=attention_kwargs)
    return block(hidden_states=hidden, temb=embedding)


def up_block(block, hidden, embedding, skips, size, embeds, attention_kwargs):
    """One up block on its skip inputs, called as the UNet's forward calls it -> hidden."""
    if getattr(block, "has_cross_attention", False):
        return block(hidden_states=hidden, temb=embedding, res_hidden_states_tuple=skips, encoder_hidden_states=embeds,
                     cross_attention_kwargs=attention_kwargs, upsample_size=size)
    return block(hidden_states=hidden, temb=embedding, res_hidden_states_tuple=skips, upsample_size=size)


def layer_pairs(block):
    """A UNet block's layers in order: (resnet, its attention or None)."""
    attentions = getattr(block, "attentions", None) or [None] * len(block.resnets)
    return list(zip(block.resnets, attentions))


def run_layer(resnet, attention, hidden, embedding, embeds, attention_kwargs):
    """One layer, as the blocks' forward runs it: the resnet, then its attention where it has one."""
    hidden = resnet(hidden, embedding)
    if attention is not None:
        hidden = attention(hidden, encoder_hidden_states=embeds, cross_attention_kwargs=attention_kwargs,
                           return_dict=False)[0]
    return hidden


def split(branch):
    """DeepCache's branch id -> (block, layer): the shallow branch runs down blocks before ``block`` and that
    block's first ``layer`` layers, and mirrors them on the way up (DeepCacheSDHelper: 3 ids a block)."""
    return divmod(branch, 3)


def shallow_down(model, hidden, embedding, embeds, branch, attention_kwargs):
    """A UNet's or ControlNet's input conv's output ``hidden`` through the shallow branch's down side ->
    its skip outputs, the input conv's first: the only ones a shallow evaluation computes."""
    block_id, layer = split(branch)
    skips = (hidden,)
    for block in model.down_blocks[:block_id]:
        hidden, outputs = down_block(block, hidden, embedding, embeds, attention_kwargs)
        skips += outputs
    for resnet, attention in layer_pairs(model.down_blocks[block_id])[:layer]:  # no downsampler: it feeds the cache
        hidden = run_layer(resnet, attention, hidden, embedding, embeds, attention_kwargs)
        skips += (hidden,)
    return skips


def shallow_controlnet(controlnet, sample, t, embeds, cond, scale, branch, attention_kwargs=None):
    """The residuals of a ControlNet's input conv and shallow branch (DeepCache id ``branch``), each
    (R, C_k, h_k, w_k), scaled: the ones a shallow UNet evaluation adds (its deeper residuals meet cached
    layers). sample: (R, 4, h, w); cond: (R, 3, H, W) control maps or their embeddings."""
    if controlnet.config.controlnet_conditioning_channel_order == "bgr":
        cond = torch.flip(cond, dims=[1])
    embedding = time_embedding(controlnet, sample, t)
    hidden = controlnet.conv_in(sample) + controlnet.controlnet_cond_embedding(cond)
    skips = shallow_down(controlnet, hidden, embedding, embeds, branch, attention_kwargs)
    return [zero_conv(skip) * scale for skip, zero_conv in zip(skips, controlnet.controlnet_down_blocks)]


def shallow_unet(unet, sample, t, embeds, deep, branch, control=None, attention_kwargs=None):
    """DeepCache's shallow branch (id ``branch``): the UNet's output (R, 4, h, w) from its input conv, the
    down layers before the branch point and their mirror on the way up, ``deep`` (R, C, h', w') standing
    in for the hidden state the first of those up layers receives (``deep_capture``); ``control``: the
    ControlNet residuals of those levels (shallow_controlnet)."""
    # the UNet's forward passes explicit upsampling sizes where a side does not halve evenly
    uneven = any(side % 2 ** unet.num_upsamplers for side in sample.shape[-2:])
    embedding = time_embedding(unet, sample, t)
    skips = shallow_down(unet, unet.conv_in(sample), embedding, embeds, branch, attention_kwargs)
    if control is not None:
        skips = tuple(skip + residual for skip, residual in zip(skips, control))
    block_id, layer = split(branch)
    hidden, ups = deep, unet.up_blocks[len(unet.up_blocks) - 1 - block_id:]
    for resnet, attention in layer_pairs(ups[0])[len(ups[0].resnets) - 1 - layer:]:  # the block cut at the branch
        hidden = torch.cat([hidden, skips[-1]], dim=1)
        skips = skips[:-1]
        hidden = run_layer(resnet, attention, hidden, embedding, embeds, attention_kwargs)
    for upsampler in ups[0].upsamplers or []:
        hidden = upsampler(hidden, skips[-1].shape[2:] if uneven else None)
    for index, block in enumerate(ups[1:], 1):
        inputs, skips = skips[-len(block.resnets):], skips[:-len(block.resnets)]
        size = skips[-1].shape[2:] if uneven and index < len(ups) - 1 else None
        hidden = up_block(block, hidden, embedding, inputs, size, embeds, attention_kwargs)
    if unet.conv_norm_out is not None:
        hidden = unet.conv_act(unet.conv_norm_out(hidden))
    return unet.conv_out(hidden)


@contextmanager
def deep_capture(unet, branch):
    """A list that collects, while inside, the deep features of each UNet call: the hidden state the
    first up layer of DeepCache's shallow branch ``branch`` receives (before its skip is joined), which
    is the input of the up block cut at the branch or the output of that block's layer before it."""
    block_id, layer = split(branch)
    block = unet.up_blocks[len(unet.up_blocks) - 1 - block_id]
    first = len(block.resnets) - 1 - layer  # the first of the block's layers the shallow branch runs
    seen = []
    if first == 0:
        handle = block.register_forward_pre_hook(
            lambda _, args, kwargs: seen.append(kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]),
            with_kwargs=True)
    else:
        resnet, attention = layer_pairs(block)[first - 1]
        handle = (attention or resnet).register_forward_hook(
            lambda _, args, output: seen.append(output[0] if isinstance(output, tuple) else output))
    try:
        yield seen
    finally:
        handle.remove()


def unwrapped(module):
    """The module itself also under torch.compile."""
    return getattr(module, "_orig_mod", module)


def group_keys(frame_ids, size):
    """Per pass frame, the pass index of its group's key frame: groups of ``size`` neighbouring clip frames
    (clip index // size), keyed by the pass's frame nearest the group's centre (the earlier on a tie)."""
    position = {frame: j for j, frame in enumerate(frame_ids)}
    keys = {}
    for group, members in itertools.groupby(sorted(frame_ids), key=lambda frame: frame // size):
        centre = group * size + (size - 1) / 2
        keys[group] = position[min(members, key=lambda frame: (abs(frame - centre), frame))]
    return [keys[frame // size] for frame in frame_ids]


def branch_ids(pipe):
    """The DeepCache branch ids the pipeline's UNet allows: 3 a block, a layer count up to its layers per
    block, in every down block but the deepest (something must stay cached)."""
    unet = unwrapped(pipe.unet)
    return [3 * block + layer for block in range(len(unet.down_blocks) - 1)
            for layer in range(len(unet.down_blocks[block].resnets) + 1)]


def check_models(pipe, branch):
    """A UserError where the pipeline's UNet or ControlNet cannot run the shallow branch ``branch``."""
    allowed = branch_ids(pipe)
    if branch not in allowed:
        raise UserError(f"--cache-branch {branch}: this UNet's DeepCache branch ids are "
                        f"{', '.join(map(str, allowed))} (3 a down block, plus its layers run)")
    for model in (unwrapped(pipe.unet), *predict.controlnets(pipe)):
        used = [name for name in UNSUPPORTED if model.config.get(name)]
        if used:
            raise UserError(f"--cache-interval/--cache-frames need SD 1.x/2.x models: this {type(model).__name__} "
                            f"uses {', '.join(used)}")


class FullModels(predict.Models):
    """A full evaluation that hands the deep features (``deep_capture``) to ``keep``."""

    def __init__(self, pipe, branch, keep):
        super().__init__(pipe)
        self.branch, self.keep = branch, keep

    def unet(self, model_input, t, embeds, residuals, attention_kwargs):
        with deep_capture(unwrapped(self.pipe.unet), self.branch) as seen:
            output = super().unet(model_input, t, embeds, residuals, attention_kwargs)
        self.keep(seen[-1])
        return output


class ShallowModels(predict.Models):
    """A shallow evaluation on ``deep`` (R, C, h', w'): the ControlNets' and UNet's shallow branch only."""

    shallow = True

    def __init__(self, pipe, branch, deep):
        super().__init__(pipe)
        self.branch, self.deep = branch, deep

    def controlnet(self, model_input, t, embeds, control, cond_scale, attention_kwargs):
        nets = predict.controlnets(self.pipe)
        controls, scales = (control, cond_scale) if len(nets) > 1 else ([control], [cond_scale])
        summed = None  # several ControlNets add their residuals, as MultiControlNetModel
        for net, cond, scale in zip(nets, controls, scales):
            residuals = shallow_controlnet(net, model_input, t, embeds, cond, scale, self.branch, attention_kwargs)
            summed = residuals if summed is None else [a + b for a, b in zip(summed, residuals)]
        return summed

    def unet(self, model_input, t, embeds, residuals, attention_kwargs):
        return shallow_unet(unwrapped(self.pipe.unet), model_input, t, embeds, self.deep, self.branch, residuals,
                            attention_kwargs)


@dataclass
class DeepCache(Technique, Registered):
    """Full evaluations at steps 0, N, 2N, ... of a pass and, with ``frames`` K > 1, only for each group's
    key frame; the other evaluations run the shallow branch (DeepCache's branch id ``branch``) on
    the deep features kept per frame. ``restarts``: steps where a technique replaces latents wholesale
    (copying, the first differences step): the kept features are dropped there."""

    interval: int = 1
    branch: int = 0
    frames: int = 1
    restarts: tuple = ()
    name, summary = "deep-cache", "DeepCache: deep UNet features reused across steps and neighbouring frames"
    flags = {"interval": "cache_interval", "branch": "cache_branch", "frames": "cache_frames"}

    @staticmethod
    def add_arguments(group):
        group.add_argument("--cache-interval", type=int, default=1, metavar="N",
                           help="DeepCache: the full UNet at steps 0, N, 2N, ... (from the first step run), the "
                                "shallow branch on kept deep features between (1: off)")
        group.add_argument("--cache-branch", type=int, default=0, metavar="ID",
                           help="--cache-interval, --cache-frames: DeepCache's branch id, 3 x block + layers: the "
                                "shallow branch runs the down blocks before that block, its first layers and their "
                                "mirror on the way up (and the ControlNet's same layers); 0: the input conv and the "
                                "last up layer only, as DeepCacheSDHelper's default")
        group.add_argument("--cache-frames", type=int, default=1, metavar="K",
                           help="frames in groups of K neighbours: each step only the group's key frame runs in "
                                "full, the others the shallow branch on its deep features (1: off); for frames from "
                                "one noise (--noise fixed) or one source start: with independent noise a "
                                "neighbour's features belong to another draw")

    @staticmethod
    def check(args):
        if args.cache_interval < 1 or args.cache_frames < 1 or args.cache_branch < 0:
            raise UserError("--cache-interval and --cache-frames must be at least 1, --cache-branch at least 0")
        if args.cache_interval == 1 and args.cache_frames == 1:
            if args.cache_branch != 0:
                raise UserError("--cache-branch sets the shallow branch of --cache-interval or --cache-frames: "
                                "give one of them too")
            return
        flag = "--cache-frames" if args.cache_interval == 1 else "--cache-interval"
        refusals = [
            (args.grid is not None, "--grid: its grid pictures regroup the frames at every step, so no deep "
                                    "feature belongs to one frame"),
            (args.compile, "--compile: the shallow branch calls the UNet's blocks one by one, outside the compiled "
                           "graph"),
            (args.offload != "none", f"--offload {args.offload}: the shallow branch calls the UNet's blocks, "
                                     "which model offloading does not move to the GPU"),
            (args.cache_frames > 1 and (args.feature_bank > 0 or args.token_merge > 0),
             "--feature-bank or --token-merge: their per-step state expects the frames in clip order, and "
             "--cache-frames evaluates key frames first"),
        ]
        for refused, why in refusals:
            if refused:
                raise UserError(f"{flag} cannot run with {why}")

    @classmethod
    def from_args(cls, args, sources):
        if args.cache_interval == 1 and args.cache_frames == 1:
            return None
        check_models(sources.pipe, args.cache_branch)
        restarts = [parse_step(args.copy_step, args.steps)] if args.copy_step is not None else []
        restarts += [parse_step_range(args.diff_steps, args.steps).start] if args.diff_steps else []
        return cls(args.cache_interval, args.cache_branch, args.cache_frames, tuple(sorted(set(restarts))))

    def cost(self, num_frames, num_steps):
        """Full UNet evaluations against the plain run's (all frames from step 0, no restarts)."""
        full_steps, groups = -(-num_steps // self.interval), -(-num_frames // self.frames)
        return full_steps * groups / (num_steps * num_frames)

    def setup(self, info):
        self.keys = group_keys(info.frame_ids, self.frames)
        self.deep, self.sources, self.first_step = {}, {}, None  # deep: pass index -> (branches, C, h', w')

    def plan_evaluations(self, step, computed):
        self.first_step = step if self.first_step is None else self.first_step
        if step in self.restarts:
            self.deep = {}
        fresh = (step - self.first_step) % self.interval == 0
        present = set(computed)
        # a frame reads its key's features where the key runs now or kept some, else its own
        self.sources = {j: self.keys[j] if self.keys[j] in present or self.keys[j] in self.deep else j
                        for j in computed}
        full = {j for j in computed if self.sources[j] == j and (fresh or j not in self.deep)}
        # K > 1: key frames first, so that the others find this step's features; K = 1: the loop's order
        # (the feature bank and token merging rely on it)
        order = sorted(computed, key=lambda j: j not in full) if self.frames > 1 else computed
        return [(list(frames), self.full_models if is_full else self.shallow_models)
                for is_full, frames in itertools.groupby(order, key=lambda j: j in full)]

    def full_models(self, pipe, batch, chunk):
        def keep(deep):  # (branches * B, C, h', w'), rows [branch 0's B frames, branch 1's ...]
            per_frame = deep.unflatten(0, (-1, len(batch)))
            for k in range(len(batch) - len(chunk), len(batch)):  # the chunk's own frames, not planned extras
                self.deep[batch[k]] = per_frame[:, k]

        return FullModels(pipe, self.branch, keep)

    def shallow_models(self, pipe, batch, chunk):
        sources = [self.sources.get(j, j) for j in batch]
        if any(source not in self.deep for source in sources):  # nothing kept for a frame: evaluate in full
            return self.full_models(pipe, batch, chunk)
        return ShallowModels(pipe, self.branch, torch.stack([self.deep[s] for s in sources], dim=1).flatten(0, 1))
