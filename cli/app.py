"""``sdvideo.py app``: a local web page to run, watch and compare techniques on your own clip.

    python sdvideo.py app                     # (make app) the toy model and the bundled swing, on a CPU
    python sdvideo.py app --base stabilityai/stable-diffusion-2-1-base \
        --controlnet thibaud/controlnet-sd21-openpose-diffusers

It serves http://127.0.0.1:7860 to this machine only (``--share`` adds Gradio's public link). Each
Generate is an ordinary run folder under outputs/app/runs/ (run.json, metrics.json), so ``evaluate``
and the sweep report read it too. ``app_command_parser(subparsers)`` is the entry point; the page is
cli/app_page.py, its controls cli/app_controls.py, its work cli/app_session.py.
"""
import argparse
import os

from cli import api, run, run_args
from cli.app_session import APP_ROOT, Session
from common.errors import HelpFormatter, UserError

MODEL_FLAGS = ("model", "base", "controlnet")  # the weights, as `run` takes them; one pipeline serves every run
DEFAULT_PORT = 7860  # Gradio's


def app_command_parser(subparsers):
    """``sdvideo.py app [--model|--base/--controlnet] [--port N] [--share]``."""
    parser = subparsers.add_parser("app", formatter_class=HelpFormatter,
                                   help="a local web page to run, watch and compare techniques",
                                   description="A local web page to run, watch and compare techniques on your own "
                                               "clip, served on 127.0.0.1 only.")
    run_flags = {a.dest: a for a in run_args.add_run_parser(argparse.ArgumentParser().add_subparsers())._actions}
    for dest in MODEL_FLAGS:  # the run command's own declarations, not a copy of their text
        action = run_flags[dest]
        parser.add_argument(*action.option_strings, choices=action.choices, default=None,
                            help=action.help + (" (default here: toy, unless --base/--controlnet are given)"
                                                if dest == "model" else ""))
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="the port on 127.0.0.1")
    parser.add_argument("--share", action="store_true",
                        help="also publish the page through a public gradio.live link (never done without it)")
    parser.set_defaults(func=app_command, quiet=False)
    return parser


def model_settings(args):
    """The app's model settings: the toy world unless weights are named; checked as `run` checks them."""
    settings = {dest: getattr(args, dest) for dest in MODEL_FLAGS if getattr(args, dest)}
    if not settings:
        settings = {"model": "toy"}
    run.apply_model_defaults(api.parse(**settings))  # --model with --base: the run command's one line
    return settings


def app_command(args):
    """Build the page and serve it until Ctrl-C."""
    # 1. the weights (loaded at the first Generate, then reused)
    session = Session(APP_ROOT, model_settings(args))
    if not 0 < args.port < 65536:
        raise UserError(f"--port must be in 1..65535, got {args.port}")
    # 2. the page, 3. serve
    app_page = import_page(session.root)
    app_page.serve(app_page.build_page(session), session, args.port, args.share)
    return 0


def import_page(root):
    """cli/app_page.py, with Gradio configured before its import (it reads these then): no telemetry
    or version check, and the browser's uploads kept under ROOT/uploads/ until accepted or refused."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ["GRADIO_TEMP_DIR"] = os.path.abspath(os.path.join(root, "uploads", "browser"))
    try:
        from cli import app_page  # only here: Gradio is the app's own requirement (requirements-app.txt)
    except ModuleNotFoundError as error:
        if error.name != "gradio":
            raise
        raise UserError("the app needs Gradio: `make app`, or `pip install -r requirements-app.txt`") from None
    return app_page
