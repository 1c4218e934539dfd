"""Step and frame indices the techniques share: step specs ("3", "0.3", "0:0.5") and anchors.

A step spec is an integer step or, with a dot, a fraction of the schedule; a range "a:b" is
[a, b). Within a pass, frames are numbered 0..F-1 in pass order; ``frame_ids`` map them to the
clip's frame numbers.
"""
import math

from common.errors import UserError


def parse_step(spec, num_steps):
    """A step index from "k" (an integer) or "0.f" (a fraction of the schedule)."""
    value = float(spec)
    step = int(value * num_steps) if "." in str(spec) else int(value)
    if not 0 <= step < num_steps:
        raise ValueError(f"step {spec} is outside 0..{num_steps - 1}")
    return step


def parse_step_range(spec, num_steps):
    """Steps [a, b) from "a:b" (integers, or fractions of the schedule with a dot; b may be empty)."""
    first, _, last = str(spec).partition(":")
    start = parse_step(first or "0", num_steps)
    stop = num_steps if last == "" else (math.ceil(float(last) * num_steps) if "." in last else int(last))
    if not start < stop <= num_steps:
        raise ValueError(f"step range {spec} is empty or beyond {num_steps} steps")
    return range(start, stop)


def check_steps(flag, spec, num_steps, single=False):
    """A --*-step(s) value that parses for this --steps, else UserError."""
    try:
        (parse_step if single else parse_step_range)(spec, num_steps)
    except ValueError as error:
        raise UserError(f"{flag} {spec}: {error} (with --steps {num_steps})") from None


def resolve_anchor(anchor, frame_ids):
    """Pass index of the anchor: "first", "middle", or the frame nearest to clip index N."""
    if anchor == "first":
        return 0
    if anchor == "middle":
        return len(frame_ids) // 2
    target = int(anchor)
    return min(range(len(frame_ids)), key=lambda j: abs(frame_ids[j] - target))


def previous_index(frame_ids):
    """Per pass frame, the pass index of the clip's previous frame (itself where absent)."""
    position = {frame: j for j, frame in enumerate(frame_ids)}
    return [position.get(frame - 1, j) for j, frame in enumerate(frame_ids)]
