"""Versioned manifests: the only thing readers trust about what a store holds.

``manifests/v{N:06d}.json`` lists the committed shards and, per shard, the
scenes it serves (a shard may hold scenes no manifest lists any more: a scene
that was re-processed or whose source left the build). Version N+1 names its
parent N. The latest version is the highest N present; a version file is
created exclusively (see ``StoreLocation.create_exclusive``), so two committers
racing for the same N cannot overwrite each other: the loser gets
ManifestConflictError and re-plans.
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from typing import Iterable

from pipelines.store.errors import (
    ManifestConflictError,
    ManifestFormatError,
    ManifestVersionError,
    NoManifestError,
    StoreFormatError,
)
from pipelines.store.layout import COUNT_IMAGE_GROUPS, SHARD_FORMAT
from pipelines.store.location import MANIFEST_DIR, SHARD_DIR, StoreLocation
from pipelines.store.records import INVENTORY, SceneEntry, ShardInfo

MANIFEST_FORMAT = "concerto-store-manifest/1"
_NAME = re.compile(r"^v(\d{6,})\.json$")


def manifest_name(version: int) -> str:
    return f"v{version:06d}.json"


@dataclass
class Manifest:
    version: int
    parent: int | None
    created: str
    shards: list[ShardInfo]
    note: str = ""
    extra: dict = field(default_factory=dict)
    # who made this version (a Prefect flow-run id or a CLI run id) and whether
    # it ends that run ("complete") or is one of its resumable batch commits
    # ("partial"); readers open the latest complete version by default
    run_id: str = ""
    state: str = "complete"
    # {source name: {kind, path, name, options, frame_gap, settings}}: how each
    # source of the dataset was built, so a run without sources can refresh
    # them all and a repair can rebuild a damaged shard's scenes
    sources: dict = field(default_factory=dict)

    def scenes(self) -> dict[str, tuple[str, SceneEntry]]:
        """{scene key: (shard id, entry)} over every listed scene."""
        return {s.key: (sh.id, s) for sh in self.shards for s in sh.scenes}

    @property
    def outdated_shards(self) -> list[ShardInfo]:
        """Listed shards written in an older shard format (no chunk checksums)."""
        return [sh for sh in self.shards if sh.format != SHARD_FORMAT]

    @property
    def store_format(self) -> int:
        """2 when every listed shard carries chunk checksums, else 1."""
        return 1 if self.outdated_shards else 2

    def shard(self, shard_id: str) -> ShardInfo:
        for sh in self.shards:
            if sh.id == shard_id:
                return sh
        raise KeyError(f"shard '{shard_id}' is not listed in manifest v{self.version}")

    def source_counts(self) -> dict[str, dict[str, int]]:
        """{source: {scenes, segments, points, images, corr}}, as the manifest's
        ``sources`` records it (``segments``: ``COUNT_IMAGE_GROUPS``, the number
        of image groups)."""
        out: dict[str, dict[str, int]] = {}
        for sh in self.shards:
            for s in sh.scenes:
                c = out.setdefault(s.source, {"scenes": 0, COUNT_IMAGE_GROUPS: 0, "points": 0, "images": 0, "corr": 0})
                c["scenes"] += 1
                c[COUNT_IMAGE_GROUPS] += s.n_image_groups
                c["points"] += s.n_points
                c["images"] += s.n_images
                c["corr"] += s.n_corr
        return dict(sorted(out.items()))

    @property
    def n_image_groups(self) -> int:
        return sum(sh.n_image_groups for sh in self.shards)

    def to_json(self) -> dict:
        return {
            "format": MANIFEST_FORMAT,
            "version": self.version,
            "parent": self.parent,
            "created": self.created,
            "note": self.note,
            "run_id": self.run_id,
            "state": self.state,
            "store_format": self.store_format,
            "sources": self.source_counts(),
            "source_specs": self.sources,
            "shards": [sh.to_json() for sh in self.shards],
            "extra": self.extra,
        }

    @staticmethod
    def from_json(d: dict) -> "Manifest":
        return Manifest(
            version=int(d["version"]),
            parent=d.get("parent"),
            created=d.get("created", ""),
            shards=[ShardInfo.from_json(s) for s in d["shards"]],
            note=d.get("note", ""),
            extra=d.get("extra", {}),
            run_id=d.get("run_id", ""),
            state=d.get("state", "complete"),  # older manifests: every version was complete
            sources=d.get("source_specs", {}),
        )


def list_versions(store) -> list[int]:
    """Committed manifest versions, ascending (temp files are ignored)."""
    loc = StoreLocation.of(store)
    out = []
    for name in loc.listdir(MANIFEST_DIR):
        m = _NAME.match(name)
        if m:
            out.append(int(m.group(1)))
    return sorted(out)


def latest_version(store) -> int | None:
    v = list_versions(store)
    return v[-1] if v else None


STATES = ("partial", "complete")


def load_manifest(store, version: int | None = None, complete: bool = False) -> Manifest:
    """The manifest at ``version`` (default: the latest; with ``complete``, the
    latest whose state is "complete", i.e. not a batch commit of a build that
    is running or was killed)."""
    loc = StoreLocation.of(store)
    versions = list_versions(loc)
    if not versions:
        raise NoManifestError(f"no manifest at {loc.url} (the store is empty or does not exist)")
    if version is None and complete:
        for v in reversed(versions):
            m = load_manifest(loc, v)
            if m.state == "complete":
                return m
        raise NoManifestError(f"no complete manifest at {loc.url} (versions {versions} are all partial: "
                              f"a build is running or was killed; re-run it, or open a version explicitly)")
    if version is None:
        version = versions[-1]
    if version not in versions:
        raise ManifestVersionError(f"manifest version {version} not found at {loc.url}; available versions: {versions}")
    name = manifest_name(version)
    try:
        d = json.loads(loc.read_bytes(MANIFEST_DIR, name))
    except (ValueError, UnicodeDecodeError) as e:
        raise ManifestFormatError(f"{loc.url}/{MANIFEST_DIR}/{name}: not valid JSON ({e})") from e
    if not isinstance(d, dict) or d.get("format") != MANIFEST_FORMAT:
        raise ManifestFormatError(f"{loc.url}/{MANIFEST_DIR}/{name}: format is not {MANIFEST_FORMAT}")
    try:
        return Manifest.from_json(d)
    except (KeyError, TypeError, ValueError) as e:
        raise ManifestFormatError(f"{loc.url}/{MANIFEST_DIR}/{name}: malformed ({type(e).__name__}: {e})") from e


def outdated_store_message(url: str, m: Manifest) -> str:
    return (f"store {url} v{m.version} has store format {m.store_format} ({len(m.outdated_shards)} shards without "
            f"chunk checksums): it opens read-only; run `concerto-store {url} --migrate` to rewrite it in format 2")


def commit(
    store,
    base_version: int | None,
    added_shards: Iterable[ShardInfo] = (),
    removed_shards: Iterable[str] = (),
    removed_scenes: Iterable[str] = (),
    note: str = "",
    run_id: str = "",
    state: str = "complete",
    sources: dict | None = None,
    drop_sources: Iterable[str] = (),
) -> int:
    """Create manifest ``base_version + 1`` = base - removed shards - removed
    scenes + added shards, and return its version.

    ``base_version`` None means the store has no manifest yet. Raises
    ManifestConflictError if the new version already exists (someone committed
    first: re-plan against the newer manifest), ValueError for inconsistent
    requests (a scene key served twice, removing something not listed, an
    added shard whose folder is missing).

    ``run_id``/``state``: who made the version and whether it ends that run
    (see ``Manifest``). ``sources``: source records to add or replace (by
    name); ``drop_sources``: names whose records leave the manifest."""
    loc = StoreLocation.of(store)
    if state not in STATES:
        raise ValueError(f"manifest state must be one of {STATES}, got {state!r}")
    removed_shards = set(removed_shards)
    base = _base_manifest(loc, base_version, removed_shards)
    shards = _without(base.shards, base_version, removed_shards, set(removed_scenes))
    shards += _checked_additions(loc, added_shards, {sh.id for sh in base.shards}, base_version)
    _check_each_scene_once(shards)
    version = (base_version or 0) + 1
    m = Manifest(
        version=version,
        parent=base_version,
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        shards=shards,
        note=note,
        run_id=run_id,
        state=state,
        sources={k: v for k, v in {**base.sources, **(sources or {})}.items() if k not in set(drop_sources)},
    )
    data = json.dumps(m.to_json(), indent=1).encode()
    if not loc.create_exclusive(data, MANIFEST_DIR, manifest_name(version)):
        raise ManifestConflictError(
            f"manifest v{version} already exists at {loc.url}: another writer committed first; re-plan against it"
        )
    return version


def _base_manifest(loc: StoreLocation, base_version: int | None, removed_shards: set[str]) -> Manifest:
    """The version a commit starts from (an empty one for a store without manifest)."""
    if base_version is None:
        if list_versions(loc):
            raise ManifestConflictError(f"{loc.url} already has manifest v{latest_version(loc)}; commit against it")
        return Manifest(version=0, parent=None, created="", shards=[])
    base = load_manifest(loc, base_version)
    # an old-format store changes only by a commit that retires all its old shards (a migration)
    if {sh.id for sh in base.outdated_shards} - removed_shards:
        raise StoreFormatError(outdated_store_message(loc.url, base))
    return base


def _without(shards: list[ShardInfo], base_version: int | None, removed_shards: set[str],
             removed_scenes: set[str]) -> list[ShardInfo]:
    """``shards`` less the removed shards and scenes; removing what is not listed is an error."""
    unknown = removed_shards - {sh.id for sh in shards}
    if unknown:
        raise ValueError(f"cannot remove shards not in v{base_version}: {sorted(unknown)}")
    out: list[ShardInfo] = []
    for sh in shards:
        if sh.id in removed_shards:
            continue
        keep = [s for s in sh.scenes if s.key not in removed_scenes]
        if keep:
            out.append(sh if len(keep) == len(sh.scenes) else sh.with_scenes(keep))
    missing = removed_scenes - {s.key for sh in shards for s in sh.scenes}
    if missing:
        raise ValueError(f"cannot remove scenes not in v{base_version}: {sorted(missing)}")
    return out


def _checked_additions(loc: StoreLocation, added: Iterable[ShardInfo], base_ids: set[str],
                       base_version: int | None) -> list[ShardInfo]:
    """Added shards, each of the current format, new to the base and fully written."""
    out = []
    for sh in added:
        if sh.format != SHARD_FORMAT:
            raise StoreFormatError(f"shard '{sh.id}' has format {sh.format!r}; only {SHARD_FORMAT!r} can be committed")
        if sh.id in base_ids:
            raise ValueError(f"shard '{sh.id}' is already listed in v{base_version}")
        if not loc.exists(SHARD_DIR, sh.id, INVENTORY):  # written last by the writer
            raise ValueError(f"shard '{sh.id}' is missing or unfinished in {loc.url}/{SHARD_DIR}")
        out.append(sh)
    return out


def _check_each_scene_once(shards: list[ShardInfo]) -> None:
    seen: dict[str, str] = {}
    for sh in shards:
        for s in sh.scenes:
            if s.key in seen:
                raise ValueError(f"scene '{s.key}' would be served by two shards ('{seen[s.key]}' and '{sh.id}')")
            seen[s.key] = sh.id
