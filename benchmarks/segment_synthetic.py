"""Segmentation mIoU of linear / decoder / full / LoRA for a pretrained tiny encoder and for random init, on procedural rooms.

Builds (or reuses, ``--data``) a labelled store of procedural rooms, pretrains
the tiny encoder on it (``python -m concerto.train --config tiny``; skipped with
``--checkpoint``), then runs ``concerto.eval.segment`` in every mode for the
pretrained encoder and for a randomly initialised one, for each ``--seeds``
value (the seed picks the new weights, the augmentations, the scene order and,
for the random encoder, its initialisation; the held-out scenes are fixed by
``--split-seed``). Rows go to ``<out>/results.jsonl``; the markdown table and
bar chart come from ``concerto.eval.report``. The last line is the benchmark
JSON: mean pretrained mIoU over modes and seeds, baseline = random init's.

    python benchmarks/segment_synthetic.py --out runs/segbench [--steps 300] [--seeds 0 1 2] [--epochs 10]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from concerto.eval.report import markdown_table, read_results, summarise  # noqa: E402
from testkit.room_store import add_room_benchmark_args, rooms_and_encoder  # noqa: E402

MODES = ("linear", "decoder", "full", "lora")


def main() -> None:
    ap = add_room_benchmark_args(argparse.ArgumentParser(), out="runs/segbench", epochs=10)
    ap.add_argument("--modes", nargs="+", default=list(MODES))
    ap.add_argument("--max-points", type=int, default=8192)
    ap.add_argument("--test-augs", default="none", choices=("none", "full"))
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    out = Path(args.out)
    url, checkpoint, _ = rooms_and_encoder(args)
    results = out / "results.jsonl"
    t0 = time.perf_counter()
    for seed in args.seeds:
        for mode in args.modes:
            for who, ckpt in (("pretrained", checkpoint), ("random", "random")):
                dest = out / f"{mode}-{who}-seed{seed}"
                if (dest / "result.json").is_file():
                    continue
                cmd = [sys.executable, "-m", "concerto.eval.segment", "--data", url, "--checkpoint", ckpt,
                       "--mode", mode, "--seed", str(seed), "--epochs", str(args.epochs), "--output", str(dest),
                       "--max-points", str(args.max_points), "--test-augs", args.test_augs, "--drop-path", "0",
                       "--results", str(results), "--dataset-name", "synthetic rooms", "--no-progress",
                       "--threads", str(args.threads)]
                subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
                r = json.loads((dest / "result.json").read_text())
                print(f"{mode:8s} {who:10s} seed {seed}: mIoU {100 * r['mIoU']:.2f}  mAcc {100 * r['mAcc']:.2f}  "
                      f"allAcc {100 * r['allAcc']:.2f}", flush=True)
    rows = read_results(results)
    table = markdown_table(summarise(rows))
    (out / "results.md").write_text(table)
    print(table)
    subprocess.run([sys.executable, "-m", "concerto.eval.report", "--results", str(results)], check=True,
                   stdout=subprocess.DEVNULL)
    pre = [r["mIoU"] for r in rows if r["checkpoint"] != "random"]
    rnd = [r["mIoU"] for r in rows if r["checkpoint"] == "random"]
    value, base = float(np.mean(pre)), float(np.mean(rnd))
    print(json.dumps({"benchmark": "segment_synthetic", "metric": "mean held-out mIoU over modes and seeds "
                      "(pretrained tiny encoder; baseline random init)", "value": round(value, 4),
                      "baseline": round(base, 4), "ratio": round(value / base, 3) if base else None,
                      "goal": "ratio > 1", "seconds": round(time.perf_counter() - t0, 1)}))


if __name__ == "__main__":
    main()
