"""The user's own weights (--lora, --embedding) on the tiny model: made here with peft and
diffusers' own savers, loaded through diffusers' loaders, refused in one line when they do not fit."""
import json

import pytest
import torch
from diffusers import StableDiffusionControlNetPipeline
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file, save_file

import sdvideo
from common import files
from loading import adapters, builtin

FAST = ["--model", "tiny", "--height", "64", "--width", "64", "--steps", "3", "--max-frames", "2", "--quiet"]


def run(tmp_path, name, *flags):
    out = tmp_path / name
    code = sdvideo.main([*FAST, *flags, "--out", str(out)])
    return code, out


def frame(out):
    return (out / "frames" / "00001.png").read_bytes()


@pytest.fixture(scope="module")
def lora(tmp_path_factory):
    """A LoRA on the tiny UNet's attention projections with random (non-zero) weights, saved by
    diffusers' save_lora_weights -> its folder."""
    pipe = builtin.build_tiny_pipeline()
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in pipe.unet.named_parameters():
            if "lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    folder = tmp_path_factory.mktemp("lora")
    StableDiffusionControlNetPipeline.save_lora_weights(folder, unet_lora_layers=get_peft_model_state_dict(pipe.unet))
    return folder


@pytest.fixture(scope="module")
def embedding(tmp_path_factory):
    """A textual-inversion file for the token <golfer>, at the tiny text encoder's width."""
    path = tmp_path_factory.mktemp("embedding") / "golfer.safetensors"
    save_file({"<golfer>": torch.randn(builtin.TINY_TEXT_DIM, generator=torch.Generator().manual_seed(1)) * 3}, path)
    return path


def test_flag_values_parse_into_source_and_scale_or_token():
    assert adapters.parse_lora("style.safetensors:0.8") == ("style.safetensors", 0.8)
    assert adapters.parse_lora("owner/style") == ("owner/style", 1.0)
    assert adapters.parse_lora("C:\\loras\\x") == ("C:\\loras\\x", 1.0)
    assert adapters.parse_embedding("emb.pt:<me>") == ("emb.pt", "<me>")
    assert adapters.parse_embedding("emb.pt") == ("emb.pt", None)


def test_a_lora_changes_the_frames_at_scale_1_and_not_at_0(tmp_path, lora):
    assert run(tmp_path, "plain")[0] == 0
    code, zero = run(tmp_path, "zero", "--lora", f"{lora}:0")
    assert code == 0 and frame(zero) == frame(tmp_path / "plain")
    code, full = run(tmp_path, "full", "--lora", str(lora))
    assert code == 0 and frame(full) != frame(tmp_path / "plain")
    record = json.loads((full / "run.json").read_text())["models"]["loras"]
    weights = lora / adapters.LORA_WEIGHTS
    assert record == [{"source": str(lora), "scale": 1.0, "sha256": files.file_hash(str(weights))}]


def test_a_lora_for_another_architecture_is_refused_naming_the_first_key_that_does_not_fit(tmp_path, lora, capsys):
    state = load_file(lora / adapters.LORA_WEIGHTS)
    key = sorted(k for k in state if "lora_A" in k)[0]
    state[key] = torch.zeros(state[key].shape[0], state[key].shape[1] * 2)  # a wider layer than this base has
    wrong = tmp_path / "wrong.safetensors"
    save_file(state, wrong)
    code, out = run(tmp_path, "run", "--lora", str(wrong))
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and f"'{key}'" in err and "does not fit" in err
    assert not out.exists()


def test_a_textual_inversion_token_changes_the_frames_only_where_the_prompt_uses_it(tmp_path, embedding):
    for prompt, name in (("a golfer", "plain"), ("a <golfer> on a course", "token")):
        assert run(tmp_path, name, "--prompt", prompt)[0] == 0
        assert run(tmp_path, name + "-emb", "--prompt", prompt, "--embedding", str(embedding))[0] == 0
    assert frame(tmp_path / "plain-emb") == frame(tmp_path / "plain")
    assert frame(tmp_path / "token-emb") != frame(tmp_path / "token")
    record = json.loads((tmp_path / "token-emb" / "run.json").read_text())["models"]["embeddings"]
    assert record[0]["source"] == str(embedding) and len(record[0]["sha256"]) == 64


@pytest.mark.parametrize("flag", ["--lora", "--embedding"])
def test_missing_weights_and_misfit_embeddings_are_one_line_errors(tmp_path, capsys, flag):
    code, out = run(tmp_path, "run", flag, str(tmp_path / "missing.safetensors"))
    err = capsys.readouterr().err.strip()
    assert code == 2 and f"{flag} {tmp_path / 'missing.safetensors'}: no weights file there" in err
    assert len(err.splitlines()) == 1 and not out.exists()
    if flag == "--embedding":
        narrow = tmp_path / "narrow.safetensors"
        save_file({"<x>": torch.randn(builtin.TINY_TEXT_DIM // 2)}, narrow)
        code, out = run(tmp_path, "run", flag, str(narrow))
        err = capsys.readouterr().err.strip()
        assert code == 2 and "does not fit this base's text encoder" in err and len(err.splitlines()) == 1
        assert not out.exists()
