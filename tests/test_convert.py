"""Original-format ControlNet checkpoints into diffusers: layouts, safety, mismatches, the CLI."""
import os

import pytest
import torch
import yaml
from diffusers import ControlNetModel
from diffusers.pipelines.stable_diffusion.convert_from_ckpt import create_unet_diffusers_config
from safetensors.torch import load_file, save_file

import convert_original_controlnet_to_diffusers as converter
from common.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYERS = 1


def tiny_config(model_channels=32, channel_mult=(1, 2)):
    """cldm_v21.yaml with toy sizes: 32-channel blocks (GroupNorm 32), context 32, attention at /2."""
    with open(os.path.join(ROOT, "cldm_v21.yaml")) as f:
        config = yaml.safe_load(f)
    for stage in ("control_stage_config", "unet_config"):
        config["model"]["params"][stage]["params"].update(
            model_channels=model_channels, channel_mult=list(channel_mult), attention_resolutions=[2],
            num_res_blocks=LAYERS, num_head_channels=16, context_dim=32)
    return config


def write_config(path, config):
    with open(path, "w") as f:
        yaml.safe_dump(config, f)
    return str(path)


def reference_controlnet():
    """A seeded diffusers ControlNet built from the tiny config's layout."""
    config = create_unet_diffusers_config(tiny_config(), image_size=64, controlnet=True)
    config.pop("sample_size")
    torch.manual_seed(0)
    model = ControlNetModel(**config).eval()
    with torch.no_grad():  # zero-initialised convs would hide mapping errors: make every weight random
        for parameter in model.parameters():
            parameter.normal_(0, 0.05)
    return model


RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
          "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}


def to_original(model):
    """The diffusers ControlNet's weights under the original cldm.ControlNet names."""
    original = {}
    for name, tensor in model.state_dict().items():
        parts = name.split(".")
        if parts[0] == "time_embedding":
            key = {"linear_1": "time_embed.0", "linear_2": "time_embed.2"}[parts[1]] + "." + parts[2]
        elif parts[0] == "conv_in":
            key = "input_blocks.0.0." + parts[1]
        elif parts[0] == "down_blocks":
            block, kind = int(parts[1]), parts[2]
            if kind == "downsamplers":
                key = f"input_blocks.{(block + 1) * (LAYERS + 1)}.0.op." + parts[-1]
            else:
                index = 1 + block * (LAYERS + 1) + int(parts[3])
                rest = ".".join(parts[4:])
                key = (f"input_blocks.{index}.0.{RESNET[parts[4]]}.{parts[5]}" if kind == "resnets"
                       else f"input_blocks.{index}.1.{rest}")
        elif parts[0] == "mid_block":
            if parts[1] == "resnets":
                key = f"middle_block.{2 * int(parts[2])}.{RESNET[parts[3]]}.{parts[4]}"
            else:
                key = "middle_block.1." + ".".join(parts[3:])
        elif parts[0] == "controlnet_down_blocks":
            key = f"zero_convs.{parts[1]}.0.{parts[2]}"
        elif parts[0] == "controlnet_mid_block":
            key = "middle_block_out.0." + parts[1]
        elif parts[0] == "controlnet_cond_embedding":
            num_blocks = len(model.controlnet_cond_embedding.blocks)
            index = {"conv_in": 0, "conv_out": 2 * (num_blocks + 1)}.get(parts[1])
            key = f"input_hint_block.{index if index is not None else 2 * (int(parts[2]) + 1)}.{parts[-1]}"
        else:
            raise AssertionError(name)
        original[key] = tensor.clone()
    return original


def outputs(model):
    """Down and mid residuals on fixed inputs, flattened."""
    generator = torch.Generator().manual_seed(1)
    sample = torch.randn(1, 4, 8, 8, generator=generator)
    hint = torch.rand(1, 3, 64, 64, generator=generator)
    context = torch.randn(1, 5, 32, generator=generator)
    with torch.no_grad():
        down, mid = model(sample, 10, encoder_hidden_states=context, controlnet_cond=hint, return_dict=False)
    return torch.cat([t.flatten() for t in (*down, mid)])


@pytest.fixture(scope="module")
def reference():
    model = reference_controlnet()
    return model, to_original(model), outputs(model)


@pytest.fixture
def config_path(tmp_path):
    return write_config(tmp_path / "tiny.yaml", tiny_config())


@pytest.mark.parametrize("layout", ["safetensors-prefixed", "safetensors-bare", "ckpt-nested-prefixed",
                                    "ckpt-nested-bare", "pth-flat-prefixed"])
def test_converted_controlnet_reproduces_the_original_weights(tmp_path, reference, config_path, layout):
    model, original, expected = reference
    weights = {("control_model." + k if "prefixed" in layout else k): v for k, v in original.items()}
    if "prefixed" in layout:  # a full ControlLDM checkpoint also holds the locked SD UNet
        weights["model.diffusion_model.time_embed.0.weight"] = torch.zeros(3)
    if layout.startswith("safetensors"):
        path = str(tmp_path / "cn.safetensors")
        save_file(weights, path)
    else:
        path = str(tmp_path / ("cn.ckpt" if "ckpt" in layout else "cn.pth"))
        payload = {"state_dict": {"state_dict": weights}, "global_step": 7} if "nested" in layout else weights
        torch.save(payload, path)
    converted = converter.convert(path, config_path, image_size=64)
    assert torch.allclose(outputs(converted), expected, atol=1e-6)


class RunsCodeWhenUnpickled:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))  # unpickling creates the marker file


def test_a_pickle_with_code_is_refused_and_never_run(tmp_path, reference, config_path):
    marker = str(tmp_path / "code-ran")
    path = str(tmp_path / "evil.ckpt")
    torch.save({"state_dict": reference[1], "payload": RunsCodeWhenUnpickled(marker)}, path)
    with pytest.raises(UserError, match="arbitrary code.*--allow-unsafe-pickle"):
        converter.convert(path, config_path, image_size=64)
    assert not os.path.exists(marker)
    converted = converter.convert(path, config_path, image_size=64, allow_unsafe_pickle=True)
    assert os.path.exists(marker)  # the flag really unpickles: only for trusted files
    assert torch.allclose(outputs(converted), reference[2], atol=1e-6)


def test_a_config_that_does_not_fit_names_the_first_disagreement(tmp_path, reference):
    path = str(tmp_path / "cn.safetensors")
    save_file(reference[1], path)
    wider = write_config(tmp_path / "wide.yaml", tiny_config(model_channels=64))
    with pytest.raises(UserError, match=r"does not fit .*wide.yaml: \S+ is \(\d+.*\) in the checkpoint but"):
        converter.convert(path, wider, image_size=64)
    deeper = write_config(tmp_path / "deep.yaml", tiny_config(channel_mult=(1, 2, 2)))
    with pytest.raises(UserError, match="does not fit .*deep.yaml"):
        converter.convert(path, deeper, image_size=64)


def test_files_that_are_not_checkpoints_are_refused(tmp_path, config_path):
    text = tmp_path / "notes.ckpt"
    text.write_text("hello")
    with pytest.raises(UserError, match="not a PyTorch checkpoint"):
        converter.convert(str(text), config_path)
    fake = tmp_path / "fake.safetensors"
    fake.write_bytes(b"\x00" * 64)
    with pytest.raises(UserError, match="not a readable safetensors"):
        converter.convert(str(fake), config_path)
    sd_only = tmp_path / "sd.safetensors"
    save_file({"model.diffusion_model.x": torch.zeros(1)}, str(sd_only))
    with pytest.raises(UserError, match="no ControlNet weights"):
        converter.convert(str(sd_only), config_path)


def test_cli_writes_a_loadable_folder_and_refuses_to_overwrite(tmp_path, reference, config_path, capsys):
    path = str(tmp_path / "cn.safetensors")
    save_file(reference[1], path)
    dump = tmp_path / "out"
    args = ["--checkpoint_path", path, "--original_config_file", config_path, "--image_size", "64",
            "--device", "cuda", "--dump_path", str(dump), "--half"]
    assert converter.main(args) == 0
    assert (dump / "diffusion_pytorch_model.safetensors").exists()
    saved = load_file(str(dump / "diffusion_pytorch_model.safetensors"))
    assert all(t.dtype == torch.float16 for t in saved.values())
    loaded = ControlNetModel.from_pretrained(str(dump))
    assert torch.allclose(outputs(loaded.float()), reference[2], atol=2e-2)
    assert converter.main(args) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert converter.main([*args, "--overwrite"]) == 0
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".converting-")]


def test_cli_failures_are_one_line_and_leave_nothing(tmp_path, config_path, capsys):
    dump = tmp_path / "out"
    for checkpoint, config, message in [(str(tmp_path / "none.ckpt"), config_path, "checkpoint not found"),
                                        (str(tmp_path / "none.ckpt"), str(tmp_path / "no.yaml"), "config not found")]:
        assert converter.main(["--checkpoint_path", checkpoint, "--original_config_file", config,
                               "--dump_path", str(dump)]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1
    assert not dump.exists() and os.listdir(tmp_path) == ["tiny.yaml"]


def test_an_unwritable_dump_path_is_refused_before_converting(tmp_path, reference, config_path, capsys, monkeypatch):
    path = str(tmp_path / "cn.safetensors")
    save_file(reference[1], path)
    monkeypatch.setattr(converter, "convert", lambda *a, **k: pytest.fail("converted before checking --dump_path"))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, m: False if str(p) == str(tmp_path / "ro") else real_access(p, m))
    (tmp_path / "ro").mkdir()
    for dump, message in [(blocker, "is a file"), (blocker / "out", "is a file, not a folder"),
                          (tmp_path / "ro" / "out", "is read-only")]:
        assert converter.main(["--checkpoint_path", path, "--original_config_file", config_path,
                               "--dump_path", str(dump), "--overwrite"]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    assert sorted(os.listdir(tmp_path)) == ["cn.safetensors", "file", "ro", "tiny.yaml"]
