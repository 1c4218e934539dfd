"""Convert an original-format ControlNet checkpoint (.ckpt/.pth/.safetensors) into a diffusers folder.

    python convert_original_controlnet_to_diffusers.py --checkpoint_path control_v11p_sd21_openpose.ckpt \
        --original_config_file ./cldm_v21.yaml --image_size 512 --device cuda --dump_path ./controlnet-openpose-sd21

A thin wrapper around diffusers' own ``download_controlnet_from_original_ckpt``, with three things
added: pickles are loaded only with ``torch.load(weights_only=True)`` (a .ckpt can run code when
unpickled; ``--allow-unsafe-pickle`` is the explicit way past a refusal), the config is checked
against the checkpoint first so a mismatch names the first key or shape that disagrees, and the
folder is written under a temporary name, loaded back, and only then renamed into place.
``convert_to_folder`` is the entry point sdvideo uses for ``--controlnet X.ckpt``.
"""
import argparse
import logging
import os
import pickle
import shutil
import sys
import tempfile

import torch
import yaml
from accelerate import init_empty_weights
from diffusers import ControlNetModel
from diffusers.pipelines.stable_diffusion.convert_from_ckpt import (
    convert_ldm_unet_checkpoint,
    create_unet_diffusers_config,
    download_controlnet_from_original_ckpt,
)
from diffusers.utils import logging as diffusers_logging
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from common import files
from common.errors import UserError

log = logging.getLogger("convert")

SAFETENSORS = ".safetensors"
CONTROL_PREFIX = "control_model."
BARE_KEY = "time_embed.0.weight"  # present at the top level when the ControlNet's keys carry no prefix


def load_state_dict(path, allow_unsafe_pickle=False):
    """Tensors of a checkpoint, unwrapped from any nesting under "state_dict" -> {name: tensor}."""
    if not os.path.isfile(path):
        raise UserError(f"checkpoint not found: {path}")
    if path.endswith(SAFETENSORS):
        try:
            return load_file(path)
        except (SafetensorError, OSError) as error:
            raise UserError(f"{path} is not a readable safetensors file ({error})") from None
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=not allow_unsafe_pickle)
    except pickle.UnpicklingError as error:
        if "weights_only" in str(error) or "Weights only" in str(error):
            raise UserError(
                f"{path} holds Python objects beyond tensors, and unpickling them can run arbitrary code; "
                "convert it only if you trust its source, with --allow-unsafe-pickle") from None
        raise UserError(f"{path} is not a PyTorch checkpoint ({error})") from None
    except Exception as error:  # arbitrary bytes fail in many ways inside torch.load; all mean "not a checkpoint"
        reason = (str(error).splitlines() or [type(error).__name__])[0]
        raise UserError(f"{path} is not a PyTorch checkpoint ({reason})") from None
    while isinstance(checkpoint, dict) and "state_dict" in checkpoint:
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, dict):
        raise UserError(f"{path} holds a {type(checkpoint).__name__}, not a dict of weights")
    return {k: v for k, v in checkpoint.items() if isinstance(v, torch.Tensor)}


def read_config(path):
    """The original (LDM) yaml as a dict; it must have a control_stage_config."""

    if not os.path.isfile(path):
        raise UserError(f"config not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            config = yaml.safe_load(f)
        config["model"]["params"]["control_stage_config"]["params"]
    except (yaml.YAMLError, KeyError, TypeError) as error:
        raise UserError(f"{path} is not a ControlLDM config with model.params.control_stage_config ({error})") from None
    return config


def check_fits(state_dict, original_config, image_size, config_path):
    """Raise UserError naming the first ControlNet weight missing or shaped differently from the config."""

    if BARE_KEY not in state_dict and not any(k.startswith(CONTROL_PREFIX) for k in state_dict):
        raise UserError(f"the checkpoint has no ControlNet weights (no '{CONTROL_PREFIX}*' keys, no bare '{BARE_KEY}')")
    config = create_unet_diffusers_config(original_config, image_size=image_size, controlnet=True)
    config.pop("sample_size")
    try:
        converted = convert_ldm_unet_checkpoint(dict(state_dict), config, controlnet=True,
                                                skip_extract_state_dict=BARE_KEY in state_dict)
    except KeyError as error:
        raise UserError(f"checkpoint does not fit {config_path}: the config's layout needs weight {error}, "
                        "which the checkpoint lacks") from None
    with init_empty_weights():
        expected = ControlNetModel(**config).state_dict()
    for name, tensor in expected.items():
        if name not in converted:
            raise UserError(f"checkpoint does not fit {config_path}: no weight for {name}")
        if tuple(converted[name].shape) != tuple(tensor.shape):
            raise UserError(f"checkpoint does not fit {config_path}: {name} is {tuple(converted[name].shape)} "
                            f"in the checkpoint but {tuple(tensor.shape)} in the config")


def convert(checkpoint_path, config_path, image_size=512, extract_ema=False, upcast_attention=False,
            allow_unsafe_pickle=False):
    """Original ControlNet checkpoint + LDM yaml -> diffusers ControlNetModel (fp32, CPU)."""

    original_config = read_config(config_path)
    state_dict = load_state_dict(checkpoint_path, allow_unsafe_pickle)
    check_fits(state_dict, original_config, image_size, config_path)
    with tempfile.TemporaryDirectory() as folder:
        # diffusers' function would torch.load a pickle itself; hand it the checked tensors as
        # safetensors instead, so nothing is unpickled outside load_state_dict.
        safe_path = os.path.join(folder, "controlnet.safetensors")
        save_file({k: v.contiguous() for k, v in state_dict.items()}, safe_path)
        del state_dict
        return download_controlnet_from_original_ckpt(
            safe_path, config_path, image_size=image_size, extract_ema=extract_ema,
            upcast_attention=upcast_attention, device="cpu", from_safetensors=True)


def convert_to_folder(checkpoint_path, config_path, dump_path, image_size=512, extract_ema=False,
                      upcast_attention=False, half=False, to_safetensors=True, allow_unsafe_pickle=False,
                      overwrite=True):
    """Convert and save under ``dump_path`` via a temporary folder; returns the reloaded model."""

    dump_path = os.path.normpath(dump_path)
    if os.path.exists(dump_path) and not overwrite:
        raise UserError(f"--dump_path {dump_path} exists; pass --overwrite to replace it")
    if os.path.isfile(dump_path):
        raise UserError(f"--dump_path {dump_path} is a file; give a folder path")
    files.check_writable(dump_path, "--dump_path")  # before the (long) conversion, not after
    controlnet = convert(checkpoint_path, config_path, image_size, extract_ema, upcast_attention, allow_unsafe_pickle)
    if half:
        controlnet = controlnet.to(torch.float16)
    parent = os.path.dirname(dump_path) or "."
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".converting-", dir=parent)
    try:
        controlnet.save_pretrained(tmp, safe_serialization=to_safetensors)
        reloaded = ControlNetModel.from_pretrained(tmp, dtype=torch.float16 if half else torch.float32)
        if os.path.exists(dump_path):
            shutil.rmtree(dump_path)
        os.rename(tmp, dump_path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return reloaded


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--checkpoint_path", required=True, help="original .ckpt/.pth or .safetensors")
    parser.add_argument("--original_config_file", default="cldm_v21.yaml", help="the ControlLDM yaml it was trained with")
    parser.add_argument("--dump_path", required=True, help="output diffusers folder")
    parser.add_argument("--image_size", type=int, default=512, help="the model's training resolution")
    parser.add_argument("--device", default="cpu",
                        help="accepted for the original command line; conversion runs on the CPU, where it is fast")
    parser.add_argument("--to_safetensors", action=argparse.BooleanOptionalAction, default=True,
                        help="write model.safetensors (--no-to_safetensors writes a PyTorch .bin)")
    parser.add_argument("--half", action="store_true", help="save in fp16")
    parser.add_argument("--upcast_attention", action="store_true", help="compute attention in fp32 (SD 2.1 at 768)")
    parser.add_argument("--extract_ema", action="store_true", help="take the EMA weights where there are both")
    parser.add_argument("--allow-unsafe-pickle", "--allow_unsafe_pickle", dest="allow_unsafe_pickle",
                        action="store_true", help="unpickle a checkpoint that weights_only loading refuses (runs its code)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --dump_path")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    diffusers_logging.set_verbosity_error()
    try:
        if args.image_size <= 0:
            raise UserError("--image_size must be positive")
        model = convert_to_folder(args.checkpoint_path, args.original_config_file, args.dump_path,
                                  args.image_size, args.extract_ema, args.upcast_attention, args.half,
                                  args.to_safetensors, args.allow_unsafe_pickle, args.overwrite)
    except UserError as error:
        print(f"convert: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # disk full, read-only: the temporary folder is gone, --dump_path untouched
        print(f"convert: error: cannot write {args.dump_path} ({error.strerror or error}); free space or choose "
              "another --dump_path", file=sys.stderr)
        return 2
    parameters = sum(p.numel() for p in model.parameters())
    log.info("saved a diffusers ControlNet to %s: %.1fM parameters, %s", args.dump_path, parameters / 1e6,
             next(model.parameters()).dtype)
    return 0


if __name__ == "__main__":
    sys.exit(main())
