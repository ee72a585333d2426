"""Errors raised by the shard store. Each names the store, shard, file or array
at fault so a failed build or a failed read says where to look."""
from __future__ import annotations


class StoreError(RuntimeError):
    """Base class of every shard-store error."""


class NoManifestError(StoreError, FileNotFoundError):
    """The store holds no committed manifest (empty store, or wrong URL)."""


class ManifestVersionError(StoreError, LookupError):
    """A requested manifest version does not exist."""


class ManifestConflictError(StoreError):
    """Another writer committed the version this commit wanted to create."""


class ConcurrentWriterError(StoreError):
    """Another writer is committing to a store that has no conditional writes
    (see ``StoreLocation.create_exclusive``): such stores take one writer at a time."""


class ManifestFormatError(StoreError):
    """A manifest file exists but cannot be parsed or has the wrong format."""


class StoreFormatError(StoreError):
    """The store was written by an older format: readable, but not writable
    until ``concerto-store <url> --migrate`` rewrites it."""


class ShardCorruptError(StoreError):
    """A shard's files are missing, truncated or fail to decode."""

    def __init__(self, shard: str, what: str, message: str):
        self.shard = shard
        self.what = what
        super().__init__(f"shard '{shard}': {what}: {message}")
