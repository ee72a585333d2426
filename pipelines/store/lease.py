"""One build at a time per store: a lease file that a second build waits on.

Two builds on one store would plan against the same manifest and build the same
scenes twice. ``build_lease(store, run_id)`` holds ``locks/build.json`` (created
exclusively, like a manifest version) for the whole build and refreshes its
heartbeat every ``ttl_s / 3`` seconds from a daemon thread. A second build
waits until the file is gone; a lease whose heartbeat is older than ``ttl_s``,
or whose process on this machine is gone, belongs to a killed build and is
taken over. Manifest commits stay
compare-and-swap regardless (``pipelines.store.manifest.commit``), so other
writers (repair, migrate) are safe without the lease.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from contextlib import contextmanager
from typing import Iterator

from pipelines.store.location import StoreLocation

LOCK_DIR = "locks"
BUILD_LOCK = "build.json"
log = logging.getLogger("pipelines.store")


class LeaseTimeout(TimeoutError):
    """Another build held the store longer than the caller would wait."""


def _holder(loc: StoreLocation) -> dict | None:
    try:
        return json.loads(loc.read_bytes(LOCK_DIR, BUILD_LOCK))
    except FileNotFoundError:
        return None
    except ValueError:
        return {"run_id": "?", "heartbeat": 0.0}  # half-written by a killed writer: stale


def _dead_here(holder: dict) -> bool:
    """The holder ran on this machine and its process is gone (killed)."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _payload(run_id: str) -> bytes:
    return json.dumps({"run_id": run_id, "host": socket.gethostname(), "pid": os.getpid(),
                       "heartbeat": time.time()}).encode()


def _try_take(loc: StoreLocation, run_id: str, ttl_s: float, attempts: int = 5) -> dict | None:
    """None if this run now holds the lease, else its live holder. A stale lease
    (killed build) is taken over and the lease created again at once, so the
    caller never waits for a run it has just taken over from."""
    holder: dict = {"run_id": "?"}
    for _ in range(attempts):  # bounded: a lease that keeps reappearing is someone's live lease
        if loc.create_exclusive(_payload(run_id), LOCK_DIR, BUILD_LOCK):
            return None
        seen = _holder(loc)
        if seen is None:
            continue  # released meanwhile: try again
        holder = seen
        if not (time.time() - float(holder.get("heartbeat", 0.0)) > ttl_s or _dead_here(holder)):
            return holder
        # re-read right before removing: only remove the stale lease we saw
        if _holder(loc) == holder:
            log.warning("store %s: taking over the build lease of run %s (its process is gone or sent no "
                        "heartbeat for %.0f s: killed?)", loc.url, holder.get("run_id"),
                        time.time() - float(holder.get("heartbeat", 0.0)))
            loc.remove_file(LOCK_DIR, BUILD_LOCK)
    return holder


def _heartbeat(loc: StoreLocation, run_id: str, every_s: float, stop: threading.Event) -> None:
    """Refresh the lease until ``stop``. A failed write (store unreachable) is
    logged once, not raised: the thread keeps trying, and the build itself meets
    the same error and reports it; one that works again says so."""
    failing = False
    while not stop.wait(every_s):
        try:
            loc.write_bytes(_payload(run_id), LOCK_DIR, BUILD_LOCK)
        except Exception as exc:  # noqa: BLE001 - a daemon thread's error would only print a traceback
            if not failing:
                log.warning("store %s: cannot refresh the build lease (%s: %s); retrying every %.3g s",
                            loc.url, type(exc).__name__, exc, every_s)
            failing = True
        else:
            if failing:
                log.warning("store %s: build lease refreshed again", loc.url)
            failing = False


@contextmanager
def build_lease(store, run_id: str, ttl_s: float = 60.0, wait_s: float | None = None,
                poll_s: float = 1.0) -> Iterator[None]:
    """Hold the store's build lease inside the ``with`` block; waits for another
    build's lease (up to ``wait_s`` seconds, None: no limit)."""
    loc = StoreLocation.of(store)
    t0, said = time.time(), None
    while (holder := _try_take(loc, run_id, ttl_s)) is not None:
        if holder.get("run_id") != said:
            said = holder.get("run_id")
            log.warning("store %s: waiting for build run %s to finish", loc.url, said)
        if wait_s is not None and time.time() - t0 > wait_s:
            raise LeaseTimeout(f"store {loc.url}: build run {said} still holds {LOCK_DIR}/{BUILD_LOCK} "
                               f"after {wait_s:.0f} s")
        time.sleep(poll_s)
    stop = threading.Event()
    thread = threading.Thread(target=_heartbeat, args=(loc, run_id, ttl_s / 3, stop), name="build-lease-heartbeat",
                              daemon=True)
    thread.start()
    failed = False
    try:
        yield
    except BaseException:
        failed = True
        raise
    finally:
        stop.set()
        thread.join()
        try:
            if (_holder(loc) or {}).get("run_id") == run_id:
                loc.remove_file(LOCK_DIR, BUILD_LOCK)
        except Exception as exc:  # noqa: BLE001
            if not failed:
                raise
            # the build already failed (store unreachable?): its error is the one to report; a
            # lease left behind is taken over by the next run on this machine, after ttl_s elsewhere
            log.warning("store %s: could not release the build lease (%s: %s)", loc.url, type(exc).__name__, exc)
