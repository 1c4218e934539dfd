"""The web app's work without the page: the inputs it accepts, the pose-map strip, runs through
``generate`` into ordinary run folders under outputs/app/runs/, Stop, and the comparison of
finished runs (measure/report.py's table and trade-off plot). ``Session`` is the entry point;
cli/app_page.py only lays it out.
"""
import hashlib
import json
import os
import shlex
import shutil
import threading
import time

import numpy as np

import pose_extract
from cli import api, run
from common import video_io
from common.errors import UserError
from common.files import ROOT
from loading import inputs
from measure import metrics, report

APP_ROOT = os.path.join("outputs", "app")
BUNDLED = {"video": os.path.join(ROOT, "demo", "golf_swing_toy.mp4"), "poses": run.DEMO_POSES}  # `make demo`'s
VIDEO_TYPES = (".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi")
POSE_TYPES = (".json",)
STRIP_FRAMES, STRIP_HEIGHT = 16, 128  # the pose strip: at most this many maps, this tall (pixels)


class Stopped(Exception):
    """The user pressed Stop: the run ends at its next model call and leaves no folder."""


class Session:
    """One app's state: where its runs go, the loaded pipeline (reused by every run with the same
    model settings) and its lock, and the Stop switch of the run under way."""

    def __init__(self, root=APP_ROOT, model_settings=None):
        self.root = root
        self.model_settings = dict(model_settings or {"model": "toy"})  # the app command's --model/--base/...
        self.loaded, self.loaded_key = None, None
        self.lock = threading.Lock()  # one generation at a time per loaded model; the others wait
        self.stopping = threading.Event()

    @property
    def runs_dir(self):
        return os.path.join(self.root, "runs")

    # ---- input ----------------------------------------------------------------------------------

    def accept_upload(self, path):
        """An uploaded file -> ("video" | "poses", its copy under outputs/app/uploads/); anything
        else is refused with one line, and nothing of it is kept."""
        name = os.path.basename(path)
        ext = os.path.splitext(name)[1].lower()
        try:
            if ext not in VIDEO_TYPES + POSE_TYPES:
                raise UserError(f"{name} is not a video ({', '.join(VIDEO_TYPES)}) or a pose file (OpenPose .json)")
            if ext in VIDEO_TYPES:
                video_io.probe_video(path)
            else:
                pose_extract.read_poses(path)
        except UserError as error:
            if os.path.abspath(path).startswith(os.path.abspath(self.root) + os.sep):
                os.remove(path)  # the browser's copy, in the app's upload cache
            raise UserError(f"upload refused: {str(error).replace(path, name)}") from None
        folder = os.path.join(self.root, "uploads")
        os.makedirs(folder, exist_ok=True)
        with open(path, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()[:16]
        stored = os.path.join(folder, digest + ext)  # by content: the same clip uploaded twice is one file
        if not os.path.exists(stored):
            shutil.copyfile(path, stored)
        return ("video" if ext in VIDEO_TYPES else "poses"), stored

    def with_model(self, settings):
        """The settings with the app's model settings under them."""
        return {**self.model_settings, **settings}

    def pose_strip(self, settings):
        """The selected frames' pose maps, side by side (at most STRIP_FRAMES, evenly spaced), as
        the run will see them -> (H, W, 3) uint8, and the number of frames selected."""
        args = api.parse(**self.with_model(settings))
        run.validate(args, default_out=False)
        args.quiet = True
        maps = inputs.load_clip(inputs.ClipSpec.from_args(args)).pose_maps
        shown = maps[np.linspace(0, len(maps) - 1, min(len(maps), STRIP_FRAMES)).round().astype(int)]
        scale = STRIP_HEIGHT / shown.shape[1]
        thumbs = [video_io.fit_image(m, max(1, round(m.shape[1] * scale)), STRIP_HEIGHT, "pad") for m in shown]
        return np.concatenate(thumbs, axis=1), len(maps)

    # ---- runs -----------------------------------------------------------------------------------

    def pipeline(self, settings):
        """The loaded pipeline for the settings' model settings, loaded once and kept while they stay
        the same (a change replaces it: one model in memory at a time)."""
        model = {k: v for k, v in self.with_model(settings).items() if k in api.MODEL_SETTINGS}
        key = json.dumps(model, sort_keys=True, default=str)
        if key != self.loaded_key:
            self.loaded, self.loaded_key = None, None  # free the old weights before loading others
            self.loaded, self.loaded_key = api.load(**model), key
        return self.loaded

    def new_name(self):
        stamp = time.strftime("run-%Y%m%d-%H%M%S")
        taken = set(os.listdir(self.runs_dir)) if os.path.isdir(self.runs_dir) else set()
        name, number = stamp, 1
        while name in taken or f"{name}.partial" in taken:
            number += 1
            name = f"{stamp}-{number}"
        return name

    def generate(self, settings):
        """One run through ``generate(out=...)`` into outputs/app/runs/NAME, then its metrics ->
        (NAME, run record, metrics). Waits while another run holds the model. A stopped or failed run
        leaves no folder: the app never resumes, so its OUT.partial is discarded."""
        with self.lock:
            self.stopping.clear()
            loaded = self.pipeline(settings)
            out = os.path.join(self.runs_dir, self.new_name())
            os.makedirs(self.runs_dir, exist_ok=True)
            handles = [module.register_forward_pre_hook(self._check_stop)
                       for module in (loaded.pipe.unet, loaded.pipe.vae)]
            try:
                result = api.generate(pipe=loaded, out=out, **{k: v for k, v in settings.items()
                                                               if k not in api.MODEL_SETTINGS})
            except BaseException:
                shutil.rmtree(f"{os.path.normpath(out)}.partial", ignore_errors=True)
                raise
            finally:
                for handle in handles:
                    handle.remove()
        return os.path.basename(out), result.record, metrics.evaluate_run(out)

    def _check_stop(self, *_):
        """A forward pre-hook on the UNet and the VAE: Stop ends the run at its next model call."""
        if self.stopping.is_set():
            raise Stopped()

    def stop(self):
        """Stop the run under way -> whether there was one."""
        if self.lock.locked():
            self.stopping.set()
            return True
        return False

    # ---- comparing --------------------------------------------------------------------------------

    def finished_runs(self):
        """The names of the finished runs under outputs/app/runs/, newest first."""
        if not os.path.isdir(self.runs_dir):
            return []
        names = [n for n in os.listdir(self.runs_dir) if os.path.isfile(os.path.join(self.runs_dir, n, "run.json"))]
        return sorted(names, key=lambda n: os.path.getmtime(os.path.join(self.runs_dir, n)), reverse=True)

    def compare(self, names):
        """Rows (run, flags, metrics) of the chosen runs; writes report.py's comparison of them into
        outputs/app/ (results.csv, results.md, plots/, report.html) -> rows, the metric columns."""
        if len(names) < 2:
            raise UserError("pick two or more finished runs to compare")
        rows = []
        for name in names:
            folder = os.path.join(self.runs_dir, os.path.basename(name))
            if not os.path.isfile(os.path.join(folder, "run.json")):
                raise UserError(f"no finished run {name} in {self.runs_dir}")
            with open(os.path.join(folder, "run.json"), encoding="utf-8") as f:
                record = json.load(f)
            flags = without(shlex.split(record["command"])[2:], "--out")  # less "python sdvideo.py"
            measured = os.path.join(folder, "metrics.json")
            if os.path.isfile(measured):
                with open(measured, encoding="utf-8") as f:
                    found = json.load(f)
            else:
                found = metrics.evaluate_run(folder)
            # a setting is the flags but the seed: the report's means and intervals are over its seeds
            rows.append({"run": name, "setting": shlex.join(without(flags, "--seed")), "seed": record["args"]["seed"],
                         "flags": shlex.join(flags), **found})
        report.write_results({"out": self.root, "sort_by": "warping_error"}, rows)
        return rows, ["run"] + [m for m in report.METRICS if any(r.get(m) is not None for r in rows)]


def without(flags, flag):
    """A command's flags less one flag and its value."""
    if flag not in flags:
        return flags
    return flags[:flags.index(flag)] + flags[flags.index(flag) + 2:]
