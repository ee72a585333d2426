"""The paper's linear-probe comparison in miniature, from nothing, on a CPU.

    python -m concerto.eval.miniature --output runs/miniature

Stages (each with a progress bar; wall time of each in results.json):

1. **build**: procedural rooms through the real build (``pipelines.build.run_build``)
   into three stores of their own seeds: pretraining rooms (also the probe's training
   rooms), validation rooms (for choosing settings) and held-out probe rooms;
2. **teacher**: a learned 2D teacher (``concerto.eval.teacher2d``) on rooms of yet
   other seeds, saved with ``save_pretrained``; its per-patch accuracy on its own
   held-out rooms;
3. **pretrain**: tiny encoders with the same data, steps and seeds as
   (a) Sonata: the ``tiny`` preset plus every difference of the ``sonata`` preset from
   ``base`` but the epochs (no images, distill weights 2/8, 2/8, 4/8, own teacher heads),
   (b) Concerto, random teacher: ``tiny`` as it is (a randomly initialised DINOv2),
   (c) Concerto, learned teacher: ``tiny`` with ``cross_modal.model_id=<teacher folder>``
   (and its image size); ``python -m concerto.train`` runs, ``--jobs`` at a time;
4. **probe**: linear probes (``concerto.eval.linear_probe``: ``extract_features``,
   ``train_linear_head``, ``evaluate``) trained on the pretraining rooms and measured on
   the held-out rooms (``--eval-split val``: on the validation rooms) for random init,
   (a), (b), (c), the teacher's features lifted onto points (``teacher2d.lift_features``)
   and the concatenation of (a) with the lifted features; per seed;
5. **report**: ``results.md`` (paper's table shape, mean +- std over seeds, the teacher's
   accuracy, the validation tuning log ``docs/miniature_tuning.md``), ``results.json``,
   ``bars.png``, ``pca_sonata_vs_concerto.png``, and one JSON line on stdout.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np

ROWS = [
    ("random", "Random init (tiny PTv3)"),
    ("sonata", "Sonata (a): self-distillation only"),
    ("lifted", "2D teacher lifted onto points"),
    ("concat", "Sonata (a) + lifted 2D (concatenation)"),
    ("concerto_random", "Concerto (b), random DINOv2 teacher"),
    ("concerto_learned", "Concerto (c), learned 2D teacher"),
]
PAPER = {"sonata": 72.5, "concat": 75.9, "concerto_learned": 77.3}  # ScanNet linear probe, the paper's table
TUNING_LOG = Path(__file__).resolve().parents[2] / "docs" / "miniature_tuning.md"


def build_store(store: Path, raw: Path, num_scenes: int, seed: int, options: dict) -> None:
    """The one call into the build library."""
    from pipelines.build import BuildOptions, run_build

    run_build(BuildOptions(store=str(store), sources=[dict(kind="synthetic", path=str(raw), options=dict(
        num_scenes=num_scenes, seed=seed, **options))]))


def sonata_differences() -> list[str]:
    """``--set`` items: every leaf where the ``sonata`` preset differs from ``base``, but the epochs."""
    from concerto.config import PretrainConfig

    base, son = PretrainConfig.base().to_dict(), PretrainConfig.sonata().to_dict()
    sets = []
    for section, values in son.items():
        for key, value in values.items():
            if base[section][key] != value and (section, key) != ("run", "epochs"):
                sets.append(f"{section}.{key}={json.dumps(value)}")
    return sets


def pretrain_sets(kind: str, teacher: Path, image_size: int, seed: int, extra: list[str]) -> list[str]:
    sets = [f"run.seed={seed}", f"data.seed={seed}"]
    if kind == "sonata":
        sets += sonata_differences()
    elif kind == "concerto_learned":
        sets += [f"cross_modal.model_id={teacher}", "cross_modal.encoder_config=null",
                 f"cross_modal.image_size={image_size}"]
    elif kind != "concerto_random":
        raise ValueError(kind)
    return sets + list(extra)


def run_pretraining(jobs: list[tuple[str, Path, list[str]]], store: Path, steps: int, parallel: int) -> dict:
    """Run ``python -m concerto.train`` for each (name, output, sets), ``parallel`` at a time
    (resumed when already there); returns {name: seconds}."""
    from tqdm import tqdm

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[2]),
                                                       os.environ.get("PYTHONPATH", "")]))
    pending, running, seconds = list(jobs), [], {}
    bar = tqdm(total=len(jobs), desc="pretraining runs", unit="run", dynamic_ncols=True)
    while pending or running:
        while pending and len(running) < parallel:
            name, out, sets = pending.pop(0)
            out.mkdir(parents=True, exist_ok=True)
            cmd = [sys.executable, "-m", "concerto.train", "--data", str(store), "--config", "tiny",
                   "--steps", str(steps), "--output", str(out), "--resume", "--no-progress"]
            for s in sets:
                cmd += ["--set", s]
            log = open(out / "train.log", "w")
            running.append((name, out, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env),
                            time.perf_counter(), log))
        time.sleep(1.0)
        for item in list(running):
            name, out, proc, t0, log = item
            if proc.poll() is None:
                continue
            log.close()
            running.remove(item)
            if proc.returncode != 0:
                raise RuntimeError(f"pretraining {name} failed (exit {proc.returncode}); see {out / 'train.log'}")
            seconds[name] = round(time.perf_counter() - t0, 1)
            bar.update(1)
            bar.set_postfix(last=name)
    bar.close()
    return seconds


def probe_row(feats: dict, train_scenes, eval_scenes, num_classes: int, seed: int, epochs: int,
              max_train_points: int) -> dict:
    """Linear head on the training rooms' labelled points (subsampled, seeded), metrics on ``eval_scenes``."""
    from concerto.eval.linear_probe import IGNORE_INDEX, evaluate, train_linear_head

    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for s in train_scenes:
        rows = np.nonzero(s.label != IGNORE_INDEX)[0]
        if len(rows) > max_train_points:
            rows = np.sort(rng.choice(rows, max_train_points, replace=False))
        xs.append(feats[s.key][rows])
        ys.append(s.label[rows])
    head = train_linear_head(np.concatenate(xs), np.concatenate(ys), num_classes, epochs=epochs, seed=seed)
    m = evaluate(head, feats, eval_scenes, num_classes)
    return {"mIoU": float(m.miou), "mAcc": float(m.macc), "allAcc": float(m.all_acc),
            "iou": [None if not np.isfinite(x) else float(x) for x in m.iou]}


def pca_picture(path: Path, scene, feats: dict[str, np.ndarray]) -> Path:
    """Input colours, labels and PCA colours of each feature set, side by side (perspective view)."""
    from PIL import Image, ImageDraw

    from concerto.eval.pictures import pca_rgb, render, save_png, side_by_side
    from preprocess.colormap import interpolate_anchors  # noqa: F401 - pictures' colour helpers

    panels, titles = [], []
    rng = np.random.default_rng(0)
    palette = rng.uniform(0.1, 0.95, size=(64, 3))
    panels.append(render(scene.coord, scene.color.astype(np.float32) / 255.0, "perspective"))
    titles.append("input colours")
    panels.append(render(scene.coord, palette[np.maximum(scene.label, 0)], "perspective"))
    titles.append("labels")
    for title, f in feats.items():
        panels.append(render(scene.coord, pca_rgb(f), "perspective"))
        titles.append(title)
    labelled = []
    for img, title in zip(panels, titles):
        im = Image.fromarray(img)
        ImageDraw.Draw(im).text((8, 8), title, fill=(0, 0, 0))
        labelled.append(np.asarray(im))
    return save_png(path, side_by_side(labelled))


def summarise(per_seed: dict) -> dict:
    out = {}
    for row, _ in ROWS:
        vals = {m: [r[m] for r in per_seed[row]] for m in ("mIoU", "mAcc", "allAcc")}
        out[row] = {m: float(np.mean(v)) for m, v in vals.items()}
        out[row].update({m + "_std": float(np.std(v)) for m, v in vals.items()})
        out[row]["per_seed_mIoU"] = vals["mIoU"]
    return out


def results_markdown(args, summary: dict, teacher: dict, timing: dict, split: str, extra: dict) -> str:
    lines = [f"# Concerto in miniature: linear probe on held-out procedural rooms ({split} split)", "",
             f"`{' '.join(extra['command'])}`", "",
             f"Rooms: {args.pretrain_rooms} pretraining (seed {args.room_seed}), {args.val_rooms} validation "
             f"(seed {args.room_seed + 1}), {args.test_rooms} held-out probe (seed {args.room_seed + 2}); "
             f"teacher {args.teacher_rooms} rooms (seed {args.teacher_seed}) + {args.teacher_val_rooms} held out "
             f"(seed {args.teacher_seed + 1}); palette `{args.palette}`, {args.width}x{args.height} px, "
             f"{args.frames} frames/room, {args.points} points/room. Tiny PTv3, {args.steps} steps, "
             f"seeds {args.seeds} (pretraining seed = probe seed). Probe: linear head on the pretraining "
             f"rooms' points ({args.probe_points}/room), {args.probe_epochs} epochs; mIoU on every point of "
             f"the {split} rooms (points no image sees carry lifted zeros + a seen flag: "
             f"{100 * extra['seen_fraction']:.1f}% are seen).", "",
             "| Method | mIoU | mAcc | allAcc | paper (ScanNet lin.) |", "|---|---:|---:|---:|---:|"]
    for row, title in ROWS:
        e = summary[row]
        lines.append(f"| {title} | {100 * e['mIoU']:.1f} ± {100 * e['mIoU_std']:.1f} | "
                     f"{100 * e['mAcc']:.1f} ± {100 * e['mAcc_std']:.1f} | {100 * e['allAcc']:.1f} ± "
                     f"{100 * e['allAcc_std']:.1f} | {PAPER.get(row, '-')} |")
    ho = teacher["held_out"]
    lines += ["", f"2D teacher ({teacher['spec']['num_hidden_layers']} layers, {teacher['spec']['hidden_size']} "
              f"channels, {teacher['spec']['image_size']} px = {teacher['spec']['image_size'] // 14}² patches, "
              f"{teacher['spec'].get('target', 'majority')} targets): "
              f"per-patch accuracy on its held-out rooms {100 * ho['patch_acc']:.1f}%, per-patch mIoU "
              f"{100 * ho['patch_mIoU']:.1f}% ({ho['patches']} patches; training rooms "
              f"{100 * teacher['train']['patch_acc']:.1f}% / {100 * teacher['train']['patch_mIoU']:.1f}%).", ""]
    lines += ["Per seed mIoU: " + "; ".join(
        f"{row} " + ", ".join(f"{100 * v:.1f}" for v in summary[row]["per_seed_mIoU"]) for row, _ in ROWS), ""]
    o = extra["ordering"]
    lines += ["Ordering (paper: Concerto > concatenation > Sonata, lifted; Concerto learned > random):", ""]
    lines += [f"- {k}: {'holds' if v else 'does not hold'}" for k, v in o.items()]
    lines += ["", "Wall time per stage (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timing.items()), ""]
    if TUNING_LOG.is_file():
        lines += ["", TUNING_LOG.read_text()]
    return "\n".join(lines) + "\n"


def bars(path: Path, summary: dict, split: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [t.split(":")[0].replace(" (concatenation)", "\n(concat)").replace(", ", ",\n") for _, t in ROWS]
    vals = [100 * summary[r]["mIoU"] for r, _ in ROWS]
    errs = [100 * summary[r]["mIoU_std"] for r, _ in ROWS]
    colours = ["#999999", "#4C72B0", "#55A868", "#8172B2", "#DD8452", "#C44E52"]
    fig, ax = plt.subplots(figsize=(8.5, 4.2), dpi=110)
    ax.bar(range(len(vals)), vals, yerr=errs, capsize=3, color=colours)
    for i, v in enumerate(vals):
        ax.text(i, v + errs[i] + 0.5, f"{v:.1f}", ha="center", fontsize=8)
    ax.set_xticks(range(len(vals)))
    ax.set_xticklabels(names, fontsize=7)
    ax.set_ylabel("mIoU (%)")
    ax.set_title(f"Linear probe on {split} procedural rooms (mean ± std over seeds)", fontsize=9)
    ax.set_ylim(0, max(vals) + max(errs) + 8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def main(argv: Optional[list[str]] = None) -> int:
    from concerto.eval.teacher2d import TEACHER_ROOMS, TeacherSpec, lift_features, make_teacher

    ap = argparse.ArgumentParser(prog="python -m concerto.eval.miniature", description=__doc__.split("\n\n")[0])
    ap.add_argument("--output", default="runs/miniature")
    ap.add_argument("--pretrain-rooms", type=int, default=24)
    ap.add_argument("--val-rooms", type=int, default=8)
    ap.add_argument("--test-rooms", type=int, default=8)
    ap.add_argument("--room-seed", type=int, default=1, help="pretraining rooms; +1 validation, +2 held-out")
    ap.add_argument("--teacher-rooms", type=int, default=TEACHER_ROOMS)
    ap.add_argument("--teacher-val-rooms", type=int, default=6)
    ap.add_argument("--teacher-seed", type=int, default=1000)
    ap.add_argument("--teacher-epochs", type=int, default=TeacherSpec.epochs)
    ap.add_argument("--teacher-image-size", type=int, default=TeacherSpec.image_size)
    ap.add_argument("--teacher-hidden", type=int, default=TeacherSpec.hidden_size)
    ap.add_argument("--teacher-layers", type=int, default=TeacherSpec.num_hidden_layers)
    ap.add_argument("--teacher-class-balance", type=float, default=TeacherSpec.class_balance,
                    help="cross-entropy class weights ~ frequency ** -this")
    ap.add_argument("--teacher-target", default=TeacherSpec.target, choices=("majority", "soft"),
                    help="per-patch target: the majority class, or the class shares")
    ap.add_argument("--palette", default="instance", choices=("class", "instance"))
    ap.add_argument("--width", type=int, default=320)
    ap.add_argument("--height", type=int, default=240)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--points", type=int, default=20_000)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--jobs", type=int, default=2, help="pretraining runs at a time")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="extra pretraining override for the Concerto runs (b) and (c)")
    ap.add_argument("--probe-epochs", type=int, default=30)
    ap.add_argument("--probe-points", type=int, default=4000)
    ap.add_argument("--eval-split", default="test", choices=("test", "val"),
                    help="rooms the probe is measured on: the held-out probe rooms, or the validation rooms "
                         "(for choosing settings)")
    args = ap.parse_args(argv)
    import torch

    from concerto.data import open_store
    from concerto.eval.linear_probe import extract_features
    from concerto.eval.scenes import class_names_for, read_labelled_scenes
    from concerto.image_encoder import ImageEncoder
    from concerto.inference import load, random_encoder

    out = Path(args.output).resolve()
    out.mkdir(parents=True, exist_ok=True)
    timing: dict[str, float] = {}
    t_all = time.perf_counter()
    options = dict(frames_per_scene=args.frames, image_width=args.width, image_height=args.height,
                   points_per_scene=args.points, palette=args.palette)

    # 1. build
    t0 = time.perf_counter()
    from tqdm import tqdm

    stores = {}
    splits = [("pretrain", args.pretrain_rooms, args.room_seed), ("val", args.val_rooms, args.room_seed + 1),
              ("test", args.test_rooms, args.room_seed + 2)]
    for name, n, seed in tqdm(splits, desc="build stores", unit="store", dynamic_ncols=True):
        stores[name] = out / "stores" / name
        build_store(stores[name], out / "rooms" / name, n, seed, options)
    timing["build"] = time.perf_counter() - t0

    # 2. teacher
    t0 = time.perf_counter()
    spec = TeacherSpec.of_width(args.teacher_hidden, image_size=args.teacher_image_size,
                                num_hidden_layers=args.teacher_layers, epochs=args.teacher_epochs,
                                class_balance=args.teacher_class_balance, target=args.teacher_target)
    teacher_dir = out / "teacher"
    info_file = teacher_dir / "model" / "teacher2d.json"
    wanted = dict(spec=dataclasses.asdict(spec), rooms=args.teacher_rooms, palette=args.palette, seed=args.teacher_seed)
    teacher = json.loads(info_file.read_text()) if info_file.is_file() else None
    if teacher is None or any(teacher.get(k) != v for k, v in wanted.items()):
        teacher = make_teacher(teacher_dir, args.teacher_rooms, args.teacher_val_rooms, args.teacher_seed, args.frames,
                               args.width, args.height, args.palette, spec)
    timing["teacher"] = time.perf_counter() - t0

    # 3. pretraining
    t0 = time.perf_counter()
    jobs = []
    for seed in args.seeds:
        for kind in ("sonata", "concerto_random", "concerto_learned"):
            extra = [] if kind == "sonata" else args.sets
            jobs.append((f"{kind}_seed{seed}", out / "pretrain" / f"{kind}_seed{seed}",
                         pretrain_sets(kind, teacher_dir / "model", args.teacher_image_size, seed, extra)))
    run_seconds = run_pretraining(jobs, stores["pretrain"], args.steps, args.jobs)
    timing["pretrain"] = time.perf_counter() - t0

    # 4. features and probes
    t0 = time.perf_counter()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    train_scenes, names = read_labelled_scenes(open_store(str(stores["pretrain"])))
    eval_store = open_store(str(stores[args.eval_split]))
    eval_scenes, _ = read_labelled_scenes(eval_store)
    class_names = class_names_for(train_scenes + eval_scenes, names)
    num_classes = len(class_names)
    image_encoder = ImageEncoder.from_pretrained(str(teacher_dir / "model"), image_size=args.teacher_image_size)
    lifted = lift_features(image_encoder, open_store(str(stores["pretrain"])))
    lifted.update(lift_features(image_encoder, eval_store))
    seen_fraction = float(np.mean(np.concatenate([lifted[s.key][:, -1] for s in eval_scenes])))
    per_seed: dict[str, list] = {row: [] for row, _ in ROWS}
    all_scenes = train_scenes + eval_scenes
    pca_feats = {}
    bar = tqdm(total=len(args.seeds) * len(ROWS), desc="linear probes", unit="probe", dynamic_ncols=True)
    for seed in args.seeds:
        feats = {"random": extract_features(random_encoder("tiny", seed=seed), all_scenes, progress=False)}
        for kind in ("sonata", "concerto_random", "concerto_learned"):
            feats[kind] = extract_features(load(str(out / "pretrain" / f"{kind}_seed{seed}")), all_scenes,
                                           progress=False)
        feats["lifted"] = lifted
        feats["concat"] = {k: np.concatenate([feats["sonata"][k], lifted[k]], 1) for k in feats["sonata"]}
        for row, _ in ROWS:
            per_seed[row].append(probe_row(feats[row], train_scenes, eval_scenes, num_classes, seed,
                                           args.probe_epochs, args.probe_points))
            bar.update(1)
            bar.set_postfix(row=row, seed=seed, mIoU=f"{100 * per_seed[row][-1]['mIoU']:.1f}")
        if seed == args.seeds[0]:
            key = eval_scenes[0].key
            pca_feats = {"Sonata (a)": feats["sonata"][key], "Concerto (c), learned teacher": feats["concerto_learned"][key],
                         "lifted 2D teacher": lifted[key]}
    bar.close()
    timing["probe"] = time.perf_counter() - t0

    # 5. report
    t0 = time.perf_counter()
    summary = summarise(per_seed)
    m = {r: summary[r]["mIoU"] for r, _ in ROWS}
    ordering = {
        "Concerto (learned) > concatenation": m["concerto_learned"] > m["concat"],
        "concatenation > Sonata": m["concat"] > m["sonata"],
        "concatenation > lifted": m["concat"] > m["lifted"],
        "Concerto (learned) > Concerto (random)": m["concerto_learned"] > m["concerto_random"],
        "Concerto (learned) > Sonata": m["concerto_learned"] > m["sonata"],
    }
    pca_picture(out / "pca_sonata_vs_concerto.png", eval_scenes[0], pca_feats)
    bars(out / "bars.png", summary, args.eval_split)
    timing["report"] = time.perf_counter() - t0
    timing["total"] = time.perf_counter() - t_all
    command = ["python", "-m", "concerto.eval.miniature"] + (list(argv) if argv is not None else sys.argv[1:])
    extra = {"command": command, "seen_fraction": seen_fraction, "ordering": ordering}
    (out / "results.md").write_text(results_markdown(args, summary, teacher, timing, args.eval_split, extra))
    results = {"args": vars(args), "split": args.eval_split, "class_names": class_names, "summary": summary,
               "per_seed": per_seed, "teacher": teacher, "timing_s": {k: round(v, 1) for k, v in timing.items()},
               "pretrain_run_s": run_seconds, "ordering": ordering, "seen_fraction": seen_fraction,
               "sonata_sets": sonata_differences()}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print((out / "results.md").read_text())
    base = m["sonata"]
    line = {"benchmark": "miniature", "metric": f"linear-probe mIoU of Concerto with the learned 2D teacher "
            f"({args.eval_split} rooms, mean over {len(args.seeds)} seeds); baseline Sonata",
            "value": round(m["concerto_learned"], 6), "baseline": round(base, 6),
            "ratio": round(m["concerto_learned"] / base, 4) if base else None, "goal": "> 1"}
    print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
