"""Teacher settings for the miniature, chosen on the validation rooms (never the held-out probe rooms).

    python scripts/tune_miniature_teacher.py --run runs/miniature --out runs/teacher_tuning \
        --try "image_size=112" --try "image_size=224,class_balance=0.5" ...

Needs a finished ``concerto.eval.miniature`` run folder (its stores and its Sonata checkpoints). For each
``--try`` (TeacherSpec fields, comma-separated): train the teacher, lift its features onto the pretraining
and validation rooms, and probe (linear head on the pretraining rooms, mIoU on the validation rooms)
the lifted features alone and concatenated with the run's Sonata features. One JSON line per try.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch


def parse_try(text: str) -> dict:
    from concerto.eval.teacher2d import TeacherSpec

    types = {f.name: f.type for f in dataclasses.fields(TeacherSpec)} | {"rooms": int}
    out = {}
    for item in filter(None, text.split(",")):
        k, v = item.split("=")
        out[k] = {"float": float, "int": int}.get(str(types[k]), str)(v)
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", default="runs/miniature")
    ap.add_argument("--out", default="runs/teacher_tuning")
    ap.add_argument("--try", dest="tries", action="append", required=True)
    ap.add_argument("--rooms", type=int, default=24)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = ap.parse_args()
    from concerto.data import open_store
    from concerto.eval.linear_probe import extract_features
    from concerto.eval.miniature import probe_row
    from concerto.eval.scenes import class_names_for, read_labelled_scenes
    from concerto.eval.teacher2d import TeacherSpec, lift_features, make_teacher
    from concerto.image_encoder import ImageEncoder
    from concerto.inference import load

    run = Path(args.run)
    stores = {k: open_store(str(run / "stores" / k)) for k in ("pretrain", "val")}
    train, names = read_labelled_scenes(stores["pretrain"])
    val, _ = read_labelled_scenes(stores["val"])
    num_classes = len(class_names_for(train + val, names))
    sonata = {seed: extract_features(load(str(run / "pretrain" / f"sonata_seed{seed}")), train + val, progress=False)
              for seed in args.seeds}
    for text in args.tries:
        fields = parse_try(text)
        rooms = fields.pop("rooms", args.rooms)
        spec = TeacherSpec.of_width(**fields)
        t0 = time.perf_counter()
        folder = Path(args.out) / text.replace(",", "_").replace("=", "")
        info = make_teacher(folder, rooms, 6, 1000, 16, 320, 240, "instance", spec, progress=False)
        enc = ImageEncoder.from_pretrained(str(folder / "model"), image_size=spec.image_size)
        lifted = lift_features(enc, stores["pretrain"], progress=False)
        lifted.update(lift_features(enc, stores["val"], progress=False))
        rows = {"lifted": [], "concat": [], "sonata": []}
        for seed in args.seeds:
            concat = {k: np.concatenate([sonata[seed][k], lifted[k]], 1) for k in lifted}
            for name, f in (("lifted", lifted), ("concat", concat), ("sonata", sonata[seed])):
                rows[name].append(probe_row(f, train, val, num_classes, seed, 30, 4000)["mIoU"])
        print(json.dumps({"try": text, "teacher_heldout": info["held_out"], "teacher_train": info["train"],
                          **{k: round(100 * float(np.mean(v)), 1) for k, v in rows.items()},
                          "seconds": round(time.perf_counter() - t0, 1), "teacher_seconds": info["seconds"]}),
              flush=True)
    return 0


if __name__ == "__main__":
    torch.set_num_threads(2)
    raise SystemExit(main())
