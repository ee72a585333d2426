"""The build-dataset deployment as a user runs it: a Prefect server on loopback,
the process work pool, ``prefect deploy`` from prefect.yaml, a worker, and
``prefect deployment run ... --watch``. Every process started is stopped
(worker with SIGINT first, then the server), also when a step fails."""
from __future__ import annotations

import json

import pytest

import flows  # noqa: F401
from flows.settings import PROJECT_ROOT, WORK_POOL
from pipelines.quarantine import load_quarantine
from pipelines.store import ShardStore
from testkit.local_prefect import LocalPrefect

pytestmark = pytest.mark.slow


def test_prefect_yaml_names_the_flow_and_pool():
    import yaml

    cfg = yaml.safe_load((PROJECT_ROOT / "prefect.yaml").read_text())
    (dep,) = [d for d in cfg["deployments"] if d["name"] == "synthetic"]
    assert dep["work_pool"]["name"] == WORK_POOL
    from prefect.flows import load_flow_from_entrypoint

    flow = load_flow_from_entrypoint(dep["entrypoint"])
    assert flow.name == "build-dataset"
    # default parameters are valid for the flow's signature
    assert set(dep["parameters"]) <= set(flow.parameters.properties)
    assert {"kind", "path"} <= set(dep["parameters"]["sources"][0])
    # flows/serve.py serves the same demo
    from flows.serve import SYNTHETIC_DEMO

    assert SYNTHETIC_DEMO == dep["parameters"]


def test_deployment_run_through_server_and_worker(tmp_path):
    store = tmp_path / "store"
    params = {
        "sources": [{"kind": "synthetic", "path": str(tmp_path / "rooms"), "name": "demo",
                     "options": {"num_scenes": 2, "seed": 4, "frames_per_scene": 4, "image_width": 64,
                                 "image_height": 48, "points_per_scene": 2000}}],
        "store": str(store),
        "min_correspondences": 10,
        "scenes_per_task": 1,
        "shard_size": 1,
    }
    with LocalPrefect(tmp_path / "prefect-home", extra_env={"PREFECT_WORKER_QUERY_SECONDS": "1"}) as prefect:
        prefect.start_server()
        prefect.cli("work-pool", "create", WORK_POOL, "--type", "process")
        out = prefect.cli("--no-prompt", "deploy", "--name", "synthetic")
        assert "build-dataset/synthetic" in out.stdout
        prefect.start_worker(WORK_POOL)
        run = prefect.cli("deployment", "run", "build-dataset/synthetic", "--params", json.dumps(params), "--watch",
                          timeout=900, check=False)
        assert run.returncode == 0, f"flow run failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
        assert "Completed" in run.stdout
        artifacts = _artifacts(prefect.api)
        assert "| demo | 2 | 0 | 0 | 0 | 0 |" in artifacts["build-summary"]

        # a second source with a broken mesh and fail_on_quarantine: the run fails, naming the scene
        bad = dict(params["sources"][0], path=str(tmp_path / "bad-rooms"), name="bad",
                   options=dict(params["sources"][0]["options"], num_scenes=1, seed=5))
        from preprocess.sources.base import make_source

        (ref,) = make_source("synthetic", bad["path"], name="bad", **bad["options"]).discover()
        mesh = tmp_path / "bad-rooms" / ref.scene_id / "mesh.ply"
        mesh.write_bytes(mesh.read_bytes()[:100])
        failing = dict(params, sources=[bad], fail_on_quarantine=True)
        run = prefect.cli("deployment", "run", "build-dataset/synthetic", "--params", json.dumps(failing), "--watch",
                          timeout=900, check=False)
        (tmp_path / "failing-run.txt").write_text(run.stdout + run.stderr)
        assert run.returncode != 0 and "Failed" in run.stdout, run.stdout[-3000:]
        assert f"bad/{ref.scene_id}" in run.stdout and "quarantined" in run.stdout, tmp_path / "failing-run.txt"
        artifacts = _artifacts(prefect.api)
        assert f"bad/{ref.scene_id}" in artifacts["build-quarantine"] and "mesh.ply" in artifacts["build-quarantine"]

    assert prefect.server.poll() is not None and all(w.poll() is not None for w in prefect.workers)
    opened = ShardStore.open(str(store))
    assert sorted(opened.scene_keys()) == ["demo/room000_seed4", "demo/room001_seed4"]
    # one partial version per batch of one scene, then the complete one; the failed
    # run listed no scene (its only scene was quarantined)
    # (the failed run's complete version records its source, whose scene failed)
    assert opened.version == 4 and opened.manifest.state == "complete" and set(opened.manifest.sources) == {"demo", "bad"}
    assert list(load_quarantine(store)) == [f"bad/{ref.scene_id}"]
    reports = sorted((store / "reports").glob("build-v*.json"))
    assert len(reports) == 2 and sorted(json.loads(r.read_text())["scenes"]["processed"] for r in reports) == [0, 2]


def _artifacts(api: str) -> dict[str, str]:
    """{key: data} of the newest artifact per key on the server at ``api``."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        arts = sorted(client.read_artifacts(), key=lambda a: a.created)
    return {a.key: a.data for a in arts if a.key}
