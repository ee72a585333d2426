"""What a build is asked to do: ``BuildOptions``, made once (by the CLI, from
the flow's parameters, or by a caller of ``run_build``) and passed whole.

Every default of a build option is written here and nowhere else: the CLI and
the flow take theirs from these classes. Adding an option: a field here, an
argument in ``pipelines/build/cli.py`` (``add_build_args``), a parameter of
``flows/build_dataset.build_dataset`` with the same name, and its use.
"""
from __future__ import annotations

import os
import time
import uuid
from dataclasses import InitVar, dataclass, field, fields
from typing import Optional

from pipelines.image_groups import DEFAULT_MIN_CORRESPONDENCES
from pipelines.store import StoreLocation
from preprocess.geometry import DEPTH_EPS
from preprocess.sources.base import SceneSource, available_sources, make_source

SOURCE_KEYS = ("kind", "path", "name", "options", "frame_gap")


def absolute_location(path_or_url: str) -> str:
    """A local path made absolute (workers may run in another directory); a
    URL with a scheme (s3://, memory://, file://) is returned unchanged."""
    return path_or_url if "://" in path_or_url else os.path.abspath(os.path.expanduser(path_or_url))


@dataclass(frozen=True)
class SourceSpec:
    """One source of a build: ``make_source(kind, path, name, **options)``.
    ``frame_gap`` None: the flow-wide value, else the kind's default."""

    kind: str
    path: str
    name: Optional[str] = None
    options: dict = field(default_factory=dict)
    frame_gap: Optional[int] = None

    @property
    def source_name(self) -> str:
        """The name scene keys use ("name/scene_id")."""
        return self.name or self.kind

    def make(self) -> SceneSource:
        return make_source(self.kind, self.path, name=self.name, **self.options)

    def __hash__(self) -> int:  # options is a dict; identity is kind, path, name
        return hash((self.kind, self.path, self.name))

    def as_dict(self) -> dict:
        """The ``from_dict`` form (the flow's ``sources`` entries)."""
        return {"kind": self.kind, "path": self.path, "name": self.name, "options": dict(self.options),
                "frame_gap": self.frame_gap}

    @staticmethod
    def from_dict(d: dict) -> "SourceSpec":
        """{kind, path, name?, options?, frame_gap?}; unknown keys are an error."""
        if not isinstance(d, dict):
            raise ValueError(f"a source must be a mapping {{kind, path, name?, options?}}, got {d!r}")
        unknown = sorted(set(d) - set(SOURCE_KEYS))
        if unknown:
            raise ValueError(f"source {d!r}: unknown key(s) {unknown}; known: {', '.join(SOURCE_KEYS)}")
        for req in ("kind", "path"):
            if not d.get(req):
                raise ValueError(f"source {d!r}: '{req}' is required")
        gap = d.get("frame_gap")
        if gap is not None and (not isinstance(gap, int) or gap < 1):
            raise ValueError(f"source {d!r}: frame_gap must be an integer >= 1")
        return SourceSpec(str(d["kind"]), absolute_location(str(d["path"])), d.get("name") or None,
                          dict(d.get("options") or {}), gap)

    @staticmethod
    def parse(text: str) -> "SourceSpec":
        """``kind:path[:k=v,k=v,...]`` (the CLI form). ``name=`` and
        ``frame_gap=`` are taken out of the options; values are read as JSON
        when they parse (numbers, true/false), else kept as strings."""
        from preprocess.sources.base import parse_source_arg

        kind, path, options = parse_source_arg(text)
        name = options.pop("name", None)
        gap = options.pop("frame_gap", None)
        return SourceSpec.from_dict({"kind": kind, "path": path, "name": name, "options": options, "frame_gap": gap})


@dataclass(frozen=True)
class SceneSettings:
    """Per-scene processing settings shared by a build (frame_gap is per source);
    the manifest records them with each source."""

    eps: float = DEPTH_EPS
    min_correspondences: int = DEFAULT_MIN_CORRESPONDENCES
    max_image_side: Optional[int] = None
    render_backend: str = "auto"


def check_kind(spec: SourceSpec) -> None:
    """Refuse an unknown adapter kind when the options are made, before any
    scheduler, cluster or flow run starts."""
    known = available_sources()
    if spec.kind not in known:
        raise ValueError(f"source '{spec.kind}:{spec.path}': unknown source kind '{spec.kind}'; "
                         f"known kinds: {', '.join(known)}")


def new_run_id() -> str:
    return "cli-" + time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:8]


@dataclass(frozen=True, kw_only=True)
class BuildOptions:
    """One build: where (``store``), from what (``sources``) and how.

    store: a path (made absolute), an fsspec URL (``s3://bucket/prefix``:
    workers write shard chunks straight to the object store) or a
    StoreLocation; ``storage_options`` (fsspec options of the URL: credentials,
    ``client_kwargs.endpoint_url``) go into that location, which carries them
    to the workers and never prints them. sources: specs or ``{kind, path,
    name?, options?, frame_gap?}`` dicts; empty: every source the store records.
    prune: also stop listing the scenes this run did not find. frame_gap: every
    n-th frame is a candidate image (None: per source kind). settings: the
    per-scene processing. scenes_per_task: scenes per batch (one task).
    shard_size: scenes per shard. gc_grace_seconds: unlisted shards older than
    this are deleted at start. run_id: recorded in the manifests."""

    store: StoreLocation
    sources: tuple[SourceSpec, ...] = ()
    prune: bool = False
    frame_gap: Optional[int] = None
    settings: SceneSettings = SceneSettings()
    scenes_per_task: int = 4
    shard_size: int = 4
    gc_grace_seconds: float = 3600.0
    run_id: str = field(default_factory=new_run_id)
    progress: bool = False
    storage_options: InitVar[Optional[dict]] = None

    def __post_init__(self, storage_options: Optional[dict]) -> None:
        store = absolute_location(self.store) if isinstance(self.store, str) else self.store
        object.__setattr__(self, "store", StoreLocation.of(store, storage_options))
        object.__setattr__(self, "sources", tuple(
            s if isinstance(s, SourceSpec) else SourceSpec.from_dict(dict(s)) for s in self.sources))
        for spec in self.sources:
            check_kind(spec)
        for name in ("scenes_per_task", "shard_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"build-dataset: {name} must be >= 1, got {getattr(self, name)}")
        if not self.settings.eps > 0:
            raise ValueError(f"build-dataset: eps must be > 0 (metres), got {self.settings.eps}")

    @classmethod
    def from_params(cls, **params) -> "BuildOptions":
        """From flat parameters, as the CLI and the flow name them: the fields
        of ``SceneSettings`` (eps, min_correspondences, ...) go into ``settings``,
        the rest are fields of this class; None leaves ``run_id`` to its default."""
        scene = {f.name: params.pop(f.name) for f in fields(SceneSettings) if f.name in params}
        if params.get("run_id", "") is None:
            del params["run_id"]
        return cls(settings=SceneSettings(**scene), **params)

    @staticmethod
    def param_names() -> set[str]:
        """The flat names ``from_params`` takes (but ``storage_options``)."""
        return {f.name for f in fields(BuildOptions)} | {f.name for f in fields(SceneSettings)}

    @property
    def source_names(self) -> list[str]:
        return [s.source_name for s in self.sources]

