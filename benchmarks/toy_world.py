"""The toy world's targets, measured: pose and prompt following on held-out poses, and every
technique on two motions over three seeds, each claim judged by its 95 % interval (toy_claims.py).

    python benchmarks/toy_world.py       # under an hour on 2 CPU cores (BENCHMARKS.md says its time)

Writes benchmarks/results/toy_world.{json,md}, a frame strip per technique in
benchmarks/results/toy_strips/, the trade-off plot benchmarks/results/toy_trade_off.png, and
the toy-world section of BENCHMARKS.md (between its markers). The technique table is
``sdvideo.py sweep demo/toy_sweep.yaml`` (the swing and jumping jacks, 16 frames each at a stride of
3, seeds 0-2); its run folders stay in outputs/toy-sweep.

Measured at the toy model's native size (toy world 2: 128 px), 20 DDIM steps, guidance --guidance,
for the model and for the renderer's own pictures of the same poses and looks (the measures' ceiling):
- pose following: the figure segmented in each generated picture (toy_metrics.segment_figure:
  colour distance from the prompt's nuisance-free background under the picture's own lighting)
  against the renderer's true mask of the held-out pose (a golfer's with his club), IoU; the arms
  alone (toy_metrics.arm_iou); a golfer's club seen along its true line (toy_metrics.club_visibility);
- prompt following: the torso's dominant vocabulary colour is the prompt's shirt colour;
- nuisance flicker: one pose drawn with independent noise per frame, mean absolute difference
  between the pictures (with fixed noise it is 0 by construction).
"""
import argparse
import itertools
import json
import os
import platform
import shutil
import sys
import time

import cv2
import numpy as np
import torch
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import pose_extract  # noqa: E402
import sdvideo  # noqa: E402
from loading import models  # noqa: E402
from loop import pipeline  # noqa: E402
from measure import sweep  # noqa: E402
from toy import looks  # noqa: E402
from toy import motions  # noqa: E402
from toy import toy_metrics as tm  # noqa: E402
from toy import toyworld as tw  # noqa: E402
from sections import publish  # noqa: E402
from toy_claims import (FLOW_CLAIMS, SEED_CLAIMS, by_setting, change, changed_verdicts, claims_table,  # noqa: E402
                        mean, moved_by_setting, peer_claims, verdicts)
from measure import intervals  # noqa: E402
from measure.report import METRICS  # noqa: E402

RESULTS = os.path.join(ROOT, "benchmarks", "results")
SWEEP = os.path.join(ROOT, "demo", "toy_sweep.yaml")
SINGLE_RUN = os.path.join(RESULTS, "toy_world_single_run.json")  # the last table of one run, one clip, one seed
MARKERS = ("<!-- toy-world:start -->", "<!-- toy-world:end -->")
HEADING = "The toy world: what the techniques do"
STRIP_FRAMES = (0, 3, 6, 9, 12, 13, 14, 15)  # of the swing's 16 frames at stride 3: address to impact
STRIP_RUN = "swing-{}-s0"  # the strips show seed 0's swing


def verdict(ok):
    """A target's verdict cell."""
    return "met" if ok else "NOT met"


def generate(pipe, keypoints, prompt, steps, guidance, noise="independent", seed=0):
    """Pictures (F, S, S, 3) of poses (F, 18, 3) for one prompt, one frame per pose (S = tw.SIZE)."""
    maps = np.stack([tw_map(k) for k in keypoints])
    config = pipeline.GenerationConfig(prompt=prompt, steps=steps, guidance=guidance, noise=noise, seed=seed,
                                       batch_size=16)
    latents, _ = pipeline.generate(pipe, maps, config, progress=False)
    return np.stack(list(pipeline.decode(pipe, latents, 16, progress=False)))


def tw_map(keypoints):
    return pose_extract.draw_openpose(keypoints, tw.SIZE, tw.SIZE)


def rendered(poses, prompt, seed):
    """The renderer's own pictures of poses in a prompt's look, a nuisance draw each: the ceiling."""
    rng, look = np.random.default_rng(seed), looks.parse_prompt(prompt)
    return np.stack([tw.render(p, look, looks.random_nuisance(rng), tw.SIZE)[0] for p in poses])


def following(count, draw):
    """Figure IoU per subject and background, arm IoU, club visibility and shirt colour per colour
    of the pictures ``draw(poses, prompt, seed)`` makes of ``count`` held-out poses per (colour,
    background) pair; trousers take another colour, the subject alternates person and golfer."""
    poses, colors = motions.heldout_poses(count, tw.SIZE), list(looks.COLORS)
    rows = []
    for (k, shirt), (b, background) in itertools.product(enumerate(colors), enumerate(looks.BACKGROUNDS)):
        look = looks.Look(shirt, colors[(k + 3) % len(colors)], background, golfer=(k + b) % 2 == 1)
        prompt = look.prompt()
        pictures = draw(poses, prompt, 100 * k + b)
        rows.append(dict(look=look, iou=tm.pose_iou(pictures, poses, prompt), arm=tm.arm_iou(pictures, poses, prompt),
                         club=tm.club_visibility(pictures, poses, prompt),
                         colour=tm.color_accuracy(pictures, poses, prompt)))

    def mean(key, keep=lambda row: True):
        return float(np.mean([r[key] for r in rows if keep(r) and r[key] is not None]))

    return {"figure_iou": mean("iou"), "person_iou": mean("iou", lambda r: not r["look"].golfer),
            "golfer_iou": mean("iou", lambda r: r["look"].golfer), "arm_iou": mean("arm"),
            "club_visibility": mean("club", lambda r: r["look"].golfer),
            "by_background": {g: mean("iou", lambda r: r["look"].background == g) for g in looks.BACKGROUNDS},
            "shirt_color_accuracy": {c: mean("colour", lambda r: r["look"].shirt == c) for c in colors}}


def nuisance_flicker(pipe, steps, guidance, copies=8):
    """One held-out pose drawn ``copies`` times: mean |difference| between pictures (0-255), with
    independent and with fixed noise."""
    pose = np.repeat(motions.heldout_poses(1), copies, axis=0)
    prompt = looks.Look("blue", "white", "studio").prompt("a person")
    result = {}
    for noise in ("independent", "fixed"):
        pictures = generate(pipe, pose, prompt, steps, guidance, noise=noise).astype(np.float64)
        pairs = [np.abs(a - b).mean() for a, b in itertools.combinations(pictures, 2)]
        result[noise] = float(np.mean(pairs))
    return result


def run_techniques(path=SWEEP):
    """sdvideo.py sweep FILE (a fresh run of every setting) -> rows and the sweep folder."""
    config = sweep.load_config(path)
    shutil.rmtree(config["out"], ignore_errors=True)
    rows = sweep.run_sweep(path, sdvideo.main, {"clip": None, "detector": None})
    return rows, config["out"]


def strip(run_folder, path):
    """A PNG of the pose maps (top) and generated frames (bottom) at STRIP_FRAMES, 2x."""
    def load(sub, i):
        return np.asarray(Image.open(os.path.join(run_folder, sub, f"{i:05d}.png")).convert("RGB"))

    picture = np.concatenate([np.concatenate([load(sub, i) for i in STRIP_FRAMES], axis=1)
                              for sub in ("poses", "frames")], axis=0)
    big = cv2.resize(picture, None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST)
    Image.fromarray(big).save(path)


def cell(summary, key, digits=3):
    """A summary's mean and interval of ``key`` as text ("-" where not measured)."""
    if key not in summary:
        return "-"
    mean, low, high = summary[key]
    return f"{mean:.{digits}f}" if summary["runs"] == 1 else f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def table(rows):
    """Every setting's means over seeds and inputs with their 95 % intervals, sorted by warping error,
    and its paired change in warping error against independent noise."""
    runs = by_setting(rows)
    summaries = intervals.summarize(rows, [m for m in METRICS if any(r.get(m) is not None for r in rows)])
    summaries.sort(key=lambda s: s["warping_error"][0])
    lines = ["| technique | runs | warping error | vs independent noise | flicker | background flickering | "
             "warp SSIM | pose IoU | arm IoU | club | shirt colour | s / frame | UNet evals / frame | strip |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        name = s["setting"]
        if name == "independent-noise":
            versus = "(baseline)"
        else:
            (m, low, high), _ = change(runs, "independent-noise", name, "warping_error")
            versus = f"{m:+.0%} [{low:+.0%}, {high:+.0%}]"
        lines.append(f"| {name} | {s['runs']} | {cell(s, 'warping_error', 5)} | {versus} | {cell(s, 'flicker', 2)} | "
                     f"{cell(s, 'background_flickering', 4)} | {cell(s, 'warp_ssim')} | {cell(s, 'pose_iou')} | "
                     f"{cell(s, 'arm_iou', 2)} | {cell(s, 'club_visibility', 2)} | "
                     f"{cell(s, 'shirt_color_accuracy', 2)} | {s['seconds_per_frame'][0]:.3f} | "
                     f"{s['unet_evals_per_frame'][0]:.1f} | [png](benchmarks/results/toy_strips/{name}.png) |")
    return "\n".join(lines)


def targets(runs):
    """The temporal targets over seeds and inputs: (flicker and warping error ratios of independent
    to fixed noise, copying's and keyframes' paired changes in warping error against independent noise)."""
    ratio = {k: mean(runs, "independent-noise", k) / mean(runs, "fixed-noise", k) for k in ("flicker", "warping_error")}
    cut = {n: change(runs, "independent-noise", n, "warping_error")[0] for n in ("copying", "keyframes")}
    return ratio, cut


def report(measured, rows, args):
    runs = by_setting(rows)
    model, ceiling, spread = measured["model"], measured["ceiling"], measured["nuisance_flicker"]
    colors, by_background = model["shirt_color_accuracy"], model["by_background"]
    ratio, cut = targets(runs)
    iou = {n: mean(runs, n, "pose_iou") for n in ("copying", "keyframes")}
    inputs = sorted({r["input"] for r in rows if not r.get("error")})
    seeds = sorted({r["seed"] for r in rows if not r.get("error")})
    return f"""{MARKERS[0]}
machine: {measured['machine']}; {measured['date']}; `python benchmarks/toy_world.py` ({measured['minutes']:.1f} min)

The toy model (toy world 2) at its native {tw.SIZE}x{tw.SIZE}, {args.steps} DDIM steps, guidance
{args.guidance}. Pose and prompt following: {args.count} held-out poses (never seen in training) per
shirt colour and background, a person or a golfer by turns, independent noise; the ceiling is the
same measure on the renderer's own pictures of those poses and looks. The technique table
(`demo/toy_sweep.yaml`): {' and '.join(inputs)} (the demo swing and jumping jacks, 16 frames each at a
stride of 3, the toy world's rendering of each as the source clip), seeds {', '.join(map(str, seeds))}, prompt
"{rows[0]['flags'].split('--prompt ')[-1].split(' --')[0]}". Every figure below is a mean over the
{len(inputs) * len(seeds)} runs of a setting (inputs x seeds), with its 95 % bootstrap interval in brackets.

| target | measured | ceiling | |
|---|---|---|---|
| figure IoU on held-out poses >= 0.75 | {model['figure_iou']:.3f} (person {model['person_iou']:.3f}, golfer {model['golfer_iou']:.3f}; {', '.join(f'{b} {v:.3f}' for b, v in by_background.items())}) | {ceiling['figure_iou']:.3f} | {verdict(model['figure_iou'] >= 0.75)} |
| arm IoU >= 0.5 | {model['arm_iou']:.3f} | {ceiling['arm_iou']:.3f} | {verdict(model['arm_iou'] >= 0.5)} |
| shirt colour followed >= 95 % for every colour | {', '.join(f'{c} {v:.0%}' for c, v in colors.items())} | {min(ceiling['shirt_color_accuracy'].values()):.0%} (lowest) | {verdict(min(colors.values()) >= 0.95)} |
| the club visible in >= 80 % of golfer pictures | {model['club_visibility']:.0%} | {ceiling['club_visibility']:.0%} | {verdict(model['club_visibility'] >= 0.8)} |
| one pose, independent noise: pictures differ | mean abs. difference {spread['independent']:.1f}/255 (fixed noise: {spread['fixed']:.1f}) | | {verdict(spread['independent'] > 5 * max(spread['fixed'], 0.5))} |
| flicker independent / fixed >= 2 (means) | {ratio['flicker']:.2f} | | {verdict(ratio['flicker'] >= 2)} |
| warping error independent / fixed >= 2 (means) | {ratio['warping_error']:.2f} | | {verdict(ratio['warping_error'] >= 2)} |
| copying cuts warping error >= 50 % vs independent (whole interval), pose IoU >= 0.6 | {cut['copying'][0]:+.0%} [{cut['copying'][1]:+.0%}, {cut['copying'][2]:+.0%}], IoU {iou['copying']:.3f} | | {verdict(cut['copying'][2] <= -0.5 and iou['copying'] >= 0.6)} |
| keyframes cut warping error >= 50 % vs independent (whole interval), pose IoU >= 0.6 | {cut['keyframes'][0]:+.0%} [{cut['keyframes'][1]:+.0%}, {cut['keyframes'][2]:+.0%}], IoU {iou['keyframes']:.3f} | | {verdict(cut['keyframes'][2] <= -0.5 and iou['keyframes'] >= 0.6)} |

Every technique, sorted by warping error (flicker: the clip's frame-to-frame change over the
source's, 1 = moves as much as the source; background flickering: VBench's, over the static
background, 1 = no change; warping error: colour MSE after warping by the source's flow; vs
independent noise: the mean paired change, by seed and input; warp SSIM: RAVE's; pose IoU and shirt
colour: per frame, as above; seconds per frame on this machine, whole run incl. loading; strips:
the swing, seed 0):

{table(rows)}

{claims(runs)}

![trade-off](benchmarks/results/toy_trade_off.png)
{MARKERS[1]}"""


def claims(runs):
    """The claims sections of the report: the seed's, flow fusion's, the peers' (in their settings and
    from noise), what moved between settings and since the single-run table."""
    probe = attention_probe()
    seed, flow, peer = tables(runs, probe)
    now = {claim: verdict for table in (seed, flow, peer) for claim, verdict in verdicts(table).items()}
    return f"""Each claim is a relative change of one setting against its own baseline, paired by seed and
input; it holds where the 95 % bootstrap interval of the mean paired change lies wholly on the
claimed side, does not hold where it lies wholly on the other, and is undetermined where it spans
zero (`measure/intervals.py`).

The original project's own claims (`../shared/seed.md`), in their setting, pose-to-video from noise:

{seed}

Flow fusion (x0 over the first 10 % of the steps, the noisy latent to 50 %, w = 0.5):

{flow}

The newer training-free techniques' claims, each in its paper's own setting (one shared noise for
Text2Video-Zero; the DDIM inversion of the source, or img2img at the paper's strength: presets
`t2v-zero`, `rave`, `flatten`, `vidtome`, `streamv2v`, `rerender`) against per-frame generation from
the same start, and from noise. A technique that works through attention is "not measurable on the toy
world" while the attention probe (`benchmarks/attention_probe.py`, its own section) finds the toy
model pushing frames apart through that mechanism instead of carrying frame 0's look (ratio above
0.7); the papers measure other models and data, so only the direction is compared.

{peer}

Which verdicts moved between noise and the papers' own settings:

{moved_by_setting(runs, probe)}

Which verdicts moved from the last single-run table (the swing's 64 frames, seed 0, one run each;
`benchmarks/results/toy_world_single_run.json`):

{changed_verdicts(now, single_run_verdicts(probe))}"""


def tables(runs, probe):
    """The seed's, flow fusion's and the peers' claims tables of ``runs``, each computed once."""
    return claims_table(runs, SEED_CLAIMS), claims_table(runs, FLOW_CLAIMS), peer_claims(runs, probe)


def attention_probe():
    """benchmarks/attention_probe.py's results, or None where it has not run."""
    path = os.path.join(RESULTS, "attention_probe.json")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def single_run_verdicts(probe):
    """{claim: verdict} of the same claims on the last single-run table's rows (one pair each, so its
    interval is a point), or None where the file is not at hand."""
    if not os.path.isfile(SINGLE_RUN):
        return None
    with open(SINGLE_RUN, encoding="utf-8") as f:
        rows = [{**r, "setting": r["run"].removeprefix("swing-"), "seed": 0, "input": "swing"}
                for r in json.load(f)["techniques"]]
    return {claim: verdict for table in tables(by_setting(rows), probe) for claim, verdict in verdicts(table).items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--count", type=int, default=8, help="held-out poses per shirt colour and background")
    parser.add_argument("--steps", type=int, default=20, help="denoising steps (the sweep file sets its own)")
    parser.add_argument("--guidance", type=float, default=3.0,
                        help="guidance scale (the toy model's, chosen on validation poses; the sweep files' too)")
    parser.add_argument("--from-json", action="store_true",
                        help="write the report again from benchmarks/results/toy_world.json, running nothing")
    args = parser.parse_args(argv)
    if args.from_json:
        with open(os.path.join(RESULTS, "toy_world.json"), encoding="utf-8") as f:
            measured = json.load(f)
        return publish("toy_world", measured, report(measured, measured["techniques"], args), MARKERS, HEADING)
    started = time.perf_counter()
    pipe = models.load_pipeline(models.ModelSpec(model=models.TOY, device="cpu"))
    measured = {"model": following(args.count, lambda poses, prompt, seed: generate(
                    pipe, poses, prompt, args.steps, args.guidance, seed=seed)),
                "ceiling": following(args.count, rendered),
                "nuisance_flicker": nuisance_flicker(pipe, args.steps, args.guidance)}
    rows, sweep_out = run_techniques()
    os.makedirs(os.path.join(RESULTS, "toy_strips"), exist_ok=True)
    for setting in by_setting(rows):
        folder = os.path.join(sweep_out, "runs", STRIP_RUN.format(setting))
        if os.path.isdir(folder):
            strip(folder, os.path.join(RESULTS, "toy_strips", setting + ".png"))
    shutil.copy(os.path.join(sweep_out, "plots", "trade_off.png"), os.path.join(RESULTS, "toy_trade_off.png"))
    measured.update(machine=f"{platform.machine()}, {os.cpu_count()} cores; torch {torch.__version__}",
                    date=time.strftime("%Y-%m-%d"), minutes=(time.perf_counter() - started) / 60,
                    techniques=rows)
    with open(os.path.join(RESULTS, "toy_world.json"), "w", encoding="utf-8") as f:  # kept if the report fails
        json.dump(measured, f, indent=2)
    publish("toy_world", measured, report(measured, rows, args), MARKERS, HEADING)


if __name__ == "__main__":
    main()
