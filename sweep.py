"""Sweeps: many sdvideo runs from one YAML file, evaluated and compared; ``run_sweep`` is the entry point.

    python sdvideo.py sweep demo/sweep.yaml
    accelerate launch --num_processes 2 sdvideo.py sweep demo/sweep.yaml     # runs split across GPUs
    accelerate launch --multi_gpu --num_processes 2 sdvideo.py sweep ...     # the same with no GPU (gloo)

Every input x prompt x setting is one run folder under ``out/runs/``. A run already finished
with the same flags is skipped, so a crashed sweep resumes by running the same command. The main
process then writes ``results.csv``, ``results.md`` (sorted by ``sort_by``), ``plots/*.png`` and
``report.html`` (the side-by-side videos inline, sortable by any metric, opens from the file system).
"""
import csv
import html
import itertools
import json
import logging
import os

from errors import UserError

log = logging.getLogger(__name__)
RUN_FLAGS = "sweep_flags.json"  # the flags a run folder was made with
METRICS = ("warping_error", "flicker", "clip_frame_consistency", "clip_prompt_consistency", "pose_pck",
           "seconds_per_frame", "unet_evals_per_frame", "peak_memory_gib")
HIGHER_IS_BETTER = {"clip_frame_consistency", "clip_prompt_consistency", "pose_pck"}


def to_flags(settings):
    """{"copy_step": "0.3", "overwrite": True} -> ["--copy-step", "0.3", "--overwrite"]."""
    flags = []
    for key, value in settings.items():
        if value is None or value is False:
            continue
        flags.append("--" + key.replace("_", "-"))
        if value is not True:
            flags.append(str(value))
    return flags


def load_config(path):
    """The sweep YAML as a dict, checked for the keys a sweep needs."""
    import yaml

    if not os.path.isfile(path):
        raise UserError(f"sweep config not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            config = yaml.safe_load(f)
    except yaml.YAMLError as error:
        raise UserError(f"{path} is not valid YAML ({error})") from None
    if not isinstance(config, dict) or not config.get("inputs") or not (config.get("settings") or config.get("grid")):
        raise UserError(f"{path} needs 'inputs' and 'settings' or 'grid' (see demo/sweep.yaml)")
    sort_by = str(config.get("sort_by", "warping_error")).lstrip("-")
    if sort_by not in METRICS:
        raise UserError(f"{path}: sort_by must be one of {', '.join(METRICS)}")
    config.setdefault("out", os.path.join("outputs", os.path.splitext(os.path.basename(path))[0]))
    config["root"] = os.path.dirname(os.path.abspath(path))
    return config


def plan_runs(config):
    """(name, flags) of every run: inputs x prompts x (settings + grid product)."""
    settings = [dict(s) for s in config.get("settings") or []]
    grid = config.get("grid") or {}
    for values in itertools.product(*grid.values()) if grid else []:
        combination = dict(zip(grid, values))
        settings.append({"name": "-".join(f"{k}={v}" for k, v in combination.items()), **combination})
    prompts = config.get("prompts") or [None]
    runs = []
    for source, (p, prompt), setting in itertools.product(config["inputs"], enumerate(prompts), settings):
        setting = dict(setting)
        name = "-".join(str(part) for part in (source.get("name", "input"), f"p{p}" if len(prompts) > 1 else None,
                                                setting.pop("name", None) or len(runs)) if part is not None)
        paths = {k: _resolve(config["root"], v) for k, v in source.items() if k in ("video", "poses", "residuals")}
        flags = {**(config.get("common") or {}), **paths, **setting}
        if prompt is not None:
            flags["prompt"] = prompt
        runs.append((name, to_flags(flags)))
    names = [n for n, _ in runs]
    if len(set(names)) != len(names):
        raise UserError("two sweep runs have the same name; give each setting a distinct 'name'")
    return runs


def _resolve(root, path):
    return path if os.path.isabs(path) or os.path.exists(path) else os.path.join(root, path)


def finished(folder, flags):
    """A run folder holding a complete run made with exactly these flags."""
    try:
        with open(os.path.join(folder, RUN_FLAGS), encoding="utf-8") as f:
            return json.load(f)["flags"] == flags and os.path.isfile(os.path.join(folder, "metrics.json"))
    except (OSError, ValueError, KeyError, TypeError):
        return False


def run_sweep(config_path, generate, evaluate_options):
    """Run (this process's share of) a sweep, then, on the main process, write the comparison.

    generate(argv) -> exit code is sdvideo's main; evaluate_options: kwargs for metrics.evaluate_run
    (clip, detector) built once per process."""
    import torch
    from accelerate import PartialState

    import metrics

    config = load_config(config_path)
    runs = plan_runs(config)
    # Without a GPU, accelerate only goes multi-process when asked for the CPU (gloo) backend.
    state = PartialState(cpu=not torch.cuda.is_available())
    with state.split_between_processes(runs) as mine:
        for name, flags in mine:
            folder = os.path.join(config["out"], "runs", name)
            if finished(folder, flags):
                log.info("%s: finished before, skipped", name)
                continue
            log.info("%s: %s", name, " ".join(flags))
            if generate([*flags, "--out", folder, "--overwrite", "--quiet"]) != 0:
                raise UserError(f"sweep run {name} failed (its error is above); fix it and run the sweep again")
            metrics.evaluate_run(folder, **evaluate_options)
            with open(os.path.join(folder, RUN_FLAGS), "w", encoding="utf-8") as f:
                json.dump({"flags": flags, "process": state.process_index}, f)
    state.wait_for_everyone()
    if state.is_main_process:
        rows = collect(config, runs)
        write_results(config, rows)
        return rows
    return None


def collect(config, runs):
    """One row per run: its name, flags and metrics."""
    rows = []
    for name, flags in runs:
        folder = os.path.join(config["out"], "runs", name)
        with open(os.path.join(folder, "metrics.json"), encoding="utf-8") as f:
            rows.append({"run": name, "flags": " ".join(flags), **json.load(f)})
    key = str(config.get("sort_by", "warping_error"))
    metric = key.lstrip("-")
    descending = key.startswith("-") or (metric in HIGHER_IS_BETTER and not key.startswith("+"))
    present = [r for r in rows if r.get(metric) is not None]
    absent = [r for r in rows if r.get(metric) is None]
    return sorted(present, key=lambda r: r[metric], reverse=descending) + absent


def write_results(config, rows):
    """results.csv, results.md, plots/<metric>.png and report.html in the sweep folder."""
    import metrics

    out = config["out"]
    columns = ["run"] + [m for m in METRICS if any(r.get(m) is not None for r in rows)]
    with open(os.path.join(out, "results.csv"), "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns + ["flags"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    with open(os.path.join(out, "results.md"), "w", encoding="utf-8") as f:
        f.write(f"Sorted by {config.get('sort_by', 'warping_error')}.\n\n" + metrics.format_table(rows, columns) + "\n")
    write_plots(out, rows, columns[1:])
    write_report(out, rows, columns)
    log.info("\n%s\nwrote %s/results.csv, results.md, plots/, report.html", metrics.format_table(rows, columns), out)


def write_plots(out, rows, columns):
    """A bar chart per metric (matplotlib, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
        video = f"runs/{row['run']}/side_by_side.mp4"
        cells.append(f'<td><video src="{html.escape(video)}" controls muted loop playsinline preload="auto" width="384">'
                     "</video></td>")
        cells.append(f"<td><code>{html.escape(row['flags'])}</code></td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>sdvideo sweep</title>
<style>body{{font-family:sans-serif;margin:1em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px;vertical-align:top}} th[data-key]{{cursor:pointer;background:#eef}}
code{{font-size:0.8em}}</style></head>
<body><h1>sdvideo sweep</h1><p>Click a column header to sort. Left: source or pose; right: generated.</p>
<table><thead><tr>{head}<th>video</th><th>flags</th></tr></thead>
<tbody>{"".join(body)}</tbody></table>
<script>{REPORT_SCRIPT}</script></body></html>
"""
    with open(os.path.join(out, "report.html"), "w", encoding="utf-8") as f:
        f.write(page)
