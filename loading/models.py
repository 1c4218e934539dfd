"""Model loading: Stable Diffusion + ControlNet as one diffusers pipeline object, the scheduler,
device and dtype. ``load_pipeline`` is the entry point (the toy and tiny models are builtin.py's).
The pipeline object is a container here: sdvideo's own loop (loop/pipeline.py) uses its parts and its
``encode_prompt``, so prompts, control images and decoding match diffusers exactly.
"""
import argparse
import contextlib
import functools
import logging
import os
import warnings
from dataclasses import dataclass, replace

import huggingface_hub
import numpy as np
import torch
import yaml
from diffusers import (
    AutoencoderTiny,
    ControlNetModel,
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    LCMScheduler,
    MultiControlNetModel,
    StableDiffusionControlNetPipeline,
    TCDScheduler,
    UNet2DConditionModel,
    UniPCMultistepScheduler,
)

import convert_original_controlnet_to_diffusers as converter
from common import files
from common.errors import UserError
from loading import adapters, builtin, speed

log = logging.getLogger(__name__)

DEFAULT_BASE = "stabilityai/stable-diffusion-2-1-base"
DEFAULT_CONTROLNET = "thibaud/controlnet-sd21-openpose-diffusers"
TINY = "tiny"
TOY = "toy"  # toy world 2 (128 px)
TOY64 = "toy64"  # the first toy world (64 px)
TINY_VAE = "madebyollin/taesd"  # TAESD: diffusers' AutoencoderTiny for SD 1.x/2.x latents
SCHEDULERS = {
    "ddim": DDIMScheduler,
    "dpm++": DPMSolverMultistepScheduler,
    "euler": EulerDiscreteScheduler,
    "euler-a": EulerAncestralDiscreteScheduler,
    "unipc": UniPCMultistepScheduler,
    "lcm": LCMScheduler,  # LCM and LCM-LoRA, 1-8 steps
    "tcd": TCDScheduler,  # TCD-LoRA, 1-8 steps
    "model": None,  # the class the base folder ships (SD-Turbo: Euler, trailing timestep spacing)
}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
CHECKPOINT_EXTENSIONS = (".ckpt", ".pth", ".pt", ".safetensors")
# Stable Diffusion's training noise schedule, which every SD 1.x/2.x scheduler config carries.


@dataclass
class ModelSpec:
    """What to load: ``tiny`` or a base and a ControlNet (hub ids, folders, or a checkpoint file)."""

    model: str | None = None  # "tiny" (built-in random model), "toy" or "toy64" (the trained toy worlds), else None
    base: str = DEFAULT_BASE
    controlnet: str = DEFAULT_CONTROLNET
    controlnet_config: str = "cldm_v21.yaml"
    scheduler: str = "ddim"
    vae: str | None = None  # an AutoencoderTiny (folder or hub id) for decoding and encoding, else the base's
    dtype: str = "fp32"
    device: str = "auto"
    local_files_only: bool = False
    prediction_type: str | None = None  # tiny model only: "epsilon" or "v_prediction"
    attention: str = "sdpa"  # "sdpa", "classic" or "xformers"
    channels_last: bool = False
    compile: bool = False
    vae_slicing: bool = False
    vae_tiling: bool = False
    offload: str = "none"  # "model" or "sequential": weights in CPU memory, moved to the GPU as used
    reuse_control_embedding: bool = True
    loras: tuple = ()  # (source, scale) pairs (adapters.load_loras)
    extra_controlnets: tuple = ()  # the ControlNets of --control's extra controls, in order
    embeddings: tuple = ()  # (source, token or None) pairs (adapters.load_embeddings)


def pick_device(name):
    """``auto`` -> cuda, then mps, then cpu; a named device must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA GPU is visible to torch; use --device cpu or install CUDA torch")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UserError("--device mps: Apple MPS is not available here; use --device cpu")
    return torch.device(name)


def parse_vae(value):
    """--vae: "full" -> None (the base's own), "tiny" -> TINY_VAE, "tiny=PATH_OR_ID" -> that."""
    kind, _, source = value.partition("=")
    if kind == "full" and not source:
        return None
    if kind == "tiny":
        return source or TINY_VAE
    raise argparse.ArgumentTypeError(f"{value!r}: use full, tiny or tiny=PATH_OR_ID")


def make_scheduler(name, scheduler):
    """The --scheduler choice built from the loaded scheduler's config (keeps prediction_type,
    timestep spacing...); "model" keeps the loaded scheduler itself."""
    return scheduler if SCHEDULERS[name] is None else SCHEDULERS[name].from_config(scheduler.config)


def load_pipeline(spec):
    """Load models per ``spec`` -> StableDiffusionControlNetPipeline on its device and dtype."""
    device, dtype = pick_device(spec.device), DTYPES[spec.dtype]
    if spec.model == TINY:
        pipe = builtin.build_tiny_pipeline(spec.prediction_type or "epsilon")
    elif spec.model in builtin.TOY_DIRS:
        pipe = builtin.load_toy_pipeline(builtin.TOY_DIRS[spec.model])
    else:
        for name, what in ((spec.base, "base model"), (spec.controlnet, "ControlNet")):
            if files.looks_like_path(name) and not os.path.exists(name):
                raise UserError(f"{what} path not found: {name}; pass a diffusers folder, a checkpoint or a hub id")
        check_compatible(spec)
        controlnet = _load_controlnet(spec, dtype)
        pipe = _from_pretrained(StableDiffusionControlNetPipeline, spec.base, "base model",
                                spec.local_files_only, controlnet=controlnet, dtype=dtype,
                                safety_checker=None, feature_extractor=None,
                                requires_safety_checker=False)
    if spec.extra_controlnets:  # diffusers' own container: residuals summed, each at its own scale
        pipe.controlnet = MultiControlNetModel([pipe.controlnet, *_extra_controlnets(spec, dtype)])
    pipe.scheduler = make_scheduler(spec.scheduler, pipe.scheduler)
    if pipe.unet.config.get("time_cond_proj_dim") is not None:
        raise UserError("this base's UNet takes a guidance embedding (an LCM-distilled UNet, time_cond_proj_dim), "
                        "which sdvideo does not feed; use its LCM-LoRA on the plain base (--lora) instead")
    if spec.vae:
        pipe.vae = load_tiny_vae(spec.vae, pipe, dtype, spec.local_files_only)
    pipe.set_progress_bar_config(disable=True)
    adapters.load_embeddings(pipe, spec.embeddings, spec.local_files_only)
    adapters.load_loras(pipe, spec.loras, spec.local_files_only)
    if spec.offload != "none":
        if device.type == "cpu":
            raise UserError(f"--offload {spec.offload} moves weights from CPU memory to a GPU as they are used; "
                            "this run is on the CPU, where they already are: drop --offload")
        if spec.compile:
            raise UserError("--compile and --offload do not work together (offloading hooks break the "
                            "compiled graphs); choose one")
        pipe = pipe.to(dtype=dtype) if pipe.unet.dtype != dtype else pipe
        speed.apply_speed_options(pipe, spec)
        speed.enable_offload(pipe, spec.offload, device)
        return pipe
    # cast only when needed: diffusers warns on every cast, even to the dtype a model already has
    pipe = pipe.to(device=device, dtype=dtype) if pipe.unet.dtype != dtype else pipe.to(device)
    speed.apply_speed_options(pipe, spec)
    return pipe


def load_tiny_vae(source, pipe, dtype, local_files_only):
    """An AutoencoderTiny (TAESD) in place of the base's VAE, checked against the base from its config
    before its weights load: latent channels and downsampling factor."""
    if files.looks_like_path(source) and not os.path.exists(source):
        raise UserError(f"--vae tiny={source}: path not found; pass an AutoencoderTiny folder or hub id")
    config = _read_config(AutoencoderTiny, source, local_files_only, "tiny VAE")
    if config is not None:
        factor = 2 ** (len(config["encoder_block_out_channels"]) - 1)
        channels = config.get("latent_channels", 4)
        if (factor, channels) != (pipe.vae_scale_factor, pipe.unet.config.in_channels):
            raise UserError(f"--vae tiny={source} does not fit the base: it downsamples by {factor} to {channels} "
                            f"channels, the base's latents are {pipe.vae_scale_factor}x, "
                            f"{pipe.unet.config.in_channels} channels (TAESD {TINY_VAE} fits SD 1.x/2.x)")
    return _from_pretrained(AutoencoderTiny, source, "tiny VAE", local_files_only, dtype=dtype).eval()


@contextlib.contextmanager
def _hub_notes_hidden():
    """Here only: huggingface_hub's deprecation notes about diffusers' own calls."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module="huggingface_hub")
        yield


HUB_PROBE_TIMEOUT = 5.0  # seconds: how long an uncached hub id waits for the hub before the one-line error


@functools.lru_cache(maxsize=None)
def _hub_reachable(name, what):
    """Whether a hub id that is not in the cache can be downloaded: one metadata request, no retries
    (huggingface_hub's downloads retry for over a minute, warning each time). An unreachable hub
    is one line naming the command that fetches it; a missing repository is left to the load."""
    try:
        huggingface_hub.HfApi().model_info(name, timeout=HUB_PROBE_TIMEOUT)
    except (huggingface_hub.errors.RepositoryNotFoundError, huggingface_hub.errors.RevisionNotFoundError):
        return True
    except Exception as error:  # connection refused, DNS, proxy, timeout, offline mode: no hub from here
        reason = str(error).strip().splitlines()[0][:120] if str(error).strip() else type(error).__name__
        raise UserError(f"{what} '{name}' is not in the Hugging Face cache and the hub cannot be reached ({reason}); "
                        f"fetch it where the hub is reachable with `hf download {name}`, then run with "
                        "--local-files-only (or pass a local diffusers folder)") from None
    return True


def hub_local_only(name, what, local_files_only):
    """local_files_only for one load: as asked; True for a hub id found in the cache (no network
    needed); else after checking that the hub answers (``_hub_reachable``)."""
    if local_files_only or files.looks_like_path(name):
        return local_files_only
    for filename in ("model_index.json", "config.json", "unet/config.json"):
        if isinstance(huggingface_hub.try_to_load_from_cache(name, filename), str):
            return True
    _hub_reachable(name, what)
    return False


def _from_pretrained(cls, name, what, local_files_only, **kwargs):
    """cls.from_pretrained with missing weights turned into one actionable line."""
    if files.looks_like_path(name) and not os.path.isdir(name):
        raise UserError(f"{what} {name} is not a folder; pass a diffusers folder or a hub id")
    local_files_only = hub_local_only(name, what, local_files_only)
    try:
        with _hub_notes_hidden():
            return cls.from_pretrained(name, local_files_only=local_files_only, **kwargs)
    except (OSError, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(
            f"cannot load {what} '{name}' ({reason[:200]}); download it once with "
            f"`hf download {name}` where the hub is reachable, or pass a local diffusers folder"
        ) from None


def _read_config(cls, name, local_files_only, what="model", **kwargs):
    """A model's config.json (no weights), or None where it cannot be read (the load says why later)."""
    local_files_only = hub_local_only(name, what, local_files_only)
    try:
        with _hub_notes_hidden():
            return dict(cls.load_config(name, local_files_only=local_files_only, **kwargs))
    except (OSError, ValueError):
        return None


def _controlnet_layout(spec):
    """The ControlNet's config fields the base must match: from its config.json, or for an original
    checkpoint from --controlnet-config (ControlLDM's control_stage_config)."""
    if not spec.controlnet.lower().endswith(CHECKPOINT_EXTENSIONS):
        return _read_config(ControlNetModel, spec.controlnet, spec.local_files_only, "ControlNet")
    if not os.path.isfile(spec.controlnet_config):
        return None
    with open(spec.controlnet_config, encoding="utf-8") as f:
        params = yaml.safe_load(f)["model"]["params"]
    control = params["control_stage_config"]["params"]
    return {"cross_attention_dim": control["context_dim"], "in_channels": control["in_channels"],
            "block_out_channels": [control["model_channels"] * m for m in control["channel_mult"]],
            "prediction_type": "v_prediction" if params.get("parameterization") == "v" else None}


def check_compatible(spec):
    """Refuse a ControlNet made for another base from the two configs alone, before any weights
    load: cross-attention width (the text encoder's), block widths, input channels, and for an
    original checkpoint its prediction type."""
    unet = _read_config(UNet2DConditionModel, spec.base, spec.local_files_only, "base model", subfolder="unet")
    control = _controlnet_layout(spec)
    if unet is None or control is None:
        return
    scheduler = _read_config(DDIMScheduler, spec.base, spec.local_files_only, "base model", subfolder="scheduler") or {}
    base = {**unet, "prediction_type": scheduler.get("prediction_type", "epsilon")}
    labels = {"cross_attention_dim": "cross-attention width", "block_out_channels": "block widths",
              "in_channels": "input channels", "prediction_type": "prediction type"}
    for key, label in labels.items():
        theirs, ours = control.get(key), base.get(key)
        if theirs is not None and ours is not None and list(np.atleast_1d(theirs)) != list(np.atleast_1d(ours)):
            raise UserError(f"--controlnet {spec.controlnet} does not fit --base {spec.base}: {label} {theirs} "
                            f"against {ours}; use a ControlNet trained for that base (SD1.5: e.g. "
                            f"lllyasviel/control_v11p_sd15_openpose; SD2.1: {DEFAULT_CONTROLNET})")


def _extra_controlnets(spec, dtype):
    """The extra controls' ControlNets, each checked against the base first; with the tiny model,
    more tiny ControlNets of their own seeds."""
    if spec.model == TINY:
        return [builtin.build_tiny_controlnet(builtin.TINY_SEED + 1 + k) for k in range(len(spec.extra_controlnets))]
    if spec.model in builtin.TOY_DIRS:
        raise UserError(f"--model {spec.model} has a pose ControlNet only: drop the extra controls of --control")
    nets = []
    for source in spec.extra_controlnets:
        check_compatible(replace(spec, controlnet=source))
        nets.append(_from_pretrained(ControlNetModel, source, "ControlNet", spec.local_files_only, dtype=dtype))
    return nets


def _load_controlnet(spec, dtype):
    """A diffusers ControlNet from a folder/hub id, or an original checkpoint converted and cached."""
    if spec.controlnet.lower().endswith(CHECKPOINT_EXTENSIONS):
        return ControlNetModel.from_pretrained(converted_controlnet_dir(spec), dtype=dtype)
    return _from_pretrained(ControlNetModel, spec.controlnet, "ControlNet", spec.local_files_only,
                            dtype=dtype)


def cache_dir():
    """Where converted checkpoints are kept: $SDVIDEO_CACHE or ~/.cache/sdvideo."""
    return os.environ.get("SDVIDEO_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "sdvideo"))


def converted_controlnet_dir(spec):
    """Convert an original ControlNet checkpoint once, keyed by file and config hash; return the folder."""
    for path, what in ((spec.controlnet, "ControlNet checkpoint"), (spec.controlnet_config, "--controlnet-config")):
        if not os.path.isfile(path):
            raise UserError(f"{what} not found: {path}")
    key = f"{files.file_hash(spec.controlnet)[:16]}-{files.file_hash(spec.controlnet_config)[:8]}"
    folder = os.path.join(cache_dir(), "controlnets", key)
    if not os.path.isfile(os.path.join(folder, "config.json")):
        log.info("converting %s to diffusers (cached in %s)", spec.controlnet, folder)
        converter.convert_to_folder(spec.controlnet, spec.controlnet_config, folder)
    return folder
