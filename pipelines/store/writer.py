"""Pack complete ProcessedScenes into one immutable zarr shard.

A shard is written under a fresh unique id (``<utc time>-<uuid>``) so two writers
never touch the same files; it becomes visible only when a manifest lists it
(``pipelines.store.manifest.commit``). A writer that dies leaves an unlisted
folder that readers ignore and ``gc`` removes.
"""
from __future__ import annotations

import json
import math
import time
import uuid
from pathlib import PurePath
from typing import Sequence

import numpy as np

from preprocess.records import Correspondence, ProcessedScene
from pipelines.store.layout import (
    ATTR_IMAGE_GROUP_WIDTH,
    ATTR_N_IMAGE_GROUPS,
    CORR_CHUNK,
    IMAGE_GROUP_GROUP,
    IMAGE_GROUP_IMAGES,
    IMAGE_GROUP_OFFSET,
    IMAGE_GROUP_SCENE,
    MAX_VIEWS,
    POINT_CHUNK,
    SHARD_FORMAT,
    rgb_array_name,
)
from pipelines.store.location import SHARD_DIR, StoreLocation
from pipelines.store.records import INVENTORY, READ_GROUP, SceneEntry, ShardInfo, batches, file_digest
from preprocess.scene import SceneValidationError


def new_shard_id() -> str:
    """Sortable by creation time, unique across writers."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:12]


def to_json_value(value, scene: str, field_name: str):
    """numpy scalars/arrays and paths -> JSON values; anything else that JSON
    cannot hold is a SceneValidationError (metadata must round-trip exactly)."""
    if isinstance(value, dict):
        return {str(k): to_json_value(v, scene, f"{field_name}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json_value(v, scene, f"{field_name}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, PurePath):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise SceneValidationError(scene, field_name, f"cannot store a {type(value).__name__} as JSON metadata")


def validate_processed(ps: ProcessedScene) -> None:
    """Check a ProcessedScene before it is written; raises SceneValidationError
    naming the scene and the field."""
    scene = ps.scene
    key = scene.key
    scene.validate()
    n_points = len(scene.points)
    n_frames = len(scene.frames)
    if len(ps.correspondences) != n_frames:
        raise SceneValidationError(key, "correspondences", f"{len(ps.correspondences)} correspondence sets for {n_frames} frames")
    for i, (frame, corr) in enumerate(zip(scene.frames, ps.correspondences)):
        name = f"correspondences[{i}:{frame.name}]"
        pi, px = corr.point_index, corr.pixel
        if not isinstance(pi, np.ndarray) or pi.dtype != np.int32 or pi.ndim != 1:
            raise SceneValidationError(key, f"{name}.point_index", "expected int32 [M]")
        if not isinstance(px, np.ndarray) or px.dtype != np.uint16 or px.shape != (pi.shape[0], 2):
            raise SceneValidationError(key, f"{name}.pixel", f"expected uint16 [{pi.shape[0]}, 2], got {getattr(px, 'dtype', None)} {list(getattr(px, 'shape', []))}")
        if pi.size and (pi.min() < 0 or pi.max() >= n_points):
            raise SceneValidationError(key, f"{name}.point_index", f"indices must lie in [0, {n_points}), got [{pi.min()}, {pi.max()}]")
        if px.size and (px[:, 0].max() >= frame.width or px[:, 1].max() >= frame.height):
            raise SceneValidationError(key, f"{name}.pixel", f"pixels outside the {frame.width}x{frame.height} image")
    groups = ps.image_groups
    if not isinstance(groups, np.ndarray) or groups.ndim != 2 or not np.issubdtype(groups.dtype, np.integer):
        raise SceneValidationError(key, "image_groups", "expected an int32 array [G, V]")
    if groups.shape[0] == 0:
        raise SceneValidationError(key, "image_groups", "a scene needs at least one image group")
    if groups.shape[1] > MAX_VIEWS:
        raise SceneValidationError(key, "image_groups", f"at most {MAX_VIEWS} images per image group, got {groups.shape[1]}")
    if groups.size and (groups.min() < 0 or groups.max() >= n_frames):
        raise SceneValidationError(key, "image_groups", f"frame indices must lie in [0, {n_frames})")
    to_json_value(ps.stats, key, "stats")
    to_json_value(scene.meta, key, "meta")


def _scene_attrs(ps: ProcessedScene) -> dict:
    s = ps.scene
    key = s.key
    return {
        "key": key,
        "source": s.source,
        "scene_id": s.scene_id,
        "content_hash": s.content_hash,
        "mesh_path": None if s.mesh_path is None else str(s.mesh_path),
        "meta": to_json_value(s.meta, key, "meta"),
        "stats": to_json_value(ps.stats, key, "stats"),
        "frame_names": [f.name for f in s.frames],
        "has_segment": s.points.segment is not None,
        "has_instance": s.points.instance is not None,
        ATTR_IMAGE_GROUP_WIDTH: int(ps.image_groups.shape[1]),
        "n_points": len(s.points),
        "n_images": len(s.frames),
        "n_corr": int(sum(len(c) for c in ps.correspondences)),
        ATTR_N_IMAGE_GROUPS: int(ps.image_groups.shape[0]),
    }


def _label(arr, n: int) -> np.ndarray:
    return np.full(n, -1, np.int32) if arr is None else arr


class ShardWriter:
    """Writes shards into the store at ``store`` (path or fsspec URL).

    ``write(scenes)`` validates every scene first (nothing is written if one is
    bad), writes one new shard and returns its ShardInfo; the shard is not yet
    visible to readers (commit it with ``pipelines.store.manifest.commit``).

    shard_files: pack each array's chunks into one file with zarr's sharding
    codec (fewer files, for object stores with per-object costs). Off by
    default: on local disks it cost 30-50 % more CPU per read (an index read
    per request), see benchmarks/bench_store.py."""

    def __init__(self, store, *, clevel: int = 3, point_chunk: int = POINT_CHUNK, corr_chunk: int = CORR_CHUNK,
                 shard_files: bool = False, numeric_codec: str = "lz4"):
        self.location = StoreLocation.of(store)
        self.numeric_codec = numeric_codec
        self.shard_files = shard_files
        self.clevel = clevel
        self.point_chunk = point_chunk
        self.corr_chunk = corr_chunk

    def _compressors(self, image: bool):
        """Images: zstd (lossless, ~2x smaller than lz4 on photos). Everything
        else: byte-shuffled lz4, which decodes several times faster than zstd:
        a sample reads a whole scene's points, so decode speed matters more.
        Every chunk ends with zarr's crc32c codec, so a flipped byte fails the
        read that meets it instead of decoding to wrong values."""
        from zarr.codecs import BloscCodec, Crc32cCodec

        if image:
            compress = [BloscCodec(cname="zstd", clevel=self.clevel, shuffle="noshuffle")]
        elif self.numeric_codec == "none":
            compress = []
        else:
            compress = [BloscCodec(cname=self.numeric_codec, clevel=5, shuffle="shuffle")]
        return compress + [Crc32cCodec()]

    def _write_array(self, group, name: str, data: np.ndarray, chunk_rows: int | None = None, image: bool = False):
        """One array; ``chunk_rows`` rows per chunk (None: a single chunk); with
        ``shard_files`` all chunks of the array go into one file."""
        rows = max(1, data.shape[0])
        chunk = rows if chunk_rows is None else min(chunk_rows, rows)
        chunks = (chunk,) + tuple(max(1, d) for d in data.shape[1:])
        n_chunks = math.ceil(rows / chunk)
        shards = None
        if n_chunks > 1 and self.shard_files:
            shards = (n_chunks * chunk,) + chunks[1:]
        arr = group.create_array(
            name,
            shape=data.shape,
            dtype=data.dtype,
            chunks=chunks,
            shards=shards,
            compressors=self._compressors(image),
            fill_value=0,
            # every chunk is a file, even all-zero ones: a missing file then
            # always means damage (and the direct reader needs no fill logic)
            config={"write_empty_chunks": True},
        )
        if data.size:
            arr[...] = data
        return arr

    def write(self, scenes: Sequence[ProcessedScene], shard_id: str | None = None) -> ShardInfo:
        import zarr

        if not scenes:
            raise ValueError("a shard needs at least one scene")
        keys = [ps.key for ps in scenes]
        if len(set(keys)) != len(keys):
            dup = sorted({k for k in keys if keys.count(k) > 1})
            raise ValueError(f"scenes appear twice in one shard: {dup}")
        for ps in scenes:
            validate_processed(ps)
        shard_id = shard_id or new_shard_id()
        loc = self.location
        if loc.exists(SHARD_DIR, shard_id):
            raise FileExistsError(f"shard '{shard_id}' already exists in {loc.url}")

        pts = [ps.scene.points for ps in scenes]
        frames = [f for ps in scenes for f in ps.scene.frames]
        corrs: list[Correspondence] = [c for ps in scenes for c in ps.correspondences]
        n_pts = np.array([len(p) for p in pts])
        n_img = np.array([len(ps.scene.frames) for ps in scenes])
        n_groups = np.array([ps.image_groups.shape[0] for ps in scenes])
        point_offset = np.concatenate([[0], np.cumsum(n_pts)]).astype(np.int64)
        image_offset = np.concatenate([[0], np.cumsum(n_img)]).astype(np.int64)
        group_offset = np.concatenate([[0], np.cumsum(n_groups)]).astype(np.int64)
        corr_offset = np.concatenate([[0], np.cumsum([len(c) for c in corrs])]).astype(np.int64)

        group_scene = np.repeat(np.arange(len(scenes), dtype=np.int32), n_groups)
        group_images = np.full((int(n_groups.sum()), MAX_VIEWS), -1, np.int32)
        for s, ps in enumerate(scenes):
            w = ps.image_groups.shape[1]
            group_images[group_offset[s]:group_offset[s + 1], :w] = ps.image_groups + image_offset[s]

        sizes: list[tuple[int, int]] = []
        size_group = np.zeros(len(frames), np.int32)
        size_slot = np.zeros(len(frames), np.int32)
        for i, f in enumerate(frames):
            hw = (f.height, f.width)
            if hw not in sizes:
                sizes.append(hw)
            size_group[i] = sizes.index(hw)
            size_slot[i] = int((size_group[:i] == size_group[i]).sum())

        store = loc.zarr_store(SHARD_DIR, shard_id)
        root = zarr.open_group(store, mode="w-", zarr_format=3)
        root.attrs.update({
            "format": SHARD_FORMAT,
            "scenes": [_scene_attrs(ps) for ps in scenes],
            "image_sizes": [list(hw) for hw in sizes],
        })
        g = root.create_group("points")
        self._write_array(g, "coord", np.concatenate([p.coord for p in pts]), self.point_chunk)
        self._write_array(g, "color", np.concatenate([p.color for p in pts]), self.point_chunk)
        self._write_array(g, "normal", np.concatenate([p.normal for p in pts]), self.point_chunk)
        self._write_array(g, "segment", np.concatenate([_label(p.segment, len(p)) for p in pts]), self.point_chunk)
        self._write_array(g, "instance", np.concatenate([_label(p.instance, len(p)) for p in pts]), self.point_chunk)
        g = root.create_group("scenes")
        self._write_array(g, "point_offset", point_offset)
        self._write_array(g, "image_offset", image_offset)
        self._write_array(g, IMAGE_GROUP_OFFSET, group_offset)
        g = root.create_group("images")
        for gi, (h, w) in enumerate(sizes):
            stack = np.stack([f.rgb for f, sg in zip(frames, size_group) if sg == gi])
            self._write_array(g, rgb_array_name(h, w), stack, 1, image=True)
        self._write_array(g, "size_group", size_group)
        self._write_array(g, "size_slot", size_slot)
        self._write_array(g, "K", np.stack([f.K for f in frames]) if frames else np.zeros((0, 3, 3), np.float32))
        self._write_array(g, "pose", np.stack([f.pose for f in frames]) if frames else np.zeros((0, 4, 4), np.float32))
        self._write_array(g, "corr_offset", corr_offset)
        g = root.create_group("corr")
        self._write_array(g, "point", np.concatenate([c.point_index for c in corrs]) if corrs else np.zeros(0, np.int32), self.corr_chunk)
        self._write_array(g, "pixel", np.concatenate([c.pixel for c in corrs]) if corrs else np.zeros((0, 2), np.uint16), self.corr_chunk)
        g = root.create_group(IMAGE_GROUP_GROUP)
        self._write_array(g, IMAGE_GROUP_SCENE, group_scene)
        self._write_array(g, IMAGE_GROUP_IMAGES, group_images)

        files = self.inventory(shard_id)
        inventory = json.dumps(files, sort_keys=True).encode()
        # written last: a shard with an inventory file finished writing
        loc.write_bytes(inventory, SHARD_DIR, shard_id, INVENTORY)
        entries = [
            SceneEntry(
                key=ps.key, source=ps.scene.source, scene_id=ps.scene.scene_id,
                content_hash=ps.scene.content_hash, index=i, n_points=int(n_pts[i]),
                n_images=int(n_img[i]), n_corr=int(corr_offset[image_offset[i + 1]] - corr_offset[image_offset[i]]),
                n_image_groups=int(n_groups[i]),
            )
            for i, ps in enumerate(scenes)
        ]
        return ShardInfo(
            id=shard_id, scenes=entries, inventory_digest=file_digest(inventory),
            nbytes=sum(v[0] for v in files.values()) + len(inventory), n_files=len(files) + 1,
            created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            n_scenes_written=len(scenes), points_written=int(n_pts.sum()), format=SHARD_FORMAT,
        )

    def inventory(self, shard_id: str) -> dict[str, list]:
        """{relative path: [size, blake2b]} of every file of a shard (but the
        inventory file itself)."""
        loc = self.location
        out = {}
        rels = [rel for rel in sorted(loc.file_sizes(SHARD_DIR, shard_id)) if rel != INVENTORY]
        for group in batches(rels, READ_GROUP):  # concurrent requests on object stores, bounded memory
            for rel, data in loc.read_many((SHARD_DIR, shard_id), group).items():
                out[rel] = [len(data), file_digest(data)]
        return out


def scene_nbytes(ps: ProcessedScene) -> int:
    """Uncompressed bytes a scene adds to a shard (for packing)."""
    p = ps.scene.points
    n = len(p) * (12 + 3 + 12 + 4 + 4)
    n += sum(f.rgb.nbytes + 100 for f in ps.scene.frames)
    n += sum(len(c) * 8 for c in ps.correspondences)
    return n


class ShardPacker:
    """The packing rule of every shard writer: a shard holds scenes of one source
    only (dropping a source drops whole shards), at most ``max_scenes`` of them,
    and a scene that would take it past ``max_bytes`` (uncompressed, see
    ``scene_nbytes``) starts the next one; a shard always takes its first scene.
    None: no limit. ``add`` returns the shards that adding a scene closed,
    ``flush`` the one left open, so a caller can write as it goes."""

    def __init__(self, max_scenes: int | None = None, max_bytes: int | None = None):
        if max_scenes is not None and max_scenes < 1:
            raise ValueError(f"a shard holds at least 1 scene, got max_scenes={max_scenes}")
        self.max_scenes, self.max_bytes = max_scenes, max_bytes
        self._open: list[ProcessedScene] = []
        self._bytes = 0

    def add(self, ps: ProcessedScene) -> list[list[ProcessedScene]]:
        closed = []
        size = scene_nbytes(ps) if self.max_bytes is not None else 0
        if self._open and (ps.scene.source != self._open[0].scene.source
                           or (self.max_bytes is not None and self._bytes + size > self.max_bytes)):
            closed += self.flush()
        self._open.append(ps)
        self._bytes += size
        if self.max_scenes is not None and len(self._open) >= self.max_scenes:
            closed += self.flush()
        return closed

    def flush(self) -> list[list[ProcessedScene]]:
        shard, self._open, self._bytes = self._open, [], 0
        return [shard] if shard else []


def pack_scenes(scenes: Sequence[ProcessedScene], target_bytes: int = 256 << 20,
                max_scenes: int | None = None) -> list[list[ProcessedScene]]:
    """Group scenes into shards by ``ShardPacker``'s rule (about ``target_bytes``
    uncompressed each), sorted by source, then key."""
    packer = ShardPacker(max_scenes, target_bytes)
    groups = [g for ps in sorted(scenes, key=lambda p: (p.scene.source, p.key)) for g in packer.add(ps)]
    return groups + packer.flush()
