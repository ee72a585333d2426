"""Pictures of point features: PCA colours, similarity heatmaps, PNG and PLY output.

- ``pca_rgb(feat)``: the first 3 principal components of [N, C] features mapped
  to RGB in [0, 1], each channel scaled robustly (its 2nd..98th percentile to 0..1).
- ``cosine_similarity(feat, query)`` and ``colormap(values)``: heatmap colours.
- ``render(coord, rgb, view)``: a point-splatting z-buffer renderer (numpy +
  PIL, no GL): ``"top"`` is an orthographic view down the -z axis (z up, as in
  the scene record), ``"perspective"`` a pinhole camera above a corner of the
  cloud looking at its centre (OpenCV camera axes internally).
- ``write_ply(path, coord, rgb)``: binary little-endian PLY with vertex colours.
- ``save_feature_pictures`` / ``save_similarity_picture``: the PNGs and PLY of one cloud.

    python -m concerto.eval.pictures --checkpoint <ckpt|random> --data <store> [--index 0] --out DIR
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from preprocess.colormap import interpolate_anchors
from preprocess.geometry import look_at

BACKGROUND = (255, 255, 255)


# ----------------------------------------------------------------------------- colours


def pca_rgb(feat: np.ndarray, percentiles: tuple[float, float] = (2.0, 98.0), max_fit_points: int = 200_000,
            seed: int = 0) -> np.ndarray:
    """float32 [N, 3] in [0, 1]: features [N, C] projected on their top 3 principal axes.

    The axes come from the covariance of (at most ``max_fit_points``, seeded)
    centred rows; each axis's sign is fixed so its largest loading is positive
    (deterministic colours). Each projected channel is mapped linearly from its
    ``percentiles`` to [0, 1] and clipped, so a few outliers do not wash the
    picture out. Fewer than 3 channels or points are padded with zeros.
    """
    feat = np.asarray(feat, np.float64)
    if feat.ndim != 2 or len(feat) == 0:
        raise ValueError(f"pca_rgb: feat must be [N, C] with N > 0, got {list(feat.shape)}")
    fit = feat
    if len(feat) > max_fit_points:
        fit = feat[np.random.default_rng(seed).choice(len(feat), max_fit_points, replace=False)]
    mean = fit.mean(0)
    cov = np.cov(fit - mean, rowvar=False).reshape(feat.shape[1], feat.shape[1])
    vals, vecs = np.linalg.eigh(cov)
    axes = vecs[:, ::-1][:, :3]  # largest eigenvalues first
    signs = np.sign(axes[np.abs(axes).argmax(0), np.arange(axes.shape[1])])
    axes = axes * np.where(signs == 0, 1.0, signs)
    proj = (feat - mean) @ axes
    if proj.shape[1] < 3:
        proj = np.concatenate([proj, np.zeros((len(proj), 3 - proj.shape[1]))], 1)
    lo = np.percentile(proj, percentiles[0], axis=0)
    hi = np.percentile(proj, percentiles[1], axis=0)
    rgb = (proj - lo) / np.maximum(hi - lo, 1e-12)
    return np.clip(rgb, 0.0, 1.0).astype(np.float32)


# Anchors of a perceptually ordered map: dark blue -> blue -> cyan -> green-yellow -> orange -> dark red.
_HEAT_ANCHORS = np.array([
    [0.19, 0.07, 0.40],
    [0.15, 0.40, 0.90],
    [0.10, 0.80, 0.85],
    [0.60, 0.95, 0.30],
    [0.98, 0.65, 0.12],
    [0.60, 0.05, 0.05],
])


def colormap(values: np.ndarray, vmin: Optional[float] = None, vmax: Optional[float] = None) -> np.ndarray:
    """float32 [N, 3] in [0, 1]: ``values`` [N] scaled to [vmin, vmax] (default their range) and coloured
    by piecewise-linear interpolation of a blue -> red heat map."""
    v = np.asarray(values, np.float64).reshape(-1)
    lo = float(v.min()) if vmin is None else vmin
    hi = float(v.max()) if vmax is None else vmax
    return interpolate_anchors((v - lo) / max(hi - lo, 1e-12), _HEAT_ANCHORS).astype(np.float32)


def cosine_similarity(feat: np.ndarray, query: int) -> np.ndarray:
    """float32 [N]: cosine similarity of every row of ``feat`` [N, C] to row ``query``."""
    feat = np.asarray(feat, np.float32)
    if not 0 <= query < len(feat):
        raise ValueError(f"cosine_similarity: query {query} outside [0, {len(feat)})")
    norm = np.linalg.norm(feat, axis=1)
    q = feat[query]
    return (feat @ q / np.maximum(norm * norm[query], 1e-12)).astype(np.float32)


# ----------------------------------------------------------------------------- rendering


def project(coord: np.ndarray, view: str, width: int, height: int, margin: float = 0.05,
            azimuth_deg: float = -60.0, elevation_deg: float = 35.0, fov_deg: float = 50.0):
    """Pixel coordinates (u, v) float [N] and depth [N] (smaller = nearer) of ``coord`` [N, 3] metres.

    ``top``: orthographic, looking down -z, x to the right and y up in the
    image, scaled to fit with ``margin``. ``perspective``: a pinhole camera at
    ``azimuth``/``elevation`` around the bounding-box centre, far enough for the
    box to fit the horizontal ``fov``; points behind it get depth +inf.
    """
    c = np.asarray(coord, np.float64)
    lo, hi = c.min(0), c.max(0)
    centre = (lo + hi) / 2
    if view == "top":
        span = np.maximum(hi[:2] - lo[:2], 1e-9)
        scale = (1 - 2 * margin) * min(width / span[0], height / span[1])
        u = (c[:, 0] - centre[0]) * scale + width / 2
        v = -(c[:, 1] - centre[1]) * scale + height / 2
        return u, v, -c[:, 2]
    if view == "perspective":
        az, el = np.deg2rad(azimuth_deg), np.deg2rad(elevation_deg)
        radius = 0.5 * np.linalg.norm(hi - lo)
        f = (width / 2) / np.tan(np.deg2rad(fov_deg) / 2)
        # the bounding sphere is a loose fit for a box seen from above: 0.8 of it frames rooms well
        dist = 0.8 * radius * (1 + 2 * margin) / np.tan(np.deg2rad(fov_deg) / 2 * min(1.0, height / width))
        eye = centre + dist * np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])
        R = look_at(eye, centre)[:3, :3].T  # world-to-camera rotation
        cam = (c - eye) @ R.T
        z = cam[:, 2]
        ok = z > 1e-6
        safe = np.where(ok, z, 1.0)
        u = f * cam[:, 0] / safe + width / 2
        v = f * cam[:, 1] / safe + height / 2
        return u, v, np.where(ok, z, np.inf)
    raise ValueError(f"project: view must be 'top' or 'perspective', got {view!r}")


def splat(u: np.ndarray, v: np.ndarray, depth: np.ndarray, rgb: np.ndarray, width: int, height: int,
          radius: int = 1, background: Sequence[int] = BACKGROUND) -> np.ndarray:
    """uint8 [H, W, 3]: every point drawn as a (2 radius + 1)^2 pixel square; the nearest point wins each pixel.

    u, v float pixel coordinates (pixel centres at integers), depth [N]
    (smaller = nearer, inf = not drawn), rgb float [N, 3] in [0, 1].
    """
    image = np.empty((height, width, 3), np.uint8)
    image[:] = np.asarray(background, np.uint8)
    ok = np.isfinite(depth)
    ui = np.round(u[ok]).astype(np.int64)
    vi = np.round(v[ok]).astype(np.int64)
    d = depth[ok]
    colour = np.clip(np.round(np.asarray(rgb)[ok] * 255), 0, 255).astype(np.uint8)
    offsets = np.arange(-radius, radius + 1)
    du, dv = np.meshgrid(offsets, offsets)
    pu = (ui[:, None] + du.reshape(1, -1)).reshape(-1)
    pv = (vi[:, None] + dv.reshape(1, -1)).reshape(-1)
    k = du.size
    pd = np.repeat(d, k)
    src = np.repeat(np.arange(len(d)), k)
    inside = (pu >= 0) & (pu < width) & (pv >= 0) & (pv < height)
    pix = (pv * width + pu)[inside]
    pd, src = pd[inside], src[inside]
    # z-buffer: per pixel keep the nearest fragment (ties: the lower point index). Two stable
    # sorts (depth, then pixel) instead of one three-key lexsort: same order, several times faster.
    by_depth = np.argsort(pd, kind="stable")  # src is ascending, so equal depths keep index order
    order = by_depth[np.argsort(pix[by_depth], kind="stable")]
    first = np.ones(len(order), bool)
    first[1:] = pix[order][1:] != pix[order][:-1]
    win = order[first]
    image.reshape(-1, 3)[pix[win]] = colour[src[win]]
    return image


def render(coord: np.ndarray, rgb: np.ndarray, view: str = "top", size: tuple[int, int] = (480, 360),
           radius: int = 1, max_height: Optional[float] = None, highlight: Optional[int] = None,
           azimuth_deg: float = -60.0, elevation_deg: float = 35.0) -> np.ndarray:
    """uint8 [H, W, 3] picture of the coloured cloud (size = (width, height)).

    ``max_height``: points higher than min z + max_height metres are not drawn
    (cuts a ceiling off so a room's inside shows). ``highlight``: index of a
    point drawn as a large black-ringed marker on top (a similarity query).
    ``azimuth_deg`` / ``elevation_deg``: the perspective camera's direction (see ``project``).
    """
    coord = np.asarray(coord, np.float64)
    rgb = np.asarray(rgb, np.float32)
    if coord.ndim != 2 or coord.shape[1] != 3 or rgb.shape != coord.shape:
        raise ValueError(f"render: coord {list(coord.shape)} and rgb {list(rgb.shape)} must both be [N, 3]")
    width, height = size
    keep = np.ones(len(coord), bool)
    if max_height is not None:
        keep = coord[:, 2] <= coord[:, 2].min() + max_height
    # project everything (the framing does not depend on the cut), draw the kept points
    u, v, depth = project(coord, view, width, height, azimuth_deg=azimuth_deg, elevation_deg=elevation_deg)
    image = splat(u[keep], v[keep], depth[keep], rgb[keep], width, height, radius)
    if highlight is not None and np.isfinite(depth[highlight]):
        for r, colour in ((radius + 5, (0, 0, 0)), (radius + 3, (255, 255, 255)), (radius + 1, (255, 0, 255))):
            image = _disc(image, u[highlight], v[highlight], r, colour)
    return image


def _disc(image: np.ndarray, u: float, v: float, r: int, colour) -> np.ndarray:
    h, w = image.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    image[(xx - u) ** 2 + (yy - v) ** 2 <= r * r] = colour
    return image


def side_by_side(images: Sequence[np.ndarray], gap: int = 8) -> np.ndarray:
    """uint8: images of equal height placed left to right with a white gap."""
    h = max(i.shape[0] for i in images)
    parts = []
    for k, im in enumerate(images):
        if k:
            parts.append(np.full((h, gap, 3), 255, np.uint8))
        pad = np.full((h - im.shape[0], im.shape[1], 3), 255, np.uint8)
        parts.append(np.concatenate([im, pad]) if len(pad) else im)
    return np.concatenate(parts, 1)


def save_png(path, image: np.ndarray) -> Path:
    """Write uint8 [H, W, 3] as an optimised PNG; returns the path."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, optimize=True)
    return path


def write_ply(path, coord: np.ndarray, rgb: np.ndarray) -> Path:
    """Binary little-endian PLY: float x, y, z (metres) and uchar red, green, blue (rgb float in [0, 1])."""
    coord = np.asarray(coord, np.float32)
    colour = np.clip(np.round(np.asarray(rgb, np.float32) * 255), 0, 255).astype(np.uint8)
    if coord.ndim != 2 or coord.shape[1] != 3 or colour.shape != coord.shape:
        raise ValueError(f"write_ply: coord {list(coord.shape)} and rgb {list(colour.shape)} must both be [N, 3]")
    vertex = np.empty(len(coord), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"),
                                         ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    vertex["x"], vertex["y"], vertex["z"] = coord.T
    vertex["red"], vertex["green"], vertex["blue"] = colour.T
    header = ("ply\nformat binary_little_endian 1.0\n"
              f"element vertex {len(coord)}\n"
              "property float x\nproperty float y\nproperty float z\n"
              "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(header.encode("ascii"))
        f.write(vertex.tobytes())
    return path


# ----------------------------------------------------------------------------- one cloud's pictures


def default_cut(coord: np.ndarray) -> float:
    """Height above the floor below which a room is drawn: 85 % of the cloud's z extent."""
    z = np.asarray(coord)[:, 2]
    return 0.85 * float(z.max() - z.min())


def save_feature_pictures(out_dir, name: str, coord: np.ndarray, feat: np.ndarray,
                          color: Optional[np.ndarray] = None, size: tuple[int, int] = (480, 360),
                          radius: int = 1, max_height: Optional[float] = None) -> dict[str, Path]:
    """PCA colours of ``feat`` [N, C] on ``coord`` [N, 3]: ``<name>_pca.png`` (top | perspective),
    ``<name>_pca.ply`` and, when ``color`` (uint8 [N, 3]) is given, ``<name>_rgb.png`` for comparison."""
    out_dir = Path(out_dir)
    rgb = pca_rgb(feat)
    cut = default_cut(coord) if max_height is None else max_height
    paths = {}
    views = [render(coord, rgb, v, size, radius, cut) for v in ("top", "perspective")]
    paths["pca_png"] = save_png(out_dir / f"{name}_pca.png", side_by_side(views))
    paths["pca_ply"] = write_ply(out_dir / f"{name}_pca.ply", coord, rgb)
    if color is not None:
        col = np.asarray(color, np.float32) / 255.0
        views = [render(coord, col, v, size, radius, cut) for v in ("top", "perspective")]
        paths["rgb_png"] = save_png(out_dir / f"{name}_rgb.png", side_by_side(views))
    return paths


def save_similarity_picture(path, coord: np.ndarray, feat: np.ndarray, query: int,
                            size: tuple[int, int] = (480, 360), radius: int = 1,
                            max_height: Optional[float] = None) -> Path:
    """Heat map of the cosine similarity of every point's feature to point ``query``'s, top | perspective."""
    sim = cosine_similarity(feat, query)
    rgb = colormap(sim, vmin=float(np.percentile(sim, 2)), vmax=1.0)
    cut = default_cut(coord) if max_height is None else max_height
    views = [render(coord, rgb, v, size, radius, cut, highlight=query) for v in ("top", "perspective")]
    return save_png(path, side_by_side(views))


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m concerto.eval.pictures", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="shard store path or URL")
    parser.add_argument("--checkpoint", required=True, help="run folder, state.pt, .pth, released name, or 'random'")
    parser.add_argument("--config", default="tiny", help="preset for --checkpoint random")
    parser.add_argument("--index", type=int, default=0, help="sample index in the store")
    parser.add_argument("--query", type=int, default=None, help="query point for the similarity map (default: a seeded pick)")
    parser.add_argument("--out", default=None, help="folder (default: runs/pictures-<checkpoint name>)")
    parser.add_argument("--name", default=None)
    parser.add_argument("--size", type=int, nargs=2, default=(480, 360), metavar=("W", "H"))
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    from concerto.data import DataError, open_store
    from concerto.eval.report import default_output_dir
    from concerto.inference import InferenceError, load, random_encoder

    if args.out is None:
        args.out = str(default_output_dir("pictures", args.checkpoint, args.config))

    try:
        store = open_store(args.data)
        if not -len(store) <= args.index < len(store):
            raise DataError(f"data store '{args.data}': sample {args.index} out of range ({len(store)} samples)")
        raw = store[args.index]
        enc = random_encoder(args.config, device=args.device) if args.checkpoint == "random" else \
            load(args.checkpoint, device=args.device)
        feat = enc.embed(raw["coord"], raw["color"], raw["normal"])
    except (DataError, InferenceError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    name = args.name or str(raw.get("scene_id", f"sample{args.index}"))
    paths = save_feature_pictures(args.out, name, raw["coord"], feat, raw["color"], tuple(args.size))
    query = args.query if args.query is not None else int(np.random.default_rng(0).integers(len(feat)))
    paths["similarity_png"] = save_similarity_picture(Path(args.out) / f"{name}_similarity.png", raw["coord"], feat,
                                                      query, tuple(args.size))
    for k, p in paths.items():
        print(f"{k}: {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
