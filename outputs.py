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

RESUME_FILE = "resume.json"  # the settings of the run being written, checked by --resume


class RunFolder:
    """Paths inside a run that is being written; ``finish`` publishes it under its final name."""

    def __init__(self, out, overwrite, resume=False, settings=None):
        self.out = os.path.normpath(out)
        self.partial = f"{self.out}.partial"
        self.resume, self.settings = resume, settings
        if os.path.isfile(self.out):
            raise UserError(f"--out {out} is a file; give a folder path")
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
        """Start a fresh partial folder (an older one is discarded), or keep it when resuming."""
        if os.path.exists(self.partial) and not self.resume:
            shutil.rmtree(self.partial)
        for sub in ("", *subfolders):
            os.makedirs(os.path.join(self.partial, sub), exist_ok=True)
        self.write_json(RESUME_FILE, self.settings)

    def path(self, *parts):
        return os.path.join(self.partial, *parts)

    def write_json(self, name, data):
        tmp = self.path(f"{name}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, default=str)
        os.replace(tmp, self.path(name))

    def finish(self, scratch=()):
        """Replace OUT with the finished partial folder; the old OUT is removed only after the swap."""
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
