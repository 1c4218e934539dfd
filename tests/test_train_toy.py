"""toy/train_toy.py: every stage runs, an interrupted run resumes to the same weights, a finished
ControlNet stage continues with an added cycle, the result loads."""
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from loading import builtin, models
from loop import pipeline
from toy import batches, diffusion, finetune, motions, stages, train_toy

# toy world 2 (128 px): the discriminator joins at the second VAE step, the second UNet and ControlNet
# steps train on a 2x2 grid (256 px)
FEW = ["--vae-steps", "2", "--unet-steps", "2", "--controlnet-steps", "2", "--batch", "4", "--vae-batch", "2",
       "--save-every", "1", "--grid-every", "2", "--quiet"]


def weights(folder):
    return load_file(os.path.join(folder, "controlnet", "diffusion_pytorch_model.safetensors"))


def test_an_interrupted_training_resumes_to_the_same_model(tmp_path, monkeypatch):
    straight = tmp_path / "straight"
    train_toy.main([*FEW, "--work", str(tmp_path / "work-a"), "--out", str(straight)])

    real_save = stages.Stage.save

    def save_then_die(stage, modules):
        real_save(stage, modules)
        if stage.name == "controlnet" and stage.step == 1:
            raise KeyboardInterrupt  # killed right after the first ControlNet checkpoint

    monkeypatch.setattr(stages.Stage, "save", save_then_die)
    resumed = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        train_toy.main([*FEW, "--work", str(tmp_path / "work-b"), "--out", str(resumed)])
    assert not resumed.exists()  # nothing published before the end
    monkeypatch.setattr(stages.Stage, "save", real_save)
    train_toy.main([*FEW, "--work", str(tmp_path / "work-b"), "--out", str(resumed)])

    a, b = weights(straight), weights(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    pipe = builtin.load_toy_pipeline(str(resumed))
    assert pipe.vae_scale_factor == 8 and pipe.unet.config.sample_size == 16  # SD's ratio
    assert pipe.unet.config.down_block_types[0] == "CrossAttnDownBlock2D"  # attention at the latent resolution
    maps = np.zeros((2, 128, 128, 3), np.uint8)
    latents, _ = pipeline.generate(pipe, maps, pipeline.GenerationConfig(prompt="a golfer", steps=2), progress=False)
    assert latents.shape == (2, 4, 16, 16) and torch.isfinite(latents).all()


def test_a_finished_controlnet_stage_continues_to_a_longer_run(tmp_path):
    few = [*FEW, "--size", "64"]  # the cheaper world
    longer = [*few, "--controlnet-more", "2"]
    train_toy.main([*longer, "--work", str(tmp_path / "work-a"), "--out", str(tmp_path / "straight")])
    train_toy.main([*few, "--work", str(tmp_path / "work-b"), "--out", str(tmp_path / "short")])
    train_toy.main([*longer, "--work", str(tmp_path / "work-b"), "--out", str(tmp_path / "continued")])
    a, b, short = (weights(tmp_path / n) for n in ("straight", "continued", "short"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], short[k]) for k in a)  # the added cycle trained
    with pytest.raises(SystemExit, match="checkpoint of another model"):  # and cannot be taken back
        train_toy.main([*few, "--work", str(tmp_path / "work-b"), "--out", str(tmp_path / "again")])


@pytest.mark.parametrize("flag, why", [("--controlnet-more=-5", "must be at least 0"),
                                       ("--noise-offset=-0.1", "must be at least 0"),
                                       ("--device=gpu0", "--device gpu0: not usable here")])
def test_a_negative_added_cycle_or_offset_or_a_bad_device_is_refused_before_any_work(tmp_path, flag, why, capsys):
    with pytest.raises(SystemExit) as ended:
        train_toy.main([flag, "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert ended.value.code == 2 and why in err.strip().splitlines()[-1] and "Traceback" not in err
    assert not os.listdir(tmp_path)


def test_an_added_cycle_restarts_the_learning_rate_below_the_first():
    first = [stages.lr_factor(s, 100, 50) for s in range(100)]
    assert first == [stages.lr_factor(s, 100) for s in range(100)]  # the main cycle does not depend on it
    added = [stages.lr_factor(s, 100, 50) for s in range(100, 150)]
    assert first[-1] < 0.01 and max(added) == pytest.approx(stages.RESTART_PEAK) and added[-1] < 0.01


def test_both_toy_worlds_load_at_their_shapes():
    for name, factor, size in ((models.TOY, 8, 128), (models.TOY64, 4, 64)):
        pipe = models.load_pipeline(models.ModelSpec(model=name, device="cpu"))
        assert pipe.vae_scale_factor == factor and pipe.unet.config.sample_size * factor == size


def test_a_missing_toy_model_is_a_user_error(tmp_path):
    with pytest.raises(models.UserError, match="make toy-model"):
        builtin.load_toy_pipeline(str(tmp_path / "nothing"))


def test_a_checkpoint_of_another_model_is_refused(tmp_path):
    work = str(tmp_path / "work")
    train_toy.main([*FEW, "--size", "64", "--work", work, "--out", str(tmp_path / "a")])  # the cheaper world
    with pytest.raises(SystemExit, match="checkpoint of another model"):
        train_toy.main([*FEW, "--work", work, "--out", str(tmp_path / "b")])


def test_grid_batches_tile_one_look_in_four_poses():
    swing = batches.swing_poses(128)
    images, masks, maps, prompts = batches.batch(np.random.default_rng(0), 2, swing, 128, grid=2)
    assert images.shape == (2, 3, 256, 256) and maps.shape == (2, 3, 256, 256) and masks.shape == (2, 256, 256)
    quarters = [maps[0, :, r:r + 128, c:c + 128] for r in (0, 128) for c in (0, 128)]
    assert all(q.sum() > 0 for q in quarters)  # a pose in every cell
    assert not torch.equal(quarters[0], quarters[1])  # ... each its own


def test_clip_grids_share_the_nuisances_that_look_grids_draw_per_frame():
    """With clips, a grid's four frames are one clip's: the background's texture and light agree
    wherever no figure stands; toy world 2's grids draw them per frame."""
    swing = batches.swing_poses(128)

    def background_spread(clips):
        images, masks, _, _ = batches.batch(np.random.default_rng(3), 6, swing, 128, grid=2, clips=clips)
        cells = [images[:, :, r:r + 128, c:c + 128] for r in (0, 128) for c in (0, 128)]
        figure = torch.stack([masks[:, r:r + 128, c:c + 128] for r in (0, 128) for c in (0, 128)]).amax(dim=0) > 0
        still = ~figure[:, None].expand_as(cells[0])  # (B, 3, 128, 128): background in all four cells
        return max((cell - cells[0]).abs()[still].mean().item() for cell in cells[1:])

    assert background_spread(clips=True) < 0.01  # the same picture behind four poses (shadows aside)
    assert background_spread(clips=False) > 0.05


def test_the_controlnets_timesteps_lean_to_high_noise():
    torch.manual_seed(0)
    cubic, uniform = (diffusion.draw_timesteps(20000, 1000, kind) for kind in ("cubic", "uniform"))
    assert cubic.min() >= 0 and cubic.max() <= 999 and cubic.dtype == torch.int64
    # t = (1 - u^3) T < T/2 when u > 2^(-1/3): a fifth of the draws, against a half for uniform ones
    assert (cubic < 500).float().mean().item() == pytest.approx(1 - 0.5 ** (1 / 3), abs=0.015)
    assert (uniform < 500).float().mean().item() == pytest.approx(0.5, abs=0.015)


def test_the_golfer_share_sets_how_many_pictures_hold_a_club():
    def golfers(share):
        rng = np.random.default_rng(1)
        return np.mean([motions.sample(rng, size=64, golfer_share=share)[4].golfer for _ in range(300)])

    assert golfers(None) == pytest.approx(0.25, abs=0.08)  # one of the four subjects
    assert golfers(0.5) == pytest.approx(0.5, abs=0.08) and golfers(0.0) == 0.0


def test_offset_noise_shifts_each_pictures_channels_and_a_recipe_without_it_records_none():
    zeros = SimpleNamespace(sample=lambda: torch.zeros(64, 4, 16, 16))  # every picture encodes to zero latents
    vae = SimpleNamespace(config=SimpleNamespace(scaling_factor=1.0), encode=lambda images: SimpleNamespace(latent_dist=zeros))
    torch.manual_seed(0)
    plain = diffusion.Noiser(vae)(None)[1].mean(dim=(2, 3))  # each picture's channel means of the noise
    torch.manual_seed(0)
    offset = diffusion.Noiser(vae, offset=0.5)(None)[1].mean(dim=(2, 3))
    assert plain.std() < 0.1 < 0.3 < offset.std()  # 1/16 (a mean of 256 normals) against ~0.5
    recipe = SimpleNamespace(noise_offset=0.0, unet_levels=3, accent=False, grid_clips=False, prediction="epsilon")
    assert train_toy.recipe_options(recipe) == {}  # the first toy world's recipe still matches


def test_a_v_prediction_noiser_targets_the_velocity_and_weighs_min_snr_over_snr_plus_one():
    latents = torch.randn(8, 4, 16, 16)
    vae = SimpleNamespace(config=SimpleNamespace(scaling_factor=1.0),
                          encode=lambda images: SimpleNamespace(latent_dist=SimpleNamespace(sample=lambda: latents)))
    torch.manual_seed(0)
    noisy_eps, noise, steps = diffusion.Noiser(vae)(None)
    torch.manual_seed(0)
    noisy_v, velocity, steps_v = diffusion.Noiser(vae, prediction="v_prediction")(None)
    assert torch.equal(noisy_eps, noisy_v) and torch.equal(steps, steps_v)  # the same draws, another target
    abar = diffusion.Noiser(vae).scheduler.alphas_cumprod[steps][:, None, None, None]
    # v = sqrt(abar) eps - sqrt(1 - abar) z_0
    torch.testing.assert_close(velocity, abar.sqrt() * noise - (1 - abar).sqrt() * latents)
    # an error of 1 everywhere: the loss is the mean weight, min(SNR, 5) / SNR or / (SNR + 1)
    timesteps = torch.tensor([10, 990])
    snr = (lambda a: a / (1 - a))(diffusion.Noiser(vae).scheduler.alphas_cumprod[timesteps])
    for prediction, expected in (("epsilon", snr.clamp(max=5) / snr), ("v_prediction", snr.clamp(max=5) / (snr + 1))):
        scheduler = diffusion.Noiser(vae, prediction=prediction).scheduler
        loss = diffusion.diffusion_loss(torch.ones(2, 4, 2, 2), torch.zeros(2, 4, 2, 2), timesteps, scheduler)
        assert float(loss) == pytest.approx(float(expected.mean()), rel=1e-5)


def test_a_toy_world_3_candidate_trains_and_its_checkpoints_load_as_a_pipeline_for_the_probe(tmp_path):
    from toy.checkpoints import pipeline_from_work

    work = tmp_path / "work"
    one_step = ["--vae-steps", "1", "--unet-steps", "1", "--controlnet-steps", "1", "--grid-every", "0"]
    train_toy.main([*FEW, *one_step, "--unet-levels", "1", "--accent", "--prediction", "v_prediction",
                    "--work", str(work), "--out", str(tmp_path / "out")])
    saved = torch.load(work / "unet.pt", weights_only=False)
    assert saved["config"]["unet_levels"] == 1 and saved["config"]["accent"] is True
    assert builtin.load_toy_pipeline(str(tmp_path / "out")).scheduler.config.prediction_type == "v_prediction"
    assert pipeline_from_work(str(work))[0].controlnet.controlnet_mid_block.weight.abs().max() > 0  # trained
    pipe, step = pipeline_from_work(str(work), control=False)
    assert step == 1 and pipe.scheduler.config.prediction_type == "v_prediction"
    assert len(pipe.unet.down_blocks) == 1 and pipe.unet.down_blocks[0].attentions
    # the ControlNet left out: an untrained one adds nothing, so the pose changes no prediction
    latents, text = torch.randn(1, 4, 16, 16), torch.randn(1, builtin.TINY_MAX_TOKENS, train_toy.TEXT_DIM)
    down, mid = pipe.controlnet(latents, 500, encoder_hidden_states=text, controlnet_cond=torch.rand(1, 3, 128, 128),
                                return_dict=False)
    assert all(float(d.abs().max()) == 0 for d in down) and float(mid.abs().max()) == 0


def test_finetuning_trains_the_unet_and_keeps_the_rest_of_the_base_model(tmp_path):
    """toy/finetune.py: two steps on clip grids with the accent, turned to v prediction without offset
    noise, change the UNet and text encoder and the scheduler's prediction type, and its checkpoint
    records that recipe; the VAE and the ControlNet are the base model's, byte for byte; the base
    folder is never the output."""
    out = tmp_path / "tuned"
    args = ["--steps", "2", "--batch", "4", "--grid-every", "2", "--grid-clips", "--work", str(tmp_path / "work"),
            "--prediction", "v_prediction", "--noise-offset", "0", "--accent", "--quiet"]
    finetune.main([*args, "--out", str(out)])
    assert builtin.load_toy_pipeline(str(out)).scheduler.config.prediction_type == "v_prediction"
    recipe = torch.load(tmp_path / "work" / "unet.pt", weights_only=False)["config"]
    assert recipe["noise_offset"] == 0 and recipe["accent"]
    base = builtin.TOY_DIRS["toy"]
    for part, same in (("unet", False), ("text_encoder", False), ("vae", True), ("controlnet", True)):
        name = next(f for f in os.listdir(out / part) if f.endswith(".safetensors"))
        tuned, original = load_file(out / part / name), load_file(os.path.join(base, part, name))
        assert all(torch.equal(tuned[k], original[k]) for k in original) == same, part
    with pytest.raises(SystemExit):
        finetune.main([*args, "--out", base])


def test_finetuning_a_missing_base_model_is_one_line_and_writes_nothing(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        finetune.main(["--base", str(tmp_path / "none"), "--work", str(tmp_path / "work"),
                       "--out", str(tmp_path / "out"), "--quiet"])
    assert exit_info.value.code == 2 and not (tmp_path / "out").exists()
    err = capsys.readouterr().err
    assert "the toy model is missing" in err.strip().splitlines()[-1] and "Traceback" not in err
