"""sdvideo: pose-controlled video with Stable Diffusion + ControlNet-OpenPose, no fine-tuning.

Run the bundled golf-swing demo on the trained toy model (writes outputs/demo/video.mp4):

    python sdvideo.py --model toy --out outputs/demo --overwrite

and on real weights (SD 2.1 base + the OpenPose ControlNet, from the HF cache or folders):

    python sdvideo.py --video swing.mp4 --prompt "an astronaut swinging a golf club"

Commands (``run`` is the default): ``run`` (cli/run.py), ``evaluate`` (measure/metrics.py), ``sweep``
(measure/sweep.py), ``extract`` (pose_extract.py), ``app`` (cli/app.py: the web page,
``python sdvideo.py app``); each module declares its own parser. This module only
registers them, parses, and turns a user's error into one line and exit status 2.
"""
import argparse
import logging
import os
import signal
import sys

from transformers.utils import logging as transformers_logging

# Before diffusers is imported: on import it makes transformers advise installing torchvision,
# which sdvideo never uses (and which breaks diffusers on CPU-only machines).
transformers_logging.set_verbosity_error()

from diffusers.utils import logging as diffusers_logging  # noqa: E402

import pose_extract  # noqa: E402
from cli import app, run  # noqa: E402
from cli.api import Result, generate, load  # noqa: E402,F401  (the Python API: `import sdvideo; sdvideo.generate(...)`)
from common.errors import UserError  # noqa: E402,F401  (raised by the API too)
from measure import metrics, sweep  # noqa: E402

COMMANDS = ("run", "evaluate", "sweep", "extract", "app")


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line on stderr and exit status 2, as every sdvideo error."""

    def error(self, message):
        self.exit(2, f"sdvideo: error: {message} (see {self.prog} --help)\n")


def build_parser():
    """The parser with one subparser per command; -> (parser, the run command's parser)."""
    parser = OneLineParser(prog="sdvideo.py", description=__doc__.split("\n\n")[0] + " The command defaults to "
                           "'run': `sdvideo.py --video swing.mp4 --prompt ...` is `sdvideo.py run ...`.")
    subparsers = parser.add_subparsers(dest="command", metavar="{" + ",".join(COMMANDS) + "}",
                                       parser_class=OneLineParser)
    run_parser = run.run_command_parser(subparsers)
    metrics.evaluate_command_parser(subparsers)
    sweep.sweep_command_parser(subparsers, generate=main, run_flags=[a.dest for a in run_parser._actions])
    pose_extract.extract_command_parser(subparsers)
    app.app_command_parser(subparsers)
    return parser, run_parser


def parse_args(argv):
    """Parse (``run`` when no command is named), with a --preset's settings as defaults that
    explicit flags override."""
    if not argv or (argv[0] not in COMMANDS and argv[0] not in ("-h", "--help")):
        argv = ["run", *argv]
    parser, run_parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "run" and args.preset:
        run_parser.set_defaults(**run.preset_defaults(args.preset))
        args = parser.parse_args(argv)
    args.argv = argv[1:] if argv[0] == "run" else argv
    return args


def configure_logging(quiet):
    """Our messages through logging (warnings only with --quiet); the libraries' own: diffusers'
    warnings (the CLIP 77-token truncation among them) shown, transformers' advice about optional
    packages we never use (torchvision) not; --quiet also hides their loading bars. No global
    warning filters."""
    logging.basicConfig(format="%(message)s")
    logging.getLogger().setLevel(logging.WARNING if quiet else logging.INFO)
    transformers_logging.set_verbosity_error()
    diffusers_logging.set_verbosity_error() if quiet else diffusers_logging.set_verbosity_warning()
    for library in (diffusers_logging, transformers_logging):
        library.disable_progress_bar() if quiet else library.enable_progress_bar()


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if hasattr(signal, "SIGXFSZ"):  # over a file size limit: an OSError we report, not a silent kill
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        args = parse_args(argv)
    except SystemExit as done:  # --help, or a bad flag already reported in one line
        return done.code
    configure_logging(args.quiet)
    try:
        return args.func(args) or 0
    except UserError as error:
        print(f"sdvideo: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        out = getattr(args, "out", None)
        partial = f"{os.path.normpath(out)}.partial" if out else None
        kept = f"; finished frames are kept in {partial}" if partial and os.path.isdir(partial) else ""
        print(f"sdvideo: interrupted{kept}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
