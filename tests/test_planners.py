"""RAVE's grid and FLATTEN's trajectory attention: their index math exactly, their model calls on
the tiny model, and their refusals."""
import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor

import latent_ops
import pose_extract
from conftest import assert_tensors_close, random_keypoints
from loop import pipeline, planners, predict
from loop.attention import TrajectoryAttnProcessor, trajectory_attention
from loop.pipeline import GenerationConfig

STEPS = 3


@pytest.fixture(scope="module")
def maps():
    """Five 64x64 pose maps."""
    keypoints = random_keypoints(np.random.default_rng(5), 64, 64, 5)
    return np.stack([pose_extract.draw_openpose(k, 64, 64) for k in keypoints])


def generate(pipe, maps, found=(), batch_size=4):
    config = GenerationConfig(prompt="a golfer", steps=STEPS, guidance=3.0, seed=2, batch_size=batch_size)
    return pipeline.generate(pipe, maps, config, list(found), progress=False)


# ---- RAVE's grid ----------------------------------------------------------------------------

@pytest.mark.parametrize("k", [2, 3])
def test_tiling_and_untiling_are_exact_inverses_in_row_major_order(k):
    frames = torch.randn(2 * k * k, 4, 3, 5)
    grids = latent_ops.tile(frames, k)
    assert grids.shape == (2, 4, 3 * k, 5 * k)
    assert torch.equal(latent_ops.untile(grids, k), frames)
    assert torch.equal(latent_ops.tile(latent_ops.untile(grids, k), k), grids)
    # the second grid's frame in row 1, column 0 sits below its first frame
    assert torch.equal(grids[1, :, 3:6, 0:5], frames[k * k + k])


def test_grid_plans_cover_every_frame_in_a_seeded_order_that_changes_per_step():
    grid = planners.Grid(2, shuffle=True, seed=7)
    grid.setup(None)
    computed = [0, 1, 2, 3, 4, 5, 6]
    plans = [grid.plan_grids(step, computed) for step in range(3)]
    for groups, k in plans:
        assert k == 2 and all(len(g) == 4 for g in groups) and len(groups) == 2
        order = [j for g in groups for j in g]
        assert sorted(order[:7]) == computed and order[7] == order[0]  # the fill: the order's first frame
    assert plans[0][0] != plans[1][0]  # reshuffled at every step
    again = planners.Grid(2, shuffle=True, seed=7)
    again.setup(None)
    assert again.plan_grids(0, computed) == plans[0]  # seeded
    fixed = planners.Grid(3, shuffle=False)
    fixed.setup(None)
    assert fixed.plan_grids(0, [4, 5]) == ([[4, 5, 4, 5, 4, 5, 4, 5, 4]], 3)


@pytest.mark.parametrize("k", [2, 3])
def test_the_grid_permutation_is_undone_exactly(tiny_pipe, maps, monkeypatch, k):
    """With a model that returns its input, every frame gets back exactly its own latent."""
    monkeypatch.setattr(predict, "predict_noise", lambda pipe, latents, *a, **kw: latents * 1.0)
    grid = planners.Grid(k, shuffle=True, seed=3)
    grid.setup(None)
    latents = torch.randn(5, 4, 8, 8)
    batcher = predict.Batcher(tiny_pipe, maps, list(range(5)), GenerationConfig(prompt="", batch_size=4),
                              pipeline.LoopStats(), grid)
    computed = [0, 2, 3, 4]
    active = torch.tensor([True, False, True, True, True])
    assert torch.equal(batcher.predict(latents, computed, active, 0, 999, None, 1.0), latents[computed])


def test_grid_1_gives_the_plain_runs_frames_and_grid_2_denoises_frames_jointly(tiny_pipe, maps):
    plain, plain_stats = generate(tiny_pipe, maps)
    single, _ = generate(tiny_pipe, maps, [planners.Grid(1, shuffle=True, seed=4)])
    assert_tensors_close(single, plain)
    tiled, stats = generate(tiny_pipe, maps, [planners.Grid(2)])
    assert (tiled - plain).abs().max() > 0.05  # a grid's frames share one picture's attention and convolutions
    # 5 frames fill two 2x2 grids (3 of them again): 8 frames' worth of model work per branch and step
    assert stats.unet_evals == 2 * STEPS * 8 and plain_stats.unet_evals == 2 * STEPS * 5
    assert planners.Grid(2).cost(5, STEPS) == pytest.approx(8 / 5)


# ---- FLATTEN's trajectory attention ---------------------------------------------------------

def shifted(rows=4, cols=4, shift=1, occluded=()):
    """Backward flow of frame 1 to frame 0, (1, rows, cols, 2): frame 1 at (x, y) shows what frame 0
    shows at (x + shift, y); the tokens in ``occluded`` fail the forward-backward check."""
    flows = torch.zeros(1, rows, cols, 2)
    flows[..., 0] = shift
    masks = torch.ones(1, 1, rows, cols)
    for index in occluded:
        masks[0, 0, index // cols, index % cols] = 0
    return flows, masks


def test_trajectories_follow_a_known_shift_and_break_where_occluded():
    flows, masks = shifted(occluded=(5,))
    paths = latent_ops.trajectory_indices(latent_ops.token_links(flows, masks, 1), [0, 1])
    for p in range(16):
        x, y = p % 4, p // 4
        expected = p + 1 if x < 3 and p != 5 else -1  # shifted out of the picture, or occluded
        assert paths[1, 0, p] == expected
    # forward: the inverse; column 0 of frame 0 is seen by no token of frame 1, nor is token 6
    assert [int(paths[0, 1, p]) for p in (0, 1, 2, 3, 6, 7)] == [-1, 0, 1, 2, -1, 6]
    assert (paths[0, 0] == -1).all() and (paths[1, 1] == -1).all()
    # at half resolution the flow is half a token: links follow the rounded shift
    coarse = latent_ops.token_links(*shifted(shift=2), 2)  # a 2x2 token grid, shifted by one token
    assert coarse[1].tolist() == [1, -1, 3, -1]


def test_trajectories_chain_over_frames_missing_from_the_batch():
    flows = torch.zeros(2, 4, 4, 2)
    flows[..., 0] = 1  # every frame shows its predecessor shifted by one column
    links = latent_ops.token_links(flows, torch.ones(2, 1, 4, 4), 1)
    paths = latent_ops.trajectory_indices(links, [0, 2])
    assert paths[1, 0, 0] == 2 and paths[1, 0, 2] == -1 and paths[0, 1, 2] == 0


def test_each_token_attends_to_the_token_its_trajectory_maps_it_to_and_occluded_ones_to_none():
    flows, masks = shifted(occluded=(5,))
    paths = latent_ops.trajectory_indices(latent_ops.token_links(flows, masks, 1), [0, 1])
    count, tokens = 2, 16
    query = key = torch.zeros(count, 1, tokens, 4)  # equal scores: every key allowed gets weight
    value = torch.eye(count * tokens).reshape(count, tokens, 1, count * tokens).transpose(1, 2)  # one-hot per token
    weights = trajectory_attention(query, key, value, paths, 1.0)[:, 0]  # (frame, token, weight per token of the batch)
    for p in range(tokens):
        own, other = weights[1, p, tokens:], weights[1, p, :tokens]  # frame 1's token p: own frame, frame 0
        assert torch.all(own > 0)
        mapped = int(paths[1, 0, p])
        if mapped < 0:
            assert torch.all(other == 0), p
        else:
            assert other[mapped] > 0 and other.sum() == other[mapped], p
        assert weights[1, p].sum() == pytest.approx(1.0)


@torch.no_grad()
def test_the_processor_without_trajectories_is_the_plain_attention():
    torch.manual_seed(0)
    attn = Attention(query_dim=32, heads=4, dim_head=8, processor=AttnProcessor())
    hidden = torch.randn(4, 16, 32)  # two frames, both guidance branches
    expected = attn(hidden)
    attn.set_processor(TrajectoryAttnProcessor(AttnProcessor()))
    none = torch.full((2, 2, 16), -1, dtype=torch.long)
    assert_tensors_close(attn(hidden, trajectories=none), expected)
    assert_tensors_close(attn(hidden), expected)
    paths = latent_ops.trajectory_indices(latent_ops.token_links(*shifted(), 1), [0, 1])
    assert (attn(hidden, trajectories=paths) - expected).abs().max() > 1e-3


def test_trajectory_attention_in_the_tiny_model(tiny_pipe, maps):
    # the tiny UNet's first attention is one level down: tokens on an (h/2, w/2) grid
    flows, masks = torch.zeros(4, 8, 8, 2), torch.ones(4, 1, 8, 8)
    still = planners.TrajectoryAttention(flows, masks)
    plain, _ = generate(tiny_pipe, maps)
    tracked, _ = generate(tiny_pipe, maps, [still])
    assert still.links.shape == (5, 16) and (tracked - plain).abs().max() > 1e-3
    assert all(type(p) is not TrajectoryAttnProcessor for p in tiny_pipe.unet.attn_processors.values())
    broken = planners.TrajectoryAttention(flows, torch.zeros(4, 1, 8, 8))  # nothing passes the check
    assert_tensors_close(generate(tiny_pipe, maps, [broken])[0], plain)


@torch.no_grad()
def test_upcast_layers_score_in_fp32_and_return_their_own_dtype():
    torch.manual_seed(1)
    attn = Attention(query_dim=32, heads=4, dim_head=8, upcast_attention=True,
                     processor=TrajectoryAttnProcessor(AttnProcessor()))
    hidden = torch.randn(2, 16, 32)
    paths = latent_ops.trajectory_indices(latent_ops.token_links(*shifted(), 1), [0, 1])
    expected = attn(hidden, trajectories=paths)
    half = attn.to(torch.bfloat16)(hidden.bfloat16(), trajectories=paths)
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), expected, rtol=0.05, atol=0.05)


# ---- StreamV2V's feature bank and VidToMe's token merging ----------------------------------------

def test_the_feature_bank_is_causal_and_batch_size_does_not_matter(tiny_pipe, maps):
    bank = lambda: [planners.FeatureBank(2, fusion=0.5, threshold=0.0)]  # noqa: E731
    latents, _ = generate(tiny_pipe, maps, bank(), batch_size=2)
    changed = maps.copy()
    changed[3] = maps[0]
    later_changed, _ = generate(tiny_pipe, changed, bank(), batch_size=2)
    assert torch.equal(later_changed[:3], latents[:3])  # frames 0-2 never see frame 3
    assert (later_changed[3] - latents[3]).abs().max() > 0.1
    for size in (1, 5):  # frame by frame or all at once: the same bank, the same frames
        assert_tensors_close(generate(tiny_pipe, maps, bank(), batch_size=size)[0], latents)
    plain, _ = generate(tiny_pipe, maps)
    assert_tensors_close(latents[0], plain[0])  # the first frame has an empty bank: plain attention
    assert (latents[1:] - plain[1:]).abs().max() > 0.1


def test_the_bank_holds_at_most_n_frames_then_one_frames_worth(tiny_pipe, maps):
    technique = planners.FeatureBank(2)
    sizes = []
    real_add = planners.FeatureBankProcessor._add

    def spy(processor, bank, key, value, output, frame_id):
        real_add(processor, bank, key, value, output, frame_id)
        if processor.name.startswith("unet.") and processor.name.endswith("attn1.processor"):
            sizes.append((bank["frames"], bank["keys"].shape[1], key.shape[1]))

    planners.FeatureBankProcessor._add = spy
    try:
        generate(tiny_pipe, maps, [technique])
    finally:
        planners.FeatureBankProcessor._add = real_add
    per_frame = sizes[0][2]
    # per layer, branch and step the bank takes frames 0, 1 (2 frames), then merges 3 into 1, then 2
    seen = [(frames, count // per_frame) for frames, count, _ in sizes[:5]]
    assert seen == [(1, 1), (2, 2), (1, 1), (2, 2), (1, 1)]
    assert all(frames <= 2 and count <= 2 * per_frame for frames, count, _ in sizes)


def test_token_merging_attends_over_fewer_tokens_and_restores_every_frame(tiny_pipe, maps):
    lengths = []
    technique = planners.TokenMerge(0.5, chunk=4, global_ratio=0.0)
    original = planners.TokenMergeProcessor._merged_attention

    def spy(processor, attn, chunk):
        out = original(processor, attn, chunk)
        lengths.append((chunk.shape[1], chunk.shape[2], out.shape))
        return out

    from loop import attention

    real_attend = attention._attend
    attended = []
    attention._attend = lambda attn, q, k, v: attended.append(q.shape[-2]) or real_attend(attn, q, k, v)
    planners.TokenMergeProcessor._merged_attention = spy
    try:
        latents, _ = generate(tiny_pipe, maps, [technique], batch_size=5)
    finally:
        planners.TokenMergeProcessor._merged_attention = original
        attention._attend = real_attend
    assert latents.shape == (5, 4, 8, 8) and torch.isfinite(latents).all()
    frames, count, shape = lengths[0]
    assert frames == 4 and shape[1:3] == (4, count)  # unmerged: every frame's tokens back
    assert attended[0] == count + (frames - 1) * count - int(0.5 * (frames - 1) * count)  # target + kept
    plain, _ = generate(tiny_pipe, maps, batch_size=5)
    assert (latents - plain).abs().max() > 0.1


def test_off_values_are_the_plain_run_and_a_second_planner_is_refused(tmp_path, capsys):
    import sdvideo

    fast = ["--model", "tiny", "--height", "64", "--width", "64", "--steps", "2", "--max-frames", "2", "--quiet"]
    outs = {}
    for name, flags in (("plain", []), ("bank0", ["--feature-bank", "0"]), ("merge0", ["--token-merge", "0"])):
        assert sdvideo.main([*fast, *flags, "--out", str(tmp_path / name)]) == 0
        outs[name] = (tmp_path / name / "frames" / "00001.png").read_bytes()
    assert outs["plain"] == outs["bank0"] == outs["merge0"]
    for flags in (["--feature-bank", "1", "--cross-frame-attn", "anchor"], ["--token-merge", "0.5", "--grid", "2"]):
        assert sdvideo.main([*fast, *flags, "--out", str(tmp_path / "no")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "both plan the model's calls" in err[0]
