"""Building a shard store from scene sources, without Prefect.

- ``options``: ``BuildOptions`` (one build: store, sources, settings; every
  default written once), ``SourceSpec``, ``SceneSettings``.
- ``plan``: resolve the sources, plan against the latest manifest, cut batches.
- ``batch``: one batch on a worker (load -> depth -> process -> shards).
- ``commit``: list finished work in new manifest versions (driver, serial).
- ``retry``: ``is_transient``, the one "retry this?" predicate, and the retry loop.
- ``steps``: the steps of a build, each taking ``BuildOptions`` (the flow wraps
  them as Prefect tasks).
- ``executors``: where steps run (serial, process pool, Dask).
- ``run``: ``run_build``, the loop, and its summary.
- ``cli``: ``python -m pipelines.build``.
"""
from pipelines.build.options import BuildOptions, SceneSettings, SourceSpec
from pipelines.build.run import BuildSummary, run_build

__all__ = ["BuildOptions", "BuildSummary", "SceneSettings", "SourceSpec", "run_build"]
