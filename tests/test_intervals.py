"""measure/intervals.py on synthetic numbers with known answers."""
import numpy as np
import pytest

from measure import intervals


def test_paired_changes_pair_by_seed_and_input_and_skip_unpaired():
    baseline = {(0, "swing"): 2.0, (1, "swing"): 4.0, (0, "jacks"): 1.0}
    setting = {(0, "swing"): 1.0, (1, "swing"): 5.0, (2, "swing"): 9.0}
    assert intervals.paired_changes(baseline, setting).tolist() == [-0.5, 0.25]


def test_constant_changes_have_a_point_interval():
    assert intervals.bootstrap_interval([0.2] * 6) == pytest.approx((0.2, 0.2, 0.2))


def test_the_interval_covers_the_mean_and_narrows_with_more_samples():
    rng = np.random.default_rng(1)
    few, many = rng.normal(-0.1, 0.05, 6), rng.normal(-0.1, 0.05, 600)
    for values in (few, many):
        mean, low, high = intervals.bootstrap_interval(values)
        assert low < mean < high
    assert np.ptp(intervals.bootstrap_interval(many)[1:]) < np.ptp(intervals.bootstrap_interval(few)[1:])
    # a normal sample's bootstrap interval of the mean is about +-1.96 sigma / sqrt(n)
    _, low, high = intervals.bootstrap_interval(many)
    assert (high - low) / 2 == pytest.approx(1.96 * many.std() / np.sqrt(600), rel=0.1)


@pytest.mark.parametrize("changes, side, expected", [
    ([-0.30, -0.28, -0.33, -0.31, -0.29, -0.32], "lower", "holds"),
    ([-0.30, -0.28, -0.33, -0.31, -0.29, -0.32], "higher", "does not hold"),
    ([0.12, 0.10, 0.15, 0.11, 0.13, 0.14], "lower", "does not hold"),
    ([0.12, 0.10, 0.15, 0.11, 0.13, 0.14], "higher", "holds"),
    ([-0.2, 0.2, -0.1, 0.1, -0.15, 0.15], "lower", "undetermined"),
    ([-0.2, 0.2, -0.1, 0.1, -0.15, 0.15], "higher", "undetermined"),
])
def test_the_verdict_follows_the_side_the_whole_interval_lies_on(changes, side, expected):
    assert intervals.verdict(intervals.bootstrap_interval(changes), side) == expected


def test_a_cluster_bootstrap_resamples_dependent_values_together():
    # two seeds, each with four runs that share its noise: the values move with the seed
    values, seeds = [1.0, 1.1, 1.0, 1.1, -0.9, -1.0, -0.9, -1.0], [0, 0, 0, 0, 1, 1, 1, 1]
    mean, low, high = intervals.bootstrap_interval(values, clusters=seeds)
    assert mean == pytest.approx(0.05) and low == pytest.approx(-0.95) and high == pytest.approx(1.05)
    _, naive_low, naive_high = intervals.bootstrap_interval(values)  # as eight independent draws: narrower
    assert naive_low > low and naive_high < high
    # with one value a cluster it is the plain bootstrap
    assert intervals.bootstrap_interval(values, clusters=range(8)) == pytest.approx(
        intervals.bootstrap_interval(values), abs=0.05)


def test_seeds_and_inputs_are_resampled_apart():
    # 3 seeds x 2 inputs; the seed does not matter (a deterministic start), the input does
    labels = [(s, clip) for s in range(3) for clip in ("swing", "jacks")]
    values = [0.1 if clip == "swing" else -0.3 for _, clip in labels]
    mean, low, high = intervals.bootstrap_interval(values, clusters=labels)
    assert mean == pytest.approx(-0.1) and low == pytest.approx(-0.3) and high == pytest.approx(0.1)
    assert intervals.bootstrap_interval(values, clusters=[s for s, _ in labels]) == pytest.approx((-0.1, -0.1, -0.1))
