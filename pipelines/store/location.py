"""Where a store lives: a local path or an fsspec URL, and the few file
operations the store needs on it (atomic replace and create, listing, removal).
Every whole-file write of the store goes through ``write_bytes`` or
``create_exclusive`` (shard chunks are zarr's).

Layout under the store root::

    manifests/v000001.json ...   committed manifests (never modified)
    shards/<shard_id>/           one zarr v3 group per shard (immutable)

Object stores (``s3://bucket/prefix``): credentials and endpoint come from the
usual places (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``,
``AWS_ENDPOINT_URL`` or ``FSSPEC_S3_ENDPOINT_URL``, fsspec's config files) or
from ``storage_options``, which a location carries to the processes it is
pickled to but never prints (not in ``repr``).
"""
from __future__ import annotations

import json
import os
import posixpath
import socket
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from pipelines.store.errors import ConcurrentWriterError
from preprocess.atomic_file import atomic_write

MANIFEST_DIR = "manifests"
SHARD_DIR = "shards"
# Object stores whose server may honour S3's create-only write (If-None-Match: *);
# whether it does is probed once per process and bucket.
_CONDITIONAL_PROTOCOLS = ("s3", "s3a")
# "0"/"1" forces the answer of the probe (servers that accept the header but ignore it, tests)
CONDITIONAL_ENV = "CONCERTO_STORE_CONDITIONAL_WRITES"
# memory for chunks read from an object store, per process and store (MB)
CACHE_ENV = "CONCERTO_STORE_CACHE_MB"
DEFAULT_CACHE_MB = 256
_conditional_cache: dict = {}
WRITER_LOCK = ".writer-lock"
# a writer lock older than this is taken over (its owner died mid-commit)
WRITER_LOCK_TTL_S = 120.0


def _lost_condition(exc: BaseException) -> bool:
    """True when a create-only write failed because the key exists (HTTP 412
    PreconditionFailed, or 409 when S3 saw a concurrent conditional write)."""
    if isinstance(exc, FileExistsError):
        return True
    for e in (exc, exc.__cause__, exc.__context__):
        resp = getattr(e, "response", None)
        if isinstance(resp, dict):
            code = str(resp.get("Error", {}).get("Code", ""))
            status = resp.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412):
                return True
    return False


@dataclass
class StoreLocation:
    """A store root. Picklable: the fsspec filesystem is rebuilt from the URL
    and ``storage_options`` (kept out of ``repr``: they may hold credentials).

    ``url`` is what the user gave; ``root`` is the path within ``fs``."""

    url: str
    storage_options: dict = field(default_factory=dict, repr=False, compare=False)
    _fs: Any = field(default=None, repr=False, compare=False)
    _root: str | None = field(default=None, repr=False, compare=False)
    _read_store: Any = field(default=None, repr=False, compare=False)

    @staticmethod
    def of(url_or_location, storage_options: dict | None = None) -> "StoreLocation":
        if isinstance(url_or_location, StoreLocation):
            return url_or_location
        return StoreLocation(str(os.fspath(url_or_location)), dict(storage_options or {}))

    def _resolve(self):
        if self._fs is None:
            fs, root = fsspec.core.url_to_fs(self.url, **self.storage_options)
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
        return {"url": self.url, "storage_options": self.storage_options}

    def __setstate__(self, state):
        self.url = state["url"]
        self.storage_options = state.get("storage_options", {})
        self._fs = None
        self._root = None
        self._read_store = None

    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def _fresh(self, p: str) -> str:
        """Drop fsspec's cached listings of ``p`` (object stores): another process
        may have written there since, and a stale listing would hide a commit."""
        if not self.is_local:
            self.fs.invalidate_cache(p)
        return p

    # -- files -----------------------------------------------------------------
    def exists(self, *parts: str) -> bool:
        return self.fs.exists(self._fresh(self.path(*parts)))

    def read_bytes(self, *parts: str) -> bytes:
        return self.fs.cat_file(self.path(*parts))

    def read_many(self, base: tuple[str, ...], rels: list[str]) -> dict[str, bytes]:
        """{rel: bytes} of the files ``base/rel``; on object stores the requests
        run concurrently (fsspec's ``cat`` gathers them on its event loop)."""
        if not rels:
            return {}
        paths = [self.path(*base, rel) for rel in rels]
        if self.is_local:
            return {rel: self.fs.cat_file(p) for rel, p in zip(rels, paths)}
        got = self.fs.cat(paths, on_error="raise")
        return {rel: got[p] for rel, p in zip(rels, paths)}

    def write_bytes(self, data: bytes, *parts: str) -> None:
        """Create or replace one file atomically: readers see the old file or the
        new one, never part of it. Local disks: ``preprocess.atomic_file``'s
        write (temp file + rename); object stores: one PUT, which readers see
        whole or not at all."""
        p = self.path(*parts)
        if self.is_local:
            atomic_write(p, lambda tmp: tmp.write_bytes(data))
            return
        self.fs.makedirs(posixpath.dirname(p), exist_ok=True)
        self.fs.pipe_file(p, data)

    def listdir(self, *parts: str) -> list[str]:
        """Names (not paths) directly under ``parts``; [] if it does not exist."""
        p = self._fresh(self.path(*parts))
        if not self.fs.exists(p):
            return []
        # some S3 servers (SeaweedFS) list an emptied prefix as itself: skip it
        return sorted(posixpath.basename(x.rstrip("/")) for x in self.fs.ls(p, detail=False)
                      if x.rstrip("/") != p.rstrip("/"))

    def file_sizes(self, *parts: str) -> dict[str, int]:
        """{relative path: size in bytes} of every file under ``parts``."""
        base = self._fresh(self.path(*parts))
        if self.is_local:
            if not os.path.exists(base):
                return {}
            # os.walk is several times faster than fs.find on local disks.
            out = {}
            for d, _, files in os.walk(base):
                for f in files:
                    full = os.path.join(d, f)
                    out[os.path.relpath(full, base).replace(os.sep, "/")] = os.path.getsize(full)
            return out
        found = self.fs.find(base, detail=True)  # one paged listing on object stores
        return {posixpath.relpath(k, base): int(v["size"]) for k, v in found.items() if v["type"] == "file"}

    # -- exclusive create ------------------------------------------------------
    @property
    def conditional_writes(self) -> bool:
        """Whether ``create_exclusive`` is atomic across processes and machines:
        always on local disks (``os.link``); on S3 when the server honours
        ``If-None-Match: *`` (AWS since 2024, SeaweedFS 4.x, MinIO), probed
        once per process and bucket with a throwaway key; never on other
        fsspec filesystems. ``CONCERTO_STORE_CONDITIONAL_WRITES=0|1`` forces it."""
        if self.is_local:
            return True
        forced = os.environ.get(CONDITIONAL_ENV)
        if forced in ("0", "1"):
            return forced == "1"
        fs = self.fs
        protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
        if not set(protocols) & set(_CONDITIONAL_PROTOCOLS):
            return False
        key = (fs, self.root.split("/", 1)[0])
        if key not in _conditional_cache:
            _conditional_cache[key] = self._probe_conditional()
        return _conditional_cache[key]

    def _probe_conditional(self) -> bool:
        """Create a throwaway key twice with If-None-Match: *; the server honours
        it when the second write is refused."""
        fs = self.fs
        probe = self.path(MANIFEST_DIR, f".probe-{uuid.uuid4().hex}")
        try:
            try:
                fs.pipe_file(probe, b"1", mode="create")
            except Exception:  # noqa: BLE001 - header rejected (e.g. 501 NotImplemented)
                return False
            try:
                fs.pipe_file(probe, b"2", mode="create")
            except Exception as e:  # noqa: BLE001
                return _lost_condition(e)
            return False  # the second create overwrote: the header is ignored
        finally:
            try:
                fs.rm_file(probe)
            except FileNotFoundError:
                pass

    def create_exclusive(self, data: bytes, *parts: str) -> bool:
        """Write ``data`` to ``parts`` only if nothing is there yet; a reader never
        sees a half-written file. Returns False when the name already exists
        (on S3: with other bytes; the same bytes are a retried write of ours).

        Local disks: ``preprocess.atomic_file.atomic_write(exclusive=True)``
        (a temp file hard-linked to the final name: atomic, fails if the name
        exists). S3 with conditional writes: one PUT
        with ``If-None-Match: *`` on the final key (atomic on the server; two
        racing writers: exactly one wins). Other object stores cannot create
        atomically: they take one writer at a time. A writer there holds a lock
        file (``<folder>/.writer-lock``) while it checks and writes; a second
        writer that finds a live lock raises ConcurrentWriterError instead of
        risking a lost update (best effort: two writers starting within the
        same few milliseconds can both pass; run one builder per store)."""
        final = self.path(*parts)
        fs = self.fs
        if self.is_local:
            try:
                atomic_write(final, lambda tmp: tmp.write_bytes(data), exclusive=True)
            except FileExistsError:
                return False
            return True
        if self.conditional_writes:
            try:
                fs.pipe_file(final, data, mode="create")
            except Exception as e:  # noqa: BLE001
                if not _lost_condition(e):
                    raise
                # A retried PUT whose first attempt landed also gets 412: the
                # key holding exactly our bytes means this writer won.
                try:
                    return fs.cat_file(self._fresh(final)) == data
                except FileNotFoundError:
                    return False
            self._fresh(posixpath.dirname(final))
            return True
        lock = posixpath.join(posixpath.dirname(final), WRITER_LOCK)
        token = self._take_writer_lock(lock, final)
        try:
            if fs.exists(self._fresh(final)):
                return False
            fs.pipe_file(final, data)
            return True
        finally:
            if self._lock_owner(lock) == token:
                fs.rm_file(lock)

    def _lock_owner(self, lock: str) -> str | None:
        try:
            return json.loads(self.fs.cat_file(self._fresh(lock))).get("token")
        except (FileNotFoundError, ValueError, AttributeError):
            return None

    def _take_writer_lock(self, lock: str, final: str) -> str:
        """Write a lock file naming this writer, then read it back; raise
        ConcurrentWriterError if another live writer holds it or wins the race."""
        fs = self.fs
        try:
            held = json.loads(fs.cat_file(self._fresh(lock)))
        except (FileNotFoundError, ValueError):
            held = None
        if held and time.time() - float(held.get("time", 0)) < WRITER_LOCK_TTL_S:
            raise ConcurrentWriterError(
                f"{self.url}: another writer ({held.get('host')} pid {held.get('pid')}) is committing "
                f"(lock {lock}); this store has no conditional writes (S3 If-None-Match), so it takes one "
                f"writer at a time: wait for the other build, or remove the lock if it died")
        token = uuid.uuid4().hex
        fs.pipe_file(lock, json.dumps({"token": token, "host": socket.gethostname(), "pid": os.getpid(),
                                       "time": time.time(), "target": posixpath.basename(final)}).encode())
        time.sleep(0.05)  # let a racing writer's lock land before reading back
        if self._lock_owner(lock) != token:
            raise ConcurrentWriterError(
                f"{self.url}: another writer took the commit lock {lock} at the same time; this store has "
                f"no conditional writes, so it takes one writer at a time")
        return token

    def remove_tree(self, *parts: str) -> None:
        p = self._fresh(self.path(*parts))
        if self.fs.exists(p):
            self.fs.rm(p, recursive=True)

    def remove_file(self, *parts: str) -> None:
        p = self._fresh(self.path(*parts))
        if self.fs.exists(p):
            self.fs.rm_file(p)

    def modified(self, *parts: str) -> float | None:
        """Newest modification time (POSIX seconds) of a file or of any file in a
        folder (a folder's own mtime misses writes deeper down); None if unknown."""
        p = self._fresh(self.path(*parts))
        try:
            if self.is_local:
                newest = os.path.getmtime(p)
                for d, _, files in os.walk(p):
                    for f in files:
                        newest = max(newest, os.path.getmtime(os.path.join(d, f)))
                return newest
            # object stores have no folders: the newest object under the prefix
            found = self.fs.find(p, detail=True)
            stamps = [_timestamp(v) for v in found.values() if v.get("type") == "file"]
            stamps = [t for t in stamps if t is not None]
            if stamps:
                return max(stamps)
            m = self.fs.modified(p)
            return m.timestamp()
        except (NotImplementedError, FileNotFoundError, OSError, AttributeError, IsADirectoryError):
            return None

    # -- zarr ------------------------------------------------------------------
    def zarr_store(self, *parts: str, read_only: bool = False):
        """A zarr store rooted at ``parts`` under the store root. On object stores
        zarr drives an asynchronous fsspec instance on its own event loop, so a
        sample's chunk requests (and a writer's chunk uploads) run concurrently."""
        import zarr.storage

        p = self.path(*parts)
        if self.is_local:
            return zarr.storage.LocalStore(p, read_only=read_only)
        fs = self.fs
        if getattr(fs, "async_impl", False):
            # a separate instance: the synchronous one is bound to fsspec's own loop
            fs, _ = fsspec.core.url_to_fs(self.url, asynchronous=True, **self.storage_options)
        else:
            from fsspec.implementations.asyn_wrapper import AsyncFileSystemWrapper

            fs = AsyncFileSystemWrapper(fs, asynchronous=True)
        return zarr.storage.FsspecStore(fs=fs, path=p, read_only=read_only)


    def read_store(self):
        """A read-only zarr store at the store root, shared by every shard read
        through this location in this process (open a shard as
        ``zarr.open_group(loc.read_store(), path="shards/<id>")``).

        Object stores: chunk GETs go through zarr's LRU ``CacheStore`` (bounded:
        ``CONCERTO_STORE_CACHE_MB``, default 256 MB per process), so the next
        image groups of a scene and the scenes sharing a chunk cost no second
        request. Shards are immutable: a cached chunk never goes stale.
        Local disks: a plain LocalStore (the OS page cache does this)."""
        if self._read_store is None or self._read_store[0] != os.getpid():
            # per process: a forked child must not reuse the parent's event-loop-bound handles
            base = self.zarr_store(read_only=True)
            if not self.is_local:
                from zarr.experimental.cache_store import CacheStore
                from zarr.storage import MemoryStore

                mb = float(os.environ.get(CACHE_ENV, DEFAULT_CACHE_MB))
                base = CacheStore(base, cache_store=MemoryStore(), max_size=int(mb * 2**20), cache_set_data=False)
            self._read_store = (os.getpid(), base)
        return self._read_store[1]

def _timestamp(info: dict) -> float | None:
    """An object's modification time from an fsspec listing entry."""
    for k in ("LastModified", "mtime", "last_modified", "modified", "updated"):
        v = info.get(k)
        if v is None:
            continue
        if hasattr(v, "timestamp"):
            return v.timestamp()
        try:
            return float(v)
        except (TypeError, ValueError):
            continue
    return None
