"""DeepCache across steps and the frame cache (loop/deep_cache.py): the shallow branch against the full
models, the loop against DeepCache's own DeepCacheSDHelper, the flags, refusals and cost record."""
import json

import numpy as np
import pytest
import torch
from diffusers import ControlNetModel, MultiControlNetModel, StableDiffusionControlNetPipeline, UNet2DConditionModel
from PIL import Image

import pose_extract
import sdvideo
from conftest import assert_tensors_close, random_keypoints
from loading import builtin
from loop import pipeline, predict
from loop.deep_cache import DeepCache, ShallowModels, deep_capture, group_keys, shallow_controlnet, shallow_unet
from loop.techniques import Copy

PROMPT, NEGATIVE = "a golfer", "blurry"
FAST = ["--model", "tiny", "--height", "64", "--width", "64", "--quiet"]


@pytest.fixture(scope="module")
def deep_pipe(tiny_pipe):
    """SD's layout at toy width with three levels and two layers a block (the tiny model has two and
    one), so that the shallow branch can end at any layer of two blocks (DeepCache ids 0-5)."""
    blocks = dict(builtin.TINY_BLOCKS, block_out_channels=(16, 32, 32), layers_per_block=2,
                  down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        unet = UNet2DConditionModel(sample_size=32, up_block_types=("UpBlock2D", "CrossAttnUpBlock2D",
                                                                    "CrossAttnUpBlock2D"), **blocks)
        controlnet = ControlNetModel(conditioning_embedding_out_channels=(4, 8, 8, 16), **blocks)
        builtin._make_pose_matter(controlnet)
    pipe = StableDiffusionControlNetPipeline(**{**tiny_pipe.components, "unet": unet.eval(),
                                                "controlnet": controlnet.eval()})
    pipe.set_progress_bar_config(disable=True)
    return pipe


def poses(num_frames, height=72, width=96, seed=0):
    """Distinct pose maps (F, H, W, 3); 72 px high: 9 latent rows, which the UNet's levels do not halve evenly."""
    keypoints = random_keypoints(np.random.default_rng(seed), height, width, num_frames)
    return np.stack([pose_extract.draw_openpose(k, height, width) for k in keypoints])


def config(steps=6, batch_size=4, **changes):
    return pipeline.GenerationConfig(prompt=PROMPT, negative_prompt=NEGATIVE, steps=steps, guidance=5.0, seed=5,
                                     batch_size=batch_size, **changes)


def denoise(pipe, maps, settings, techniques=()):
    return pipeline.denoise(pipe, maps, settings, list(techniques), progress=False)


def differs(actual, expected):
    """Apart by ten times what assert_tensors_close lets pass (1e-4 of the largest value)."""
    return bool((actual - expected).abs().max() > 1e-3 * expected.abs().max())


@pytest.mark.parametrize("branch", range(6))
def test_the_shallow_branch_on_its_own_deep_features_is_the_full_unet_and_controlnet(deep_pipe, branch):
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(4, 4, 9, 12, generator=generator)
    embeds = torch.randn(4, 77, builtin.TINY_TEXT_DIM, generator=generator)
    hint = torch.rand(4, 3, 72, 96, generator=generator)
    t = torch.tensor(601)
    with torch.no_grad():
        down, mid = deep_pipe.controlnet(sample, t, encoder_hidden_states=embeds, controlnet_cond=hint,
                                         conditioning_scale=0.8, return_dict=False)
        with deep_capture(deep_pipe.unet, branch) as seen:
            full = deep_pipe.unet(sample, t, encoder_hidden_states=embeds, down_block_additional_residuals=down,
                                  mid_block_additional_residual=mid).sample
        residuals = shallow_controlnet(deep_pipe.controlnet, sample, t, embeds, hint, 0.8, branch)
        shallow = shallow_unet(deep_pipe.unet, sample, t, embeds, seen[0], branch, residuals)
    assert len(seen) == 1 and len(residuals) == 1 + branch  # the input conv's, then a layer or downsampler an id
    for ours, theirs in zip(residuals, down):
        assert_tensors_close(ours, theirs)
    assert_tensors_close(shallow, full)
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in deep_pipe.unet.modules())  # nothing left


def test_several_controlnets_add_their_shallow_residuals_as_multicontrolnet_does(tiny_pipe):
    nets = MultiControlNetModel([tiny_pipe.controlnet, builtin.build_tiny_controlnet(7)])
    pipe = StableDiffusionControlNetPipeline(**{**tiny_pipe.components, "controlnet": nets})
    generator = torch.Generator().manual_seed(0)
    sample, embeds = torch.randn(2, 4, 8, 8, generator=generator), torch.randn(2, 77, 32, generator=generator)
    hints, scales, t = [torch.rand(2, 3, 64, 64, generator=generator) for _ in range(2)], [0.8, 0.5], torch.tensor(401)
    with torch.no_grad():
        down, _ = nets(sample, t, encoder_hidden_states=embeds, controlnet_cond=hints, conditioning_scale=scales,
                       return_dict=False)
        shallow = ShallowModels(pipe, 1, deep=None).controlnet(sample, t, embeds, hints, scales, None)
    assert len(shallow) == 2  # the input conv's and the first block's layer
    for ours, theirs in zip(shallow, down):
        assert_tensors_close(ours, theirs)


def helper_latents(pipe, maps, settings, interval, branch_id):
    """DeepCache's own DeepCacheSDHelper on diffusers' pipeline, every frame in one call (its cache is per
    module, not per frame): the final latents (F, 4, h, w)."""
    deepcache = pytest.importorskip("DeepCache", reason="requirements-deepcache.txt (make test installs it)")
    helper = deepcache.DeepCacheSDHelper(pipe=pipe)
    helper.set_params(cache_interval=interval, cache_branch_id=branch_id)
    helper.enable()
    try:
        return pipe([PROMPT] * len(maps), image=[Image.fromarray(m) for m in maps],
                    negative_prompt=[NEGATIVE] * len(maps), num_inference_steps=settings.steps,
                    guidance_scale=settings.guidance, control_guidance_end=settings.control_end,
                    height=maps.shape[1], width=maps.shape[2], output_type="latent",
                    generator=[torch.Generator("cpu").manual_seed(settings.seed + i) for i in range(len(maps))]).images
    finally:
        helper.disable()


@pytest.mark.parametrize("model, interval, branch, control_end", [
    ("tiny", 3, 0, 1.0), ("tiny", 3, 1, 1.0), ("deep", 3, 0, 1.0), ("deep", 3, 1, 1.0), ("deep", 3, 2, 1.0),
    ("deep", 2, 4, 0.7), ("deep", 2, 5, 0.7)])
def test_cached_steps_equal_deepcache_sd_helper(tiny_pipe, deep_pipe, model, interval, branch, control_end):
    pipe = tiny_pipe if model == "tiny" else deep_pipe
    maps, settings = poses(3), config(steps=7, control_end=control_end)
    reference = helper_latents(pipe, maps, settings, interval, branch)
    latents, stats = denoise(pipe, maps, settings, [DeepCache(interval, branch)])
    plain, _ = denoise(pipe, maps, settings)
    assert_tensors_close(latents, reference)
    assert differs(latents, plain)  # the cache did change the result
    full_steps = -(-7 // interval)
    assert stats.unet_evals == 3 * 2 * full_steps and stats.unet_shallow_evals == 3 * 2 * (7 - full_steps)


def test_interval_one_and_frames_one_give_the_plain_frames_byte_for_byte(tiny_pipe, tmp_path):
    maps = poses(3, 64, 64)
    plain, plain_stats = denoise(tiny_pipe, maps, config())
    ones, stats = denoise(tiny_pipe, maps, config(), [DeepCache(1, 1, 1)])  # every evaluation full, features kept
    assert torch.equal(ones, plain) and stats == plain_stats
    cached, _ = denoise(tiny_pipe, maps, config(), [DeepCache(2, 1, 1)])
    assert not torch.equal(cached, plain)
    flags = [*FAST, "--steps", "3", "--max-frames", "3"]
    assert sdvideo.main([*flags, "--out", str(tmp_path / "plain")]) == 0
    assert sdvideo.main([*flags, "--cache-interval", "1", "--cache-frames", "1", "--out", str(tmp_path / "ones")]) == 0
    for index in range(3):
        name = f"frames/{index:05d}.png"
        assert (tmp_path / "ones" / name).read_bytes() == (tmp_path / "plain" / name).read_bytes()


def test_the_cache_is_kept_per_frame_so_any_batch_size_gives_the_same_frames(tiny_pipe):
    maps = poses(5, 64, 64)
    whole, _ = denoise(tiny_pipe, maps, config(batch_size=5), [DeepCache(3, 1, 2)])
    for batch_size in (1, 2):
        chunked, _ = denoise(tiny_pipe, maps, config(batch_size=batch_size), [DeepCache(3, 1, 2)])
        assert_tensors_close(chunked, whole)


def test_group_keys_are_the_frames_nearest_each_groups_centre():
    assert group_keys(list(range(7)), 3) == [1, 1, 1, 4, 4, 4, 6]
    assert group_keys(list(range(4)), 2) == [0, 0, 2, 2]  # a tie goes to the earlier frame
    assert group_keys([1, 2, 5, 7], 4) == [0, 0, 2, 2]  # a pass of some of the clip's frames (keyframe mode)


def test_frames_reuse_their_key_frames_features_of_the_same_step(tiny_pipe):
    maps = poses(5, 64, 64)
    plain, _ = denoise(tiny_pipe, maps, config())
    latents, stats = denoise(tiny_pipe, maps, config(), [DeepCache(1, 1, 3)])  # keys: frames 1 and 4
    assert stats.unet_evals == 2 * 2 * 6 and stats.unet_shallow_evals == 3 * 2 * 6
    assert_tensors_close(latents[[1, 4]], plain[[1, 4]])  # the key frames run in full
    assert differs(latents[[0, 2, 3]], plain[[0, 2, 3]])
    # one pose and one noise for every frame: a frame's shallow branch on its key's fresh features is
    # exactly its own full evaluation (stale features, or another frame's, would not be)
    same, fixed = np.stack([maps[0]] * 5), config(noise="fixed")
    plain_same, _ = denoise(tiny_pipe, same, fixed)
    cached_same, _ = denoise(tiny_pipe, same, fixed, [DeepCache(1, 1, 3)])
    assert_tensors_close(cached_same, plain_same)


def test_copying_evaluates_every_frame_in_full_at_the_copy_step(tiny_pipe):
    maps, settings = poses(3, 64, 64), config()
    _, stats = denoise(tiny_pipe, maps, settings, [Copy(2, "anchor"), DeepCache(3, 1, 1, restarts=(2,))])
    # the anchor from step 0, the others from the copy at step 2; full at steps 0 and 3 and (restart) 2
    assert stats.unet_evals == 2 * (1 + 3 + 3) and stats.unet_shallow_evals == 2 * (1 + 3 + 3)


def test_the_models_are_left_as_they_were_also_after_an_error(tiny_pipe, monkeypatch):
    maps = poses(2, 64, 64)

    def failing(self, *args):
        raise RuntimeError("the UNet failed")

    monkeypatch.setattr(predict.Models, "unet", failing)
    with pytest.raises(RuntimeError, match="the UNet failed"):
        denoise(tiny_pipe, maps, config(), [DeepCache(2, 1, 1)])
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in tiny_pipe.unet.modules())


def test_the_cost_model_predicts_the_full_evaluations(tiny_pipe):
    maps, technique = poses(5, 64, 64), DeepCache(3, 1, 2)  # full steps 0 and 3; key frames 0, 2 and 4
    _, plain = denoise(tiny_pipe, maps, config())
    _, stats = denoise(tiny_pipe, maps, config(), [technique])
    assert stats.unet_evals == pytest.approx(technique.cost(5, 6) * plain.unet_evals) and stats.unet_evals == 2 * 3 * 2
    assert stats.unet_evals + stats.unet_shallow_evals == plain.unet_evals


def test_the_run_record_counts_full_and_shallow_evaluations_apart(tmp_path):
    out = tmp_path / "run"
    assert sdvideo.main([*FAST, "--steps", "6", "--max-frames", "3", "--cache-interval", "3", "--copy-step", "4",
                         "--out", str(out)]) == 0
    record = json.loads((out / "run.json").read_text())
    hook = [h for h in record["techniques"]["hooks"] if h["technique"] == "DeepCache"]
    assert hook == [{"technique": "DeepCache", "interval": 3, "branch": 0, "frames": 1, "restarts": [4]}]
    cost = record["cost"]
    # the anchor runs steps 0-5 (full at 0, 3 and the copy step 4), the others 4-5 (full at 4): x 2 branches
    assert cost["unet_evals_per_frame"] == pytest.approx(2 * (3 + 1 + 1) / 3)
    assert cost["unet_shallow_evals_per_frame"] == pytest.approx(2 * (3 + 1 + 1) / 3)
    assert cost["controlnet_shallow_evals_per_frame"] == cost["unet_shallow_evals_per_frame"]


@pytest.mark.parametrize("flags, message", [
    (["--cache-interval", "0"], "--cache-interval and --cache-frames must be at least 1, --cache-branch at least 0"),
    (["--cache-interval", "3", "--grid", "2"], "--cache-interval cannot run with --grid"),
    (["--cache-frames", "2", "--compile"], "--cache-frames cannot run with --compile"),
    (["--cache-frames", "2", "--token-merge", "0.5"], "--cache-frames cannot run with --feature-bank or --token-merge"),
    (["--cache-interval", "2", "--cache-branch", "2"], "--cache-branch 2: this UNet's DeepCache branch ids are 0, 1 "),
    (["--cache-branch", "1"], "--cache-branch sets the shallow branch of --cache-interval or --cache-frames"),
])
def test_what_the_cache_cannot_do_is_refused_in_one_line(tmp_path, capsys, flags, message):
    assert sdvideo.main([*FAST, "--steps", "2", "--max-frames", "2", *flags, "--out", str(tmp_path / "run")]) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and len(error.splitlines()) == 1 and "Traceback" not in error


def test_the_fast_preset_is_deepcache_at_interval_3_and_branch_0(tmp_path):
    out = tmp_path / "run"
    assert sdvideo.main([*FAST, "--steps", "6", "--max-frames", "2", "--preset", "fast", "--out", str(out)]) == 0
    hooks = json.loads((out / "run.json").read_text())["techniques"]["hooks"]
    assert [h for h in hooks if h["technique"] == "DeepCache"] == [
        {"technique": "DeepCache", "interval": 3, "branch": 0, "frames": 1, "restarts": []}]
