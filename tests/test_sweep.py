"""Sweeps: planning, resuming after a crash, results, report (in a real headless browser), accelerate."""
import csv
import json
import os
import shlex
import shutil
import subprocess
import sys

import numpy as np
import pytest

import sdvideo
from conftest import ROOT
from measure import intervals, report, sweep

CONFIG = """
out: {out}
sort_by: flicker
common: {{model: tiny, height: 64, width: 64, steps: 2, max_frames: 4, batch_size: 4}}
inputs:
  - {{name: swing, poses: {root}/demo/golf_swing.json, video: {root}/demo/golf_swing_poses.mp4}}
prompts: [a golfer]
settings:
  - {{name: baseline, preset: baseline}}
  - {{name: copying, noise: fixed, copy_step: "1"}}
grid:
  noise: [fixed, progressive]
evaluate: {{no_clip: true}}
"""


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text(CONFIG.format(out=tmp_path / "out", root=ROOT))
    return str(path)


def test_plan_covers_settings_and_grid_with_flags():
    config = {"root": ROOT, "inputs": [{"name": "a", "poses": "p.json"}], "prompts": ["x", "y"],
              "common": {"model": "tiny", "quiet": True, "residuals": None},
              "settings": [{"name": "base", "steps": 3}], "grid": {"noise": ["fixed", "slerp"]}}
    runs = sweep.plan_runs(config)
    assert [run.name for run in runs] == ["a-p0-base", "a-p0-noise=fixed", "a-p0-noise=slerp",
                                          "a-p1-base", "a-p1-noise=fixed", "a-p1-noise=slerp"]
    assert runs[0].flags == ["--model", "tiny", "--quiet", "--poses", os.path.join(ROOT, "p.json"), "--steps", "3",
                          "--prompt", "x"]


def test_false_turns_off_a_flag_that_is_on_by_default_and_the_list_of_those_is_complete():
    import argparse

    from cli import run

    assert sweep.to_flags({"grid": 2, "grid_shuffle": False, "overwrite": False, "init_from_source": True}) == [
        "--grid", "2", "--no-grid-shuffle", "--init-from-source"]
    assert sweep.to_flags({"lora": ["a.safetensors:0.5", "b"]}) == ["--lora", "a.safetensors:0.5", "--lora", "b"]
    parser = run.run_command_parser(argparse.ArgumentParser().add_subparsers())
    negatable = {a.dest for a in parser._actions if isinstance(a, argparse.BooleanOptionalAction)}
    assert negatable == set(sweep.NEGATABLE)


def test_sweep_resumes_after_a_crash_and_writes_every_result(config, tmp_path, monkeypatch):
    calls = []

    def crash_on_third(argv):
        calls.append(argv)
        if len(calls) == 3:
            raise KeyboardInterrupt  # the machine went away mid-sweep
        return sdvideo.main(argv)

    with pytest.raises(KeyboardInterrupt):
        sweep.run_sweep(config, crash_on_third, {"clip": None, "detector": None})
    calls.clear()
    rows = sweep.run_sweep(config, lambda argv: calls.append(argv) or sdvideo.main(argv), {"clip": None, "detector": None})
    assert len(calls) == 2  # the two runs finished before the crash were skipped
    out = tmp_path / "out"
    assert [r["run"] for r in rows] == sorted([r["run"] for r in rows], key=lambda n: next(
        x["flicker"] for x in rows if x["run"] == n))
    with open(out / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert {r["run"] for r in table} == {"swing-baseline", "swing-copying", "swing-noise=fixed", "swing-noise=progressive"}
    assert all(float(r["warping_error"]) >= 0 for r in table)
    assert "| run |" in (out / "results.md").read_text()
    assert (out / "plots" / "warping_error.png").stat().st_size > 1000
    report = (out / "report.html").read_text()
    assert report.count("<video") == 4 and "runs/swing-copying/side_by_side.mp4" in report
    assert '<img src="plots/trade_off.png"' in report and (out / "plots" / "trade_off.png").stat().st_size > 1000
    # a changed setting reruns only that run
    calls.clear()
    text = open(config).read().replace('copy_step: "1"', 'copy_step: "0"')
    open(config, "w").write(text)
    sweep.run_sweep(config, lambda argv: calls.append(argv) or sdvideo.main(argv), {"clip": None, "detector": None})
    assert len(calls) == 1 and "--copy-step" in calls[0]


def test_bad_sweep_configs_are_user_errors(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("inputs: []\n")
    assert sdvideo.main(["sweep", str(bad)]) == 2
    assert "'inputs' must be a non-empty list" in capsys.readouterr().err
    assert sdvideo.main(["sweep", str(tmp_path / "none.yaml")]) == 2


def browser():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


@pytest.mark.skipif(browser() is None, reason="no Chromium installed (.ci/run installs Debian's chromium)")
def test_report_opens_in_a_real_browser_and_every_video_plays(config, tmp_path):
    playwright_api = pytest.importorskip("playwright.sync_api")
    sweep.run_sweep(config, sdvideo.main, {"clip": None, "detector": None})
    report = (tmp_path / "out" / "report.html").resolve()
    errors = []
    with playwright_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=browser(), args=["--no-sandbox", "--disable-gpu"])
        page = chromium.new_page()
        page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(report.as_uri())
        page.wait_for_function("Array.from(document.querySelectorAll('video')).every(v => v.readyState >= 2)",
                               timeout=30000)
        page.evaluate("Promise.all(Array.from(document.querySelectorAll('video')).map(v => v.play()))")
        # no clock in the assertion: wait (up to a generous limit) until every video has advanced
        page.wait_for_function("Array.from(document.querySelectorAll('video')).every(v => v.currentTime > 0)",
                               timeout=60000)
        played = page.evaluate("Array.from(document.querySelectorAll('video')).map(v => !v.error)")
        names = "Array.from(document.querySelectorAll('#runs tbody tr')).map(r => r.cells[0].textContent)"
        page.click("th[data-key='run']")
        ascending = page.evaluate(names)
        page.click("th[data-key='run']")
        descending = page.evaluate(names)
        chromium.close()
    assert errors == [] and played == [True] * 4
    assert ascending == sorted(ascending) and descending == sorted(ascending, reverse=True)


def test_accelerate_splits_a_sweep_across_two_cpu_processes(config, tmp_path):
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    result = subprocess.run([*launcher, os.path.join(ROOT, "sdvideo.py"), "sweep", config, "--quiet"],
                            capture_output=True, text=True, cwd=tmp_path, timeout=600,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    runs = tmp_path / "out" / "runs"
    processes = {json.loads((runs / name / sweep.RUN_FLAGS).read_text())["process"] for name in os.listdir(runs)}
    assert processes == {0, 1}
    with open(tmp_path / "out" / "results.csv") as f:
        assert len(list(csv.DictReader(f))) == 4


def test_one_failing_run_does_not_stop_the_sweep(tmp_path, capsys):
    path = tmp_path / "sweep.yaml"
    path.write_text(CONFIG.format(out=tmp_path / "out", root=ROOT).replace(
        '{name: copying, noise: fixed, copy_step: "1"}', '{name: "broken #1?", steps: 0}').replace(
        "grid:\n  noise: [fixed, progressive]\n", ""))
    assert sdvideo.main(["sweep", str(path)]) == 2
    err = capsys.readouterr().err
    assert "1 of 2 sweep runs failed (swing-broken_1_)" in err.splitlines()[-1]
    with open(tmp_path / "out" / "results.csv") as f:
        table = {r["run"]: r for r in csv.DictReader(f)}
    assert float(table["swing-baseline"]["warping_error"]) >= 0
    assert "--steps must be at least 1" in table["swing-broken_1_"]["error"]
    report = (tmp_path / "out" / "report.html").read_text()
    assert report.count("<video") == 1 and 'class="failed"' in report


def test_run_names_become_safe_folder_names_inside_the_sweep(tmp_path):
    config = {"root": ROOT, "inputs": [{"name": "..", "poses": "p.json"}],
              "settings": [{"name": "../x"}, {"name": "a/b #?%c"}]}
    assert [run.name for run in sweep.plan_runs(config)] == ["-.._x", "-a_b_c"]
    outside = tmp_path / "out" / "x"  # where runs/../x pointed: the sweep's --overwrite deleted it
    outside.mkdir(parents=True)
    (outside / "precious.txt").write_text("not a run")
    path = tmp_path / "sweep.yaml"
    path.write_text(CONFIG.format(out=tmp_path / "out", root=ROOT).replace("name: baseline", "name: ../x").replace(
        "grid:\n  noise: [fixed, progressive]\n", ""))
    assert sdvideo.main(["sweep", str(path)]) == 0
    assert (outside / "precious.txt").read_text() == "not a run"
    assert sorted(os.listdir(tmp_path / "out" / "runs")) == ["swing-.._x", "swing-copying"]
    assert 'src="runs/swing-.._x/side_by_side.mp4"' in (tmp_path / "out" / "report.html").read_text()
    record = json.loads((tmp_path / "out" / "runs" / "swing-copying" / "run.json").read_text())
    command = shlex.split(record["command"])  # the command that reproduces this run, not the sweep's
    assert command[:2] == ["python", "sdvideo.py"] and "--copy-step" in command and "sweep" not in command
    assert command[command.index("--out") + 1] == str(tmp_path / "out" / "runs" / "swing-copying")


@pytest.mark.parametrize("text, message", [
    ("inputs: 5\nsettings: [{name: a}]\n", "'inputs' must be a non-empty list"),
    ("inputs: [{poses: p.json}]\nsettings: [1, 2]\n", "'settings' must be a list of mappings"),
    ("inputs: [{poses: p.json}]\ngrid: [noise, fixed]\n", "'grid' must be a mapping"),
    ("inputs: [{poses: p.json}]\nsetings: [{name: a}]\n", "unknown key 'setings'; did you mean 'settings'?"),
    ("inputs: [{poses: p.json}]\nsettings: [{name: a, copy_stp: 3}]\n", "unknown key 'copy_stp'; did you mean 'copy_step'?"),
    ("inputs: [{poses: p.json}]\nsettings: [{name: a}]\nprompts: a golfer\n", "'prompts' must be a list of strings"),
    ("inputs: [{posses: p.json}]\nsettings: [{name: a}]\n", "unknown key 'posses'; did you mean 'poses'?"),
])
def test_sweep_files_with_wrong_types_or_keys_are_one_line_errors(tmp_path, capsys, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert sdvideo.main(["sweep", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_the_trade_off_plot_keeps_labels_apart_and_marks_the_pareto_front(tmp_path):
    from measure import report

    rng = np.random.default_rng(0)
    rows = [{"run": f"swing-setting-number-{i}", "seconds_per_frame": float(0.1 + 0.02 * rng.random()),
             "warping_error": float(10 ** rng.uniform(-3.6, -3.2)), "pose_iou": 0.7} for i in range(14)]
    rows += [{"run": "swing-fast-off-pose", "seconds_per_frame": 0.05, "warping_error": 1e-4, "pose_iou": 0.3},
             {"run": "swing-slow", "seconds_per_frame": 0.5, "warping_error": 2e-2, "pose_iou": 0.8}]
    boxes = report.plot_trade_off(str(tmp_path / "trade_off.png"), rows)
    assert len(boxes) == len(rows)  # 14 of them crowd one corner
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    front = report.pareto_front(rows, "pose_iou")
    on_pose = [r for r in rows if r["pose_iou"] >= 0.6]
    assert rows[-2] not in front  # the fastest and steadiest run has lost the pose
    for r in on_pose:  # every on-pose run is on the front or beaten on both by one that is
        assert r in front or any(f["seconds_per_frame"] <= r["seconds_per_frame"]
                                 and f["warping_error"] <= r["warping_error"] for f in front)
    assert all(a["warping_error"] > b["warping_error"] for a, b in zip(front, front[1:]))  # cost buys steadiness
    assert report.short_names(["swing-a", "swing-b-c"]) == ["a", "b-c"]


def test_seeds_run_every_setting_once_per_seed_and_results_give_means_with_intervals(tmp_path):
    config = {"root": ROOT, "inputs": [{"name": "a", "poses": "p.json"}, {"name": "b", "poses": "p.json"}],
              "settings": [{"name": "base"}, {"noise": "fixed"}], "seeds": [0, 3]}
    runs = sweep.plan_runs(config)
    assert [(r.name, r.setting, r.seed) for r in runs[:4]] == [("a-base-s0", "base", 0), ("a-base-s3", "base", 3),
                                                              ("a-1-s0", "1", 0), ("a-1-s3", "1", 3)]
    assert runs[1].flags[-2:] == ["--seed", "3"] and len(runs) == 8
    with pytest.raises(sdvideo.UserError, match="'seeds' must be a list of distinct"):
        sweep.check_config("x.yaml", {k: v for k, v in {**config, "seeds": [0, 0]}.items() if k != "root"})
    rows = [{"run": r.name, "setting": r.setting, "seed": r.seed, "flags": "", "warping_error": 0.1 + 0.01 * i,
             "seconds_per_frame": 1.0} for i, r in enumerate(runs)]
    (tmp_path / "runs").mkdir()
    report.write_results({"out": str(tmp_path)}, rows)
    header = (tmp_path / "results.csv").read_text().splitlines()[0]
    assert header.startswith("run,setting,seed,warping_error")
    means = (tmp_path / "results.md").read_text().split("95 % bootstrap interval")[1]
    base = [line for line in means.splitlines() if line.startswith("| base |")][0]
    # a seed's runs share its noise across inputs: the interval resamples seeds (runs 0, 1 and 4, 5 are base's)
    mean, low, high = intervals.bootstrap_interval([0.10, 0.11, 0.14, 0.15], clusters=[0, 3, 0, 3])
    assert base == f"| base | 4 | {mean:.4g} [{low:.4g}, {high:.4g}] | 1 [1, 1] |"
    assert "Means over seeds and inputs" in (tmp_path / "report.html").read_text()
    # the trade-off plot: a point per setting at its means, its intervals as error bars
    points = report.setting_points(intervals.summarize(rows, ["warping_error", "seconds_per_frame"]))
    base_point = next(p for p in points if p["run"] == "base")
    assert base_point["warping_error"] == pytest.approx(mean)
    assert base_point["bars"][1] == pytest.approx([mean - low, high - mean]) and base_point["bars"][0] == [0, 0]
    assert [r.input for r in runs[:5]] == ["a"] * 4 + ["b"]
    assert (tmp_path / "plots" / "trade_off.png").is_file()
    assert report.setting_points(intervals.summarize(rows[:1], ["warping_error", "seconds_per_frame"])) is None
