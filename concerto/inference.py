"""Per-point features from a pretrained encoder: ``concerto.load(...).embed(...)``.

    import concerto
    enc = concerto.load("runs/pretrain")            # or "sonata", "concerto_base", a .pth
    feat = enc.embed(coord, color, normal)          # float32 [N, C], one row per input point

Checkpoints understood by :func:`load`:

- released backbones by name (``"sonata"``, ``"concerto_small"``, ``"concerto_base"``,
  ``"concerto_large"``, ...; see ``concerto.model.checkpoint.PRETRAINED``), fetched
  from Hugging Face with ``huggingface_hub`` (weights CC-BY-NC);
- any file in the official layout ``{"config": reference kwargs, "state_dict": ...}``
  (what ``concerto.train.checkpoint.export_backbone`` writes, e.g. training's ``backbone.pth``);
- our training output: a run folder (``<run>/checkpoints/step_*/state.pt``, newest
  complete step, else ``<run>/backbone.pth``), a step folder, or a ``state.pt``
  file. From a training state the EMA teacher's backbone is used by default
  (``weights="student"`` picks the student).

Input conventions match pretraining (``concerto.ssl.views``): coord float [N, 3]
in metres, shifted per cloud so x and y are centred and the lowest z is 0 (the
reference ``CenterShift(apply_z=True)``); color in [0, 255] divided by 255 (the
released transforms' ``NormalizeColor``), or / 127.5 - 1 where the model's
``PTv3Config.input_color_range`` is "symmetric" (a training state whose config says
``views.color_range: symmetric``, or that predates the field);
normal as given. A missing color is black (0) and a missing normal is 0, which
is what pretraining's attribute dropping shows the encoder.

Determinism and permutation equivariance: grid sampling here keeps, for every
voxel, the point nearest the voxel centre (ties broken by the point's values,
not its index), voxels are fed in (cloud, x, y, z) order, serialization orders
are fixed to ``config.order`` (no shuffling) and the model runs in eval mode.
Permuting the input points therefore permutes the output rows and nothing else.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch

ArrayLike = Union[np.ndarray, torch.Tensor, Sequence]


class InferenceError(ValueError):
    """Bad input to ``load`` or ``embed``; the message names the checkpoint or the field."""


# ----------------------------------------------------------------------------- input preparation


def center_shift(coord: np.ndarray) -> np.ndarray:
    """coord float [N, 3] -> shifted copy: x, y centred on the bounding box, min z at 0."""
    lo, hi = coord.min(0), coord.max(0)
    shift = np.array([(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, lo[2]], dtype=np.float64)
    return (coord.astype(np.float64) - shift).astype(np.float32)


def input_features(coord: np.ndarray, color: np.ndarray, normal: np.ndarray, color_range: str = "unit") -> np.ndarray:
    """9 input channels [N, 9]: (shifted coord, color / 255 (or / 127.5 - 1 for
    ``color_range="symmetric"``), normal), as in pretraining."""
    from concerto.ssl.views import scale_color

    return np.concatenate([coord, scale_color(color, color_range), normal], 1).astype(np.float32)


def canonical_grid_sample(coord: np.ndarray, values: np.ndarray, grid_size: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One point per occupied voxel of ``grid_size`` metres, chosen independently of point order.

    coord float [N, 3] metres; values float [N, K] (the other per-point inputs,
    used only to break ties). The representative of a voxel is its point
    nearest the voxel centre, ties broken by (coord, values) lexicographically;
    identical points are interchangeable. Returns (chosen input rows int64 [M]
    in (x, y, z) voxel order, grid_coord int32 [M, 3] >= 0, inverse int64 [N]:
    the voxel row of every input point).
    """
    cell = np.floor(coord.astype(np.float64) / grid_size).astype(np.int64)
    cell -= cell.min(0)
    if cell.size and cell.max() >= 1 << 16:
        raise InferenceError(f"embed: cloud spans {int(cell.max()) + 1} voxels of {grid_size} m on one axis; "
                             f"at most {1 << 16} are supported")
    key = (cell[:, 0] << 32) | (cell[:, 1] << 16) | cell[:, 2]
    # squared distance from the voxel centre, in voxel units
    scaled = coord.astype(np.float64) / grid_size
    dist = np.square(scaled - np.floor(scaled) - 0.5).sum(1)
    # sort by (voxel, distance) with two stable sorts (much cheaper than one many-key lexsort)
    order = np.argsort(dist, kind="stable")
    order = order[np.argsort(key[order], kind="stable")]
    sorted_key = key[order]
    first = np.ones(len(order), bool)
    first[1:] = sorted_key[1:] != sorted_key[:-1]
    voxel_of_sorted = np.cumsum(first) - 1
    chosen = order[first]
    inverse = np.empty(len(order), np.int64)
    inverse[order] = voxel_of_sorted
    # voxels whose two nearest points are equally near: the stable order above would
    # follow the input order, so pick among those by the points' values instead
    head = np.nonzero(first)[0]
    nxt = head + 1
    has_next = nxt < len(order)
    tied = head[has_next][(~first[nxt[has_next]]) & (dist[order[head[has_next]]] == dist[order[nxt[has_next]]])]
    if len(tied):
        tied_voxels = voxel_of_sorted[tied]
        members = order[np.isin(voxel_of_sorted, tied_voxels)]
        vox = inverse[members]
        ties = [values[members, j] for j in range(values.shape[1] - 1, -1, -1)] + [coord[members, j] for j in (2, 1, 0)]
        sub = np.lexsort(ties + [dist[members], vox])
        vsorted = vox[sub]
        lead = np.ones(len(sub), bool)
        lead[1:] = vsorted[1:] != vsorted[:-1]
        chosen[vsorted[lead]] = members[sub[lead]]
    return chosen.astype(np.int64), cell[chosen].astype(np.int32), inverse


@dataclass
class PreparedCloud:
    """One cloud after grid sampling: the model's rows and the map back to the input."""

    coord: np.ndarray  # float32 [M, 3] shifted metres
    feat: np.ndarray  # float32 [M, 9]
    grid_coord: np.ndarray  # int32 [M, 3]
    inverse: np.ndarray  # int64 [N] voxel row of every input point


def _as_array(x: ArrayLike, name: str, index: int, dtype=np.float32) -> np.ndarray:
    if torch.is_tensor(x):
        x = x.detach().cpu().numpy()
    try:
        return np.asarray(x, dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise InferenceError(f"embed: cloud {index}: field '{name}' is not numeric ({exc})") from exc


def prepare_cloud(coord: ArrayLike, color: Optional[ArrayLike], normal: Optional[ArrayLike],
                  grid_size: float, index: int = 0, color_range: str = "unit") -> PreparedCloud:
    """Validate one cloud, shift it, build its 9 features and grid-sample it (see module doc)."""
    coord = _as_array(coord, "coord", index)
    if coord.ndim != 2 or coord.shape[1] != 3 or len(coord) == 0:
        raise InferenceError(f"embed: cloud {index}: field 'coord' must be [N, 3] with N > 0, got {list(coord.shape)}")
    if not np.isfinite(coord).all():
        bad = int(np.nonzero(~np.isfinite(coord).all(1))[0][0])
        raise InferenceError(f"embed: cloud {index}: field 'coord' has non-finite values (first at point {bad})")
    n = len(coord)
    fields = {}
    for name, value in (("color", color), ("normal", normal)):
        if value is None:
            fields[name] = np.zeros((n, 3), np.float32)
            continue
        arr = _as_array(value, name, index)
        if arr.shape != (n, 3):
            raise InferenceError(f"embed: cloud {index}: field '{name}' has shape {list(arr.shape)}, expected [{n}, 3]")
        if not np.isfinite(arr).all():
            raise InferenceError(f"embed: cloud {index}: field '{name}' has non-finite values")
        fields[name] = arr
    if grid_size <= 0:
        raise InferenceError(f"embed: grid_size must be > 0, got {grid_size}")
    shifted = center_shift(coord)
    feat = input_features(shifted, fields["color"], fields["normal"], color_range)
    rows, grid_coord, inverse = canonical_grid_sample(shifted, feat[:, 3:], grid_size)
    return PreparedCloud(shifted[rows], feat[rows], grid_coord, inverse)


# ----------------------------------------------------------------------------- encoder


class Encoder:
    """A frozen PTv3 encoder in eval mode giving per-input-point features.

    ``levels``: encoder stages concatenated from the deepest one upwards (as the
    pretraining loss and the reference demos read features: 2 gives stage-2
    resolution with 192 + 384 + 512 = 1088 channels for base); coarser-to-finer
    steps beyond that only broadcast. With a decoder (``enc_mode=False``) the
    decoder output is used as is.
    """

    def __init__(self, model, device: Union[str, torch.device] = "cpu", levels: int = 2,
                 source: str = "<model>"):
        self.model = model.to(device).eval()
        self.model.requires_grad_(False)
        self.device = torch.device(device)
        self.source = source
        cfg = model.config
        self.levels = min(int(levels), cfg.num_stages - 1) if cfg.enc_mode else 0
        self.grid_size = float(cfg.grid_size)
        # how the model's training fed colours (see module doc)
        self.color_range = cfg.input_color_range

    @property
    def config(self):
        return self.model.config

    @property
    def channels(self) -> int:
        """Feature width C of ``embed``'s output."""
        cfg = self.model.config
        if not cfg.enc_mode:
            return int(cfg.dec_channels[0])
        return int(sum(cfg.enc_channels[cfg.num_stages - 1 - self.levels:]))

    def __repr__(self) -> str:
        return f"Encoder(source={self.source!r}, channels={self.channels}, device={self.device})"

    @torch.inference_mode()
    def _forward(self, clouds: list[PreparedCloud]) -> torch.Tensor:
        """Features [sum M_i, C] of the grid-sampled rows of ``clouds`` run as one batch."""
        from concerto.model import Point, upcast

        dev = self.device
        counts = torch.tensor([len(c.coord) for c in clouds], dtype=torch.long)
        point = Point(
            coord=torch.from_numpy(np.concatenate([c.coord for c in clouds])).to(dev),
            feat=torch.from_numpy(np.concatenate([c.feat for c in clouds])).to(dev),
            grid_coord=torch.from_numpy(np.concatenate([c.grid_coord for c in clouds])).to(dev),
            offset=torch.cumsum(counts, 0).to(dev),
            grid_size=self.grid_size,
        )
        out = self.model(point, orders=list(self.model.config.order))
        if self.model.config.enc_mode:
            out = upcast(out, self.levels)
        feat = out["feat"][out.index_to_input()]
        return feat.float()

    def embed(self, coord, color=None, normal=None, batch_size: int = 4, grid_size: Optional[float] = None,
              max_batch_points: int = 400_000, progress: Optional[bool] = None):
        """Per-point features at full input resolution.

        ``coord`` float [N, 3] metres, ``color`` [N, 3] in 0..255 (uint8 or
        float), ``normal`` [N, 3]; or lists of those for several clouds (then
        ``color`` / ``normal`` are lists or None). Clouds are run ``batch_size``
        at a time (fewer if a batch would exceed ``max_batch_points`` voxels);
        batching does not change the result. ``grid_size`` defaults to the
        model's (0.02 m). ``progress``: show a bar (default: when there is more
        than one batch or over 10^6 points). Returns float32 [N, C] (a list of
        those for a list input).
        """
        single = not isinstance(coord, (list, tuple))
        coords = [coord] if single else list(coord)
        n = len(coords)

        def per_cloud(x, name):
            if x is None:
                return [None] * n
            xs = [x] if single else list(x)
            if len(xs) != n:
                raise InferenceError(f"embed: {len(xs)} '{name}' arrays for {n} clouds")
            return xs

        colors, normals = per_cloud(color, "color"), per_cloud(normal, "normal")
        gs = self.grid_size if grid_size is None else float(grid_size)
        if batch_size < 1:
            raise InferenceError(f"embed: batch_size must be >= 1, got {batch_size}")
        batches: list[list[int]] = []
        current, current_points = [], 0
        prepared: dict[int, PreparedCloud] = {}
        sizes = [int(np.shape(c)[0]) if np.ndim(c) == 2 else 0 for c in coords]
        for i in range(n):
            # batch on input sizes (voxel counts are known only after preparation)
            if current and (len(current) >= batch_size or current_points + sizes[i] > max_batch_points):
                batches.append(current)
                current, current_points = [], 0
            current.append(i)
            current_points += sizes[i]
        if current:
            batches.append(current)
        show = progress if progress is not None else (len(batches) > 1 or sum(sizes) > 1_000_000)
        bar = None
        if show:
            from tqdm import tqdm

            bar = tqdm(total=sum(sizes), unit="pt", unit_scale=True, desc="embed", dynamic_ncols=True)
        results: list[Optional[np.ndarray]] = [None] * n
        try:
            for batch in batches:
                for i in batch:
                    prepared[i] = prepare_cloud(coords[i], colors[i], normals[i], gs, i, self.color_range)
                feat = self._forward([prepared[i] for i in batch]).cpu().numpy()
                start = 0
                for i in batch:
                    m = len(prepared[i].coord)
                    results[i] = np.ascontiguousarray(feat[start:start + m][prepared.pop(i).inverse])
                    start += m
                if bar is not None:
                    bar.update(sum(sizes[i] for i in batch))
        finally:
            if bar is not None:
                bar.close()
        return results[0] if single else results


# ----------------------------------------------------------------------------- loading


def _training_backbone(state: dict, name: str, weights: str):
    """PointTransformerV3 from one of our training states (``state.pt``)."""
    from concerto.model import PTv3Config, load_checkpoint
    from concerto.model.config import PRESETS

    if weights not in ("teacher", "student"):
        raise InferenceError(f"load: weights must be 'teacher' or 'student', got {weights!r}")
    if weights not in state or not isinstance(state[weights], dict):
        raise InferenceError(f"checkpoint {name}: training state has no '{weights}' field (keys: {sorted(state)[:8]})")
    cfg = state.get("config")
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model"), dict):
        raise InferenceError(f"checkpoint {name}: training state has no 'config.model' field")
    model_cfg = cfg["model"]
    preset = model_cfg.get("preset")
    if preset not in PRESETS:
        raise InferenceError(f"checkpoint {name}: field 'config.model.preset' is {preset!r}, expected one of {sorted(PRESETS)}")
    # states from before views.color_range existed were trained on colour / 127.5 - 1
    ptv3 = PTv3Config.preset(preset, grid_size=float(model_cfg.get("grid_size", 0.02)), drop_path=0.0,
                             input_color_range=(cfg.get("views") or {}).get("color_range", "symmetric"))
    try:
        return load_checkpoint({"state_dict": state[weights]}, config=ptv3, prefix="backbone.")
    except ValueError as exc:  # CheckpointError
        raise InferenceError(f"checkpoint {name}: field '{weights}': {exc}") from exc


def _read_training_state(path: Path) -> dict:
    from concerto.model.checkpoint import CheckpointError, torch_file

    try:
        return torch_file(path)
    except CheckpointError as exc:  # a text file, truncated, not a torch file
        raise InferenceError(str(exc)) from exc


def resolve_checkpoint(path: Union[str, os.PathLike]) -> tuple[Path, str]:
    """(file to read, kind) for a path: kind "training" (a state.pt) or "official" ({config, state_dict})."""
    from concerto.train.checkpoint import latest_training_state

    p = Path(path)
    if p.is_dir():
        if (p / "state.pt").is_file():
            return p / "state.pt", "training"
        latest = latest_training_state(p / "checkpoints")
        if latest is not None:
            return latest / "state.pt", "training"
        for name in ("backbone.pth", "model.pth"):
            if (p / name).is_file():
                return p / name, "official"
        raise InferenceError(f"checkpoint {p}: folder has no state.pt, checkpoints/step_*/state.pt or backbone.pth")
    if p.is_file():
        return p, "file"
    raise InferenceError(f"checkpoint {p}: no such file or folder")


def load_model(name_or_path: Union[str, os.PathLike], weights: str = "teacher", **overrides: Any):
    """The PointTransformerV3 behind :func:`load` (not moved, not in eval mode)."""
    from concerto.model import CheckpointError, load_checkpoint, load_pretrained
    from concerto.model.checkpoint import PRETRAINED

    overrides.setdefault("drop_path", 0.0)
    text = str(name_or_path)
    if text in PRETRAINED and not Path(text).exists():
        try:
            return load_pretrained(text, **overrides)
        except CheckpointError as exc:
            raise InferenceError(str(exc)) from exc
        except Exception as exc:  # noqa: BLE001 - network / hub errors of many types
            raise InferenceError(f"checkpoint {text}: download of the released weights failed "
                                 f"({type(exc).__name__}: {exc})") from exc
    path, kind = resolve_checkpoint(name_or_path)
    if kind == "official":
        try:
            return load_checkpoint(path, **overrides)
        except CheckpointError as exc:
            raise InferenceError(str(exc)) from exc
    ckpt = _read_training_state(path)
    if not isinstance(ckpt, dict):
        raise InferenceError(f"checkpoint {path}: expected a dict, got {type(ckpt).__name__}")
    if "teacher" in ckpt and "student" in ckpt:
        model = _training_backbone(ckpt, str(path), weights)
        if set(overrides) != {"drop_path"}:
            from concerto.model import PointTransformerV3, PTv3Config

            rebuilt = PointTransformerV3(PTv3Config.from_dict({**model.config.to_dict(), **overrides}))
            rebuilt.load_state_dict(model.state_dict())
            model = rebuilt
        return model
    try:
        return load_checkpoint(ckpt, **overrides)
    except CheckpointError as exc:
        raise InferenceError(str(exc).replace("<dict>", str(path))) from exc


def load(name_or_path: Union[str, os.PathLike], device: Union[str, torch.device] = "cpu", levels: int = 2,
         weights: str = "teacher", **overrides: Any) -> Encoder:
    """An :class:`Encoder` for a released name, an official-layout file or a training run.

    ``overrides`` change the model config (e.g. ``sparse_conv_backend="torch"``,
    ``attention_backend="sdpa"``, ``enc_patch_size=[1024] * 5``); ``weights``
    picks the teacher or student backbone of a training state.
    """
    model = load_model(name_or_path, weights=weights, **overrides)
    return Encoder(model, device=device, levels=levels, source=str(name_or_path))


def random_encoder(preset: str = "tiny", seed: int = 0, device: Union[str, torch.device] = "cpu",
                   levels: int = 2, **overrides: Any) -> Encoder:
    """A randomly initialised encoder (``preset`` base | large | tiny), the probing baseline."""
    from concerto.model import PointTransformerV3, PTv3Config
    from concerto.model.config import PRESETS

    if preset not in PRESETS:
        raise InferenceError(f"random encoder: unknown preset {preset!r}; expected one of {sorted(PRESETS)}")
    overrides.setdefault("drop_path", 0.0)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = PointTransformerV3(PTv3Config.preset(preset, **overrides))
    return Encoder(model, device=device, levels=levels, source=f"random:{preset}:{seed}")


# ----------------------------------------------------------------------------- command line


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m concerto.inference CHECKPOINT``: load it as ``concerto.load`` does and say what it is."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(
        prog="python -m concerto.inference",
        description="Check that a checkpoint loads as an encoder and print what it gives. In Python: "
                    "concerto.load(CHECKPOINT).embed(coord, color, normal) -> per-point features. "
                    "Probe and pictures: python -m concerto.eval.linear_probe / concerto.eval.pictures --help.")
    parser.add_argument("checkpoint", help="training run folder, state.pt, official-layout .pth, or a released "
                                           "name (sonata, concerto_base, ...)")
    parser.add_argument("--weights", default="teacher", choices=("teacher", "student"),
                        help="which backbone of a training state (default: teacher)")
    parser.add_argument("--levels", type=int, default=2, help="encoder stages concatenated (default 2)")
    args = parser.parse_args(argv)
    try:
        enc = load(args.checkpoint, levels=args.levels, weights=args.weights)
    except InferenceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    params = sum(p.numel() for p in enc.model.parameters())
    print(f"{args.checkpoint}: PTv3 encoder, {params:,} parameters, enc_channels {list(enc.config.enc_channels)}; "
          f"embed() gives {enc.channels} channels per point (levels {enc.levels}), colour fed as "
          f"{'color / 255' if enc.color_range == 'unit' else 'color / 127.5 - 1'}, grid {enc.grid_size} m")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
