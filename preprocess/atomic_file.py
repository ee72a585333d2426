"""Write a local file so that readers see the old version or the new one, never half.

The one atomic write for local files (caches, checkpoints, and the shard store on
a local disk, ``pipelines.store.location``): write a temporary file beside the
target, flush it to disk, then move it into place with the operating system's
atomic rename (``os.replace``) or, to create only if nothing is there,
hard link (``os.link``).
"""
from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from typing import Callable

# temporary files are named "<TMP_PREFIX><uuid>-<target name>" (same suffix as the target)
TMP_PREFIX = ".tmp-"


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object], *, exclusive: bool = False) -> Path:
    """Call ``write(tmp)`` on a temporary name beside ``path`` (unique per call),
    fsync it, then move it to ``path``: replacing whatever is there, or with
    ``exclusive`` only if nothing is (else FileExistsError, and ``path`` keeps
    its content; two racing writers: exactly one wins). Creates the parent
    folder; the temporary file never outlives the call. Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{TMP_PREFIX}{uuid.uuid4().hex}-{path.name}")
    try:
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        if exclusive:
            os.link(tmp, path)  # fails if path exists
        else:
            os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)  # left by a link or a failed write; gone after a replace
    return path
