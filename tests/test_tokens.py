"""loop/tokens.py: ToMe's bipartite soft matching in StreamV2V's and VidToMe's forms, on cases with a
known answer."""
import torch

from loop import tokens


def test_random_merging_shrinks_to_the_target_and_averages_a_token_into_its_twin():
    directions = torch.eye(8)[:4] * 10
    metric = directions.repeat(2, 1)  # four pairs of twins
    values = torch.arange(8, dtype=torch.float32)[:, None]
    merged_metric, (merged_values,) = tokens.merge_random(metric, [values], 7, torch.Generator().manual_seed(0))
    assert merged_metric.shape == (7, 8) and merged_values.shape == (7, 1)
    # one token merged: into its twin (i and i + 4), whose value became the pair's mean
    after_twins_merge = [sorted([v for v in range(8) if v not in (i, i + 4)] + [i + 2.0]) for i in range(4)]
    assert sorted(merged_values[:, 0].tolist()) in after_twins_merge
    shrunk, (shrunk_values,) = tokens.merge_random(torch.randn(40, 8, generator=torch.Generator().manual_seed(1)),
                                                   [values.repeat(5, 1)], 9, torch.Generator().manual_seed(2))
    assert shrunk.shape == (9, 8) and shrunk_values.min() >= 0 and shrunk_values.max() <= 7  # means of inputs
    again = tokens.merge_random(torch.randn(40, 8, generator=torch.Generator().manual_seed(1)), [values.repeat(5, 1)],
                                9, torch.Generator().manual_seed(2))[1][0]
    assert torch.equal(again, shrunk_values)  # seeded: the same merge
    assert tokens.merge_random(metric, [values], 8, torch.Generator())[1][0] is values  # nothing to merge


def test_local_matching_drops_the_most_similar_share_and_unmerging_restores_them():
    dst = torch.eye(4)
    src = torch.cat([torch.eye(4)[[0, 2]], torch.tensor([[1.0, 1.0, 1.0, 1.0]])])  # two copies, one unlike any
    kept, merged, nearest = tokens.match_to(src, dst, 2 / 3)
    assert merged.tolist() == [0, 1] or sorted(merged.tolist()) == [0, 1]
    assert kept.tolist() == [2] and sorted(nearest.tolist()) == [0, 2]
    out = tokens.unmerge(torch.full((1, 3), 7.0), torch.arange(12.0).view(4, 3), kept, merged, nearest, 3)
    assert out.shape == (3, 3) and torch.equal(out[2], torch.full((3,), 7.0))
    assert torch.equal(out[0], torch.arange(12.0).view(4, 3)[0]) and torch.equal(out[1], torch.arange(12.0).view(4, 3)[2])
    kept, merged, _ = tokens.match_to(src, dst, 0.0)
    assert kept.tolist() == [0, 1, 2] and merged.numel() == 0  # ratio 0 merges nothing
