"""The user's own weights on the base model: LoRAs and textual-inversion embeddings, through
diffusers' own loaders (``load_lora_weights`` + ``set_adapters``, ``load_textual_inversion``),
checked against the base before they change it, and described for run.json.

``--lora PATH_OR_ID[:SCALE]`` and ``--embedding PATH_OR_ID[:TOKEN]`` are both repeatable; a
source is a file, a folder or a hub id in the Hugging Face cache.
"""
import os
import re

from common import files
from common.errors import UserError

LORA_WEIGHTS = "pytorch_lora_weights.safetensors"  # diffusers' name for a LoRA in a folder
LORA_KEY = re.compile(r"(unet|text_encoder)\.(.*)\.(lora_A|lora_B|lora\.down|lora\.up)\.weight$")


def parse_lora(value):
    """"x.safetensors:0.8" -> ("x.safetensors", 0.8); no scale -> 1.0."""
    source, _, scale = value.rpartition(":")
    try:
        return (source, float(scale)) if source else (value, 1.0)
    except ValueError:
        return value, 1.0


def parse_embedding(value):
    """"emb.safetensors:<golfer>" -> ("emb.safetensors", "<golfer>"); no token -> the file's own."""
    source, _, token = value.rpartition(":")
    if source and token and not any(c in token for c in "/\\"):
        return source, token
    return value, None


def weight_file(source, default_name=None):
    """The local file a source names (a file, or the default file in a folder), or None (a hub id)."""
    if os.path.isfile(source):
        return source
    if os.path.isdir(source):
        candidates = [default_name] if default_name else []
        candidates += sorted(f for f in os.listdir(source) if f.endswith((".safetensors", ".bin")))
        return next((os.path.join(source, f) for f in candidates if f and os.path.isfile(os.path.join(source, f))),
                    None)
    return None


def check_source(flag, source, default_name=None):
    """A local source must exist; refuse before any model loads."""
    if files.looks_like_path(source) and weight_file(source, default_name) is None:
        raise UserError(f"{flag} {source}: no weights file there; give a .safetensors file, a folder holding one, "
                        "or a hub id in the Hugging Face cache")


def lora_misfit(pipe, state_dict):
    """The first key (sorted) of a LoRA in diffusers/PEFT form that names no layer of the base's UNet
    or text encoder, or whose low-rank shape does not fit that layer; None if every key fits."""
    models = {"unet": pipe.unet, "text_encoder": pipe.text_encoder}
    for key in sorted(state_dict):
        match = LORA_KEY.match(key)
        if match is None:
            continue  # another layout: diffusers converts or refuses it
        prefix, path, part = match.groups()
        try:
            weight = models[prefix].get_submodule(path).weight
        except AttributeError:
            return key
        down = part in ("lora_A", "lora.down")  # down: (rank, in, ...), up: (out, rank, ...)
        if state_dict[key].shape[1 if down else 0] != weight.shape[1 if down else 0]:
            return key
    return None


def load_loras(pipe, loras, local_files_only=False):
    """Load each (source, scale) as its own adapter and weight them; a LoRA that does not fit the
    base is refused with the first key that does not fit."""
    names = []
    for index, (source, scale) in enumerate(loras):
        check_source("--lora", source, LORA_WEIGHTS)
        path = weight_file(source, LORA_WEIGHTS)
        location, extra = (os.path.dirname(path), {"weight_name": os.path.basename(path)}) if path else (source, {})
        try:
            state_dict, _ = pipe.lora_state_dict(location, local_files_only=local_files_only, **extra)
        except (OSError, ValueError, KeyError) as error:
            raise UserError(f"--lora {source}: cannot read it as a LoRA ({str(error).splitlines()[0]})") from None
        misfit = lora_misfit(pipe, state_dict)
        if misfit is not None:
            raise UserError(f"--lora {source} does not fit this base model: its weight '{misfit}' has no layer "
                            "of that name and shape here (a LoRA for another architecture, e.g. SD1.5 against "
                            "SD2.1?)")
        name = f"lora{index}"
        try:
            pipe.load_lora_weights(location, adapter_name=name, local_files_only=local_files_only, **extra)
        except (ValueError, RuntimeError, KeyError) as error:
            raise UserError(f"--lora {source} does not fit this base model: {str(error).splitlines()[0]}") from None
        loaded = {n for adapters in pipe.get_list_adapters().values() for n in adapters}
        if name not in loaded:
            raise UserError(f"--lora {source}: none of its weights fit this base's UNet or text encoder")
        names.append(name)
    if names:
        pipe.set_adapters(names, adapter_weights=[scale for _, scale in loras])


def load_embeddings(pipe, embeddings, local_files_only=False):
    """Load each (source, token) textual-inversion embedding into the tokenizer and text encoder."""
    for source, token in embeddings:
        check_source("--embedding", source)
        path = weight_file(source)
        location = path or source
        try:
            pipe.load_textual_inversion(location, token=token, local_files_only=local_files_only)
        except (ValueError, OSError, KeyError, RuntimeError) as error:
            raise UserError(f"--embedding {source} does not fit this base's text encoder: "
                            f"{str(error).splitlines()[0]}") from None


def describe(loras, embeddings):
    """run.json's record of the user's weights: source, scale or token, and the file's hash."""
    def digest(source, default_name=None):
        path = weight_file(source, default_name)
        return files.file_hash(path) if path else None

    return {"loras": [{"source": s, "scale": w, "sha256": digest(s, LORA_WEIGHTS)} for s, w in loras],
            "embeddings": [{"source": s, "token": t, "sha256": digest(s)} for s, t in embeddings]}

