"""Verdicts from intervals: a claim is a relative change of one setting against its baseline, paired
by seed and input, and it holds only where the 95 % bootstrap interval of the mean paired change lies
wholly on the claimed side (issue 36: one run of the toy world is an anecdote).

``paired_changes(baseline, setting)`` -> the relative changes; ``bootstrap_interval(values, clusters)``
-> (mean, low, high), resampling clusters of dependent values (a seed's runs, an input's) together;
``verdict(interval, side)`` -> "holds", "does not hold" or "undetermined".
"""
import numpy as np

CONFIDENCE = 0.95
RESAMPLES = 10000


def paired_changes(baseline, setting):
    """Relative change per pair, setting / baseline - 1; both {(seed, input): value} -> (P,) over the pairs in both."""
    pairs = sorted(set(baseline) & set(setting))
    return np.array([setting[p] / baseline[p] - 1 for p in pairs], dtype=np.float64)


def bootstrap_interval(values, confidence=CONFIDENCE, resamples=RESAMPLES, seed=0, clusters=None):
    """(mean, low, high): the mean of ``values`` (N,) and its percentile bootstrap interval.

    ``clusters``: per value a label, or a tuple of labels, of what it shares with other values; each
    kind of label is resampled on its own and a resample weighs a value by how often its labels were
    drawn (a cluster bootstrap, two-way for pairs). The sweeps label a run (seed, input): a seed's runs
    share its noise and an input's runs its motion, so with 3 seeds and 2 motions an interval lies wholly
    on one side of zero only where every seed and both motions lean that way.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        raise ValueError("no values to bootstrap")
    rng = np.random.default_rng(seed)
    if clusters is None:
        means = values[rng.integers(0, values.size, (resamples, values.size))].mean(axis=1)
    else:
        labels = [label if isinstance(label, tuple) else (label,) for label in clusters]
        weights = np.ones((resamples, values.size))
        for kind in zip(*labels):  # each kind of label: draw its clusters, count each one's draws
            names, index = np.unique(np.array([str(k) for k in kind]), return_inverse=True)
            picks = rng.integers(0, len(names), (resamples, len(names)))
            counts = (picks[:, :, None] == np.arange(len(names))).sum(axis=1)  # (resamples, clusters)
            weights *= counts[:, index]
        total = weights.sum(axis=1)
        means = (weights @ values)[total > 0] / total[total > 0]  # a draw that hit no value is dropped
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(values.mean()), float(low), float(high)


def verdict(interval, side):
    """"holds" where the whole interval lies on the claimed side of zero ("lower": below, "higher":
    above), "does not hold" where it lies on the other side, else "undetermined"."""
    _, low, high = interval
    below, above = high < 0, low > 0
    if not (below or above):
        return "undetermined"
    return "holds" if (below if side == "lower" else above) else "does not hold"


def summarize(rows, metrics):
    """Per setting (each row's "setting", in first-seen order), its runs and each metric's (mean, low,
    high) over them (seeds and inputs); failed rows and missing metrics left out."""
    groups = {}
    for row in rows:
        if not row.get("error"):
            groups.setdefault(row["setting"], []).append(row)
    summary = []
    for setting, group in groups.items():
        entry = {"setting": setting, "runs": len(group)}
        for metric in metrics:
            measured = [r for r in group if r.get(metric) is not None]
            if measured:  # clustered by seed and input (rows without seeds: each its own)
                labels = [(r.get("seed"), r.get("input")) for r in measured]
                entry[metric] = bootstrap_interval([r[metric] for r in measured],
                                                   clusters=None if None in [s for s, _ in labels] else labels)
        summary.append(entry)
    return summary
