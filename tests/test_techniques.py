"""Each technique's invariants on the tiny model, and all of them together."""
import argparse
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

import latent_ops
import pose_extract
from conftest import assert_tensors_close, random_keypoints
from loading import builtin, sources
from loop import flow_fusion, indices, pipeline, planners, registry
from loop import techniques as tq
from loop.attention import CrossFrameAttnProcessor
from loop.keyframes import KeyframePlan
from loop.pipeline import GenerationConfig, Technique

STEPS = 4


@pytest.fixture(scope="module")
def clip():
    """Five 64x64 pose maps and fake source latents (5, 4, 8, 8)."""
    keypoints = random_keypoints(np.random.default_rng(3), 64, 64, 5)
    maps = np.stack([pose_extract.draw_openpose(k, 64, 64) for k in keypoints])
    return maps, torch.randn(5, 4, 8, 8, generator=torch.Generator().manual_seed(9))


def config(**kwargs):
    return GenerationConfig(prompt="a golfer", negative_prompt="", steps=STEPS, guidance=3.0, seed=1,
                            batch_size=2, **kwargs)


def generate(pipe, maps, found=(), keyframes=None, **kwargs):
    return pipeline.generate(pipe, maps, config(**kwargs), list(found), keyframes, progress=False)


class Spy(Technique):
    """Records the latents each step starts from (after the techniques listed before it)."""

    def __init__(self):
        self.before = {}

    def before_step(self, step, t, latents, active):
        self.before[step] = latents.clone()
        return latents


def test_blend_weight_zero_and_injection_strength_zero_are_no_ops(tiny_pipe, clip):
    maps, source = clip
    plain, _ = generate(tiny_pipe, maps, noise="fixed")
    blended, _ = generate(tiny_pipe, maps, [tq.Blend(range(0, STEPS), 0.0)], noise="fixed")
    injected, _ = generate(tiny_pipe, maps, [tq.LatentDifferences(range(0, STEPS), 0.0, source)], noise="fixed")
    assert torch.equal(blended, plain) and torch.equal(injected, plain)
    moved, _ = generate(tiny_pipe, maps, [tq.Blend(range(0, STEPS), 0.5, "previous")], noise="fixed")
    assert not torch.allclose(moved, plain)


def test_copying_makes_latents_equal_at_step_k_and_skips_earlier_work(tiny_pipe, clip):
    maps, _ = clip
    spy = Spy()
    latents, stats = generate(tiny_pipe, maps, [tq.Copy(2, "anchor", "middle"), spy])
    assert all(torch.equal(frame, spy.before[2][2]) for frame in spy.before[2])
    # steps 0-1: only the anchor; steps 2-3: all 5 frames; two guidance branches each
    assert stats.unet_evals == 2 * (2 * 1 + 2 * 5)

    class CopyComputingEverything(tq.Copy):
        def first_steps(self):
            return None

    reference, reference_stats = generate(tiny_pipe, maps, [CopyComputingEverything(2, "anchor", "middle")])
    assert reference_stats.unet_evals == 2 * 4 * 5
    assert_tensors_close(latents, reference)


def test_copy_from_previous_hands_each_frame_its_predecessors_latent(tiny_pipe, clip):
    maps, _ = clip
    before, after = Spy(), Spy()
    _, stats = generate(tiny_pipe, maps, [before, tq.Copy(1, "previous"), after])
    assert torch.equal(after.before[1][1:], before.before[1][:-1]) and torch.equal(after.before[1][0], before.before[1][0])
    assert stats.unet_evals == 2 * (4 * 4 + 3 * 1)  # the last frame is nobody's predecessor: skips step 0


def test_cross_frame_attention_on_one_frame_equals_plain_attention(tiny_pipe, clip):
    maps, _ = clip
    plain, _ = generate(tiny_pipe, maps[:1])
    for mode in ("anchor", "previous", "anchor+previous"):
        crossed, _ = generate(tiny_pipe, maps[:1], [planners.CrossFrameAttention(mode)])
        assert_tensors_close(crossed, plain)
    many, _ = generate(tiny_pipe, maps)
    anchored, stats = generate(tiny_pipe, maps, [planners.CrossFrameAttention("anchor")])
    assert_tensors_close(anchored[0], many[0])
    assert not torch.allclose(anchored[1:], many[1:], atol=1e-3)
    assert stats.unet_evals == 2 * STEPS * (5 + 2)  # chunks {2,3} and {4} each bring the anchor along


def test_cross_frame_attention_wraps_the_chosen_backend_and_is_undone(clip):
    maps, _ = clip
    results = {}
    for backend in (AttnProcessor, AttnProcessor2_0):  # own pipelines: the session's tiny_pipe stays as it is
        pipe = builtin.build_tiny_pipeline()
        pipe.unet.set_attn_processor(backend())
        pipe.controlnet.set_attn_processor(backend())
        technique = planners.CrossFrameAttention("anchor")
        technique.attach(pipe)
        wrapped = list(pipe.unet.attn_processors.values()) + list(pipe.controlnet.attn_processors.values())
        assert all(isinstance(p, CrossFrameAttnProcessor) and type(p.inner) is backend for p in wrapped)
        technique.detach(pipe)
        assert all(type(p) is backend for p in pipe.unet.attn_processors.values())
        results[backend], _ = generate(pipe, maps[:3], [planners.CrossFrameAttention("anchor")])
        assert all(type(p) is backend for p in pipe.controlnet.attn_processors.values())
    assert_tensors_close(results[AttnProcessor], results[AttnProcessor2_0])  # same math on both backends


def test_keyframe_mode_with_interval_one_equals_the_plain_loop(tiny_pipe, clip):
    maps, source = clip
    plain, plain_stats = generate(tiny_pipe, maps, noise="progressive", noise_settings={"drift": 0.3})
    keyed, stats = generate(tiny_pipe, maps, keyframes=KeyframePlan(1, 0.5, source),
                            noise="progressive", noise_settings={"drift": 0.3})
    assert torch.equal(keyed, plain) and stats.unet_evals == plain_stats.unet_evals


def test_keyframes_are_generated_in_full_and_the_rest_cost_their_strength(tiny_pipe, clip):
    maps, source = clip
    plain, _ = generate(tiny_pipe, maps)
    keyed, stats = generate(tiny_pipe, maps, keyframes=KeyframePlan(3, 0.5, source))
    assert_tensors_close(keyed[[0, 3, 4]], plain[[0, 3, 4]])  # keyframes: 0, 3 and the last
    assert stats.unet_evals == 2 * (3 * STEPS + 2 * 2)  # frames 1, 2 run the last half of the schedule
    assert not torch.allclose(keyed[[1, 2]], plain[[1, 2]], atol=1e-3)


def test_start_from_latents_noises_to_the_start_step(tiny_pipe, clip):
    maps, source = clip
    spy = Spy()
    _, stats = generate(tiny_pipe, maps, [tq.StartFromLatents(source, 0.5), spy], noise="fixed")
    tiny_pipe.scheduler.set_timesteps(STEPS)
    noise = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(1))
    expected = tiny_pipe.scheduler.add_noise(source, noise.expand(5, -1, -1, -1), tiny_pipe.scheduler.timesteps[2].repeat(5))
    assert sorted(spy.before) == [2, 3]  # steps 0 and 1 are not run at all
    assert_tensors_close(spy.before[2], expected)
    assert stats.unet_evals == 2 * 2 * 5


def test_flow_fusion_with_zero_flow_pulls_frames_toward_their_predecessor(tiny_pipe, clip):
    maps, _ = clip
    flows, masks = torch.zeros(4, 8, 8, 2), torch.ones(4, 1, 8, 8)
    plain, _ = generate(tiny_pipe, maps)
    nothing, _ = generate(tiny_pipe, maps, [flow_fusion.FlowFusion(0.8, range(1), range(1, STEPS), flows, torch.zeros(4, 1, 8, 8))])
    assert_tensors_close(nothing, plain)  # no reliable pixel: no change

    def neighbour_gap(latents):
        return float((latents[1:] - latents[:-1]).detach().abs().mean())

    for x0_steps, latent_steps in ((range(1), range(1, STEPS)), (range(0), range(STEPS)), (range(2), range(0))):
        for reference in ("previous", "first"):
            fused, _ = generate(tiny_pipe, maps, [flow_fusion.FlowFusion(1.0, x0_steps, latent_steps, flows, masks, reference)])
            assert neighbour_gap(fused) < 0.5 * neighbour_gap(plain), (x0_steps, latent_steps, reference)


def _shift(count, height, width, dx, dy):
    flows = torch.zeros(count, height, width, 2)
    flows[..., 0], flows[..., 1] = dx, dy
    return flows


def test_one_latent_fusion_step_never_moves_a_frame_away_from_its_warped_reference():
    """|z_i - warp(z_ref)| on the fused pixels, after one step of the chain, is at most what it was
    (it shrinks by 1 - w m), for random latents, flows and masks; untouched pixels stay."""
    generator = torch.Generator().manual_seed(0)
    count = 5
    flows = torch.randn(count - 1, 8, 8, 2, generator=generator) * 2
    masks = (torch.rand(count - 1, 1, 8, 8, generator=generator) > 0.3).float()
    latents = torch.randn(count, 4, 8, 8, generator=generator)
    for reference in ("previous", "first"):
        fusion = flow_fusion.FlowFusion(0.6, range(0), range(1), flows, masks, reference)
        fusion.setup(SimpleNamespace(frame_ids=list(range(count))))
        fused = fusion.after_step(0, None, latents, torch.zeros_like(latents), torch.ones(count, dtype=torch.bool))
        for j in range(1, count):
            ref = 0 if reference == "first" else j - 1
            flow, mask = fusion.ref_flows[j]
            warped_ref = latent_ops.warp(fused[ref:ref + 1], flow, "nearest")
            before, after = (latents[j:j + 1] - warped_ref).abs(), (fused[j:j + 1] - warped_ref).abs()
            assert (after <= before + 1e-6).all()
            assert_tensors_close(after, (1 - 0.6 * mask) * before)
            assert torch.equal(fused[j:j + 1][mask.expand_as(after) == 0], latents[j:j + 1][mask.expand_as(after) == 0])


def test_flow_fusion_chains_the_flow_to_a_reference_not_in_the_pass():
    """A keyframe pass over clip frames 0, 2, 4: frame 2's reference is frame 0 through two flows."""
    flows, masks = _shift(4, 6, 6, 1.0, 0.0), torch.ones(4, 1, 6, 6)
    fusion = flow_fusion.FlowFusion(1.0, range(0), range(1), flows, masks, "previous")
    fusion.setup(SimpleNamespace(frame_ids=[0, 2, 4]))
    flow, mask = fusion.ref_flows[1]
    assert fusion.references == {1: 0, 2: 1}
    assert_tensors_close(flow[..., :4, 0], torch.full((1, 6, 4), 2.0))  # two 1-px shifts (the border clamps)
    first = flow_fusion.FlowFusion(1.0, range(0), range(1), flows, masks, "first")
    first.setup(SimpleNamespace(frame_ids=[0, 2, 4]))
    assert first.references == {1: 0, 2: 0}
    assert_tensors_close(first.ref_flows[2][0][..., :2, 0], torch.full((1, 6, 2), 4.0))


def test_every_technique_together(tiny_pipe, clip):
    maps, source = clip
    found = [tq.StartFromLatents(source, 0.75), tq.Copy(1, "anchor"), tq.LatentDifferences(range(1, 3), 1.0, source, "stats"),
             tq.Blend(range(2, 3), 0.2, "previous"), planners.CrossFrameAttention("anchor+previous"),
             flow_fusion.FlowFusion(0.5, range(0, 1), range(1, 2), torch.zeros(4, 8, 8, 2), torch.ones(4, 1, 8, 8))]
    latents, stats = generate(tiny_pipe, maps, found, keyframes=KeyframePlan(2, 0.5, source, "stats"), noise="fixed")
    plain, plain_stats = generate(tiny_pipe, maps, noise="fixed")
    assert torch.isfinite(latents).all()
    # keyframes 0, 2, 4 start from the source at 3/4 of the schedule (steps 1-3), copied at step 1;
    # frames 1 and 3 run the last half (steps 2-3): fewer model calls than the plain run's 5 x 4
    assert 0 < stats.unet_evals < plain_stats.unet_evals
    assert not torch.allclose(latents, plain, atol=1e-2)  # the techniques changed the clip
    assert all(type(p) is not CrossFrameAttnProcessor for p in tiny_pipe.unet.attn_processors.values())


def test_step_specs_accept_integers_and_fractions():
    assert indices.parse_step("3", 20) == 3 and indices.parse_step("0.3", 20) == 6
    assert indices.parse_step_range("0:0.5", 20) == range(0, 10) and indices.parse_step_range("5:", 20) == range(5, 20)
    for bad in ("7:3", "0:30", "25"):
        with pytest.raises(ValueError):
            (indices.parse_step if ":" not in bad else indices.parse_step_range)(bad, 20)


def test_residual_bank_round_trip(tmp_path):
    latents, keypoints = torch.randn(3, 4, 8, 8), np.ones((3, 18, 3), np.float32)
    sources.save_bank(str(tmp_path / "bank.safetensors"), latents, keypoints, {"video": "swing.mp4"})
    loaded, loaded_keypoints, metadata = sources.load_bank(str(tmp_path / "bank.safetensors"))
    assert torch.equal(loaded, latents) and np.array_equal(loaded_keypoints.numpy(), keypoints)
    assert metadata == {"video": "swing.mp4"}


def test_the_registry_knows_each_technique_once_and_presets_name_real_fields():
    from cli import run

    names = [cls.name for cls in registry.TECHNIQUES] + [KeyframePlan.name]
    assert len(set(names)) == len(names)
    assert run.preset_defaults("seed") == {"noise": "fixed", "copy_step": "0.3", "copy_from": "anchor",
                                           "diff_steps": "0.3:0.7", "diff_scale": 1.0}
    parser = argparse.ArgumentParser()
    subparsers = parser.add_subparsers()
    dests = {a.dest for a in run.run_command_parser(subparsers)._actions}
    for preset in run.PRESETS:
        assert set(run.preset_defaults(preset)) <= dests, preset


@pytest.mark.parametrize("technique, frames, steps", [
    (tq.Copy(2, "anchor"), 5, 4), (tq.Copy(1, "previous"), 5, 4), (tq.StartFromLatents(None, 0.5), 5, 4),
])
def test_each_cost_model_predicts_the_model_evaluations(tiny_pipe, clip, technique, frames, steps):
    maps, source = clip
    if isinstance(technique, tq.StartFromLatents):
        technique = tq.StartFromLatents(source, 0.5)
    _, plain = generate(tiny_pipe, maps)
    _, stats = generate(tiny_pipe, maps, [technique])
    assert stats.unet_evals == pytest.approx(technique.cost(frames, steps) * plain.unet_evals)
    plan = KeyframePlan(3, 0.5, source)
    _, keyed = generate(tiny_pipe, maps, keyframes=plan)
    assert keyed.unet_evals == pytest.approx(plan.cost(frames, steps) * plain.unet_evals)


def test_two_techniques_that_plan_the_batch_are_refused(tiny_pipe, clip):
    maps, _ = clip
    with pytest.raises(ValueError, match="both plan the model's batch"):
        generate(tiny_pipe, maps, [planners.CrossFrameAttention("anchor"), planners.CrossFrameAttention("previous")])
