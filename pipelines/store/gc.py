"""Delete what no kept manifest lists: unlisted shards (left by failed or
superseded writes, or by removed sources) and, optionally, old manifests."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from pipelines.store.location import MANIFEST_DIR, SHARD_DIR, StoreLocation
from preprocess.atomic_file import TMP_PREFIX
from pipelines.store.manifest import list_versions, load_manifest, manifest_name


@dataclass
class GcReport:
    removed_shards: list[str] = field(default_factory=list)
    removed_manifests: list[int] = field(default_factory=list)
    removed_temp_files: list[str] = field(default_factory=list)
    kept_versions: list[int] = field(default_factory=list)


def gc(store, keep_last: int | None = None, min_age_s: float = 3600.0, dry_run: bool = False) -> GcReport:
    """Remove shard folders listed by none of the kept manifests.

    keep_last: keep only the newest ``keep_last`` manifests (older versions can
    no longer be opened); None keeps every version. min_age_s: leave alone
    unlisted shards and temp files younger than this, because a writer may be
    about to commit them (on object stores a shard's age is its newest object's).

    A shard listed by a kept version is never deleted, also when that version
    was committed while gc ran: the versions are read again just before deleting."""
    loc = StoreLocation.of(store)
    report = GcReport()
    versions = list_versions(loc)
    kept = versions if keep_last is None else versions[-keep_last:] if keep_last > 0 else []
    if versions and not kept:
        raise ValueError("gc must keep at least the latest manifest (keep_last >= 1)")
    report.kept_versions = kept
    live = set()
    for v in kept:
        live.update(sh.id for sh in load_manifest(loc, v).shards)
    now = time.time()

    def old_enough(*parts) -> bool:
        m = loc.modified(*parts)
        if m is None:  # unknown age (some fsspec filesystems): only when forced
            return min_age_s <= 0
        return now - m >= min_age_s

    for v in versions:
        if v not in kept:
            report.removed_manifests.append(v)
            if not dry_run:
                loc.remove_file(MANIFEST_DIR, manifest_name(v))
    for name in loc.listdir(MANIFEST_DIR):
        if name.startswith(TMP_PREFIX) and old_enough(MANIFEST_DIR, name):
            report.removed_temp_files.append(name)
            if not dry_run:
                loc.remove_file(MANIFEST_DIR, name)
    candidates = [sid for sid in loc.listdir(SHARD_DIR) if sid not in live and old_enough(SHARD_DIR, sid)]
    # A commit may have landed since the manifests were read (a build running
    # beside gc): re-read the versions and spare whatever a new one lists.
    seen = set(versions)
    for v in list_versions(loc):
        if v not in seen:
            live.update(sh.id for sh in load_manifest(loc, v).shards)
    for sid in candidates:
        if sid in live:
            continue
        if not loc.is_local and not loc.file_sizes(SHARD_DIR, sid):
            continue  # an emptied prefix some S3 servers keep listing for a while: nothing to delete
        report.removed_shards.append(sid)
        if not dry_run:
            loc.remove_tree(SHARD_DIR, sid)
    return report
