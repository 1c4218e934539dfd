import math

import pytest
import torch

from noise import NOISE, gate_by_motion, noise_fixed, noise_independent, noise_progressive, noise_slerp, slerp

SHAPE = (4, 32, 32)


def generators(num_frames, seed=7):
    return [torch.Generator("cpu").manual_seed(seed + i) for i in range(num_frames)]


def corr(a, b):
    a, b = a.flatten() - a.mean(), b.flatten() - b.mean()
    return float(a @ b / (a.norm() * b.norm()))


@pytest.mark.parametrize("kind", sorted(NOISE))
def test_every_noise_has_frame_shape_and_unit_variance(kind):
    settings = {"moving": torch.rand(11, *SHAPE[1:], generator=torch.Generator().manual_seed(1)) > 0.5} \
        if kind == "flow-gated" else {}
    latents = NOISE[kind](generators(12), SHAPE, **settings)
    assert latents.shape == (12, *SHAPE) and latents.dtype == torch.float32
    for frame in latents:
        assert abs(float(frame.var()) - 1.0) < 0.08
        assert abs(float(frame.mean())) < 0.05


def test_independent_frame_i_is_what_seed_plus_i_draws():
    latents = noise_independent(generators(4, seed=3), SHAPE)
    for i in range(4):
        expected = torch.randn((1, *SHAPE), generator=torch.Generator("cpu").manual_seed(3 + i))[0]
        assert torch.equal(latents[i], expected)
    assert abs(corr(latents[0], latents[1])) < 0.05


def test_fixed_noise_is_the_first_seed_for_every_frame():
    latents = noise_fixed(generators(5, seed=11), SHAPE)
    expected = torch.randn((1, *SHAPE), generator=torch.Generator("cpu").manual_seed(11))[0]
    for frame in latents:
        assert torch.equal(frame, expected)


@pytest.mark.parametrize("drift", [0.05, 0.3, 1.0])
def test_progressive_neighbours_correlate_by_cos_drift(drift):
    latents = noise_progressive(generators(16), SHAPE, drift=drift)
    neighbour = [corr(latents[i], latents[i + 1]) for i in range(15)]
    assert abs(sum(neighbour) / len(neighbour) - math.cos(drift)) < 0.03
    two_apart = [corr(latents[i], latents[i + 2]) for i in range(14)]
    assert abs(sum(two_apart) / len(two_apart) - math.cos(drift) ** 2) < 0.04


def test_slerp_ends_are_the_first_and_last_seeds_noise():
    gens = generators(9, seed=2)
    latents = noise_slerp(gens, SHAPE)
    first = torch.randn((1, *SHAPE), generator=torch.Generator("cpu").manual_seed(2))[0]
    last = torch.randn((1, *SHAPE), generator=torch.Generator("cpu").manual_seed(10))[0]
    assert torch.allclose(latents[0], first, atol=1e-5) and torch.allclose(latents[-1], last, atol=1e-5)
    assert corr(latents[3], latents[4]) > 0.9  # neighbours along the arc are close


def test_slerp_of_parallel_vectors_is_linear():
    a = torch.ones(SHAPE)
    assert torch.allclose(slerp(a, 2 * a, 0.5), 1.5 * a)


def test_flow_gated_noise_keeps_the_previous_noise_where_the_source_is_still():
    generators = [torch.Generator().manual_seed(10 + i) for i in range(4)]
    shape = (4, 8, 8)
    still = torch.zeros(3, 8, 8)
    assert torch.equal(NOISE["flow-gated"](generators, shape, moving=still),
                       NOISE["fixed"]([torch.Generator().manual_seed(10 + i) for i in range(4)], shape))
    moving = torch.ones(3, 8, 8)
    assert torch.equal(NOISE["flow-gated"]([torch.Generator().manual_seed(10 + i) for i in range(4)], shape, moving=moving),
                       NOISE["independent"]([torch.Generator().manual_seed(10 + i) for i in range(4)], shape))
    half = torch.zeros(3, 8, 8)
    half[:, :, 4:] = 1  # the right half moves
    gated = NOISE["flow-gated"]([torch.Generator().manual_seed(10 + i) for i in range(4)], shape, moving=half)
    assert torch.equal(gated[3, :, :, :4], gated[0, :, :, :4]) and not torch.equal(gated[3, :, :, 4:], gated[0, :, :, 4:])


def test_gating_keeps_each_latent_pixel_from_the_last_frame_that_moved_there():
    latents = torch.arange(4.0)[:, None, None, None].expand(4, 2, 1, 3)  # frame n is all n
    moving = torch.tensor([[[1, 0, 1]], [[0, 0, 1]], [[1, 0, 0]]], dtype=torch.float32)  # (F-1, 1, 3)
    gated = gate_by_motion(latents, moving)
    # column 0 moves at frames 1 and 3, column 1 never, column 2 at frames 1 and 2
    expected = torch.tensor([[0, 0, 0], [1, 0, 1], [1, 0, 2], [3, 0, 2]], dtype=torch.float32)
    assert torch.equal(gated, expected[:, None, None, :].expand(4, 2, 1, 3))
