"""Where a store lives: a local path or an fsspec URL, and the few file
operations the store needs on it (atomic create, listing, removal).

Layout under the store root::

    manifests/v000001.json ...   committed manifests (never modified)
    shards/<shard_id>/           one zarr v3 group per shard (immutable)
"""
from __future__ import annotations

import os
import posixpath
import uuid
from dataclasses import dataclass, field
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

MANIFEST_DIR = "manifests"
SHARD_DIR = "shards"


@dataclass
class StoreLocation:
    """A store root. Picklable: the fsspec filesystem is rebuilt from the URL.

    ``url`` is what the user gave; ``root`` is the path within ``fs``."""

    url: str
    _fs: Any = field(default=None, repr=False, compare=False)
    _root: str | None = field(default=None, repr=False, compare=False)

    @staticmethod
    def of(url_or_location) -> "StoreLocation":
        if isinstance(url_or_location, StoreLocation):
            return url_or_location
        return StoreLocation(str(os.fspath(url_or_location)))

    def _resolve(self):
        if self._fs is None:
            fs, root = fsspec.core.url_to_fs(self.url)
            self._fs, self._root = fs, root.rstrip("/") or "/"
        return self._fs, self._root

    @property
    def fs(self):
        return self._resolve()[0]

    @property
    def root(self) -> str:
        return self._resolve()[1]

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)

    def __getstate__(self):
        return {"url": self.url}

    def __setstate__(self, state):
        self.url = state["url"]
        self._fs = None
        self._root = None

    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    # -- files -----------------------------------------------------------------
    def exists(self, *parts: str) -> bool:
        return self.fs.exists(self.path(*parts))

    def read_bytes(self, *parts: str) -> bytes:
        return self.fs.cat_file(self.path(*parts))

    def listdir(self, *parts: str) -> list[str]:
        """Names (not paths) directly under ``parts``; [] if it does not exist."""
        p = self.path(*parts)
        if not self.fs.exists(p):
            return []
        return sorted(posixpath.basename(x.rstrip("/")) for x in self.fs.ls(p, detail=False))

    def file_sizes(self, *parts: str) -> dict[str, int]:
        """{relative path: size in bytes} of every file under ``parts``."""
        base = self.path(*parts)
        if not self.fs.exists(base):
            return {}
        if self.is_local:
            # os.walk is several times faster than fs.find on local disks.
            out = {}
            for d, _, files in os.walk(base):
                for f in files:
                    full = os.path.join(d, f)
                    out[os.path.relpath(full, base).replace(os.sep, "/")] = os.path.getsize(full)
            return out
        found = self.fs.find(base, detail=True)
        return {posixpath.relpath(k, base): int(v["size"]) for k, v in found.items() if v["type"] == "file"}

    def create_exclusive(self, data: bytes, *parts: str) -> bool:
        """Write ``data`` to ``parts`` only if nothing is there yet; a reader never
        sees a half-written file. Returns False when the name already exists.

        Local disks: write a temp file, then ``os.link`` it to the final name
        (atomic, fails if the name exists). Other filesystems: write a temp file,
        check, then move; the check-then-move window is not atomic there, which
        is acceptable for one committer per store at a time."""
        final = self.path(*parts)
        tmp = posixpath.join(posixpath.dirname(final), f".tmp-{uuid.uuid4().hex}-{posixpath.basename(final)}")
        fs = self.fs
        fs.makedirs(posixpath.dirname(final), exist_ok=True)
        if self.is_local:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, final)
            except FileExistsError:
                return False
            finally:
                os.unlink(tmp)
            return True
        fs.pipe_file(tmp, data)
        try:
            if fs.exists(final):
                return False
            fs.mv(tmp, final)
            return True
        finally:
            if fs.exists(tmp):
                fs.rm_file(tmp)

    def remove_tree(self, *parts: str) -> None:
        p = self.path(*parts)
        if self.fs.exists(p):
            self.fs.rm(p, recursive=True)

    def remove_file(self, *parts: str) -> None:
        p = self.path(*parts)
        if self.fs.exists(p):
            self.fs.rm_file(p)

    def modified(self, *parts: str) -> float | None:
        """Newest modification time (POSIX seconds) of a file or of any file in a
        folder (a folder's own mtime misses writes deeper down); None if unknown."""
        p = self.path(*parts)
        try:
            if self.is_local:
                newest = os.path.getmtime(p)
                for d, _, files in os.walk(p):
                    for f in files:
                        newest = max(newest, os.path.getmtime(os.path.join(d, f)))
                return newest
            m = self.fs.modified(p)
            return m.timestamp()
        except (NotImplementedError, FileNotFoundError, OSError, AttributeError):
            return None

    # -- zarr ------------------------------------------------------------------
    def zarr_store(self, *parts: str, read_only: bool = False):
        """A zarr store rooted at ``parts`` under the store root."""
        import zarr.storage

        p = self.path(*parts)
        if self.is_local:
            return zarr.storage.LocalStore(p, read_only=read_only)
        from fsspec.implementations.asyn_wrapper import AsyncFileSystemWrapper

        fs = self.fs
        if not getattr(fs, "async_impl", False):
            fs = AsyncFileSystemWrapper(fs, asynchronous=True)
        return zarr.storage.FsspecStore(fs=fs, path=p, read_only=read_only)
