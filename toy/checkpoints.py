"""A pipeline from a toy training folder's checkpoints, mid-training: what the attention probe
judges a toy world 3 candidate on after its UNet's first ~1000 steps (issue 34), before the
budget goes into the rest of the training.
"""
import os

import torch

from loading import builtin
from toy import batches
from toy.train_toy import assemble, build_models, make_controlnet, set_scaling_factor


def _state(work, name):
    return torch.load(os.path.join(work, f"{name}.pt"), map_location="cpu", weights_only=False)


def pipeline_from_work(work, size=128, control=True):
    """The VAE, UNet + text encoder and (where trained, and ``control``) ControlNet saved in ``work``
    as a pipeline; without a trained ControlNet, an untrained one from the UNet, whose zero output
    convolutions leave the UNet alone (the pose is then not followed). -> (pipeline, UNet step)."""
    unet_state = _state(work, "unet")
    levels = unet_state["config"].get("unet_levels", 3)
    tokenizer = builtin.build_tiny_tokenizer()
    vae, text_encoder, unet = build_models(tokenizer, size, levels)
    vae.load_state_dict(_state(work, "vae")["modules"]["vae"])
    set_scaling_factor(vae, batches.swing_poses(size), size)
    unet.load_state_dict(unet_state["modules"]["unet"])
    text_encoder.load_state_dict(unet_state["modules"]["text_encoder"])
    controlnet = make_controlnet(unet, vae)
    if control and os.path.isfile(os.path.join(work, "controlnet.pt")):
        controlnet.load_state_dict(_state(work, "controlnet")["modules"]["controlnet"])
    prediction = unet_state["config"].get("prediction", "epsilon")  # recorded where not epsilon
    pipe = assemble(vae, text_encoder, tokenizer, unet, controlnet, prediction)
    for module in (vae, text_encoder, unet, controlnet):
        module.requires_grad_(False).eval()
    return pipe, unet_state["step"]
