"""Linear-probe mIoU of a briefly pretrained encoder against a random one, on procedural rooms.

Builds (or reuses) a labelled store of procedural rooms (``testkit.room_store``),
pretrains the tiny encoder on it for ``--steps`` steps (``python -m concerto.train
--config tiny``; skipped with ``--checkpoint``), then runs the linear probe for the
trained encoder and for a randomly initialised one of the same preset, for each
``--seeds`` value (the seed picks the held-out scenes and, for the random
encoder, its initialisation). Prints both and the ratio trained / random, writes
``<out>/probe_summary.json`` and PCA / similarity pictures of one room for both.

    python benchmarks/probe_synthetic.py --out runs/probe [--scenes 8] [--steps 300] [--seeds 0 1 2]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from concerto.eval.linear_probe import format_table, run_probe  # noqa: E402
from concerto.eval.pictures import save_feature_pictures, save_similarity_picture  # noqa: E402
from concerto.inference import load, random_encoder  # noqa: E402
from benchmarks.timing import json_line  # noqa: E402
from testkit.room_store import add_room_benchmark_args, rooms_and_encoder  # noqa: E402


def main() -> None:
    ap = add_room_benchmark_args(argparse.ArgumentParser(), out="runs/probe", epochs=30)
    ap.add_argument("--pictures", default=None, help="folder for the PNGs (default <out>/pictures)")
    args = ap.parse_args()
    out = Path(args.out)
    url, checkpoint, train_seconds = rooms_and_encoder(args, progress=True)
    trained = load(checkpoint)
    rows = []
    for seed in args.seeds:
        r_t = run_probe(url, checkpoint, epochs=args.epochs, seed=seed, cache_dir=str(out / "cache"),
                        output=str(out / f"probe_trained_seed{seed}.json"), encoder=trained)
        r_r = run_probe(url, "random", config="tiny", epochs=args.epochs, seed=seed, cache_dir=str(out / "cache"),
                        output=str(out / f"probe_random_seed{seed}.json"))
        print(format_table(r_t))
        print(format_table(r_r))
        rows.append({"seed": seed, "held_out": r_t["split"]["val"],
                     "trained": {k: r_t["val"][k] for k in ("mIoU", "mAcc", "allAcc")},
                     "random": {k: r_r["val"][k] for k in ("mIoU", "mAcc", "allAcc")}})
    mean = {who: {k: float(np.mean([r[who][k] for r in rows])) for k in ("mIoU", "mAcc", "allAcc")}
            for who in ("trained", "random")}
    summary = {"data": url, "checkpoint": checkpoint, "steps": args.steps if args.checkpoint is None else None,
               "pretrain_seconds": train_seconds, "per_seed": rows, "mean": mean,
               "ratio_mIoU_trained_over_random": mean["trained"]["mIoU"] / mean["random"]["mIoU"]}
    (out / "probe_summary.json").write_text(json.dumps(summary, indent=2))
    print(f"{'seed':>4}  {'trained mIoU':>12}  {'random mIoU':>11}  held-out scenes")
    for r in rows:
        print(f"{r['seed']:>4}  {100 * r['trained']['mIoU']:12.2f}  {100 * r['random']['mIoU']:11.2f}  {', '.join(r['held_out'])}")
    print(f"mean  trained mIoU {100 * mean['trained']['mIoU']:.2f} / mAcc {100 * mean['trained']['mAcc']:.2f} / "
          f"allAcc {100 * mean['trained']['allAcc']:.2f};  random mIoU {100 * mean['random']['mIoU']:.2f} / "
          f"mAcc {100 * mean['random']['mAcc']:.2f} / allAcc {100 * mean['random']['allAcc']:.2f};  "
          f"ratio trained/random mIoU {summary['ratio_mIoU_trained_over_random']:.2f}")

    from concerto.data import open_store

    raw = open_store(url)[0]
    pics = Path(args.pictures) if args.pictures else out / "pictures"
    query = int(np.argmin(np.abs(raw["coord"] - np.array([raw["coord"][:, 0].mean(), raw["coord"][:, 1].min(), 0.8])).sum(1)))
    for name, enc in (("trained", trained), ("random", random_encoder("tiny", seed=args.seeds[0]))):
        feat = enc.embed(raw["coord"], raw["color"], raw["normal"])
        paths = save_feature_pictures(pics, f"room_{name}", raw["coord"], feat, raw["color"] if name == "trained" else None)
        paths["similarity"] = save_similarity_picture(pics / f"room_{name}_similarity.png", raw["coord"], feat, query)
        for k, p in paths.items():
            print(f"{name} {k}: {p}")
    json_line("probe_synthetic", "held-out linear-probe mIoU of the pretrained tiny encoder (mean over seeds); "
              "baseline random init", mean["trained"]["mIoU"], mean["random"]["mIoU"], "> 1")


if __name__ == "__main__":
    main()
