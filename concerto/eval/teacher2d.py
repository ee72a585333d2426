"""A learned 2D teacher made here: a small ViT of the Hugging Face DINOv2 class
trained on rendered frames of procedural rooms to classify each patch.

It stands in for a foundation model whose patch features are semantic (no weights
can be downloaded here): pretraining loads it through the ordinary
``cross_modal.model_id=<folder>`` path, exactly as it loads ``facebook/dinov2-...``.

- ``render_labelled_frames``: rooms of the ``synthetic`` source (their own seed, in
  neither the pretraining nor the probe set) rendered to RGB plus a per-pixel label
  (the raster backend's face id -> the mesh's face label, -1 where nothing is hit);
- ``patch_labels``: the label map through the encoder's crop / resize (the same
  ``concerto.patches`` geometry as training) -> majority label per patch;
- ``train_teacher``: ``Dinov2Model`` + a linear per-patch classification head on its
  last hidden state (the very tokens ``concerto.image_encoder.ImageEncoder`` returns),
  cross-entropy, AdamW, horizontal flips; saved with ``save_pretrained`` without the
  head (the head goes to ``head.pt`` beside it, for the accuracy figure only);
- ``patch_accuracy``: per-patch accuracy / mIoU of encoder + head on held-out rooms;
- ``lift_features``: each point of a store's scenes averages the teacher's patch
  features of the images that see it, through the stored correspondences (images
  through the training crop / resize); unseen points get zeros, plus a seen flag.

    python -m concerto.eval.teacher2d --out runs/teacher2d [--rooms 24] [--image-size 112] [--epochs 30]
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from concerto.patches import IMAGENET_MEAN, IMAGENET_STD, PatchGrid, crop_box, normalize_image, pixel_to_patch, prepare_image

HEAD_FILE = "head.pt"
INFO_FILE = "teacher2d.json"
TEACHER_ROOMS = 240  # rooms the teacher trains on: 24 left it at 20 % held-out patch mIoU, 240 at 43 %


@dataclass
class TeacherSpec:
    """Architecture and training of the 2D teacher."""

    # defaults: the settings chosen on the miniature's validation rooms (docs/miniature_tuning.md)
    image_size: int = 168  # multiple of 14: 168 -> 12 x 12 patches
    hidden_size: int = 64
    num_hidden_layers: int = 3
    num_attention_heads: int = 4
    intermediate_size: int = 128
    epochs: int = 15
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.05
    seed: int = 0
    num_classes: int = 10
    # Cross-entropy class weights ~ frequency ** -class_balance (0: plain): floor / wall / ceiling
    # cover most patches, and an unweighted head learns little else.
    class_balance: float = 0.5
    # "majority": cross-entropy on each patch's majority label; "soft": on its class shares, so
    # objects smaller than a patch still shape the features
    target: str = "majority"

    @classmethod
    def of_width(cls, hidden_size: int = 64, **fields) -> "TeacherSpec":
        """A spec ``hidden_size`` channels wide: 16 channels per head, MLP twice the width."""
        return cls(hidden_size=hidden_size, num_attention_heads=max(1, hidden_size // 16),
                   intermediate_size=2 * hidden_size, **fields)

    def dinov2_config(self) -> dict:
        return dict(hidden_size=self.hidden_size, num_hidden_layers=self.num_hidden_layers,
                    num_attention_heads=self.num_attention_heads, intermediate_size=self.intermediate_size,
                    patch_size=14, image_size=self.image_size)


@dataclass
class LabelledFrames:
    """rgb uint8 [F, H, W, 3] and label int64 [F, H, W] (-1 = nothing / unlabelled), room of each frame."""

    rgb: np.ndarray
    label: np.ndarray
    room: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))


# ----------------------------------------------------------------------------- data


def render_labelled_frames(path, num_rooms: int, seed: int, frames_per_room: int = 16, width: int = 320,
                           height: int = 240, palette: str = "class", progress: bool = True,
                           desc: str = "teacher rooms") -> LabelledFrames:
    """Generate ``num_rooms`` rooms of the ``synthetic`` source under ``path`` (seed ``seed``) and render
    every camera of each: colour and the label of the face seen at each pixel centre."""
    from preprocess.procedural.labeled_ply import read_labeled_ply
    from preprocess.render import make_renderer
    from preprocess.sources.synthetic import CAMERA_FILE, MESH_FILE, SyntheticSource, _read_cameras

    source = SyntheticSource(path, num_scenes=num_rooms, seed=seed, frames_per_scene=frames_per_room,
                             image_width=width, image_height=height, palette=palette)
    refs = source.discover()
    if progress:
        from tqdm import tqdm

        refs = tqdm(refs, desc=desc, unit="room", dynamic_ncols=True)
    rgbs, labels, rooms = [], [], []
    for r, ref in enumerate(refs):
        folder = Path(path) / ref.scene_id
        mesh = read_labeled_ply(folder / MESH_FILE)
        with make_renderer(mesh.to_trimesh(), backend="raster", with_color=True) as renderer:
            for _name, K, pose, (w, h) in _read_cameras(ref.key, folder / CAMERA_FILE):
                rgbs.append(renderer.render(K, pose, w, h).rgb)
                ids = renderer.face_ids(K, pose, w, h)
                labels.append(np.where(ids >= 0, mesh.face_labels[np.maximum(ids, 0)], -1).astype(np.int64))
                rooms.append(r)
    return LabelledFrames(np.stack(rgbs), np.stack(labels), np.asarray(rooms, np.int64))


def patch_class_counts(label: np.ndarray, grid: PatchGrid, num_classes: int, crop: str = "grid_multiple"
                       ) -> tuple[np.ndarray, np.ndarray]:
    """(int64 [gh, gw, num_classes] pixels of each class, int64 [gh, gw] pixels showing nothing labelled)
    per patch, after the encoder's centre crop and resize (nearest)."""
    x0, y0, w, h = crop_box(label.shape, grid, crop)
    out_h, out_w = grid.image_hw
    rows = np.minimum(((np.arange(out_h) + 0.5) * h / out_h).astype(np.int64), h - 1) + y0
    cols = np.minimum(((np.arange(out_w) + 0.5) * w / out_w).astype(np.int64), w - 1) + x0
    lab = label[rows[:, None], cols[None, :]]
    gh, gw = grid.grid_hw
    p = grid.patch_size
    blocks = lab.reshape(gh, p, gw, p).transpose(0, 2, 1, 3).reshape(gh, gw, p * p)
    counts = np.stack([(blocks == c).sum(-1) for c in range(num_classes)], -1)
    return counts, (blocks < 0).sum(-1)


def majority_of(counts: np.ndarray, none: np.ndarray) -> np.ndarray:
    """int64 [gh, gw] from ``patch_class_counts``: the majority label, -1 where most pixels show nothing."""
    return np.where(counts.max(-1) > none, counts.argmax(-1), -1).astype(np.int64)


def shares_of(counts: np.ndarray) -> np.ndarray:
    """float32 [gh, gw, K] from ``patch_class_counts``: each class's share of the labelled pixels
    (zeros where none is labelled)."""
    return (counts / np.maximum(counts.sum(-1, keepdims=True), 1)).astype(np.float32)


def patch_labels(label: np.ndarray, grid: PatchGrid, num_classes: int, crop: str = "grid_multiple") -> np.ndarray:
    """int64 [gh, gw]: the majority label of each patch's pixels after the encoder's centre crop and
    resize (nearest), -1 where most of the patch shows nothing labelled."""
    return majority_of(*patch_class_counts(label, grid, num_classes, crop))


def patch_fractions(label: np.ndarray, grid: PatchGrid, num_classes: int, crop: str = "grid_multiple") -> np.ndarray:
    """float32 [gh, gw, num_classes]: each class's share of the patch's labelled pixels (rows of zeros
    where no pixel is labelled): the soft per-patch target."""
    return shares_of(patch_class_counts(label, grid, num_classes, crop)[0])


def prepare_frames(frames: LabelledFrames, grid: PatchGrid, num_classes: int,
                   mean=IMAGENET_MEAN, std=IMAGENET_STD) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(images float32 [F, 3, h, w] normalised as pretraining feeds the encoder, majority patch labels
    int64 [F, gh, gw], class shares float32 [F, gh, gw, num_classes])."""
    images = torch.stack([normalize_image(prepare_image(rgb, grid, "bilinear"), mean, std) for rgb in frames.rgb])
    counted = [patch_class_counts(lab, grid, num_classes) for lab in frames.label]
    labels = torch.from_numpy(np.stack([majority_of(counts, none) for counts, none in counted]))
    shares = torch.from_numpy(np.stack([shares_of(counts) for counts, _ in counted]))
    return images, labels, shares


# ----------------------------------------------------------------------------- model


class PatchClassifier(torch.nn.Module):
    """Dinov2Model + a linear head on its last hidden state's patch tokens."""

    def __init__(self, spec: TeacherSpec):
        super().__init__()
        from transformers import Dinov2Config, Dinov2Model

        self.encoder = Dinov2Model(Dinov2Config(**spec.dinov2_config()))
        self.head = torch.nn.Linear(spec.hidden_size, spec.num_classes)
        self.grid = PatchGrid(spec.image_size, 14)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """[B, gh, gw, C]: the tokens ``ImageEncoder.forward`` returns for this model."""
        gh, gw = self.grid.grid_hw
        tokens = self.encoder(pixel_values=images).last_hidden_state
        return tokens[:, tokens.shape[1] - gh * gw:].reshape(images.shape[0], gh, gw, -1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


def class_weights(labels: torch.Tensor, num_classes: int, power: float) -> Optional[torch.Tensor]:
    """float32 [num_classes]: frequency ** -power over the labelled patches, mean 1 over the classes
    present (absent classes 0); None for power 0."""
    if power == 0:
        return None
    counts = torch.bincount(labels[labels >= 0].reshape(-1), minlength=num_classes).float()
    w = torch.where(counts > 0, counts.clamp(min=1) ** -power, torch.zeros(()))
    return w * (counts > 0).sum() / w.sum()


def soft_cross_entropy(logits: torch.Tensor, shares: torch.Tensor, weight: Optional[torch.Tensor]) -> torch.Tensor:
    """Mean over rows with any share of -sum_k w_k shares_k log softmax(logits)_k; logits, shares [M, K]."""
    w = shares if weight is None else shares * weight
    per_row = -(w * torch.log_softmax(logits, -1)).sum(-1)
    keep = shares.sum(-1) > 0
    return per_row[keep].sum() / keep.sum().clamp(min=1)


def train_teacher(images: torch.Tensor, labels: torch.Tensor, spec: TeacherSpec, progress: bool = True,
                  shares: Optional[torch.Tensor] = None) -> PatchClassifier:
    """Per-patch cross-entropy on the majority ``labels`` int64 [F, gh, gw] (-1 ignored) or, for
    ``spec.target == "soft"``, on the class ``shares`` float [F, gh, gw, K] (unlabelled patches ignored);
    AdamW with a one-cycle schedule, random horizontal flips."""
    if spec.target not in ("majority", "soft"):
        raise ValueError(f"TeacherSpec.target: expected 'majority' or 'soft', got {spec.target!r}")
    if spec.target == "soft" and shares is None:
        raise ValueError("TeacherSpec.target='soft' needs the patches' class shares")
    with torch.random.fork_rng():
        torch.manual_seed(spec.seed)
        model = PatchClassifier(spec)
    gen = torch.Generator().manual_seed(spec.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    n = len(images)
    weight = class_weights(labels, spec.num_classes, spec.class_balance)
    steps = spec.epochs * max(1, -(-n // spec.batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=spec.lr, total_steps=steps, pct_start=0.1)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=spec.epochs, desc="teacher 2D training", unit="epoch", dynamic_ncols=True)
    model.train()
    for _ in range(spec.epochs):
        perm = torch.randperm(n, generator=gen)
        total, count = 0.0, 0
        for s in range(0, n, spec.batch_size):
            idx = perm[s:s + spec.batch_size]
            x = images[idx]
            flip = torch.rand(len(idx), generator=gen) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            logits = model(x)
            if spec.target == "soft":
                y = shares[idx]
                y = torch.where(flip[:, None, None, None], y.flip(-2), y).reshape(-1, logits.shape[-1])
                loss = soft_cross_entropy(logits.reshape(-1, logits.shape[-1]), y, weight)
            else:
                y = torch.where(flip[:, None, None], labels[idx].flip(-1), labels[idx])
                loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1),
                                                         weight=weight, ignore_index=-1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total, count = total + float(loss.detach()) * len(idx), count + len(idx)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{total / max(count, 1):.3f}")
    if bar is not None:
        bar.close()
    return model.eval()


@torch.no_grad()
def patch_accuracy(model: PatchClassifier, images: torch.Tensor, labels: torch.Tensor, num_classes: int,
                   batch: int = 64) -> dict:
    """Per-patch accuracy and mIoU (label -1 ignored) of ``model`` on ``images``."""
    from concerto.eval.metrics import confusion_matrix, metrics_from_confusion

    model.eval()
    conf = np.zeros((num_classes, num_classes), np.int64)
    for s in range(0, len(images), batch):
        pred = model(images[s:s + batch]).argmax(-1)
        conf += confusion_matrix(labels[s:s + batch].reshape(-1).numpy(), pred.reshape(-1).numpy(), num_classes, -1)
    m = metrics_from_confusion(conf)
    return {"patch_acc": float(m.all_acc), "patch_mIoU": float(m.miou), "patches": int(conf.sum())}


def save_teacher(model: PatchClassifier, folder, info: dict) -> Path:
    """``save_pretrained`` of the encoder alone (what ``cross_modal.model_id`` loads), the head beside it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.encoder.save_pretrained(folder)
    torch.save(model.head.state_dict(), folder / HEAD_FILE)
    (folder / INFO_FILE).write_text(json.dumps(info, indent=2, default=str))
    return folder


def load_teacher(folder) -> PatchClassifier:
    """Encoder (through transformers ``AutoModel``, as pretraining loads it) + the saved head."""
    from transformers import AutoModel

    folder = Path(folder)
    encoder = AutoModel.from_pretrained(folder)
    spec = TeacherSpec(image_size=int(encoder.config.image_size), hidden_size=int(encoder.config.hidden_size))
    info = json.loads((folder / INFO_FILE).read_text()) if (folder / INFO_FILE).is_file() else {}
    spec.num_classes = int(info.get("spec", {}).get("num_classes", spec.num_classes))
    model = PatchClassifier.__new__(PatchClassifier)
    torch.nn.Module.__init__(model)
    model.encoder = encoder
    model.head = torch.nn.Linear(spec.hidden_size, spec.num_classes)
    model.head.load_state_dict(torch.load(folder / HEAD_FILE, weights_only=True))
    model.grid = PatchGrid(spec.image_size, 14)
    return model.eval()


def make_teacher(out, rooms: int = TEACHER_ROOMS, val_rooms: int = 6, seed: int = 1000, frames_per_room: int = 16,
                 width: int = 320, height: int = 240, palette: str = "class", spec: TeacherSpec = TeacherSpec(),
                 progress: bool = True) -> dict:
    """Render, train, evaluate and save a teacher under ``out/model`` (rooms under ``out/rooms``,
    held-out rooms under ``out/rooms_val`` with seed ``seed + 1``); returns its info (accuracy included)."""
    out = Path(out)
    t0 = time.perf_counter()
    grid = PatchGrid(spec.image_size, 14)
    train_frames = render_labelled_frames(out / "rooms", rooms, seed, frames_per_room, width, height, palette,
                                          progress, "teacher rooms")
    val_frames = render_labelled_frames(out / "rooms_val", val_rooms, seed + 1, frames_per_room, width, height,
                                        palette, progress, "teacher held-out rooms")
    x, y, shares = prepare_frames(train_frames, grid, spec.num_classes)
    xv, yv, _ = prepare_frames(val_frames, grid, spec.num_classes)
    t_render = time.perf_counter() - t0
    model = train_teacher(x, y, spec, progress, shares)
    info = {"spec": asdict(spec), "rooms": rooms, "val_rooms": val_rooms, "seed": seed, "palette": palette,
            "frames": int(len(x)), "val_frames": int(len(xv)), "image": [width, height],
            "train": patch_accuracy(model, x, y, spec.num_classes),
            "held_out": patch_accuracy(model, xv, yv, spec.num_classes),
            "seconds": {"render": round(t_render, 1), "train": round(time.perf_counter() - t0 - t_render, 1)}}
    save_teacher(model, out / "model", info)
    info["folder"] = str(out / "model")
    return info


# ----------------------------------------------------------------------------- lifting


@torch.no_grad()
def sample_patch_features(encoder, raw: dict, crop: str = "grid_multiple", batch: int = 16
                          ) -> tuple[torch.Tensor, list[tuple[np.ndarray, np.ndarray]]]:
    """One stored sample's images through ``encoder`` (an ``ImageEncoder``, the training crop):
    (patch features float [V, P, C], per image (point indices int64 [M], patch ids int64 [M]) of
    its stored correspondences that land inside the crop)."""
    grid = encoder.grid
    rgbs = [np.asarray(rgb) for rgb in (raw["rgb"] or [])]
    images = torch.stack([normalize_image(prepare_image(rgb, grid, "bilinear", crop), encoder.mean, encoder.std)
                          for rgb in rgbs])
    feats = torch.cat([encoder(images[s:s + batch]) for s in range(0, len(images), batch)]).float()
    pairs = []
    for v, rgb in enumerate(rgbs):
        pts = np.asarray(raw["corr_point"][v], np.int64)
        patch = pixel_to_patch(np.asarray(raw["corr_pixel"][v]), rgb.shape[:2], grid, crop)
        ok = patch >= 0
        pairs.append((pts[ok], patch[ok]))
    return feats.reshape(len(rgbs), grid.num_patches, -1), pairs


def lift_features(encoder, store, keys: Optional[Sequence[str]] = None, progress: bool = True,
                  crop: str = "grid_multiple", batch: int = 16) -> dict[str, np.ndarray]:
    """{scene key: float32 [N, C + 1]}: per point the mean of ``encoder``'s (an ``ImageEncoder``) patch
    features over every stored image of the scene that sees it (stored correspondences, pixel -> patch
    through the training crop), then a seen flag; zeros and flag 0 for points no image sees.
    ``keys``: only these scenes."""
    wanted = None if keys is None else set(keys)
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, np.ndarray] = {}
    indices = range(len(store))
    if progress:
        from tqdm import tqdm

        indices = tqdm(indices, desc="lift 2D features", unit="group", dynamic_ncols=True)
    for i in indices:
        raw = store[i]
        key = raw["key"]
        if wanted is not None and key not in wanted:
            continue
        n = len(raw["coord"])
        if key not in sums:
            sums[key] = np.zeros((n, encoder.channels), np.float64)
            counts[key] = np.zeros(n, np.int64)
        if not raw["rgb"]:
            continue
        feats, pairs = sample_patch_features(encoder, raw, crop, batch)
        feats = feats.numpy()
        for v, (pts, patch) in enumerate(pairs):
            np.add.at(sums[key], pts, feats[v][patch])
            np.add.at(counts[key], pts, 1)
    out = {}
    for key, s in sums.items():
        c = counts[key]
        mean = s / np.maximum(c, 1)[:, None]
        out[key] = np.concatenate([mean, (c > 0)[:, None]], 1).astype(np.float32)
    return out


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m concerto.eval.teacher2d", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--rooms", type=int, default=TEACHER_ROOMS)
    ap.add_argument("--val-rooms", type=int, default=6)
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--width", type=int, default=320)
    ap.add_argument("--height", type=int, default=240)
    ap.add_argument("--palette", default="instance", choices=("class", "instance"))
    ap.add_argument("--image-size", type=int, default=TeacherSpec.image_size)
    ap.add_argument("--hidden", type=int, default=TeacherSpec.hidden_size)
    ap.add_argument("--layers", type=int, default=TeacherSpec.num_hidden_layers)
    ap.add_argument("--epochs", type=int, default=TeacherSpec.epochs)
    ap.add_argument("--class-balance", type=float, default=TeacherSpec.class_balance)
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    spec = TeacherSpec.of_width(args.hidden, image_size=args.image_size, num_hidden_layers=args.layers,
                                epochs=args.epochs, class_balance=args.class_balance)
    info = make_teacher(args.out, args.rooms, args.val_rooms, args.seed, args.frames, args.width, args.height,
                        args.palette, spec)
    print(json.dumps(info, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
