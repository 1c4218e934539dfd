"""The attention probe: does the toy model carry a picture's look through self-attention, as SD does?

    python benchmarks/attention_probe.py      # ~2 min on 2 CPU cores

One pose repeated for 8 frames with independent noise, so that each frame draws its own nuisances
(background texture, light, cap, skin). Handing frame 0's self-attention keys and values to every
frame (Text2Video-Zero's cross-frame attention) should pull the frames toward frame 0's look: the
ratio of the mean |frame_i - frame_0| with it over the same without it is below 1 on a model that
routes looks through attention (target <= 0.7, issue 34), above 1 on one that ignores what its
attention is handed. The same ratio for RAVE's grid, StreamV2V's bank and VidToMe's merging, and
for the grid with its self-attention kept within each frame (a diagnostic: what the grid's
convolutions carry between frames without attention). Two more diagnostic rows split cross-frame
attention's effect in two: on each frame's mean colour, and on the detail around that mean (root mean
squares, whose squares add up to the whole's): which part of a look the model's attention carries.
`--base SD --controlnet OPENPOSE --device cuda` runs the same probe on real SD weights: the ratios
that the toy's target stands for, which this project's machines cannot measure (no weights).
The attention techniques' claims in the toy tables are "not measurable on the toy world" while the
ratio of the mechanism they use is above the target (benchmarks/toy_claims.py).

Writes benchmarks/results/attention_probe.{json,md} and BENCHMARKS.md's probe section.
"""
import argparse
import math
import os
import platform
import sys
import tempfile
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import pose_extract  # noqa: E402
import sdvideo  # noqa: E402
from common.errors import UserError  # noqa: E402
from loading import models  # noqa: E402
from sections import publish  # noqa: E402
from toy_claims import PROBE_TARGET as TARGET  # noqa: E402

MARKERS = ("<!-- attention-probe:start -->", "<!-- attention-probe:end -->")
PROMPTS = ("a golfer in a red shirt and black trousers, on a golf course",
           "a person in a blue shirt and white trousers, in a studio",
           "a person in a green shirt and black trousers, on a beach")
CROSS = "cross-frame attention"
TECHNIQUES = {CROSS: {"cross_frame_attn": "anchor"},
              "grid (RAVE, K=2)": {"grid": 2, "grid_shuffle": False},
              "bank (StreamV2V)": {"feature_bank": 1, "feature_fusion": 0.8},
              "merging (VidToMe)": {"token_merge": 0.9, "merge_chunk": 4, "global_merge": 0.8}}
GRID = "grid (RAVE, K=2)"
CELL_LOCAL = "grid, attention within each frame (diagnostic)"  # how much of the grid's pull is attention's
PARTS = ("cross-frame attention: each frame's mean colour (RMS, diagnostic)",
         "cross-frame attention: the detail around it (RMS, diagnostic)")  # which part of a look attention carries
DIAGNOSTICS = (CELL_LOCAL, *PARTS)


def spread(frames):
    """Mean |frame_i - frame_0| over i >= 1 and every pixel, in 1/255. frames: (F, H, W, 3)."""
    frames = frames.astype(np.float64)
    return float(np.abs(frames[1:] - frames[:1]).mean())


def colour_and_detail(frames):
    """The root mean square of frame_i - frame_0 (i >= 1, 1/255) split into its two orthogonal parts:
    each frame's mean colour, and the detail within the frame around that mean (their squares add up
    to the whole's). frames: (F, H, W, 3) -> (colour, detail)."""
    frames = frames.astype(np.float64)
    means = frames.mean(axis=(1, 2), keepdims=True)  # (F, 1, 1, 3)
    detail = frames - means
    return (float(np.sqrt(((means[1:] - means[:1]) ** 2).mean())),
            float(np.sqrt(((detail[1:] - detail[:1]) ** 2).mean())))


class CellLocalAttention:
    """Self-attention kept within each cell of a 2x2 grid picture (cross-attention as before): the
    grid with every path between its frames but the convolutions' cut. A diagnostic, not a technique."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args,
                 **kwargs):
        if encoder_hidden_states is not None or hidden_states.ndim != 3:
            return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        batch, tokens, channels = hidden_states.shape
        half = math.isqrt(tokens) // 2  # (B, (2h)^2, C) -> (4B, h^2, C), cell by cell
        cells = hidden_states.view(batch, 2, half, 2, half, channels).permute(0, 1, 3, 2, 4, 5)
        out = self.inner(attn, cells.reshape(4 * batch, half * half, channels), None, None, temb, *args, **kwargs)
        return out.view(batch, 2, 2, half, half, channels).permute(0, 1, 3, 2, 4, 5).reshape(batch, tokens, channels)


def cell_local(pipe, flags, **common):
    """A grid run with CellLocalAttention in the UNet's and ControlNet's self-attention."""
    models = (pipe.pipe.unet, pipe.pipe.controlnet)
    saved = [model.attn_processors for model in models]
    try:
        for model, processors in zip(models, saved):
            model.set_attn_processor({name: CellLocalAttention(p) if name.endswith("attn1.processor") else p
                                      for name, p in processors.items()})
        return sdvideo.generate(pipe=pipe, **common, **flags).frames
    finally:
        for model, processors in zip(models, saved):
            model.set_attn_processor(processors)


def probe(pipe, poses_path, prompt, steps, guidance, copies, size=None):
    """{technique: ratio of its spread to the plain run's} for one prompt, and the plain spread."""
    common = dict(poses=poses_path, prompt=prompt, negative_prompt="", steps=steps, guidance=guidance,
                  max_frames=copies, batch_size=copies, quiet=True, **(dict(height=size, width=size) if size else {}))
    plain_frames = sdvideo.generate(pipe=pipe, **common).frames
    runs = {name: sdvideo.generate(pipe=pipe, **common, **flags).frames for name, flags in TECHNIQUES.items()}
    plain = spread(plain_frames)
    ratios = {name: spread(frames) / plain for name, frames in runs.items()}
    ratios[CELL_LOCAL] = spread(cell_local(pipe, TECHNIQUES[GRID], **common)) / plain
    for name, with_it, without in zip(PARTS, colour_and_detail(runs[CROSS]), colour_and_detail(plain_frames)):
        ratios[name] = with_it / without
    return plain, ratios


def candidate(work, control):
    """A toy training folder's checkpoints as a loaded pipeline (toy/checkpoints.py), and its label."""
    from cli.api import Pipeline
    from toy.checkpoints import pipeline_from_work
    pipe, step = pipeline_from_work(work, control=control)
    label = f"{os.path.basename(os.path.normpath(work))} (UNet step {step}{'' if control else ', no ControlNet'})"
    return Pipeline(pipe, {"model": "toy", "device": "cpu"}), label


def real_model(args):
    """Real SD weights (--base, --controlnet) as a loaded pipeline, and its label."""
    settings = dict(base=args.base, controlnet=args.controlnet, device=args.device, dtype=args.dtype)
    return sdvideo.load(**settings), f"{os.path.basename(os.path.normpath(args.base))} on {args.device}, {args.dtype}"


def saved_model(path):
    """A saved toy model folder as a loaded pipeline, and its label."""
    from cli.api import Pipeline
    from loading.builtin import load_toy_pipeline
    return Pipeline(load_toy_pipeline(path), {"model": "toy", "device": "cpu"}), os.path.basename(os.path.normpath(path))


def measure(model="toy", steps=20, guidance=3.0, copies=8, pipe=None, size=None):
    """The probe on every prompt: {"plain": {prompt: spread}, "ratios": {technique: {prompt: ratio}}};
    ``pipe``: a loaded pipeline to probe instead of ``model``'s (then ``model`` only labels it); ``size``:
    the frames' side in pixels (None: the model's default)."""
    pipe = pipe or sdvideo.load(model=model, device="cpu")
    swing = pose_extract.read_poses(os.path.join(ROOT, "demo", "golf_swing.json"))
    repeated = pose_extract.PoseSequence(np.repeat(swing.keypoints[:1], copies, axis=0), swing.canvas_size, swing.fps)
    measured = {"model": model, "steps": steps, "guidance": guidance, "copies": copies, "plain": {},
                "ratios": {name: {} for name in (*TECHNIQUES, *DIAGNOSTICS)}}
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "one_pose.json")
        pose_extract.write_poses(path, repeated)
        for prompt in PROMPTS:
            measured["plain"][prompt], ratios = probe(pipe, path, prompt, steps, guidance, copies, size)
            for name, ratio in ratios.items():
                measured["ratios"][name][prompt] = ratio
    return measured


def worst(measured, technique):
    """The technique's highest ratio over the prompts (the target holds only if it holds for each)."""
    return max(measured["ratios"][technique].values())


def report(measured):
    lines = [MARKERS[0], "",
             f"`--model {measured['model']}`, the swing's first pose repeated for {measured['copies']} frames, "
             f"independent noise, {measured['steps']} DDIM steps, guidance {measured['guidance']:g}; mean "
             "|frame_i - frame_0| with the technique over the same without it (target <= "
             f"{TARGET:g} for every prompt). {measured['machine']}, {measured['date']}, "
             f"{measured['minutes']:.1f} min (`python benchmarks/attention_probe.py`).", "",
             "| technique | " + " | ".join(PROMPTS) + " | target |", "|---" * (len(PROMPTS) + 2) + "|",
             "| plain: mean abs. difference (1/255) | " + " | ".join(f"{measured['plain'][p]:.1f}" for p in PROMPTS)
             + " | |"]
    for name in (*TECHNIQUES, *DIAGNOSTICS):
        ratios = measured["ratios"][name]
        met = "" if name in DIAGNOSTICS else "met" if worst(measured, name) <= TARGET else "NOT met"
        lines.append(f"| {name} | " + " | ".join(f"{ratios[p]:.2f}" for p in PROMPTS) + f" | {met} |")
    return "\n".join(lines + ["", MARKERS[1]])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", default="toy", help="the toy model to probe (toy, toy64)")
    parser.add_argument("--steps", type=int, default=20, help="DDIM steps")
    parser.add_argument("--guidance", type=float, help="guidance (default: 3, the toy model's; 7.5 with --base)")
    parser.add_argument("--work", help="probe a training folder's checkpoints instead (a toy world 3 candidate "
                                       "mid-training); prints the table and writes nothing")
    parser.add_argument("--folder", help="probe a saved toy model folder instead (e.g. one that toy/finetune.py "
                                         "wrote); prints the table and writes nothing")
    parser.add_argument("--base", help="probe real SD weights instead (a diffusers folder, with --controlnet): "
                                       "the ratios the toy's target stands for; prints the table, writes nothing")
    parser.add_argument("--controlnet", help="with --base: its OpenPose ControlNet's diffusers folder")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="with --base")
    parser.add_argument("--dtype", default="fp32", choices=tuple(models.DTYPES), help="with --base")
    parser.add_argument("--size", type=int, help="the frames' side in pixels (default: the model's, 512 for SD)")
    parser.add_argument("--no-control", action="store_true",
                        help="with --work: leave the ControlNet out (untrained), to compare UNets before it exists")
    args = parser.parse_args(argv)
    if sum(bool(x) for x in (args.work, args.folder, args.base)) > 1 or bool(args.base) != bool(args.controlnet):
        parser.error("give one of --work, --folder and --base, and --controlnet with --base only")
    guidance = args.guidance if args.guidance is not None else 7.5 if args.base else 3.0
    started = time.perf_counter()
    if args.work or args.folder or args.base:  # another model: print its table, write nothing
        try:
            if args.work:
                pipe, label = candidate(args.work, not args.no_control)
            elif args.folder:
                pipe, label = saved_model(args.folder)
            else:
                pipe, label = real_model(args)
        except UserError as error:  # a missing or unreadable model: one line
            parser.error(str(error))
        measured = measure(label, args.steps, guidance, pipe=pipe, size=args.size)
        measured.update(machine=platform.machine(), date=time.strftime("%Y-%m-%d"),
                        minutes=(time.perf_counter() - started) / 60)
        print(report(measured))
        return
    measured = measure(args.model, args.steps, guidance, size=args.size)
    measured.update(machine=f"{platform.machine()}, {os.cpu_count()} cores; torch {torch.__version__}",
                    date=time.strftime("%Y-%m-%d"), minutes=(time.perf_counter() - started) / 60)
    publish("attention_probe", measured, report(measured), MARKERS,
            "The attention probe: does the toy model carry a look through attention?")


if __name__ == "__main__":
    main()
