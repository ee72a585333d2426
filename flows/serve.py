"""Serve the build-dataset flow without a work pool: this process registers a
deployment and runs its flow runs itself (stop it with Ctrl-C).

    PREFECT_API_URL=http://127.0.0.1:4200/api python -m flows.serve [--name synthetic]
    prefect deployment run build-dataset/synthetic --watch

Default parameters are the synthetic demo's (as in prefect.yaml); override
them per run with ``--params``.
"""
from __future__ import annotations

import argparse

SYNTHETIC_DEMO = {
    "sources": [{"kind": "synthetic", "path": "data/synthetic", "options": {"num_scenes": 8, "seed": 0}}],
    "store": "data/stores/synthetic",
    "scenes_per_task": 2,
    "shard_size": 2,
}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m flows.serve", description=__doc__.split("\n\n")[0])
    p.add_argument("--name", default="synthetic", help="deployment name (build-dataset/<name>)")
    args = p.parse_args(argv)
    from flows.build_dataset import build_dataset

    build_dataset.serve(name=args.name, parameters=SYNTHETIC_DEMO, tags=["concerto", "build-dataset"])


if __name__ == "__main__":
    main()
