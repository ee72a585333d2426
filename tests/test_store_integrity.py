"""Chunk checksums: a same-size byte flip in any array fails the read that meets
it, naming shard, array and chunk; older-format stores open read-only and
``--migrate`` rewrites them with the same contents."""
from __future__ import annotations

import shutil
from pathlib import Path

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


FORMAT1 = Path(__file__).parent / "fixtures" / "store_format1"


def _assert_sample_is(sample, expected, i):
    """A sample equals what the format-1 code read from its own store."""
    assert sample["key"] == str(expected[f"{i}/key"])
    for k in ("coord", "color", "normal", "segment_label", "K", "pose"):
        assert np.array_equal(sample[k], expected[f"{i}/{k}"]), k
    for v in range(len(sample["rgb"])):
        for k in ("rgb", "corr_point", "corr_pixel"):
            assert np.array_equal(sample[k][v], expected[f"{i}/{k}{v}"]), (k, v)


def test_migrate_rewrites_an_old_store(tmp_path):
    """A store the format-1 code wrote (fixture from commit c7f1883, see
    scripts/make_format1_store_fixture.py) reads with a warning as that code read
    it, refuses writes, and --migrate makes it current with identical contents."""
    url = str(tmp_path / "store")
    shutil.copytree(FORMAT1 / "store", url)
    expected = np.load(FORMAT1 / "expected.npz")
    old_ids = {sh.id for sh in load_manifest(url).shards}
    assert load_manifest(url).store_format == 1
    with pytest.warns(UserWarning, match=r"store format 1 .*concerto-store .* --migrate"):
        old = ShardStore.open(url)
    assert len(old) == 4
    for i in range(len(old)):
        _assert_sample_is(old[i], expected, i)
    old_scenes = {k: old.read_scene(k) for k in old.scene_keys()}
    new_scene = random_processed_scene(np.random.default_rng(9), "beta", "n0", n_points=300, image_sizes=[(24, 32)] * 4)
    extra = ShardWriter(url).write([new_scene])
    with pytest.raises(StoreFormatError, match="--migrate"):
        commit(url, 1, [extra])

    assert inspect_main([url, "--migrate"], out=open(tmp_path / "o.txt", "w")) == 0
    m = load_manifest(url)
    assert m.version == 2 and m.store_format == 2 and not old_ids & {sh.id for sh in m.shards}
    store = ShardStore.open(url)
    for i in range(len(store)):
        _assert_sample_is(store[i], expected, i)
    for key, scene in old_scenes.items():
        assert_scene_equal(store.read_scene(key), scene)
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
