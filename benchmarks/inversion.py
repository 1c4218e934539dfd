"""DDIM inversion's known answer on the toy model: invert a source clip, denoise the inverted
latents with the source's own prompt at guidance 1 with the ControlNet off, and the source comes
back, as close as the VAE's own encode-decode round trip allows; SDEdit from the same clip at the
same strength (its noise fresh, several seeds) comes back far less.

    python benchmarks/inversion.py       # ~3 min on 2 CPU cores

Writes benchmarks/results/inversion.{json,md} and BENCHMARKS.md's inversion section (between its
markers). PSNR in dB against the source frames, over every pixel of the clip.
"""
import argparse
import os
import platform
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "demo"))

import sdvideo  # noqa: E402
from common import video_io  # noqa: E402
from loop import pipeline  # noqa: E402
from make_toy_source import JACKS_PROMPT, TOY_SOURCE_PROMPT  # noqa: E402
from measure.metrics import psnr  # noqa: E402
from sections import publish  # noqa: E402

MARKERS = ("<!-- inversion:start -->", "<!-- inversion:end -->")
CLIPS = {"swing": ("golf_swing_toy.mp4", "golf_swing.json", TOY_SOURCE_PROMPT),
         "jumping jacks": ("jumping_jacks_toy.mp4", "jumping_jacks.json", JACKS_PROMPT)}


def source_frames(video, frames, stride, size):
    count = video_io.count_frames(video)
    indices, _ = video_io.select_frames(count, video_io.probe_video(video)[2], 0.0, frames, stride)
    return np.stack(video_io.read_video(video, indices, size, size, "crop"))


def measure_clip(pipe, name, args):
    """PSNR of the VAE round trip, inversion + denoising and SDEdit (mean over seeds) per strength."""
    video, poses = (os.path.join(ROOT, "demo", f) for f in CLIPS[name][:2])
    prompt = CLIPS[name][2]
    common = dict(pipe=pipe, video=video, poses=poses, max_frames=args.frames, stride=args.stride, prompt=prompt,
                  negative_prompt="", guidance=1.0, controlnet_scale=0.0, steps=args.steps, quiet=True)
    source = source_frames(video, args.frames, args.stride, pipe.pipe.unet.config.sample_size * 8)
    latents = pipeline.encode(pipe.pipe, source, 8)
    round_trip = np.stack(list(pipeline.decode(pipe.pipe, latents, 8, progress=False)))
    rows = []
    for strength in args.strengths:
        inverted = sdvideo.generate(**common, invert_source=True, source_prompt=prompt, strength=strength).frames
        sdedit = [psnr(sdvideo.generate(**common, init_from_source=True, strength=strength, seed=seed).frames, source)
                  for seed in range(args.seeds)]
        rows.append({"clip": name, "strength": strength, "vae_round_trip": psnr(round_trip, source),
                     "inversion": psnr(inverted, source), "sdedit_mean": float(np.mean(sdedit)),
                     "sdedit_min": float(np.min(sdedit)), "sdedit_max": float(np.max(sdedit))})
        print(rows[-1], flush=True)
    return rows


def report(measured, args):
    lines = [MARKERS[0], "",
             f"Toy model, {args.frames} frames (every {args.stride}th) of each clip, {args.steps} DDIM steps, the "
             "source's own prompt at guidance 1, ControlNet off; PSNR (dB) against the source frames. SDEdit: "
             f"mean (min-max) over {args.seeds} seeds. {measured['machine']}, {measured['date']}, "
             f"{measured['minutes']:.1f} min (`python benchmarks/inversion.py`).", "",
             "| clip | strength | VAE round trip | inversion + denoising | gap to the round trip | SDEdit |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in measured["rows"]:
        lines.append(f"| {r['clip']} | {r['strength']:g} | {r['vae_round_trip']:.2f} | {r['inversion']:.2f} | "
                     f"{r['vae_round_trip'] - r['inversion']:.2f} | {r['sdedit_mean']:.2f} "
                     f"({r['sdedit_min']:.2f}-{r['sdedit_max']:.2f}) |")
    return "\n".join(lines + ["", MARKERS[1]])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--frames", type=int, default=12, help="frames per clip")
    parser.add_argument("--stride", type=int, default=4, help="every N-th frame of the clip")
    parser.add_argument("--steps", type=int, default=20, help="DDIM steps (inversion and denoising)")
    parser.add_argument("--seeds", type=int, default=3, help="SDEdit's seeds")
    parser.add_argument("--strengths", type=float, nargs="+", default=[1.0, 0.8, 0.5], help="where denoising starts")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    pipe = sdvideo.load(model="toy", device="cpu")
    rows = [row for name in CLIPS for row in measure_clip(pipe, name, args)]
    measured = {"rows": rows, "machine": f"{platform.machine()}, {os.cpu_count()} cores; torch {torch.__version__}",
                "date": time.strftime("%Y-%m-%d"), "minutes": (time.perf_counter() - started) / 60}
    publish("inversion", measured, report(measured, args), MARKERS, "DDIM inversion: its known answer on the toy model")


if __name__ == "__main__":
    main()
