"""Token merging for attention: ToMe's bipartite soft matching (Bolya et al. 2023) in the two forms
the video methods use. ``merge_random`` shrinks a token set by averaging (StreamV2V's feature
bank); ``match_to`` / ``unmerge`` drop the source tokens most like a destination set and restore
them after attention (VidToMe). Pure tensor functions; imports only torch.
"""
import torch
import torch.nn.functional as F


def cosine(a, b):
    """Cosine similarity of every token pair: a (N, C), b (M, C) -> (N, M)."""
    return F.normalize(a.float(), dim=-1) @ F.normalize(b.float(), dim=-1).T


def merge_random(metric, tensors, target, generator):
    """Shrink N tokens to ``target`` by rounds of random bipartite soft matching (StreamV2V): each
    round a random split into src (at most half) and dst, every src token averaged into its most
    similar dst token (cosine on ``metric``), the dst kept. metric (N, C), tensors: (N, ...) each,
    merged with the same assignment -> (metric, tensors) with ``target`` tokens."""
    while len(metric) > target:
        count = len(metric)
        merged = min(count - target, count // 2)
        order = torch.randperm(count, generator=generator).to(metric.device)
        src, dst = order[:merged], order[merged:]
        nearest = cosine(metric[src], metric[dst]).argmax(dim=-1)  # (merged,) index into dst

        def mean_into_dst(values):
            out = values[dst].clone()
            index = nearest.view(-1, *([1] * (values.dim() - 1))).expand(-1, *values.shape[1:])
            return out.scatter_reduce(0, index, values[src], reduce="mean", include_self=True)

        metric, tensors = mean_into_dst(metric), [mean_into_dst(t) for t in tensors]
    return metric, tensors


def match_to(src, dst, ratio):
    """VidToMe's local merge: the share ``ratio`` of src tokens most similar to a dst token (cosine)
    are dropped in favour of it. src (N, C), dst (M, C) -> (kept (K,) long, merged (N-K,) long
    indices into src, nearest (N-K,) long indices into dst)."""
    best, nearest = cosine(src, dst).max(dim=-1)
    order = best.argsort(descending=True)
    count = int(ratio * len(src))
    merged, kept = order[:count], order[count:].sort().values
    return kept, merged, nearest[merged]


def unmerge(out_kept, out_dst, kept, merged, nearest, count):
    """Restore src's ``count`` tokens after attention: the kept ones their own outputs, each merged
    one its dst token's. out_kept (K, C), out_dst (M, C) -> (count, C)."""
    out = out_kept.new_empty(count, out_kept.shape[-1])
    out[kept] = out_kept
    out[merged] = out_dst[nearest]
    return out
