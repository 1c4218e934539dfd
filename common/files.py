"""Files that appear whole or not at all, and output paths checked before any work.

``file_hash(path)`` is a file's sha256 (inputs are recorded and cached by content);
``looks_like_path(name)`` tells a local path from a hub id.
``atomic_path(path)`` gives a temporary name beside ``path`` and renames it into place only when
the writing block succeeds; ``write_json`` uses it; ``check_writable`` refuses, before any work,
an output path under a file or in a read-only folder. ``ROOT`` is the repository (demo/,
toy_model/, cldm_v21.yaml).
"""
import contextlib
import functools
import hashlib
import json
import os

from common.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


def looks_like_path(name):
    """A local path rather than a hub id ("owner/name": one slash, no leading dot, slash or tilde)."""
    return os.path.exists(name) or name.startswith((".", "/", "~")) or name.count("/") != 1


def file_hash(path):
    """sha256 of a file, remembered per (path, size, modification time): a run hashes its video
    for the pose cache and for --resume, and a LoRA for --resume and run.json, reading each once."""
    status = os.stat(path)
    return _sha256(os.path.realpath(path), status.st_size, status.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _sha256(path, size, mtime_ns, chunk_size=1 << 24):
    """sha256 of the file at ``path`` as it is at (size, mtime_ns), read in 16 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()
