"""Small shared helpers: logging to a rule's log file, atomic writes, thread setup."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

LOG = logging.getLogger("cdssl")


def setup_logging(
    log_path: str | Path | None = None, level: int = logging.INFO, console: bool = True
) -> logging.Logger:
    """Send the cdssl logger to ``log_path`` (the rule's log:) and, with ``console``, to
    stderr (a rule script whose stderr already goes to its log passes False)."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)] if console else []
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_path, mode="a"))
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S")
    LOG.handlers.clear()
    for h in handlers:
        h.setFormatter(fmt)
        LOG.addHandler(h)
    LOG.setLevel(level)
    LOG.propagate = False
    return LOG


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` only on success.

    A killed job then leaves either the old file or none, never a truncated one that a
    later rule would read as valid. The temporary file sits in a private folder under the
    final name, not under a random one: some writers record their file's name in the
    content (torch.save names its zip archive after it), and a random name would make two
    writes of equal content differ in bytes, hence in every digest taken of them.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    tmp = folder / path.name
    try:
        yield tmp
        # a plain open() gives the file the user's umask, so collaborators in the
        # user's group can read results on a shared cluster; keep that explicit
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


DIGEST_SUFFIX = ".sha256.json"


def _feed(h, path: Path):
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h


def _sha256(path: Path) -> str:
    return _feed(hashlib.sha256(), path).hexdigest()


def _stat_key(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def record_digest(path: str | Path) -> str:
    """Hash a file once and store the digest beside it (``<file>.sha256.json``) with the
    size and modification time it belongs to, so that every job reading a large cache
    finds its content digest without reading gigabytes again."""
    path = Path(path)
    digest = _sha256(path)
    sidecar = path.with_name(path.name + DIGEST_SUFFIX)
    with atomic_path(sidecar) as tmp:
        tmp.write_text(json.dumps({"sha256": digest, **_stat_key(path)}) + "\n")
    return digest


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes, or of every file under a directory (names included).

    A file's stored digest (:func:`record_digest`) is used when its size and modification
    time still match; any other file, or one changed since, is hashed here.
    """
    path = Path(path)
    if path.is_dir():
        h = hashlib.sha256()
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(str(f.relative_to(path)).encode() + b"\0")
            _feed(h, f)
        return h.hexdigest()
    try:
        stored = json.loads(path.with_name(path.name + DIGEST_SUFFIX).read_text())
        if {k: stored[k] for k in ("size", "mtime_ns")} == _stat_key(path):
            return str(stored["sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return _sha256(path)


def write_json(obj: Any, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def set_threads(threads: int) -> None:
    """Pin torch to the cores Snakemake gave the job, so parallel jobs do not oversubscribe."""
    import torch

    torch.set_num_threads(max(1, int(threads)))
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)
