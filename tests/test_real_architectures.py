"""The real SD 2.1 and SD 1.5 architectures run through sdvideo, so the real path cannot rot unseen.

SD2.1-base (epsilon), SD2.1-768 (v-prediction, attention upcast to fp32) and SD1.5 (CLIP ViT-L
text, 768-wide cross-attention, 8-channel heads) with the published model configs (SD2.1: UNet
865M, ControlNet-OpenPose 361M, OpenCLIP-H text encoder 340M; SD1.5: UNet 860M, ControlNet 361M,
text encoder 123M; VAE 83M parameters) and random weights, saved as diffusers folders and loaded by ``sdvideo.py --base
--controlnet`` on the CPU in fp32, two frames of 64x64 at two steps. Weights are random: this
checks shapes, configs, loading and the loop, not pictures.
"""
import json
import os

import pytest
import torch
from diffusers import (AutoencoderKL, ControlNetModel, DDIMScheduler, StableDiffusionControlNetPipeline,
                       UNet2DConditionModel)
from transformers import CLIPTextConfig, CLIPTextModel

import sdvideo
from loading import builtin, models

# stabilityai/stable-diffusion-2-1(-base) unet/config.json and thibaud's SD2.1 OpenPose ControlNet
BLOCKS = dict(block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, cross_attention_dim=1024,
              attention_head_dim=(5, 10, 20, 20), use_linear_projection=True,
              down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",))
TEXT = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
            max_position_embeddings=77, hidden_act="gelu", projection_dim=512)
# stable-diffusion-v1-5 unet/config.json and text_encoder (CLIP ViT-L/14), lllyasviel/control_v11p_sd15_openpose
BLOCKS_15 = dict(BLOCKS, cross_attention_dim=768, attention_head_dim=8, use_linear_projection=False)
TEXT_15 = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
               max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768)
VARIANTS = {"sd21-base": dict(sample_size=64, prediction_type="epsilon", upcast_attention=False),
            "sd21-768": dict(sample_size=96, prediction_type="v_prediction", upcast_attention=True),
            "sd15": dict(sample_size=64, prediction_type="epsilon", upcast_attention=False, blocks=BLOCKS_15,
                         text=TEXT_15)}


def materialise(module, seed):
    """Random weights, fast: built on the meta device, then small normal weights tiled from one block of
    draws, and zero biases (default init of 1.6B parameters takes minutes on 2 cores and a draw per weight
    ~10 s a model; the values do not matter here)."""
    block = torch.empty(1 << 20).normal_(0, 0.02, generator=torch.Generator().manual_seed(seed))
    doubled = torch.cat([block, block])  # doubled[s:s + n] is the block rolled by s, as a view
    module.to_empty(device="cpu")
    with torch.no_grad():
        for index, (name, parameter) in enumerate(module.named_parameters()):
            if parameter.dim() > 1:
                flat, start = parameter.view(-1), 7919 * index % len(block)  # each tensor from its own offset
                for begin in range(0, len(flat), len(block)):
                    piece = flat[begin:begin + len(block)]
                    piece.copy_(doubled[start:start + len(piece)])
            elif name.endswith("weight"):
                parameter.fill_(1.0)
            else:
                parameter.zero_()
        for buffer_name, buffer in module.named_buffers():
            if "position_ids" in buffer_name:
                buffer.copy_(torch.arange(buffer.shape[-1]).expand_as(buffer))
    return module.eval()


FOLDERS = {}  # variant -> its saved base folder, built once a session


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def real_folders(request, tmp_path_factory):
    """(name, base folder, ControlNet folder) of a random-weight SD variant."""
    base = variant_folder(request.param, tmp_path_factory)
    return request.param, base, os.path.join(base, "controlnet")


def variant_folder(name, tmp_path_factory):
    """A variant's diffusers folder (the ControlNet in base/controlnet). SD2.1-768 differs from SD2.1-base
    only in its configs, so it shares base's weight files (links) and writes its own configs."""
    if name not in FOLDERS:
        FOLDERS[name] = derived_768(tmp_path_factory) if name == "sd21-768" else built(name, tmp_path_factory)
    return FOLDERS[name]


def derived_768(tmp_path_factory):
    variant, base = VARIANTS["sd21-768"], variant_folder("sd21-base", tmp_path_factory)
    folder = str(tmp_path_factory.mktemp("sd21-768") / "base")
    changes = {"unet/config.json": dict(sample_size=variant["sample_size"], upcast_attention=True),
               "controlnet/config.json": dict(upcast_attention=True),
               "vae/config.json": dict(sample_size=8 * variant["sample_size"]),
               "scheduler/scheduler_config.json": dict(prediction_type=variant["prediction_type"])}
    for root, _, files in os.walk(base):
        os.makedirs(os.path.join(folder, os.path.relpath(root, base)), exist_ok=True)
        for file in files:
            relative = os.path.relpath(os.path.join(root, file), base)
            if relative in changes:
                with open(os.path.join(base, relative)) as f:
                    config = {**json.load(f), **changes[relative]}
                with open(os.path.join(folder, relative), "w") as f:
                    json.dump(config, f)
            else:
                os.symlink(os.path.join(base, relative), os.path.join(folder, relative))
    return folder


def built(name, tmp_path_factory):
    variant = VARIANTS[name]
    blocks, text = variant.get("blocks", BLOCKS), variant.get("text", TEXT)
    tokenizer = builtin.build_tiny_tokenizer()
    with torch.device("meta"):
        unet = UNet2DConditionModel(sample_size=variant["sample_size"], upcast_attention=variant["upcast_attention"],
                                    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, **blocks)
        controlnet = ControlNetModel(conditioning_embedding_out_channels=(16, 32, 96, 256),
                                     upcast_attention=variant["upcast_attention"], **blocks)
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                            sample_size=8 * variant["sample_size"])
        text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                                                    eos_token_id=tokenizer.eos_token_id,
                                                    pad_token_id=tokenizer.pad_token_id, **text))
    for seed, module in enumerate((unet, controlnet, vae, text_encoder)):
        materialise(module, seed)
    pipe = StableDiffusionControlNetPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, controlnet=controlnet,
        scheduler=DDIMScheduler(prediction_type=variant["prediction_type"], **builtin.SD_SCHEDULE),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    folder = tmp_path_factory.mktemp(name)
    pipe.save_pretrained(str(folder / "base"))  # the ControlNet goes into base/controlnet
    return str(folder / "base")


def test_sdvideo_runs_the_real_architecture_on_the_cpu(real_folders, tmp_path, monkeypatch):
    name, base, controlnet = real_folders
    out = tmp_path / "run"
    loaded, load = [], models.load_pipeline  # the pipeline sdvideo.py loads, looked at below (one 6 GB load, not two)
    monkeypatch.setattr(models, "load_pipeline", lambda spec: loaded.append(load(spec)) or loaded[-1])
    assert sdvideo.main(["--base", base, "--controlnet", controlnet, "--local-files-only", "--device", "cpu",
                         "--height", "64", "--width", "64", "--steps", "2", "--max-frames", "2", "--quiet",
                         "--negative-prompt", "", "--out", str(out)]) == 0
    record = json.loads((out / "run.json").read_text())
    assert record["models"]["prediction_type"] == VARIANTS[name]["prediction_type"]
    assert record["cost"]["unet_evals_per_frame"] == 4 and sorted(os.listdir(out / "frames")) == ["00000.png",
                                                                                                   "00001.png"]
    [pipe] = loaded
    assert pipe.unet.config.upcast_attention == VARIANTS[name]["upcast_attention"]
    assert sum(p.numel() for p in pipe.unet.parameters()) > 850e6  # 865M (SD2.1), 860M (SD1.5)
