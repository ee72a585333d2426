"""Content hashes of unchanged files without reading them again: a stat-keyed cache.

    with stat_hash_cache(Path(store) / "cache" / "file_hashes.json"):
        refs = source.discover()      # hash_files() reads only files whose stat changed

Inside the ``with``, ``base.hash_files(paths, extra)`` first looks up the
signature of its call: ``extra`` and, per path in order, (absolute path, size,
mtime in ns, inode). A hit returns the digest computed when the files last
had exactly that stat; a miss hashes the bytes as before and records it. The
digest itself is unchanged (same bytes, same sha1), so stores built with or
without the cache agree.

Racy writes: a file modified twice within one mtime tick could keep its stat.
As git does with its index, an entry is not recorded while any of its files
was modified less than ``RACY_S`` seconds before the hash was taken, so such a
file is hashed again on the next run.

The cache file is JSON ({signature sha1: content digest}), written atomically
when the ``with`` block ends and only if something was added; a missing or
corrupt file is an empty cache. Entries of files that no longer exist simply
stop being hit (``max_entries`` bounds the file: oldest entries go first).
"""
from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator

from preprocess.atomic_file import atomic_write

RACY_S = 2.0

_ACTIVE: contextvars.ContextVar["StatHashCache | None"] = contextvars.ContextVar("stat_hash_cache", default=None)


class StatHashCache:
    """{stat signature -> content digest}, loaded from and saved to one JSON file."""

    def __init__(self, path: str | os.PathLike, max_entries: int = 1_000_000):
        self.path = Path(path)
        self.max_entries = max_entries
        self.hits = self.misses = 0
        self._dirty = False
        try:
            data = json.loads(self.path.read_text())
            self._entries: dict[str, str] = data["entries"] if isinstance(data.get("entries"), dict) else {}
        except (OSError, ValueError, AttributeError):
            self._entries = {}

    @staticmethod
    def _signature(paths: list[Path], extra: str) -> tuple[str, float]:
        """(sha1 of the call's stat signature, newest mtime in s); raises OSError like open() would."""
        h = hashlib.sha1(extra.encode())
        newest = 0.0
        for p in paths:
            st = os.stat(p)
            h.update(f"\0{os.path.abspath(p)}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}".encode())
            newest = max(newest, st.st_mtime)
        return h.hexdigest(), newest

    def digest(self, paths: Iterable[str | os.PathLike], extra: str, compute: Callable[[], str]) -> str:
        """The cached digest of ``paths`` + ``extra`` if their stat is unchanged, else ``compute()``."""
        paths = [Path(p) for p in paths]
        sig, newest = self._signature(paths, extra)
        hit = self._entries.get(sig)
        if hit is not None:
            self.hits += 1
            return hit
        self.misses += 1
        now = time.time()
        value = compute()
        if now - newest >= RACY_S:
            self._entries[sig] = value
            self._dirty = True
        return value

    def save(self) -> None:
        if not self._dirty:
            return
        entries = self._entries
        if len(entries) > self.max_entries:  # dicts keep insertion order: drop the oldest
            entries = dict(list(entries.items())[-self.max_entries:])
        text = json.dumps({"version": 1, "entries": entries})
        atomic_write(self.path, lambda tmp: tmp.write_text(text))
        self._dirty = False


def active_cache() -> StatHashCache | None:
    """The cache of the innermost ``stat_hash_cache`` block, if any."""
    return _ACTIVE.get()


@contextlib.contextmanager
def stat_hash_cache(path: str | os.PathLike) -> Iterator[StatHashCache]:
    """Use the stat cache at ``path`` for every ``hash_files`` call inside the block."""
    cache = StatHashCache(path)
    token = _ACTIVE.set(cache)
    try:
        yield cache
    finally:
        _ACTIVE.reset(token)
        cache.save()
