"""The web app's controls, read off the run command's parser: one ``Control`` per flag (its name,
help, default, choices and kind), placed in the page's input, main or advanced section, and the
page's values turned back into ``sdvideo.generate`` settings. ``controls(parser)`` is the entry
point; a flag added to cli/run_args.py appears in the page with no code here.
"""
import argparse
import shlex
from dataclasses import dataclass

from cli import run_args
from common.errors import HelpFormatter

# The frame range and count, set beside the input clip.
INPUT = ("start", "max_frames", "stride")
# The settings a researcher changes most: the prompt, a preset, the main techniques (README's table),
# steps, guidance, seed. Everything else goes in the "advanced" section, in the parser's order.
MAIN = ("prompt", "negative_prompt", "preset", "noise", "copy_step", "cross_frame_attn", "flow_warp", "grid",
        "steps", "guidance", "seed")
# Set by the app itself: the input clip (the upload), the weights (the app command's flags: one
# loaded pipeline serves every run), and the run folder under outputs/app/. --save-residuals would
# write outside outputs/app/, so the page does not offer it.
SET_BY_APP = ("help", "video", "poses", "model", "base", "controlnet", "out", "overwrite", "resume", "quiet",
              "save_residuals")


@dataclass
class Control:
    """One run flag as a page control."""

    dest: str  # argparse's name, the settings' key: copy_step
    flag: str  # --copy-step
    help: str  # the flag's help, its default included
    kind: str  # switch (a checkbox), choice (a dropdown), int, float (number boxes), text, list (repeatable)
    default: object  # as the control shows it: "" or None where the flag has none
    choices: tuple = ()  # as the control shows them (strings); "" first where the flag may be left unset
    group: str = ""  # the parser's argument group: input, model, generation, techniques, ...
    section: str = "advanced"  # input, main or advanced

    @property
    def label(self):
        return f"{self.dest.replace('_', ' ')} ({self.flag})"


def _kind(action):
    if isinstance(action, (argparse._StoreTrueAction, argparse.BooleanOptionalAction)):
        return "switch"
    if action.choices:
        return "choice"
    if isinstance(action, argparse._AppendAction) or action.nargs in ("+", "*"):
        return "list"
    return {int: "int", float: "float"}.get(action.type, "text")


def shown(kind, value):
    """A flag's value as its control shows it: a switch a bool, a number a number or None (unset),
    everything else text ("" for unset; a tuple or list joined as the flag takes it)."""
    if kind == "switch":
        return bool(value)
    if kind in ("int", "float"):
        return value
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return (" " if kind == "list" else ",").join(str(v) for v in value)
    return str(value)


def controls(parser):
    """Every flag of the run parser that the page offers, as Controls: the main ones in MAIN's order,
    the others in the parser's."""
    formatter = HelpFormatter(parser.prog)
    found = []
    for group in parser._action_groups:
        for action in group._group_actions:
            if action.dest in SET_BY_APP or not action.option_strings:
                continue
            kind = _kind(action)
            choices = tuple(str(c) for c in action.choices or ())
            if choices and action.default is None:
                choices = ("", *choices)  # "": the flag not given
            section = "input" if action.dest in INPUT else "main" if action.dest in MAIN else "advanced"
            found.append(Control(action.dest, action.option_strings[0], formatter._expand_help(action), kind,
                                 shown(kind, action.default), choices, group.title, section))
    return sorted(found, key=lambda c: MAIN.index(c.dest) if c.section == "main" else -1)


def run_controls():
    """The Controls of the run command (cli/run_args.py)."""
    return controls(run_args.add_run_parser(argparse.ArgumentParser().add_subparsers()))


def defaults(found, preset=None):
    """dest -> the value each control shows by default: the flag's, or the preset's where it sets one."""
    shown_defaults = {c.dest: c.default for c in found}
    kinds = {c.dest: c.kind for c in found}
    for dest, value in (run_args.preset_defaults(preset) if preset else {}).items():
        if dest in kinds:
            shown_defaults[dest] = shown(kinds[dest], value)
    return shown_defaults


def _same(kind, value, default):
    if kind in ("int", "float") and value not in (None, "") and default not in (None, ""):
        try:
            return float(value) == float(default)
        except ValueError:  # typed text: the run parser will say what is wrong with it
            return False
    return value == default


def settings(found, values):
    """The page's values (dest -> value) -> ``generate`` settings: only those that differ from what
    the control showed by default (with the chosen preset's), so the preset and the flags' own
    defaults fill the rest, as on the command line. Values stay as typed: the run parser checks them."""
    preset = values.get("preset") or None
    expected = defaults(found, preset)
    chosen = {"preset": preset} if preset else {}
    for control in found:
        value = values.get(control.dest, control.default)
        if control.dest == "preset" or _same(control.kind, value, expected[control.dest]):
            continue
        if control.kind == "switch":
            chosen[control.dest] = bool(value)
        elif control.kind in ("int", "float") and not isinstance(value, str):
            if value is not None:  # an emptied number box: the default
                chosen[control.dest] = int(value) if control.kind == "int" and float(value).is_integer() else value
        elif control.kind == "list":
            chosen[control.dest] = shlex.split(str(value))
        elif str(value).strip():
            chosen[control.dest] = str(value).strip()
    return chosen
