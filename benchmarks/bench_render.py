"""Frames/s of every render backend at 640x480, on a procedural room and on a
room tessellated to >= 300k faces; each backend's ratio to the fastest one
measured in the same run.

    python benchmarks/bench_render.py [--frames 8] [--min-faces 300000]
"""
from __future__ import annotations

import argparse
import time

from rich.console import Console
from rich.table import Table

import preprocess.render as R
from preprocess.procedural.rooms import RoomConfig, dense_room, generate_room


def frames_per_second(mesh, room, backend: str, with_color: bool, frames: int) -> float:
    poses = [room.poses[i % len(room.poses)] for i in range(frames)]
    with R.make_renderer(mesh, backend=backend, with_color=with_color) as r:
        r.render(room.K, poses[0], room.width, room.height)  # warm-up: contexts, BVH build
        t0 = time.perf_counter()
        for pose in poses:
            r.render(room.K, pose, room.width, room.height)
        return frames / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--min-faces", type=int, default=300_000)
    args = ap.parse_args()
    config = RoomConfig(width=640, height=480, frames=16)
    meshes = {"room": generate_room(0, 0, config), "dense room": dense_room(args.min_faces, 0, config)}
    backends = R.available_backends()
    console = Console()
    for label, room in meshes.items():
        mesh = room.mesh.to_trimesh()
        table = Table(title=f"{label}: {len(mesh.faces):,} faces, 640x480, {args.frames} frames")
        table.add_column("backend")
        for col in ("depth fps", "x fastest", "depth+rgb fps", "x fastest"):
            table.add_column(col, justify="right")
        rates = {b: [frames_per_second(mesh, room, b, wc, args.frames) for wc in (False, True)] for b in backends}
        best = [max(r[i] for r in rates.values()) for i in (0, 1)]
        for b, (d, c) in rates.items():
            table.add_row(b, f"{d:.1f}", f"{d / best[0]:.2f}", f"{c:.1f}", f"{c / best[1]:.2f}")
        console.print(table)
    console.print(f"auto picks: {R.resolve_backend('auto')}")


if __name__ == "__main__":
    main()
