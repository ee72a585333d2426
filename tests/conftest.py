"""Fixtures shared by several test modules."""
import pytest


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors: thread hand-offs cost more than they save on a shared 2-core
    machine. Use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for gloo rendezvous)."""
    from testkit.ports import free_port as pick

    return pick()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A SeaweedFS S3 server for the session; its endpoint and dummy credentials
    are put in os.environ (restored at the end), so subprocesses see them too."""
    import os

    from testkit.s3_server import SeaweedS3

    server = SeaweedS3(tmp_path_factory.mktemp("seaweedfs")).start()
    saved = {k: os.environ.get(k) for k in server.env}
    os.environ.update(server.env)
    try:
        yield server
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()


@pytest.fixture
def s3_url(s3_server, request) -> str:
    """A fresh ``s3://`` store URL (own bucket per test) on the session's server."""
    import re
    import uuid

    bucket = "t-" + re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-") + "-" + uuid.uuid4().hex[:6]
    server_fs = s3_server.filesystem()
    server_fs.mkdir(bucket)
    return f"s3://{bucket}/store"
