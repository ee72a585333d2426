"""Shard store: bit-exact round trips, URLs, errors, corruption, the CLI."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from pipelines.store import (
    ManifestConflictError,
    ManifestVersionError,
    NoManifestError,
    ShardCorruptError,
    ShardStore,
    ShardWriter,
    commit,
    load_manifest,
)
from pipelines.store.inspect import camera_depth, main as inspect_main
from pipelines.store.location import SHARD_DIR
from preprocess.scene import SceneValidationError
from testkit.random_store_scenes import random_processed_scene


def assert_scene_equal(a, b):
    """Every array bit-exact (dtype and shape too) and every metadata field equal."""

    def same(x, y, what):
        if x is None or y is None:
            assert x is None and y is None, what
            return
        assert x.dtype == y.dtype and x.shape == y.shape, what
        assert x.tobytes() == y.tobytes(), what

    sa, sb = a.scene, b.scene
    assert (sa.key, sa.source, sa.scene_id, sa.content_hash, sa.mesh_path) == (sb.key, sb.source, sb.scene_id, sb.content_hash, sb.mesh_path)
    assert sa.meta == sb.meta and a.stats == b.stats
    for f in ("coord", "color", "normal", "segment", "instance"):
        same(getattr(sa.points, f), getattr(sb.points, f), f"{sa.key} points.{f}")
    assert len(sa.frames) == len(sb.frames)
    for i, (fa, fb) in enumerate(zip(sa.frames, sb.frames)):
        assert fa.name == fb.name
        for f in ("rgb", "K", "pose"):
            same(getattr(fa, f), getattr(fb, f), f"{sa.key} frame {i} {f}")
    for i, (ca, cb) in enumerate(zip(a.correspondences, b.correspondences)):
        same(ca.point_index, cb.point_index, f"{sa.key} corr {i} point")
        same(ca.pixel, cb.pixel, f"{sa.key} corr {i} pixel")
    assert len(a.correspondences) == len(b.correspondences)
    same(a.image_groups.astype(np.int32), b.image_groups, f"{sa.key} image_groups")


def mixed_scenes(rng, source="alpha", prefix="s"):
    return [
        random_processed_scene(rng, source, f"{prefix}0", n_points=2500, image_sizes=[(24, 32), (30, 20), (24, 32), (16, 16), (30, 20)], n_image_groups=3),
        random_processed_scene(rng, source, f"{prefix}1", n_points=700, image_sizes=[], labels=False),
        random_processed_scene(rng, source, f"{prefix}2", n_points=1300, image_sizes=[(24, 32)] * 4, n_image_groups=1),
    ]


def expected_sample(ps, seg):
    views = [int(v) for v in ps.image_groups[seg]]
    return views


def write_store(url, scenes, **writer_kw):
    info = ShardWriter(url, **writer_kw).write(scenes)
    return info, commit(url, None, [info])


def shard_files(url, info):
    return ShardStore.open(url).reader(info.id).inventory()


@pytest.mark.parametrize("chunks", [dict(point_chunk=512, corr_chunk=100), {}])
def test_round_trip_bit_exact(tmp_path, chunks):
    rng = np.random.default_rng(0)
    scenes = mixed_scenes(rng)
    url = str(tmp_path / "store")
    _, version = write_store(url, scenes, **chunks)
    store = ShardStore.open(url)
    assert store.version == version == 1
    assert store.scene_keys() == [ps.key for ps in scenes]
    for ps in scenes:
        assert_scene_equal(store.read_scene(ps.key), ps)
    # samples: every image group of every scene, in order
    assert len(store) == sum(ps.image_groups.shape[0] for ps in scenes)
    i = 0
    for ps in scenes:
        for seg in range(ps.image_groups.shape[0]):
            s = store[i]
            assert (s["key"], s["source"], s["scene_id"], s["image_group"]) == (ps.key, "alpha", ps.scene.scene_id, seg)
            assert s["coord"].tobytes() == ps.scene.points.coord.tobytes()
            assert s["normal"].dtype == np.float32 and s["color"].dtype == np.uint8
            labels = ps.scene.points.segment
            want = np.full(len(ps.scene.points), -1, np.int32) if labels is None else labels
            assert s["segment_label"].dtype == np.int32 and np.array_equal(s["segment_label"], want)
            views = [int(v) for v in ps.image_groups[seg]]
            assert len(s["rgb"]) == len(views) and s["K"].shape == (len(views), 3, 3) and s["pose"].shape == (len(views), 4, 4)
            for j, v in enumerate(views):
                frame, corr = ps.scene.frames[v], ps.correspondences[v]
                assert s["rgb"][j].tobytes() == frame.rgb.tobytes() and s["rgb"][j].shape == frame.rgb.shape
                assert np.array_equal(s["K"][j], frame.K) and np.array_equal(s["pose"][j], frame.pose)
                assert s["corr_point"][j].dtype == np.int32 and np.array_equal(s["corr_point"][j], corr.point_index)
                assert s["corr_pixel"][j].dtype == np.uint16 and np.array_equal(s["corr_pixel"][j], corr.pixel)
            i += 1
    assert store[-1]["key"] == scenes[-1].key
    with pytest.raises(IndexError, match="out of range"):
        store[len(store)]


def test_image_less_scene_sample(tmp_path):
    rng = np.random.default_rng(1)
    ps = random_processed_scene(rng, "beta", "bare", n_points=300, image_sizes=[])
    url = str(tmp_path / "s")
    write_store(url, [ps])
    s = ShardStore.open(url)[0]
    assert s["rgb"] == [] and s["corr_point"] == [] and s["K"].shape == (0, 3, 3) and s["pose"].shape == (0, 4, 4)
    assert s["coord"].shape == (300, 3)


@pytest.mark.parametrize("scheme", ["memory", "file"])
def test_fsspec_urls(tmp_path, scheme):
    rng = np.random.default_rng(2)
    scenes = mixed_scenes(rng)
    url = f"memory://store-{tmp_path.name}" if scheme == "memory" else f"file://{tmp_path}/store"
    write_store(url, scenes, point_chunk=512)
    store = ShardStore.open(url)
    for ps in scenes:
        assert_scene_equal(store.read_scene(ps.key), ps)
    assert store.verify() == []


def test_reader_pickles_and_reopens(tmp_path):
    rng = np.random.default_rng(3)
    scenes = mixed_scenes(rng)
    url = str(tmp_path / "s")
    write_store(url, scenes[:2])
    info = ShardWriter(url).write(scenes[2:])
    commit(url, 1, [info])
    store = ShardStore.open(url)
    before = store[0]
    clone = pickle.loads(pickle.dumps(store))  # after use: zarr handles must not travel
    assert clone.version == 2 and len(clone) == len(store)
    after = clone[0]
    assert np.array_equal(before["coord"], after["coord"]) and before["rgb"][1].tobytes() == after["rgb"][1].tobytes()
    by_shard = store.samples_by_shard()
    assert len(by_shard) == 2 and sorted(sum(by_shard, [])) == list(range(len(store)))
    assert [len(x) for x in by_shard] == [scenes[0].image_groups.shape[0] + 1, 1]
    assert all(store.locate(i)[0] == store.shards[p] for p, idx in enumerate(by_shard) for i in idx)


def test_missing_and_empty_store_errors(tmp_path):
    with pytest.raises(NoManifestError, match="no manifest at"):
        ShardStore.open(str(tmp_path / "nothing-here"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(NoManifestError, match="no manifest at .*empty"):
        ShardStore.open(str(tmp_path / "empty"))
    url = str(tmp_path / "zero")
    assert commit(url, None, []) == 1  # a committed store with no data
    store = ShardStore.open(url)
    assert len(store) == 0 and store.scene_keys() == []
    with pytest.raises(IndexError, match="has 0 samples"):
        store[0]
    with pytest.raises(ManifestVersionError, match="version 7 not found"):
        ShardStore.open(url, version=7)


def test_commit_conflict_does_not_overwrite(tmp_path):
    rng = np.random.default_rng(4)
    url = str(tmp_path / "s")
    info, _ = write_store(url, [random_processed_scene(rng, "a", "x")])
    w = ShardWriter(url)
    first = w.write([random_processed_scene(rng, "a", "y")])
    second = w.write([random_processed_scene(rng, "a", "z")])
    assert commit(url, 1, [first]) == 2
    with pytest.raises(ManifestConflictError, match="v2 already exists"):
        commit(url, 1, [second])
    assert ShardStore.open(url).scene_keys() == ["a/x", "a/y"]
    with pytest.raises(ValueError, match="served by two shards"):
        commit(url, 2, [w.write([random_processed_scene(rng, "a", "x")])])
    with pytest.raises(ManifestConflictError):
        commit(url, None, [second])


def test_invalid_scene_is_named_and_nothing_written(tmp_path):
    rng = np.random.default_rng(5)
    bad = random_processed_scene(rng, "a", "broken", n_points=100)
    bad.correspondences[1].point_index[0] = 100  # out of range
    url = str(tmp_path / "s")
    with pytest.raises(SceneValidationError, match=r"scene 'a/broken'.*correspondences\[1:frame0001\]\.point_index"):
        ShardWriter(url).write([random_processed_scene(rng, "a", "fine"), bad])
    assert not (tmp_path / "s" / SHARD_DIR).exists()


def _corruptible_store(tmp_path):
    rng = np.random.default_rng(6)
    url = str(tmp_path / "s")
    info, _ = write_store(url, mixed_scenes(rng), point_chunk=512)
    return url, info, tmp_path / "s" / SHARD_DIR / info.id


def test_truncated_chunk_raises_shard_corrupt(tmp_path):
    url, info, shard = _corruptible_store(tmp_path)
    chunk = shard / "points" / "coord" / "c" / "0" / "0"
    chunk.write_bytes(chunk.read_bytes()[:-50])
    with pytest.raises(ShardCorruptError, match=rf"shard '{info.id}': array 'points/coord'.*truncated"):
        ShardStore.open(url)[0]
    # without the inventory check the decode error is still named
    with pytest.raises(ShardCorruptError, match=rf"shard '{info.id}': array 'points/coord'"):
        ShardStore.open(url, check_files=False)[0]


def test_deleted_chunk_and_missing_array(tmp_path):
    url, info, shard = _corruptible_store(tmp_path)
    (shard / "corr" / "pixel" / "c" / "0" / "0").unlink()
    with pytest.raises(ShardCorruptError, match=rf"shard '{info.id}': array 'corr/pixel'.*missing"):
        ShardStore.open(url)[0]
    (shard / "images" / "K" / "zarr.json").unlink()
    with pytest.raises(ShardCorruptError, match=rf"shard '{info.id}': array 'images/K'"):
        ShardStore.open(url, check_files=False)[0]


def test_verify_catches_flipped_bytes(tmp_path):
    url, info, shard = _corruptible_store(tmp_path)
    store = ShardStore.open(url)
    assert store.verify() == []
    chunk = shard / "images" / "rgb_24x32" / "c" / "0" / "0" / "0" / "0"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    problems = ShardStore.open(url).verify()
    assert len(problems) == 1 and info.id in problems[0] and "images/rgb_24x32/c/0/0/0/0" in problems[0]
    assert inspect_main([url, "--verify"], out=open(tmp_path / "o.txt", "w")) == 1


def test_inventory_file_damage(tmp_path):
    url, info, shard = _corruptible_store(tmp_path)
    inv = shard / "inventory.json"
    inv.write_text(inv.read_text().replace("points", "pOints", 1))
    with pytest.raises(ShardCorruptError, match=rf"shard '{info.id}': file 'inventory.json': content differs"):
        ShardStore.open(url)[0]
    inv.unlink()
    with pytest.raises(ShardCorruptError, match=rf"shard '{info.id}': file 'inventory.json': missing"):
        ShardStore.open(url)[0]
    assert ShardStore.open(url).verify() == [f"shard '{info.id}': file 'inventory.json': missing"]


def test_inspect_cli(tmp_path, capsys):
    rng = np.random.default_rng(7)
    scenes = mixed_scenes(rng)
    url = str(tmp_path / "s")
    write_store(url, scenes)
    # one sparse image: a scene whose frame 1 has 3 correspondences
    sparse = random_processed_scene(rng, "gamma", "few", n_points=400, corr_per_image=200)
    sparse.correspondences[1].point_index = sparse.correspondences[1].point_index[:3].copy()
    sparse.correspondences[1].pixel = sparse.correspondences[1].pixel[:3].copy()
    commit(url, 1, [ShardWriter(url).write([sparse])])

    assert inspect_main([url, "--versions", "--coverage", "--min-corr", "50"]) == 0
    text = capsys.readouterr().out
    for word in ("alpha", "gamma", "alpha/s0", "gamma/few", "frame0001 (3)", "total"):
        assert word in text
    ps = scenes[0]
    coverage = np.unique(np.concatenate([c.point_index for c in ps.correspondences])).size / len(ps.scene.points)
    assert f"{coverage:.3f}" in text

    out = tmp_path / "seg.png"
    assert inspect_main([url, "--draw", "0", "--out", str(out)]) == 0
    from PIL import Image

    img = np.asarray(Image.open(out))
    views = [int(v) for v in ps.image_groups[0]]
    hmax = max(ps.scene.frames[v].height for v in views)
    wmax = max(ps.scene.frames[v].width for v in views)
    assert img.shape == (2 * hmax, 2 * wmax, 3)
    assert inspect_main([url, "--draw", "3", "--out", str(out)]) == 2  # alpha/s1 has no images
    assert "has no images" in capsys.readouterr().err
    assert inspect_main([str(tmp_path / "none")]) == 2
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "pipelines.store.inspect", url, "--version", "1"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "alpha" in done.stdout and "gamma" not in done.stdout


def test_camera_depth_convention():
    pose = np.eye(4, dtype=np.float32)
    pose[:3, 3] = [0, 0, -2]  # camera 2 m behind the origin, looking down +z
    assert np.allclose(camera_depth(np.array([[0, 0, 1.0]], np.float32), pose), [3.0])


def test_manifest_records_counts(tmp_path):
    rng = np.random.default_rng(8)
    scenes = mixed_scenes(rng)
    url = str(tmp_path / "s")
    write_store(url, scenes)
    raw = json.loads((tmp_path / "s" / "manifests" / "v000001.json").read_text())
    assert raw["parent"] is None and raw["version"] == 1 and raw["created"]
    src = raw["sources"]["alpha"]
    assert src["scenes"] == 3 and src["points"] == sum(len(p.scene.points) for p in scenes)
    assert src["images"] == 9 and src["corr"] == sum(len(c) for p in scenes for c in p.correspondences)
    assert src["segments"] == 3 + 1 + 1  # COUNT_IMAGE_GROUPS, the on-disk key
    m = load_manifest(url)
    files = json.loads((tmp_path / "s" / "shards" / m.shards[0].id / "inventory.json").read_text())
    assert len(files) + 1 == m.shards[0].n_files and sum(v[0] for v in files.values()) < m.shards[0].nbytes
    assert "points/coord/c/0/0" in files and "files" not in raw["shards"][0]


def test_coalesce_ranges():
    from pipelines.store.reader import coalesce

    assert coalesce([(10, 20), (0, 5), (5, 8)], max_gap=0) == [(0, 8), (10, 20)]
    assert coalesce([(0, 100), (110, 200)], max_gap=0.25) == [(0, 200)]  # 10-row gap < 25 % of 100
    assert coalesce([(0, 100), (200, 300)], max_gap=0.25) == [(0, 100), (200, 300)]
    assert coalesce([(3, 4), (3, 4), (0, 10)], max_gap=0) == [(0, 10)]


def test_sharded_files_option_round_trips(tmp_path):
    rng = np.random.default_rng(10)
    scenes = mixed_scenes(rng)
    url = str(tmp_path / "s")
    info, _ = write_store(url, scenes, point_chunk=512, corr_chunk=100, shard_files=True)
    files = shard_files(url, info)
    assert "points/coord/c/0/0" in files and "points/coord/c/1/0" not in files  # one file per array
    store = ShardStore.open(url)
    for ps in scenes:
        assert_scene_equal(store.read_scene(ps.key), ps)


def test_direct_chunk_reads_match_zarr(tmp_path):
    """The direct local-disk read path and zarr's own path return the same bytes."""
    rng = np.random.default_rng(11)
    scenes = mixed_scenes(rng)
    url = str(tmp_path / "s")
    write_store(url, scenes, point_chunk=300, corr_chunk=64)
    fast, slow = ShardStore.open(url), ShardStore.open(url, direct=False)
    fast[0]
    rows = fast.reader(0)._rows
    assert {"points/coord", "points/segment", "corr/pixel", "images/rgb_24x32"} <= set(rows)
    assert slow.reader(0)._open() and slow.reader(0)._rows == {}
    for i in range(len(fast)):
        a, b = fast[i], slow[i]
        for k in a:
            if isinstance(a[k], list):
                assert all(x.dtype == y.dtype and x.tobytes() == y.tobytes() for x, y in zip(a[k], b[k])) and len(a[k]) == len(b[k])
            elif isinstance(a[k], np.ndarray):
                assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and a[k].tobytes() == b[k].tobytes()
            else:
                assert a[k] == b[k]
    # row ranges across chunk borders, single rows, empty ranges
    r = fast.reader(0)
    for name, sel in [("points/coord", slice(250, 950)), ("points/color", slice(0, 0)), ("corr/point", slice(60, 200)), ("points/normal", 299)]:
        assert np.array_equal(r._rows[name].read(sel), r._arrays[name][sel])


def test_direct_path_truncated_chunk(tmp_path):
    url, info, shard = _corruptible_store(tmp_path)
    chunk = shard / "points" / "normal" / "c" / "1" / "0"
    chunk.write_bytes(chunk.read_bytes()[:-7])
    # the chunk's crc32c is checked before its blosc frame
    with pytest.raises(ShardCorruptError, match=rf"shard '{info.id}': array 'points/normal', chunk 1: .*checksum mismatch"):
        ShardStore.open(url, check_files=False)[0]


_FORKED_LOADER = """
import sys
import numpy as np
import torch.utils.data as tud
from pipelines.store import ShardStore

def key_and_sum(sample):
    return sample["key"], float(sample["coord"].sum())

store = ShardStore.open(sys.argv[1])
expected = [float(store[i]["coord"].sum()) for i in range(len(store))]  # parent opened zarr first
loader = tud.DataLoader(store, batch_size=None, num_workers=2, multiprocessing_context="fork", collate_fn=key_and_sum)
got = [c for _, c in loader]
assert np.allclose(got, expected), (got, expected)
print("ok", len(got))
"""


def test_torch_dataloader_workers(tmp_path):
    """The store is a map-style dataset: forked workers inherit opened shards
    after the parent has read (zarr resets its event loop after fork). Spawned
    workers unpickle it: see test_reader_pickles_and_reopens and the Dask test.

    Run in a fresh interpreter, as a training process would be: forking this
    pytest process, which by now hosts Prefect/Dask/torch threads from other
    tests, is not what the loader does in real use and made workers die at random."""
    import subprocess
    import sys

    rng = np.random.default_rng(12)
    url = str(tmp_path / "s")
    write_store(url, mixed_scenes(rng))
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", _FORKED_LOADER, url], cwd=root, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["ok", str(len(ShardStore.open(url)))]
