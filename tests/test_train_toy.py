"""train_toy.py: every stage runs, an interrupted run resumes to the same weights, the result loads."""
import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import models
import pipeline
import train_toy

FEW = ["--vae-steps", "2", "--unet-steps", "2", "--controlnet-steps", "2", "--batch", "2", "--vae-batch", "2",
       "--save-every", "1", "--quiet"]


def weights(folder):
    return load_file(os.path.join(folder, "controlnet", "diffusion_pytorch_model.safetensors"))


def test_an_interrupted_training_resumes_to_the_same_model(tmp_path, monkeypatch):
    straight = tmp_path / "straight"
    train_toy.main([*FEW, "--work", str(tmp_path / "work-a"), "--out", str(straight)])

    real_save = train_toy.Stage.save

    def save_then_die(stage, modules):
        real_save(stage, modules)
        if stage.name == "controlnet" and stage.step == 1:
            raise KeyboardInterrupt  # killed right after the first ControlNet checkpoint

    monkeypatch.setattr(train_toy.Stage, "save", save_then_die)
    resumed = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        train_toy.main([*FEW, "--work", str(tmp_path / "work-b"), "--out", str(resumed)])
    assert not resumed.exists()  # nothing published before the end
    monkeypatch.setattr(train_toy.Stage, "save", real_save)
    train_toy.main([*FEW, "--work", str(tmp_path / "work-b"), "--out", str(resumed)])

    a, b = weights(straight), weights(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    pipe = models.load_toy_pipeline(str(resumed))
    assert pipe.vae_scale_factor == 4 and pipe.unet.config.sample_size == 16
    maps = np.zeros((2, 64, 64, 3), np.uint8)
    latents, _ = pipeline.generate(pipe, maps, pipeline.GenerationConfig(prompt="a golfer", steps=2), progress=False)
    assert latents.shape == (2, 4, 16, 16) and torch.isfinite(latents).all()


def test_a_missing_toy_model_is_a_user_error(tmp_path):
    with pytest.raises(models.UserError, match="make toy-model"):
        models.load_toy_pipeline(str(tmp_path / "nothing"))
