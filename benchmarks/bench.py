"""Speed and memory of sdvideo against diffusers, measured side by side in one run.

    python benchmarks/bench.py --arch mid            # CPU target: ~40M-parameter UNet, 256x256, 16 frames
    python benchmarks/bench.py --arch full --dtype bf16 --height 512 --width 512   # GPU: SD2.1 + ControlNet shapes
    python benchmarks/bench.py --arch mid --options   # sdvideo (c) under each speed option, side by side

Random weights (speed does not depend on their values). Each configuration runs in a fresh
subprocess, so peak memory is its own:
  (a) diffusers' StableDiffusionControlNetPipeline called once per frame, as a user would script it
  (b) the same pipeline called once with all frames as a batch
  (c) sdvideo with the same settings (its frames are compared with (a))
  (d) sdvideo with latent copying from the first frame at half the schedule
  (e) sdvideo in keyframe mode, K = 8, residual strength 0.3
  (f), (g) sdvideo with RAVE's grid, K = 2 and 3 (not in the default --configs)
  (h), (i) the few-step path, SD-Turbo's setting: Euler with trailing timestep spacing, 4 steps,
      guidance 0 (one branch), the tiny VAE (AutoencoderTiny, TAESD's layout) for decoding; (h)
      diffusers' pipeline with all frames in one call, (i) sdvideo (not in the default --configs)
  (j), (k) the same at 1 step
  (l) cross-frame attention to the first frame, (m) StreamV2V's feature bank (N = 1, fusion 0.8),
      (n), (o) VidToMe's token merging at R = 0.5 and 0.9 (not in the default --configs)
  (p), (q) DeepCache at interval 3, branch ids 0 and 2; (r) the frame cache, K = 2, branch 0;
      (s) both, N = 3, K = 2, branch 0 (not in the default --configs; speed against (c))
It prints and writes (``--out``) a markdown table: seconds per frame, UNet evaluations per frame,
peak memory, FLOPs (torch's flop counter on one evaluation of each model, times the evaluations
made), achieved fraction of the machine's peak (a matmul measured in the same run), each
configuration's speed-up over (a), and the bound the schedule arithmetic allows. ``--options``
instead times (c) with each speed option against sdvideo's defaults (SDPA attention, the
ControlNet conditioning embedding computed once per frame), each in its own process; the
warm-up time (torch.compile's compilation) is reported apart.
"""
import argparse
import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench_config import CONFIGS, DEEP_CACHE, FEW_STEPS, OPTIONS, run_config  # noqa: E402
from bench_models import ARCHS, machine_name, machine_peak, unit_flops  # noqa: E402



def bounds(args):
    """Best-case speed-up over (a) from the frame-steps each configuration skips."""
    n, f = args.steps, args.frames
    keys = len(set(range(0, f, 8)) | {f - 1})
    s_steps = n - (n - min(int(round(n * 0.3)), n))
    branches = 2 if args.guidance > 1 else 1  # (a)'s; the few-step configurations compute one
    return {"a": 1.0, "b": 1.0, "c": 1.0, "d": f * n / (n // 2 + f * (n - n // 2)),
            "e": f * n / (keys * n + (f - keys) * s_steps),
            "f": f / (-(-f // 4) * 4), "g": f / (-(-f // 9) * 9),  # a grid's fill is computed too
            **{k: n * branches / steps for k, steps in FEW_STEPS.items()},
            "l": f / (f + -(-f // args.batch_size)), "m": 1.0, "n": 1.0, "o": 1.0,  # (l): the anchor rides along
            # DeepCache: the full evaluations it skips, its shallow ones counted free
            **{k: f * n / (-(-n // every) * -(-f // group)) for k, (every, _, group) in DEEP_CACHE.items()}}


def memory_scaling(args):
    """Peak memory of configuration (c) at several clip lengths, each in a fresh process."""
    counts = [int(n) for n in args.memory_frames.split(",")]
    peaks = {}
    for count in counts:
        result, error = run_subprocess(args, "c", ["--frames", str(count)])
        if result is None:
            sys.exit(f"{count} frames failed: {error}")
        peaks[count] = result["peak_bytes"]
        print(f"{count} frames: peak {peaks[count] / 2 ** 30:.3f} GiB", flush=True)
    first = peaks[counts[0]]
    table = (f"machine: {machine_name(args.device)}; {time.strftime('%Y-%m-%d')}\n\n"
             f"`python benchmarks/bench.py {' '.join(sys.argv[1:])}`: sdvideo (c), {args.arch} architecture, "
             f"{args.dtype}, {args.width}x{args.height}, {args.steps} steps, batch {args.batch_size}; peak "
             f"{'GPU memory allocated' if args.device.startswith('cuda') else 'resident memory of the process'}.\n\n"
             "| frames | peak memory (GiB) | ratio to the first |\n|---|---|---|\n"
             + "".join(f"| {n} | {p / 2 ** 30:.3f} | {p / first:.3f} |\n" for n, p in peaks.items()))
    print("\n" + table)
    if args.out:
        with open(args.out + ".md", "w") as f:
            f.write(table)


def run_subprocess(args, name, extra):
    """One configuration in a fresh process -> its result dict, or (None, the error's last line)."""
    argv = [a for a in sys.argv[1:] if a != "--options"]
    command = [sys.executable, __file__, *argv, "--only", name, "--device", args.device, *extra]
    output = subprocess.run(command, capture_output=True, text=True)
    line = [x for x in output.stdout.splitlines() if x.startswith("RESULT ")]
    if not line:
        last = (output.stderr.strip().splitlines() or ["no output"])[-1]
        return None, last.split("UserError: ")[-1]  # the exception's line, without its type
    return json.loads(line[0][7:]), None


def speed_options(args):
    """Time sdvideo (c) under each speed option, each in its own process, against its defaults."""
    import numpy as np

    header = (f"machine: {machine_name(args.device)}; torch {__import__('torch').__version__}; "
              f"{time.strftime('%Y-%m-%d')}\n\n"
              f"`python benchmarks/bench.py {' '.join(sys.argv[1:])}`: sdvideo (c), {args.arch} architecture, "
              f"{args.dtype} unless the option says otherwise, {args.width}x{args.height}, {args.frames} frames, "
              f"{args.steps} DDIM steps, guidance {args.guidance}, batch {args.batch_size}. Speed-up is against the "
              "first row (sdvideo's defaults); warm-up is the untimed 2-step run before, at the timed run's "
              "batch shape (compilation included); pixel difference against the first row's frames.\n\n"
              "| option | s / frame | speed-up | warm-up (s) | peak memory (GiB) | max pixel difference |\n"
              "|---|---|---|---|---|---|\n")
    rows, reference = [], None
    scratch = tempfile.mkdtemp(prefix="sdvideo-bench-")  # this run's own: two benchmarks never share files
    atexit.register(shutil.rmtree, scratch, True)
    for index, option in enumerate(OPTIONS):
        path = os.path.join(scratch, f"option-{index}.npy")
        result, error = run_subprocess(args, "c", ["--option", option, "--save-frames", path])
        if result is None:
            print(f"{option}: failed ({error})", flush=True)
            rows.append(f"| {option} | - | - | - | - | failed: {error[:120]} |")
        else:
            frames = np.load(path).astype(int)
            reference = reference or (result, frames)
            ratio = reference[0]["seconds_per_frame"] / result["seconds_per_frame"]
            difference = int(np.abs(frames - reference[1]).max())
            print(f"{option}: {result['seconds_per_frame']:.3f} s/frame", flush=True)
            rows.append(f"| {option} | {result['seconds_per_frame']:.3f} | {ratio:.2f}x | "
                        f"{result['warm_up_seconds']:.1f} | {result['peak_bytes'] / 2 ** 30:.2f} | {difference}/255 |")
        if args.out:  # after every row: a benchmark stopped part-way keeps the rows it measured
            with open(args.out + ".md", "w") as f:
                f.write(header + "\n".join(rows) + "\n")
    print("\n" + header + "\n".join(rows))


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", choices=sorted(ARCHS), default="mid")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), default="fp32")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16, help="sdvideo's frames per model call")
    parser.add_argument("--configs", default="abcde")
    parser.add_argument("--out", default=None, help="write the markdown table and JSON here (prefix)")
    parser.add_argument("--canny", action="store_true",
                        help="sdvideo (c) with a second ControlNet on Canny edges (--control pose,canny)")
    parser.add_argument("--memory-frames", default=None,
                        help="instead: peak memory of sdvideo (c) at these clip lengths, e.g. 16,256")
    parser.add_argument("--options", action="store_true",
                        help="instead: sdvideo (c) under each speed option against its defaults")
    parser.add_argument("--option", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--only", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--save-frames", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    unknown = sorted(set(args.configs) - set(CONFIGS))
    if args.frames < 1 or args.steps < 1 or args.height < 8 or args.width < 8 or args.batch_size < 1:
        parser.error("--frames, --steps and --batch-size must be at least 1, --height/--width at least 8")
    if unknown or not args.configs:
        parser.error(f"--configs takes letters of {''.join(CONFIGS)} (got {args.configs!r})")
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    return args


def measure_configs(args):
    """Each of --configs in its own process -> (results by name, frames by name)."""
    import numpy as np

    results, frames = {}, {}
    scratch = tempfile.mkdtemp(prefix="sdvideo-bench-")
    atexit.register(shutil.rmtree, scratch, True)
    for name in args.configs:
        path = os.path.join(scratch, f"frames-{name}.npy")
        results[name], error = run_subprocess(args, name, ["--save-frames", path])
        if error:
            sys.exit(f"configuration {name} failed: {error}")
        frames[name] = np.load(path)
        print(f"{name}: {results[name]['seconds_per_frame']:.3f} s/frame", flush=True)
    return results, frames


def table_rows(args, results, flops, peak):
    """One markdown row per configuration; adds FLOPs, fraction of peak, speed-up and bound to results."""
    best = bounds(args)
    base = results.get("a", {}).get("seconds_per_frame")
    rows = []
    for name, r in results.items():
        # a ControlNet evaluation includes its pose-map embedding, which sdvideo computes once per frame
        total = (r["unet_evals"] * flops["unet"] + r["controlnet_evals"] * (flops["controlnet"] - flops["control_embedding"])
                 + r["control_embeddings"] * flops["control_embedding"]
                 + args.frames * flops["tiny_vae_decode" if name in FEW_STEPS else "vae_decode"]
                 + (args.frames * flops["vae_encode"] if name == "e" else 0)
                 + shallow_work(name, r, flops))
        r["tflop_per_frame"] = total / args.frames / 1e12
        r["fraction_of_peak"] = total / r["seconds"] / peak
        r["speedup_vs_a"] = base / r["seconds_per_frame"] if base else None
        r["bound_vs_a"] = best[name]
        shallow = r.get("unet_shallow_evals", 0) / args.frames
        evals = f"{r['unet_evals_per_frame']:.1f}" + (f" + {shallow:.1f} shallow" if shallow else "")
        rows.append(f"| ({name}) {CONFIGS[name]} | {r['seconds_per_frame']:.3f} | {evals} | "
                    f"{r['peak_bytes'] / 2 ** 30:.2f} | {r['tflop_per_frame']:.3f} | {100 * r['fraction_of_peak']:.1f} % | "
                    + (f"{r['speedup_vs_a']:.2f}x | {best[name]:.2f}x |" if base else "- | - |"))
    return rows


def shallow_work(name, result, flops):
    """FLOPs of a DeepCache configuration's shallow evaluations (the pose-map embedding reused, as above)."""
    if name not in DEEP_CACHE:
        return 0
    branch = DEEP_CACHE[name][1]
    return (result["unet_shallow_evals"] * flops[f"unet_shallow_{branch}"]
            + result["controlnet_shallow_evals"] * (flops[f"controlnet_shallow_{branch}"] - flops["control_embedding"]))


def footer(args, results, frames):
    """(c)/(b), the pixel differences from (a), and the few-step path against diffusers and (c)."""
    import numpy as np

    # how far batching alone (b) and sdvideo (c) move pixels from (a) in this dtype
    differences = {k: np.abs(frames["a"].astype(int) - frames[k].astype(int))
                   for k in "bc" if "a" in frames and k in frames}
    text = ""
    if {"b", "c"} <= results.keys():
        text += f"\n(c) / (b) time ratio: {results['c']['seconds_per_frame'] / results['b']['seconds_per_frame']:.3f}. "
    text += "".join(f"Pixel difference between ({k}) and (a): largest {d.max()}/255, mean {d.mean():.2f}/255, "
                    f"{100 * (d > 8).mean():.3f} % of values over 8/255. " for k, d in differences.items())
    for ours, theirs in (("i", "h"), ("k", "j")):  # the few-step path: sdvideo against diffusers, and the plain run
        if {ours, theirs} <= results.keys():
            text += (f"Few-step ({ours}): {results[theirs]['seconds_per_frame'] / results[ours]['seconds_per_frame']:.2f}x "
                     f"diffusers' few-step pipeline ({theirs})")
            if "c" in results:
                text += (f", {results['c']['seconds_per_frame'] / results[ours]['seconds_per_frame']:.2f}x the "
                         f"{args.steps}-step plain run (c)")
            text += f", {1 / results[ours]['seconds_per_frame']:.1f} frames/s. "
    for name in DEEP_CACHE:  # DeepCache against the plain run it approximates
        if {name, "c"} <= results.keys():
            difference = np.abs(frames[name].astype(int) - frames["c"].astype(int))
            speedup = results["c"]["seconds_per_frame"] / results[name]["seconds_per_frame"]
            text += (f"DeepCache ({name}): {speedup:.2f}x the plain run (c), pixel difference from (c) {difference.mean():.2f}/255 mean, "
                     f"{difference.max()}/255 at most. ")
    return text + "\n"


def compare(args):
    """The default mode: every configuration side by side, a table with FLOPs and bounds."""
    results, frames = measure_configs(args)
    flops, peak = unit_flops(args, [branch for _, branch, _ in DEEP_CACHE.values()]), machine_peak(args)
    rows = table_rows(args, results, flops, peak)
    header = (f"machine: {machine_name(args.device)}; torch {__import__('torch').__version__}; "
              f"{time.strftime('%Y-%m-%d')}\n\n"
              f"`python benchmarks/bench.py {' '.join(sys.argv[1:])}`: {args.arch} architecture (UNet "
              f"{flops['parameters_unet'] / 1e6:.0f}M, ControlNet {flops['parameters_controlnet'] / 1e6:.0f}M parameters), "
              f"{args.dtype}, {args.width}x{args.height}, {args.frames} frames, {args.steps} DDIM steps, guidance "
              f"{args.guidance}, sdvideo batch {args.batch_size}; measured matmul peak {peak / 1e12:.2f} TFLOP/s. "
              "FLOPs: each model's count for one evaluation times the evaluations made, ControlNet's pose-map "
              "embedding counted each time it is computed. The bound counts skipped frame-steps only (DeepCache: "
              "skipped full evaluations, its shallow ones counted free).\n\n"
              "| configuration | s / frame | UNet evals / frame | peak memory (GiB) | TFLOP / frame | of peak | "
              "speed-up vs (a) | bound |\n|---|---|---|---|---|---|---|---|\n")
    table = header + "\n".join(rows) + "\n" + footer(args, results, frames)
    print("\n" + table)
    if args.out:
        with open(args.out + ".md", "w") as f:
            f.write(table)
        with open(args.out + ".json", "w") as f:
            json.dump({"args": vars(args), "unit_flops": flops, "peak_flops": peak, "results": results}, f, indent=2)


def main():
    args = parse_args()
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if args.only:
        print("RESULT " + json.dumps(run_config(args.only, args)), flush=True)
    elif args.memory_frames:
        memory_scaling(args)
    elif args.options:
        speed_options(args)
    else:
        compare(args)


if __name__ == "__main__":
    main()
