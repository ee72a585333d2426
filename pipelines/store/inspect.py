"""``concerto-store``: look inside a shard store.

    concerto-store <url> [--version N]          counts per source
    concerto-store <url> --versions             manifest history
    concerto-store <url> --coverage [--min-corr X]
                                                per-scene correspondence coverage
    concerto-store <url> --draw SAMPLE --out f.png
                                                a sample's correspondences over its
                                                images (2x2 grid, colour = depth)
    concerto-store <url> --verify               re-hash every listed shard file
    concerto-store <url> --repair               rebuild the scenes of shards that fail
                                                verification from their recorded sources
    concerto-store <url> --migrate              rewrite an older-format store (chunks
                                                without checksums) in the current format
    concerto-store <url> --gc [--keep-last N] [--min-age S] [--dry-run]
                                                delete shards no kept manifest lists
    concerto-store <url> --quarantine           scenes that failed to build: stage,
                                                error and whole reason
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from pipelines.store.errors import StoreError
from preprocess.colormap import interpolate_anchors
from pipelines.store.gc import gc
from pipelines.store.layout import COUNT_IMAGE_GROUPS
from pipelines.store.manifest import list_versions, load_manifest
from pipelines.store.migrate import migrate
from pipelines.store.reader import ShardStore

# anchor colours of a perceptually ordered dark-blue -> yellow map (viridis)
_CMAP_ANCHORS = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], np.float32)


def colormap(t: np.ndarray) -> np.ndarray:
    """t float [M] in [0, 1] -> uint8 [M, 3] (dark blue near, yellow far)."""
    return interpolate_anchors(np.nan_to_num(t), _CMAP_ANCHORS).round().astype(np.uint8)


def camera_depth(coord: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """z-depth [M] of world points coord [M,3] in the camera whose camera-to-world
    pose [4,4] is given (OpenCV axes: z forward)."""
    R, t = pose[:3, :3].astype(np.float64), pose[:3, 3].astype(np.float64)
    return ((coord.astype(np.float64) - t) @ R)[:, 2]


def draw_image_group(store: ShardStore, index: int, radius: int = 1) -> np.ndarray:
    """uint8 [2*Hmax, 2*Wmax, 3]: sample ``index``'s images in a 2x2 grid, each
    with its corresponding points drawn at their pixels, coloured by their depth
    in that camera (per-image 2nd..98th percentile range)."""
    s = store[index]
    if not s["rgb"]:
        raise ValueError(f"sample {index} ({s['key']} image group {s['image_group']}) has no images to draw")
    hmax = max(im.shape[0] for im in s["rgb"])
    wmax = max(im.shape[1] for im in s["rgb"])
    canvas = np.zeros((2 * hmax, 2 * wmax, 3), np.uint8)
    for v, img in enumerate(s["rgb"]):
        tile = (img.astype(np.float32) * 0.5).astype(np.uint8)  # dim so points stand out
        h, w = img.shape[:2]
        px, pt = s["corr_pixel"][v].astype(np.int64), s["corr_point"][v]
        if len(pt):
            d = camera_depth(s["coord"][pt], s["pose"][v])
            lo, hi = np.percentile(d, [2, 98])
            col = colormap((d - lo) / max(hi - lo, 1e-6))
            for dv in range(-radius, radius + 1):
                for du in range(-radius, radius + 1):
                    u = np.clip(px[:, 0] + du, 0, w - 1)
                    r = np.clip(px[:, 1] + dv, 0, h - 1)
                    tile[r, u] = col
        r0, c0 = (v // 2) * hmax, (v % 2) * wmax
        canvas[r0:r0 + h, c0:c0 + w] = tile
    return canvas


def scene_coverage(store: ShardStore, min_corr: int) -> list[dict]:
    """Per listed scene: fraction of points seen by at least one image, and the
    images with fewer than ``min_corr`` correspondences."""
    rows = []
    for sh in store.manifest.shards:
        r = store.reader(sh.id)
        a = r._open()
        for e in sh.scenes:
            lo, hi = int(a["scenes/image_offset"][e.index]), int(a["scenes/image_offset"][e.index + 1])
            counts = np.diff(a["images/corr_offset"][lo:hi + 1])
            c_lo, c_hi = int(a["images/corr_offset"][lo]), int(a["images/corr_offset"][hi])
            seen = np.unique(r.read("corr/point", slice(c_lo, c_hi))).size if c_hi > c_lo else 0
            names = r.scene_attrs[e.index]["frame_names"]
            rows.append({
                "key": e.key, "points": e.n_points, "images": e.n_images, "corr": e.n_corr,
                "coverage": seen / max(e.n_points, 1),
                "sparse_images": [f"{names[j]} ({int(c)})" for j, c in enumerate(counts) if c < min_corr],
            })
    return rows


def _table(title: str, columns: list[str], rows: list[list], out):
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # plain text fallback
        print(title, file=out)
        print("\t".join(columns), file=out)
        for row in rows:
            print("\t".join(str(x) for x in row), file=out)
        return
    t = Table(title=title)
    for c in columns:
        t.add_column(c, overflow="fold")
    for row in rows:
        t.add_row(*[str(x) for x in row])
    Console(file=out, width=160).print(t)


def print_quarantine(url: str, out) -> None:
    """The latest quarantine report: one line per scene, its whole reason."""
    from pipelines.quarantine import load_quarantine

    failed = load_quarantine(url)
    if not failed:
        print(f"quarantine of {url}: no scene quarantined", file=out)
        return
    print(f"quarantine of {url}: {len(failed)} scenes (re-run the build to retry them)", file=out)
    for key, f in sorted(failed.items()):
        when = f" [{f.time}]" if f.time else ""
        print(f"  {key}  stage {f.stage}  {f.error_type}: {f.message}{when}", file=out)


def main(argv=None, out=None) -> int:
    out = out or sys.stdout
    p = argparse.ArgumentParser(prog="concerto-store", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("url", help="store path or fsspec URL")
    p.add_argument("--version", type=int, default=None, help="manifest version (default: latest)")
    p.add_argument("--versions", action="store_true", help="list manifest versions")
    p.add_argument("--coverage", action="store_true", help="per-scene correspondence coverage")
    p.add_argument("--min-corr", type=int, default=100, help="flag images with fewer correspondences (default 100)")
    p.add_argument("--draw", type=int, metavar="SAMPLE", help="draw sample SAMPLE's correspondences (its image group)")
    p.add_argument("--out", help="PNG path for --draw")
    p.add_argument("--verify", action="store_true", help="re-hash every shard file")
    p.add_argument("--migrate", action="store_true", help="rewrite shards of an older store format")
    p.add_argument("--repair", action="store_true",
                   help="rebuild the scenes of damaged shards from their recorded sources, commit without them")
    p.add_argument("--gc", action="store_true", help="delete shard folders no kept manifest lists")
    p.add_argument("--keep-last", type=int, default=None, help="with --gc: keep only the newest N manifests")
    p.add_argument("--min-age", type=float, default=3600.0, help="with --gc: spare unlisted shards younger than this (s)")
    p.add_argument("--dry-run", action="store_true", help="with --gc: only report")
    p.add_argument("--quarantine", action="store_true",
                   help="list the quarantined scenes (failed builds): scene, stage, error and reason")
    args = p.parse_args(argv)
    if args.draw is not None and not args.out:
        p.error("--draw needs --out file.png")
    try:
        if args.migrate:
            rep = migrate(args.url, progress=True)
            print(f"migrate: {len(rep.rewritten)} shards rewritten" + (f", committed v{rep.version}" if rep.version else " (store already current)"), file=out)
        if args.repair:
            from pipelines.repair import repair  # the build side, only for this command

            rep = repair(args.url)
            if not rep.damaged:
                print("repair: every shard verifies; nothing to do", file=out)
            else:
                print(f"repair: {len(rep.damaged)} damaged shards, {len(rep.rebuilt)} scenes rebuilt, "
                      f"{len(rep.lost)} lost {sorted(rep.lost)}; committed v{rep.version}", file=out)
        if args.quarantine:
            print_quarantine(args.url, out)
            if not list_versions(args.url):  # a store whose every scene failed still has its quarantine
                return 0
        store = ShardStore.open(args.url, args.version)
        if args.versions:
            rows = []
            for v in list_versions(store.location):
                m = load_manifest(store.location, v)
                rows.append([v, m.parent, m.created, len(m.shards), len(m.scenes()), m.n_image_groups, m.note])
            _table(f"manifests of {args.url}", ["version", "parent", "created", "shards", "scenes", "image groups", "note"], rows, out)
        counts = store.manifest.source_counts()
        rows = [[s, c["scenes"], c[COUNT_IMAGE_GROUPS], c["points"], c["images"], c["corr"]] for s, c in counts.items()]
        rows.append(["total"] + [sum(r[i] for r in rows) for i in range(1, 6)])
        _table(f"{args.url} @ v{store.version} ({len(store.shards)} shards)", ["source", "scenes", "image groups", "points", "images", "correspondences"], rows, out)
        if args.coverage:
            cov = scene_coverage(store, args.min_corr)
            _table(f"correspondence coverage (images with < {args.min_corr} correspondences listed)",
                   ["scene", "points", "images", "corr", "coverage", "sparse images"],
                   [[r["key"], r["points"], r["images"], r["corr"], f"{r['coverage']:.3f}", ", ".join(r["sparse_images"]) or "-"] for r in cov], out)
        if args.verify:
            problems = store.verify()
            print("verify: ok" if not problems else "verify: " + "\n  ".join(["FAILED"] + problems), file=out)
            if problems:
                return 1
        if args.gc:
            rep = gc(args.url, keep_last=args.keep_last, min_age_s=args.min_age, dry_run=args.dry_run)
            verb = "would remove" if args.dry_run else "removed"
            print(f"gc: {verb} {len(rep.removed_shards)} shards {rep.removed_shards}, manifests {rep.removed_manifests}; kept versions {rep.kept_versions}", file=out)
        if args.draw is not None:
            from PIL import Image

            img = draw_image_group(store, args.draw)
            Image.fromarray(img).save(args.out)
            print(f"wrote {args.out} ({img.shape[1]}x{img.shape[0]})", file=out)
    except (StoreError, ValueError, IndexError, KeyError) as e:
        print(f"concerto-store: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
