"""Read a store at one manifest version: samples (1 point cloud + up to 4
images), whole scenes, and a per-shard split of the samples for loaders.

Readers touch only shards and scenes the manifest lists. They are picklable
(zarr handles are dropped and re-opened lazily after unpickling), so DataLoader
and Dask workers can receive them.
"""
from __future__ import annotations

import asyncio
import json
import warnings
from pathlib import Path

import numcodecs.blosc
import numpy as np
from zarr.core.sync import _get_loop as zarr_loop
from zarr.core.sync import sync as zarr_sync

from preprocess.records import Correspondence, ProcessedScene
from pipelines.store.errors import ShardCorruptError
from pipelines.store.fastread import ChunkReadError, row_readers
from pipelines.store.layout import (
    ATTR_IMAGE_GROUP_WIDTH,
    IMAGE_GROUP_IMAGES_ARRAY,
    IMAGE_GROUP_OFFSET_ARRAY,
    IMAGE_GROUP_SCENE_ARRAY,
    POINT_ARRAYS,
    READABLE_SHARD_FORMATS,
    rgb_array_name,
)
from pipelines.store.location import SHARD_DIR, StoreLocation
from pipelines.store.manifest import Manifest, load_manifest, outdated_store_message
from pipelines.store.records import INVENTORY, READ_GROUP, ShardInfo, batches, file_digest
from preprocess.scene import Frame, PointCloud, Scene

_TABLES = (
    "scenes/point_offset", "scenes/image_offset", IMAGE_GROUP_OFFSET_ARRAY,
    "images/size_group", "images/size_slot", "images/K", "images/pose", "images/corr_offset",
    IMAGE_GROUP_SCENE_ARRAY, IMAGE_GROUP_IMAGES_ARRAY,
)


def array_of_file(rel: str) -> str:
    """'points/coord/c/0/0' -> 'points/coord'; 'points/zarr.json' -> 'points'."""
    if "/c/" in rel:
        return rel.split("/c/")[0]
    if rel.endswith("zarr.json"):
        return rel[: -len("zarr.json")].rstrip("/") or "(root)"
    return rel


def coalesce(ranges: list[tuple[int, int]], max_gap: float) -> list[tuple[int, int]]:
    """Merge half-open row ranges [lo, hi) into fewer, sorted ranges. Two ranges
    merge when the rows between them are at most ``max_gap`` times the rows
    wanted (reading a few unneeded rows beats another request). Every input
    range lies inside one output range."""
    out: list[list[int]] = []
    for lo, hi in sorted(set(ranges)):
        if out and lo - out[-1][1] <= max_gap * max(hi - lo, out[-1][1] - out[-1][0]):
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return [(lo, hi) for lo, hi in out]


class ShardReader:
    """One committed shard. ``check_files``: on first use, compare the shard's
    files with the manifest's inventory (names and sizes), which catches deleted
    and truncated chunk files that zarr would otherwise read as fill values."""

    def __init__(self, location: StoreLocation, info: ShardInfo, check_files: bool = True, direct: bool = True):
        self.location = location
        self.info = info
        self.check_files = check_files
        self.direct = direct
        self._arrays = None
        self._inventory = None
        self._rows: dict = {}

    @property
    def id(self) -> str:
        return self.info.id

    def __getstate__(self):
        return {"location": self.location, "info": self.info, "check_files": self.check_files, "direct": self.direct}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._arrays = None
        self._inventory = None
        self._rows = {}

    def _corrupt(self, what: str, message: str) -> ShardCorruptError:
        return ShardCorruptError(self.id, what, message)

    def inventory(self) -> dict[str, list]:
        """{relative path: [size, blake2b]} from the shard's inventory file,
        checked against the digest the manifest holds."""
        if self._inventory is None:
            if not self.location.exists(SHARD_DIR, self.id):
                raise self._corrupt("folder", f"missing: nothing at {self.location.url}/{SHARD_DIR}/{self.id}")
            try:
                data = self.location.read_bytes(SHARD_DIR, self.id, INVENTORY)
            except FileNotFoundError as e:
                raise self._corrupt(f"file '{INVENTORY}'", "missing") from e
            if file_digest(data) != self.info.inventory_digest:
                raise self._corrupt(f"file '{INVENTORY}'", "content differs from the digest in the manifest")
            self._inventory = json.loads(data)
        return self._inventory

    def check_inventory(self) -> None:
        """Raise ShardCorruptError if a listed file is missing or has another size."""
        files = self.inventory()
        actual = self.location.file_sizes(SHARD_DIR, self.id)
        for rel, (size, _digest) in sorted(files.items()):
            if rel not in actual:
                raise self._corrupt(f"array '{array_of_file(rel)}'", f"file '{rel}' is missing")
            if actual[rel] != size:
                raise self._corrupt(f"array '{array_of_file(rel)}'", f"file '{rel}' has {actual[rel]} bytes, expected {size} (truncated or overwritten)")

    def verify(self) -> list[str]:
        """Every problem found by re-hashing the shard's files ([] if intact)."""
        try:
            files = self.inventory()
        except ShardCorruptError as e:
            return [str(e)]
        problems = []
        actual = self.location.file_sizes(SHARD_DIR, self.id)
        present = [rel for rel in sorted(files) if rel in actual]
        problems += [f"shard '{self.id}': file '{rel}' is missing" for rel in sorted(files) if rel not in actual]
        for group in batches(present, READ_GROUP):  # concurrent GETs on object stores
            got = self.location.read_many((SHARD_DIR, self.id), group)
            problems += self._check_files(files, got)
        return sorted(problems)

    def _check_files(self, files: dict, got: dict[str, bytes]) -> list[str]:
        problems = []
        for rel, data in got.items():
            size, digest = files[rel]
            if len(data) != size:
                problems.append(f"shard '{self.id}': file '{rel}' has {len(data)} bytes, expected {size}")
            elif file_digest(data) != digest:
                problems.append(f"shard '{self.id}': file '{rel}' content differs from its checksum")
        return problems

    def _open(self) -> dict:
        if self._arrays is not None:
            return self._arrays
        import zarr

        if self.check_files:
            self.check_inventory()
        # Blosc's own thread pool oversubscribes the cores when loader / Dask
        # workers already read in parallel; single-threaded decoding measured
        # faster here (benchmarks/bench_store.py). Process-wide numcodecs setting.
        numcodecs.blosc.use_threads = False
        try:
            root = zarr.open_group(self.location.read_store(), path=f"{SHARD_DIR}/{self.id}", mode="r")
            attrs = dict(root.attrs)
        except Exception as e:  # noqa: BLE001 - any zarr failure means a broken shard
            raise self._corrupt("group metadata", f"cannot open ({type(e).__name__}: {e})") from e
        if attrs.get("format") not in READABLE_SHARD_FORMATS:
            raise self._corrupt("group metadata", f"format is {attrs.get('format')!r}, expected one of {READABLE_SHARD_FORMATS}")
        arrays: dict = {"attrs": attrs}
        names = [f"points/{n}" for n in POINT_ARRAYS] + ["corr/point", "corr/pixel"]
        names += [f"images/{rgb_array_name(h, w)}" for h, w in attrs["image_sizes"]]
        # every array's metadata in one round trip (a request each on object stores)
        for name, got in zip(names + list(_TABLES), self._open_arrays(root, names + list(_TABLES))):
            if isinstance(got, Exception):
                raise self._corrupt(f"array '{name}'", f"missing or unreadable metadata ({type(got).__name__}: {got})") from got
            arrays[name] = got
        # small tables are read once (together) and kept in memory
        for name, table in zip(_TABLES, self._read_many(arrays, [(name, slice(None)) for name in _TABLES])):
            arrays[name] = table
        if self.direct and self.location.is_local:
            self._rows = row_readers(self.location.path(SHARD_DIR, self.id), {n: arrays[n] for n in names})
        self._arrays = arrays
        return arrays

    @staticmethod
    def _open_arrays(root, names: list[str]) -> list:
        """zarr arrays ``names`` of the group ``root``, opened concurrently on
        zarr's event loop; an exception in place of an array that fails."""
        import zarr

        async def one(name):
            try:
                return zarr.Array(await root._async_group.getitem(name))
            except Exception as e:  # noqa: BLE001
                return e

        async def all_of():
            return await asyncio.gather(*(one(n) for n in names))

        return zarr_sync(all_of())

    def _read_error(self, arrays, name: str, sel, e: Exception) -> ShardCorruptError:
        """A ShardCorruptError naming the shard, the array and the bad chunk.
        zarr's errors don't say which chunk failed: find it by reading the
        selection's chunks one at a time (only on this error path)."""
        if isinstance(e, ChunkReadError):
            return self._corrupt(f"array '{name}', chunk {e.chunk}", f"cannot read rows {sel} ({e})")
        arr = arrays[name]
        bad = []
        if hasattr(arr, "chunks") and arr.shape:
            n = arr.chunks[0]
            lo, hi, _ = (sel if isinstance(sel, slice) else slice(int(sel), int(sel) + 1)).indices(arr.shape[0])
            for c in range(lo // n, max(lo, hi - 1) // n + 1):
                try:
                    arr[c * n:min(arr.shape[0], (c + 1) * n)]
                except Exception:  # noqa: BLE001
                    bad.append(c)
        where = f"array '{name}'" + (f", chunk {', '.join(map(str, bad))}" if bad else "")
        return self._corrupt(where, f"cannot read rows {sel} ({type(e).__name__}: {e})")

    def _read_array(self, arrays, name: str, sel) -> np.ndarray:
        try:
            return arrays[name][sel]
        except Exception as e:  # noqa: BLE001 - decode errors surface as many types
            raise self._read_error(arrays, name, sel, e) from e

    def _read_many(self, arrays, requests: list[tuple[str, object]]) -> list[np.ndarray]:
        """Read several (array name, selection): directly from the chunk files
        when the fast path supports the array (see fastread), the rest in one
        round trip through zarr's event loop (the per-call hand-off, not the
        decoding, dominates small reads)."""
        out: list = [None] * len(requests)
        via_zarr = []
        for k, (name, sel) in enumerate(requests):
            rows = self._rows.get(name)
            if rows is None:
                via_zarr.append(k)
                continue
            try:
                out[k] = rows.read(sel)
            except Exception as e:  # noqa: BLE001 - missing file, bad checksum, bad frame, short chunk
                raise self._read_error(arrays, name, sel, e) from e
        if not via_zarr:
            return out

        async def one(name, sel):
            try:
                return await arrays[name]._async_array.getitem(sel)
            except Exception as e:  # noqa: BLE001
                return e

        async def all_of():
            return await asyncio.gather(*(one(*requests[k]) for k in via_zarr))

        for k, got in zip(via_zarr, zarr_sync(all_of())):
            if isinstance(got, Exception):
                # outside the event loop: locating the bad chunk reads through zarr again
                raise self._read_error(arrays, *requests[k], got) from got
            out[k] = got
        return out

    def read(self, name: str, sel=slice(None)) -> np.ndarray:
        return self._read_array(self._open(), name, sel)

    @property
    def scene_attrs(self) -> list[dict]:
        return self._open()["attrs"]["scenes"]

    def _scene_requests(self, a: dict, scene: int, images: list[int]) -> tuple[list, tuple]:
        """The reads (array name, selection) that a scene's points and some of its
        images need, and what ``_assemble`` needs to cut them apart. Row ranges
        that (nearly) touch are read as one range: each zarr request costs about
        a millisecond of CPU (and a round trip on object stores)."""
        lo, hi = int(a["scenes/point_offset"][scene]), int(a["scenes/point_offset"][scene + 1])
        req = [(f"points/{n}", slice(lo, hi)) for n in POINT_ARRAYS]
        # images: consecutive slots of one size group -> one slice
        img_ranges: dict[str, list[tuple[int, int]]] = {}
        for i in images:
            h, w = a["attrs"]["image_sizes"][int(a["images/size_group"][i])]
            slot = int(a["images/size_slot"][i])
            img_ranges.setdefault(f"images/{rgb_array_name(h, w)}", []).append((slot, slot + 1))
        img_reads = [(name, r) for name, rs in img_ranges.items() for r in coalesce(rs, max_gap=0)]
        co = a["images/corr_offset"]
        corr_ranges = [(int(co[i]), int(co[i + 1])) for i in images]
        corr_reads = coalesce(corr_ranges, max_gap=0.25)
        req += [(name, slice(*r)) for name, r in img_reads]
        req += [(arr, slice(*r)) for r in corr_reads for arr in ("corr/point", "corr/pixel")]
        return req, (images, img_reads, corr_ranges, corr_reads)

    def _assemble(self, a: dict, plan: tuple, got: list):
        """(points {name: array}, [rgb], [(corr point, corr pixel)]) from the
        blocks read for ``_scene_requests``."""
        images, img_reads, corr_ranges, corr_reads = plan
        n_pts, n_img = len(POINT_ARRAYS), len(img_reads)
        pts = dict(zip(POINT_ARRAYS, got[:n_pts]))
        img_blocks = {(name, r): block for (name, r), block in zip(img_reads, got[n_pts:n_pts + n_img])}
        corr_blocks = got[n_pts + n_img:]
        rgb = []
        for i in images:
            h, w = a["attrs"]["image_sizes"][int(a["images/size_group"][i])]
            name, slot = f"images/{rgb_array_name(h, w)}", int(a["images/size_slot"][i])
            (r0, _r1), block = next(((r, b) for (n, r), b in img_blocks.items() if n == name and r[0] <= slot < r[1]))
            rgb.append(block[slot - r0])
        corr = []
        for c_lo, c_hi in corr_ranges:
            k = next(k for k, (r0, r1) in enumerate(corr_reads) if r0 <= c_lo and c_hi <= r1)
            r0 = corr_reads[k][0]
            corr.append((corr_blocks[2 * k][c_lo - r0:c_hi - r0], corr_blocks[2 * k + 1][c_lo - r0:c_hi - r0]))
        return pts, rgb, corr

    def _scene_data(self, a: dict, scene: int, images: list[int]):
        req, plan = self._scene_requests(a, scene, images)
        return self._assemble(a, plan, self._read_many(a, req))

    def _views(self, a: dict, scene: int, group: int) -> list[int]:
        g = int(a[IMAGE_GROUP_OFFSET_ARRAY][scene]) + group
        return [int(v) for v in a[IMAGE_GROUP_IMAGES_ARRAY][g] if v >= 0]

    def _sample_dict(self, a: dict, scene: int, group: int, views: list[int], data) -> dict:
        pts, rgb, corr = data
        meta = a["attrs"]["scenes"][scene]
        return {
            "key": meta["key"],
            "source": meta["source"],
            "scene_id": meta["scene_id"],
            "image_group": group,
            "coord": pts["coord"],
            "color": pts["color"],
            "normal": pts["normal"],
            "segment_label": pts["segment"],
            "instance": pts["instance"],
            "rgb": rgb,
            "K": a["images/K"][views].reshape(len(views), 3, 3),
            "pose": a["images/pose"][views].reshape(len(views), 4, 4),
            "corr_point": [c[0] for c in corr],
            "corr_pixel": [c[1] for c in corr],
        }

    def sample(self, scene: int, group: int) -> dict:
        """Image group ``group`` of the shard's scene ``scene`` as a training sample
        (see ShardStore.__getitem__ for the keys)."""
        return self.samples([(scene, group)])[0]

    def _plan_samples(self, a: dict, which: list[tuple[int, int]]) -> tuple[list, list]:
        """(per sample: (scene, group, views, plan, indices into unique reads), unique reads)."""
        plans, unique, at = [], [], {}
        for scene, group in which:
            views = self._views(a, scene, group)
            req, plan = self._scene_requests(a, scene, views)
            idx = []
            for name, sel in req:
                k = (name, sel.start, sel.stop)
                if k not in at:
                    at[k] = len(unique)
                    unique.append((name, sel))
                idx.append(at[k])
            plans.append((scene, group, views, plan, idx))
        return plans, unique

    def _assemble_samples(self, a: dict, plans: list, got: list) -> list[dict]:
        return [self._sample_dict(a, scene, group, views, self._assemble(a, plan, [got[k] for k in idx]))
                for scene, group, views, plan, idx in plans]

    def samples(self, which: list[tuple[int, int]]) -> list[dict]:
        """Several (scene, group) samples, every read of all of them in one
        concurrent batch (identical reads, e.g. two image groups of one scene, once)."""
        a = self._open()
        plans, unique = self._plan_samples(a, which)
        return self._assemble_samples(a, plans, self._read_many(a, unique))

    async def samples_async(self, which: list[tuple[int, int]]) -> list[dict]:
        """``samples`` as a coroutine on zarr's event loop, for prefetching from
        object stores (the shard must be open; reads go through zarr only)."""
        a = self._arrays
        plans, unique = self._plan_samples(a, which)
        got = await asyncio.gather(*(a[name]._async_array.getitem(sel) for name, sel in unique))
        return self._assemble_samples(a, plans, list(got))

    def scene(self, scene: int) -> ProcessedScene:
        """The shard's scene ``scene`` back as the ProcessedScene that was written
        (depth is not stored: frames come back with depth None)."""
        a = self._open()
        meta = a["attrs"]["scenes"][scene]
        lo, hi = int(a["scenes/image_offset"][scene]), int(a["scenes/image_offset"][scene + 1])
        pts, rgb, corr = self._scene_data(a, scene, list(range(lo, hi)))
        frames = [
            Frame(name=meta["frame_names"][j], rgb=rgb[j], K=a["images/K"][i].copy(), pose=a["images/pose"][i].copy())
            for j, i in enumerate(range(lo, hi))
        ]
        corrs = [Correspondence(p, px) for p, px in corr]
        g_lo, g_hi = int(a[IMAGE_GROUP_OFFSET_ARRAY][scene]), int(a[IMAGE_GROUP_OFFSET_ARRAY][scene + 1])
        width = int(meta[ATTR_IMAGE_GROUP_WIDTH])
        groups = (a[IMAGE_GROUP_IMAGES_ARRAY][g_lo:g_hi, :width] - lo).astype(np.int32)
        sc = Scene(
            scene_id=meta["scene_id"],
            source=meta["source"],
            points=PointCloud(
                coord=pts["coord"], color=pts["color"], normal=pts["normal"],
                segment=pts["segment"] if meta["has_segment"] else None,
                instance=pts["instance"] if meta["has_instance"] else None,
            ),
            frames=frames,
            mesh_path=None if meta["mesh_path"] is None else Path(meta["mesh_path"]),
            content_hash=meta["content_hash"],
            meta=meta["meta"],
        )
        return ProcessedScene(scene=sc, correspondences=corrs, image_groups=groups, stats=meta["stats"])


# batches ``ShardStore.prefetch`` keeps in flight or ready
PREFETCH_DEPTH = 3


class ShardStore:
    """A store opened at one manifest version.

    ``len(store)`` is the number of samples (image groups); ``store[i]`` is a dict::

        key, source, scene_id: str; image_group: int (index within the scene)
        coord float32 [N,3]; color uint8 [N,3]; normal float32 [N,3]
        segment_label int32 [N] (-1 = none); instance int32 [N]
        rgb: list of V uint8 [H,W,3] (V = 4, or 0 for scenes without images)
        K float32 [V,3,3]; pose float32 [V,4,4] camera-to-world, OpenCV axes
        corr_point: list of V int32 [M_v] (point indices)
        corr_pixel: list of V uint16 [M_v,2] (u = column, v = row)

    Samples are ordered by shard (manifest order), scene, image group."""

    def __init__(self, location: StoreLocation, manifest: Manifest, check_files: bool = True, direct: bool = True):
        self.location = location
        self.manifest = manifest
        self.check_files = check_files
        self.direct = direct
        self._readers: dict[str, ShardReader] = {}
        self._prefetched: dict = {}  # {indices: concurrent future} from prefetch()
        self._build_index()

    @classmethod
    def open(cls, url, version: int | None = None, check_files: bool = True, direct: bool = True) -> "ShardStore":
        """Open ``url`` (path or fsspec URL) at manifest ``version`` (default: the
        latest complete version, so a running or killed build's batch commits are
        not read). Raises NoManifestError if the store has no manifest.
        ``direct``: on local disks read chunk files without zarr's event loop
        where the layout allows (same bytes, several times less CPU; see
        pipelines.store.fastread)."""
        loc = StoreLocation.of(url)
        manifest = load_manifest(loc, version, complete=True)
        if manifest.store_format < 2:
            warnings.warn(outdated_store_message(loc.url, manifest), stacklevel=2)
        return cls(loc, manifest, check_files=check_files, direct=direct)

    def _build_index(self):
        shard_of, scene_of, group_of = [], [], []
        self._scene_at: dict[str, tuple[int, int]] = {}
        for p, sh in enumerate(self.manifest.shards):
            for e in sh.scenes:
                self._scene_at[e.key] = (p, e.index)
                shard_of.append(np.full(e.n_image_groups, p, np.int32))
                scene_of.append(np.full(e.n_image_groups, e.index, np.int32))
                group_of.append(np.arange(e.n_image_groups, dtype=np.int32))
        cat = lambda xs: np.concatenate(xs) if xs else np.zeros(0, np.int32)  # noqa: E731
        self._shard_of, self._scene_of, self._group_of = cat(shard_of), cat(scene_of), cat(group_of)

    def __getstate__(self):
        return {"location": self.location, "manifest": self.manifest, "check_files": self.check_files, "direct": self.direct}

    def __setstate__(self, state):
        self.__init__(state["location"], state["manifest"], state["check_files"], state.get("direct", True))

    @property
    def url(self) -> str:
        return self.location.url

    @property
    def version(self) -> int:
        return self.manifest.version

    @property
    def shards(self) -> list[str]:
        return [sh.id for sh in self.manifest.shards]

    def __len__(self) -> int:
        return int(self._shard_of.shape[0])

    def reader(self, shard: int | str) -> ShardReader:
        info = self.manifest.shards[shard] if isinstance(shard, int) else self.manifest.shard(shard)
        r = self._readers.get(info.id)
        if r is None:
            r = self._readers[info.id] = ShardReader(self.location, info, self.check_files, self.direct)
        return r

    def locate(self, i: int) -> tuple[str, int, int]:
        """Sample ``i`` -> (shard id, scene index in the shard, image group in the scene)."""
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"sample {i} out of range: store {self.url} v{self.version} has {n} samples")
        i %= n
        return self.manifest.shards[self._shard_of[i]].id, int(self._scene_of[i]), int(self._group_of[i])

    def __getitem__(self, i: int) -> dict:
        shard, scene, group = self.locate(int(i))
        return self.reader(shard).sample(scene, group)

    def prefetch(self, indices) -> None:
        """Start reading samples ``indices`` in the background, on zarr's event
        loop (no thread of our own); a later ``get_many`` of exactly these
        indices takes the result. At most PREFETCH_DEPTH batches are held (the
        oldest is dropped): bounded memory. Object stores only, and only from
        shards already open: on local disks a read costs about a millisecond."""
        key = tuple(int(i) for i in indices)
        if self.location.is_local or key in self._prefetched:
            return
        located = [self.locate(i) for i in key]
        by_shard: dict[str, list[int]] = {}
        for k, (shard, _scene, _seg) in enumerate(located):
            by_shard.setdefault(shard, []).append(k)
        readers = {shard: self.reader(shard) for shard in by_shard}
        if any(r._arrays is None for r in readers.values()):
            return

        async def read_all():
            parts = await asyncio.gather(*(readers[sh].samples_async([located[k][1:] for k in ks])
                                           for sh, ks in by_shard.items()))
            out: list = [None] * len(located)
            for ks, samples in zip(by_shard.values(), parts):
                for k, sample in zip(ks, samples):
                    out[k] = sample
            return out

        while len(self._prefetched) >= PREFETCH_DEPTH:
            self._prefetched.pop(next(iter(self._prefetched))).cancel()
        self._prefetched[key] = asyncio.run_coroutine_threadsafe(read_all(), zarr_loop())

    def get_many(self, indices) -> list[dict]:
        """``[store[i] for i in indices]``, with the reads of all samples of one
        shard issued together: on object stores their chunk requests run
        concurrently instead of one sample after the other."""
        pending = self._prefetched.pop(tuple(int(i) for i in indices), None)
        if pending is not None:
            try:
                return pending.result()
            except Exception:  # noqa: BLE001 - read again below: that path names the shard, array and chunk
                pass
        located = [self.locate(int(i)) for i in indices]
        by_shard: dict[str, list[int]] = {}
        for k, (shard, _scene, _seg) in enumerate(located):
            by_shard.setdefault(shard, []).append(k)
        out: list = [None] * len(located)
        for shard, ks in by_shard.items():
            for k, sample in zip(ks, self.reader(shard).samples([located[k][1:] for k in ks])):
                out[k] = sample
        return out

    def scene_keys(self) -> list[str]:
        return list(self._scene_at)

    def read_scene(self, key: str) -> ProcessedScene:
        if key not in self._scene_at:
            raise KeyError(f"scene '{key}' is not in store {self.url} v{self.version}")
        p, idx = self._scene_at[key]
        return self.reader(p).scene(idx)

    def samples_by_shard(self) -> list[list[int]]:
        """Sample indices grouped by shard (manifest order), for splitting work
        across loader workers / ranks with one shard open per worker."""
        out = [[] for _ in self.manifest.shards]
        for i, p in enumerate(self._shard_of.tolist()):
            out[p].append(i)
        return out

    def verify(self) -> list[str]:
        """Re-hash every listed shard; returns the problems found ([] if intact)."""
        problems = []
        for sh in self.manifest.shards:
            problems += self.reader(sh.id).verify()
        return problems
