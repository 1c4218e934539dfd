"""sdvideo from Python, in the command line's vocabulary: ``load(**settings)`` gives a pipeline,
``generate(pipe=None, **settings)`` a ``Result`` (frames and the run record).

    import sdvideo
    pipe = sdvideo.load(model="toy")
    result = sdvideo.generate(pipe=pipe, poses="demo/golf_swing.json", noise="fixed", copy_step="0.4")
    result.frames.shape          # (64, 64, 64, 3) uint8: frames, height, width, RGB

The settings are the ``run`` command's flags by their argparse names (``--copy-step`` is
``copy_step``), with the flags' defaults and presets; a value is what the flag takes (a list
repeats it, True/False switches it). They are parsed and checked exactly as on the command line,
so a bad one raises ``UserError`` whose message is the command's one line. ``out=None`` writes
nothing; ``out=DIR`` writes the run folder the command writes (atomic, locked, --resume-able).
"""
import argparse
from dataclasses import dataclass

import numpy as np

from cli import run, run_args
from common.errors import UserError

# The settings that decide which pipeline is loaded: generate(pipe=...) refuses them (load takes them).
MODEL_SETTINGS = ("model", "base", "controlnet", "controlnet_config", "scheduler", "vae", "dtype", "device",
                  "local_files_only", "lora", "embedding", "attention", "channels_last", "compile", "vae_slicing",
                  "vae_tiling", "offload", "recompute_control_embedding", "control", "controlnet_canny",
                  "controlnet_depth")


@dataclass
class Result:
    """What ``generate`` returns."""

    frames: np.ndarray  # (F, H, W, 3) uint8
    record: dict  # what run.json holds: arguments, seeds, techniques, models, versions, cost, the command


@dataclass
class Pipeline:
    """A loaded pipeline and the settings it was loaded with (``load``)."""

    pipe: object  # diffusers' StableDiffusionControlNetPipeline, on its device and dtype
    settings: dict


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UserError(message)


def _parser():
    subparsers = _Parser(prog="sdvideo").add_subparsers(parser_class=_Parser)
    return run_args.add_run_parser(subparsers)


def parse(**settings):
    """The run command's Namespace for keyword settings (a --preset's defaults under them), as the
    command line parses them; unknown names raise TypeError naming the flags' form."""
    parser = _parser()
    known = {action.dest for action in parser._actions}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise TypeError(f"unknown settings {', '.join(unknown)}: they are the run command's flags with '_' for '-' "
                        "(copy_step for --copy-step); see `python sdvideo.py run --help`")
    argv = run_args.to_flags({k: v for k, v in settings.items() if k != "out"})
    if settings.get("preset"):
        parser.set_defaults(**run_args.preset_defaults(settings["preset"]))
    args = parser.parse_args(argv)
    args.out = settings.get("out")
    args.argv = argv + ([] if args.out is None else ["--out", str(args.out)])
    return args


def load(**settings):
    """A pipeline loaded per the model settings (``model="toy"``, ``base=...``, ``dtype="fp16"``...),
    to pass to ``generate`` again and again: a notebook sweep loads the weights once."""
    bad = sorted(set(settings) - set(MODEL_SETTINGS))
    if bad:
        raise TypeError(f"load takes the model settings only ({', '.join(MODEL_SETTINGS)}); give {', '.join(bad)} "
                        "to generate")
    args = parse(**settings)
    run.validate(args, default_out=False)
    return Pipeline(run.load_models(args), dict(settings))


def generate(pipe=None, **settings):
    """Run the settings -> Result. ``pipe`` (from ``load``) is reused, its model settings with it."""
    if pipe is not None:
        clash = sorted(set(settings) & set(MODEL_SETTINGS))
        if clash:
            raise TypeError(f"{', '.join(clash)} belong to load(); the pipeline passed was loaded with "
                            f"{pipe.settings}")
        settings = {**pipe.settings, **settings}
    args = parse(**settings)
    run.validate(args, default_out=False)
    frames, record = run.execute(args, pipe.pipe if pipe is not None else None, keep_frames=True)
    return Result(frames, record)
