"""The toy world's targets, measured: pose and prompt following on held-out poses, and every
technique on the demo swing.

    python benchmarks/toy_world.py       # ~10 min on 2 CPU cores

Writes benchmarks/results/toy_world.{json,md}, a frame strip per technique in
benchmarks/results/toy_strips/, the trade-off plot benchmarks/results/toy_trade_off.png, and
the toy-world section of BENCHMARKS.md (between its markers). The technique table is
``sdvideo.py sweep demo/toy_sweep.yaml``; its run folders stay in outputs/toy-sweep.

Measured at the toy model's native size (64 px), 20 DDIM steps, guidance --guidance:
- pose following: the figure segmented in each generated picture (toy_metrics.segment_figure:
  colour distance from the prompt's nuisance-free background under the picture's own lighting)
  against the renderer's true mask of the held-out pose, IoU;
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

RESULTS = os.path.join(ROOT, "benchmarks", "results")
SWEEP = os.path.join(ROOT, "demo", "toy_sweep.yaml")
FLOW_SWEEP = os.path.join(ROOT, "demo", "toy_flow_sweep.yaml")  # flow fusion on the swing and jumping jacks
MARKERS = ("<!-- toy-world:start -->", "<!-- toy-world:end -->")
STRIP_FRAMES = (0, 18, 28, 36, 41, 44, 50, 60)  # address, takeaway, backswing, top, downswing, impact, follow, finish


def generate(pipe, keypoints, prompt, steps, guidance, noise="independent", seed=0):
    """Pictures (F, 64, 64, 3) of poses (F, 18, 3) for one prompt, one frame per pose."""
    maps = np.stack([tw_map(k) for k in keypoints])
    config = pipeline.GenerationConfig(prompt=prompt, steps=steps, guidance=guidance, noise=noise, seed=seed,
                                       batch_size=16)
    latents, _ = pipeline.generate(pipe, maps, config, progress=False)
    return np.stack(list(pipeline.decode(pipe, latents, 16, progress=False)))


def tw_map(keypoints):
    return pose_extract.draw_openpose(keypoints, tw.SIZE, tw.SIZE)


def following(pipe, count, steps, guidance):
    """Pose IoU per background and shirt-colour accuracy per colour on ``count`` held-out poses per
    (colour, background) pair; trousers take another colour of the vocabulary."""
    poses = motions.heldout_poses(count)
    colors = list(looks.COLORS)
    ious, hits = {b: [] for b in looks.BACKGROUNDS}, {c: [] for c in colors}
    for (k, shirt), background in itertools.product(enumerate(colors), looks.BACKGROUNDS):
        trousers = colors[(k + 3) % len(colors)]
        prompt = looks.Look(shirt, trousers, background).prompt("a person")
        pictures = generate(pipe, poses, prompt, steps, guidance, seed=100 * k)
        ious[background].append(tm.pose_iou(pictures, poses, prompt))
        hits[shirt].append(tm.color_accuracy(pictures, poses, prompt))
    return ({b: float(np.mean(v)) for b, v in ious.items()}, {c: float(np.mean(v)) for c, v in hits.items()})


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


def flow_targets(rows):
    """Flow fusion against the same noise without it, per motion of demo/toy_flow_sweep.yaml."""
    by_name = {r["run"]: r for r in rows}
    lines = ["| motion | setting | warping error | pose IoU | target | |", "|---|---|---|---|---|---|"]
    verdict = lambda ok: "met" if ok else "NOT met"  # noqa: E731
    for motion in sorted({r["run"].split("-", 1)[0] for r in rows}):
        for noise, target, holds in (
                ("fixed", "warping error <= fixed noise's, IoU within 0.02",
                 lambda a, b: b["warping_error"] <= a["warping_error"] and abs(b["pose_iou"] - a["pose_iou"]) <= 0.02),
                ("independent", "warping error at most half, IoU not 0.02 below",
                 lambda a, b: b["warping_error"] <= 0.5 * a["warping_error"] and b["pose_iou"] >= a["pose_iou"] - 0.02)):
            plain, fused = by_name[f"{motion}-{noise}-noise"], by_name[f"{motion}-{noise}-flow-fusion"]
            lines.append(f"| {motion} | {noise} noise | {plain['warping_error']:.5f} | {plain['pose_iou']:.3f} | | |")
            lines.append(f"| {motion} | + flow fusion | {fused['warping_error']:.5f} "
                         f"({fused['warping_error'] / plain['warping_error'] - 1:+.0%}) | {fused['pose_iou']:.3f} | "
                         f"{target} | {verdict(holds(plain, fused))} |")
        first = by_name.get(f"{motion}-fixed-flow-fusion-first")
        if first:
            lines.append(f"| {motion} | + flow fusion toward the first frame | {first['warping_error']:.5f} | "
                         f"{first['pose_iou']:.3f} | (the reference flag) | |")
    return "\n".join(lines)


def strip(run_folder, path):
    """A PNG of the pose maps (top) and generated frames (bottom) at STRIP_FRAMES, 2x."""
    def load(sub, i):
        return np.asarray(Image.open(os.path.join(run_folder, sub, f"{i:05d}.png")).convert("RGB"))

    picture = np.concatenate([np.concatenate([load(sub, i) for i in STRIP_FRAMES], axis=1)
                              for sub in ("poses", "frames")], axis=0)
    big = cv2.resize(picture, None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST)
    Image.fromarray(big).save(path)


def table(rows, baseline):
    lines = ["| technique | flicker | background flickering | warping error | vs independent | warp SSIM | pose IoU "
             "| shirt colour | s / frame | UNet evals / frame | peak memory (GiB) | strip |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        change = row["warping_error"] / baseline - 1
        lines.append(f"| {row['run'].removeprefix('swing-')} | {row['flicker']:.3f} | {row['background_flickering']:.4f} | "
                     f"{row['warping_error']:.5f} | {change:+.0%} | {row['warp_ssim']:.3f} | "
                     f"{row['pose_iou']:.3f} | {row['shirt_color_accuracy']:.2f} | "
                     f"{row['seconds_per_frame']:.3f} | {row['unet_evals_per_frame']:.1f} | "
                     f"{row['peak_memory_gib']:.2f} | "
                     f"[png](benchmarks/results/toy_strips/{row['run'].removeprefix('swing-')}.png) |")
    return "\n".join(lines)


def peer_claims(by_name):
    """The peers' papers' claims, each against the setting it compares with, and a verdict."""
    def row(claim, before, after, key, holds):
        a, b = by_name[before], by_name[after]
        cost = " / ".join(f"{by_name[n]['seconds_per_frame']:.3f}" for n in (before, after))
        memory = " / ".join(f"{by_name[n]['peak_memory_gib']:.2f}" for n in (before, after))
        verdict = "holds" if holds(a[key], b[key]) else "does not hold"
        return f"| {claim} | {before}: {a[key]:.4g} -> {after}: {b[key]:.4g} | {cost} | {memory} | {verdict} |"

    higher, lower = (lambda a, b: b > a), (lambda a, b: b < a)  # noqa: E731
    halved = lambda a, b: b <= 0.5 * a  # noqa: E731
    lines = ["| claim (paper's figure) | measured | s / frame | peak memory (GiB) | |", "|---|---|---|---|---|",
             row("RAVE: shuffling raises warp SSIM over the same grid without (76.58 -> 80.51), K=2",
                 "grid-2-no-shuffle", "grid-2", "warp_ssim", higher),
             row("the same, K=3", "grid-3-no-shuffle", "grid-3", "warp_ssim", higher),
             row("FLATTEN: trajectory attention alone about halves warping error against per-frame "
                 "attention (13.40 -> 6.27), independent noise", "independent-noise", "trajectory-attention",
                 "warping_error", halved),
             row("the same, on fixed noise", "fixed-noise", "trajectory-attention-fixed-noise", "warping_error",
                 halved),
             row("Ground-A-Video: flow-gated noise has less background flicker than independent noise "
                 "(VBench background flickering, higher is steadier)", "independent-noise", "flow-gated-noise",
                 "background_flickering", higher),
             row("flow-gated noise follows the motion better than fixed noise (pose IoU)", "fixed-noise",
                 "flow-gated-noise", "pose_iou", lambda a, b: b > a + 0.01),
             row("StreamV2V: its feature bank lowers warping error against per-frame generation "
                 "(102.99 vs 117.01, its scale)", "independent-noise", "streamv2v", "warping_error", lower),
             row("VidToMe: token merging lowers warping error against Text2Video-Zero (.013 vs .094)",
                 "preset-t2v-zero", "vidtome", "warping_error", lower),
             row("VidToMe at R = 0.5 against per-frame attention (warping error)", "independent-noise",
                 "vidtome-r0.5", "warping_error", lower),
             "| StreamV2V: CLIP consistency 96.58 vs 95.24; VidToMe: frame CLIP .975 vs .969 | not measured: "
             "CLIP's weights cannot be had here (the toy world has no CLIP) | | | not measured |"]
    new = ("grid-2", "grid-3", "trajectory-attention", "flow-gated-noise", "streamv2v", "vidtome")
    ious = ", ".join(f"{n} {by_name[n]['pose_iou']:.3f}" for n in new)
    on_pose = all(by_name[n]["pose_iou"] >= 0.6 for n in new)
    lines.append(f"| every new technique stays on the pose (IoU >= 0.6) | {ious} | | | "
                 f"{'holds' if on_pose else 'does not hold'} |")
    return "\n".join(lines)


def seed_claims(by_name):
    """The original project's own claims (shared/seed.md), each against its comparison, and a verdict."""
    def pair(before, after, key):
        return f"{before}: {by_name[before][key]:.4g} -> {after}: {by_name[after][key]:.4g}"

    def row(claim, measured, holds):
        return f"| {claim} | {measured} | {'holds' if holds else 'does not hold'} |"

    w = {n: r["warping_error"] for n, r in by_name.items()}
    evals = {n: r["unet_evals_per_frame"] for n, r in by_name.items()}
    lines = ["| claim | measured | |", "|---|---|---|",
             row("fixed and progressive noise make frames more coherent (warping error below independent noise's)",
                 f"{pair('independent-noise', 'fixed-noise', 'warping_error')}; progressive-noise: "
                 f"{w['progressive-noise']:.4g}",
                 w["fixed-noise"] < w["independent-noise"] and w["progressive-noise"] < w["independent-noise"]),
             row("naive blending is limited next to intermediate copying (less steady)",
                 pair("blending", "copying", "warping_error"), w["copying"] < w["blending"]),
             row("latent differences carry the source's motion (frames follow its flow: warp SSIM above fixed "
                 "noise's)", pair("fixed-noise", "latent-differences", "warp_ssim"),
                 by_name["latent-differences"]["warp_ssim"] > by_name["fixed-noise"]["warp_ssim"]),
             row("the source video's latents help (SDEdit from them is steadier than fixed noise alone)",
                 pair("fixed-noise", "sdedit-from-source", "warping_error"), w["sdedit-from-source"] < w["fixed-noise"]),
             row("keyframes plus aligned differences scale (fewer UNet evaluations per frame, steadier than "
                 "independent noise, on the pose)",
                 f"evals / frame {evals['independent-noise']:.0f} -> {evals['keyframes']:.1f}; "
                 f"{pair('independent-noise', 'keyframes', 'warping_error')}; IoU {by_name['keyframes']['pose_iou']:.3f}",
                 evals["keyframes"] < evals["independent-noise"] and w["keyframes"] < w["independent-noise"]
                 and by_name["keyframes"]["pose_iou"] >= 0.6)]
    return "\n".join(lines)


def report(measured, rows, args):
    by_name = {r["run"].removeprefix("swing-"): r for r in rows}
    baseline, fixed = by_name["independent-noise"], by_name["fixed-noise"]
    ious, colors, spread = measured["pose_iou"], measured["shirt_color_accuracy"], measured["nuisance_flicker"]
    mean_iou = float(np.mean(list(ious.values())))
    ratio_flicker = baseline["flicker"] / fixed["flicker"]
    ratio_warp = baseline["warping_error"] / fixed["warping_error"]
    cut = {n: 1 - by_name[n]["warping_error"] / baseline["warping_error"] for n in ("copying", "keyframes")}
    verdict = lambda ok: "met" if ok else "NOT met"  # noqa: E731
    return f"""{MARKERS[0]}
machine: {measured['machine']}; {measured['date']}; `python benchmarks/toy_world.py` ({measured['minutes']:.1f} min)

The toy model at its native 64x64, {args.steps} DDIM steps, guidance {args.guidance}. Pose and prompt
following: {args.count} held-out poses (never seen in training) per shirt colour and background,
independent noise. The technique table: the demo swing (64 frames, `demo/toy_sweep.yaml`), prompt
"{rows[0]['flags'].split('--prompt ')[-1]}", source clip `demo/golf_swing_toy.mp4` (the toy world's
rendering of the swing in another look) for the flow of the warping error and for the techniques
that read a source.

| target | measured | |
|---|---|---|
| pose IoU on held-out poses >= 0.6 | {mean_iou:.3f} (studio {ious['studio']:.3f}, golf course {ious['golf course']:.3f}, beach {ious['beach']:.3f}, night {ious['night']:.3f}) | {verdict(mean_iou >= 0.6)} |
| shirt colour followed >= 90 % for every colour | {', '.join(f'{c} {v:.0%}' for c, v in colors.items())} | {verdict(min(colors.values()) >= 0.9)} |
| one pose, independent noise: pictures differ | mean abs. difference {spread['independent']:.1f}/255 (fixed noise: {spread['fixed']:.1f}) | {verdict(spread['independent'] > 5 * max(spread['fixed'], 0.5))} |
| swing: flicker independent / fixed >= 2 | {ratio_flicker:.2f} | {verdict(ratio_flicker >= 2)} |
| swing: warping error independent / fixed >= 2 | {ratio_warp:.2f} | {verdict(ratio_warp >= 2)} |
| copying cuts warping error >= 50 % vs independent, pose IoU >= 0.6 | {cut['copying']:.0%}, IoU {by_name['copying']['pose_iou']:.3f} | {verdict(cut['copying'] >= 0.5 and by_name['copying']['pose_iou'] >= 0.6)} |
| keyframes cut warping error >= 50 % vs independent, pose IoU >= 0.6 | {cut['keyframes']:.0%}, IoU {by_name['keyframes']['pose_iou']:.3f} | {verdict(cut['keyframes'] >= 0.5 and by_name['keyframes']['pose_iou'] >= 0.6)} |

Every technique on the swing, sorted by warping error (flicker: the clip's frame-to-frame change
over the source's, 1 = moves as much as the source; background flickering: VBench's, over the
static background, 1 = no change; warping error: colour MSE after warping by the source's flow;
warp SSIM: RAVE's; pose IoU and shirt colour: per frame, as above; seconds per frame on this
machine, whole run incl. loading):

{table(rows, baseline['warping_error'])}

Flow fusion (Rerender's two phases, `demo/toy_flow_sweep.yaml`) against the same noise without
it, on the swing and on a second motion, jumping jacks (`demo/jumping_jacks.json`):

{flow_targets(measured['flow_fusion'])}

The original project's own claims (`../shared/seed.md`), tested in this table's runs:

{seed_claims(by_name)}

The newer training-free techniques' claims, tested in this table's runs (s / frame and peak memory
of the two settings compared, on this machine; the papers measure other models and data, so only
the direction is compared):

{peer_claims(by_name)}

![trade-off](benchmarks/results/toy_trade_off.png)
{MARKERS[1]}"""


def write_section(text):
    path = os.path.join(ROOT, "BENCHMARKS.md")
    with open(path, encoding="utf-8") as f:
        content = f.read()
    if MARKERS[0] in content:
        before, rest = content.split(MARKERS[0], 1)
        content = before + text + rest.split(MARKERS[1], 1)[1]
    else:
        content += "\n## The toy world: what the techniques do\n\n" + text + "\n"
    with open(path, "w", encoding="utf-8") as f:
        f.write(content)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--count", type=int, default=8, help="held-out poses per shirt colour and background")
    parser.add_argument("--steps", type=int, default=20, help="denoising steps (the sweep file sets its own)")
    parser.add_argument("--guidance", type=float, default=7.5, help="guidance scale (the sweep's default too)")
    parser.add_argument("--from-json", action="store_true",
                        help="write the report again from benchmarks/results/toy_world.json, running nothing")
    args = parser.parse_args(argv)
    if args.from_json:
        with open(os.path.join(RESULTS, "toy_world.json"), encoding="utf-8") as f:
            measured = json.load(f)
        text = report(measured, measured["techniques"], args)
        with open(os.path.join(RESULTS, "toy_world.md"), "w", encoding="utf-8") as f:
            f.write(text + "\n")
        return write_section(text)
    started = time.perf_counter()
    pipe = models.load_pipeline(models.ModelSpec(model=models.TOY, device="cpu"))
    ious, colors = following(pipe, args.count, args.steps, args.guidance)
    measured = {"pose_iou": ious, "shirt_color_accuracy": colors,
                "nuisance_flicker": nuisance_flicker(pipe, args.steps, args.guidance)}
    rows, sweep_out = run_techniques()
    measured["flow_fusion"], _ = run_techniques(FLOW_SWEEP)
    os.makedirs(os.path.join(RESULTS, "toy_strips"), exist_ok=True)
    for row in rows:
        strip(os.path.join(sweep_out, "runs", row["run"]),
              os.path.join(RESULTS, "toy_strips", row["run"].removeprefix("swing-") + ".png"))
    shutil.copy(os.path.join(sweep_out, "plots", "trade_off.png"), os.path.join(RESULTS, "toy_trade_off.png"))
    measured.update(machine=f"{platform.machine()}, {os.cpu_count()} cores; torch {torch.__version__}",
                    date=time.strftime("%Y-%m-%d"), minutes=(time.perf_counter() - started) / 60,
                    techniques=rows)
    with open(os.path.join(RESULTS, "toy_world.json"), "w", encoding="utf-8") as f:
        json.dump(measured, f, indent=2)
    text = report(measured, rows, args)
    with open(os.path.join(RESULTS, "toy_world.md"), "w", encoding="utf-8") as f:
        f.write(text + "\n")
    write_section(text)
    print(text)


if __name__ == "__main__":
    main()
