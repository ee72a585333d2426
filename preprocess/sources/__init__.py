"""Dataset adapters. ``make_source(kind, path, **options)`` builds one by kind."""
from preprocess.sources.base import SceneRef, SceneSource, SourceError, available_sources, make_source, register_source

__all__ = ["SceneRef", "SceneSource", "SourceError", "available_sources", "make_source", "register_source"]
