"""The store's build lease on a real local store: taking over a killed build's
lease, and a heartbeat whose writes fail."""
from __future__ import annotations

import json
import logging
import shutil
import socket
import subprocess
import sys
import threading
import time

import pytest

from pipelines.store.lease import BUILD_LOCK, LOCK_DIR, build_lease


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_taking_over_a_killed_builds_lease_does_not_then_wait_for_it(tmp_path, caplog):
    (tmp_path / LOCK_DIR).mkdir()
    (tmp_path / LOCK_DIR / BUILD_LOCK).write_text(json.dumps(
        {"run_id": "killed-run", "host": socket.gethostname(), "pid": _dead_pid(), "heartbeat": time.time()}))
    with caplog.at_level(logging.INFO, logger="pipelines.store"):
        with build_lease(str(tmp_path), "new-run", wait_s=30, poll_s=0.05):
            assert json.loads((tmp_path / LOCK_DIR / BUILD_LOCK).read_text())["run_id"] == "new-run"
    said = [r.getMessage() for r in caplog.records]
    assert sum("taking over the build lease of run killed-run" in m for m in said) == 1, said
    assert not any("waiting for build run" in m for m in said), said
    assert not (tmp_path / LOCK_DIR / BUILD_LOCK).exists()


def test_heartbeat_that_cannot_write_warns_once_and_the_builds_error_is_the_one_raised(tmp_path, caplog,
                                                                                       monkeypatch):
    crashed = []
    monkeypatch.setattr(threading, "excepthook", lambda args: crashed.append(args.exc_value))
    with caplog.at_level(logging.INFO, logger="pipelines.store"):
        with pytest.raises(RuntimeError, match="the build's own error"):
            with build_lease(str(tmp_path), "run-1", ttl_s=0.15):
                # the store goes away under the build: its lock folder is now a file
                shutil.rmtree(tmp_path / LOCK_DIR)
                (tmp_path / LOCK_DIR).write_text("not a folder")
                time.sleep(0.5)  # several heartbeats
                raise RuntimeError("the build's own error")
    assert crashed == []
    said = [r.getMessage() for r in caplog.records]
    refresh = [m for m in said if "cannot refresh the build lease" in m]
    assert len(refresh) == 1 and str(tmp_path) in refresh[0] and "locks" in refresh[0], said
    assert any("could not release the build lease" in m for m in said), said
