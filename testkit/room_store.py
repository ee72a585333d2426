"""A small labelled shard store of procedural rooms (for the probe benchmark and tests).

Runs the real pipeline on the ``synthetic`` source: procedural rooms (classes
``preprocess.procedural.rooms.CLASS_NAMES``, per-point semantic labels) ->
depth rendered from the mesh -> correspondences and image groups
(``pipelines.image_groups.process_scene``) -> one Zarr shard (``ShardWriter``) ->
a committed manifest.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Union


def build_room_store(root: Union[str, Path], num_scenes: int = 8, seed: int = 0, points_per_scene: int = 20_000,
                     frames_per_scene: int = 4, image_size: tuple[int, int] = (64, 48),
                     render_backend: str = "auto", progress: bool = False) -> str:
    """Write ``root/raw`` (generated rooms) and the store ``root/store``; returns the store URL.

    image_size is (width, height) in pixels. A room that fails to load or
    process is skipped with a warning naming it; at least one must succeed.
    """
    from pipelines.image_groups import process_scene
    from pipelines.store import ShardWriter, commit
    from preprocess.render.complete_depth import complete_depth
    from preprocess.sources.synthetic import SyntheticSource

    root = Path(root)
    source = SyntheticSource(root / "raw", num_scenes=num_scenes, seed=seed, frames_per_scene=frames_per_scene,
                             image_width=image_size[0], image_height=image_size[1],
                             points_per_scene=points_per_scene, render_backend=render_backend)
    refs = source.discover()
    if progress:
        from tqdm import tqdm

        refs = tqdm(refs, desc="rooms", dynamic_ncols=True)
    scenes = []
    for ref in refs:
        try:
            scene = complete_depth(source.load(ref), backend=render_backend)
            scenes.append(process_scene(scene, min_correspondences=1))
        except Exception as exc:  # noqa: BLE001 - one bad room must not sink the store
            warnings.warn(f"room store: scene '{ref.key}' skipped ({type(exc).__name__}: {exc})", stacklevel=2)
    if not scenes:
        raise RuntimeError(f"room store {root}: every scene failed")
    url = str(root / "store")
    info = ShardWriter(url).write(scenes)
    commit(url, None, [info], note="labelled procedural rooms")
    return url


def add_room_benchmark_args(ap, out: str, epochs: int):
    """The arguments the synthetic-room evaluation benchmarks share."""
    ap.add_argument("--out", default=out)
    ap.add_argument("--data", default=None, help="existing labelled store (default: build one under --out)")
    ap.add_argument("--scenes", type=int, default=8)
    ap.add_argument("--points", type=int, default=20_000)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--checkpoint", default=None, help="use this encoder instead of pretraining one")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=epochs)
    return ap


def rooms_and_encoder(args, progress: bool = False) -> tuple[str, str, "float | None"]:
    """(store URL, checkpoint, pretraining seconds): the rooms store (built under
    ``args.out`` unless ``args.data``) and a tiny encoder pretrained on it for
    ``args.steps`` steps (resumed if already there) unless ``args.checkpoint``."""
    import subprocess
    import sys
    import time

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    url = args.data or build_room_store(out / "rooms", num_scenes=args.scenes, points_per_scene=args.points,
                                        progress=progress)
    if args.checkpoint is not None:
        return url, args.checkpoint, None
    run = out / "pretrain"
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "concerto.train", "--data", url, "--config", "tiny", "--steps",
                    str(args.steps), "--output", str(run), "--resume"] + ([] if progress else ["--no-progress"]),
                   check=True)
    return url, str(run), time.perf_counter() - t
