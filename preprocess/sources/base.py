"""What every dataset adapter implements, and the registry that finds them by kind.

An adapter is constructed as ``Adapter(path, name=None, **options)``.
``discover()`` lists the scenes cheaply (no heavy loading) with a content hash of
their raw inputs; ``load(ref)`` reads one scene into the scene record
(``preprocess.scene.Scene``). Frames may come without depth when the scene has a
``mesh_path``: the renderer fills it in later (``preprocess.render``).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Protocol, runtime_checkable

from preprocess.scene import Scene, SceneError


@dataclass(frozen=True)
class SceneRef:
    """A scene found by ``discover``: enough to load it and to decide whether a
    store already holds it (``key`` + ``content_hash``)."""

    source: str
    scene_id: str
    content_hash: str

    @property
    def key(self) -> str:
        return f"{self.source}/{self.scene_id}"


@runtime_checkable
class SceneSource(Protocol):
    kind: str
    name: str

    def discover(self) -> list[SceneRef]: ...

    def load(self, ref: SceneRef) -> Scene: ...


class SourceError(SceneError):
    """A dataset layout problem: names the scene and the missing/malformed file."""


_REGISTRY: dict[str, Callable[..., SceneSource]] = {}


def register_source(kind: str):
    """Class decorator: ``@register_source("scannet")``."""

    def wrap(cls):
        cls.kind = kind
        _REGISTRY[kind] = cls
        return cls

    return wrap


def available_sources() -> list[str]:
    _import_builtin_sources()
    return sorted(_REGISTRY)


def source_class(kind: str):
    """The adapter class registered under ``kind``."""
    _import_builtin_sources()
    if kind not in _REGISTRY:
        raise ValueError(f"unknown source kind '{kind}'; known kinds: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[kind]


def make_source(kind: str, path: str | Path, name: str | None = None, **options) -> SceneSource:
    """Build the adapter registered under ``kind``; ``name`` (default: kind) is the
    source name used in store keys, so one kind can appear twice in a build."""
    return source_class(kind)(path, name=name, **options)


def parse_source_arg(text: str) -> tuple[str, str, dict]:
    """The command-line form of a source, ``kind:path[:key=value,...]`` ->
    (kind, path, options). Values are read as JSON when they parse (numbers,
    true/false, lists), else kept as strings."""
    import json

    kind, sep, rest = text.partition(":")
    if not sep or not kind or not rest:
        raise ValueError(f"source '{text}': expected kind:path[:key=value,...]")
    path, options = rest, {}
    head, sep, tail = rest.rpartition(":")
    if sep and head and "=" in tail and "/" not in tail.split("=", 1)[0]:
        path = head
        for item in tail.split(","):
            k, eq, v = item.partition("=")
            if not eq or not k.strip():
                raise ValueError(f"source '{text}': option '{item}' is not key=value")
            try:
                options[k.strip()] = json.loads(v.strip())
            except ValueError:
                options[k.strip()] = v.strip()
    return kind, path, options


def _import_builtin_sources() -> None:
    import importlib
    import pkgutil

    import preprocess.sources as pkg

    for mod in pkgutil.iter_modules(pkg.__path__):
        if mod.name != "base" and not mod.name.startswith("_"):
            importlib.import_module(f"preprocess.sources.{mod.name}")


def hash_files(paths: Iterable[str | Path], extra: str = "", chunk: int = 1 << 20) -> str:
    """sha1 over the bytes of ``paths`` (in the given order) and ``extra`` (e.g.
    the adapter's options). Used as a scene's content hash. Inside a
    ``hash_cache.stat_hash_cache`` block, files whose stat is unchanged since
    they were last hashed are not read again (same digest)."""
    from preprocess.sources.hash_cache import active_cache

    paths = list(paths)
    cache = active_cache()
    if cache is not None:
        return cache.digest(paths, extra, lambda: _sha1_files(paths, extra, chunk))
    return _sha1_files(paths, extra, chunk)


def _sha1_files(paths: list, extra: str, chunk: int) -> str:
    h = hashlib.sha1()
    h.update(extra.encode())
    for p in paths:
        p = Path(p)
        h.update(p.name.encode())
        with open(p, "rb") as f:
            while block := f.read(chunk):
                h.update(block)
    return h.hexdigest()
