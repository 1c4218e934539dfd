"""Sweeps: many sdvideo runs from one YAML file, evaluated and compared; ``run_sweep`` is the entry point.

    python sdvideo.py sweep demo/sweep.yaml
    accelerate launch --num_processes 2 sdvideo.py sweep demo/sweep.yaml     # runs split across GPUs
    accelerate launch --multi_gpu --num_processes 2 sdvideo.py sweep ...     # the same with no GPU (gloo)

Every input x prompt x setting is one run folder under ``out/runs/``. A run already finished
with the same flags is skipped, so a crashed sweep resumes by running the same command. The main
process then writes ``results.csv``, ``results.md`` (sorted by ``sort_by``), ``plots/*.png`` and
``report.html`` (the side-by-side videos inline, sortable by any metric, opens from the file system).
"""
import collections
import contextlib
import difflib
import io
import itertools
import json
import logging
import os
import re
import sys

import torch
import yaml
from accelerate import PartialState

from cli.run_args import NEGATABLE, to_flags  # noqa: F401  (NEGATABLE: the tests read it here)
from common.errors import HelpFormatter, UserError
from measure import metrics
from measure.report import HIGHER_IS_BETTER, METRICS, write_results

log = logging.getLogger(__name__)
RUN_FLAGS = "sweep_flags.json"  # the flags a run folder was made with
TOP_KEYS = ("out", "sort_by", "common", "inputs", "prompts", "settings", "grid", "seeds", "evaluate")
INPUT_KEYS = ("name", "video", "poses", "residuals")
EVALUATE_KEYS = ("no_clip", "clip_model", "pose_backend", "annotator_path")
# One run of a sweep: its folder name and flags, the setting it belongs to across inputs and seeds, its seed
# and its input's name (a claim pairs runs by seed and input, measure/intervals.py).
Run = collections.namedtuple("Run", "name flags setting seed input")


def safe_name(name):
    """A run name as a folder name: letters, digits and ._=+- only, no leading dot (so never '..')."""
    return re.sub(r"[^A-Za-z0-9._=+-]+", "_", str(name)).lstrip(".") or "run"


def _check_keys(where, mapping, allowed):
    for key in mapping:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), [str(a) for a in allowed], n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; known: {', '.join(map(str, allowed))}"
            raise UserError(f"{where}: unknown key '{key}'{hint}")


def check_config(path, config, flags=None):
    """Types and key names of a sweep config; flags: the run flags' names (dest form), if known."""
    def need(ok, message):
        if not ok:
            raise UserError(f"{path}: {message} (see demo/toy_sweep.yaml)")

    need(isinstance(config, dict), "expected a mapping of keys such as 'inputs' and 'settings'")
    _check_keys(path, config, TOP_KEYS)
    need(isinstance(config.get("inputs"), list) and config["inputs"], "'inputs' must be a non-empty list of "
         "{name, poses, video} mappings")
    for source in config["inputs"]:
        need(isinstance(source, dict), f"each input must be a mapping like {{name: swing, poses: x.json}}, not {source!r}")
        _check_keys(f"{path}: inputs", source, INPUT_KEYS)
    settings, grid = config.get("settings"), config.get("grid")
    need(settings or grid, "needs 'inputs' and 'settings' or 'grid'")
    need(settings is None or (isinstance(settings, list) and all(isinstance(x, dict) for x in settings)),
         "'settings' must be a list of mappings like {name: copying, copy_step: 0.4}")
    need(grid is None or (isinstance(grid, dict) and all(isinstance(v, list) for v in grid.values())),
         "'grid' must be a mapping of flag -> list of values, like {noise: [fixed, slerp]}")
    prompts = config.get("prompts")
    need(prompts is None or (isinstance(prompts, list) and all(isinstance(p, str) for p in prompts)),
         "'prompts' must be a list of strings, like [\"a golfer\"] (one prompt too)")
    seeds = config.get("seeds")
    need(seeds is None or (isinstance(seeds, list) and seeds and all(type(x) is int and x >= 0 for x in seeds)
                           and len(set(seeds)) == len(seeds)),
         "'seeds' must be a list of distinct non-negative integers, like [0, 1, 2]")
    for key in ("common", "evaluate"):
        need(config.get(key) is None or isinstance(config[key], dict), f"'{key}' must be a mapping")
    _check_keys(f"{path}: evaluate", config.get("evaluate") or {}, EVALUATE_KEYS)
    if flags is not None:
        for where, mapping in [("common", config.get("common") or {}), ("grid", grid or {}),
                               *((f"settings[{i}]", x) for i, x in enumerate(settings or []))]:
            _check_keys(f"{path}: {where}", {k: v for k, v in mapping.items() if k != "name"}, flags)


def load_config(path, flags=None):
    """The sweep YAML as a dict, checked for the keys a sweep needs; flags: the names (dest form)
    of the flags a setting may set, to refuse misspelt ones."""
    if not os.path.isfile(path):
        raise UserError(f"sweep config not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            config = yaml.safe_load(f)
    except yaml.YAMLError as error:
        raise UserError(f"{path} is not valid YAML ({error})") from None
    check_config(path, config, flags)
    sort_by = str(config.get("sort_by", "warping_error")).lstrip("-")
    if sort_by not in METRICS:
        raise UserError(f"{path}: sort_by must be one of {', '.join(METRICS)}")
    config.setdefault("out", os.path.join("outputs", os.path.splitext(os.path.basename(path))[0]))
    config["root"] = os.path.dirname(os.path.abspath(path))
    return config


def plan_runs(config):
    """Every Run: inputs x prompts x (settings + grid product) x seeds (the sweep's ``seeds``, each
    run with --seed; without them one run with the seed its flags give)."""
    settings = [dict(s) for s in config.get("settings") or []]
    grid = config.get("grid") or {}
    for values in itertools.product(*grid.values()) if grid else []:
        combination = dict(zip(grid, values))
        settings.append({"name": "-".join(f"{k}={v}" for k, v in combination.items()), **combination})
    prompts = config.get("prompts") or [None]
    runs = []
    for source, (p, prompt), (index, setting), seed in itertools.product(
            config["inputs"], enumerate(prompts), enumerate(settings), config.get("seeds") or [None]):
        setting = dict(setting)
        label = "-".join(str(part) for part in (f"p{p}" if len(prompts) > 1 else None, setting.pop("name", None) or index)
                         if part is not None)
        name = safe_name("-".join(part for part in (source.get("name", "input"), label,
                                                     None if seed is None else f"s{seed}") if part is not None))
        paths = {k: _resolve(config["root"], v) for k, v in source.items() if k in ("video", "poses", "residuals")}
        flags = {**(config.get("common") or {}), **paths, **setting, **({} if seed is None else {"seed": seed})}
        if prompt is not None:
            flags["prompt"] = prompt
        runs.append(Run(name, to_flags(flags), label, int(flags.get("seed", 0)), source.get("name", "input")))
    names = [run.name for run in runs]
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


class _Tee(io.TextIOBase):
    """A stream that writes to several: a run's stderr goes on the screen and into its record."""

    def __init__(self, *streams):
        self.streams = streams

    def write(self, text):
        for stream in self.streams:
            stream.write(text)
        return len(text)


def error_path(config, name):
    return os.path.join(config["out"], "runs", f"{name}.error")


def _run_one(config, name, flags, generate, evaluate_options, process):
    """One run and its metrics; a failure is recorded in runs/NAME.error (its error line) and logged."""
    folder = os.path.join(config["out"], "runs", name)
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(_Tee(sys.stderr, captured)):
            code = generate([*flags, "--out", folder, "--overwrite", "--quiet"])
        if code != 0:
            lines = [line for line in captured.getvalue().splitlines() if line.strip()]
            raise UserError(lines[-1] if lines else f"exit status {code}")
        metrics.evaluate_run(folder, **evaluate_options)
    except Exception as error:  # one run's failure must not end the sweep (UserError included)
        if not isinstance(error, UserError):
            log.exception("sweep run %s failed", name)
        message = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        with open(error_path(config, name), "w", encoding="utf-8") as f:
            f.write(message + "\n")
        log.error("sweep run %s failed: %s", name, message)
        return
    with open(os.path.join(folder, RUN_FLAGS), "w", encoding="utf-8") as f:
        json.dump({"flags": flags, "process": process}, f)
    if os.path.exists(error_path(config, name)):
        os.remove(error_path(config, name))


def run_sweep(config_path, generate, evaluate_options, flags=None):
    """Run (this process's share of) a sweep, then, on the main process, write the comparison.

    generate(argv) -> exit code is sdvideo's main; evaluate_options: kwargs for metrics.evaluate_run
    (clip, detector) built once per process; flags: names a setting may set (see load_config).
    A failed run does not stop the others: its row carries its error line. -> rows (main process)."""
    config = load_config(config_path, flags)
    runs = plan_runs(config)
    os.makedirs(os.path.join(config["out"], "runs"), exist_ok=True)
    # Without a GPU, accelerate only goes multi-process when asked for the CPU (gloo) backend.
    state = PartialState(cpu=not torch.cuda.is_available())
    with state.split_between_processes(runs) as mine:
        for name, run_flags, *_ in mine:
            if finished(os.path.join(config["out"], "runs", name), run_flags):
                log.info("%s: finished before, skipped", name)
                continue
            log.info("%s: %s", name, " ".join(run_flags))
            _run_one(config, name, run_flags, generate, evaluate_options, state.process_index)
    state.wait_for_everyone()
    if state.is_main_process:
        rows = collect(config, runs)
        write_results(config, rows)
        return rows
    return None


def collect(config, runs):
    """One row per run: its name, setting, seed, input, flags and metrics, or its error."""
    rows, failed = [], []
    for name, flags, setting, seed, source in runs:
        folder = os.path.join(config["out"], "runs", name)
        if os.path.isfile(error_path(config, name)) or not os.path.isfile(os.path.join(folder, "metrics.json")):
            error = "did not run"
            if os.path.isfile(error_path(config, name)):
                with open(error_path(config, name), encoding="utf-8") as f:
                    error = f.read().strip()
            failed.append({"run": name, "setting": setting, "seed": seed, "input": source, "flags": " ".join(flags),
                           "error": error})
            continue
        with open(os.path.join(folder, "metrics.json"), encoding="utf-8") as f:
            rows.append({"run": name, "setting": setting, "seed": seed, "input": source, "flags": " ".join(flags),
                         **json.load(f)})
    key = str(config.get("sort_by", "warping_error"))
    metric = key.lstrip("-")
    descending = key.startswith("-") or (metric in HIGHER_IS_BETTER and not key.startswith("+"))
    present = [r for r in rows if r.get(metric) is not None]
    absent = [r for r in rows if r.get(metric) is None]
    return sorted(present, key=lambda r: r[metric], reverse=descending) + absent + failed


def sweep_command_parser(subparsers, generate, run_flags):
    """``sweep CONFIG.yaml``; generate(argv) -> exit status runs one sdvideo run (sdvideo.main);
    run_flags: the dests of the run command's flags, the keys a setting may use."""
    parser = subparsers.add_parser("sweep", help="many runs from one YAML file, evaluated and compared",
                                   formatter_class=HelpFormatter)
    metrics.add_evaluation_arguments(parser)
    parser.add_argument("config", help="sweep YAML (see demo/toy_sweep.yaml)")
    parser.set_defaults(func=lambda args: sweep_command(args, parser, generate, run_flags))
    return parser


def sweep_command(args, parser, generate, run_flags):
    """Run the sweep; the YAML's ``evaluate`` section fills what the command line left at its
    default. A failed run fails the command (after the others ran and the results are written)."""
    flags = [f for f in run_flags if f != "help"]
    config = load_config(args.config, flags)
    for key, value in (config.get("evaluate") or {}).items():
        if getattr(args, key, None) in (None, False, parser.get_default(key)):
            setattr(args, key, value)
    rows = run_sweep(args.config, generate, metrics.evaluation_options(args), flags)
    failed = [r for r in rows or [] if r.get("error")]
    if failed:
        raise UserError(f"{len(failed)} of {len(rows)} sweep runs failed ({', '.join(r['run'] for r in failed)}); "
                        f"their errors are in {os.path.join(config['out'], 'results.md')}")
    return 0
