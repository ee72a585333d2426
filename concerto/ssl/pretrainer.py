"""The Concerto pretraining objective: student, EMA teacher, heads and the loss.

Views (see concerto.data.collate): G=2 global views per sample (the first is the
principal view), their masked copies, and L=4 local views.

- teacher: backbone on the global views, features upcast ``distill.upcast_level``
  levels, clustering heads -> prototype scores;
- student: backbone on the masked global views and on the local views;
- mask term: masked view v predicts the teacher's view v; roll-mask term: masked
  view v predicts the teacher's other global view of the same sample; unmask term:
  local views predict the teacher's principal view of their sample. Points are
  paired by nearest original coordinate (``distill.match_radius``); targets are
  Sinkhorn-balanced teacher scores;
- cross-modal term: the masked principal view's features upcast
  ``cross_modal.upcast_level`` levels, carried back to the input points, averaged
  per image patch and mapped linearly to the frozen image encoder's patch feature.

Every student parameter takes part in each forward (the cross-modal predictor runs
on zero rows when a batch has no images), so DDP needs no unused-parameter search.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from concerto.model import Point, upcast
from concerto.model.grid_sample import voxel_key
from concerto.ssl.cross_modal import PatchPredictor
from concerto.ssl.head import ClusteringHead
from concerto.ssl.losses import cross_modal_loss, distillation_loss, pool_patches, pool_patches_coarse
from concerto.ssl.matching import match_nearest


def upcast_channels(enc_channels, levels: int) -> int:
    """Channels of features upcast ``levels`` levels from the deepest stage."""
    return int(sum(enc_channels[-(levels + 1):]))


def _scatter_mean(src: torch.Tensor, index: torch.Tensor, size: int) -> torch.Tensor:
    out = src.new_zeros((size, src.shape[1])).index_add_(0, index, src)
    count = torch.bincount(index, minlength=size).clamp_min(1).to(src.dtype)
    return out / count.unsqueeze(1)


def view_grid_coord(coord: torch.Tensor, offset: torch.Tensor, grid_size: float) -> Optional[torch.Tensor]:
    """Voxel coordinates of already grid-sampled views as the released model computes
    them (trunc((coord - batch minimum) / grid_size), one minimum over the whole
    batch), or None when two points of a view share a voxel (augmentation can move
    them together): the released model then feeds both to spconv; our sparse conv
    needs unique voxels, so the backbone grid-samples such a batch itself."""
    grid = torch.div(coord - coord.min(0).values, grid_size, rounding_mode="trunc").int()
    batch = torch.repeat_interleave(torch.arange(len(offset), device=coord.device),
                                    torch.diff(offset, prepend=offset.new_zeros(1)))
    if len(torch.unique(voxel_key(grid, batch))) != len(grid):
        return None
    return grid


@dataclass
class Encoded:
    """Features at one upcast level: feat [P,C], origin coordinate [P,3], view id [P],
    and for every input row the row of P that represents it (index [N])."""

    feat: torch.Tensor
    origin: torch.Tensor
    view: torch.Tensor
    index: torch.Tensor


def encode(backbone: nn.Module, coord, feat, offset, origin, grid_size: float, levels,
           mask: Optional[torch.Tensor] = None) -> list[Encoded]:
    """Run ``backbone`` once and read features at each upcast level in ``levels``."""
    # origin_coord rides along: pooling averages it stage by stage (a mean of the
    # children's means, as the released model), which is what points are matched on
    fields = dict(coord=coord, feat=feat, offset=offset, grid_size=grid_size, origin_coord=origin.float())
    grid_coord = view_grid_coord(coord, offset, grid_size)
    if grid_coord is not None:
        fields["grid_coord"] = grid_coord
    if mask is not None:
        fields["mask"] = mask
    out = backbone(Point(**fields))
    results = []
    for lv in levels:
        p = upcast(out, lv)
        index = p.index_to_input()
        n = p["feat"].shape[0]
        results.append(Encoded(p["feat"], p["origin_coord"] if "origin_coord" in p else
                               _scatter_mean(origin.float(), index, n), p["batch"], index))
    return results


class StudentNet(nn.Module):
    """Backbone + clustering heads + patch predictor (the part DDP wraps)."""

    def __init__(self, backbone: nn.Module, head_in: int, cross_in: int, image_channels: int,
                 head_hidden: int, head_embed: int, num_prototypes: int,
                 distill_level: int, cross_level: int, grid_size: float, patch_pool: str = "pooled"):
        super().__init__()
        if patch_pool not in ("pooled", "input"):
            raise ValueError(f"config key 'cross_modal.patch_pool': expected 'pooled' or 'input', got {patch_pool!r}")
        self.patch_pool = patch_pool
        self.backbone = backbone
        self.mask_head = ClusteringHead(head_in, head_hidden, head_embed, num_prototypes)
        self.unmask_head = ClusteringHead(head_in, head_hidden, head_embed, num_prototypes)
        self.patch_predictor = PatchPredictor(cross_in, image_channels)
        self.distill_level, self.cross_level, self.grid_size = distill_level, cross_level, grid_size

    def forward(self, batch: dict, image_grid_hw: tuple[int, int]) -> dict:
        masked, cross = encode(self.backbone, batch["global_masked_coord"], batch["global_feat"],
                               batch["global_offset"], batch["global_origin_coord"], self.grid_size,
                               (self.distill_level, self.cross_level), mask=batch["global_mask"])
        (local,) = encode(self.backbone, batch["local_coord"], batch["local_feat"], batch["local_offset"],
                          batch["local_origin_coord"], self.grid_size, (self.distill_level,))
        h, w = image_grid_hw
        num_images = int(batch["images"].shape[0])
        if self.patch_pool == "pooled":
            pooled, used = pool_patches_coarse(cross.feat, cross.index[batch["corr_row"]], batch["corr_image"],
                                               batch["corr_rc"], num_images, (h, w))
        else:
            point_feat = cross.feat[cross.index]  # per input row of the global views
            patch_id = batch["corr_image"] * (h * w) + batch["corr_patch"]
            pooled, used = pool_patches(point_feat, batch["corr_row"], patch_id, max(num_images * h * w, 1))
        return dict(mask_logits=self.mask_head(masked.feat), masked=masked,
                    unmask_logits=self.unmask_head(local.feat), local=local,
                    patch_pred=self.patch_predictor(pooled), patch_used=used)


class TeacherNet(nn.Module):
    def __init__(self, student: StudentNet):
        super().__init__()
        self.backbone = copy.deepcopy(student.backbone)
        self.mask_head = copy.deepcopy(student.mask_head)
        self.unmask_head = copy.deepcopy(student.unmask_head)
        self.requires_grad_(False)

    def ema_pairs(self, student: StudentNet):
        """(teacher tensors, student tensors) updated by EMA: backbone and heads."""
        t, s = [], []
        for name in ("backbone", "mask_head", "unmask_head"):
            t += list(getattr(self, name).parameters())
            s += list(getattr(student, name).parameters())
        return t, s

    @torch.no_grad()
    def forward(self, batch: dict, level: int, grid_size: float):
        (glob,) = encode(self.backbone, batch["global_coord"], batch["global_feat"], batch["global_offset"],
                         batch["global_origin_coord"], grid_size, (level,))
        return glob, self.mask_head(glob.feat), self.unmask_head(glob.feat)


def mask_batch(batch: dict, size: float, ratio: float, jitter: float, clip: str = "upper") -> dict:
    """The batch with ``global_mask`` and ``global_masked_coord`` redrawn over the whole
    batch (released: cube masks from torch.randperm over all cubes of the batch, then
    jitter on the masked points); torch's global RNG, so one seed gives the reference's."""
    from concerto.ssl.masking import batch_cube_mask, batch_jitter

    mask = batch_cube_mask(batch["global_coord"], batch["global_offset"], size, ratio)
    out = dict(batch)
    out["global_mask"] = mask
    out["global_masked_coord"] = batch_jitter(batch["global_coord"], mask, jitter, clip)
    return out


def roll_views(view: torch.Tensor, num_global: int) -> torch.Tensor:
    """View id of the other global view of the same sample (num_global == 2)."""
    return (view // num_global) * num_global + (num_global - 1 - view % num_global)


def pretraining_loss(out: dict, teacher_out, image_feat: Optional[torch.Tensor], batch: dict,
                     cfg, teacher_temp: float) -> dict:
    """All loss terms and their weighted sum ("loss"). cfg: PretrainConfig. Every key
    of the returned dict is averaged over ranks and logged as ``loss/<key>``
    (concerto.train.metrics): a new term needs nothing beyond this function and its weight."""
    d, cm = cfg.distill, cfg.cross_modal
    g = batch["num_global"]
    nl = batch["num_local"]
    glob, t_mask, t_unmask = teacher_out
    masked, local = out["masked"], out["local"]
    radius, ts, iters = d.match_radius, d.student_temp, d.sinkhorn_iters
    terms = {}
    match = match_nearest(masked.origin, masked.view, glob.origin, glob.view, radius)
    terms["mask"] = distillation_loss(out["mask_logits"], t_mask, match, masked.view, ts, teacher_temp, iters)
    match = match_nearest(masked.origin, masked.view, glob.origin, roll_views(glob.view, g), radius)
    terms["roll_mask"] = distillation_loss(out["mask_logits"], t_mask, match, masked.view, ts, teacher_temp, iters)
    principal = glob.view % g == 0
    match = match_nearest(local.origin, local.view // nl, glob.origin, torch.where(principal, glob.view // g, -1), radius)
    # Concerto v1m1 takes every target from the teacher's mask head ("one shared head")
    t_local = t_mask if d.shared_teacher_head else t_unmask
    terms["unmask"] = distillation_loss(out["unmask_logits"], t_local, match, local.view, ts, teacher_temp, iters)
    ssl_weight = d.mask_weight + d.roll_mask_weight + d.unmask_weight
    loss = d.mask_weight * terms["mask"] + d.roll_mask_weight * terms["roll_mask"] + d.unmask_weight * terms["unmask"]
    pred = out["patch_pred"]
    if image_feat is not None and len(out["patch_used"]) > 0:
        target = image_feat.reshape(-1, image_feat.shape[-1])[out["patch_used"]]
        terms["cross_modal"] = cross_modal_loss(pred, target, scale=cm.loss_scale)
        loss = loss + cm.weight * terms["cross_modal"]
    else:
        if cm.weight > 0 and cm.no_image_self_distill and ssl_weight > 0:
            # released: an image-less batch puts its normalised self-distillation
            # loss in the cross-modal term's place
            terms["cross_modal"] = loss / ssl_weight
            loss = loss + cm.weight * terms["cross_modal"]
        loss = loss + pred.sum() * 0.0  # keeps the predictor in the graph (DDP)
    terms["loss"] = loss
    return terms
