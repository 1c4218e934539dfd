"""What a user sees when asking for help or getting something wrong: the one error type for
failures a user can cause and fix (bad path, bad flag, missing weights), and the help formatter of
every command.

``sdvideo.main`` catches ``UserError`` and prints its message as one line on stderr with exit code
2; anything else is a programming error and keeps its traceback.
"""
import argparse


class UserError(Exception):
    """A failure the user can fix; the message says what went wrong and how to fix it."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults shown where there is one to show (not "None", not where the help already says)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)
