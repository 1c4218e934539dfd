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

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

import metrics  # noqa: E402

log = logging.getLogger("sweep")
METRICS = ("warping_error", "warp_ssim", "flicker", "background_flickering", "clip_consistency_consecutive",
           "clip_consistency_all_pairs", "clip_prompt_consistency", "pose_pck", "pose_iou", "shirt_color_accuracy",
           "seconds_per_frame", "unet_evals_per_frame", "peak_memory_gib")
HIGHER_IS_BETTER = {"warp_ssim", "background_flickering", "clip_consistency_consecutive", "clip_consistency_all_pairs",
                    "clip_prompt_consistency", "pose_pck", "pose_iou", "shirt_color_accuracy"}
TRADE_OFF = "trade_off.png"  # warping error against seconds per frame, a point per run


def write_results(config, rows):
    """results.csv, results.md, plots/<metric>.png and report.html in the sweep folder."""
    out = config["out"]
    columns = ["run"] + [m for m in METRICS if any(r.get(m) is not None for r in rows)]
    columns += ["error"] if any(r.get("error") for r in rows) else []
    with open(os.path.join(out, "results.csv"), "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns + ["flags"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    with open(os.path.join(out, "results.md"), "w", encoding="utf-8") as f:
        f.write(f"Sorted by {config.get('sort_by', 'warping_error')}.\n\n" + metrics.format_table(rows, columns) + "\n")
    write_plots(out, [r for r in rows if not r.get("error")], [c for c in columns[1:] if c != "error"])
    write_report(out, rows, columns)
    log.info("\n%s\nwrote %s/results.csv, results.md, plots/, report.html", metrics.format_table(rows, columns), out)


def write_plots(out, rows, columns):
    """A bar chart per metric."""
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
        plot_trade_off(os.path.join(out, "plots", TRADE_OFF), rows)


def plot_trade_off(path, rows):
    """Warping error against seconds per frame, a labelled point per run, coloured by pose IoU (or
    PCK) where measured: the cost of steadiness, and whether the pose survives it."""
    pose = next((m for m in ("pose_iou", "pose_pck") if any(r.get(m) is not None for r in rows)), None)
    points = [r for r in rows if r.get("warping_error") is not None and r.get("seconds_per_frame") is not None]
    figure, axis = plt.subplots(figsize=(7.0, 4.5))
    xs, ys = [r["seconds_per_frame"] for r in points], [r["warping_error"] for r in points]
    if pose:
        colors = [r.get(pose) if r.get(pose) is not None else float("nan") for r in points]
        scatter = axis.scatter(xs, ys, c=colors, cmap="viridis", vmin=0, vmax=1, s=60, edgecolors="k")
        figure.colorbar(scatter, ax=axis, label=pose.replace("_", " ") + " (higher is better)")
    else:
        axis.scatter(xs, ys, color="#4477aa", s=60, edgecolors="k")
    for r in points:
        axis.annotate(r["run"], (r["seconds_per_frame"], r["warping_error"]), fontsize=7,
                      xytext=(4, 3), textcoords="offset points")
    axis.set_xlabel("seconds per frame")
    axis.set_ylabel("warping error (lower is steadier)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


REPORT_SCRIPT = """
document.querySelectorAll("th[data-key]").forEach(function (header, column) {
  header.addEventListener("click", function () {
    var body = document.querySelector("tbody");
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


def write_report(out, rows, columns):
    """report.html: one row per run with its flags, metrics and side-by-side video; click a header to sort."""
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
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>sdvideo sweep</title>
<style>body{{font-family:sans-serif;margin:1em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px;vertical-align:top}} th[data-key]{{cursor:pointer;background:#eef}}
code{{font-size:0.8em}} tr.failed{{background:#fdd}}</style></head>
<body><h1>sdvideo sweep</h1><p>Click a column header to sort. Left: source or pose; right: generated.</p>
<table><thead><tr>{head}<th>video</th><th>flags</th></tr></thead>
<tbody>{"".join(body)}</tbody></table>
{plots}
<script>{REPORT_SCRIPT}</script></body></html>
"""
    with open(os.path.join(out, "report.html"), "w", encoding="utf-8") as f:
        f.write(page)
