"""DeepCache's quality cost on the toy world (issue 35): each cached setting against the same setting
uncached, paired by seed and input, with 95 % bootstrap intervals as the claims tables have them.

    python benchmarks/toy_cache.py              # ~8 min on one CPU core
    python benchmarks/toy_cache.py --from-json  # the report again from the last results

Runs ``sdvideo.py sweep demo/toy_cache_sweep.yaml`` (the swing and jumping jacks, 16 frames each,
seeds 0-2) and writes benchmarks/results/toy_cache.{json,md} and BENCHMARKS.md's section between its
markers. The target: interval 3 keeps pose IoU within 0.02 of the uncached run ("holds" where the
interval of the mean paired difference lies above -0.02, "does not hold" where it lies below).
"""
import argparse
import json
import os
import platform
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from measure import intervals  # noqa: E402
from sections import publish  # noqa: E402
from toy_claims import by_setting  # noqa: E402
from toy_world import run_techniques  # noqa: E402

RESULTS = os.path.join(ROOT, "benchmarks", "results")
SWEEP = os.path.join(ROOT, "demo", "toy_cache_sweep.yaml")
MARKERS = ("<!-- toy-cache:start -->", "<!-- toy-cache:end -->")
HEADING = "DeepCache's quality cost on the toy world"
# (cached setting, its uncached baseline)
PAIRS = [("cache-3", "plain"), ("cache-3-branch-1", "plain"), ("cache-5", "plain"), ("frames-2", "plain"),
         ("cache-3-frames-2", "plain"), ("fixed-frames-2", "fixed-noise"), ("fixed-frames-2-branch-4", "fixed-noise"),
         ("fixed-cache-3-frames-2", "fixed-noise"), ("copying-cache-3", "copying"), ("keyframes-cache-3", "keyframes")]
POSE_MARGIN = 0.02  # the target: pose IoU within 0.02 of the uncached run


def differences(runs, baseline, setting, key):
    """Paired absolute differences setting - baseline of ``key`` over the (seed, input) pairs both have, (P,)."""
    return np.array([runs[setting][p][key] - runs[baseline][p][key] for p in pairs(runs, baseline, setting)])


def pairs(runs, baseline, setting):
    return sorted(set(runs[baseline]) & set(runs[setting]))


def interval(values, labels):
    """The mean's interval, seeds and inputs resampled apart (a seed's runs share its noise, an input's
    its motion); labels: (seed, input) per value."""
    return intervals.bootstrap_interval(values, clusters=labels)


def interval_text(values, seeds, digits=3, percent=False):
    mean, low, high = interval(values, seeds)
    scale, unit, sign = (100, "%", "+") if percent else (1, "", "+")
    return f"{mean * scale:{sign}.{digits}f}{unit} [{low * scale:{sign}.{digits}f}{unit}, {high * scale:{sign}.{digits}f}{unit}]"


def pose_verdict(values, seeds):
    """Whether the mean pose IoU difference stays within POSE_MARGIN of the uncached run (a loss only)."""
    _, low, high = interval(values, seeds)
    return "holds" if low >= -POSE_MARGIN else "does not hold" if high < -POSE_MARGIN else "undetermined"


def table(rows):
    runs = by_setting(rows)
    lines = ["| cached setting (against) | full UNet evaluations per frame | warping error change | pose IoU "
             f"difference | within {POSE_MARGIN} of uncached | shirt colour difference | time per frame, ratio |",
             "|---|---|---|---|---|---|---|"]
    for setting, baseline in PAIRS:
        if setting not in runs or baseline not in runs:
            lines.append(f"| {setting} ({baseline}) | not run | | | | | |")
            continue
        evals = np.mean([r["unet_evals_per_frame"] for r in runs[setting].values()])
        base_evals = np.mean([r["unet_evals_per_frame"] for r in runs[baseline].values()])
        warping = intervals.paired_changes({p: r["warping_error"] for p, r in runs[baseline].items()},
                                           {p: r["warping_error"] for p, r in runs[setting].items()})
        seeds = pairs(runs, baseline, setting)  # (seed, input) labels
        pose = differences(runs, baseline, setting, "pose_iou")
        shirt = differences(runs, baseline, setting, "shirt_color_accuracy")
        speed = np.mean([r["seconds_per_frame"] for r in runs[setting].values()]) / np.mean(
            [r["seconds_per_frame"] for r in runs[baseline].values()])
        lines.append(f"| {setting} ({baseline}) | {evals:.1f} of {base_evals:.1f} | "
                     f"{interval_text(warping, seeds, 1, True)} | {interval_text(pose, seeds)} | "
                     f"{pose_verdict(pose, seeds)} | {interval_text(shirt, seeds)} | {speed:.2f} |")
    return "\n".join(lines)


def report(measured):
    return f"""{MARKERS[0]}

Toy world 2 (`--model toy`), `demo/toy_cache_sweep.yaml`: the swing and jumping jacks, 16 frames each at
a stride of 3, 20 DDIM steps, seeds 0-2; each cached setting against the same setting uncached, paired by
seed and input, mean and 95 % bootstrap interval over the {measured['pairs']} pairs (seeds and inputs resampled
apart: a seed's pairs share its noise, an input's its motion). Branch ids are
DeepCache's (the toy model has one layer a block: 0 is the input conv and the last up layer, 1 the whole
first level). Full UNet evaluations per frame count both guidance branches; the shallow ones are the
rest. Time per frame is wall-clock on shared cores, a rough guide only (speed is measured side by side in
`bench.py`). {measured['machine']}, {measured['date']}, {measured['minutes']:.1f} min
(`python benchmarks/toy_cache.py`).

{table(measured['rows'])}

{MARKERS[1]}"""


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from-json", action="store_true",
                        help="write the report again from benchmarks/results/toy_cache.json, running nothing")
    args = parser.parse_args(argv)
    if args.from_json:
        with open(os.path.join(RESULTS, "toy_cache.json"), encoding="utf-8") as f:
            measured = json.load(f)
    else:
        started = time.perf_counter()
        rows, _ = run_techniques(SWEEP)
        measured = {"machine": f"{platform.machine()}, {os.cpu_count()} cores; torch {torch.__version__}",
                    "date": time.strftime("%Y-%m-%d"), "minutes": (time.perf_counter() - started) / 60,
                    "pairs": len({(row["seed"], row["input"]) for row in rows}), "rows": rows}
    publish("toy_cache", measured, report(measured), MARKERS, HEADING)


if __name__ == "__main__":
    main()
