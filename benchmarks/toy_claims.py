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


PROBE_TARGET = 0.7  # the attention probe's ratio under which the toy model carries a look through attention
# The attention probe's row (benchmarks/attention_probe.py) of the mechanism each peer works through.
MECHANISM = {"RAVE": "grid (RAVE, K=2)", "FLATTEN": "cross-frame attention", "StreamV2V": "bank (StreamV2V)",
             "VidToMe": "merging (VidToMe)", "Rerender": "cross-frame attention"}
PEER_CLAIMS = [  # (the paper's claim and figure, measure, which way holds, [(setting, before, after), ...])
    ("RAVE: shuffling raises warp SSIM over the same grid without (76.58 -> 80.51)", "warp_ssim", "higher",
     [("own setting: inversion with the ControlNet, K=3", "rave-no-shuffle", "rave"),
      ("from noise, K=2", "grid-2-no-shuffle", "grid-2"), ("from noise, K=3", "grid-3-no-shuffle", "grid-3")]),
    ("RAVE: the grid steadies the clip against per-frame generation from the same start", "warping_error", "lower",
     [("own setting: inversion with the ControlNet, K=3", "inversion-control", "rave"),
      ("from noise, K=3", "independent-noise", "grid-3")]),
    ("FLATTEN: trajectory attention about halves warping error against per-frame attention (13.40 -> 6.27)",
     "warping_error", "halved",
     [("own setting: inversion in 100 steps", "inversion-100", "flatten"),
      ("from independent noise", "independent-noise", "trajectory-attention"),
      ("from fixed noise", "fixed-noise", "trajectory-attention-fixed-noise")]),
    ("Ground-A-Video: flow-gated noise has less background flicker than independent noise (VBench background "
     "flickering, higher is steadier)", "background_flickering", "higher",
     [("own setting: from noise", "independent-noise", "flow-gated-noise")]),
    ("Ground-A-Video: flow-gated noise follows the motion better than fixed noise (pose IoU)", "pose_iou", "above",
     [("own setting: from noise", "fixed-noise", "flow-gated-noise")]),
    ("StreamV2V: its feature bank lowers warping error against per-frame generation (102.99 vs 117.01, its scale)",
     "warping_error", "lower",
     [("own setting: img2img at 0.4, fixed noise", "img2img-0.4-fixed-noise", "streamv2v"),
      ("from independent noise", "independent-noise", "streamv2v-from-noise")]),
    ("VidToMe: token merging lowers warping error (.013 against Text2Video-Zero's .094)", "warping_error", "lower",
     [("own setting: inversion, against inversion alone", "inversion", "vidtome"),
      ("from noise, against Text2Video-Zero", "preset-t2v-zero", "vidtome-from-noise"),
      ("from noise at R = 0.5, against per-frame attention", "independent-noise", "vidtome-r0.5")]),
    ("Rerender: cross-frame attention and flow fusion lower warping error against per-frame img2img",
     "warping_error", "lower",
     [("own setting: img2img at 0.75", "img2img-0.75", "rerender"),
      ("from independent noise", "independent-noise", "rerender-from-noise")]),
]
HOLDS = {"higher": lambda a, b: b > a, "lower": lambda a, b: b < a, "halved": lambda a, b: b <= 0.5 * a,
         "above": lambda a, b: b > a + 0.01}
ON_POSE = ("rave", "flatten", "vidtome", "streamv2v", "rerender", "flow-gated-noise")


def measurable(claim, probe):
    """None where the toy world can judge the claim, else the verdict cell that says why it cannot: the
    probe's worst ratio for the attention mechanism the claim's technique works through is above target."""
    mechanism = MECHANISM.get(claim.split(":")[0])
    if probe is None or mechanism is None:
        return None
    ratio = max(probe["ratios"][mechanism].values())
    return None if ratio <= PROBE_TARGET else f"not measurable on the toy world ({mechanism}: probe ratio {ratio:.2f})"


def peer_claims(by_name, probe=None):
    """The peers' papers' claims, each in its paper's own setting and from noise, against the setting it
    compares with, and a verdict ("not run" where the runs are not at hand, as in an older world's results;
    "not measurable" where ``probe``, the attention probe's results, says the toy model cannot carry a look
    through the mechanism the technique uses: the direction measured then follows in brackets)."""
    lines = ["| claim (paper's figure): setting | measured | s / frame | peak memory (GiB) | |", "|---|---|---|---|---|"]
    for claim, key, way, settings in PEER_CLAIMS:
        for setting, before, after in settings:
            if before not in by_name or after not in by_name:
                lines.append(f"| {claim}: {setting} | {before} / {after} not run | | | not run |")
                continue
            a, b = by_name[before], by_name[after]
            cost = " / ".join(f"{by_name[n]['seconds_per_frame']:.3f}" for n in (before, after))
            memory = " / ".join(f"{by_name[n]['peak_memory_gib']:.2f}" for n in (before, after))
            verdict = "holds" if HOLDS[way](a[key], b[key]) else "does not hold"
            unmeasurable = measurable(claim, probe)
            verdict = f"{unmeasurable} (measured: {verdict})" if unmeasurable else verdict
            lines.append(f"| {claim}: {setting} | {before}: {a[key]:.4g} -> {after}: {b[key]:.4g} | {cost} | {memory} "
                         f"| {verdict} |")
    lines.append("| StreamV2V: CLIP consistency 96.58 vs 95.24; VidToMe: frame CLIP .975 vs .969 | not measured: "
                 "CLIP's weights cannot be had here (the toy world has no CLIP) | | | not measured |")
    found = [n for n in ON_POSE if n in by_name]
    ious = ", ".join(f"{n} {by_name[n]['pose_iou']:.3f}" for n in found)
    on_pose = all(by_name[n]["pose_iou"] >= 0.6 for n in found)
    lines.append(f"| every peer in its own setting stays on the pose (IoU >= 0.6) | {ious} | | | "
                 f"{'holds' if on_pose and found else 'does not hold'} |")
    return "\n".join(lines)


def moved_by_setting(by_name):
    """Per peer claim, its verdict in the paper's own setting beside its verdicts from noise, as markdown lines."""
    table = verdicts(peer_claims(by_name))
    lines = []
    for claim, _, _, settings in PEER_CLAIMS:
        found = {setting: table[f"{claim}: {setting}"] for setting, _, _ in settings}
        own = [v for s, v in found.items() if s.startswith("own setting")]
        noise = {s: v for s, v in found.items() if not s.startswith("own setting")}
        if noise:
            moved = "moved" if own and any(v != own[0] for v in noise.values()) else "same"
            lines.append(f"- {claim}: {own[0] if own else 'not run'} in its own setting; "
                         + "; ".join(f"{v} {s}" for s, v in noise.items()) + f" ({moved})")
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
                  if claim in before and before[claim] != verdict and "not run" not in (before[claim], verdict)]
    return "\n".join(lines) or "- none: every claim has the verdict it had on the 64 px model"
