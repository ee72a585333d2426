"""Whole builds into an S3 store (SeaweedFS) and training from it: a Dask
LocalCluster build of two sources (one added later), verify, 2-rank torchrun
from s3://, a build killed with SIGKILL and resumed, two concurrent builds."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipelines.build import BuildOptions, SceneSettings, run_build
from pipelines.store import ShardStore, latest_version, list_versions, load_manifest
from pipelines.store.inspect import main as inspect_main

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(frames_per_scene=4, image_width=64, image_height=48, points_per_scene=1200)
SETTINGS = SceneSettings(min_correspondences=10)


def synthetic(path: Path, name: str, num_scenes: int, seed: int) -> dict:
    return {"kind": "synthetic", "path": str(path), "name": name, "options": dict(TINY, num_scenes=num_scenes, seed=seed)}


def source_arg(src: dict) -> str:
    opts = ",".join(f"{k}={v}" for k, v in {**src["options"], "name": src["name"]}.items())
    return f"{src['kind']}:{src['path']}:{opts}"


def env() -> dict:
    e = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    e["OMP_NUM_THREADS"] = "1"
    return e


def build_cmd(store: str, *sources: dict) -> list[str]:
    cmd = [sys.executable, "-m", "pipelines.build", "--store", store, "--scenes-per-task", "1",
           "--shard-size", "1", "--min-correspondences", "10", "--no-progress"]
    for s in sources:
        cmd += ["--source", source_arg(s)]
    return cmd


def summary_of(out: str) -> dict:
    return json.loads(out[out.index("\n{") + 1:] if not out.startswith("{") else out)


@pytest.mark.slow
def test_dask_build_into_s3_then_torchrun_two_ranks(s3_url, tmp_path, free_port):
    from distributed import Client, LocalCluster

    a, b = synthetic(tmp_path / "a", "synthA", 3, seed=1), synthetic(tmp_path / "b", "synthB", 2, seed=2)
    kw = dict(settings=SETTINGS, scenes_per_task=2, shard_size=2)
    # workers inherit the endpoint and credentials from the environment (set by the fixture)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      host="127.0.0.1") as cluster, Client(cluster) as client:
        first = run_build(BuildOptions(store=s3_url, sources=[a], **kw), executor=client)
        assert first.scenes["processed"] == 3 and first.batches_failed == 0
        second = run_build(BuildOptions(store=s3_url, sources=[a, b], **kw), executor=client)
    assert second.scenes == dict(discovered=5, skipped=3, new=2, changed=0, processed=2, quarantined=0, removed=0)
    assert second.report.startswith(s3_url.removeprefix("s3://"))  # the report is in the bucket
    store = ShardStore.open(s3_url)
    assert {k: c["scenes"] for k, c in store.manifest.source_counts().items()} == {"synthA": 3, "synthB": 2}
    assert len(store.scene_keys()) == 5 and store.verify() == []
    assert inspect_main([s3_url, "--verify"]) == 0

    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                           f"--master_port={free_port}", "-m", "concerto.train", "--data", s3_url, "--config", "tiny",
                           "--steps", "3", "--set", "data.batch_size=1", "--output", str(tmp_path / "run"),
                           "--no-progress"], env=env(), capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith('{"step"')][-1])
    assert last["step"] == 3 and last["loss"] == last["loss"]  # finite, not NaN
    state = __import__("torch").load(tmp_path / "run" / "checkpoints" / "step_00000003" / "state.pt", weights_only=False)
    assert state["world_size"] == 2


@pytest.mark.slow
def test_killed_build_resumes_on_s3(s3_url, tmp_path):
    """SIGKILL the build right after its first batch commit (testkit.kill_after_commit);
    the re-run keeps the committed batch, builds only the rest and ends with a
    verified store."""
    src = synthetic(tmp_path / "a", "synth", 5, seed=3)
    cmd = build_cmd(s3_url, src)
    assert cmd[1:3] == ["-m", "pipelines.build"]
    cmd[1:3] = ["-m", "testkit.kill_after_commit", "pipelines.build"]
    proc = subprocess.Popen(cmd, env=env(), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        out = proc.communicate(timeout=600)[0].decode()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, out[-3000:]
    assert list_versions(s3_url) == [1]  # nothing after the first commit
    committed = load_manifest(s3_url, 1).scenes()
    assert len(committed) == 1  # one scene per batch
    out = subprocess.run(build_cmd(s3_url, src), env=env(), cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = summary_of(out.stdout)
    assert summary["scenes"]["skipped"] == len(committed) and summary["scenes"]["processed"] == 5 - len(committed)
    store = ShardStore.open(s3_url)
    assert len(store.scene_keys()) == 5 and store.verify() == []
    # the committed scenes were kept as they were, not rebuilt
    final = load_manifest(s3_url, latest_version(s3_url)).scenes()
    assert all(final[k][0] == committed[k][0] for k in committed)


@pytest.mark.slow
def test_two_concurrent_builds_lose_no_update(s3_url, tmp_path):
    """Two builds of the same sources start together on one S3 store: the
    build lease (created with If-None-Match) serialises them, every commit
    lands as its own version, the chain of parents has no gap, and the final
    version lists every scene once. (Racing commits themselves:
    test_store_s3.test_racing_commits_on_s3_exactly_one_wins.)"""
    src = synthetic(tmp_path / "a", "synth", 3, seed=5)
    procs = [subprocess.Popen(build_cmd(s3_url, src), env=env(), cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=900) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    summaries = [summary_of(out) for out, _ in outs]
    # the store's build lease (an If-None-Match create) lets one build in; the other waits,
    # then finds every scene committed
    assert sorted(s["scenes"]["processed"] for s in summaries) == [0, 3]
    versions = list_versions(s3_url)
    assert versions == list(range(1, len(versions) + 1)) and len(versions) >= 4  # 3 batches + complete
    for v in versions:
        m = load_manifest(s3_url, v)
        assert m.parent == (v - 1 if v > 1 else None)
        if v > 1:  # a commit only adds (or re-points) scenes: nothing committed before is lost
            assert set(load_manifest(s3_url, v - 1).scenes()) <= set(m.scenes())
    store = ShardStore.open(s3_url)
    assert {k: c["scenes"] for k, c in store.manifest.source_counts().items()} == {"synth": 3}
    assert store.verify() == []


@pytest.mark.slow
def test_s3_server_killed_mid_build_ends_in_one_error_line_and_the_rerun_takes_over(tmp_path):
    """The user's step: the S3 server dies during a build (its own SeaweedFS here,
    not the session's), then comes back and the build is re-run."""
    from testkit.s3_server import SeaweedS3

    server = SeaweedS3(tmp_path / "weed").start()
    try:
        server.filesystem().mkdir("killed")
        url = "s3://killed/store"
        e = dict(env(), **server.env)
        src = synthetic(tmp_path / "a", "synth", 5, seed=6)
        proc = subprocess.Popen(build_cmd(url, src), env=e, cwd=tmp_path, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        fs, deadline = server.filesystem(), time.monotonic() + 600
        while not fs.exists("killed/store/manifests/v000001.json"):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
            time.sleep(0.2)
        os.killpg(server.proc.pid, signal.SIGKILL)
        server.proc.wait()
        out, err = proc.communicate(timeout=900)
        (tmp_path / "killed.err").write_text(err)
        assert proc.returncode == 3, err[-3000:]
        last = err.strip().splitlines()[-1]
        assert last.startswith(f"error: build of {url} stopped: ") and "re-run the same command" in last, last
        assert "Exception in thread" not in err and "Traceback" not in err, err[-3000:]
        server.log.close()
        server.proc = None
        server.start()  # same ports, same data
        again = subprocess.run(build_cmd(url, src), env=e, cwd=tmp_path, capture_output=True, text=True, timeout=900)
        assert again.returncode == 0, again.stderr[-3000:]
        assert "taking over the build lease" in again.stderr and "waiting for build run" not in again.stderr, \
            again.stderr[-3000:]
        assert summary_of(again.stdout)["scenes"]["skipped"] >= 1
    finally:
        server.stop()
