import os

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import save_file

import convert_original_controlnet_to_diffusers as converter
from common import files
from common.errors import UserError
from loading import builtin, models
from loop import pipeline
from test_convert import config_path, outputs, reference  # noqa: F401  (fixtures)


def test_tiny_model_is_deterministic_and_sd_shaped():
    a, b = builtin.build_tiny_pipeline(), builtin.build_tiny_pipeline()
    for name in ("unet", "controlnet", "vae", "text_encoder"):
        for (key, pa), pb in zip(getattr(a, name).state_dict().items(), getattr(b, name).state_dict().values()):
            assert torch.equal(pa, pb), (name, key)
    assert a.vae_scale_factor == 8 and a.unet.config.use_linear_projection
    ids = a.tokenizer("golf", padding="max_length", max_length=77).input_ids
    assert len(ids) == 77 and ids[0] == a.tokenizer.bos_token_id


def test_tiny_model_frames_follow_their_poses(tiny_pipe, pose_maps):
    # an untrained ControlNet would ignore its pose (zero output convolutions): the tiny one must not
    config = pipeline.GenerationConfig(prompt="a golfer", steps=4, batch_size=4, noise="fixed")
    maps = np.concatenate([pose_maps, pose_maps[:1]])  # frames 0 and 3 share a pose, 1 and 2 differ
    latents, _ = pipeline.denoise(tiny_pipe, maps, config, progress=False)
    frames = np.stack(list(pipeline.decode(tiny_pipe, latents, 4, progress=False))).astype(int)
    assert np.abs(frames[3] - frames[0]).max() <= 1  # same noise, same pose: same picture
    assert np.abs(frames[1] - frames[0]).mean() > 1.0 and np.abs(frames[2] - frames[0]).mean() > 1.0


def test_building_the_tiny_model_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    builtin.build_tiny_pipeline()
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("name, cls", [("ddim", "DDIMScheduler"), ("dpm++", "DPMSolverMultistepScheduler"),
                                       ("euler", "EulerDiscreteScheduler"),
                                       ("euler-a", "EulerAncestralDiscreteScheduler"),
                                       ("unipc", "UniPCMultistepScheduler"), ("lcm", "LCMScheduler"),
                                       ("tcd", "TCDScheduler"), ("model", "DDIMScheduler")])
def test_schedulers_keep_the_base_config(name, cls):
    from diffusers import DDIMScheduler

    shipped = builtin.build_tiny_pipeline("v_prediction").scheduler.config  # a folder's, with SD-Turbo's spacing
    loaded = DDIMScheduler.from_config(shipped, timestep_spacing="trailing")
    scheduler = models.make_scheduler(name, loaded)
    assert type(scheduler).__name__ == cls
    assert scheduler.config.prediction_type == "v_prediction" and scheduler.config.beta_schedule == "scaled_linear"
    assert scheduler.config.timestep_spacing == "trailing"  # SD-Turbo's spacing survives --scheduler


def test_missing_accelerators_are_user_errors():
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA"):
            models.pick_device("cuda")
    assert models.pick_device("cpu") == torch.device("cpu")


def test_hub_ids_and_paths_are_told_apart():
    assert not files.looks_like_path("stabilityai/stable-diffusion-2-1-base")
    assert files.looks_like_path("./weights") and files.looks_like_path("/abs/sd") and files.looks_like_path("a/b/c")


def tiny_base_folder(folder):
    """The tiny pipeline saved with a UNet whose blocks fit the tiny ControlLDM yaml's ControlNet."""
    pipe = builtin.build_tiny_pipeline()
    torch.manual_seed(0)
    pipe.unet = UNet2DConditionModel(
        sample_size=8, block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=32,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True)
    pipe.save_pretrained(folder)
    return str(folder)


def test_controlnet_checkpoint_is_converted_once_and_cached(tmp_path, monkeypatch, reference, config_path):  # noqa: F811
    monkeypatch.setenv("SDVIDEO_CACHE", str(tmp_path / "cache"))
    checkpoint = str(tmp_path / "openpose.safetensors")
    save_file({"control_model." + k: v for k, v in reference[1].items()}, checkpoint)
    spec = models.ModelSpec(base=tiny_base_folder(tmp_path / "base"), controlnet=checkpoint,
                            controlnet_config=config_path, device="cpu", local_files_only=True)
    calls = []
    real = converter.convert_to_folder
    monkeypatch.setattr(converter, "convert_to_folder", lambda *a, **k: calls.append(a) or real(*a, **k))
    pipe = models.load_pipeline(spec)
    assert torch.allclose(outputs(pipe.controlnet), reference[2], atol=1e-6)
    again = models.load_pipeline(spec)
    assert len(calls) == 1 and torch.allclose(outputs(again.controlnet), reference[2], atol=1e-6)
    assert len(os.listdir(tmp_path / "cache" / "controlnets")) == 1


def test_the_diffusers_internals_sdvideo_uses_are_there(tiny_pipe):
    """requirements.txt pins diffusers' minor version for these; this fails loudly if they move."""
    import inspect

    import diffusers
    from diffusers.models.attention_processor import AttnProcessor2_0
    from diffusers.pipelines.stable_diffusion import convert_from_ckpt

    assert diffusers.__version__.startswith("0.42."), diffusers.__version__
    assert isinstance(tiny_pipe._execution_device, torch.device)
    assert list(inspect.signature(tiny_pipe.prepare_extra_step_kwargs).parameters) == ["generator", "eta"]
    assert list(inspect.signature(tiny_pipe.encode_prompt).parameters)[:5] == [
        "prompt", "device", "num_images_per_prompt", "do_classifier_free_guidance", "negative_prompt"]
    assert isinstance(tiny_pipe.controlnet.controlnet_cond_embedding, torch.nn.Module)
    for name in ("download_controlnet_from_original_ckpt", "convert_ldm_unet_checkpoint",
                 "create_unet_diffusers_config"):
        assert callable(getattr(convert_from_ckpt, name)), name
    assert list(inspect.signature(AttnProcessor2_0.__call__).parameters)[:5] == [
        "self", "attn", "hidden_states", "encoder_hidden_states", "attention_mask"]


def test_a_controlnet_for_another_base_is_refused_before_any_weights_load(tmp_path, capsys):
    import glob

    from diffusers import ControlNetModel

    import sdvideo

    pipe = builtin.build_tiny_pipeline()
    pipe.save_pretrained(str(tmp_path / "base"))
    wider = dict(pipe.controlnet.config, cross_attention_dim=2 * builtin.TINY_TEXT_DIM)  # another text encoder's
    ControlNetModel.from_config(wider).save_pretrained(str(tmp_path / "other"))
    for weights in glob.glob(str(tmp_path / "**" / "*.safetensors"), recursive=True):
        with open(weights, "wb") as f:  # loading any weights would fail differently
            f.write(b"not weights")
    capsys.readouterr()  # saving's progress bars
    code = sdvideo.main(["--base", str(tmp_path / "base"), "--controlnet", str(tmp_path / "other"), "--device", "cpu",
                         "--local-files-only", "--max-frames", "1", "--quiet", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert f"--controlnet {tmp_path / 'other'} does not fit --base {tmp_path / 'base'}: cross-attention width 64 " \
           f"against 32" in err
    # the same pair's own ControlNet passes the check (and then fails on the damaged weights, as it should)
    models.check_compatible(models.ModelSpec(base=str(tmp_path / "base"), controlnet=str(tmp_path / "base" / "controlnet")))


def test_file_hashes_are_read_once_and_follow_the_files_contents(tmp_path, monkeypatch):
    import builtins
    import hashlib

    path = tmp_path / "weights.bin"
    path.write_bytes(b"a" * 100)
    assert files.file_hash(str(path)) == hashlib.sha256(b"a" * 100).hexdigest()
    real_open, opened = builtins.open, []
    monkeypatch.setattr(builtins, "open", lambda *a, **k: opened.append(a) or real_open(*a, **k))
    assert files.file_hash(str(path)) == hashlib.sha256(b"a" * 100).hexdigest() and not opened  # remembered
    monkeypatch.undo()
    path.write_bytes(b"b" * 100)  # the same size, written later: read again
    os.utime(path, ns=(1, 1))
    assert files.file_hash(str(path)) == hashlib.sha256(b"b" * 100).hexdigest()


def test_an_uncached_model_with_no_hub_is_one_line_at_once(tmp_path):
    """No weights in the cache and a hub that refuses connections (a closed local port): one line,
    exit 2, naming `hf download` and --local-files-only, without huggingface_hub's retries."""
    import subprocess
    import sys

    from conftest import ROOT

    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_ENDPOINT="http://127.0.0.1:9")
    done = subprocess.run([sys.executable, f"{ROOT}/sdvideo.py", "--poses", f"{ROOT}/demo/golf_swing.json",
                           "--out", str(tmp_path / "run")], capture_output=True, text=True, env=env)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert "hub cannot be reached" in lines[0] and "hf download stabilityai/stable-diffusion-2-1-base" in lines[0]
    assert "--local-files-only" in lines[0]


def test_a_cached_hub_id_loads_without_the_network(tmp_path, monkeypatch):
    """A hub id whose files are in the cache is read with local_files_only (no request is made)."""
    monkeypatch.setattr(models.huggingface_hub, "try_to_load_from_cache", lambda name, filename: "/cached/file")
    monkeypatch.setattr(models, "_hub_reachable", lambda *a: (_ for _ in ()).throw(AssertionError("network used")))
    assert models.hub_local_only("some/model", "base model", False) is True
    assert models.hub_local_only(str(tmp_path), "base model", False) is False  # a folder: as asked
