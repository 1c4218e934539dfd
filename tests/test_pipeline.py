"""The loop against diffusers' own StableDiffusionControlNetPipeline, frame by frame."""
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import assert_tensors_close
from loading import builtin, models
from loop import pipeline
from loop.pipeline import GenerationConfig, Technique

PROMPT, NEGATIVE = "a golfer", "blurry"


def diffusers_frames(pipe, pose_maps, config, output_type="np"):
    """What a user scripting diffusers gets: one call per frame, generator seeded seed + i."""
    frames = []
    for i, pose_map in enumerate(pose_maps):
        out = pipe(PROMPT, image=Image.fromarray(pose_map), negative_prompt=NEGATIVE,
                   num_inference_steps=config.steps, guidance_scale=config.guidance,
                   controlnet_conditioning_scale=config.controlnet_scale,
                   control_guidance_start=config.control_start, control_guidance_end=config.control_end,
                   height=pose_map.shape[0], width=pose_map.shape[1], output_type=output_type,
                   generator=torch.Generator("cpu").manual_seed(config.seed + i))
        frames.append(out.images[0])
    return np.stack(frames) if output_type == "np" else torch.stack(frames)


def ours(pipe, pose_maps, config):
    latents, stats = pipeline.denoise(pipe, pose_maps, config, progress=False)
    frames = np.stack(list(pipeline.decode(pipe, latents, config.batch_size, progress=False)))
    return latents, frames, stats


@pytest.fixture
def config():
    return GenerationConfig(prompt=PROMPT, negative_prompt=NEGATIVE, steps=3, guidance=5.0,
                            controlnet_scale=0.8, control_end=0.7, seed=5)


@pytest.mark.parametrize("batch_size", [1, 2, 3])
def test_independent_noise_equals_diffusers_per_frame_for_any_batch_size(tiny_pipe, pose_maps, config, batch_size):
    config.batch_size = batch_size
    latents, frames, _ = ours(tiny_pipe, pose_maps, config)
    reference = diffusers_frames(tiny_pipe, pose_maps, config)
    assert np.abs(frames / 255.0 - reference).max() <= 1 / 255
    reference_latents = diffusers_frames(tiny_pipe, pose_maps, config, output_type="latent")
    assert_tensors_close(latents, reference_latents)


@pytest.mark.parametrize("scheduler, prediction", [("euler-a", "epsilon"), ("dpm++", "v_prediction"),
                                                   ("ddim", "v_prediction")])
def test_matches_diffusers_with_other_schedulers_and_v_prediction(pose_maps, config, scheduler, prediction):
    pipe = builtin.build_tiny_pipeline(prediction)
    pipe.scheduler = models.make_scheduler(scheduler, pipe.scheduler)
    assert pipe.scheduler.config.prediction_type == prediction
    config.batch_size = 2
    _, frames, _ = ours(pipe, pose_maps, config)
    assert np.abs(frames / 255.0 - diffusers_frames(pipe, pose_maps, config)).max() <= 1 / 255


class Recorder(Technique):
    def initial_latents(self, latents):
        self.initial = latents.clone()
        return latents


def test_fixed_noise_starts_every_frame_from_the_seed_latent(tiny_pipe, pose_maps, config):
    config.noise, recorder = "fixed", Recorder()
    pipeline.denoise(tiny_pipe, pose_maps, config, techniques=[recorder], progress=False)
    expected = torch.randn((1, 4, 8, 12), generator=torch.Generator("cpu").manual_seed(config.seed))
    expected = expected * tiny_pipe.scheduler.init_noise_sigma
    assert all(torch.equal(frame, expected[0]) for frame in recorder.initial)


def test_fixed_noise_and_one_pose_give_identical_frames(tiny_pipe, pose_maps, config):
    config.noise = "fixed"
    same_pose = np.stack([pose_maps[0]] * 3)
    _, frames, _ = ours(tiny_pipe, same_pose, config)
    assert np.array_equal(frames[0], frames[2])
    config.noise = "independent"
    _, frames, _ = ours(tiny_pipe, same_pose, config)
    assert not np.array_equal(frames[0], frames[2])


def test_hooks_see_every_step_and_their_changes_reach_the_output(tiny_pipe, pose_maps, config):
    class ZeroAfterLastStep(Technique):
        steps = []

        def before_step(self, step, t, latents, active):
            self.steps.append(step)
            return latents

        def after_step(self, step, t, latents, x0_pred, active):
            return torch.zeros_like(latents) if step == config.steps - 1 else latents

    technique = ZeroAfterLastStep()
    latents, _ = pipeline.denoise(tiny_pipe, pose_maps, config, techniques=[technique], progress=False)
    assert technique.steps == [0, 1, 2] and not latents.any()


def test_controlnet_runs_only_inside_the_control_window(tiny_pipe, pose_maps, config):
    config.control_start, config.control_end = 0.0, 0.4  # 3 steps: only step 0 (1/3 <= 0.4)
    _, _, stats = ours(tiny_pipe, pose_maps, config)
    assert stats.controlnet_evals == 3 * 2 * 1 and stats.unet_evals == 3 * 2 * 3
    assert pipeline.control_scales(3, 0.8, 0.0, 0.4) == [0.8, 0.0, 0.0]


def test_no_guidance_means_one_branch(tiny_pipe, pose_maps, config):
    config.guidance = 1.0
    _, frames, stats = ours(tiny_pipe, pose_maps, config)
    assert stats.unet_evals == 3 * 3
    assert np.abs(frames / 255.0 - diffusers_frames(tiny_pipe, pose_maps, config)).max() <= 1 / 255


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_frames_equal_diffusers_when_half_draws_differ_from_float32_ones(pose_maps, config, dtype,
                                                                                        monkeypatch):
    """torch <= 2.11 draws a half-dtype CPU randn with a kernel of its own, unrelated to the float32
    draw of the same seed (torch 2.13, here, happens to match). Patched so, sdvideo must draw as
    diffusers' randn_tensor does, in the model's dtype, to give diffusers' frames."""
    real_randn = torch.randn

    def half_draw_of_its_own(*size, generator=None, dtype=None, **kwargs):
        if dtype in (torch.float16, torch.bfloat16):  # still N(0, 1), but not the float32 numbers
            return (-real_randn(*size, generator=generator, dtype=torch.float32, **kwargs).flip(-1)).to(dtype)
        return real_randn(*size, generator=generator, dtype=dtype, **kwargs)

    monkeypatch.setattr(torch, "randn", half_draw_of_its_own)
    pipe = builtin.build_tiny_pipeline().to(dtype=dtype)
    config.batch_size = 3
    generators = pipeline.frame_generators(config.seed, range(3))
    drawn = pipeline.NOISE["independent"](generators, pipeline.latent_shape(pipe, 64, 96), dtype)
    for i, frame_noise in enumerate(drawn):  # each frame's noise is diffusers' draw, bit for bit
        expected = torch.randn((1, *frame_noise.shape), generator=torch.Generator().manual_seed(config.seed + i),
                               dtype=dtype)[0]
        assert torch.equal(frame_noise.to(dtype), expected)
    _, frames, _ = ours(pipe, pose_maps, config)
    reference = diffusers_frames(pipe, pose_maps, config)
    difference = np.abs(frames / 255.0 - reference)
    # the two loops batch the half-precision arithmetic differently: a few levels, not another picture
    assert difference.mean() < 2 / 255 and difference.max() <= 16 / 255  # 0.4 and 4/255 in bf16 here; 50 and 255 before


def test_the_loop_keeps_no_autograd_graph(tiny_pipe, pose_maps, config):
    """The weights require grad as diffusers loads them; the loop must not record a graph through
    its steps (one kept every step's activations: 24 GB on the toy sweep's 64 frames)."""
    assert all(p.requires_grad for p in tiny_pipe.unet.parameters())
    latents, _ = pipeline.generate(tiny_pipe, pose_maps, config, progress=False)
    assert latents.grad_fn is None and not latents.requires_grad
