"""Golden fixtures from the official Pointcept code (run by hand, never by the suite).

    /work/official/venv/bin/python scripts/golden/make_concerto_fixture.py \
        --pointcept /work/official/Pointcept --extra /work/official/extra --out tests/fixtures

Writes, next to each other in ``--out``:

- ``concerto_golden.npz``: (a) point colour jitter (RandomColorJitter,
  ChromaticTranslation, NormalizeColor) on fixed colours with fixed seeds, with the
  drawn parameters; (b) the image side of DefaultImagePointDataset (crop to a
  multiple of the patch grid, bilinear resize, continuous patch coordinates) and
  ImgAugmentation (ImgChromaticJitter, ImgGaussianBlur, Imgnormalize) with the draws;
  (c) one training forward of Concerto-v1m1 with a tiny PT-v3m2 and tiny heads on a
  fixed batch: weights, masks, serialization orders after every pooling, the
  patch-pooled features and the loss terms;
- ``concerto_golden_backbone.pth``: a tiny PT-v3m2 in the official layout
  ``{"config", "state_dict"}``, and in the npz (d) a cloud, the official inference
  transform's output (sonata ``transform.default()``: centre shift, grid sampling,
  colour / 255) and the official model's features for it (eval mode, features
  upcast two levels). Its patch size exceeds the cloud, so attention covers the
  whole cloud and the (shuffled) serialization order cannot change the result.

The npz records the official commit and this command line. Needs the official
venv (torch, spconv, torch_scatter) and, for (b), torchvision + pillow in --extra.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import official_cpu  # noqa: E402


# ----------------------------------------------------------------------------- (a) colour


def colour_cases(out: dict) -> None:
    from pointcept.datasets.transform import ChromaticTranslation, NormalizeColor, RandomColorJitter

    rng = np.random.default_rng(0)
    colour = rng.integers(0, 256, (300, 3)).astype(np.uint8)
    colour[:20] = colour[:20, :1]  # some greys (hue undefined, saturation 0)
    jitter = RandomColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.02, p=0.8)
    translate = ChromaticTranslation(p=0.95, ratio=0.05)
    results, orders, factors, applied, shifts = [], [], [], [], []
    for seed in range(12):
        np.random.seed(seed)
        torch.manual_seed(seed)
        d = dict(color=colour.copy())
        d = NormalizeColor()(translate(jitter(d)))
        results.append(d["color"].astype(np.float32))
        # replay the same draws to record them
        np.random.seed(seed)
        torch.manual_seed(seed)
        fn_idx, b, c, s, h = jitter.get_params(jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue)
        orders.append(fn_idx.numpy())
        factors.append([b, c, s, h])
        applied.append([np.random.rand() < jitter.p for _ in range(4)])
        if np.random.rand() < translate.p:
            shifts.append(((np.random.rand(1, 3) - 0.5) * 255 * 2 * translate.ratio)[0])
        else:
            shifts.append(np.full(3, np.nan))
    out.update(color_in=colour, color_out=np.stack(results), color_order=np.stack(orders),
               color_factors=np.array(factors), color_applied=np.array(applied), color_shift=np.stack(shifts))


# ----------------------------------------------------------------------------- (b) images


def image_cases(out: dict, tmp: Path) -> None:
    from PIL import Image
    from pointcept.datasets.defaults import DefaultImagePointDataset
    from pointcept.datasets.transform import ImgAugmentation
    import torchvision.transforms as tvt

    rng = np.random.default_rng(1)
    n, H, W = 400, 242, 323  # 4 x 4 patches: crop 240 x 240 at (41, 1), not the largest 242 x 242
    root = tmp / "data"
    scene = root / "scene0"
    (scene / "pc").mkdir(parents=True, exist_ok=True)
    np.save(scene / "pc" / "coord.npy", rng.random((n, 3)).astype(np.float32))
    np.save(scene / "pc" / "color.npy", rng.integers(0, 256, (n, 3)).astype(np.uint8))
    images, corrs, pix_all = [], [], []
    for v in range(2):
        # smooth content so resampling differences would show, plus noise
        yy, xx = np.mgrid[0:H, 0:W]
        img = np.stack([(xx * (v + 1)) % 256, (yy * 3) % 256, ((xx + yy) // 2) % 256], -1)
        img = (img + rng.integers(0, 30, img.shape)).clip(0, 255).astype(np.uint8)
        p = scene / f"img{v}.png"
        Image.fromarray(img).save(p)
        images.append(str(p))
        pts = rng.choice(n, 250, replace=False)
        pix = np.stack([rng.integers(0, W, 250), rng.integers(0, H, 250)], 1)
        c = np.concatenate([pix, pts[:, None]], 1).astype(np.float32)  # (u, v, point)
        cp = scene / f"corr{v}.npy"
        np.save(cp, c)
        corrs.append(str(cp))
        pix_all.append(np.asarray(img))
        out[f"img_corr{v}"] = c
    (root / "splits").mkdir(parents=True, exist_ok=True)
    (root / "splits" / "train.json").write_text(json.dumps(
        {"scene0": {"pointclouds": str(scene / "pc"), "images": images, "correspondences": corrs}}))
    ds = DefaultImagePointDataset(split="train", data_root=str(root), transform=None, crop_h=56, crop_w=56,
                                  patch_size=14)
    data = ds.get_data(0)
    out["img_src"] = np.stack(pix_all)
    out["img_resized"] = data["images"].numpy()  # [V,3,56,56] in [0,1]
    out["img_patch_rc"] = data["correspondence"]  # [N,V,2] (row, col) continuous, -1 = none
    aug = ImgAugmentation(imgtransforms=[dict(type="ImgChromaticJitter", p=0.95, std=0.05),
                                         dict(type="ImgGaussianBlur", p=0.5),
                                         dict(type="Imgnormalize", mean=(0.485, 0.456, 0.406),
                                              std=(0.229, 0.224, 0.225))],
                          crop_h=56, crop_w=56, patch_h=4, patch_w=4, patch_size=14)
    outs, shifts, sigmas = [], [], []
    for seed in range(8):
        np.random.seed(seed)
        torch.manual_seed(seed)
        d = dict(images=data["images"].clone(), correspondence=data["correspondence"].copy())
        outs.append(aug(d)["images"].numpy())
        np.random.seed(seed)
        torch.manual_seed(seed)
        shifts.append(torch.rand(3).numpy() * 0.05 if np.random.rand() < 0.95 else np.full(3, np.nan))
        if np.random.rand() < 0.5:
            sigmas.append(tvt.GaussianBlur.get_params(0.1, 2.0))
        else:
            sigmas.append(np.nan)
    out.update(img_aug=np.stack(outs), img_shift=np.stack(shifts), img_sigma=np.array(sigmas, np.float64))


# ----------------------------------------------------------------------------- (c) training forward

TINY = dict(
    in_channels=9, order=("z", "z-trans", "hilbert", "hilbert-trans"), stride=(2, 2, 2, 2),
    enc_depths=(1, 1, 1, 1, 1), enc_channels=(8, 8, 16, 16, 16), enc_num_head=(1, 1, 2, 2, 2),
    enc_patch_size=(64, 32, 16, 4, 2), mlp_ratio=2, qkv_bias=True, qk_scale=None, attn_drop=0.0,
    proj_drop=0.0, drop_path=0.0, shuffle_orders=True, pre_norm=True, enable_rpe=False,
    enable_flash=False, upcast_attention=False, upcast_softmax=False, enc_mode=True,
    traceable=True, mask_token=True,
)


def _plane_cloud(rng, n_side: int, grid: float = 0.02):
    """A floor and two walls on the voxel lattice (metres), colours uint8, normals."""
    a = np.stack(np.meshgrid(np.arange(n_side), np.arange(n_side), indexing="ij"), -1).reshape(-1, 2)
    floor = np.c_[a, np.zeros(len(a))]
    wall = np.c_[a[:, 0], np.zeros(len(a)), a[:, 1] + 1]
    wall2 = np.c_[np.zeros(len(a)), a[:, 0] + 1, a[:, 1] + 1]
    coord = np.concatenate([floor, wall, wall2]) * grid
    normal = np.concatenate([np.tile([0, 0, 1.0], (len(a), 1)), np.tile([0, 1.0, 0], (len(a), 1)),
                             np.tile([1.0, 0, 0], (len(a), 1))])
    color = rng.integers(0, 256, (len(coord), 3)).astype(np.uint8)
    return coord.astype(np.float32), color, normal.astype(np.float32)


def _crop(coord, center, size):
    return np.argsort(((coord - center) ** 2).sum(1), kind="stable")[:size]


def _view(rng, coord, origin, color, normal, idx, grid=0.02):
    """One view: lattice points shifted by whole voxels (no rotation or scaling, so no
    two points of a view share a voxel: the released model would pass shared voxels
    to spconv, our sparse conv needs them unique)."""
    shift = (rng.integers(-20, 20, 3) * grid).astype(np.float32)
    col = color[idx] / 255.0
    return coord[idx] + shift, origin[idx], np.c_[coord[idx] + shift, col, normal[idx]].astype(np.float32)


def _anchor(views: dict, grid=0.02):
    """Add one point half a voxel below the minimum of all views of a batch to its
    first view, so (coord - batch minimum) / grid is never near an integer."""
    lo = np.concatenate(views["coord"]).min(0) - grid / 2
    views["coord"][0] = np.concatenate([views["coord"][0], lo[None]]).astype(np.float32)
    views["origin"][0] = np.concatenate([views["origin"][0], lo[None]]).astype(np.float32)
    views["feat"][0] = np.concatenate([views["feat"][0], np.r_[lo, 0.5, 0.5, 0.5, 0, 0, 1][None]]).astype(np.float32)
    views["count"][0] += 1
    if "corr" in views:
        views["corr"][0] = np.concatenate([views["corr"][0], -np.ones_like(views["corr"][0][:1])])


def make_batch(seed: int = 0, samples: int = 2, images: int = 2, patch_hw=(4, 4)):
    """Views as the released MultiViewGenerator lays them out (principal view first)."""
    rng = np.random.default_rng(seed)
    tie_rng = np.random.default_rng(seed + 100)
    g = dict(coord=[], origin=[], feat=[], count=[], corr=[])
    loc = dict(coord=[], origin=[], feat=[], count=[])
    for _ in range(samples):
        coord, color, normal = _plane_cloud(rng, 20)
        # original coordinates (matching only) off the lattice: no ties between equally
        # near neighbours, which implementations break differently
        origin = (coord + tie_rng.uniform(-0.003, 0.003, coord.shape)).astype(np.float32)
        n = len(coord)
        views = [_crop(coord, coord.mean(0), n), _crop(coord, coord[rng.integers(n)], int(n * 0.7))]
        for k, idx in enumerate(views):
            c, o, f = _view(rng, coord, origin, color, normal, idx)
            g["coord"].append(c)
            g["origin"].append(o)
            g["feat"].append(f)
            g["count"].append(len(c))
            corr = -np.ones((len(c), images, 2), np.float32)
            if k == 0:
                for v in range(images):
                    seen = rng.random(len(c)) < 0.6
                    corr[seen, v, 0] = rng.uniform(0, patch_hw[0], seen.sum())
                    corr[seen, v, 1] = rng.uniform(0, patch_hw[1], seen.sum())
            g["corr"].append(corr)
        for _ in range(4):
            idx = _crop(coord, coord[views[0][rng.integers(n)]], int(n * rng.uniform(0.25, 0.4)))
            c, o, f = _view(rng, coord, origin, color, normal, idx)
            loc["coord"].append(c)
            loc["origin"].append(o)
            loc["feat"].append(f)
            loc["count"].append(len(c))
    _anchor(g)
    _anchor(loc)
    out = dict(
        global_coord=np.concatenate(g["coord"]), global_origin_coord=np.concatenate(g["origin"]),
        global_feat=np.concatenate(g["feat"]), global_offset=np.cumsum(g["count"]),
        global_correspondence=np.concatenate(g["corr"]),
        local_coord=np.concatenate(loc["coord"]), local_origin_coord=np.concatenate(loc["origin"]),
        local_feat=np.concatenate(loc["feat"]), local_offset=np.cumsum(loc["count"]),
        img_num=np.full(samples, images),
    )
    for prefix in ("global", "local"):  # the property the fixture relies on
        c = torch.from_numpy(out[f"{prefix}_coord"])
        grid = torch.div(c - c.min(0).values, 0.02, rounding_mode="trunc").int()
        view = torch.repeat_interleave(torch.arange(len(out[f"{prefix}_offset"])),
                                       torch.diff(torch.from_numpy(out[f"{prefix}_offset"]), prepend=torch.zeros(1, dtype=torch.long)))
        key = torch.cat([view[:, None].int(), grid], 1)
        assert len(torch.unique(key, dim=0)) == len(key), f"{prefix} views share voxels"
    return out


def training_case(out: dict) -> None:
    from pointcept.models.concerto.concerto_v1m1_base import Concerto
    from pointcept.models.utils import structure
    import pointcept.models.point_transformer_v3.point_transformer_v3m2_sonata  # noqa: F401 registers PT-v3m2

    from pointcept.models.point_transformer_v3.point_transformer_v3m2_sonata import SerializedAttention
    from pointcept.models.utils import offset2bincount

    attention = SerializedAttention.forward
    smallest = {}

    def full_patches(self, point):
        # without flash-attn the official attention shrinks the patch to the smallest
        # cloud; with every cloud at least patch_size_max large it groups as flash-attn
        # (and as our attention) does
        n = int(offset2bincount(point.offset).min())
        smallest[self.patch_size_max] = min(smallest.get(self.patch_size_max, n), n)
        assert n >= self.patch_size_max, f"a view has {n} < {self.patch_size_max} points at some stage"
        return attention(self, point)

    SerializedAttention.forward = full_patches
    Concerto.load_enc2d = lambda self, name, path: torch.nn.Identity()
    ph = pw = 4
    c2d = 12
    torch.manual_seed(0)
    model = Concerto(
        image_weight_name="dinov2", image_weight_path="none", backbone=dict(type="PT-v3m2", **TINY),
        head_in_channels=16 * 3, backbone_out_channels=8 + 16 * 3, embedding_channels=8, patch_w=pw, patch_h=ph,
        head_hidden_channels=32, head_embed_channels=16, head_num_prototypes=24,
        enc2d_head_in_channels=c2d, enc2d_head_hidden_channels=16, enc2d_head_num_prototypes=8,
        teacher_custom=dict(attn_drop=0.0, proj_drop=0.0, drop_path=0.0), num_global_view=2, num_local_view=4,
        mask_jitter=None, mask_loss_weight=1 / 8, roll_mask_loss_weight=1 / 8, unmask_loss_weight=2 / 8,
        enc2d_loss_weight=4 / 8, momentum_base=0.994, match_max_r=0.32, up_cast_level=2, enc2d_upcast_level=3,
        enc2d_cos_shift=True, sonata_model_type="online")
    # mask_jitter None: jittered masked points can share a voxel, which our sparse conv
    # cannot reproduce (see _view); the jitter itself is covered by unit tests.
    # the teacher starts as a copy of the student in Concerto-v1m1 "online"; perturb it so
    # the golden test also checks that each side's weights are used where they belong
    with torch.no_grad():
        for p in model.teacher.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    model.train()
    model.mask_size, model.mask_ratio, model.teacher_temp = 0.1, 0.5, 0.05
    batch = make_batch()
    feat2d = torch.randn(int(batch["img_num"].sum()), ph * pw, c2d, generator=torch.Generator().manual_seed(3))
    model.ENC2D_forward = lambda x: feat2d
    data = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in batch.items()}
    data["grid_size"] = torch.tensor([0.02])
    data["images"] = torch.zeros(int(batch["img_num"].sum()), 3, ph * 14, pw * 14)
    data["img_num"] = data["img_num"].long()

    orders, masks, pooled = [], [], {}
    serialization = structure.Point.serialization

    def record(self, order="z", depth=None, shuffle_orders=False):
        state = torch.random.get_rng_state()
        serialization(self, order=order, depth=depth, shuffle_orders=shuffle_orders)
        torch.random.set_rng_state(state)
        perm = torch.randperm(len(order)) if shuffle_orders else torch.arange(len(order))
        orders.append([list(order).index(o) for o in [order[i] for i in perm.tolist()]])

    structure.Point.serialization = record
    generate_mask = model.generate_mask

    def mask_hook(coord, offset):
        m, cluster = generate_mask(coord, offset)
        masks.append(m.clone())
        return m, cluster

    model.generate_mask = mask_hook
    def pooled_hook(mod, inp, res):  # returns None: a hook's return value would replace the output
        pooled["feat"] = inp[0].detach().clone()

    model.patch_proj.register_forward_hook(pooled_hook)
    torch.manual_seed(11)
    result = model(data)
    structure.Point.serialization = serialization
    out["global_mask"] = masks[0].numpy()
    SerializedAttention.forward = attention
    print("smallest cloud per patch size:", smallest)
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    sel = lambda prefix: {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}  # noqa: E731
    for name, part in (("student_backbone", sel("student.backbone.")), ("teacher_backbone", sel("teacher.backbone.")),
                       ("student_mask_head", sel("student.mask_head.")), ("student_unmask_head", sel("student.unmask_head.")),
                       ("teacher_mask_head", sel("teacher.mask_head.")), ("teacher_unmask_head", sel("teacher.unmask_head.")),
                       ("patch_proj", sel("patch_proj."))):
        for k, v in part.items():
            out[f"w/{name}/{k}"] = v.numpy()
    for k, v in batch.items():
        out[f"batch/{k}"] = v
    out["feat2d"] = feat2d.numpy()
    out["orders"] = np.array(orders, np.int64)  # one row per serialization call, in call order
    out["pooled_all"] = pooled["feat"].numpy()  # [images * h * w, C] (zeros for empty patches)
    for k in ("mask_loss", "roll_mask_loss", "unmask_loss", "enc2d_loss", "loss"):
        out[f"loss/{k}"] = np.float64(result[k].item())
    out["train_seed"] = np.int64(11)
    out["train_settings"] = json.dumps(dict(mask_size=0.1, mask_ratio=0.5, teacher_temp=0.05, mask_jitter=0.0,
                                            patch_hw=[ph, pw], backbone=TINY, head=[32, 16, 24],
                                            match_radius=0.32, student_temp=0.1))
    # masks again with the released jitter (0.01, clipped above only): the masked view's
    # coordinates as the student backbone receives them (its output is not compared:
    # jittered points may share voxels)
    model.mask_jitter = 0.01
    seen = {}

    def student_input(mod, args):
        seen.setdefault("coord", args[0]["coord"].detach().clone())

    handle = model.student.backbone.register_forward_pre_hook(student_input)
    masks.clear()
    torch.manual_seed(12)
    model(data)
    handle.remove()
    out["jitter_seed"] = np.int64(12)
    out["jitter_mask"] = masks[0].numpy()
    out["jitter_coord"] = seen["coord"].numpy()


# ----------------------------------------------------------------------------- (d) inference


def inference_case(out: dict, pth: Path, sonata_root: Path) -> None:
    from pointcept.models.point_transformer_v3.point_transformer_v3m2_sonata import PointTransformerV3

    official_cpu.setup_sonata(sonata_root)
    from sonata.transform import default as sonata_default  # the released inference transform

    cfg = dict(TINY, enc_patch_size=(4096,) * 5, traceable=True)
    torch.manual_seed(5)
    model = PointTransformerV3(**cfg).eval()
    with torch.no_grad():  # non-trivial LayerNorm / bias values
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.add_(torch.randn_like(p) * 0.1)
    torch.save({"config": cfg, "state_dict": model.state_dict()}, pth)
    rng = np.random.default_rng(9)
    coord, color, normal = _plane_cloud(rng, 16)
    coord = coord + np.float32([1.3, -0.4, 0.2])
    np.random.seed(0)
    data = sonata_default()(dict(coord=coord.copy(), color=color.copy(), normal=normal.copy()))
    point = dict(coord=data["coord"], grid_coord=data["grid_coord"], feat=data["feat"],
                 offset=torch.tensor([len(data["coord"])]), grid_size=0.02)
    with torch.no_grad():
        p = model(point)
        for _ in range(2):
            parent = p.pop("pooling_parent")
            inverse = p.pop("pooling_inverse")
            parent.feat = torch.cat([parent.feat, p.feat[inverse]], dim=-1)
            p = parent
        while "pooling_parent" in p.keys():  # broadcast to the input points (as sonata's demos)
            parent = p.pop("pooling_parent")
            inverse = p.pop("pooling_inverse")
            parent.feat = p.feat[inverse]
            p = parent
    out.update(inf_coord=coord, inf_color=color, inf_normal=normal, inf_in_coord=data["coord"].numpy(),
               inf_in_grid_coord=data["grid_coord"].numpy(), inf_in_feat=data["feat"].numpy(),
               inf_inverse=data["inverse"].numpy(), inf_feat=p.feat.numpy(),
               inf_feat_per_point=p.feat[data["inverse"]].numpy())


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pointcept", default="/work/official/Pointcept")
    ap.add_argument("--sonata", default="/work/official/sonata")
    ap.add_argument("--extra", default="/work/official/extra", help="torchvision + pillow (--target install)")
    ap.add_argument("--out", default=str(HERE.parent.parent / "tests" / "fixtures"))
    args = ap.parse_args()
    sys.path.append(args.extra)
    official_cpu.setup(args.pointcept)
    torch.set_num_threads(1)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    out: dict = {}
    colour_cases(out)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        image_cases(out, Path(tmp))
    training_case(out)
    inference_case(out, out_dir / "concerto_golden_backbone.pth", Path(args.sonata))
    out["official_commit"] = official_cpu.official_commit(args.pointcept)
    out["command"] = " ".join(["python", "scripts/golden/make_concerto_fixture.py"] + sys.argv[1:])
    np.savez_compressed(out_dir / "concerto_golden.npz", **out)
    print(f"wrote {out_dir / 'concerto_golden.npz'} ({len(out)} arrays)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
