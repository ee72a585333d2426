"""Incremental updates: new sources, changed scenes, removed sources, failed
writes and garbage collection, checked against the files on disk. Shards are
written as the build writes them (``ShardWriter``) and committed with
``commit_update``."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from pipelines.store import (
    ManifestConflictError,
    ShardStore,
    ShardWriter,
    commit_update,
    gc,
    load_manifest,
    plan_update,
)
from preprocess.sources.base import SceneRef
from testkit.random_store_scenes import random_processed_scene
from testkit.store_update import write_and_commit

from test_store import assert_scene_equal


def hash_tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def ref(ps) -> SceneRef:
    return SceneRef(ps.scene.source, ps.scene.scene_id, ps.scene.content_hash)


def dataset(rng, source, n, **kw):
    return [random_processed_scene(rng, source, f"{source}{i:02d}", n_points=int(rng.integers(200, 600)), **kw) for i in range(n)]


def build(url, scenes, base=None, sources=None, **kw):
    manifest = load_manifest(url, base) if base is not None else None
    plan = plan_update(manifest, [ref(p) for p in scenes], sources)
    return plan, write_and_commit(url, plan, [p for p in scenes if p.key in {r.key for r in plan.to_process}], **kw)


def snapshot(store: ShardStore) -> list:
    return [(s["key"], s["image_group"], s["coord"].tobytes(), [im.tobytes() for im in s["rgb"]]) for s in (store[i] for i in range(len(store)))]


def test_plan_categories(tmp_path):
    rng = np.random.default_rng(0)
    url = str(tmp_path / "store")
    a, c = dataset(rng, "a", 4), dataset(rng, "c", 1)
    build(url, a + c)
    m = load_manifest(url)
    assert plan_update(None, [ref(p) for p in a]).summary() == "plan against empty store: 4 new, 0 changed, 0 unchanged, 0 removed"
    b = dataset(rng, "b", 2)
    refs = [SceneRef("a", "a00", "other-hash"), ref(a[1]), ref(a[3])] + [ref(p) for p in b]
    plan = plan_update(m, refs, sources_present=["a", "b"])
    assert plan.base_version == 1
    assert [r.key for r in plan.new] == ["b/b00", "b/b01"]
    assert [r.key for r in plan.changed] == ["a/a00"]
    assert plan.unchanged == ["a/a01", "a/a03"]
    assert plan.removed == ["a/a02", "c/c00"]  # vanished from its source; source left the build
    with pytest.raises(ValueError, match="duplicate scene keys"):
        plan_update(m, [ref(a[0]), ref(a[0])])
    with pytest.raises(ValueError, match="not in sources_present"):
        plan_update(m, [ref(b[0])], sources_present=["a"])


def test_default_policy_compacts_mostly_dead_shard(tmp_path):
    rng = np.random.default_rng(9)
    url = str(tmp_path / "store")
    big = random_processed_scene(rng, "a", "big", n_points=900)
    small = random_processed_scene(rng, "a", "small", n_points=100)
    build(url, [big, small])
    (old,) = load_manifest(url).shards
    big2 = random_processed_scene(rng, "a", "big", n_points=800, content_hash="v2")
    _, res = build(url, [big2, small], base=1)  # live fraction 100/1000 < 0.5
    assert res.compacted == [old.id] and len(res.written) == 2
    m = load_manifest(url)
    assert old.id not in [sh.id for sh in m.shards]
    store = ShardStore.open(url)
    assert_scene_equal(store.read_scene("a/big"), big2)
    assert_scene_equal(store.read_scene("a/small"), small)
    small2 = random_processed_scene(rng, "a", "small", n_points=100, content_hash="v2")
    _, res = build(url, [big2, small2], base=2)  # small's shard empties: dropped, nothing rewritten
    assert res.compacted == [] and len(res.written) == 1
    assert len(load_manifest(url).shards) == 2


def test_add_source_leaves_old_shards_byte_identical(tmp_path):
    rng = np.random.default_rng(1)
    url = str(tmp_path / "store")
    a, b = dataset(rng, "a", 4), dataset(rng, "b", 3)
    plan, res = build(url, a, target_shard_bytes=20_000)
    assert res.version == 1 and len(res.written) >= 2  # small target: several shards
    v1 = ShardStore.open(url)
    before_files, before_samples = hash_tree(tmp_path / "store" / "shards"), snapshot(v1)

    plan, res = build(url, a + b, base=1)
    assert [r.key for r in plan.new] == [p.key for p in b] and plan.unchanged == [p.key for p in a]
    assert not plan.changed and not plan.removed
    after = hash_tree(tmp_path / "store" / "shards")
    assert {k: after[k] for k in before_files} == before_files  # old files untouched
    assert len(after) > len(before_files)
    v2 = ShardStore.open(url)
    assert v2.version == 2 and load_manifest(url, 2).parent == 1
    assert v2.shards[: len(v1.shards)] == v1.shards and len(v2.shards) == len(v1.shards) + len(res.written)
    assert sorted(v2.scene_keys()) == sorted(p.key for p in a + b)
    for p in a + b:
        assert_scene_equal(v2.read_scene(p.key), p)
    assert snapshot(ShardStore.open(url, version=1)) == before_samples
    # re-running the same build is a no-op: no files, no manifest
    plan, res = build(url, a + b, base=2)
    assert plan.is_noop and res.version is None and hash_tree(tmp_path / "store" / "shards") == after


def _changed(ps, rng):
    """A new version of scene ``ps`` (same key, new content and hash)."""
    new = random_processed_scene(rng, ps.scene.source, ps.scene.scene_id, n_points=333, content_hash="changed-" + ps.scene.content_hash)
    return new


def test_changed_scene_goes_to_new_shard_old_files_untouched(tmp_path):
    rng = np.random.default_rng(2)
    url = str(tmp_path / "store")
    a = dataset(rng, "a", 4)
    build(url, a, target_shard_bytes=60_000)
    m1 = load_manifest(url)
    holder = m1.scenes()[a[1].key][0]
    assert len(m1.shard(holder).scenes) > 1
    before = hash_tree(tmp_path / "store" / "shards")
    a2 = list(a)
    a2[1] = _changed(a[1], rng)
    plan, res = build(url, a2, base=1, compact_below=0.0)
    assert [r.key for r in plan.changed] == [a[1].key] and len(plan.unchanged) == 3
    assert res.compacted == [] and len(res.written) == 1
    after = hash_tree(tmp_path / "store" / "shards")
    assert {k: after[k] for k in before} == before
    m2 = load_manifest(url)
    assert m2.scenes()[a[1].key][0] == res.written[0].id
    assert a[1].key not in [s.key for s in m2.shard(holder).scenes]  # old copy no longer served
    assert [sh.id for sh in m2.shards if sh.id != res.written[0].id] == [sh.id for sh in m1.shards]
    store = ShardStore.open(url)
    assert_scene_equal(store.read_scene(a[1].key), a2[1])
    assert_scene_equal(ShardStore.open(url, version=1).read_scene(a[1].key), a[1])
    assert len(store) == sum(p.image_groups.shape[0] for p in a2)


def test_changed_scene_rewrites_only_its_shard_when_compacting(tmp_path):
    rng = np.random.default_rng(3)
    url = str(tmp_path / "store")
    a = dataset(rng, "a", 6)
    build(url, a, target_shard_bytes=60_000)
    m1 = load_manifest(url)
    assert len(m1.shards) >= 3
    holder = m1.scenes()[a[2].key][0]
    assert len(m1.shard(holder).scenes) > 1
    others = [sh.id for sh in m1.shards if sh.id != holder]
    root = tmp_path / "store" / "shards"
    before = {sid: hash_tree(root / sid) for sid in others}
    a2 = list(a)
    a2[2] = _changed(a[2], rng)
    _, res = build(url, a2, base=1, compact_below=1.0)
    assert res.compacted == [holder]
    m2 = load_manifest(url)
    ids = [sh.id for sh in m2.shards]
    assert holder not in ids and all(sid in ids for sid in others)
    assert {sid: hash_tree(root / sid) for sid in others} == before  # untouched
    rewritten = [sh for sh in m2.shards if sh.id not in others and a[2].key not in {s.key for s in sh.scenes}]
    assert len(rewritten) == 1
    assert {s.key for s in rewritten[0].scenes} == {s.key for s in m1.shard(holder).scenes} - {a[2].key}
    store = ShardStore.open(url)
    for p in a2:
        assert_scene_equal(store.read_scene(p.key), p)


def test_remove_source_is_manifest_only_then_gc(tmp_path):
    rng = np.random.default_rng(4)
    url = str(tmp_path / "store")
    a, b = dataset(rng, "a", 3), dataset(rng, "b", 2)
    build(url, a + b)
    root = tmp_path / "store" / "shards"
    before = hash_tree(root)
    plan, res = build(url, a, base=1, sources=["a"])
    assert sorted(plan.removed) == sorted(p.key for p in b) and not plan.to_process
    assert res.version == 2 and res.written == []
    assert hash_tree(root) == before  # no file written or removed
    store = ShardStore.open(url)
    assert sorted(store.scene_keys()) == sorted(p.key for p in a)
    assert set(load_manifest(url).source_counts()) == {"a"}
    # b's shards are still on disk for v1; gc keeping only the latest removes them
    b_shards = {sid for sid, _ in (load_manifest(url, 1).scenes()[p.key] for p in b)}
    report = gc(url, min_age_s=0)
    assert report.removed_shards == []  # v1 still kept, still lists them
    report = gc(url, keep_last=1, min_age_s=0)
    assert set(report.removed_shards) == b_shards and report.removed_manifests == [1]
    assert not any((root / sid).exists() for sid in b_shards)
    for p in a:
        assert_scene_equal(ShardStore.open(url).read_scene(p.key), p)


def test_failed_write_mid_shard_keeps_previous_version(tmp_path, monkeypatch):
    rng = np.random.default_rng(5)
    url = str(tmp_path / "store")
    a, b = dataset(rng, "a", 3), dataset(rng, "b", 3)
    build(url, a)
    before = snapshot(ShardStore.open(url))
    calls = {"n": 0}
    real = ShardWriter._write_array

    def failing(self, *args, **kw):
        calls["n"] += 1
        if calls["n"] == 7:
            raise OSError("disk full (injected)")
        return real(self, *args, **kw)

    monkeypatch.setattr(ShardWriter, "_write_array", failing)
    with pytest.raises(OSError, match="injected"):
        build(url, a + b, base=1)
    monkeypatch.undo()
    store = ShardStore.open(url)
    assert store.version == 1 and snapshot(store) == before
    listed = {sh.id for sh in load_manifest(url).shards}
    partial = [d.name for d in (tmp_path / "store" / "shards").iterdir() if d.name not in listed]
    assert len(partial) == 1 and (tmp_path / "store" / "shards" / partial[0] / "points").exists()
    assert gc(url).removed_shards == []  # too young: a writer might still commit it
    from pipelines.store.inspect import main as inspect_main

    assert inspect_main([url, "--gc", "--min-age", "0", "--dry-run"]) == 0
    assert (tmp_path / "store" / "shards" / partial[0]).exists()
    assert gc(url, min_age_s=0).removed_shards == partial
    assert not (tmp_path / "store" / "shards" / partial[0]).exists()
    # the retry succeeds
    _, res = build(url, a + b, base=1)
    assert res.version == 2 and len(ShardStore.open(url).scene_keys()) == 6


def test_changed_scene_not_rewritten_keeps_its_old_version(tmp_path):
    rng = np.random.default_rng(6)
    url = str(tmp_path / "store")
    a = dataset(rng, "a", 3)
    build(url, a)
    new_ok = random_processed_scene(rng, "a", "new_ok")
    changed = _changed(a[0], rng)
    scenes = [changed, a[1], a[2], new_ok]
    plan = plan_update(load_manifest(url), [ref(p) for p in scenes])
    assert {r.key for r in plan.to_process} == {changed.key, new_ok.key}
    res = write_and_commit(url, plan, [new_ok])  # the changed scene failed to build
    assert res.version == 2
    store = ShardStore.open(url)
    assert sorted(store.scene_keys()) == sorted([p.key for p in a] + [new_ok.key])
    assert_scene_equal(store.read_scene(a[0].key), a[0])  # old version kept


def test_concurrent_commit_conflict(tmp_path):
    rng = np.random.default_rng(7)
    url = str(tmp_path / "store")
    a = dataset(rng, "a", 2)
    build(url, a)
    b, c = dataset(rng, "b", 1), dataset(rng, "c", 1)
    m = load_manifest(url)
    plan_b = plan_update(m, [ref(p) for p in a + b])
    plan_c = plan_update(m, [ref(p) for p in a + c])
    assert write_and_commit(url, plan_b, b).version == 2
    with pytest.raises(ManifestConflictError, match="re-plan"):
        write_and_commit(url, plan_c, c)
    assert sorted(ShardStore.open(url).scene_keys()) == sorted(p.key for p in a + b)
    plan_c = plan_update(load_manifest(url), [ref(p) for p in a + b + c])
    assert write_and_commit(url, plan_c, c).version == 3


@pytest.mark.slow
def test_parallel_writers_then_one_commit(tmp_path):
    """The distributed shape of a build: workers write shards independently
    (here: two Dask worker processes), one commit lists them."""
    from dask.distributed import Client, LocalCluster

    from pipelines.store import pack_scenes

    rng = np.random.default_rng(8)
    url = str(tmp_path / "store")
    a = dataset(rng, "a", 4)
    plan = plan_update(None, [ref(p) for p in a])
    groups = pack_scenes(a, target_bytes=60_000)
    assert len(groups) >= 2
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0", host="127.0.0.1") as cluster, Client(cluster) as client:
        written = client.gather(client.map(lambda g: ShardWriter(url).write(g), groups, pure=False))
        res = commit_update(url, plan, written)
        store = ShardStore.open(url)
        # the reader pickles to workers and reads there
        keys = client.gather(client.map(lambda i, s=store: s[i]["key"], list(range(len(store)))))
    assert res.version == 1 and len({sh.id for sh in written}) == len(groups)
    assert sorted(set(keys)) == sorted(p.key for p in a)
    for p in a:
        assert_scene_equal(store.read_scene(p.key), p)
    with pytest.raises(ValueError, match="did not ask for"):
        commit_update(url, plan_update(load_manifest(url), [ref(p) for p in a]), written)
