"""The library half of build-dataset (pipelines.build, pipelines.quarantine):
source specs, batching, per-scene failure capture, incremental commits. No
Prefect server; tiny synthetic rooms and real Zarr stores."""
from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from pipelines.build.batch import BatchItem, build_batch
from pipelines.build.commit import commit_batch, commit_removals
from pipelines.build.options import SceneSettings, SourceSpec
from pipelines.build.plan import default_frame_gap, make_batches, plan_build
from pipelines.build.retry import TransientBatchError, is_transient
from pipelines.quarantine import SceneFailure, load_quarantine, quarantine_path, refresh_after_discovery, update_quarantine
from pipelines.store import ShardStore, latest_version, load_manifest
from preprocess.sources.base import SceneRef

TINY = dict(frames_per_scene=4, image_width=64, image_height=48, points_per_scene=1500)
SETTINGS = SceneSettings(min_correspondences=10)


def test_source_spec_parse_and_validate():
    s = SourceSpec.parse("synthetic:/data/rooms:num_scenes=3,seed=7,name=demo,frame_gap=2,hash_mode=content")
    assert (s.kind, s.path, s.name, s.frame_gap) == ("synthetic", "/data/rooms", "demo", 2)
    assert s.options == {"num_scenes": 3, "seed": 7, "hash_mode": "content"} and s.source_name == "demo"
    assert SourceSpec.parse("scannet:/data/scannet").options == {}
    assert SourceSpec.parse("scannet:rel/dir").path == os.path.abspath("rel/dir")
    assert SourceSpec.parse("s3dis:/a:b/c").path == "/a:b/c"  # no k=v tail: the colon is part of the path
    with pytest.raises(ValueError, match="kind:path"):
        SourceSpec.parse("synthetic")
    with pytest.raises(ValueError, match="not key=value"):
        SourceSpec.parse("synthetic:/x:a=1,oops")
    with pytest.raises(ValueError, match="unknown key"):
        SourceSpec.from_dict({"kind": "synthetic", "path": "/x", "colour": 1})
    with pytest.raises(ValueError, match="'path' is required"):
        SourceSpec.from_dict({"kind": "synthetic"})
    assert [default_frame_gap(k) for k in ("scannet", "scannetpp", "arkitscenes", "s3dis", "synthetic")] == [75, 20, 50, 5, 1]


def test_make_batches_never_mixes_sources():
    spec_a, spec_b = SourceSpec("synthetic", "/a", "a"), SourceSpec("synthetic", "/b", "b")
    items = [BatchItem(spec_a, SceneRef("a", f"s{i}", "h"), 1) for i in range(5)]
    items += [BatchItem(spec_b, SceneRef("b", f"s{i}", "h"), 1) for i in range(2)]
    batches = make_batches(reversed(items), 2)
    assert [[it.key for it in b] for b in batches] == [["a/s0", "a/s1"], ["a/s2", "a/s3"], ["a/s4"], ["b/s0", "b/s1"]]
    with pytest.raises(ValueError):
        make_batches(items, 0)


def test_transient_errors_are_told_apart():
    assert is_transient(TimeoutError()) and is_transient(ConnectionResetError())
    assert is_transient(OSError(errno.EIO, "disk hiccup"))
    assert not is_transient(FileNotFoundError(errno.ENOENT, "gone"))
    assert not is_transient(ValueError("bad input"))


def test_retry_condition_only_retries_transient_failures():
    from prefect.states import Failed

    from flows.build_dataset import _retry_if_transient

    assert _retry_if_transient(None, None, Failed(data=TransientBatchError("s/x", "load", TimeoutError("slow"))))
    assert not _retry_if_transient(None, None, Failed(data=ValueError("bad config")))


def test_batch_builds_good_scenes_and_quarantines_bad_ones(tmp_path):
    spec = SourceSpec("synthetic", str(tmp_path / "rooms"), "syn", dict(TINY, num_scenes=3, seed=11))
    refs = spec.make().discover()
    cams = tmp_path / "rooms" / refs[1].scene_id / "cameras.json"
    cams.write_text("{not json")
    refs = spec.make().discover()
    store = tmp_path / "store"
    items = [BatchItem(spec, r, 1) for r in refs]
    seen = []
    res = build_batch(str(store), items, SETTINGS, shard_size=1, on_scene=lambda k, o: seen.append((k, o)))
    assert sorted(res.scene_keys) == [refs[0].key, refs[2].key]
    assert len(res.shards) == 2 and res.points == 2 * TINY["points_per_scene"]
    (f,) = res.failures
    assert (f.key, f.stage, f.error_type) == (refs[1].key, "load", "SourceError")
    assert "cameras.json" in f.message and f.content_hash == refs[1].content_hash
    assert (refs[1].key, "failed: load") in seen
    assert all(res.timings[s] >= 0 for s in ("load", "render", "process", "write"))
    # the shards are written but unlisted until committed
    assert latest_version(store) is None
    v = commit_batch(str(store), res.shards, note="test")
    # a batch commit is "partial": readers see it only when asked for that version
    assert sorted(ShardStore.open(str(store), version=v).scene_keys()) == sorted(res.scene_keys)
    assert load_manifest(store, v).state == "partial"
    # the committed hash is the one the plan compared
    hashes = {k: e.content_hash for k, (_, e) in load_manifest(store, v).scenes().items()}
    assert hashes[refs[0].key] == refs[0].content_hash


def test_plan_commit_changed_scene_and_removals(tmp_path):
    spec = SourceSpec("synthetic", str(tmp_path / "rooms"), "syn", dict(TINY, num_scenes=2, seed=12))
    refs = spec.make().discover()
    store = str(tmp_path / "store")
    res = build_batch(store, [BatchItem(spec, r, 1) for r in refs], SETTINGS, shard_size=2)
    v1 = commit_batch(store, res.shards)
    plan = plan_build(store, refs, ["syn"])
    assert plan.unchanged == sorted(r.key for r in refs) and not plan.to_process

    # a changed scene: a new hash is re-built and re-pointed, the old shard stays untouched
    changed = SceneRef(refs[0].source, refs[0].scene_id, "0" * 40)
    plan = plan_build(store, [changed, refs[1]], ["syn"])
    assert [r.key for r in plan.changed] == [refs[0].key]
    res2 = build_batch(store, [BatchItem(spec, changed, 1)], SETTINGS, shard_size=2)
    v2 = commit_batch(store, res2.shards)
    m = load_manifest(store, v2)
    assert m.scenes()[refs[0].key][0] == res2.shards[0].id and m.scenes()[refs[0].key][1].content_hash == "0" * 40
    assert m.scenes()[refs[1].key][0] == res.shards[0].id
    assert len(ShardStore.open(store, version=v1).scene_keys()) == 2

    # adding is the default: a build of another source keeps these scenes listed
    assert plan_build(store, [], ["other"]).removed == []
    # with prune, a source that left loses them; one whose discovery failed keeps them
    assert plan_build(store, [], ["syn"], failed_sources=["syn"], prune=True).removed == []
    plan = plan_build(store, [], ["other"], prune=True)
    assert sorted(plan.removed) == sorted(r.key for r in refs)
    v3 = commit_removals(store, plan.removed)
    assert v3 == v2 + 1 and ShardStore.open(store, version=v3).scene_keys() == []


def test_quarantine_report_is_cumulative(tmp_path):
    store = str(tmp_path / "store")
    a = SceneFailure.of("s/a", "s", "a", "h1", "render", RuntimeError("no mesh"))
    b = SceneFailure.of("s/b", "s", "b", "h2", "load", ValueError("bad pose"))
    update_quarantine(store, [a, b], manifest_version=None)
    assert sorted(load_quarantine(store)) == ["s/a", "s/b"]
    assert load_quarantine(store)["s/a"].message == "no mesh" and "RuntimeError" in load_quarantine(store)["s/a"].traceback
    update_quarantine(store, [], resolved=["s/a"], manifest_version=3)
    assert sorted(load_quarantine(store)) == ["s/b"]
    # discovery no longer lists s/b: its entry is stale; t/* failed as a whole
    t = SceneFailure.of("t/*", "t", "*", "", "discover", FileNotFoundError("no such folder"))
    refresh_after_discovery(store, [t], discovered_sources=["s"], discovered_keys=["s/c"])
    assert sorted(load_quarantine(store)) == ["t/*"]
    latest = Path(quarantine_path(store))
    raw = json.loads(latest.read_text())
    assert raw["count"] == 1 and raw["scenes"][0]["stage"] == "discover" and raw["version"] == 3
    latest.write_text("{")
    with pytest.raises(ValueError, match=latest.name):
        load_quarantine(store)


def test_frame_gap_is_applied_at_read_time_when_the_adapter_can_skip_frames(tmp_path):
    from pipelines.build.plan import fold_frame_gap

    scannet = SourceSpec("scannet", str(tmp_path), None, {})
    folded, gap = fold_frame_gap(scannet, 75)
    assert folded.options == {"frame_gap": 75} and gap == 1
    # a user-chosen frame_gap option wins (or frame_skip, its old name, as manifests
    # of older stores record it); the gap stays in the image-group stage
    for option in ("frame_gap", "frame_skip"):
        own = SourceSpec("scannet", str(tmp_path), None, {option: 2})
        assert fold_frame_gap(own, 75) == (own, 75)
    # gap 1: nothing to fold
    assert fold_frame_gap(scannet, 1) == (scannet, 1)
    # the synthetic source has no frame_gap option
    synthetic = SourceSpec("synthetic", str(tmp_path), None, {"num_scenes": 1})
    assert fold_frame_gap(synthetic, 5) == (synthetic, 5)


def test_hm3d_and_re10k_sources_build_into_one_store(tmp_path):
    """The two simulated/lifted sources go through the same build path as every
    other (build_batch is what the flow's Dask tasks run): one store, both sources,
    the unreadable house quarantined."""
    from testkit.hm3d_house import write_house

    from pipelines.build.commit import commit_complete
    from pipelines.store import ShardStore
    from testkit.box_room_clip import write_box_room_clip

    hm3d_root = tmp_path / "hm3d"
    write_house(hm3d_root / "val" / "00800-plainhouse", "plain")
    (hm3d_root / "val" / "00802-broken").mkdir(parents=True)
    (hm3d_root / "val" / "00802-broken" / "broken.glb").write_bytes(b"not a glb")
    re10k_root = write_box_room_clip(tmp_path / "re10k", "clip0")
    specs = [
        SourceSpec("hm3d", str(hm3d_root / "val"), None,
                   dict(backend="mesh", image_width=40, image_height=40, point_spacing=0.05,
                        render_backend="embree", cache_dir=str(tmp_path / "cache"), seed=3)),
        SourceSpec("re10k", str(re10k_root), None, dict(lifter="given-depth", conf_percentile=None, voxel_size=0.05)),
    ]
    store = str(tmp_path / "store")
    for spec in specs:
        items = [BatchItem(spec, ref, 1) for ref in spec.make().discover()]
        result = build_batch(store, items, SceneSettings(min_correspondences=20), shard_size=4)
        commit_batch(store, result.shards, note=spec.kind)
        if spec.kind == "hm3d":
            assert [f.key for f in result.failures] == ["hm3d/00802-broken_unreadable"]
            assert "broken.glb" in result.failures[0].message
        else:
            assert result.failures == []
    commit_complete(store, "test")
    opened = ShardStore.open(store)
    sources = {k.split("/")[0] for k in opened.scene_keys()}
    assert sources == {"hm3d", "re10k"}
    sample = opened[0]
    assert len(sample["rgb"]) == 4 and all(len(c) > 0 for c in sample["corr_point"])
