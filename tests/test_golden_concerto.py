"""The project against the released code: golden fixtures made by
``scripts/golden/make_concerto_fixture.py`` from the official Pointcept code at the
commit recorded in the fixture (loss terms and features < 1e-4, orders equal)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def golden():
    z = np.load(FIXTURES / "concerto_golden.npz")
    assert len(str(z["official_commit"])) == 40 and "make_concerto_fixture.py" in str(z["command"])
    return z


def test_colour_jitter_and_normalisation_match_released(golden):
    """RandomColorJitter (random order, own p, hue, clip per step) -> ChromaticTranslation
    -> NormalizeColor (/ 255), replayed from the official draws."""
    from concerto.ssl.color_jitter import JitterDraw, apply_jitter
    from concerto.ssl.views import scale_color

    z = golden
    hue_used = False
    for i in range(len(z["color_out"])):
        shift = z["color_shift"][i]
        draw = JitterDraw(z["color_order"][i], z["color_factors"][i], z["color_applied"][i],
                          None if np.isnan(shift).any() else shift)
        ours = scale_color(apply_jitter(z["color_in"], draw))
        np.testing.assert_allclose(ours, z["color_out"][i], atol=1e-6)
        hue_used |= bool(draw.applied[list(draw.order).index(3)])
    assert hue_used


def test_image_crop_resize_patch_coords_and_augmentation_match_released(golden):
    from concerto.ssl.image_augment import ImageDraw, apply_image_augment
    from concerto.patches import PatchGrid, pixel_to_patch_coords, prepare_image

    z = golden
    grid = PatchGrid(56, 14)
    src_hw = z["img_src"].shape[1:3]
    ours = np.stack([prepare_image(im, grid) for im in z["img_src"]]).transpose(0, 3, 1, 2) / 255.0
    np.testing.assert_allclose(ours, z["img_resized"], atol=1e-6)
    n, views = z["img_patch_rc"].shape[:2]
    rc = -np.ones((n, views, 2), np.float32)
    for v in range(views):
        corr = z[f"img_corr{v}"]  # (u, v, point)
        coords = pixel_to_patch_coords(corr[:, :2], src_hw, grid)
        point = corr[:, 2].astype(np.int64)
        for j in np.lexsort((coords[:, 1], coords[:, 0], point)):  # the last pixel of a point wins
            if coords[j, 0] >= 0:
                rc[point[j], v] = coords[j]
    np.testing.assert_array_equal(rc, z["img_patch_rc"])
    mean = np.array([0.485, 0.456, 0.406], np.float32)[None, :, None, None]
    std = np.array([0.229, 0.224, 0.225], np.float32)[None, :, None, None]
    assert np.isfinite(z["img_sigma"]).any() and np.isnan(z["img_sigma"]).any()
    for i in range(len(z["img_aug"])):
        shift, sigma = z["img_shift"][i], z["img_sigma"][i]
        draw = ImageDraw(None if np.isnan(shift).any() else shift, None if np.isnan(sigma) else float(sigma))
        ours = (apply_image_augment(z["img_resized"], draw) - mean) / std
        np.testing.assert_allclose(ours, z["img_aug"][i], atol=1e-4)


def _weights(z, name):
    prefix = f"w/{name}/"
    return {k[len(prefix):]: torch.from_numpy(z[k]) for k in z.files if k.startswith(prefix)}


def _project_batch(z):
    b = {k[len("batch/"):]: torch.from_numpy(z[k]) for k in z.files if k.startswith("batch/")}
    batch = {f"{p}_{k}": b[f"{p}_{k}"] for p in ("global", "local") for k in ("coord", "origin_coord", "feat", "offset")}
    batch.update(num_global=2, num_local=4)
    # principal-view correspondences [N, V, 2] (-1: none) -> (row, image, (row, col)) triples
    offset = b["global_offset"].tolist()
    starts = [0] + offset[:-1]
    img_num = b["img_num"].tolist()
    rows, images, coords = [], [], []
    for s, image_base in zip(range(len(img_num)), np.cumsum([0] + img_num[:-1])):
        lo, hi = starts[2 * s], offset[2 * s]
        corr = b["global_correspondence"][lo:hi]
        valid = (corr != -1).all(-1)
        r, v = torch.nonzero(valid, as_tuple=True)
        rows.append(r + lo)
        images.append(v + int(image_base))
        coords.append(corr[r, v])
    batch["corr_row"], batch["corr_image"] = torch.cat(rows), torch.cat(images)
    batch["corr_rc"] = torch.cat(coords)
    batch["images"] = torch.zeros(sum(img_num), 3, 56, 56)
    return batch


def test_training_forward_matches_released_concerto(golden, monkeypatch):
    """Same weights, same batch, same torch seed: the same masks, the same
    serialization orders after every pooling, the same patch-pooled features and
    the same loss terms as Concerto-v1m1."""
    from concerto.config import PretrainConfig
    from concerto.model import load_checkpoint
    from concerto.model.point import Point
    from concerto.ssl.pretrainer import StudentNet, TeacherNet, mask_batch, pretraining_loss

    z = golden
    s = json.loads(str(z["train_settings"]))
    hidden, embed, protos = s["head"]
    student_backbone = load_checkpoint({"config": s["backbone"], "state_dict": _weights(z, "student_backbone")})
    enc = student_backbone.config.enc_channels
    student = StudentNet(student_backbone, sum(enc[-3:]), sum(enc[-4:]), z["feat2d"].shape[-1], hidden, embed, protos,
                         2, 3, 0.02, patch_pool="pooled")
    student.mask_head.load_state_dict(_weights(z, "student_mask_head"))
    student.unmask_head.load_state_dict(_weights(z, "student_unmask_head"))
    student.patch_predictor.proj.load_state_dict(_weights(z, "patch_proj"))
    teacher = TeacherNet(student)
    teacher.backbone.load_state_dict(_weights(z, "teacher_backbone"))
    teacher.mask_head.load_state_dict(_weights(z, "teacher_mask_head"))
    teacher.unmask_head.load_state_dict(_weights(z, "teacher_unmask_head"))
    student.train()
    cfg = PretrainConfig.tiny()
    cfg.distill.match_radius, cfg.distill.student_temp = s["match_radius"], s["student_temp"]
    assert cfg.distill.shared_teacher_head and cfg.cross_modal.patch_pool == "pooled"

    orders = []
    serialization = Point.serialization

    def record(self, order=("z",), depth=None, shuffle_orders=False, generator=None):
        out = serialization(self, order, depth, shuffle_orders, generator)
        orders.append([list(self["order"]).index(n) for n in self["serialized_names"]])
        return out

    monkeypatch.setattr(Point, "serialization", record)
    pooled = {}
    student.patch_predictor.proj.register_forward_hook(lambda m, inp, res: pooled.update(feat=inp[0].detach()))

    batch = _project_batch(z)
    torch.manual_seed(int(z["train_seed"]))
    batch = mask_batch(batch, s["mask_size"], s["mask_ratio"], s["mask_jitter"])
    np.testing.assert_array_equal(batch["global_mask"].numpy(), z["global_mask"])
    teacher_out = teacher(batch, 2, 0.02)
    out = student(batch, tuple(s["patch_hw"]))
    image_feat = torch.from_numpy(z["feat2d"]).reshape(-1, *s["patch_hw"], z["feat2d"].shape[-1])
    terms = pretraining_loss(out, teacher_out, image_feat, batch, cfg, teacher_temp=s["teacher_temp"])

    assert np.array_equal(np.array(orders), z["orders"])
    used = out["patch_used"].numpy()
    np.testing.assert_allclose(pooled["feat"].numpy(), z["pooled_all"][used], atol=1e-4)
    empty = np.setdiff1d(np.arange(len(z["pooled_all"])), used)
    assert len(empty) == 0 or np.abs(z["pooled_all"][empty]).max() == 0
    names = dict(mask="mask_loss", roll_mask="roll_mask_loss", unmask="unmask_loss", cross_modal="enc2d_loss",
                 loss="loss")
    for ours, theirs in names.items():
        assert abs(float(terms[ours]) - float(z[f"loss/{theirs}"])) < 1e-4, (ours, float(terms[ours]),
                                                                          float(z[f"loss/{theirs}"]))


def test_batch_masks_and_jitter_match_released(golden):
    """Cube masks over the whole batch and the masked points' jitter (0.01, clipped
    above only), drawn from torch's RNG in the released order."""
    from concerto.ssl.pretrainer import mask_batch

    z = golden
    s = json.loads(str(z["train_settings"]))
    batch = _project_batch(z)
    torch.manual_seed(int(z["jitter_seed"]))
    batch = mask_batch(batch, s["mask_size"], s["mask_ratio"], 0.01, "upper")
    np.testing.assert_array_equal(batch["global_mask"].numpy(), z["jitter_mask"])
    np.testing.assert_allclose(batch["global_masked_coord"].numpy(), z["jitter_coord"], atol=1e-6)
    delta = z["jitter_coord"] - z["batch/global_coord"]
    assert delta.max() <= 0.02 + 1e-6 and delta.min() < -0.02  # the released clip is one-sided


def test_load_official_checkpoint_gives_official_features(golden):
    """concerto.load of an official-layout file, fed the official inference transform's
    output (sonata transform.default(): centre shift, grid sampling, colour / 255),
    gives the official model's features."""
    from scipy.spatial import cKDTree

    import concerto
    from concerto.inference import PreparedCloud, center_shift, input_features

    z = golden
    enc = concerto.load(FIXTURES / "concerto_golden_backbone.pth", levels=2)
    assert enc.color_range == "unit"
    cloud = PreparedCloud(z["inf_in_coord"], z["inf_in_feat"], z["inf_in_grid_coord"].astype(np.int32),
                          z["inf_inverse"])
    feat = enc._forward([cloud])[torch.from_numpy(cloud.inverse)].numpy()
    np.testing.assert_allclose(feat, z["inf_feat_per_point"], atol=1e-4)
    # our centre shift and input features of the sampled points are the official ones
    shifted = center_shift(z["inf_coord"])
    dist, rows = cKDTree(shifted).query(z["inf_in_coord"])
    assert dist.max() < 1e-6
    ours = input_features(shifted[rows], z["inf_color"][rows], z["inf_normal"][rows])
    np.testing.assert_allclose(ours, z["inf_in_feat"], atol=1e-6)
