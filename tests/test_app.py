"""The web app (cli/app*.py): controls read off the run parser, runs as ordinary run folders under
outputs/app/, Stop, uploads refused in one line, and the page itself in a real headless Chromium
(skipped where none is installed, as the report's test; `make browser` installs Debian's).

The browser test writes the README's screenshot, docs/app.png, where it is missing or when
SDVIDEO_SCREENSHOT=1 is set.
"""
import argparse
import json
import os
import shlex
import socket
import subprocess
import sys
import threading
import time
import types

import psutil
import pytest
import torch
from PIL import Image

import sdvideo
from cli import api, app, app_controls, run_args
from cli.app_session import BUNDLED, Session, Stopped
from common.errors import UserError
from conftest import ROOT
from measure import metrics
from test_sweep import browser

TOY_RUN = {**BUNDLED, "max_frames": 2, "steps": 2, "quiet": True}


def run_parser():
    return run_args.add_run_parser(argparse.ArgumentParser().add_subparsers())


def files_under(folder):
    return {os.path.join(d, n) for d, _, names in os.walk(folder) for n in names}


# ---- the controls -----------------------------------------------------------------------------

def test_every_run_flag_but_the_apps_own_is_a_control_with_its_help_default_and_choices():
    parser = run_parser()
    found = {c.dest: c for c in app_controls.controls(parser)}
    for action in parser._actions:
        if action.dest in app_controls.SET_BY_APP:
            assert action.dest not in found
            continue
        control = found.pop(action.dest)
        assert control.flag == action.option_strings[0] and action.help.split("%")[0] in control.help
        assert control.default == app_controls.shown(control.kind, action.default)
        assert set(map(str, action.choices or ())) <= set(control.choices)
    assert found == {}
    sections = {s: [c.dest for c in app_controls.controls(parser) if c.section == s] for s in ("input", "main")}
    assert sections == {"input": list(app_controls.INPUT), "main": list(app_controls.MAIN)}


def test_a_flag_added_to_the_run_parser_appears_in_the_page_with_no_ui_code():
    parser = run_parser()
    techniques = next(g for g in parser._action_groups if g.title == "techniques")
    techniques.add_argument("--damp", type=float, default=1.0, help="damp every step's update")
    control = next(c for c in app_controls.controls(parser) if c.dest == "damp")
    assert (control.kind, control.default, control.section, control.group) == ("float", 1.0, "advanced", "techniques")
    assert control.label == "damp (--damp)" and control.help == "damp every step's update (default: 1.0)"


def test_page_values_become_the_settings_the_command_line_takes():
    found = app_controls.run_controls()
    shown = {c.dest: c.default for c in found}
    assert app_controls.settings(found, shown) == {}  # nothing changed: the flags' own defaults
    changed = {**shown, "steps": 4.0, "max_frames": "4", "noise": "fixed", "grid_shuffle": False,
               "lora": "a.safetensors b:0.5", "prompt": " a golfer "}
    settings = app_controls.settings(found, changed)
    assert settings == {"steps": 4, "max_frames": "4", "noise": "fixed", "grid_shuffle": False,
                        "lora": ["a.safetensors", "b:0.5"], "prompt": "a golfer"}
    args = api.parse(**settings)
    assert (args.steps, args.max_frames, args.grid_shuffle) == (4, 4, False)
    assert [source for source, _ in args.lora] == ["a.safetensors", "b"]
    # a preset: the controls show its values; what is left as shown is the preset's to set
    seed = app_controls.defaults(found, "seed")
    assert (seed["noise"], seed["copy_step"], seed["diff_steps"]) == ("fixed", "0.3", "0.3:0.7")
    settings = app_controls.settings(found, {**seed, "preset": "seed", "copy_step": "0.5", "noise": "independent"})
    assert settings == {"preset": "seed", "copy_step": "0.5", "noise": "independent"}
    args = api.parse(**settings)
    assert (args.noise, args.copy_step, args.diff_steps) == ("independent", "0.5", "0.3:0.7")


# ---- the session: runs, Stop, uploads, the queue ----------------------------------------------------

def test_runs_are_run_folders_under_outputs_app_on_one_loaded_pipeline_and_stop_keeps_nothing(tmp_path, monkeypatch):
    loads = []
    real_load = api.load
    monkeypatch.setattr(api, "load", lambda **settings: loads.append(settings) or real_load(**settings))
    session = Session(str(tmp_path / "outputs" / "app"))
    name, record, measured = session.generate(TOY_RUN)
    folder = tmp_path / "outputs" / "app" / "runs" / name
    assert {"video.mp4", "side_by_side.mp4", "run.json", "metrics.json", "frames", "poses"} <= set(os.listdir(folder))
    assert measured["pose_iou"] is not None and measured["warping_error"] >= 0  # the toy model's metrics too
    command = shlex.split(record["command"])
    assert command[command.index("--out") + 1] == str(folder) and command[command.index("--model") + 1] == "toy"
    # Stop, pressed at the run's first UNet call: the run ends there and leaves no folder
    press = session.loaded.pipe.unet.register_forward_pre_hook(lambda *_: session.stop())
    with pytest.raises(Stopped):
        session.generate({**TOY_RUN, "seed": 1})
    press.remove()
    assert os.listdir(folder.parent) == [name] and not session.lock.locked()
    second, _, _ = session.generate({**TOY_RUN, "seed": 2})
    assert loads == [{"model": "toy"}]  # loaded once, reused
    rows, columns = session.compare([name, second])
    assert [r["run"] for r in rows] == [name, second] and {"warping_error", "flicker", "pose_iou"} <= set(columns)
    assert (tmp_path / "outputs" / "app" / "plots" / "trade_off.png").stat().st_size > 1000
    assert f"runs/{second}/side_by_side.mp4" in (tmp_path / "outputs" / "app" / "report.html").read_text()
    assert files_under(tmp_path) == files_under(tmp_path / "outputs" / "app")


def test_a_bad_setting_is_the_commands_one_line_and_leaves_no_folder(tmp_path, monkeypatch):
    pytest.importorskip("gradio")
    for name in ("GRADIO_ANALYTICS_ENABLED", "GRADIO_TEMP_DIR"):  # import_page sets them; restored after
        monkeypatch.setenv(name, "")
    app_page = app.import_page(str(tmp_path / "outputs" / "app"))
    session = Session(str(tmp_path / "outputs" / "app"))
    with pytest.raises(UserError, match="^--steps must be at least 1$"):
        session.generate({**TOY_RUN, "steps": 0})
    found = app_controls.run_controls()
    data = {"source": BUNDLED, **{c.dest: c.default for c in found}, "max_frames": "four"}
    outputs = app_page.on_generate(session, found, {c.dest: c.dest for c in found}, "source", data,
                                   progress=lambda *_, **__: None)
    assert outputs[4] == "sdvideo: error: argument --max-frames: invalid int value: 'four'"
    runs = tmp_path / "outputs" / "app" / "runs"
    assert not runs.exists() or not os.listdir(runs)


def test_an_upload_that_is_not_a_video_or_a_pose_file_is_refused_in_one_line(tmp_path):
    session = Session(str(tmp_path / "outputs" / "app"))
    elsewhere = tmp_path / "downloads"
    elsewhere.mkdir()
    (elsewhere / "notes.txt").write_text("hello")
    (elsewhere / "clip.mp4").write_bytes(b"not a video at all")
    (elsewhere / "poses.json").write_text("{oops")
    before = files_under(tmp_path)
    for name in ("notes.txt", "clip.mp4", "poses.json"):
        with pytest.raises(UserError) as refused:
            session.accept_upload(str(elsewhere / name))
        message = str(refused.value)
        assert message.startswith("upload refused: ") and name in message and "\n" not in message
    assert files_under(tmp_path) == before  # nothing written, anywhere
    browser_copy = tmp_path / "outputs" / "app" / "uploads" / "browser" / "notes.txt"  # where the page's uploads land
    browser_copy.parent.mkdir(parents=True)
    browser_copy.write_text("hello")
    with pytest.raises(UserError):
        session.accept_upload(str(browser_copy))
    assert not browser_copy.exists()
    kinds = [session.accept_upload(path) for path in (BUNDLED["poses"], BUNDLED["video"])]
    assert [kind for kind, _ in kinds] == ["poses", "video"]
    assert files_under(tmp_path) - before == {path for _, path in kinds}
    assert all(path.startswith(str(tmp_path / "outputs" / "app" / "uploads")) for _, path in kinds)


def test_one_generation_runs_at_a_time_and_the_others_wait(tmp_path, monkeypatch):
    model = types.SimpleNamespace(unet=torch.nn.Identity(), vae=torch.nn.Identity())
    monkeypatch.setattr(api, "load", lambda **settings: api.Pipeline(model, settings))
    spans = []

    def slow_generate(pipe=None, out=None, **settings):
        started = time.perf_counter()
        time.sleep(0.2)
        spans.append((started, time.perf_counter()))
        return api.Result(None, {})

    monkeypatch.setattr(api, "generate", slow_generate)
    monkeypatch.setattr(metrics, "evaluate_run", lambda folder: {})
    session = Session(str(tmp_path / "outputs" / "app"))
    threads = [threading.Thread(target=session.generate, args=({"seed": i},)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    spans.sort()
    assert len(spans) == 3 and all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))


def test_the_app_command_refuses_bad_flags_in_one_line(capsys):
    assert sdvideo.main(["app", "--model", "toy", "--base", "x"]) == 2
    assert sdvideo.main(["app", "--port", "0"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == ["sdvideo: error: --model toy is a built-in model: drop --base/--controlnet, or drop --model to "
                     "load those weights", "sdvideo: error: --port must be in 1..65535, got 0"]


# ---- the page in Chromium ---------------------------------------------------------------------

needs_browser = pytest.mark.skipif(browser() is None, reason="no Chromium installed (`make browser` installs it)")


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`python sdvideo.py app` in a fresh folder (its outputs/app/ there), on a free port."""
    pytest.importorskip("gradio")
    folder, port = tmp_path_factory.mktemp("app"), free_port()
    log = open(tmp_path_factory.mktemp("log") / "app.log", "w+")
    process = subprocess.Popen([sys.executable, os.path.join(ROOT, "sdvideo.py"), "app", "--port", str(port)],
                               cwd=folder, stdout=log, stderr=subprocess.STDOUT,
                               env={**os.environ, "HF_HUB_OFFLINE": "1"})
    deadline = time.monotonic() + 180
    while process.poll() is None and time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.5)
    if process.poll() is not None or time.monotonic() >= deadline:
        process.kill()
        log.seek(0)
        pytest.fail(f"the app did not start:\n{log.read()[-3000:]}")
    yield types.SimpleNamespace(url=f"http://127.0.0.1:{port}/", port=port, pid=process.pid, folder=folder)
    process.terminate()
    process.wait(timeout=30)
    log.close()


@pytest.fixture(scope="module")
def page(server):
    playwright_api = pytest.importorskip("playwright.sync_api")
    playwright = playwright_api.sync_playwright().start()
    chromium = playwright.chromium.launch(executable_path=browser(), args=["--no-sandbox", "--disable-gpu"])
    tab = chromium.new_page(viewport={"width": 1280, "height": 900})
    tab.requested, tab.errors = [], []
    tab.on("request", lambda request: tab.requested.append(request.url))
    tab.on("pageerror", lambda error: tab.errors.append(str(error)))
    tab.goto(server.url)
    yield tab
    chromium.close()
    playwright.stop()


def fill(tab, dest, value):
    tab.locator(f"#flag-{dest}").locator("input, textarea").first.fill(str(value))


def generate(tab, **values):
    """Set the values, press Generate, wait for a new final status line (not the progress) -> it."""
    for dest, value in values.items():
        fill(tab, dest, value)
    before = tab.inner_text("#status").strip()
    tab.click("#generate")
    tab.wait_for_function("before => { const now = document.querySelector('#status').innerText.trim(); "
                          "return now !== before && /^(Finished|sdvideo: |Stopped)/.test(now); }",
                          arg=before, timeout=120000)
    return tab.inner_text("#status").strip()


@needs_browser
def test_the_page_loads_with_the_bundled_swing_and_its_pose_strip(page):
    page.wait_for_selector("#strip img", timeout=60000)
    assert page.title() == "sdvideo" and "bundled golf swing" in page.inner_text("#source")
    assert page.inner_text("#strip-line").startswith("64 frames selected")
    assert page.locator("#generate").inner_text() == "Generate"


@needs_browser
def test_a_four_frame_toy_run_plays_its_mp4_and_shows_metrics_and_command(page, server):
    status = generate(page, max_frames=4, steps=4)
    assert status.startswith("Finished run-"), status
    page.wait_for_function("document.querySelector('#video video') && document.querySelector('#video video').src")
    page.evaluate("() => { const v = document.querySelector('#video video'); v.muted = true; return v.play(); }")
    page.wait_for_function("document.querySelector('#video video').currentTime > 0", timeout=60000)
    mp4 = page.request.get(page.eval_on_selector("#video video", "v => v.src")).body()
    assert len(mp4) > 1000 and mp4[4:8] == b"ftyp"
    table = page.inner_text("#metrics")
    assert all(name in table for name in ("flicker", "warping_error", "pose_iou", "shirt_color_accuracy"))
    text = " ".join(page.locator("#command .cm-line").all_inner_texts())
    assert text.startswith("python sdvideo.py --model toy") and "--max-frames 4 --steps 4" in text
    run = text.split("--out ")[1].split()[0]
    assert json.loads((server.folder / run / "run.json").read_text())["frames"] == 4
    screenshot = os.path.join(ROOT, "docs", "app.png")
    if not os.path.exists(screenshot) or os.environ.get("SDVIDEO_SCREENSHOT") == "1":
        bottom = page.evaluate("() => document.querySelector('#metrics').getBoundingClientRect().bottom "
                               "+ window.scrollY")
        page.screenshot(path=screenshot, full_page=True, clip={"x": 0, "y": 0, "width": 1280, "height": bottom + 16})
        with Image.open(screenshot) as image:  # small: 800 px wide, 128 colours
            small = image.convert("RGB").resize((800, round(image.height * 800 / image.width)), Image.LANCZOS)
        small.quantize(128).save(screenshot, optimize=True)


@needs_browser
def test_a_bad_value_shows_its_line_and_the_app_keeps_serving(page):
    status = generate(page, steps=0)
    assert status == "sdvideo: error: --steps must be at least 1"
    assert generate(page, steps=2).startswith("Finished run-")


@needs_browser
def test_stop_ends_a_run_and_keeps_nothing_of_it(page, server):
    runs = server.folder / "outputs" / "app" / "runs"
    before = sorted(os.listdir(runs))
    fill(page, "steps", 500)
    page.click("#generate")
    page.wait_for_function("document.querySelector('#status').innerText.includes('denoising')", timeout=60000)
    page.click("#stop")
    page.wait_for_function("document.querySelector('#status').innerText.startsWith('Stopped')")
    assert generate(page, steps=2).startswith("Finished run-")  # the stopped run let go of the model
    assert len(os.listdir(runs)) == len(before) + 1 and not [n for n in os.listdir(runs) if n.endswith(".partial")]


@needs_browser
def test_two_runs_can_be_compared_side_by_side(page, server):
    finished = [n for n in os.listdir(server.folder / "outputs" / "app" / "runs") if not n.endswith(".partial")]
    assert len(finished) >= 2  # the runs of the tests above; each Generate adds its run to the list
    page.wait_for_function("n => document.querySelectorAll('#runs input[type=checkbox]').length === n",
                           arg=len(finished))
    boxes = page.locator("#runs input[type=checkbox]")
    for index in range(boxes.count()):
        boxes.nth(index).check()
    page.click("#compare")
    page.wait_for_function("/^(Compared|sdvideo: )/.test(document.querySelector('#compare-line').innerText.trim())",
                           timeout=60000)
    assert page.inner_text("#compare-line").startswith(f"Compared {len(finished)} runs")
    page.wait_for_function("n => document.querySelectorAll('#compare video').length === n", arg=len(finished))
    page.evaluate("() => Promise.all(Array.from(document.querySelectorAll('#compare video')).map(v => v.play()))")
    page.wait_for_function("Array.from(document.querySelectorAll('#compare video')).every(v => v.currentTime > 0)",
                           timeout=60000)
    table = page.inner_text("#compare-table")
    assert table.count("run-") == len(finished) and "warping_error" in table
    page.wait_for_selector("#trade-off img", timeout=30000)


@needs_browser
def test_the_server_listens_on_127_0_0_1_only_and_the_page_fetches_nothing_else(page, server):
    listening = [c.laddr for c in psutil.Process(server.pid).net_connections("inet") if c.status == psutil.CONN_LISTEN]
    assert listening and {address.ip for address in listening} == {"127.0.0.1"}
    for addresses in psutil.net_if_addrs().values():  # this machine's other addresses are refused
        for address in addresses:
            if address.family == socket.AF_INET and not address.address.startswith("127."):
                with pytest.raises(OSError):
                    socket.create_connection((address.address, server.port), timeout=2).close()
    assert [url for url in page.requested if not url.startswith((server.url, "data:", "blob:"))] == []
    assert page.errors == []
    assert os.listdir(server.folder) == ["outputs"] and os.listdir(server.folder / "outputs") == ["app"]
