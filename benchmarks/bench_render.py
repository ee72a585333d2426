"""Frames/s of every render backend at 640x480 against open3d's raw ray cast.

Baseline, measured in the same run on the same mesh and poses: open3d's
``RaycastingScene.cast_rays`` alone on a prepared float32 ray array (the ray
caster's own limit: no ray generation, no post-processing). Each backend is
timed depth only and depth + colour through ``make_renderer(...).render``,
on a procedural room (small mesh) and the same room tessellated to >= 300k
faces; the ratio is backend frame time / raw cast frame time (1.0 = at the
ray caster's limit). Each backend's depth is also compared with open3d's over
all 16 poses: pixels hit by one only, pixels off by more than 1e-4 m, how many
of those lie on depth edges, max error. Timings alternate backends ``--rounds`` times and keep
the best (shared machine).

    python benchmarks/bench_render.py [--frames 8] [--rounds 3] [--min-faces 300000]

Ends with one JSON line for the default (``auto``) backend, depth only: its
worst ratio over the two meshes.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
from rich.console import Console
from rich.table import Table

import preprocess.render as R
from preprocess.procedural.rooms import RoomConfig, dense_room, generate_room
from preprocess.render.camera import camera_ray_directions


def raw_cast_fps(mesh, room, frames: int) -> float:
    """open3d cast_rays alone: rays for every pose prepared before timing."""
    import open3d as o3d

    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(np.asarray(mesh.vertices, np.float32)),
                        o3d.core.Tensor(np.asarray(mesh.faces, np.uint32)))
    d_cam = camera_ray_directions(room.K, room.width, room.height).reshape(-1, 3)
    rays = []
    for i in range(frames):
        pose = room.poses[i % len(room.poses)]
        r = np.empty((len(d_cam), 6), np.float32)
        r[:, :3] = pose[:3, 3]
        r[:, 3:] = d_cam @ pose[:3, :3].T
        rays.append(o3d.core.Tensor(r))
    scene.cast_rays(rays[0])  # warm-up: BVH build
    t0 = time.perf_counter()
    for r in rays:
        scene.cast_rays(r)
    return frames / (time.perf_counter() - t0)


def backend_fps(mesh, room, backend: str, with_color: bool, frames: int) -> float:
    poses = [room.poses[i % len(room.poses)] for i in range(frames)]
    with R.make_renderer(mesh, backend=backend, with_color=with_color) as r:
        r.render(room.K, poses[0], room.width, room.height)  # warm-up: contexts, BVH build
        t0 = time.perf_counter()
        for pose in poses:
            r.render(room.K, pose, room.width, room.height)
        return frames / (time.perf_counter() - t0)


def agreement(mesh, room, backend: str) -> tuple[float, float, float, float]:
    """Depth of ``backend`` vs open3d's exact ray cast over every pose of ``room``:
    (% pixels hit by one only, % pixels hit by both with |diff| > 1e-4 m, % of those
    two kinds lying on a depth edge (> 1 cm jump in open3d's 3x3 neighbourhood), max
    |diff| m over the pixels both hit)."""
    from scipy.ndimage import maximum_filter, minimum_filter

    one, off, edge, worst, n = 0, 0, 0, 0.0, 0
    with R.make_renderer(mesh, backend=backend, with_color=False) as r, \
            R.make_renderer(mesh, backend="open3d", with_color=False) as exact:
        for pose in room.poses:
            a = r.render(room.K, pose, room.width, room.height).depth
            b = exact.render(room.K, pose, room.width, room.height).depth
            both = np.isfinite(a) & np.isfinite(b)
            err = np.where(both, np.abs(a - b), 0.0)
            bad = (np.isfinite(a) != np.isfinite(b)) | (err > 1e-4)
            z = np.nan_to_num(b, nan=1e3)
            edge += int((bad & (maximum_filter(z, 3) - minimum_filter(z, 3) > 0.01)).sum())
            one += int((np.isfinite(a) != np.isfinite(b)).sum())
            off += int((err > 1e-4).sum())
            worst = max(worst, float(err.max()))
            n += a.size
    return 100 * one / n, 100 * off / n, 100 * edge / max(one + off, 1), worst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--min-faces", type=int, default=300_000)
    args = ap.parse_args()
    config = RoomConfig(width=640, height=480, frames=16)
    meshes = {"room": generate_room(0, 0, config), "dense room": dense_room(args.min_faces, 0, config)}
    backends = R.available_backends()
    default = R.resolve_backend("auto")
    console = Console(width=190)
    worst = (0.0, 0.0, 0.0, "")  # ratio, default fps, raw fps, mesh
    for label, room in meshes.items():
        mesh = room.mesh.to_trimesh()
        raw, rates = 0.0, {}
        for _ in range(args.rounds):
            raw = max(raw, raw_cast_fps(mesh, room, args.frames))
            for b in backends:
                prev = rates.get(b, (0.0, 0.0))
                now = [backend_fps(mesh, room, b, wc, args.frames) for wc in (False, True)]
                rates[b] = (max(prev[0], now[0]), max(prev[1], now[1]))
        table = Table(title=f"{label}: {len(mesh.faces):,} faces, 640x480, {args.frames} frames, best of "
                            f"{args.rounds}; raw open3d cast_rays {raw:.1f} fps")
        table.add_column("backend")
        for col in ("depth fps", "time / raw cast", "depth+rgb fps", "time / raw cast",
                    "% px hit only once vs open3d", "% px off > 1e-4 m", "% of those on depth edges",
                    "max |diff| m"):
            table.add_column(col, justify="right")
        for b, (d, c) in rates.items():
            agree = ("",) * 4 if b == "open3d" else tuple(
                f"{x:.4f}" if i < 2 else f"{x:.3g}" for i, x in enumerate(agreement(mesh, room, b)))
            table.add_row(b + (" (auto)" if b == default else ""), f"{d:.1f}", f"{raw / d:.2f}", f"{c:.1f}",
                          f"{raw / c:.2f}", *agree)
        console.print(table)
        worst = max(worst, (raw / rates[default][0], rates[default][0], raw, label))
    console.print(f"auto picks: {default}")
    print(json.dumps({
        "benchmark": "bench_render",
        "metric": f"default backend ({default}) depth frame time / raw open3d cast_rays frame time, "
                  f"s, worst of small and >=300k-face mesh ({worst[3]}), 640x480",
        "value": round(1 / worst[1], 4), "baseline": round(1 / worst[2], 4),
        "ratio": round(worst[0], 3), "goal": 1.5,
    }))


if __name__ == "__main__":
    main()
