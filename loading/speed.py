"""Speed and memory options on a loaded pipeline (docs/speed.md): the attention backend, the
memory layout, ControlNet conditioning-embedding reuse, torch.compile, VAE slicing and tiling, and
accelerate's offloading. ``models.load_pipeline`` applies them from its ``ModelSpec``.
"""
import torch
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

from common.errors import UserError
from loop import predict


def enable_offload(pipe, mode, device):
    """accelerate's offloading through diffusers: ``model`` moves one whole model at a time to
    ``device`` when it runs (the ControlNet and UNet stay while the loop alternates them: the
    ControlNet is outside the offload chain), ``sequential`` one layer at a time (least memory,
    slowest). The loop then runs on ``pipe._execution_device``."""
    if device.type == "cuda" and device.index is None:  # this process's GPU (accelerate sets it per process)
        device = torch.device("cuda", torch.cuda.current_device())
    if mode == "model":
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.enable_sequential_cpu_offload(device=device)


def apply_speed_options(pipe, spec):
    """Attention backend, memory layout, conditioning-embedding reuse, torch.compile and VAE
    slicing/tiling, in place."""
    if spec.attention == "xformers":
        try:
            pipe.enable_xformers_memory_efficient_attention()
        except (ImportError, ModuleNotFoundError, ValueError, NotImplementedError) as error:
            raise UserError(f"--attention xformers: {str(error).splitlines()[0]}; install xformers "
                            "for your torch and CUDA, or use --attention sdpa") from None
    else:
        processor = AttnProcessor2_0 if spec.attention == "sdpa" else AttnProcessor
        for model in (pipe.unet, *predict.controlnets(pipe)):
            model.set_attn_processor(processor())
    if spec.channels_last:
        for model in (pipe.unet, *predict.controlnets(pipe)):
            model.to(memory_format=torch.channels_last)
    if spec.reuse_control_embedding:
        predict.reuse_control_embedding(pipe)
    if spec.vae_slicing:
        pipe.vae.enable_slicing()
    if spec.vae_tiling:
        pipe.vae.enable_tiling()
    if spec.compile:
        # compiled once per input shape; the loop's chunks keep shapes few (full chunks and one remainder)
        pipe.unet = torch.compile(pipe.unet)
        pipe.controlnet = torch.compile(pipe.controlnet)
