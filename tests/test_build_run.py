"""``pipelines.build.run_build``: a whole build without Prefect, through the
default in-process executor, a process pool and a real Dask cluster. Tiny
synthetic rooms, real Zarr stores."""
from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import textwrap
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from flows.settings import PROJECT_ROOT
from pipelines.build import BuildOptions, SceneSettings, run_build
from pipelines.build.retry import TransientBatchError, call_with_retries, is_transient
from pipelines.quarantine import load_quarantine
from pipelines.store import ShardStore, latest_version, load_manifest

TINY = dict(frames_per_scene=4, image_width=64, image_height=48, points_per_scene=1500)
SETTINGS = SceneSettings(min_correspondences=10)


def synthetic(path: Path, name: str, num_scenes: int, seed: int) -> dict:
    return {"kind": "synthetic", "path": str(path), "name": name, "options": dict(TINY, num_scenes=num_scenes, seed=seed)}


def manifest_content(store: Path) -> tuple[list, dict]:
    """The latest manifest without shard ids and commit order: which scenes
    share a shard, and what is recorded about each scene."""
    m = load_manifest(store, latest_version(store))
    groups = sorted(tuple(sorted(s.key for s in sh.scenes)) for sh in m.shards)
    entries = {k: e.to_json() for k, (_, e) in m.scenes().items()}
    return groups, entries


def test_run_build_without_prefect_or_dask(tmp_path):
    """A fresh interpreter: build, re-run (all skipped), a source that fails
    discovery keeps its scenes listed; prefect and dask.distributed are never imported."""
    script = textwrap.dedent(f"""
        import json, sys
        from pipelines.build import BuildOptions, SceneSettings, run_build
        good = {synthetic(tmp_path / "a", "synthA", 3, seed=1)!r}
        bad = {{"kind": "synthetic", "path": {str(tmp_path / "not-a-dir")!r}, "name": "synthB",
                "options": {{"num_scenes": 1}}}}
        open({str(tmp_path / "not-a-dir")!r}, "w").write("a file where a folder should be")
        store = {str(tmp_path / "store")!r}
        kw = dict(settings=SceneSettings(min_correspondences=10), scenes_per_task=2, shard_size=2)
        s1 = run_build(BuildOptions(store=store, sources=[good], **kw)).as_dict()
        s2 = run_build(BuildOptions(store=store, sources=[good, bad], **kw)).as_dict()
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("prefect", "distributed", "prefect_dask"))
        print(json.dumps(dict(s1=s1, s2=s2, loaded=loaded)))
    """)
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["loaded"] == [], "run_build must not import prefect or dask.distributed"
    s1, s2 = res["s1"], res["s2"]
    assert s1["scenes"] == dict(discovered=3, skipped=0, new=3, changed=0, processed=3, quarantined=0, removed=0)
    # one partial version per batch, then the complete version that ends the run
    assert s1["batches"] == 2 and s1["shards_written"] == 2 and s1["manifest_version"] == 3
    assert Path(s1["report"]).is_file()
    # re-run with a second source whose discovery fails: nothing rebuilt, nothing removed
    assert s2["scenes"] == dict(discovered=3, skipped=3, new=0, changed=0, processed=0, quarantined=1, removed=0)
    assert s2["failed_sources"] == ["synthB"] and s2["manifest_version"] == 3  # nothing changed: no new version
    assert s2["quarantined"][0]["key"] == "synthB/*" and s2["quarantined"][0]["stage"] == "discover"
    assert sorted(load_quarantine(tmp_path / "store")) == ["synthB/*"]
    assert len(ShardStore.open(str(tmp_path / "store")).scene_keys()) == 3


@pytest.mark.slow
def test_process_pool_and_dask_client_give_the_serial_manifest(tmp_path):
    from distributed import Client, LocalCluster

    src = synthetic(tmp_path / "src", "synth", 5, seed=4)
    kw = dict(settings=SETTINGS, scenes_per_task=1, shard_size=2)
    serial = run_build(BuildOptions(store=str(tmp_path / "serial"), sources=[src], **kw))
    assert serial.scenes["processed"] == 5 and serial.batches == 5
    expected = manifest_content(tmp_path / "serial")

    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        pooled = run_build(BuildOptions(store=str(tmp_path / "pool"), sources=[src], **kw), executor=pool)
    assert pooled.scenes == serial.scenes
    assert manifest_content(tmp_path / "pool") == expected

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      host="127.0.0.1") as cluster, Client(cluster) as client:
        dasked = run_build(BuildOptions(store=str(tmp_path / "dask"), sources=[src], **kw), executor=client)
    assert dasked.scenes == serial.scenes and dasked.batches_failed == 0
    assert manifest_content(tmp_path / "dask") == expected
    # every batch was committed on its own: one manifest version per batch, and the complete one
    assert dasked.manifest_version == serial.manifest_version == 6


def test_only_transient_errors_are_retried(monkeypatch):
    monkeypatch.setattr("time.sleep", lambda s: None)
    calls = []

    def flaky(n_failures, exc):
        calls.append(1)
        if len(calls) <= n_failures:
            raise exc
        return "ok"

    assert call_with_retries(flaky, 2, TimeoutError("slow disk"), retries=3) == "ok" and len(calls) == 3
    calls.clear()
    with pytest.raises(TimeoutError):
        call_with_retries(flaky, 5, TimeoutError("slow disk"), retries=2)
    assert len(calls) == 3
    calls.clear()
    with pytest.raises(ValueError):
        call_with_retries(flaky, 1, ValueError("bad input"), retries=3)
    assert len(calls) == 1
    assert is_transient(TransientBatchError("s/x", "load", OSError(5, "EIO")))
    assert not is_transient(ValueError("bad"))


def test_run_build_rejects_bad_arguments(tmp_path):
    src = synthetic(tmp_path / "src", "s", 1, seed=0)
    with pytest.raises(ValueError, match="no sources given and the store .* records none"):
        run_build(BuildOptions(store=str(tmp_path / "store")))
    with pytest.raises(ValueError, match="source names must be unique"):
        run_build(BuildOptions(store=str(tmp_path / "store"), sources=[src, src]))
    with pytest.raises(ValueError, match="shard_size must be >= 1"):
        BuildOptions(store=str(tmp_path / "store"), sources=[src], shard_size=0)
    with pytest.raises(ValueError, match="eps must be > 0"):
        BuildOptions(store=str(tmp_path / "store"), sources=[src], settings=SceneSettings(eps=0.0))
