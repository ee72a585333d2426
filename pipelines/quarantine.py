"""The quarantine report: scenes a build could not turn into shards, with why.

A scene that fails (bad raw files, invalid record, render error, ...) is
recorded as a ``SceneFailure`` and left out of the store; the rest of the build
goes on. The report lives next to the manifests::

    <store>/reports/quarantine.json      scenes failing as of the latest build
    <store>/reports/build-v{N:06d}-<utc>.json   one summary per build run

``quarantine.json`` is cumulative: a build adds the scenes that failed in it and
drops the scenes it has since committed (so it lists exactly what is still
missing). It is replaced atomically (temp file + rename), never half-written.
"""
from __future__ import annotations

import json
import os
import posixpath
import time
import traceback
import uuid
from dataclasses import asdict, dataclass
from typing import Iterable

from pipelines.store.location import StoreLocation

REPORT_DIR = "reports"
QUARANTINE_FILE = "quarantine.json"
QUARANTINE_FORMAT = "concerto-quarantine/1"
# Keep the last frames of a traceback: enough to find the failing call without
# bloating the report with engine frames.
TRACEBACK_LINES = 12


@dataclass(frozen=True)
class SceneFailure:
    """One scene that did not make it into the store.

    ``key`` is "source/scene_id" (or "source/*" for a source that failed as a
    whole, e.g. its discovery); ``stage`` is where it failed: discover, load,
    render, process, validate, write or batch."""

    key: str
    source: str
    scene_id: str
    content_hash: str
    stage: str
    error_type: str
    message: str
    traceback: str = ""
    time: str = ""

    @staticmethod
    def of(key: str, source: str, scene_id: str, content_hash: str, stage: str, exc: BaseException) -> "SceneFailure":
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).splitlines()
        return SceneFailure(
            key=key, source=source, scene_id=scene_id, content_hash=content_hash, stage=stage,
            error_type=type(exc).__name__, message=str(exc),
            traceback="\n".join(tb[-TRACEBACK_LINES:]),
            time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        )

    def to_json(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_json(d: dict) -> "SceneFailure":
        return SceneFailure(**{k: d.get(k, "") for k in SceneFailure.__dataclass_fields__})


def write_json_atomic(store, data: dict, *parts: str) -> str:
    """Replace the JSON file at ``parts`` under the store root in one step
    (readers see the old or the new file, never a partial one). Returns its path."""
    loc = StoreLocation.of(store)
    final = loc.path(*parts)
    tmp = posixpath.join(posixpath.dirname(final), f".tmp-{uuid.uuid4().hex}-{posixpath.basename(final)}")
    payload = json.dumps(data, indent=1, sort_keys=False).encode()
    loc.fs.makedirs(posixpath.dirname(final), exist_ok=True)
    if loc.is_local:
        with open(tmp, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    else:
        # an object PUT replaces the key whole (readers see old or new); a
        # temp-then-move would be copy + delete there, neither atomic nor cheaper
        loc.write_bytes(payload, *parts)
    return final


def load_quarantine(store) -> dict[str, SceneFailure]:
    """{scene key: failure} from ``reports/quarantine.json``; {} if there is none.
    A report that cannot be parsed raises ValueError naming the file."""
    loc = StoreLocation.of(store)
    if not loc.exists(REPORT_DIR, QUARANTINE_FILE):
        return {}
    where = loc.path(REPORT_DIR, QUARANTINE_FILE)
    try:
        d = json.loads(loc.read_bytes(REPORT_DIR, QUARANTINE_FILE))
        if d.get("format") != QUARANTINE_FORMAT:
            raise ValueError(f"format is not {QUARANTINE_FORMAT}")
        return {s["key"]: SceneFailure.from_json(s) for s in d["scenes"]}
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"quarantine report {where} is malformed: {e}") from e


def update_quarantine(
    store,
    failed: Iterable[SceneFailure],
    resolved: Iterable[str] = (),
    manifest_version: int | None = None,
) -> dict[str, SceneFailure]:
    """Merge ``failed`` into the report, drop the ``resolved`` keys (scenes now
    committed), write it atomically and return the new {key: failure}.

    A scene that fails again replaces its older entry. Resolved keys win over
    failures of the same call (the scene is in the store)."""
    current = load_quarantine(store)
    for f in failed:
        current[f.key] = f
    for key in resolved:
        current.pop(key, None)
    entries = dict(sorted(current.items()))
    write_json_atomic(
        store,
        {
            "format": QUARANTINE_FORMAT,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "manifest_version": manifest_version,
            "count": len(entries),
            "scenes": [f.to_json() for f in entries.values()],
        },
        REPORT_DIR,
        QUARANTINE_FILE,
    )
    return entries


def write_build_report(store, summary: dict) -> str:
    """Write one build's summary as ``reports/build-v{N:06d}-<utc>.json`` (N =
    the manifest version it ended at, 0 if none); returns the path."""
    version = summary.get("manifest_version") or 0
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    name = f"build-v{int(version):06d}-{stamp}-{uuid.uuid4().hex[:6]}.json"
    return write_json_atomic(store, summary, REPORT_DIR, name)


def refresh_after_discovery(
    store,
    discovery_failures: Iterable[SceneFailure],
    discovered_sources: Iterable[str],
    discovered_keys: Iterable[str],
) -> dict[str, SceneFailure]:
    """Record sources that failed discovery, and forget entries a successful
    discovery made stale: scenes no longer in their source and earlier
    "source/*" failures of sources that now work."""
    ok = set(discovered_sources)
    keys = set(discovered_keys)
    stale = [k for k, f in load_quarantine(store).items() if f.source in ok and k not in keys]
    return update_quarantine(store, discovery_failures, resolved=stale)
