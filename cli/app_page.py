"""The web app's page (Gradio): input and pose strip, settings made from the run parser's flags,
Generate and Stop, the result, and the comparison of finished runs. ``build_page(session)`` lays it
out, ``serve(page, session, port, share)`` serves it; the work is cli/app_session.py's. Gradio is
imported here only, by ``sdvideo.py app``, after cli/app.py has switched its telemetry off.
"""
import functools
import html
import logging
import os
import time
import types
import urllib.parse

import gradio as gr

from cli import app_controls, run_args
from cli.app_session import BUNDLED, POSE_TYPES, STRIP_FRAMES, VIDEO_TYPES, Stopped
from common.errors import UserError
from measure import metrics

log = logging.getLogger("sdvideo")
# System fonts: the default theme's Google Fonts would make every page load fetch from the internet.
THEME = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
RESULT_METRICS = ("flicker", "warping_error", "pose_iou", "shirt_color_accuracy", "seconds_per_frame")
CSS = "#strip img {object-fit: contain}"
VIDEO_HEIGHT, COMPARE_WIDTH = 320, 320  # pixels on the page: the result's videos, each compared one


def component(control, model):
    """The Gradio control for one run flag; a default that depends on --model is shown greyed."""
    common = dict(label=control.label, info=control.help, elem_id=f"flag-{control.dest}")
    placeholder = run_args.MODEL_DEFAULTS[model].get(control.dest)
    if control.kind == "switch":
        return gr.Checkbox(value=control.default, **common)
    if control.kind == "choice":
        return gr.Dropdown(choices=[(c or "not set", c) for c in control.choices], value=control.default, **common)
    if control.kind in ("int", "float") and control.default is not None:
        return gr.Number(value=control.default, precision=0 if control.kind == "int" else None, **common)
    # text, and numbers with no default: a box left empty leaves the flag unset (a number box sends 0)
    return gr.Textbox(value=control.default if control.default is not None else "", lines=1,
                      placeholder=None if placeholder is None else str(placeholder), **common)


def describe(source):
    """One line naming the input clip."""
    if source == BUNDLED:
        return "**Input:** the bundled golf swing (`demo/golf_swing_toy.mp4`, `demo/golf_swing.json`)"
    return "**Input:** " + ", ".join(f"{kind} `{os.path.basename(path)}`" for kind, path in source.items())


def page_settings(found, comps, source, data):
    """The run's settings from the page's values (``data``: component -> value) and input."""
    return {**source, **app_controls.settings(found, {dest: data[comp] for dest, comp in comps.items()})}


def error_line(error):
    """A failure as the command prints it: one line, no traceback. A programming error's traceback
    goes to the terminal (the page says so), and the app keeps serving."""
    if isinstance(error, UserError):
        return f"sdvideo: error: {error}".splitlines()[0]
    log.error("the app's request failed", exc_info=error)
    message = f"sdvideo: internal error: {type(error).__name__}: {error}".splitlines()[0]
    return message + " (the traceback is in the terminal)"


def on_preview(session, found, comps, source, data):
    """The pose strip of the selected frames, before anything is generated."""
    try:
        strip, count = session.pose_strip(page_settings(found, comps, data[source], data))
    except UserError as error:
        return gr.skip(), error_line(error)
    return strip, f"{count} frames selected; their pose maps (at most {STRIP_FRAMES} shown):"


def on_upload(session, files, source):
    """Uploads -> the new input (a video and/or a pose file), or one line refusing one."""
    if not files:
        return BUNDLED, describe(BUNDLED), ""
    chosen = {}
    try:
        for path in files:
            kind, stored = session.accept_upload(path)
            chosen[kind] = stored
    except UserError as error:
        return source, describe(source), error_line(error)
    return chosen, describe(chosen), ""


def on_preset(found, comps, preset):
    """Show the preset's settings in the controls: what is shown is what runs."""
    shown = app_controls.defaults(found, preset or None)
    return [gr.update(value=shown[dest]) for dest in comps if dest != "preset"]


def on_generate(session, found, comps, source, data, progress=gr.Progress(track_tqdm=True)):
    """Generate: the run, its videos, metrics and command line; a bad setting is its one line."""
    started = time.perf_counter()
    progress(0, desc="loading")
    try:
        name, record, measured = session.generate(page_settings(found, comps, data[source], data))
    except Stopped:
        return (*[gr.skip()] * 4, "Stopped; nothing of that run was kept.", gr.skip())
    except Exception as error:  # a bad setting (UserError), or ours: one line either way
        return (*[gr.skip()] * 4, error_line(error), gr.skip())
    folder = os.path.join(session.runs_dir, name)
    table = metrics.format_table([measured], [m for m in RESULT_METRICS if measured.get(m) is not None])
    return (os.path.join(folder, "video.mp4"), os.path.join(folder, "side_by_side.mp4"), table, record["command"],
            f"Finished `{name}` in {time.perf_counter() - started:.1f} s ({folder}).",
            gr.update(choices=session.finished_runs()))


def on_stop(session):
    if session.stop():
        return "Stopped: the run ends at its next model call, and nothing of it is kept."
    return "No run to stop."


def on_compare(session, names):
    """The chosen runs' side-by-side videos, metrics table and trade-off plot."""
    try:
        rows, columns = session.compare(names or [])
    except Exception as error:  # UserError, or ours: one line either way
        return gr.skip(), gr.skip(), gr.skip(), error_line(error)
    videos = "".join(video_figure(os.path.join(session.runs_dir, row["run"], "side_by_side.mp4"), row) for row in rows)
    plot = os.path.join(session.root, "plots", "trade_off.png")
    return (f'<div id="compare-videos" style="display:flex;flex-wrap:wrap;gap:12px">{videos}</div>',
            metrics.format_table(rows, columns), plot if os.path.isfile(plot) else None,
            f"Compared {len(rows)} runs; also written to {os.path.join(session.root, 'report.html')}.")


def video_figure(path, row):
    """A run's video with its name and flags, served by Gradio from outputs/app/ (launch's allowed_paths)."""
    url = "/gradio_api/file=" + urllib.parse.quote(os.path.abspath(path))
    return (f'<figure style="margin:0;width:{COMPARE_WIDTH}px"><video src="{html.escape(url)}" controls autoplay muted '
            f'loop playsinline width="{COMPARE_WIDTH}"></video><figcaption><code>{html.escape(row["run"])}</code><br>'
            f'<small>{html.escape(row["flags"])}</small></figcaption></figure>')


def build_page(session, found=None):
    """The page: Input, Settings (main; advanced), Generate/Stop, Result, Compare."""
    found = found or app_controls.run_controls()
    model = session.model_settings.get("model")
    ui = types.SimpleNamespace(comps={})
    # delete_cache: Gradio's copies of uploads and shown videos (under outputs/app/uploads/browser/), a day old
    with gr.Blocks(title="sdvideo", analytics_enabled=False, delete_cache=(3600, 86400)) as page:
        gr.Markdown("# sdvideo\nPose-controlled video, zero-shot: pick a clip, set the techniques, Generate; "
                    "compare finished runs below. Every run is a folder under `outputs/app/runs/`.")
        ui.source = gr.State(dict(BUNDLED))
        with gr.Row():
            with gr.Column(scale=1):
                input_section(ui, found, model)
            with gr.Column(scale=2):
                settings_section(ui, found, model)
        result_section(ui, session)
        wire(page, ui, session, found)
    return page


def input_section(ui, found, model):
    gr.Markdown("## Input")
    ui.source_line = gr.Markdown(describe(BUNDLED), elem_id="source")
    ui.upload = gr.File(label="or upload a video and/or its pose JSON", file_count="multiple",
                        file_types=list(VIDEO_TYPES + POSE_TYPES), elem_id="upload")
    ui.comps.update({c.dest: component(c, model) for c in found if c.section == "input"})
    ui.strip_line = gr.Markdown(elem_id="strip-line")
    ui.strip = gr.Image(label="pose maps", interactive=False, elem_id="strip", buttons=[])


def settings_section(ui, found, model):
    gr.Markdown("## Settings")
    ui.comps.update({c.dest: component(c, model) for c in found if c.section == "main"})
    with gr.Accordion("advanced: every other flag of `sdvideo.py run`", open=False):
        for group in dict.fromkeys(c.group for c in found if c.section == "advanced"):
            gr.Markdown(f"### {group}")
            ui.comps.update({c.dest: component(c, model) for c in found
                             if c.section == "advanced" and c.group == group})
    with gr.Row():
        ui.generate = gr.Button("Generate", variant="primary", elem_id="generate")
        ui.stop = gr.Button("Stop", variant="stop", elem_id="stop")
    ui.status = gr.Markdown(elem_id="status")


def result_section(ui, session):
    gr.Markdown("## Result")
    with gr.Row():
        ui.video = gr.Video(label="generated video", autoplay=True, loop=True, elem_id="video", interactive=False,
                            height=VIDEO_HEIGHT)
        ui.side = gr.Video(label="side by side: the poses (or source) and the video", autoplay=True, loop=True,
                           elem_id="side-by-side", interactive=False, height=VIDEO_HEIGHT)
    ui.metrics = gr.Markdown(elem_id="metrics")
    ui.command = gr.Code(label="the same run from the command line", language="shell", elem_id="command")
    gr.Markdown("## Compare")
    ui.runs = gr.CheckboxGroup(choices=session.finished_runs(), label="finished runs", elem_id="runs")
    with gr.Row():
        ui.refresh = gr.Button("Refresh the list")
        ui.compare = gr.Button("Compare", elem_id="compare")
    ui.compare_line = gr.Markdown(elem_id="compare-line")
    ui.compare_videos = gr.HTML(elem_id="compare")
    ui.compare_table = gr.Markdown(elem_id="compare-table")
    ui.trade_off = gr.Image(label="warping error against seconds per frame", interactive=False, elem_id="trade-off")


def wire(page, ui, session, found):
    """The events: the strip on load and on input changes, uploads, presets, Generate (one at a time,
    queued), Stop, Compare."""
    comps = ui.comps
    values = {ui.source, *comps.values()}
    preview = dict(fn=functools.partial(on_preview, session, found, comps, ui.source), inputs=values,
                   outputs=[ui.strip, ui.strip_line])
    page.load(**preview)
    for dest in app_controls.INPUT:
        comps[dest].change(**preview)
    for event in (ui.upload.upload, ui.upload.clear):
        event(functools.partial(on_upload, session), [ui.upload, ui.source],
              [ui.source, ui.source_line, ui.status]).then(**preview)
    others = [c for d, c in comps.items() if d != "preset"]
    comps["preset"].input(functools.partial(on_preset, found, comps), comps["preset"], others)
    running = ui.generate.click(functools.partial(on_generate, session, found, comps, ui.source), values,
                                [ui.video, ui.side, ui.metrics, ui.command, ui.status, ui.runs],
                                concurrency_limit=1, concurrency_id="generate")
    ui.stop.click(functools.partial(on_stop, session), None, ui.status, queue=False, cancels=[running])
    ui.refresh.click(lambda: gr.update(choices=session.finished_runs()), None, ui.runs)
    ui.compare.click(functools.partial(on_compare, session), ui.runs,
                     [ui.compare_videos, ui.compare_table, ui.trade_off, ui.compare_line])


def serve(page, session, port, share):
    """Serve on 127.0.0.1 (a public link only with share); runs queue, one at a time."""
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's start-up requests to itself, logged at INFO
    page.queue(default_concurrency_limit=1)
    try:
        page.launch(server_name="127.0.0.1", server_port=port, share=share,
                    allowed_paths=[os.path.abspath(session.root)], theme=THEME, css=CSS, ssr_mode=False,
                    footer_links=[], show_error=False)
    except OSError as error:
        if "port" not in str(error):
            raise
        raise UserError(f"port {port} on 127.0.0.1 is in use (another app?); choose another with --port") from None
