"""Start and stop a local Prefect server and a process worker as child processes.

Used by the deployment test. Every process is
started in its own session so it (and its children) can be stopped by its
own process-group id, and stopped in the order Prefect needs: a worker ignores
SIGTERM, so it gets SIGINT, and it is stopped before the server.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from flows.settings import PROJECT_ROOT, api_url, prefect_env
from testkit.ports import free_port


def prefect_cli() -> list[str]:
    """The ``prefect`` command of this interpreter's environment."""
    exe = Path(sys.executable).with_name("prefect")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "prefect"]


def stop_process(proc: subprocess.Popen, first: int = signal.SIGINT, timeout: float = 30.0) -> int | None:
    """Stop ``proc``'s process group: ``first`` signal, then SIGTERM, then SIGKILL,
    waiting up to ``timeout`` s after each. Returns the exit code."""
    for sig in (first, signal.SIGTERM, signal.SIGKILL):
        if proc.poll() is not None:
            break
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            continue
    return proc.poll()


class LocalPrefect:
    """A Prefect server on loopback (``prefect server start``) with its own
    PREFECT_HOME, plus any workers started through it. Use as a context manager;
    everything started is stopped on exit, workers first."""

    def __init__(self, home: str | os.PathLike, port: int | None = None, log_dir: str | os.PathLike | None = None,
                 extra_env: dict[str, str] | None = None):
        self.home = Path(home)
        self.port = port or free_port()
        self.api = api_url(self.port)
        self.log_dir = Path(log_dir or self.home / "logs")
        self.env = {**os.environ, **prefect_env(self.home, self.api), **(extra_env or {})}
        self.server: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []
        self._logs = []

    def _spawn(self, args: list[str], log_name: str) -> subprocess.Popen:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_dir / log_name, "wb")
        self._logs.append(log)
        return subprocess.Popen(args, env=self.env, cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)

    def start_server(self, timeout: float = 180.0) -> "LocalPrefect":
        self.home.mkdir(parents=True, exist_ok=True)
        self.server = self._spawn(prefect_cli() + ["server", "start", "--host", "127.0.0.1", "--port", str(self.port)],
                                  "server.log")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.server.poll() is not None:
                raise RuntimeError(f"prefect server exited with {self.server.returncode}; see {self.log_dir / 'server.log'}")
            try:
                with urllib.request.urlopen(f"{self.api}/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        raise TimeoutError(f"prefect server on port {self.port} not healthy after {timeout} s; see {self.log_dir / 'server.log'}")

    def cli(self, *args: str, timeout: float = 300.0, check: bool = True) -> subprocess.CompletedProcess:
        """Run ``prefect <args>`` against this server from the project root."""
        res = subprocess.run(prefect_cli() + list(args), env=self.env, cwd=PROJECT_ROOT, capture_output=True,
                             text=True, timeout=timeout)
        if check and res.returncode != 0:
            raise RuntimeError(f"prefect {' '.join(args)} failed ({res.returncode}):\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}")
        return res

    def start_worker(self, pool: str) -> subprocess.Popen:
        proc = self._spawn(prefect_cli() + ["worker", "start", "--pool", pool], f"worker-{pool}.log")
        self.workers.append(proc)
        return proc

    def stop(self) -> None:
        for w in self.workers:
            stop_process(w, signal.SIGINT)
        if self.server is not None:
            stop_process(self.server, signal.SIGINT)
        for log in self._logs:
            log.close()

    def __enter__(self) -> "LocalPrefect":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
