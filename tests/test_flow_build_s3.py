"""The build-dataset flow into an S3 store (SeaweedFS) with credentials passed
only as its secret ``storage_options`` parameter.

Next to test_flow_build on purpose: after a Prefect test harness has run in a
process, fork-started children (DataLoader workers) exit with code 1, so
tests that run a harness come after the tests that fork DataLoader workers."""
from __future__ import annotations

import json
import os

import pytest

from pipelines.store import ShardStore
from pipelines.store.location import StoreLocation
from tests.test_build_s3 import synthetic
from tests.test_flow_build import prefect_api  # noqa: F401  (fixture: a temporary Prefect server)


@pytest.mark.slow
def test_flow_builds_into_s3_with_secret_storage_options(s3_server, s3_url, tmp_path, monkeypatch, prefect_api):
    """The Prefect flow on its own LocalCluster, credentials and endpoint given
    only as the ``storage_options`` parameter, secret JSON text (the workers'
    environment has none): the store is built, and neither the flow run's
    recorded parameters nor its logs hold the secret."""
    from prefect.client.orchestration import get_client

    from pydantic import SecretStr

    from flows.build_dataset import build_dataset

    secret = "s3cr3t-" + os.urandom(4).hex()
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "FSSPEC_S3_ENDPOINT_URL"):
        monkeypatch.delenv(k, raising=False)
    options = {"key": "flow-user", "secret": secret, "client_kwargs": {"endpoint_url": s3_server.endpoint}}
    src = synthetic(tmp_path / "a", "synth", 2, seed=7)
    summary = build_dataset(sources=[src], store=s3_url, storage_options=SecretStr(json.dumps(options)), min_correspondences=10,
                            scenes_per_task=1, shard_size=1)
    assert summary["scenes"]["processed"] == 2 and summary["batches_failed"] == 0
    store = ShardStore.open(StoreLocation.of(s3_url, options))
    assert len(store.scene_keys()) == 2 and store.verify() == []
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs()
        logs = client.read_logs()
    assert runs and all(secret not in json.dumps(r.parameters, default=str) for r in runs)
    assert logs and all(secret not in log.message for log in logs)
    assert any(r.parameters.get("storage_options") == "**********" for r in runs)
    with pytest.raises(ValueError, match="JSON object") as err:
        build_dataset(sources=[src], store=s3_url, storage_options="not json " + secret)
    assert secret not in str(err.value)
