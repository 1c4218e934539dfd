"""The run folder: where a run's files go, and the rule that nothing earlier is lost.

A run writes into ``OUT.partial`` and ``finish`` renames it to ``OUT`` only when everything is
written, so ``OUT`` is always a complete run. An existing non-empty ``OUT`` is refused unless
``overwrite`` is set; then it is replaced only at the end, after the new run succeeded.
Frames finished before an interruption stay in ``OUT.partial``. A run holds an exclusive lock on
``OUT.partial`` while it writes there, so a second run with the same ``--out`` is refused
instead of mixing its frames with the first's.
"""
import contextlib
import fcntl
import json
import os
import shutil

from errors import UserError

RESUME_FILE = "resume.json"  # the settings of the run being written, checked by --resume


@contextlib.contextmanager
def atomic_path(path, suffix=""):
    """A temporary name beside ``path`` to write to: renamed to ``path`` when the block succeeds,
    removed when it fails, so no half-written file ever has the final name. ``suffix`` keeps the
    extension a writer reads the format from (".png")."""
    directory, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(directory, f".{name}.{os.getpid()}.tmp{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_json(path, data):
    """Write JSON atomically (see atomic_path)."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, default=str)


def check_writable(path, flag):
    """Refuse, before any work, a path whose nearest existing ancestor is a file or read-only."""
    ancestor = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        raise UserError(f"{flag} {path}: {ancestor} is a file, not a folder; choose another {flag}")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path}: {ancestor} is read-only; choose a folder you can write to")


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
                shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.remove(path)
        for sub in subfolders:
            os.makedirs(os.path.join(self.partial, sub), exist_ok=True)
        self.write_json(RESUME_FILE, self.settings)

    def path(self, *parts):
        return os.path.join(self.partial, *parts)

    def write_json(self, name, data):
        write_json(self.path(name), data)

    def finish(self, scratch=()):
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
