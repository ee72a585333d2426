"""Incremental updates: what a build must (re)process, and the commits that
stop listing scenes.

``plan_update`` compares the scenes a build discovered with what a manifest
lists (new / changed / unchanged / removed). The build then writes shards
itself (``ShardWriter.write`` in its workers) and lists them with
``manifest.commit`` (``pipelines.build.commit_batch``); this module writes no
scenes. A changed scene goes into a *new* shard and its old copy is simply no
longer listed; old shard files are never touched.

``commit_update`` commits a plan's removals (the build's ``commit_removals``)
and, optionally, shards written for the plan. A base shard that loses scenes
there is rewritten (its still-listed scenes read back and written into a
replacement shard) only when its live fraction of points falls below
``compact_below`` (default 0.5): that bounds the dead bytes a store carries to
about half. ``compact_below=1.0`` rewrites every shard that lost a scene;
``compact_below=0`` never rewrites. Removed sources are a manifest-only change;
``gc`` deletes the files once no kept manifest lists them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Protocol, Sequence

from pipelines.store.manifest import Manifest, commit, load_manifest
from pipelines.store.reader import ShardStore
from pipelines.store.records import ShardInfo
from pipelines.store.writer import ShardWriter


class RefLike(Protocol):
    """What plan_update needs of a SceneRef."""

    source: str
    key: str
    content_hash: str


@dataclass
class Plan:
    """What a build must do against manifest ``base_version`` (None: empty store).

    new / changed: refs to (re)process; unchanged / removed: scene keys.
    removed = listed scenes whose source left the build or whose source no
    longer lists them."""

    base_version: int | None
    new: list = field(default_factory=list)
    changed: list = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)

    @property
    def to_process(self) -> list:
        return self.new + self.changed

    @property
    def is_noop(self) -> bool:
        return not (self.new or self.changed or self.removed)

    def summary(self) -> str:
        base = "empty store" if self.base_version is None else f"v{self.base_version}"
        return (f"plan against {base}: {len(self.new)} new, {len(self.changed)} changed, "
                f"{len(self.unchanged)} unchanged, {len(self.removed)} removed")


def plan_update(manifest: Manifest | None, refs: Iterable[RefLike], sources_present: Iterable[str] | None = None) -> Plan:
    """Compare discovered scenes ``refs`` (key, content_hash, source) with what
    ``manifest`` lists. ``sources_present``: the sources in this build (default:
    the sources of ``refs``); listed scenes of other sources are removed."""
    refs = list(refs)
    keys = [r.key for r in refs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"duplicate scene keys in refs: {sorted({k for k in keys if keys.count(k) > 1})[:5]}")
    present = set(sources_present) if sources_present is not None else {r.source for r in refs}
    stray = {r.source for r in refs} - present
    if stray:
        raise ValueError(f"refs from sources not in sources_present: {sorted(stray)}")
    listed = manifest.scenes() if manifest is not None else {}
    plan = Plan(base_version=None if manifest is None else manifest.version)
    for r in sorted(refs, key=lambda r: r.key):
        if r.key not in listed:
            plan.new.append(r)
        elif listed[r.key][1].content_hash != r.content_hash:
            plan.changed.append(r)
        else:
            plan.unchanged.append(r.key)
    ref_keys = set(keys)
    plan.removed = sorted(k for k in listed if k not in ref_keys)
    return plan


@dataclass
class UpdateResult:
    version: int | None  # None when nothing had to change
    written: list[ShardInfo]  # new shards (new/changed scenes and compacted shards)
    compacted: list[str]  # base shards replaced by a rewrite


def commit_update(
    store,
    plan: Plan,
    written: Sequence[ShardInfo] = (),
    *,
    compact_below: float = 0.5,
    note: str = "",
    **manifest_fields,
) -> UpdateResult:
    """Commit ``plan`` on top of ``plan.base_version``: the shards ``written`` for
    it (``ShardWriter.write``, possibly in other processes) become listed, the
    old versions of their changed scenes and the removed scenes stop being
    listed, and base shards left with less than ``compact_below`` of their
    points live are rewritten (see the module docstring). Returns version None
    when there was nothing to commit. ``manifest_fields`` (run_id, state,
    sources, ...) go to ``commit``. Raises ManifestConflictError if another
    writer committed first (re-plan and retry; unlisted shards are ``gc``'s)."""
    written = list(written)
    new_keys = {s.key for sh in written for s in sh.scenes}
    stray = new_keys - {r.key for r in plan.to_process}
    if stray:
        raise ValueError(f"written shards hold scenes the plan did not ask for: {sorted(stray)[:5]}")
    if not written and not plan.removed:
        return UpdateResult(None, [], [])
    hidden = (new_keys & {r.key for r in plan.changed}) | set(plan.removed)
    base = load_manifest(store, plan.base_version) if plan.base_version is not None else None
    compacted: list[str] = []
    if base is not None and hidden:
        old = ShardStore.open(store, plan.base_version)
        writer = ShardWriter(store)
        for sh in base.shards:
            live = [e for e in sh.scenes if e.key not in hidden]
            if len(live) == len(sh.scenes) or not live:
                continue
            total = sh.points_written or sum(e.n_points for e in sh.scenes)
            if sum(e.n_points for e in live) / max(total, 1) < compact_below:
                written.append(writer.write([old.read_scene(e.key) for e in live]))
                compacted.append(sh.id)
    version = commit(
        store, plan.base_version, added_shards=written, removed_shards=compacted,
        removed_scenes=hidden if base is not None else (), note=note or plan.summary(), **manifest_fields,
    )
    return UpdateResult(version, written, compacted)

