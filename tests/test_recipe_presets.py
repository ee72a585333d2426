"""Presets against the released configs, value by value.

The expected values are read off Pointcept (commit d74c646d)
``configs/concerto/pretrain-concerto-v1m1-0-base.py``, ``-1-large-base.py`` and
``configs/sonata/pretrain-sonata-v1m1-0-base.py``, and the released
``OneCycleLR`` defaults (``pointcept/utils/scheduler.py``)."""
from __future__ import annotations

import pytest
import torch

from concerto.batching import resolve_accumulation, steps_for_epochs
from concerto.config import ConfigError, PretrainConfig, load_config

RELEASED_BASE = {
    "batch_size": 96, "epoch": 100, "clip_grad": 3.0, "amp_dtype": "bfloat16",
    "image_weight_path": "facebook/dinov2-with-registers-giant", "enc2d_head_in_channels": 1536,
    "crop": 518, "patch_size": 14, "enc2d_upcast_level": 3, "up_cast_level": 2,
    "enc_depths": (3, 3, 3, 12, 3), "enc_channels": (48, 96, 192, 384, 512), "enc_num_head": (3, 6, 12, 24, 32),
    "drop_path": 0.3, "head_hidden_channels": 4096, "head_embed_channels": 256, "head_num_prototypes": 4096,
    "mask_size": (0.1, 0.4, 0.05), "mask_ratio": (0.3, 0.7, 0.05), "mask_jitter": 0.01,
    "teacher_temp": (0.04, 0.07, 0.05), "student_temp": 0.1,
    "weights": (1 / 8, 1 / 8, 2 / 8, 4 / 8), "momentum": (0.994, 1.0), "match_max_r": 0.32,
    "base_lr": 0.004, "lr_decay": 0.9, "wd": (0.04, 0.2), "pct_start": 0.05, "div_factor": 10.0,
    "final_div_factor": 1000.0, "base_momentum": 0.85, "max_momentum": 0.95,
    "global_views": (2, (0.4, 1.0)), "local_views": (4, (0.1, 0.4)), "max_size": 65536,
    "grid_size": 0.02, "elastic": ((0.2, 0.4), (0.8, 1.6)),
    "img_shift": (0.95, 0.05), "img_blur_p": 0.5,
}


def test_base_preset_is_the_released_concerto_base():
    from concerto.model import PTv3Config

    cfg, r = PretrainConfig.base(), RELEASED_BASE
    o, d, cm, m, v = cfg.optim, cfg.distill, cfg.cross_modal, cfg.mask, cfg.views
    assert o.global_batch == r["batch_size"] and cfg.run.epochs == r["epoch"] and o.clip_grad == r["clip_grad"]
    assert o.amp and o.amp_dtype == r["amp_dtype"]
    assert cm.model_id == r["image_weight_path"] and cm.upcast_level == r["enc2d_upcast_level"]
    assert d.upcast_level == r["up_cast_level"]
    ptv3 = PTv3Config.base()
    assert (ptv3.enc_depths, ptv3.enc_channels, ptv3.enc_num_head) == (r["enc_depths"], r["enc_channels"],
                                                                       r["enc_num_head"])
    assert ptv3.drop_path == r["drop_path"] and cfg.model.grid_size == r["grid_size"]
    assert (d.head_hidden, d.head_embed, d.num_prototypes) == (r["head_hidden_channels"], r["head_embed_channels"],
                                                              r["head_num_prototypes"])
    assert (m.size_start, m.size_base, m.warmup_ratio) == r["mask_size"]
    assert (m.ratio_start, m.ratio_base) == r["mask_ratio"][:2] and m.jitter == r["mask_jitter"]
    assert (d.teacher_temp_start, d.teacher_temp_base, d.teacher_temp_warmup_ratio) == r["teacher_temp"]
    assert d.student_temp == r["student_temp"]
    assert (d.mask_weight, d.roll_mask_weight, d.unmask_weight, cm.weight) == pytest.approx(r["weights"])
    assert (d.momentum_base, d.momentum_final) == r["momentum"] and d.match_radius == r["match_max_r"]
    assert o.lr == r["base_lr"] and o.layer_decay == r["lr_decay"]
    assert (o.weight_decay_start, o.weight_decay_end) == r["wd"]
    assert (o.warmup_ratio, o.div_factor, o.final_div_factor) == (r["pct_start"], r["div_factor"], r["final_div_factor"])
    assert o.beta1_cycle == (r["max_momentum"], r["base_momentum"]) and o.betas[0] == r["max_momentum"]
    assert (v.global_num, tuple(v.global_scale)) == r["global_views"]
    assert (v.local_num, tuple(v.local_scale)) == r["local_views"]
    assert v.max_points == v.principal_max_points == r["max_size"] and v.grid_size == r["grid_size"]
    assert tuple(map(tuple, v.elastic)) == r["elastic"]
    assert (cm.image_shift_p, cm.image_shift_std) == r["img_shift"] and cm.image_blur_p == r["img_blur_p"]
    assert (cm.image_blur_kernel, tuple(cm.image_blur_sigma)) == (9, (0.1, 2.0))
    assert v.color_range == "unit" and m.jitter_clip == "upper" and m.per_batch
    assert d.shared_teacher_head and cm.patch_pool == "pooled" and cm.no_image_self_distill
    assert cm.image_crop == "grid_multiple"


def test_large_paper_and_sonata_presets():
    from concerto.model import PTv3Config

    large = PretrainConfig.large()
    assert large.model.preset == "large" and large.optim.clip_grad == 2.0  # -1-large-base.py
    assert PTv3Config.large().enc_channels == (64, 128, 256, 512, 768)
    assert PTv3Config.large().enc_num_head == (4, 8, 16, 32, 48)
    assert large.cross_modal.model_id == "facebook/dinov2-with-registers-giant"
    paper = PretrainConfig.paper()  # the paper's appendix: DINOv2-L
    assert paper.cross_modal.model_id == "facebook/dinov2-large"
    sonata = PretrainConfig.sonata()  # pretrain-sonata-v1m1-0-base.py
    assert sonata.cross_modal.weight == 0 and sonata.run.epochs == 200
    d = sonata.distill
    assert (d.mask_weight, d.roll_mask_weight, d.unmask_weight) == pytest.approx((2 / 8, 2 / 8, 4 / 8))
    assert not d.shared_teacher_head  # Sonata v1m1: the local targets from the unmask head
    assert load_config("paper").cross_modal.model_id == "facebook/dinov2-large"


def test_global_batch_by_accumulation_and_lr_scaling():
    cfg = PretrainConfig.base()
    cfg.data.batch_size = 4
    assert resolve_accumulation(cfg, world=2) == (12, 1.0)  # 4 x 2 ranks x 12 = 96
    assert steps_for_epochs(960, cfg, world=2) == 10 * 100
    cfg.data.batch_size = 5
    with pytest.raises(ConfigError, match="optim.global_batch"):
        resolve_accumulation(cfg, world=2)
    cfg.optim.global_batch = None  # explicit accumulation: lr follows the batch linearly
    cfg.optim.accumulate = 3
    assert resolve_accumulation(cfg, world=2) == (3, pytest.approx(30 / 96))
    cfg.optim.scale_lr = False
    assert resolve_accumulation(cfg, world=2) == (3, 1.0)


def test_beta1_cycles_as_torch_one_cycle():
    """The released scheduler is torch's OneCycleLR (cycle_momentum, 0.85 / 0.95):
    AdamW's beta1 follows it step by step."""
    from concerto.schedules import one_cycle_beta1

    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=0.004)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.004, total_steps=300, pct_start=0.05,
                                                anneal_strategy="cos", div_factor=10.0, final_div_factor=1000.0,
                                                base_momentum=0.85, max_momentum=0.95)
    for step in range(300):
        assert opt.param_groups[0]["betas"][0] == pytest.approx(one_cycle_beta1(step, 300), abs=1e-12)
        opt.step()
        sched.step()
    assert one_cycle_beta1(14, 300) == pytest.approx(0.85)  # the bottom at the end of warm-up
