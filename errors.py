"""The one error type for failures a user can cause and fix (bad path, bad flag, missing weights).

``sdvideo.main`` catches it and prints its message as one line on stderr with exit code 2;
anything else is a programming error and keeps its traceback.
"""


class UserError(Exception):
    """A failure the user can fix; the message says what went wrong and how to fix it."""
