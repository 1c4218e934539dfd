"""The claims tables of benchmarks/toy_world.py: flow fusion's targets, the original project's
own claims (shared/seed.md) and the newer techniques' papers' claims, each tested in the toy
sweep's runs (rows keyed by setting name) and given a verdict.
"""


def verdict(ok):
    """A target's verdict cell."""
    return "met" if ok else "NOT met"


def flow_targets(rows):
    """Flow fusion against the same noise without it, per motion of demo/toy_flow_sweep.yaml."""
    by_name = {r["run"]: r for r in rows}
    lines = ["| motion | setting | warping error | pose IoU | target | |", "|---|---|---|---|---|---|"]
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


def verdicts(table):
    """{claim: verdict} of a claims table's rows (the first cell and the last)."""
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()[2:]]
    return {c[0]: c[-1] for c in cells}


def changed_verdicts(by_name, first_world):
    """The claims whose verdict differs between this model's runs and the first (64 px) world's,
    as markdown lines; first_world: that world's rows by setting name (None: not at hand)."""
    if first_world is None:
        return "- the first world's results (benchmarks/results/toy_world_64.json) are not at hand"
    lines = []
    for claims in (seed_claims, peer_claims):
        now, before = verdicts(claims(by_name)), verdicts(claims(first_world))
        lines += [f"- {claim}: {before[claim]} on the 64 px model, {verdict} now" for claim, verdict in now.items()
                  if claim in before and before[claim] != verdict]
    return "\n".join(lines) or "- none: every claim has the verdict it had on the 64 px model"
