"""The shard store on a real S3 server (SeaweedFS): conditional manifest
commits, round trips, verify/gc/inspect on s3:// URLs, the no-conditional-write
fallback."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from pipelines.store import ManifestConflictError, ShardStore, ShardWriter, commit, gc, list_versions, load_manifest
from pipelines.store.errors import ConcurrentWriterError
from pipelines.store.inspect import main as inspect_main
from pipelines.store.location import CONDITIONAL_ENV, MANIFEST_DIR, SHARD_DIR, WRITER_LOCK, StoreLocation
from testkit.random_store_scenes import random_processed_scene as synthetic_scene
from tests.test_store import assert_scene_equal, mixed_scenes


def test_seaweedfs_honours_conditional_writes(s3_url):
    loc = StoreLocation.of(s3_url)
    assert loc.conditional_writes  # probed with a throwaway key, which is gone again
    assert loc.listdir(MANIFEST_DIR) == []
    assert loc.create_exclusive(b"first", MANIFEST_DIR, "x.json")
    assert not loc.create_exclusive(b"second", MANIFEST_DIR, "x.json")
    # the same bytes again: a PUT retried after its first attempt landed counts as ours
    assert loc.create_exclusive(b"first", MANIFEST_DIR, "x.json")
    assert loc.read_bytes(MANIFEST_DIR, "x.json") == b"first"


def test_racing_commits_on_s3_exactly_one_wins(s3_url):
    """Eight committers race for v2 at once: If-None-Match lets one through, the
    others get ManifestConflictError; nothing is overwritten."""
    rng = np.random.default_rng(0)
    w = ShardWriter(s3_url)
    commit(s3_url, None, [w.write([synthetic_scene(rng, "a", "base", n_points=200, image_sizes=[])])])
    shards = [w.write([synthetic_scene(rng, "a", f"s{i}", n_points=200, image_sizes=[])]) for i in range(8)]
    results: list = [None] * 8
    barrier = threading.Barrier(8)

    def go(i):
        barrier.wait()
        try:
            results[i] = commit(s3_url, 1, [shards[i]], note=f"writer {i}")
        except ManifestConflictError as e:
            results[i] = e

    threads = [threading.Thread(target=go, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [i for i, r in enumerate(results) if r == 2]
    assert len(winners) == 1, results
    assert all(isinstance(r, ManifestConflictError) for i, r in enumerate(results) if i not in winners)
    m = load_manifest(s3_url, 2)
    assert m.note == f"writer {winners[0]}" and [sh.id for sh in m.shards][-1] == shards[winners[0]].id


def test_round_trip_verify_inspect_gc_on_s3(s3_url, tmp_path, capsys):
    rng = np.random.default_rng(1)
    scenes = mixed_scenes(rng)
    local = tmp_path / "local"
    for url in (s3_url, str(local)):
        commit(url, None, [ShardWriter(url).write(scenes)])
    s3, disk = ShardStore.open(s3_url), ShardStore.open(str(local))
    assert len(s3) == len(disk) > 0
    for ps in scenes:
        assert_scene_equal(s3.read_scene(ps.key), ps)
    for i in range(len(s3)):
        a, b = s3[i], disk[i]
        for k in ("coord", "color", "normal", "segment_label", "instance", "K", "pose"):
            assert np.array_equal(a[k], b[k]), k
        assert all(np.array_equal(x, y) for x, y in zip(a["rgb"], b["rgb"]))
    assert s3.verify() == []

    # an unlisted shard (a dead writer's) goes, listed ones stay
    orphan = ShardWriter(s3_url).write([synthetic_scene(rng, "alpha", "orphan", n_points=300, image_sizes=[])])
    listed = s3.shards
    report = gc(s3_url, min_age_s=0)
    assert report.removed_shards == [orphan.id]
    loc = StoreLocation.of(s3_url)
    assert loc.file_sizes(SHARD_DIR, orphan.id) == {}
    assert ShardStore.open(s3_url).verify() == []
    assert gc(s3_url, min_age_s=0).removed_shards == []  # nothing left to remove
    # a young unlisted shard is left alone: a writer may be about to commit it
    young = ShardWriter(s3_url).write([synthetic_scene(rng, "alpha", "young", n_points=300, image_sizes=[])])
    assert gc(s3_url, min_age_s=600).removed_shards == []
    assert inspect_main([s3_url, "--gc", "--min-age", "600"]) == 0
    assert loc.file_sizes(SHARD_DIR, young.id)

    assert inspect_main([s3_url, "--verify"]) == 0
    out = capsys.readouterr().out
    assert s3_url in out and "alpha" in out

    # damage one chunk object: verify names it, the CLI fails
    sid = listed[0]
    chunk = sorted(f for f in loc.file_sizes(SHARD_DIR, sid) if "points/coord/c/" in f)[0]
    data = bytearray(loc.read_bytes(SHARD_DIR, sid, chunk))
    data[len(data) // 2] ^= 0xFF
    loc.write_bytes(bytes(data), SHARD_DIR, sid, chunk)
    problems = ShardStore.open(s3_url).verify()
    assert problems == [f"shard '{sid}': file '{chunk}' content differs from its checksum"]
    assert inspect_main([s3_url, "--verify"]) != 0


def test_without_conditional_writes_a_second_writer_is_refused(s3_url, monkeypatch):
    """The fallback for object stores that ignore If-None-Match: one writer at a
    time, a live lock held by another writer makes a commit fail loudly."""
    monkeypatch.setenv(CONDITIONAL_ENV, "0")
    rng = np.random.default_rng(2)
    w = ShardWriter(s3_url)
    assert commit(s3_url, None, [w.write([synthetic_scene(rng, "a", "x", n_points=200, image_sizes=[])])]) == 1
    loc = StoreLocation.of(s3_url)
    assert not loc.conditional_writes and WRITER_LOCK not in loc.listdir(MANIFEST_DIR)  # released
    shard = w.write([synthetic_scene(rng, "a", "y", n_points=200, image_sizes=[])])
    with pytest.raises(ManifestConflictError):  # v1 exists: plain lost race, no overwrite
        commit(s3_url, None, [shard])
    # another writer is mid-commit: refused, and the manifest is untouched
    import json
    import time

    loc.write_bytes(json.dumps({"token": "other", "host": "elsewhere", "pid": 1, "time": time.time()}).encode(),
                    MANIFEST_DIR, WRITER_LOCK)
    with pytest.raises(ConcurrentWriterError, match="one writer at a time"):
        commit(s3_url, 1, [shard])
    assert list_versions(s3_url) == [1]
    # a stale lock (its writer died) is taken over
    loc.write_bytes(json.dumps({"token": "dead", "time": time.time() - 3600}).encode(), MANIFEST_DIR, WRITER_LOCK)
    assert commit(s3_url, 1, [shard]) == 2


@pytest.mark.slow
def test_loader_from_s3_gives_the_local_batches_with_bounded_cache(s3_server, s3_url, tmp_path, monkeypatch):
    """Two DataLoader workers stream from s3:// (batched reads, the next batch
    prefetched) and produce exactly the batches of the same store on disk; the
    chunk cache stays within CONCERTO_STORE_CACHE_MB."""
    import json
    import os
    import subprocess
    import sys
    import textwrap
    from pathlib import Path

    from pipelines.store.location import CACHE_ENV
    from testkit.pretrain_store import write_store

    local = write_store(tmp_path / "s", shard_sizes=(3, 2), n_points=800, without_images=1)
    server_fs = s3_server.filesystem()
    server_fs.put(local + "/", s3_url.removeprefix("s3://"), recursive=True)
    # A fresh interpreter: DataLoader's forked workers exit with code 1 in a
    # process that has run prefect_test_harness (the flow tests run earlier in
    # the suite), whatever the store.
    script = textwrap.dedent(f"""
        import json
        from concerto.data import ShardLoader
        from tests.test_data_loader import SPEC, _same
        disk = list(ShardLoader({local!r}, SPEC, batch_size=2, num_workers=2, seed=3).epoch())
        s3 = list(ShardLoader({s3_url!r}, SPEC, batch_size=2, num_workers=2, seed=3).epoch())
        assert len(s3) == len(disk), (len(s3), len(disk))
        for a, b in zip(s3, disk):
            _same(a, b)
        print(json.dumps({{"batches": len(s3)}}))
    """)
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", script], env=env, cwd=root, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1])["batches"] > 2

    # in-process: prefetch then get_many returns what per-item reads return
    monkeypatch.setenv(CACHE_ENV, "0.5")
    store = ShardStore.open(s3_url)
    idx = list(range(len(store)))
    first = store.get_many(idx[:3])
    store.prefetch(idx[3:6])
    assert tuple(idx[3:6]) in store._prefetched  # reading in the background on zarr's loop
    ahead = store.get_many(idx[3:6])
    assert store._prefetched == {}
    for got, i in zip(first + ahead, idx[:6]):
        want = store[i]
        assert got["key"] == want["key"] and np.array_equal(got["coord"], want["coord"])
        assert all(np.array_equal(x, y) for x, y in zip(got["corr_point"], want["corr_point"]))
    cache = store.location.read_store()
    assert 0 < cache._state.current_size <= 0.5 * 2**20 and cache._state.hits > 0


@pytest.mark.slow
def test_migrate_and_linear_probe_on_s3(s3_server, s3_url, tmp_path, monkeypatch):
    """concerto-store --migrate rewrites a format-1 store in the bucket; the
    linear probe reads labelled scenes from s3:// like from a folder."""
    import json

    from concerto.eval.linear_probe import run_probe
    from pipelines.store import manifest as manifest_mod, writer as writer_mod
    from testkit.room_store import build_room_store

    class FormatOneWriter(ShardWriter):
        def _compressors(self, image):
            return [c for c in super()._compressors(image) if type(c).__name__ != "Crc32cCodec"]

    monkeypatch.setattr(writer_mod, "SHARD_FORMAT", "concerto-shard/1")
    monkeypatch.setattr(manifest_mod, "SHARD_FORMAT", "concerto-shard/1")
    scenes = mixed_scenes(np.random.default_rng(4))
    commit(s3_url, None, [FormatOneWriter(s3_url).write(scenes)])
    monkeypatch.undo()
    assert load_manifest(s3_url).store_format == 1
    assert inspect_main([s3_url, "--migrate"]) == 0
    m = load_manifest(s3_url)
    assert m.version == 2 and m.store_format == 2
    migrated = ShardStore.open(s3_url)
    for ps in scenes:
        assert_scene_equal(migrated.read_scene(ps.key), ps)
    assert migrated.verify() == []

    rooms = build_room_store(tmp_path / "rooms", num_scenes=4, points_per_scene=2000, frames_per_scene=4,
                             image_size=(48, 36))
    bucket = s3_url.removeprefix("s3://").split("/")[0]
    s3_server.filesystem().put(rooms.rstrip("/") + "/", f"{bucket}/rooms", recursive=True)
    kw = dict(config="tiny", epochs=3, progress=False)
    on_s3 = run_probe(f"s3://{bucket}/rooms", "random", **kw)
    on_disk = run_probe(rooms, "random", **kw)
    assert on_s3["split"] == on_disk["split"] and on_s3["val"] == on_disk["val"]
    assert json.dumps(on_s3["val"])  # a complete, JSON-able result
