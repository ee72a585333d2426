"""Direct row-range reads of the arrays ShardWriter writes, for local disks.

zarr-python 3 routes every read through its event loop and thread pool, which
costs about 1 ms of CPU per request (more on a busy machine): more than reading
and decoding a sample's data. For the one layout the writer produces (regular
chunks split along axis 0 only, "default" chunk keys with "/", little-endian
bytes, optionally one blosc codec, then zarr's crc32c, every chunk written) a
chunk is a plain file holding one blosc frame and its crc32c, so a row range
is: read the files, check the crc32c, decompress, copy.
Everything else (zarr's sharding codec, other codecs, fsspec URLs) goes
through zarr. tests/test_store.py checks that both paths return the same bytes.
"""
from __future__ import annotations

import os
import struct

import google_crc32c
import numcodecs.blosc
import numpy as np


class UnsupportedLayout(ValueError):
    """The array's metadata is outside what the fast path handles."""


class ChunkReadError(ValueError):
    """Chunk ``chunk`` of the array could not be read or failed its checksum."""

    def __init__(self, chunk: int, message: str):
        self.chunk = chunk
        super().__init__(f"chunk {chunk}: {message}")


class RowReader:
    """Reads rows [lo, hi) (or one row) of one zarr v3 array folder ``path``
    whose metadata dict (zarr.json) is ``meta``."""

    def __init__(self, path: str, meta: dict):
        self.path = path
        if meta.get("zarr_format") != 3 or meta.get("node_type") != "array":
            raise UnsupportedLayout("not a zarr v3 array")
        grid = meta["chunk_grid"]
        if grid["name"] != "regular":
            raise UnsupportedLayout(f"chunk grid {grid['name']}")
        self.shape = tuple(meta["shape"])
        self.chunk = tuple(grid["configuration"]["chunk_shape"])
        if len(self.shape) == 0 or self.chunk[1:] != tuple(max(1, s) for s in self.shape[1:]):
            raise UnsupportedLayout("chunks split an axis other than the first")
        cke = meta["chunk_key_encoding"]
        if cke["name"] != "default" or cke.get("configuration", {}).get("separator", "/") != "/":
            raise UnsupportedLayout(f"chunk key encoding {cke}")
        codecs = meta["codecs"]
        if not codecs or codecs[0]["name"] != "bytes" or codecs[0].get("configuration", {}).get("endian", "little") != "little":
            raise UnsupportedLayout("first codec is not little-endian bytes")
        names = [c["name"] for c in codecs[1:]]
        # shard format 2 ends every chunk with a crc32c; format 1 had none
        self.crc32c = bool(names) and names[-1] == "crc32c"
        if self.crc32c:
            names = names[:-1]
        if names not in ([], ["blosc"]):
            raise UnsupportedLayout(f"codecs {[c['name'] for c in codecs]}")
        self.blosc = names == ["blosc"]
        if meta.get("storage_transformers"):
            raise UnsupportedLayout("storage transformers")
        self.dtype = np.dtype(meta["data_type"]).newbyteorder("<")
        self.chunk_nbytes = int(np.prod(self.chunk)) * self.dtype.itemsize
        self._zeros = "0/" * (len(self.shape) - 1)

    def _chunk(self, c: int) -> np.ndarray:
        path = f"{self.path}/c/{self._zeros}{c}" if len(self.shape) == 1 else f"{self.path}/c/{c}/{self._zeros[:-1]}"
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except FileNotFoundError as e:  # the writer writes every chunk
            raise ChunkReadError(c, f"file '{path}' is missing") from e
        if self.crc32c:
            # the same check zarr's crc32c codec makes: little-endian uint32 of
            # the bytes before it, appended to the chunk
            if len(raw) < 4 or google_crc32c.value(raw[:-4]) != int.from_bytes(raw[-4:], "little"):
                raise ChunkReadError(c, "checksum mismatch (stored crc32c differs from the data): the file was altered")
            raw = raw[:-4]
        if self.blosc:
            # check the frame's own sizes first: blosc trusts its header and a
            # truncated file must fail here, not read past the buffer
            if len(raw) < 16:
                raise ChunkReadError(c, f"{len(raw)} bytes, shorter than a blosc header")
            # blosc1 header: version, versionlz, flags, typesize (1 byte each),
            # then uint32 little-endian nbytes, blocksize, cbytes
            nbytes, _blocksize, cbytes = struct.unpack_from("<III", raw, 4)
            if cbytes != len(raw) or nbytes != self.chunk_nbytes:
                raise ChunkReadError(c, f"file has {len(raw)} bytes, its blosc header says {cbytes} (decoding to {nbytes}, expected {self.chunk_nbytes})")
            raw = numcodecs.blosc.decompress(raw)
        if len(raw) != self.chunk_nbytes:
            raise ChunkReadError(c, f"decodes to {len(raw)} bytes, expected {self.chunk_nbytes}")
        return np.frombuffer(raw, self.dtype).reshape(self.chunk)

    def read(self, sel) -> np.ndarray:
        """sel: an int (one row) or a slice with step 1."""
        if isinstance(sel, (int, np.integer)):
            i = int(sel)
            if not 0 <= i < self.shape[0]:
                raise IndexError(f"row {i} out of range [0, {self.shape[0]})")
            return self._chunk(i // self.chunk[0])[i % self.chunk[0]].copy()
        lo, hi, step = sel.indices(self.shape[0])
        if step != 1:
            raise UnsupportedLayout("strided selection")
        hi = max(lo, hi)
        out = np.empty((hi - lo,) + self.shape[1:], self.dtype)
        n = self.chunk[0]
        for c in range(lo // n, (hi - 1) // n + 1 if hi > lo else lo // n):
            c_lo, c_hi = max(lo, c * n), min(hi, (c + 1) * n)
            out[c_lo - lo:c_hi - lo] = self._chunk(c)[c_lo - c * n:c_hi - c * n]
        return out


def row_readers(shard_path: str, arrays: dict) -> dict:
    """{name: RowReader} for the zarr arrays in ``arrays`` that the fast path
    supports; the others are simply left out (read through zarr)."""
    out = {}
    for name, arr in arrays.items():
        if not hasattr(arr, "metadata"):
            continue
        try:
            out[name] = RowReader(os.path.join(shard_path, name), arr.metadata.to_dict())
        except (UnsupportedLayout, KeyError, TypeError):
            continue
    return out
