"""The run folder: where a run's files go, and the rule that nothing earlier is lost; the run's
record (run.json), its frames and videos, and the checkpoint --resume reads.

A run writes into ``OUT.partial`` and ``finish`` renames it to ``OUT`` only when everything is
written, so ``OUT`` is always a complete run. An existing non-empty ``OUT`` is refused unless
``overwrite`` is set; then it is replaced only at the end, after the new run succeeded.
Frames finished before an interruption stay in ``OUT.partial``. A run holds an exclusive lock on
``OUT.partial`` while it writes there, so a second run with the same ``--out`` is refused
instead of mixing its frames with the first's.
"""
import dataclasses
import fcntl
import json
import os
import platform
import resource
import shlex
import shutil
import sys

import diffusers
import numpy as np
import torch
import transformers
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

import pose_extract
from common import video_io
from common.errors import UserError
from common.files import atomic_path, check_writable, file_hash, write_json
from loading import adapters
from loop import pipeline

RESUME_FILE = "resume.json"  # the settings of the run being written, checked by --resume
CHECKPOINT = "latents.safetensors"  # the clean latents of an unfinished run, for --resume


class RunFolder:
    """Paths inside a run that is being written; ``finish`` publishes it under its final name."""

    def __init__(self, out, overwrite, resume=False, settings=None):
        self.out = os.path.normpath(out)
        self.partial = f"{self.out}.partial"
        self.resume, self.settings, self.overwrite = resume, settings, overwrite
        self.lock = None  # the open descriptor of the locked partial folder
        if os.path.isfile(self.out):
            raise UserError(f"--out {out} is a file; give a folder path")
        check_writable(self.out, "--out")
        if os.path.isdir(self.out) and os.listdir(self.out) and not overwrite:
            raise UserError(f"--out {out} already holds a run; pass --overwrite to replace it or choose another --out")
        if resume:
            recorded = os.path.join(self.partial, RESUME_FILE)
            if not os.path.isfile(recorded):
                raise UserError(f"--resume: no interrupted run at {self.partial}; run without --resume")
            with open(recorded, encoding="utf-8") as f:
                if json.load(f) != json.loads(json.dumps(settings, default=str)):
                    raise UserError(f"--resume: {self.partial} was started with other settings; "
                                    "resume with the same flags or run without --resume")

    def create(self, *subfolders):
        """Lock the partial folder and start it afresh (an older one's files are discarded), or
        keep it when resuming."""
        os.makedirs(self.partial, exist_ok=True)
        self.lock = os.open(self.partial, os.O_RDONLY)
        try:
            fcntl.flock(self.lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.lock)
            self.lock = None
            raise UserError(f"--out {self.out} is being written by another run right now (in {self.partial}); "
                            "wait for it to finish or choose another --out") from None
        if not self.resume:
            for name in os.listdir(self.partial):  # the folder itself stays: it carries the lock
                path = os.path.join(self.partial, name)
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path)
                else:
                    os.remove(path)
        else:
            self.clear_temporaries()
        for sub in subfolders:
            os.makedirs(os.path.join(self.partial, sub), exist_ok=True)
        self.write_json(RESUME_FILE, self.settings)

    def clear_temporaries(self):
        """Remove what a killed run was writing (files.atomic_path's ``.NAME.PID.tmp*``): we hold the
        lock, so no live run owns any of them."""
        for directory, _, names in os.walk(self.partial):
            for name in names:
                if ".tmp" in name and (name.startswith(".") or name.endswith(".tmp.mp4")):
                    os.remove(os.path.join(directory, name))

    def path(self, *parts):
        return os.path.join(self.partial, *parts)

    def write_json(self, name, data):
        write_json(self.path(name), data)

    def finish(self, scratch=(CHECKPOINT,)):
        """Replace OUT with the finished partial folder; the old OUT is removed only after the swap."""
        if os.path.isdir(self.out) and os.listdir(self.out) and not self.overwrite:
            raise UserError(f"another run wrote {self.out} while this one ran; this run's files are kept in "
                            f"{self.partial}: move them, or run again with --overwrite")
        for name in (RESUME_FILE, *scratch):
            if os.path.exists(self.path(name)):
                os.remove(self.path(name))
        old = f"{self.out}.old"
        if os.path.exists(self.out):
            if os.path.exists(old):
                shutil.rmtree(old)
            os.rename(self.out, old)
        os.rename(self.partial, self.out)
        if os.path.exists(old):
            shutil.rmtree(old)
        self.release()

    def discard(self):
        """Remove the partial folder after a failed write (disk full, read-only): nothing half-written stays."""
        self.release()
        shutil.rmtree(self.partial, ignore_errors=True)

    def release(self):
        """Drop the lock (also done by the system when the process ends)."""
        if self.lock is not None:
            os.close(self.lock)
            self.lock = None


# ---- what a run writes ------------------------------------------------------------------------

def resume_settings(args):
    """What decides a run's result, which --resume must find unchanged: the arguments and the
    contents (not the names) of the input files."""

    def content(path):
        if os.path.isdir(path):
            return {name: content(os.path.join(path, name)) for name in sorted(os.listdir(path))}
        return file_hash(path) if os.path.isfile(path) else None

    settings = {k: v for k, v in vars(args).items() if k not in ("out", "overwrite", "resume", "quiet", "func", "argv")}
    settings["input_contents"] = {k: content(getattr(args, k)) for k in ("video", "poses", "residuals")
                                  if getattr(args, k)}
    for flag in ("lora", "embedding"):
        if getattr(args, flag, None):
            settings["input_contents"][flag] = [content(source) for source, _ in getattr(args, flag)]
    return settings


def write_inputs(run, clip, width, height):
    """The pose maps and source frames (lossless PNGs, for the metrics) and the control poses."""
    run.create("frames", "poses", *(("source",) if clip.source_frames is not None else ()))
    for index, pose_map in enumerate(clip.pose_maps):
        video_io.write_png(run.path("poses", f"{index:05d}.png"), pose_map)
    for index, frame in enumerate(clip.source_frames if clip.source_frames is not None else []):
        video_io.write_png(run.path("source", f"{index:05d}.png"), frame)
    if clip.keypoints is not None:  # the control poses at the working size (pose fidelity compares with them)
        sequence = clip.extracted or pose_extract.PoseSequence(clip.keypoints)
        sequence.canvas_size, sequence.fps = (width, height), clip.fps
        pose_extract.write_poses(run.path("poses.json"), sequence)


def save_checkpoint(run, latents, stats):
    try:
        with atomic_path(run.path(CHECKPOINT)) as tmp:
            save_file({"latents": latents.float().cpu().contiguous()}, tmp,
                      metadata={name: str(count) for name, count in dataclasses.asdict(stats).items()})
    except SafetensorError as error:  # its I/O failures (disk full, size limit) are OSErrors to the caller
        raise OSError(str(error).rsplit(": ", 1)[-1]) from None


def load_checkpoint(run):
    """(latents, the LoopStats counts by name) saved by an interrupted run, or None."""
    if not os.path.isfile(run.path(CHECKPOINT)):
        return None
    with safe_open(run.path(CHECKPOINT), framework="pt") as f:
        metadata = f.metadata()
        latents = f.get_tensor("latents")
    names = [field.name for field in dataclasses.fields(pipeline.LoopStats)]
    return latents, {k: int(metadata[k]) for k in names if k in metadata}  # older checkpoints: full counts only


def finished_frames(run, pipe, latents, chunk, progress):
    """Frames in order: read back where a resumed run already wrote them, else VAE-decoded."""
    with tqdm(total=len(latents), desc="decoding", unit="frame", disable=not progress) as bar:
        for start in range(0, len(latents), chunk):
            names = [run.path("frames", f"{i:05d}.png") for i in range(start, min(start + chunk, len(latents)))]
            if all(os.path.isfile(name) for name in names):
                yield from video_io.read_images(names)
            else:
                yield from pipeline.decode(pipe, latents[start:start + chunk], chunk, progress=False)
            bar.update(len(names))


def write_frames(run, frames, clip):
    """Write each generated frame as PNG and into video.mp4 and side_by_side.mp4 as it arrives."""
    videos = [video_io.VideoWriter(run.path("video.mp4"), clip.fps),
              video_io.VideoWriter(run.path("side_by_side.mp4"), clip.fps)]
    left = clip.source_frames if clip.source_frames is not None else clip.pose_maps
    try:
        for index, frame in enumerate(frames):
            video_io.write_png(run.path("frames", f"{index:05d}.png"), frame)
            videos[0].write(frame)
            videos[1].write(np.concatenate([left[index], frame], axis=1))
    except BaseException:
        for video in videos:
            video.abort()
        raise
    for video in videos:
        video.close()


def reset_peak_memory():
    """Start this run's peak-memory count afresh (a sweep runs many in one process)."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    try:  # Linux: writing 5 to clear_refs resets the peak resident set size (VmHWM)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass  # elsewhere the process's peak since its start is the best there is


def peak_memory_gib(device):
    """Peak GPU memory allocated by torch, or the process's peak resident memory on a CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 30
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 2 ** 20  # KiB
    except (OSError, StopIteration):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2 ** 30 if sys.platform == "darwin" else peak / 2 ** 20  # macOS: bytes; Linux: KiB


def technique_record(found, driver):
    """Every technique's settings for run.json (tensors left out)."""

    def fields(obj):
        return {f.name: (list(v) if isinstance(v := getattr(obj, f.name), range) else v)
                for f in dataclasses.fields(obj) if not hasattr(getattr(obj, f.name), "shape")}

    return [{"technique": type(t).__name__, **fields(t)} for t in (*found, *([driver] if driver else []))]


def inversion_cost(found):
    """--invert-source's evaluations per frame and whether this run read them from the cache, or None."""
    for technique in found:
        if getattr(technique, "inversion", None) is not None:
            return {k: technique.inversion[k] for k in ("unet_evals_per_frame", "controlnet_evals_per_frame",
                                                        "from_cache")}
    return None


def run_record(args, clip, pipe, found, driver, stats, timings):
    """run.json: arguments, seeds, techniques, models (only those loaded), versions, cost and the
    shell command that reproduces the run."""
    num_frames = len(clip.pose_maps)
    noise_settings = {"progressive": {"drift": args.noise_drift},
                      "flow-gated": {"threshold": args.noise_flow_threshold,
                                     "threshold_of": "largest flow" if args.noise_flow_relative else "pixels",
                                     "gates": "inverted latents" if args.invert_source else "noise"},
                      }.get(args.noise, {})
    return {
        "args": {k: v for k, v in vars(args).items() if k not in ("func", "argv")},
        "frames": num_frames, "fps": clip.fps, "size": [args.width, args.height],
        "seeds": {"seed": args.seed, "rule": "frame i uses torch.Generator('cpu').manual_seed(seed + i)"},
        "techniques": {"preset": args.preset, "noise": args.noise, "noise_settings": noise_settings,
                       "hooks": technique_record(found, driver)},
        "models": {"model": args.model, "base": args.base, "controlnet": args.controlnet,
                   "scheduler": type(pipe.scheduler).__name__,
                   "timestep_spacing": pipe.scheduler.config.get("timestep_spacing"),
                   "prediction_type": pipe.scheduler.config.get("prediction_type"),
                   "vae": args.vae or "the base's",
                   "controls": {name: (args.controlnet if name == "pose" else getattr(args, f"controlnet_{name}"))
                                for name in args.control},
                   **adapters.describe(args.lora, args.embedding)},
        "device": str(pipe._execution_device),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "diffusers": diffusers.__version__, "transformers": transformers.__version__},
        "timings": timings,
        "cost": {"unet_evals_per_frame": stats.unet_evals / num_frames,
                 "controlnet_evals_per_frame": stats.controlnet_evals / num_frames,
                 # DeepCache's shallow branch (--cache-interval, --cache-frames): its first and last blocks only
                 "unet_shallow_evals_per_frame": stats.unet_shallow_evals / num_frames,
                 "controlnet_shallow_evals_per_frame": stats.controlnet_shallow_evals / num_frames,
                 "seconds_per_frame": timings["total_s"] / num_frames,
                 "peak_memory_gib": peak_memory_gib(pipe._execution_device),
                 "inversion": inversion_cost(found)},
        "command": shlex.join(["python", "sdvideo.py", *args.argv]),
    }
