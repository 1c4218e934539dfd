"""The models sdvideo has without downloading anything: the toy world's trained SD + ControlNet
(``load_toy_pipeline``: toy world 2 at 128 px in toy_model/, the first toy world at 64 px in
toy_model_64/) and the tiny deterministic random-weight one
(``build_tiny_pipeline``: SD's layout at toy width, for tests and the benchmarks' shapes), with the
byte-level tokenizer both use. ``models.load_pipeline`` loads them for ``--model toy|toy64|tiny``.
"""
import json
import os
import tempfile

import torch
from diffusers import (AutoencoderKL, ControlNetModel, DDIMScheduler, StableDiffusionControlNetPipeline,
                       UNet2DConditionModel)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from common.errors import UserError
from common.files import ROOT

TOY_DIRS = {"toy": os.path.join(ROOT, "toy_model"),  # toy world 2, trained by toy/train_toy.py
            "toy64": os.path.join(ROOT, "toy_model_64")}  # the first toy world (train_toy.py --size 64)
TINY_SEED = 0
TINY_TEXT_DIM = 32
TINY_MAX_TOKENS = 77
POSE_GAIN = 10.0  # the tiny ControlNet's pose features against its latent features
SD_SCHEDULE = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                   num_train_timesteps=1000, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
TINY_BLOCKS = dict(block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8,
                   down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), cross_attention_dim=TINY_TEXT_DIM,
                   attention_head_dim=8, use_linear_projection=True)


def load_toy_pipeline(folder=TOY_DIRS["toy"]):
    """A toy world's trained SD + ControlNet (see toy/toyworld.py and toy/train_toy.py)."""
    if not os.path.isfile(os.path.join(folder, "model_index.json")):
        raise UserError(f"the toy model is missing from {folder}; train it with `make toy-model` "
                        "(python -m toy.train_toy) or restore the folder from git")
    return StableDiffusionControlNetPipeline.from_pretrained(folder, local_files_only=True, safety_checker=None,
                                                             feature_extractor=None, requires_safety_checker=False)


# ---- the tiny model ---------------------------------------------------------------------------

def _byte_level_vocab():
    """CLIP's byte-to-unicode alphabet, each symbol alone and word-final, plus the two specials."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = [256 + n for n in range(256 - len(printable))]
    symbols = [chr(c) for c in printable] + [chr(c) for c in shifted]
    tokens = symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]
    return {token: index for index, token in enumerate(tokens)}


def build_tiny_tokenizer():
    """A CLIPTokenizer over single bytes (no merges), loaded from files written to a temp folder."""
    with tempfile.TemporaryDirectory() as folder:
        with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
            json.dump(_byte_level_vocab(), f)
        with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
            f.write("#version: 0.2\n")
        return CLIPTokenizer.from_pretrained(folder, model_max_length=TINY_MAX_TOKENS)


def _make_pose_matter(controlnet):
    """Untrained, a ControlNet ignores its pose: its output convolutions start at zero (training
    starts from the plain UNet) and, at toy width, default init shrinks the pose signal ~1e4-fold
    through the eight-layer hint encoder. He init there (times POSE_GAIN at its output) and default
    init on the zero convolutions make the tiny model's frames depend on their poses."""
    for module in controlnet.controlnet_cond_embedding.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            torch.nn.init.zeros_(module.bias)
    for module in (controlnet.controlnet_mid_block, *controlnet.controlnet_down_blocks):
        module.reset_parameters()
    controlnet.controlnet_cond_embedding.conv_out.weight.data.mul_(POSE_GAIN)


def build_tiny_controlnet(seed):
    """Another tiny ControlNet (random weights of its own seed) for the tiny model's extra controls."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        controlnet = ControlNetModel(in_channels=4, conditioning_embedding_out_channels=(4, 8, 8, 16), **TINY_BLOCKS)
        _make_pose_matter(controlnet)
    return controlnet.eval()


def build_tiny_pipeline(prediction_type="epsilon"):
    """A deterministic random-weight SD + ControlNet with SD's layout, at toy width.

    The VAE downsamples by 8 and the ControlNet's hint encoder by 8, as in SD, so every size rule
    of the real models holds; the weights are random, so pictures are noise.
    """
    tokenizer = build_tiny_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        unet = UNet2DConditionModel(sample_size=32, in_channels=4, out_channels=4,
                                    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), **TINY_BLOCKS)
        controlnet = ControlNetModel(in_channels=4, conditioning_embedding_out_channels=(4, 8, 8, 16), **TINY_BLOCKS)
        _make_pose_matter(controlnet)
        vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
                            block_out_channels=(8, 8, 16, 16), norm_num_groups=4,
                            down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, scaling_factor=0.18215)
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=TINY_TEXT_DIM, intermediate_size=37,
            num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=TINY_MAX_TOKENS,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id, projection_dim=TINY_TEXT_DIM))
    scheduler = DDIMScheduler(prediction_type=prediction_type, **SD_SCHEDULE)
    return StableDiffusionControlNetPipeline(
        vae=vae.eval(), text_encoder=text_encoder.eval(), tokenizer=tokenizer, unet=unet.eval(),
        controlnet=controlnet.eval(), scheduler=scheduler, safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
