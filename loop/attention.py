"""Attention processors that change what self-attention reads: Text2Video-Zero's cross-frame
attention, FLATTEN's trajectory attention (its cheap variant), StreamV2V's feature bank and
VidToMe's token merging.

Each wraps whatever processor diffusers had installed (SDPA, classic, xformers) and is installed
through ``set_attn_processor``, diffusers' own seam; the technique that installs it (loop/planners.py)
hands it what it needs for the batch (reference rows, trajectories, the batch's frames) through the
``cross_attention_kwargs`` of the model call. Where that is absent, the inner processor runs.
"""
import torch
import torch.nn.functional as F

from loop import tokens


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


def trajectory_attention(query, key, value, trajectories, scale):
    """Self-attention over the frame's own tokens plus the tokens on each token's flow trajectory
    in the batch's other frames, one softmax over both (FLATTEN, cheap variant).

    query, key (B, heads, N, d), value (B, heads, N, d_v); trajectories (B, B, N) long from
    latent_ops.trajectory_indices (-1: no token) -> (B, heads, N, d_v). Frame by frame, so that
    memory is one frame's (heads, N, N) scores; query and key may be fp32 where value is not (upcast).
    """
    count, heads, tokens, _ = query.shape
    out = value.new_empty(*value.shape)
    for f in range(count):
        index = trajectories[f].to(query.device)  # (B, N): per frame g, the token on p's trajectory
        gather = index.clamp(min=0)[:, None, :, None]
        key_path = key.gather(2, gather.expand(-1, heads, -1, key.shape[-1]))  # (B, heads, N, d)
        value_path = value.gather(2, gather.expand(-1, heads, -1, value.shape[-1]))
        own = query[f] @ key[f].transpose(-1, -2) * scale  # (heads, N, N)
        path = torch.einsum("hnd,bhnd->hnb", query[f], key_path) * scale  # (heads, N, B)
        path = path.masked_fill((index < 0).T[None], float("-inf"))
        weights = torch.cat([own, path], dim=-1).float().softmax(dim=-1).to(value.dtype)
        out[f] = weights[..., :tokens] @ value[f] + torch.einsum("hnb,bhnd->hnd", weights[..., tokens:], value_path)
    return out


class TrajectoryAttnProcessor:
    """Self-attention where each token also attends to the tokens on its flow trajectory in the
    other frames of the batch (FLATTEN, ICLR 2024; ``trajectory_attention``), in the layers whose
    token count matches the trajectories (the highest-resolution attention layers); elsewhere, and
    for cross-attention, the wrapped processor runs unchanged."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 trajectories=None, *args, **kwargs):
        if (encoder_hidden_states is not None or trajectories is None or hidden_states.ndim != 3
                or hidden_states.shape[1] != trajectories.shape[-1] or attn.group_norm is not None
                or attn.spatial_norm is not None):
            return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        residual = hidden_states
        batch, tokens, _ = hidden_states.shape

        def heads(x):  # (batch, N, heads * d) -> (batch, heads, N, d)
            return x.view(batch, tokens, attn.heads, -1).transpose(1, 2)

        query, key, value = (heads(attn.to_q(hidden_states)), heads(attn.to_k(hidden_states)),
                             heads(attn.to_v(hidden_states)))
        if attn.norm_q is not None:
            query, key = attn.norm_q(query), attn.norm_k(key)
        if attn.upcast_attention:  # scores in fp32, as diffusers does for SD2.1-768 (fp16 overflows there)
            query, key = query.float(), key.float()
        frames = trajectories.shape[0]
        # both guidance branches ([uncond, cond]) share the batch's trajectories
        out = torch.cat([trajectory_attention(query[b:b + frames], key[b:b + frames], value[b:b + frames],
                                              trajectories, attn.scale) for b in range(0, batch, frames)])
        out = attn.to_out[1](attn.to_out[0](out.transpose(1, 2).reshape(batch, tokens, -1)))
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def _project(attn, tokens):
    """Queries, keys and values of tokens (..., N, C) -> three (..., heads, N, d)."""
    def heads(x):
        return x.unflatten(-1, (attn.heads, -1)).transpose(-3, -2)

    query, key, value = heads(attn.to_q(tokens)), heads(attn.to_k(tokens)), heads(attn.to_v(tokens))
    if attn.norm_q is not None:
        query, key = attn.norm_q(query), attn.norm_k(key)
    return query, key, value


def _attend(attn, query, key, value):
    """softmax(q k^T * scale) v through torch's SDPA kernel (in fp32 where the layer upcasts, as
    diffusers does for SD2.1-768), then the output projection: (..., heads, N, d), (..., heads, M, d)
    -> (..., N, C)."""
    dtype = value.dtype
    if attn.upcast_attention:
        query, key, value = query.float(), key.float(), value.float()
    out = F.scaled_dot_product_attention(query, key, value, scale=attn.scale).to(dtype)
    return attn.to_out[1](attn.to_out[0](out.transpose(-3, -2).flatten(-2)))


def _plain_self_attention(attn, hidden_states, encoder_hidden_states, marker):
    """True where a bank or merging processor should hand the call to the processor it wraps:
    cross-attention, no plan for this call, or a layer with spatial inputs or norms of its own."""
    return (encoder_hidden_states is not None or marker is None or hidden_states.ndim != 3
            or attn.group_norm is not None or attn.spatial_norm is not None or attn.residual_connection)


class BankState:
    """What StreamV2V's processors share within a pass: the step being denoised and each layer's
    bank per guidance branch and step, the settings, and a seed for the merges."""

    def __init__(self, frames, fusion, threshold, seed):
        self.frames, self.fusion, self.threshold, self.seed = frames, fusion, threshold, seed
        self.step, self.banks = 0, {}


class FeatureBankProcessor:
    """StreamV2V's extended self-attention (Liang et al., ICLR 2025): each frame's self-attention also
    reads the keys and values of earlier frames, kept per layer, guidance branch and step in a bank
    of at most ``frames`` frames' worth of tokens; when a frame more arrives, bank and frame are
    merged ToMe-style into one frame's worth (tokens.merge_random on the keys). Causal: the frames
    of a call are taken one after another in clip order, each sees only those before it. With
    ``fuse`` (StreamV2V's mid and low-resolution decoder layers), a token's output whose cosine
    similarity to its nearest banked output reaches ``threshold`` moves toward it by ``fusion``."""

    def __init__(self, inner, name, state, fuse=False):
        self.inner, self.name, self.state, self.fuse = inner, name, state, fuse

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 batch_frames=None, *args, **kwargs):
        if _plain_self_attention(attn, hidden_states, encoder_hidden_states, batch_frames):
            return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        state, frames = self.state, len(batch_frames)
        query, key, value = _project(attn, hidden_states)  # (B, heads, N, d)
        out = [None] * hidden_states.shape[0]
        order = sorted(range(frames), key=lambda r: int(batch_frames[r]))  # clip order: the bank is causal
        for row in (branch * frames + r for branch in range(hidden_states.shape[0] // frames) for r in order):
            branch, frame = divmod(row, frames)
            bank = state.banks.setdefault((self.name, branch, state.step), {"frames": 0})
            own_key, own_value = key[row], value[row]
            keys = torch.cat([own_key, bank["keys"]], dim=1) if bank["frames"] else own_key
            values = torch.cat([own_value, bank["values"]], dim=1) if bank["frames"] else own_value
            row_out = _attend(attn, query[row], keys, values)  # (N, C)
            fused = row_out
            if self.fuse and state.fusion > 0 and bank["frames"]:
                similarity = tokens.cosine(row_out, bank["outputs"])  # (N, bank)
                best, nearest = similarity.max(dim=-1)
                near = (best >= state.threshold)[:, None]
                blended = (1 - state.fusion) * row_out + state.fusion * bank["outputs"][nearest]
                fused = torch.where(near, blended, row_out)
            out[row] = fused
            self._add(bank, own_key, own_value, row_out, int(batch_frames[frame]))
        out = torch.stack(out)
        return out / attn.rescale_output_factor

    def _add(self, bank, key, value, output, frame_id):
        """Append a frame's keys, values (heads, N, d) and outputs (N, C); past ``frames`` frames,
        merge everything into one frame's worth (N) of tokens."""
        count = output.shape[0]
        if bank["frames"]:
            key, value = torch.cat([bank["keys"], key], dim=1), torch.cat([bank["values"], value], dim=1)
            output = torch.cat([bank["outputs"], output])
        bank.update(keys=key, values=value, outputs=output, frames=bank["frames"] + 1)
        if bank["frames"] <= self.state.frames:
            return
        generator = torch.Generator().manual_seed(self.state.seed * 1_000_003 + self.state.step * 10_007 + frame_id)
        heads = key.shape[0]

        def flat(x):  # (heads, n, d) -> (n, heads * d)
            return x.transpose(0, 1).flatten(1)

        _, (keys, values, outputs) = tokens.merge_random(flat(key), [flat(key), flat(value), output], count, generator)
        bank.update(keys=keys.unflatten(1, (heads, -1)).transpose(0, 1),
                    values=values.unflatten(1, (heads, -1)).transpose(0, 1), outputs=outputs, frames=1)


class MergeState:
    """What VidToMe's processors share within a pass: the settings, the latent's token count (which
    layers merge), a generator for the target frames, and each layer's global tokens of the step."""

    def __init__(self, ratio, chunk, global_ratio, seed):
        self.ratio, self.chunk, self.global_ratio = ratio, chunk, global_ratio
        self.generator = torch.Generator().manual_seed(seed)
        self.latent_tokens, self.step, self.global_tokens = None, 0, {}


class TokenMergeProcessor:
    """VidToMe's token merging (Li et al., CVPR 2024) in the self-attention of the layers at the
    latent's resolution and half of it: the frames of a chunk (``chunk`` frames of the call) are
    joined; a random target frame's tokens are the destination, and the share ``ratio`` of the other
    frames' tokens most like one of them (cosine) is dropped in its favour (local merging,
    tokens.match_to); the chunk's tokens are then matched the same way against the global tokens
    the previous chunk of the step left (``global_ratio``), attention runs once over what remains,
    and every dropped token takes its match's output (unmerging). One matching, made on the
    conditional branch, serves both guidance branches (VidToMe's align_batch)."""

    def __init__(self, inner, name, state):
        self.inner, self.name, self.state = inner, name, state

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 batch_frames=None, *args, **kwargs):
        state = self.state
        if (_plain_self_attention(attn, hidden_states, encoder_hidden_states, batch_frames)
                or 4 * hidden_states.shape[1] < state.latent_tokens):
            return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        frames = len(batch_frames)
        branches = hidden_states.shape[0] // frames
        out = torch.empty_like(hidden_states)
        for start in range(0, frames, state.chunk):
            rows = list(range(start, min(start + state.chunk, frames)))
            chunk = torch.stack([hidden_states[b * frames + r] for b in range(branches) for r in rows])
            out_chunk = self._merged_attention(attn, chunk.unflatten(0, (branches, len(rows))))
            for b in range(branches):
                for k, r in enumerate(rows):
                    out[b * frames + r] = out_chunk[b, k]
        return out / attn.rescale_output_factor

    def _merged_attention(self, attn, chunk):
        """chunk (branches, F, N, C) -> its self-attention output, the same shape, through merging."""
        state = self.state
        branches, frames, count, channels = chunk.shape
        target = int(torch.randint(frames, (1,), generator=state.generator))
        others = [f for f in range(frames) if f != target]
        src, dst = chunk[:, others].flatten(1, 2), chunk[:, target]  # (branches, (F-1) N, C), (branches, N, C)
        kept, merged, nearest = tokens.match_to(src[-1], dst[-1], state.ratio)
        sequence = torch.cat([src[:, kept], dst], dim=1)  # the chunk's merged tokens
        global_tokens = state.global_tokens.get(self.name)
        if global_tokens is not None and state.global_ratio > 0:
            g_kept, g_merged, g_nearest = tokens.match_to(sequence[-1], global_tokens[-1], state.global_ratio)
            joined = torch.cat([sequence[:, g_kept], global_tokens], dim=1)
        else:
            joined = sequence
        state.global_tokens[self.name] = sequence  # the next chunk of this step matches against these
        joined_out = _attend(attn, *_project(attn, joined))  # (branches, L, C)
        if global_tokens is not None and state.global_ratio > 0:
            own, of_global = joined_out[:, :len(g_kept)], joined_out[:, len(g_kept):]
            sequence_out = torch.stack([tokens.unmerge(own[b], of_global[b], g_kept, g_merged, g_nearest,
                                                       sequence.shape[1]) for b in range(branches)])
        else:
            sequence_out = joined_out
        src_out = torch.stack([tokens.unmerge(sequence_out[b, :len(kept)], sequence_out[b, len(kept):], kept, merged,
                                              nearest, src.shape[1]) for b in range(branches)])
        out = torch.empty_like(chunk)
        out[:, target] = sequence_out[:, len(kept):]
        out[:, others] = src_out.unflatten(1, (frames - 1, count))
        return out
