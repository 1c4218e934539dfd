"""Attention processors that change what self-attention reads: Text2Video-Zero's cross-frame
attention and FLATTEN's trajectory attention (its cheap variant).

Each wraps whatever processor diffusers had installed (SDPA, classic, xformers) and is installed
through ``set_attn_processor``, diffusers' own seam; the technique that installs it (planners.py)
hands it what it needs for the batch (reference rows, trajectories) through the
``cross_attention_kwargs`` of the model call. Where that is absent, the inner processor runs.
"""
import torch


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
