"""Attention processors that change what self-attention reads: Text2Video-Zero's cross-frame attention.

``CrossFrameAttnProcessor`` wraps whatever processor diffusers had installed (SDPA, classic,
xformers) and is installed through ``set_attn_processor``, diffusers' own seam; the technique that
installs it (techniques.CrossFrameAttention) hands it the reference rows of the batch through the
``cross_attention_kwargs`` of the model call.
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
