"""Shard store benchmarks (run once; prints ratios against baselines measured in
the same run).

(a) random-order sample reads: the zarr store (direct chunk reads, and zarr-python's
    own read path) vs a folder of per-scene files in
    the Pointcept layout (coord.npy, color.npy, normal.npy, segment.npy,
    instance.npy, images as PNG, K/pose and per-image correspondences as .npy).
    A second baseline stores images as raw .npy (no decode cost, 3-10x the disk).
(b) incremental add: time to add dataset B to a store holding A, divided by the
    time to build B alone into an empty store.

    python benchmarks/bench_store.py [--scenes 8] [--points 150000] [--height 480 --width 640] [--samples 40]

Defaults are ScanNet-like (150k points, 640x480 frames).
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # testkit is not installed

from pipelines.store import ShardStore, load_manifest, plan_update  # noqa: E402
from preprocess.sources.base import SceneRef  # noqa: E402
from benchmarks.timing import json_line  # noqa: E402
from testkit.random_store_scenes import random_processed_scene  # noqa: E402
from testkit.store_update import write_and_commit  # noqa: E402


def make_dataset(rng, source, n_scenes, n_points, n_images, hw):
    return [
        random_processed_scene(rng, source, f"{source}{i:03d}", n_points=n_points, image_sizes=[hw] * n_images,
                        n_image_groups=n_images // 2, geometric=True)
        for i in tqdm(range(n_scenes), desc=f"synthesising {source}", leave=False)
    ]


def write_folder(root: Path, scenes, png: bool):
    """Pointcept-style: one folder per scene, one file per array."""
    for ps in scenes:
        d = root / ps.scene.source / ps.scene.scene_id
        (d / "images").mkdir(parents=True)
        p = ps.scene.points
        for name in ("coord", "color", "normal", "segment", "instance"):
            np.save(d / f"{name}.npy", getattr(p, name))
        for i, (f, c) in enumerate(zip(ps.scene.frames, ps.correspondences)):
            if png:
                Image.fromarray(f.rgb).save(d / "images" / f"{i:04d}.png")
            else:
                np.save(d / "images" / f"{i:04d}.npy", f.rgb)
            np.save(d / "images" / f"{i:04d}_K.npy", f.K)
            np.save(d / "images" / f"{i:04d}_pose.npy", f.pose)
            np.save(d / "images" / f"{i:04d}_corr_point.npy", c.point_index)
            np.save(d / "images" / f"{i:04d}_corr_pixel.npy", c.pixel)
        np.save(d / "image_groups.npy", ps.image_groups)


def read_folder_sample(root: Path, key: str, seg: int, png: bool) -> dict:
    d = root / key
    out = {n: np.load(d / f"{n}.npy") for n in ("coord", "color", "normal", "segment", "instance")}
    views = np.load(d / "image_groups.npy")[seg]
    img = lambda i: np.asarray(Image.open(d / "images" / f"{i:04d}.png")) if png else np.load(d / "images" / f"{i:04d}.npy")  # noqa: E731
    out["rgb"] = [img(i) for i in views]
    out["K"] = np.stack([np.load(d / "images" / f"{i:04d}_K.npy") for i in views])
    out["pose"] = np.stack([np.load(d / "images" / f"{i:04d}_pose.npy") for i in views])
    out["corr_point"] = [np.load(d / "images" / f"{i:04d}_corr_point.npy") for i in views]
    out["corr_pixel"] = [np.load(d / "images" / f"{i:04d}_corr_pixel.npy") for i in views]
    return out


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def bench_reads(tmp: Path, scenes, n_samples: int, rng):
    url = str(tmp / "store")
    plan = plan_update(None, [SceneRef(p.scene.source, p.scene.scene_id, p.scene.content_hash) for p in scenes])
    write_and_commit(url, plan, scenes)
    write_folder(tmp / "png", scenes, png=True)
    write_folder(tmp / "npy", scenes, png=False)
    store = ShardStore.open(url)
    samples = [(store.locate(i), store[i]["key"]) for i in range(len(store))]
    order = rng.integers(0, len(store), n_samples)

    def run(name, fn):
        """(samples/s of wall time, samples/s of process CPU time). CPU time is
        the steadier number on a shared machine: it ignores waiting for a core."""
        fn(order[0])  # warm: open shards, page cache
        t0, c0 = time.perf_counter(), time.process_time()
        for i in tqdm(order, desc=name, leave=False):
            fn(int(i))
        return n_samples / (time.perf_counter() - t0), n_samples / (time.process_time() - c0)

    store_rate = run("zarr store", lambda i: store[i])
    via_zarr = ShardStore.open(url, direct=False)
    zarr_path_rate = run("zarr store, zarr read path", lambda i: via_zarr[i])
    png_rate = run("npy+png folder", lambda i: read_folder_sample(tmp / "png", samples[i][1], samples[i][0][2], True))
    npy_rate = run("npy folder", lambda i: read_folder_sample(tmp / "npy", samples[i][1], samples[i][0][2], False))
    # check both paths return the same sample
    a, b = store[int(order[0])], read_folder_sample(tmp / "png", samples[order[0]][1], samples[order[0]][0][2], True)
    assert np.array_equal(a["coord"], b["coord"]) and all(np.array_equal(x, y) for x, y in zip(a["rgb"], b["rgb"]))
    sizes = {n: du(tmp / n) for n in ("store", "png", "npy")}
    return store_rate, zarr_path_rate, png_rate, npy_rate, sizes


def bench_incremental(tmp: Path, a, b):
    refs = lambda xs: [SceneRef(p.scene.source, p.scene.scene_id, p.scene.content_hash) for p in xs]  # noqa: E731
    # B alone into an empty store
    url_b = str(tmp / "b_only")
    t0 = time.perf_counter()
    plan = plan_update(None, refs(b))
    write_and_commit(url_b, plan, b)
    t_alone = time.perf_counter() - t0
    # A first (not timed), then add B
    url_ab = str(tmp / "a_then_b")
    write_and_commit(url_ab, plan_update(None, refs(a)), a)
    t0 = time.perf_counter()
    plan = plan_update(load_manifest(url_ab), refs(a + b))
    assert len(plan.new) == len(b) and len(plan.unchanged) == len(a)
    write_and_commit(url_ab, plan, [p for p in b])
    t_add = time.perf_counter() - t0
    return t_add, t_alone


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenes", type=int, default=8)
    p.add_argument("--points", type=int, default=150_000)
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--samples", type=int, default=40)
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    hw = (args.height, args.width)
    tmp = Path(tempfile.mkdtemp(prefix="bench_store_"))
    try:
        a = make_dataset(rng, "a", args.scenes, args.points, args.images, hw)
        store_rate, zarr_path_rate, png_rate, npy_rate, sizes = bench_reads(tmp / "reads", a, args.samples, rng)
        print(f"(a) random sample reads ({args.scenes} scenes x {args.points} points, {args.images} images {hw[1]}x{hw[0]} per scene, 4 per sample, {args.samples} samples)")
        print("                        samples/s (wall)  samples/s (CPU)   disk")
        for name, rate, size in (("zarr store", store_rate, sizes["store"]), ("  via zarr-python", zarr_path_rate, sizes["store"]), ("npy + png folder", png_rate, sizes["png"]), ("npy folder (raw)", npy_rate, sizes["npy"])):
            print(f"    {name:18s} {rate[0]:10.1f} {rate[1]:16.1f} {size / 1e6:12.1f} MB")
        print(f"    store / npy+png baseline: {store_rate[0] / png_rate[0]:.2f}x wall, {store_rate[1] / png_rate[1]:.2f}x CPU (goal >= 2)")
        print(f"    direct chunk reads / zarr-python reads: {store_rate[0] / zarr_path_rate[0]:.2f}x wall, {store_rate[1] / zarr_path_rate[1]:.2f}x CPU")
        print(f"    store / raw-npy baseline: {store_rate[0] / npy_rate[0]:.2f}x wall, {store_rate[1] / npy_rate[1]:.2f}x CPU")
        b = make_dataset(rng, "b", args.scenes, args.points, args.images, hw)
        t_add, t_alone = bench_incremental(tmp / "inc", a, b)
        print(f"(b) add B to a store holding A: {t_add:.2f} s; build B alone: {t_alone:.2f} s; ratio = {t_add / t_alone:.2f} (goal <= 1.2)")
        json_line("bench_store", "random sample reads/s (wall) vs a folder of .npy + .png files", store_rate[0], png_rate[0],
                  ">= 2")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
