"""The samples (image groups) of a shard store as a map-style dataset indexed by ``SampleTicket``.

The store is opened lazily in whichever process first reads (each DataLoader
worker opens its own Zarr handles; nothing unpicklable crosses the fork/spawn).
A store object (anything with ``__len__``, ``__getitem__`` and
``samples_by_shard``) may be passed instead of a URL.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Optional, Union

import numpy as np

from concerto.data.sample import SampleSpec, build_sample
from concerto.data.sampler import SampleTicket


log = logging.getLogger(__name__)


class DataError(RuntimeError):
    """The training data cannot be used (no manifest, empty store, ...)."""


def open_store(url: str, version: Optional[int] = None):
    """``ShardStore.open`` with the store's errors turned into one-line ``DataError``s."""
    from pipelines.store import ShardStore
    from pipelines.store.errors import StoreError

    try:
        store = ShardStore.open(url, version=version)
    except StoreError as exc:
        raise DataError(f"data store '{url}': {exc}") from exc
    except FileNotFoundError as exc:
        raise DataError(f"data store '{url}': not found ({exc})") from exc
    return store


def check_store(store, name: str) -> list[list[int]]:
    """Shard layout of a usable store; DataError when it has no samples."""
    if len(store) == 0:
        raise DataError(f"data store '{name}': empty (its manifest lists no image groups)")
    shards = [list(s) for s in store.samples_by_shard()]
    if sum(len(s) for s in shards) != len(store):
        raise DataError(f"data store '{name}': samples_by_shard covers {sum(len(s) for s in shards)} "
                        f"of {len(store)} samples")
    return shards


class SampleDataset:
    """``dataset[ticket]`` -> sample dict (see ``build_sample``).

    A sample whose shard data is damaged (``ShardCorruptError``: a failed chunk
    checksum, a missing file) raises, naming shard, array and chunk, unless
    ``skip_corrupt``: then it comes back as ``{"skipped": message}``, logged as a
    warning, and ``collate_samples`` leaves it out of the batch and counts it."""

    def __init__(self, store: Union[str, Any], spec: SampleSpec, version: Optional[int] = None,
                 skip_corrupt: bool = False):
        self.url = store if isinstance(store, str) else None
        self.version = version
        self.spec = spec
        self.skip_corrupt = skip_corrupt
        self._store = None if isinstance(store, str) else store
        self._pid = os.getpid() if self._store is not None else None
        if self.url is not None:
            self.version = getattr(self.store, "version", version)

    @property
    def store(self):
        # reopen after a fork: Zarr / fsspec handles are per process
        if self._store is None or (self.url is not None and self._pid != os.getpid()):
            self._store = open_store(self.url, self.version)
            self._pid = os.getpid()
        return self._store

    def __getstate__(self):
        state = dict(self.__dict__)
        if self.url is not None:
            state["_store"] = None
        return state

    def __len__(self) -> int:
        return len(self.store)

    def shards(self) -> list[list[int]]:
        return check_store(self.store, self.url or type(self.store).__name__)

    def __getitem__(self, ticket: SampleTicket) -> dict:
        from pipelines.store.errors import ShardCorruptError

        try:
            raw = self.store[ticket.index]
        except ShardCorruptError as exc:
            if not self.skip_corrupt:
                raise
            log.warning("skipping sample %d: %s", ticket.index, exc)
            return {"skipped": f"sample {ticket.index}: {exc}", "sample_index": ticket.index}
        return self._build(raw, ticket)

    def __getitems__(self, tickets: list[SampleTicket]) -> list[dict]:
        """A batch (DataLoader calls this instead of ``__getitem__`` per ticket):
        the store reads every sample's chunks together (``get_many``: concurrent
        requests on object stores) and starts prefetching the worker's next
        batches (``ticket.lookahead``), then each sample is built as ``self[t]``."""
        from pipelines.store.errors import ShardCorruptError

        store = self.store
        get_many = getattr(store, "get_many", None)
        if get_many is None or not tickets:
            return [self[t] for t in tickets]
        try:
            raws = get_many([t.index for t in tickets])
        except ShardCorruptError:  # find the damaged sample: one by one it fails (or is skipped) alone
            return [self[t] for t in tickets]
        # start reading this worker's next batches while this one is being built
        # (remote stores only; the reads run on zarr's event loop)
        if hasattr(store, "prefetch"):
            for ahead in tickets[-1].lookahead:
                store.prefetch(list(ahead))
        return [self._build(raw, t) for raw, t in zip(raws, tickets)]

    def _build(self, raw: dict, ticket: SampleTicket) -> dict:
        rng = np.random.default_rng(ticket.rng_seed())
        sample = build_sample(raw, self.spec, ticket.step, rng)
        sample["sample_index"] = ticket.index
        return sample
