"""Dataset adapter hot paths, each against a baseline measured in the same run.

(a) ScanNet .sens, reading every Nth frame (frame_gap): our reader seeks past
    unselected frames; the baseline reads every frame into memory first, as
    ScanNet's SensReader (and Pointcept's copy of it) does, then decodes the
    same selected frames.
(b) Scene discovery content hash of a ScanNet-like scene folder: "stat" mode
    (names, sizes, mtimes) vs "content" mode (sha1 of every byte).

    python benchmarks/bench_sources.py [--frames 600 --skip 75 --size 640x480]
"""
from __future__ import annotations

import argparse
import io
import struct
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.timing import best_of, json_line  # noqa: E402

from preprocess.sources._common import scene_hash  # noqa: E402
from preprocess.sources.scannet import decode_sens_color, decode_sens_depth, read_sens  # noqa: E402


def write_sens(path: Path, n: int, w: int, h: int) -> None:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, format="JPEG", quality=90)
    color = buf.getvalue()  # one noisy JPEG reused: file size is realistic, writing is fast
    depth = zlib.compress(rng.integers(500, 4000, (h // 2, w // 2), dtype=np.uint16).tobytes(), 1)
    K = np.eye(4, dtype="<f4")
    K[0, 0] = K[1, 1] = 500
    with open(path, "wb") as f:
        f.write(struct.pack("<IQ", 4, 3) + b"cam" + K.tobytes() + np.eye(4, dtype="<f4").tobytes() * 1
                + K.tobytes() + np.eye(4, dtype="<f4").tobytes())
        f.write(struct.pack("<ii4IfQ", 2, 1, w, h, w // 2, h // 2, 1000.0, n))
        for _ in tqdm(range(n), desc="writing .sens", leave=False):
            f.write(np.eye(4, dtype="<f4").tobytes() + struct.pack("<4Q", 0, 0, len(color), len(depth)) + color + depth)


def baseline_read_all(path: Path, wanted: list[int]):
    """SensReader-style: every frame's bytes into memory, then decode the wanted ones."""
    header, frames = read_sens(path, "bench", None)
    return [(decode_sens_color(header, frames[i], "bench", path), decode_sens_depth(header, frames[i], "bench", path))
            for i in wanted]


def ours(path: Path, wanted: list[int]):
    header, frames = read_sens(path, "bench", set(wanted))
    return [(decode_sens_color(header, f, "bench", path), decode_sens_depth(header, f, "bench", path)) for f in frames]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=600)
    ap.add_argument("--skip", type=int, default=75)
    ap.add_argument("--size", default="640x480")
    args = ap.parse_args()
    w, h = map(int, args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        sens = Path(tmp) / "scene.sens"
        write_sens(sens, args.frames, w, h)
        mb = sens.stat().st_size / 1e6
        wanted = list(range(0, args.frames, args.skip))
        t_base, a = best_of(lambda: baseline_read_all(sens, wanted))
        t_ours, b = best_of(lambda: ours(sens, wanted))
        assert len(a) == len(b) and all(np.array_equal(x[0], y[0]) for x, y in zip(a, b))
        print(f"(a) .sens {mb:.0f} MB, {args.frames} frames {w}x{h}, every {args.skip}th ({len(wanted)} frames)")
        print(f"    baseline (read all, SensReader-style): {t_base * 1e3:8.1f} ms")
        print(f"    ours (seek past unselected frames):     {t_ours * 1e3:8.1f} ms")
        print(f"    speed-up: {t_base / t_ours:.1f}x")

        files = [sens] + [Path(tmp) / f"f{i}.bin" for i in range(3)]
        for f in files[1:]:
            f.write_bytes(np.random.default_rng(1).bytes(2_000_000))
        t_content, _ = best_of(lambda: scene_hash(files, "x", "content"))
        t_stat, _ = best_of(lambda: scene_hash(files, "x", "stat"))
        print(f"(b) scene hash over {sum(f.stat().st_size for f in files) / 1e6:.0f} MB in {len(files)} files")
        print(f"    baseline (content sha1): {t_content * 1e3:8.2f} ms")
        print(f"    ours (stat):             {t_stat * 1e3:8.2f} ms")
        print(f"    speed-up: {t_content / t_stat:.0f}x")
        json_line("bench_sources", f".sens read of every {args.skip}th frame, seconds vs reading every frame "
                  "(SensReader-style)", t_ours, t_base, "< 1")


if __name__ == "__main__":
    main()
