"""The quarantine report: scenes a build could not turn into shards, with why.

A scene that fails (bad raw files, invalid record, render error, ...) is
recorded as a ``SceneFailure`` and left out of the store; the rest of the build
goes on. The report lives next to the manifests::

    <store>/reports/quarantine/v{N:06d}.json   scenes failing, as of version N
    <store>/reports/build-v{N:06d}-<utc>.json   one summary per build run

The quarantine is cumulative: a build adds the scenes that failed in it and
drops the scenes it has since committed (so it lists exactly what is still
missing). Updates are a compare-and-swap like manifest commits: version N+1 is
created exclusively from version N plus the change, and a writer that loses the
race re-applies its change on the new latest, so concurrent builds lose no
entry. The newest ``QUARANTINE_KEEP`` versions are kept.
"""
from __future__ import annotations

import json
import random
import time
import traceback
import uuid
from dataclasses import asdict, dataclass
from typing import Iterable

from pipelines.store.location import StoreLocation

REPORT_DIR = "reports"
QUARANTINE_DIR = "quarantine"
LEGACY_QUARANTINE_FILE = "quarantine.json"  # one file, rewritten in place (before versions)
QUARANTINE_FORMAT = "concerto-quarantine/1"
QUARANTINE_KEEP = 20
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


def _quarantine_versions(loc: StoreLocation) -> list[int]:
    return sorted(int(n[1:7]) for n in loc.listdir(REPORT_DIR, QUARANTINE_DIR)
                  if n.startswith("v") and n.endswith(".json") and n[1:7].isdigit())


def _read_quarantine(loc: StoreLocation, *parts: str) -> dict[str, SceneFailure]:
    where = loc.path(*parts)
    try:
        d = json.loads(loc.read_bytes(*parts))
        if d.get("format") != QUARANTINE_FORMAT:
            raise ValueError(f"format is not {QUARANTINE_FORMAT}")
        return {s["key"]: SceneFailure.from_json(s) for s in d["scenes"]}
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"quarantine report {where} is malformed: {e}") from e


def _latest_quarantine(loc: StoreLocation) -> tuple[int, dict[str, SceneFailure]]:
    versions = _quarantine_versions(loc)
    if versions:
        return versions[-1], _read_quarantine(loc, REPORT_DIR, QUARANTINE_DIR, f"v{versions[-1]:06d}.json")
    if loc.exists(REPORT_DIR, LEGACY_QUARANTINE_FILE):
        return 0, _read_quarantine(loc, REPORT_DIR, LEGACY_QUARANTINE_FILE)
    return 0, {}


def quarantine_path(store) -> str | None:
    """Path of the latest quarantine version's file (None if there is none)."""
    loc = StoreLocation.of(store)
    versions = _quarantine_versions(loc)
    return loc.path(REPORT_DIR, QUARANTINE_DIR, f"v{versions[-1]:06d}.json") if versions else None


def load_quarantine(store) -> dict[str, SceneFailure]:
    """{scene key: failure} of the latest quarantine version; {} if there is none.
    A report that cannot be parsed raises ValueError naming the file."""
    return _latest_quarantine(StoreLocation.of(store))[1]


def update_quarantine(
    store,
    failed: Iterable[SceneFailure],
    resolved: Iterable[str] = (),
    manifest_version: int | None = None,
    max_attempts: int = 200,
) -> dict[str, SceneFailure]:
    """Merge ``failed`` into the quarantine, drop the ``resolved`` keys (scenes now
    committed) and return the new {key: failure}; a compare-and-swap on the
    quarantine version (see the module docstring).

    A scene that fails again replaces its older entry. Resolved keys win over
    failures of the same call (the scene is in the store)."""
    loc = StoreLocation.of(store)
    failed, resolved = list(failed), list(resolved)
    for n in range(max_attempts):
        version, current = _latest_quarantine(loc)
        for f in failed:
            current[f.key] = f
        for key in resolved:
            current.pop(key, None)
        entries = dict(sorted(current.items()))
        payload = {
            "format": QUARANTINE_FORMAT,
            "version": version + 1,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "manifest_version": manifest_version,
            "count": len(entries),
            "scenes": [f.to_json() for f in entries.values()],
        }
        if loc.create_exclusive(json.dumps(payload, indent=1).encode(), REPORT_DIR, QUARANTINE_DIR,
                                f"v{version + 1:06d}.json"):
            for old in _quarantine_versions(loc)[:-QUARANTINE_KEEP]:
                loc.remove_file(REPORT_DIR, QUARANTINE_DIR, f"v{old:06d}.json")
            return entries
        time.sleep(random.uniform(0.0, 0.005 * min(n + 1, 20)))  # lost the race: re-apply on the new latest
    raise RuntimeError(f"quarantine of {loc.url}: gave up after {max_attempts} update races")


def write_build_report(store, summary: dict) -> str:
    """Write one build's summary as ``reports/build-v{N:06d}-<utc>.json`` (N =
    the manifest version it ended at, 0 if none); returns the path."""
    version = summary.get("manifest_version") or 0
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    name = f"build-v{int(version):06d}-{stamp}-{uuid.uuid4().hex[:6]}.json"
    loc = StoreLocation.of(store)
    loc.write_bytes(json.dumps(summary, indent=1).encode(), REPORT_DIR, name)  # atomic on every kind of store
    return loc.path(REPORT_DIR, name)


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
