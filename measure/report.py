"""A sweep's comparison: results.csv and results.md, a plot per metric and the trade-off plot, and
report.html (the side-by-side videos inline, sortable by any metric, the plots below; it opens
from the file system). ``write_results(config, rows)`` is the entry point.
"""
import csv
import html
import logging
import os
import urllib.parse

import matplotlib
import numpy as np

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.text  # noqa: E402
import matplotlib.transforms  # noqa: E402

from measure import intervals, metrics  # noqa: E402

log = logging.getLogger("sweep")
METRICS = ("warping_error", "warp_ssim", "flicker", "background_flickering", "clip_consistency_consecutive",
           "clip_consistency_all_pairs", "clip_prompt_consistency", "pose_pck", "pose_iou", "arm_iou",
           "club_visibility", "shirt_color_accuracy", "seconds_per_frame", "unet_evals_per_frame", "peak_memory_gib")
HIGHER_IS_BETTER = {"warp_ssim", "background_flickering", "clip_consistency_consecutive", "clip_consistency_all_pairs",
                    "clip_prompt_consistency", "pose_pck", "pose_iou", "arm_iou", "club_visibility",
                    "shirt_color_accuracy"}
TRADE_OFF = "trade_off.png"  # warping error against seconds per frame, a point per run


def write_results(config, rows):
    """results.csv, results.md (with the settings' means and intervals), plots/<metric>.png and report.html."""
    out = config["out"]
    measured = [m for m in METRICS if any(r.get(m) is not None for r in rows)]
    columns = ["run", "seed"] + measured + (["error"] if any(r.get("error") for r in rows) else [])
    with open(os.path.join(out, "results.csv"), "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["run", "setting", *columns[1:], "flags"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    summary = intervals.summarize(rows, measured)
    with open(os.path.join(out, "results.md"), "w", encoding="utf-8") as f:
        means = metrics.format_table(summary_cells(summary, measured), ["setting", "runs", *measured])
        f.write(f"Sorted by {config.get('sort_by', 'warping_error')}.\n\n{metrics.format_table(rows, columns)}\n\n"
                f"{SUMMARY_NOTE}\n\n{means}\n")
    write_plots(out, [r for r in rows if not r.get("error")], measured, summary)
    write_report(out, rows, columns, summary, measured)
    log.info("\n%s\nwrote %s/results.csv, results.md, plots/, report.html", metrics.format_table(rows, columns), out)


SUMMARY_NOTE = ("Each setting's mean over its runs (seeds and inputs), with its 95 % bootstrap interval over "
                "them in brackets (one run: no interval); a seed's runs are resampled together, since they share "
                "its noise.")


def interval_text(interval, runs):
    mean, low, high = interval
    return f"{mean:.4g}" if runs == 1 else f"{mean:.4g} [{low:.4g}, {high:.4g}]"


def summary_cells(summary, measured):
    """The summary as table rows of text cells."""
    return [{"setting": s["setting"], "runs": s["runs"],
             **{m: interval_text(s[m], s["runs"]) for m in measured if m in s}} for s in summary]


def write_plots(out, rows, columns, summary=()):
    """A bar chart per metric; the trade-off plot (per setting with intervals where ``summary``,
    intervals.summarize's, has a setting of several runs)."""
    os.makedirs(os.path.join(out, "plots"), exist_ok=True)
    for metric in columns:
        named = [(r["run"], r[metric]) for r in rows if r.get(metric) is not None]
        figure, axis = plt.subplots(figsize=(max(4.0, 0.6 * len(named) + 2), 3.5))
        axis.bar([n for n, _ in named], [v for _, v in named], color="#4477aa")
        axis.set_ylabel(metric.replace("_", " ") + (" (higher is better)" if metric in HIGHER_IS_BETTER else ""))
        axis.tick_params(axis="x", labelrotation=45)
        for label in axis.get_xticklabels():
            label.set_horizontalalignment("right")
        figure.tight_layout()
        figure.savefig(os.path.join(out, "plots", f"{metric}.png"), dpi=100)
        plt.close(figure)
    if "warping_error" in columns and "seconds_per_frame" in columns:
        plot_trade_off(os.path.join(out, "plots", TRADE_OFF), rows, summary)


ON_POSE = {"pose_iou": 0.6, "pose_pck": 0.5}  # a run keeps to the pose at or above this (the Pareto front's runs)
LABEL_RINGS = (9, 18, 30, 44, 60, 78, 98, 120, 145)  # label offsets tried around a point, points (1/72 in)
LABEL_DIRECTIONS = [(1, 0.3), (1, -0.5), (-1, 0.3), (-1, -0.5), (0.15, 1), (0.15, -1), (-0.5, 1), (-0.5, -1),
                    (1, 1), (1, -1), (-1, 1), (-1, -1)]


def pareto_front(points, pose):
    """The runs no other on-pose run beats on both cost and steadiness: (seconds_per_frame,
    warping_error) minimal, among those whose pose metric is at least ON_POSE (all, without one);
    sorted by cost."""
    kept = [r for r in points if pose is None or (r.get(pose) is not None and r[pose] >= ON_POSE[pose])]
    front = [r for r in kept if not any(
        o["seconds_per_frame"] <= r["seconds_per_frame"] and o["warping_error"] <= r["warping_error"]
        and (o["seconds_per_frame"], o["warping_error"]) != (r["seconds_per_frame"], r["warping_error"]) for o in kept)]
    return sorted(front, key=lambda r: r["seconds_per_frame"])


def text_box(label, renderer):
    """An annotation's text box in display units (its own extent includes the leader line, which
    touches its point)."""
    label.update_positions(renderer)
    return matplotlib.text.Text.get_window_extent(label, renderer)


def place_labels(axis, points, names):
    """A label per point where it overlaps no other label and no point: the first free place on
    rings of growing offset (a leader line from the second ring on). -> the labels' display boxes."""
    figure = axis.figure
    renderer = figure.canvas.get_renderer()
    marker_boxes = [matplotlib.transforms.Bbox.from_extents(x - 5, y - 5, x + 5, y + 5)
                    for x, y in axis.transData.transform(points)]
    placed = []
    for (x, y), name in sorted(zip(points, names), key=lambda item: -item[0][1]):
        for ring, radius in enumerate(LABEL_RINGS):
            for dx, dy in ((radius * dx, radius * dy) for dx, dy in LABEL_DIRECTIONS):
                label = axis.annotate(name, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=7,
                                      ha="left" if dx >= 0 else "right", va="center",
                                      arrowprops=dict(arrowstyle="-", lw=0.5, color="0.4") if ring else None)
                box = text_box(label, renderer).expanded(1.05, 1.15)
                inside = axis.get_window_extent(renderer).contains(box.x0, box.y0) and \
                    axis.get_window_extent(renderer).contains(box.x1, box.y1)
                if inside and not any(box.overlaps(other) for other in placed + marker_boxes):
                    placed.append(box)
                    break
                label.remove()
            else:
                continue
            break
        else:  # no free place: the last ring's first, marked by its leader line
            label = axis.annotate(name, (x, y), xytext=(LABEL_RINGS[-1], 0), textcoords="offset points", fontsize=7,
                                  arrowprops=dict(arrowstyle="-", lw=0.5, color="0.4"))
            placed.append(text_box(label, renderer))
    return placed


def short_names(names):
    """Run names without the part all share ("swing-" when a sweep has one input)."""
    prefix = os.path.commonprefix(names) if len(names) > 1 else ""
    prefix = prefix[:prefix.rfind("-") + 1]
    return [n[len(prefix):] or n for n in names]


TRADE_OFF_AXES = ("seconds_per_frame", "warping_error")


def setting_points(summary):
    """The trade-off's points of a sweep with seeds: per setting, its means as a row (named by the
    setting) and its intervals' half-widths below and above, (2, 2) over (x, y); None where every
    setting has one run (then the runs are the points)."""
    if not any(s["runs"] > 1 for s in summary):
        return None
    points = []
    for s in summary:
        if all(m in s for m in TRADE_OFF_AXES):
            row = {"run": s["setting"], **{m: s[m][0] for m in METRICS if m in s}}
            row["bars"] = [[s[m][0] - s[m][1], s[m][2] - s[m][0]] for m in TRADE_OFF_AXES]
            points.append(row)
    return points


def plot_trade_off(path, rows, summary=()):
    """Warping error against seconds per frame, a labelled point per run, coloured by pose IoU (or
    PCK) where measured: the cost of steadiness, and whether the pose survives it. In a sweep with
    seeds, a point per setting at its means, with its 95 % intervals over seeds and inputs as error
    bars. Log axes where the points span more than 3x; the Pareto front of the on-pose points drawn
    as a line; no label on another. -> the labels' display boxes (for the tests)."""
    pose = next((m for m in ("pose_iou", "pose_pck") if any(r.get(m) is not None for r in rows)), None)
    points = setting_points(summary)
    if points is None:
        points = [r for r in rows if r.get("warping_error") is not None and r.get("seconds_per_frame") is not None]
    figure, axis = plt.subplots(figsize=(9.0, 6.0))
    xs, ys = [r["seconds_per_frame"] for r in points], [r["warping_error"] for r in points]
    if points and "bars" in points[0]:
        axis.errorbar(xs, ys, xerr=np.array([r["bars"][0] for r in points]).T,
                      yerr=np.array([r["bars"][1] for r in points]).T, fmt="none", ecolor="0.55", lw=0.8,
                      capsize=2, zorder=1, label="95 % interval over seeds and inputs")
    for values, set_scale in ((xs, axis.set_xscale), (ys, axis.set_yscale)):
        if values and min(values) > 0 and max(values) > 3 * min(values):
            set_scale("log")
    if pose:
        colors = [r.get(pose) if r.get(pose) is not None else float("nan") for r in points]
        scatter = axis.scatter(xs, ys, c=colors, cmap="viridis", vmin=0, vmax=1, s=40, edgecolors="k", zorder=3)
        figure.colorbar(scatter, ax=axis, label=pose.replace("_", " ") + " (higher is better)")
    else:
        axis.scatter(xs, ys, color="#4477aa", s=40, edgecolors="k", zorder=3)
    front = pareto_front(points, pose)
    if front:
        axis.step([r["seconds_per_frame"] for r in front], [r["warping_error"] for r in front], where="post",
                  color="#cc3311", lw=1.2, zorder=2,
                  label="Pareto front: steadiest for its cost" + (f", {pose.replace('_', ' ')} >= {ON_POSE[pose]}"
                                                                  if pose else ""))
        axis.scatter([r["seconds_per_frame"] for r in front], [r["warping_error"] for r in front], s=150,
                     facecolors="none", edgecolors="#cc3311", lw=1.2, zorder=4)
    if front or (points and "bars" in points[0]):
        axis.legend(loc="upper right", fontsize=7)
    axis.set_xlabel("seconds per frame")
    axis.set_ylabel("warping error (lower is steadier)")
    if xs:  # room for labels beside the outermost points
        axis.margins(x=0.25, y=0.12)
    figure.tight_layout()
    figure.canvas.draw()
    boxes = place_labels(axis, list(zip(xs, ys)), short_names([r["run"] for r in points]))
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return boxes


REPORT_SCRIPT = """
document.querySelectorAll("th[data-key]").forEach(function (header, column) {
  header.addEventListener("click", function () {
    var body = document.querySelector("#runs tbody");
    var rows = Array.prototype.slice.call(body.rows);
    var ascending = header.dataset.order !== "asc";
    header.dataset.order = ascending ? "asc" : "desc";
    rows.sort(function (a, b) {
      var x = a.cells[column].dataset.value, y = b.cells[column].dataset.value;
      var nx = parseFloat(x), ny = parseFloat(y);
      var order = (isNaN(nx) || isNaN(ny)) ? String(x).localeCompare(String(y)) : nx - ny;
      return ascending ? order : -order;
    });
    rows.forEach(function (row) { body.appendChild(row); });
  });
});
"""


def write_report(out, rows, columns, summary=(), measured=()):
    """report.html: each setting's means with their intervals, then one row per run with its flags,
    metrics and side-by-side video; click a header to sort."""
    head = "".join(f'<th data-key="{html.escape(c)}">{html.escape(c.replace("_", " "))}</th>' for c in columns)
    body = []
    for row in rows:
        cells = []
        for c in columns:
            value = row.get(c)
            shown = f"{value:.4g}" if isinstance(value, float) else ("-" if value is None else str(value))
            cells.append(f'<td data-value="{html.escape(str(value if value is not None else ""))}">{html.escape(shown)}</td>')
        video = urllib.parse.quote(f"runs/{row['run']}/side_by_side.mp4")
        if row.get("error"):
            cells.append("<td>failed</td>")
        else:
            cells.append(f'<td><video src="{html.escape(video)}" controls muted loop playsinline preload="auto" '
                         'width="384"></video></td>')
        cells.append(f"<td><code>{html.escape(row['flags'])}</code></td>")
        body.append(('<tr class="failed">' if row.get("error") else "<tr>") + "".join(cells) + "</tr>")
    names = sorted(n for n in os.listdir(os.path.join(out, "plots")) if n.endswith(".png")) \
        if os.path.isdir(os.path.join(out, "plots")) else []
    names.sort(key=lambda n: n != TRADE_OFF)  # the trade-off first
    plots = "<h2>Plots</h2>" + "".join(
        f'<figure><img src="plots/{html.escape(n)}" alt="{html.escape(n[:-4])}"></figure>' for n in names) if names else ""
    keys = ("setting", "runs", *measured)
    means = "".join("<tr>" + "".join(f"<td>{html.escape(str(c.get(k, '-')))}</td>" for k in keys) + "</tr>"
                    for c in summary_cells(summary, measured))
    means_table = (f"<h2>Means over seeds and inputs</h2><p>{html.escape(SUMMARY_NOTE)}</p><table><thead><tr>"
                   + "".join(f"<th>{html.escape(k.replace('_', ' '))}</th>" for k in keys)
                   + f"</tr></thead><tbody>{means}</tbody></table><h2>Runs</h2>") if summary else ""
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>sdvideo sweep</title>
<style>body{{font-family:sans-serif;margin:1em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px;vertical-align:top}} th[data-key]{{cursor:pointer;background:#eef}}
code{{font-size:0.8em}} tr.failed{{background:#fdd}}</style></head>
<body><h1>sdvideo sweep</h1>{means_table}<p>Click a column header to sort. Left: source or pose; right: generated.</p>
<table id="runs"><thead><tr>{head}<th>video</th><th>flags</th></tr></thead>
<tbody>{"".join(body)}</tbody></table>
{plots}
<script>{REPORT_SCRIPT}</script></body></html>
"""
    with open(os.path.join(out, "report.html"), "w", encoding="utf-8") as f:
        f.write(page)
