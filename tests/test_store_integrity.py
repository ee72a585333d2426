"""Chunk checksums: a same-size byte flip in any array fails the read that meets
it, naming shard, array and chunk; older-format stores open read-only and
``--migrate`` rewrites them with the same contents."""
from __future__ import annotations

import json

import numpy as np
import pytest

from pipelines.store import ShardCorruptError, ShardStore, ShardWriter, commit, load_manifest
from pipelines.store.errors import StoreFormatError
from pipelines.store.inspect import main as inspect_main
from pipelines.store.location import SHARD_DIR
from pipelines.store.migrate import migrate
from testkit.random_store_scenes import random_processed_scene
from test_store import assert_scene_equal


def _store(tmp_path, writer=ShardWriter):
    rng = np.random.default_rng(3)
    scenes = [random_processed_scene(rng, "alpha", f"s{i}", n_points=1500, image_sizes=[(24, 32)] * 4, n_image_groups=2) for i in range(2)]
    url = str(tmp_path / "store")
    info = writer(url, point_chunk=512, corr_chunk=256).write(scenes)
    commit(url, None, [info])
    return url, info, tmp_path / "store" / SHARD_DIR / info.id, scenes


def _flip_byte(path, offset_from_end: int = 40):
    """Flip one byte inside the chunk's payload; the file keeps its size."""
    data = bytearray(path.read_bytes())
    data[len(data) - offset_from_end] ^= 0x5A
    path.write_bytes(bytes(data))


def _read_all(url, **open_kw):
    store = ShardStore.open(url, **open_kw)
    return [store[i] for i in range(len(store))]


# (array, chunk file below the array, chunk index): one per array kind
ARRAYS = [
    ("points/coord", "c/1/0", 1),
    ("points/color", "c/0/0", 0),
    ("images/pose", "c/0/0/0", 0),
    ("images/rgb_24x32", "c/5/0/0/0", 5),
    ("corr/point", "c/2", 2),
    ("corr/pixel", "c/1/0", 1),
]


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "zarr"])
@pytest.mark.parametrize("array,chunk,index", ARRAYS, ids=[a[0] for a in ARRAYS])
def test_same_size_byte_flip_raises_named_error(tmp_path, array, chunk, index, direct):
    url, info, shard, _ = _store(tmp_path)
    before = _read_all(url, direct=direct)
    path = shard / array / chunk
    size = path.stat().st_size
    _flip_byte(path)
    assert path.stat().st_size == size  # the inventory's size check cannot see it
    with pytest.raises(ShardCorruptError, match=rf"shard '{info.id}': array '{array}', chunk {index}\b.*checksum"):
        _read_all(url, direct=direct)
    assert len(before) == 4


def test_migrate_rewrites_an_old_store(tmp_path, monkeypatch):
    """A store written by shard format 1 (no checksums) reads with a warning,
    refuses writes, and --migrate makes it current with identical contents."""
    from pipelines.store import manifest as manifest_mod, writer as writer_mod

    class FormatOneWriter(ShardWriter):
        def _compressors(self, image):
            return [c for c in super()._compressors(image) if type(c).__name__ != "Crc32cCodec"]

    monkeypatch.setattr(writer_mod, "SHARD_FORMAT", "concerto-shard/1")
    monkeypatch.setattr(manifest_mod, "SHARD_FORMAT", "concerto-shard/1")
    url, info, shard, scenes = _store(tmp_path, FormatOneWriter)
    monkeypatch.undo()
    # what the previous release wrote: no format fields in the manifest
    path = tmp_path / "store" / "manifests" / "v000001.json"
    d = json.loads(path.read_text())
    del d["store_format"]
    for sh in d["shards"]:
        del sh["format"]
    path.write_text(json.dumps(d))
    assert load_manifest(url).store_format == 1
    with pytest.warns(UserWarning, match=r"store format 1 .*concerto-store .* --migrate"):
        old = ShardStore.open(url)
    old_samples = [old[i] for i in range(len(old))]
    new_scene = random_processed_scene(np.random.default_rng(9), "beta", "n0", n_points=300, image_sizes=[(24, 32)] * 4)
    extra = ShardWriter(url).write([new_scene])
    with pytest.raises(StoreFormatError, match="--migrate"):
        commit(url, 1, [extra])

    assert inspect_main([url, "--migrate"], out=open(tmp_path / "o.txt", "w")) == 0
    m = load_manifest(url)
    assert m.version == 2 and m.store_format == 2 and info.id not in {sh.id for sh in m.shards}
    store = ShardStore.open(url)
    for a, b in zip(old_samples, (store[i] for i in range(len(store)))):
        for k in ("coord", "color", "normal", "segment_label", "K", "pose"):
            assert np.array_equal(a[k], b[k]), k
        assert all(np.array_equal(x, y) for x, y in zip(a["corr_pixel"], b["corr_pixel"]))
    for ps in scenes:
        assert_scene_equal(store.read_scene(ps.key), ShardStore.open(url).read_scene(ps.key))
    assert store.verify() == []
    assert commit(url, 2, [extra]) == 3  # writable again
    # the migrated store now catches a flipped byte
    _flip_byte(tmp_path / "store" / SHARD_DIR / m.shards[0].id / "points" / "coord" / "c" / "0" / "0")
    with pytest.raises(ShardCorruptError, match="checksum"):
        _read_all(url)


def test_readers_open_the_latest_complete_version(tmp_path):
    """Batch commits of a running (or killed) build are "partial": a reader
    keeps seeing the last complete version until the build's final commit."""
    rng = np.random.default_rng(5)
    url = str(tmp_path / "store")
    w = ShardWriter(url)
    a = w.write([random_processed_scene(rng, "a", "s0", n_points=200, image_sizes=[(24, 32)] * 4)])
    assert commit(url, None, [a], run_id="run-1") == 1
    b = w.write([random_processed_scene(rng, "b", "s0", n_points=200, image_sizes=[(24, 32)] * 4)])
    assert commit(url, 1, [b], run_id="run-2", state="partial") == 2
    opened = ShardStore.open(url)
    assert opened.version == 1 and set(opened.manifest.source_counts()) == {"a"}
    m2 = load_manifest(url, 2)
    assert (m2.run_id, m2.state, m2.parent) == ("run-2", "partial", 1)
    assert ShardStore.open(url, version=2).version == 2  # explicit versions open as asked
    assert commit(url, 2, [], run_id="run-2") == 3
    assert ShardStore.open(url).version == 3
    with pytest.raises(ValueError, match="state"):
        commit(url, 3, [], state="half")
