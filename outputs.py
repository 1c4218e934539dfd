"""The run folder: where a run's files go, and the rule that nothing earlier is lost.

A run writes into ``OUT.partial`` and ``finish`` renames it to ``OUT`` only when everything is
written, so ``OUT`` is always a complete run. An existing non-empty ``OUT`` is refused unless
``overwrite`` is set; then it is replaced only at the end, after the new run succeeded.
Frames finished before an interruption stay in ``OUT.partial``.
"""
import json
import os
import shutil

from errors import UserError


class RunFolder:
    """Paths inside a run that is being written; ``finish`` publishes it under its final name."""

    def __init__(self, out, overwrite):
        self.out = os.path.normpath(out)
        self.partial = f"{self.out}.partial"
        if os.path.isfile(self.out):
            raise UserError(f"--out {out} is a file; give a folder path")
        if os.path.isdir(self.out) and os.listdir(self.out) and not overwrite:
            raise UserError(f"--out {out} already holds a run; pass --overwrite to replace it or choose another --out")

    def create(self, *subfolders):
        """Start a fresh partial folder (an older partial of the same name is discarded)."""
        if os.path.exists(self.partial):
            shutil.rmtree(self.partial)
        for sub in ("", *subfolders):
            os.makedirs(os.path.join(self.partial, sub), exist_ok=True)

    def path(self, *parts):
        return os.path.join(self.partial, *parts)

    def write_json(self, name, data):
        tmp = self.path(f"{name}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, default=str)
        os.replace(tmp, self.path(name))

    def finish(self):
        """Replace OUT with the finished partial folder; the old OUT is removed only after the swap."""
        old = f"{self.out}.old"
        if os.path.exists(self.out):
            if os.path.exists(old):
                shutil.rmtree(old)
            os.rename(self.out, old)
        os.rename(self.partial, self.out)
        if os.path.exists(old):
            shutil.rmtree(old)
