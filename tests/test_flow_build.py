"""The build-dataset flow, end to end: real Prefect (a temporary local server),
a real Dask LocalCluster, real Zarr stores, tiny synthetic rooms.

Prefect costs ~10-15 s per flow run here, so each test packs several checks
into few runs."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import flows  # noqa: F401  (project Prefect defaults before prefect is imported)
from flows.settings import PROJECT_ROOT
from pipelines.quarantine import load_quarantine, quarantine_path
from pipelines.store import ShardStore, ShardWriter, latest_version, list_versions, load_manifest
from pipelines.store.location import SHARD_DIR
from preprocess.sources import make_source

pytestmark = pytest.mark.slow

TINY = dict(frames_per_scene=4, image_width=64, image_height=48, points_per_scene=2000)
FLOW_KW = dict(min_correspondences=10, scenes_per_task=2, shard_size=2, render_backend="auto")


def flow_kw(dask_address: str) -> dict:
    return dict(FLOW_KW, dask_address=dask_address)


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory):
    """A temporary Prefect server + database for this module's flow runs."""
    from prefect.settings import PREFECT_HOME, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    home = tmp_path_factory.mktemp("prefect-home")
    with temporary_settings(updates={PREFECT_HOME: str(home)}):
        with prefect_test_harness(server_startup_timeout=180):
            from prefect.settings import PREFECT_API_URL

            yield PREFECT_API_URL.value()


@pytest.fixture(scope="module")
def dask_address(prefect_api):
    """One real Dask cluster shared by the in-process runs (the flow's own
    LocalCluster path is exercised by the killed-run test)."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      host="127.0.0.1", env={"PREFECT_API_URL": prefect_api}) as cluster:
        yield cluster.scheduler_address


def synthetic(path: Path, name: str, num_scenes: int, seed: int) -> dict:
    return {"kind": "synthetic", "path": str(path), "name": name,
            "options": dict(TINY, num_scenes=num_scenes, seed=seed)}


def shard_file_digests(store: Path) -> dict[str, str]:
    out = {}
    for p in sorted((store / SHARD_DIR).rglob("*")):
        if p.is_file():
            out[str(p.relative_to(store))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _task_run_names(expected: set[str], timeout_s: float = 60.0) -> set[str]:
    """Names of the task runs the server knows, once ``expected`` are among
    them (task runs reach the server through events, which may lag)."""
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while True:
            names = {tr.name for tr in client.read_task_runs()}
            if expected <= names or time.monotonic() > deadline:
                return names
            time.sleep(0.5)


def _artifacts(keys: set[str], timeout_s: float = 60.0) -> dict:
    """The newest artifact of each key, once all ``keys`` exist on the server."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while True:
            arts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=sorted(keys))))
            newest = {}
            for a in sorted(arts, key=lambda a: a.created):
                newest[a.key] = a
            if keys <= set(newest) or time.monotonic() > deadline:
                return newest
            time.sleep(0.5)


def test_build_incremental_and_quarantine(prefect_api, dask_address, tmp_path):
    from flows.build_dataset import build_dataset

    store = tmp_path / "store"
    src_a = synthetic(tmp_path / "a", "synthA", 2, seed=1)

    # run 1: two scenes into an empty store
    s1 = build_dataset(sources=[src_a], store=str(store), **flow_kw(dask_address))
    assert s1["scenes"] == dict(discovered=2, skipped=0, new=2, changed=0, processed=2, quarantined=0, removed=0)
    assert s1["shards_written"] == 1 and s1["batches"] == 1
    opened = ShardStore.open(str(store))
    assert sorted(opened.scene_keys()) == ["synthA/room000_seed1", "synthA/room001_seed1"]
    assert opened.version == s1["manifest_version"] == latest_version(store)
    assert len(opened) == s1["image_groups_written"] > 0
    ps = opened.read_scene("synthA/room001_seed1")
    assert len(ps.scene.points) == TINY["points_per_scene"] and ps.image_groups.shape[1] == 4
    before = shard_file_digests(store)
    assert before
    # the loop (pipelines.build.run_build) ran its steps as the flow's Prefect tasks
    names = _task_run_names({"discover-synthA", "build-batch-0000", "commit-batch-0000"})
    assert {"discover-synthA", "build-batch-0000", "commit-batch-0000"} <= names, names
    assert {"plan-build", "collect-garbage"} <= {n.rsplit("-", 1)[0] for n in names}, names

    # a second source of three rooms: one with a truncated mesh, one with a NaN pose
    src_b = synthetic(tmp_path / "b", "synthB", 3, seed=2)
    refs = make_source("synthetic", src_b["path"], name="synthB", **src_b["options"]).discover()
    mesh = tmp_path / "b" / refs[0].scene_id / "mesh.ply"
    mesh.write_bytes(mesh.read_bytes()[: mesh.stat().st_size // 2])
    cam_file = tmp_path / "b" / refs[1].scene_id / "cameras.json"
    cams = json.loads(cam_file.read_text())
    cams["frames"][0]["pose"][0][3] = float("nan")
    cam_file.write_text(json.dumps(cams))

    # run 2: both sources; only synthB is new, the bad rooms are quarantined
    s2 = build_dataset(sources=[src_a, src_b], store=str(store), **flow_kw(dask_address))
    assert s2["scenes"] == dict(discovered=5, skipped=2, new=3, changed=0, processed=1, quarantined=2, removed=0)
    assert s2["manifest_version"] > s1["manifest_version"]
    after = shard_file_digests(store)
    assert {k: after[k] for k in before} == before, "committed shards must stay byte-identical"
    opened = ShardStore.open(str(store))
    assert sorted(opened.scene_keys()) == ["synthA/room000_seed1", "synthA/room001_seed1", "synthB/room002_seed2"]

    report = load_quarantine(store)
    bad_mesh, bad_pose = f"synthB/{refs[0].scene_id}", f"synthB/{refs[1].scene_id}"
    assert sorted(report) == [bad_mesh, bad_pose]
    assert report[bad_mesh].stage == "load" and report[bad_mesh].error_type == "SourceError"
    assert "mesh.ply" in report[bad_mesh].message and bad_mesh in report[bad_mesh].message
    assert report[bad_pose].stage == "load" and "finite" in report[bad_pose].message
    assert "cameras.json" in report[bad_pose].message and bad_pose in report[bad_pose].message
    raw = json.loads(Path(quarantine_path(store)).read_text())
    assert raw["count"] == 2 and {e["error_type"] for e in raw["scenes"]} == {"SourceError"}
    assert Path(s2["report"]).is_file() and json.loads(Path(s2["report"]).read_text())["scenes"]["processed"] == 1
    assert set(s2["elapsed_s"]) >= {"discover", "plan", "build", "commit", "total"}

    # the run left its summary and its quarantined scenes as artifacts
    arts = _artifacts({"build-summary", "build-quarantine"})
    assert "| synthB | 1 | 0 | 0 | 0 | 2 |" in arts["build-summary"].data  # new: the scenes that landed
    assert {r["scene"] for r in json.loads(arts["build-quarantine"].data)} == {bad_mesh, bad_pose}

    # run 3: repair the mesh (regenerated on discovery) and build synthB alone:
    # adding is the default, synthA stays listed
    mesh.unlink()
    s3 = build_dataset(sources=[src_b], store=str(store), **flow_kw(dask_address))
    assert s3["scenes"] == dict(discovered=3, skipped=1, new=2, changed=0, processed=1, quarantined=1, removed=0)
    assert sorted(ShardStore.open(str(store)).scene_keys()) == [
        "synthA/room000_seed1", "synthA/room001_seed1", bad_mesh, "synthB/room002_seed2"]
    assert sorted(load_quarantine(store)) == [bad_pose]
    assert set(load_manifest(store).sources) == {"synthA", "synthB"}

    # run 4: prune drops what this run did not find (synthA) and says so
    s4 = build_dataset(sources=[src_b], store=str(store), prune=True, **flow_kw(dask_address))
    assert s4["removed"] == ["synthA/room000_seed1", "synthA/room001_seed1"] and s4["scenes"]["removed"] == 2
    assert s4["per_source"]["synthA"]["removed"] == 2
    assert sorted(ShardStore.open(str(store)).scene_keys()) == [bad_mesh, "synthB/room002_seed2"]
    assert set(load_manifest(store).sources) == {"synthB"}
    m = load_manifest(store)
    assert m.state == "complete" and m.run_id.startswith("prefect-") and m.parent == m.version - 1
    # the old version is still readable: readers pin a manifest version
    assert len(ShardStore.open(str(store), version=s2["manifest_version"]).scene_keys()) == 3

    # no sources: refresh every recorded source (nothing changed)
    s5 = build_dataset(store=str(store), **flow_kw(dask_address))
    assert s5["sources"] == ["synthB"] and s5["scenes"]["skipped"] == 2 and s5["manifest_version"] == m.version


def _scene_keys_at_latest(store: Path) -> list[str]:
    try:
        v = latest_version(store)
    except FileNotFoundError:
        return []
    return [] if v is None else sorted(load_manifest(store, v).scenes())


def test_killed_build_resumes_with_every_scene_once(prefect_api, tmp_path):
    from flows.build_dataset import build_dataset

    store = tmp_path / "store"
    n = 6
    src = synthetic(tmp_path / "src", "synth", n, seed=3)
    make_source("synthetic", src["path"], name="synth", **src["options"]).discover()  # generate files up front
    # a complete build of another source first: what readers see while the next build runs
    pre = synthetic(tmp_path / "pre", "pre", 1, seed=5)
    build_dataset(sources=[pre], store=str(store), min_correspondences=10)
    complete = ShardStore.open(str(store))
    opts = ",".join(f"{k}={v}" for k, v in src["options"].items())
    # killed right after its first batch commit (testkit.kill_after_commit), not at a time
    cmd = [sys.executable, "-m", "testkit.kill_after_commit", "flows.build_dataset", "--store", str(store),
           "--source", f"synthetic:{src['path']}:name=synth,{opts}",
           "--min-correspondences", "10", "--scenes-per-task", "1", "--shard-size", "1", "--no-progress"]
    env = {**os.environ, "PREFECT_API_URL": prefect_api}
    log = open(tmp_path / "killed-run.log", "wb")
    proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        log.close()
    assert proc.returncode == -signal.SIGKILL, f"the build was not killed; see {tmp_path / 'killed-run.log'}"
    assert list_versions(store) == list(range(1, complete.version + 2))  # exactly one commit after the complete one
    committed = [k for k in _scene_keys_at_latest(store) if k.startswith("synth/")]
    assert len(committed) == 1  # one scene per batch
    # readers still open the last complete version: the killed build's batches are partial
    opened = ShardStore.open(str(store))
    assert opened.version == complete.version and opened.scene_keys() == ["pre/room000_seed5"]
    assert load_manifest(store).state == "partial"

    # a shard written by a batch that died before its commit
    partial = ShardStore.open(str(store), version=latest_version(store))
    orphan = ShardWriter(str(store)).write([partial.read_scene(committed[0])])
    assert (store / SHARD_DIR / orphan.id).is_dir()

    s = build_dataset(sources=[src], store=str(store), min_correspondences=10, scenes_per_task=2, shard_size=2,
                      gc_grace_seconds=0.0)
    assert s["scenes"]["skipped"] == len(committed)
    assert s["scenes"]["processed"] == n - len(committed)
    assert s["gc"]["removed_shards"] >= 1
    keys = ShardStore.open(str(store)).scene_keys()
    assert sorted(keys) == ["pre/room000_seed5"] + [f"synth/room{i:03d}_seed3" for i in range(n)]  # each once
    assert not (store / SHARD_DIR / orphan.id).exists()
    listed = {sh.id for v in list_versions(store) for sh in load_manifest(store, v).shards}
    assert {p.name for p in (store / SHARD_DIR).iterdir()} <= listed


def _flow_run_artifacts(flow_run_id: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        return client.read_artifacts(artifact_filter=ArtifactFilter(),
                                     flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))


def _events(name: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter

    with get_client(sync_client=True) as client:
        return client.read_events(EventFilter(event=EventNameFilter(name=[name])), limit=50).events


def _flow_run_count() -> int:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return len(client.read_flow_runs())


def test_failed_runs_say_what_failed_and_count_what_landed(prefect_api, dask_address, tmp_path):
    """The user's steps: a source path that does not exist, an unknown kind, a
    scene quarantined for a long reason; each fails with its whole cause."""
    from flows.build_dataset import QuarantineError, build_dataset

    store = tmp_path / "store"
    good = synthetic(tmp_path / "good", "good", 2, seed=7)
    refs = make_source("synthetic", good["path"], name="good", **good["options"]).discover()
    mesh = tmp_path / "good" / refs[0].scene_id / "mesh.ply"
    mesh.write_bytes(mesh.read_bytes()[: mesh.stat().st_size // 2])
    bad_key = f"good/{refs[0].scene_id}"
    opts = ",".join(f"{k}={v}" for k, v in good["options"].items())
    cli = [sys.executable, "-m", "flows.build_dataset", "--store", str(store), "--dask-address", dask_address,
           "--min-correspondences", "10", "--no-progress", "--source", f"synthetic:{good['path']}:name=good,{opts}"]
    env = {**os.environ, "PREFECT_API_URL": prefect_api}

    # an unknown kind: one line, before any flow run starts
    runs_before = _flow_run_count()
    t0 = time.monotonic()
    out = subprocess.run(cli + ["--source", "scanet:/data/ScanNet"], cwd=PROJECT_ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 2 and out.stdout == "", out.stdout[-2000:]
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("error: source 'scanet:/data/ScanNet': unknown source "
                                                                 "kind 'scanet'; known kinds:"), out.stderr
    assert _flow_run_count() == runs_before and time.monotonic() - t0 < 60

    # a missing dataset folder: the run ends Failed, exit 3, the last line names source and path;
    # the good source's scene still lands
    out = subprocess.run(cli + ["--source", "scannet:/does/not/exist"], cwd=PROJECT_ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 3, out.stderr[-3000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: 1 source(s) could not be read") and "'scannet'" in last, last
    assert "'/does/not/exist' is not a directory" in last, last
    assert ShardStore.open(str(store)).scene_keys() == [f"good/{refs[1].scene_id}"]
    report = json.loads(Path(last.rsplit("report: ", 1)[1]).read_text())
    # the summary counts as new only the scene that landed; the two artifacts and no third one
    assert report["per_source"]["good"] == dict(new=1, unchanged=0, updated=0, removed=0, failed=1)
    assert report["per_source"]["scannet"]["failed"] == 1
    arts = _flow_run_artifacts(report["run_id"].removeprefix("prefect-"))
    assert sorted(str(a.key) for a in arts) == ["build-quarantine", "build-summary"], [(a.key, a.type, a.task_run_id, a.data) for a in arts]
    summary_md = next(a for a in arts if a.key == "build-summary").data
    assert "| good | 1 | 0 | 0 | 0 | 1 |" in summary_md, summary_md

    # fail_on_quarantine: the scene's whole reason reaches the error and the event --watch prints
    reason = load_quarantine(store)[bad_key].message
    assert len(reason) > 120 and "bytes" in reason, reason
    with pytest.raises(QuarantineError) as err:
        build_dataset(sources=[good], store=str(store), fail_on_quarantine=True, **flow_kw(dask_address))
    assert reason in str(err.value) and bad_key in str(err.value)
    deadline = time.monotonic() + 60
    while not (names := [e.resource.get("prefect.resource.name") for e in _events("build-dataset.quarantined")]) \
            and time.monotonic() < deadline:
        time.sleep(0.5)
    assert any(reason in n for n in names), names
