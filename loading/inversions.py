"""The source clip's DDIM inversion (loop/inversion.py), kept on disk so that a sweep inverts each
clip once: keyed, as the pose cache is, by what decides the result (the clip's latents, the
weights, the scheduler, the climb, the source prompt and the control), in $SDVIDEO_CACHE/inversions.

``inverted(pipe, clean_latents, control_maps, request, progress)`` -> (latents, record).
"""
import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass

import numpy as np
from safetensors.torch import load_file, save_file

from common import files
from loading import models
from loop import inversion, pipeline

log = logging.getLogger(__name__)
SAMPLES_PER_TENSOR = 16  # values of each weight tensor in the fingerprint: any training step moves them all


@dataclass
class InversionRequest:
    """What --invert-source asks for; names follow the flags."""

    source_prompt: str
    steps: int  # the denoising steps (--steps): inversion climbs to where they start
    inversion_steps: int
    strength: float
    control: bool  # --inversion-control: the ControlNet with the clip's control maps at cond_scale
    cond_scale: float | list
    batch_size: int
    models: dict  # the model flags (--model, --base, --lora, ...), beside the weights' fingerprint


def weights_fingerprint(*modules):
    """sha256 of every weight tensor's name, shape and a strided sample of its values."""
    digest = hashlib.sha256()
    for module in modules:
        for name, weights in module.state_dict().items():
            digest.update(f"{name}{tuple(weights.shape)}".encode())
            if weights.device.type != "meta":  # sequential offload keeps some weights elsewhere
                flat = weights.detach().flatten()
                digest.update(flat[::max(1, flat.numel() // SAMPLES_PER_TENSOR)].float().cpu().numpy().tobytes())
    return digest.hexdigest()


def array_hash(array):
    array = np.ascontiguousarray(array)
    return hashlib.sha256(array.tobytes() + str(array.shape).encode()).hexdigest()


def cache_path(pipe, clean_latents, control_maps, request, schedule):
    modules = [pipe.unet, pipe.text_encoder] + ([pipe.controlnet] if request.control else [])
    key = json.dumps({"latents": array_hash(clean_latents.float().cpu().numpy()),
                      "weights": weights_fingerprint(*modules), "scheduler": dict(pipe.scheduler.config),
                      "climb": asdict(schedule), "dtype": str(pipe.unet.dtype),
                      "control": array_hash(control_maps) if request.control else None,
                      "scale": request.cond_scale if request.control else None, "prompt": request.source_prompt,
                      "models": request.models},
                     sort_keys=True, default=str)
    name = hashlib.sha256(key.encode()).hexdigest()[:24] + ".safetensors"
    return os.path.join(models.cache_dir(), "inversions", name)


def inverted(pipe, clean_latents, control_maps, request, progress=True):
    """The clip's latents (F, 4, h, w) inverted to where denoising starts, float32 on the CPU, and
    what run.json records of it (the climb's evaluations per frame, whether they came from the cache)."""
    schedule = inversion.inversion_schedule(pipe.scheduler, request.steps, request.inversion_steps, request.strength)
    path = cache_path(pipe, clean_latents, control_maps, request, schedule)
    from_cache = os.path.isfile(path)
    if from_cache:
        log.info("inversion: reusing %s", path)
        latents = load_file(path)["latents"]
    else:
        config = pipeline.GenerationConfig(prompt=request.source_prompt, guidance=1.0)
        text_embeds = pipeline.encode_prompt(pipe, config)  # (1, L, D): inversion runs without guidance
        scale = request.cond_scale if request.control else 0.0
        latents = inversion.invert(pipe, clean_latents, control_maps, text_embeds, schedule, scale,
                                   request.batch_size, pipeline.LoopStats(), progress)
        latents = latents.cpu().contiguous()  # as the cache gives it back: a layout of its own changes the sums
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with files.atomic_path(path) as tmp:
            save_file({"latents": latents}, tmp)
    record = {"steps": request.inversion_steps, "timesteps": schedule.timesteps,
              "source_prompt": request.source_prompt, "control": request.control,
              "unet_evals_per_frame": len(schedule.timesteps),
              "controlnet_evals_per_frame": len(schedule.timesteps) if request.control else 0,
              "from_cache": from_cache, "cache": path}
    return latents, record
