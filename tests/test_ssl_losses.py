"""Loss pieces of the pretraining objective against direct formulas."""
import math

import numpy as np
import pytest
import torch

from concerto.ssl.ema import ema_update
from concerto.ssl.head import ClusteringHead
from concerto.ssl.losses import cross_modal_loss, distillation_loss, group_mean, pool_patches
from concerto.ssl.matching import match_nearest
from concerto.ssl.sinkhorn import sinkhorn_knopp
from concerto.ssl.pretrainer import roll_views, upcast_channels
from concerto.schedules import cosine_warmup, one_cycle_factor


def test_sinkhorn_is_doubly_stochastic():
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(300, 16, generator=g) * 2 - 1
    q = sinkhorn_knopp(scores, temperature=0.05, num_iters=50)
    assert torch.allclose(q.sum(1), torch.ones(300), atol=1e-4)  # each sample: one unit of mass
    assert torch.allclose(q.sum(0), torch.full((16,), 300 / 16), rtol=1e-3)  # prototypes balanced
    assert (q >= 0).all()


def test_sinkhorn_three_iterations_matches_direct_formula():
    scores = torch.tensor([[0.9, 0.1, -0.3], [0.2, 0.8, 0.0], [0.5, 0.4, 0.6], [-0.2, 0.3, 0.7]])
    t = 0.1
    q = np.exp(scores.numpy().T / t).astype(np.float64)
    q /= q.sum()
    k, n = q.shape
    for _ in range(3):
        q /= q.sum(1, keepdims=True) * k
        q /= q.sum(0, keepdims=True) * n
    expected = (q * n).T
    got = sinkhorn_knopp(scores, t, 3)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5)
    np.testing.assert_allclose(got.sum(1).numpy(), np.ones(4), rtol=1e-5)


def test_distillation_loss_matches_formula():
    g = torch.Generator().manual_seed(1)
    student = torch.randn(6, 5, generator=g)
    teacher = torch.randn(4, 5, generator=g)
    match = torch.tensor([[0, 1], [1, 0], [2, 2], [4, 3], [5, 3]])
    group = torch.tensor([0, 0, 0, 1, 1, 1])
    loss = distillation_loss(student, teacher, match, group, 0.1, 0.04, 3)
    target = sinkhorn_knopp(teacher[match[:, 1]], 0.04, 3)
    per = []
    for i, (s, _) in enumerate(match.tolist()):
        logp = torch.log_softmax(student[s] / 0.1, -1)
        per.append(-(target[i] * logp).sum())
    expected = (torch.stack(per[:3]).mean() + torch.stack(per[3:]).mean()) / 2  # per view, then views
    assert torch.allclose(loss, expected, atol=1e-6)


def test_distillation_loss_without_matches_is_zero_and_keeps_graph():
    s = torch.randn(3, 4, requires_grad=True)
    loss = distillation_loss(s, torch.randn(2, 4), torch.zeros((0, 2), dtype=torch.long), torch.zeros(3, dtype=torch.long), 0.1, 0.04)
    loss.backward()
    assert float(loss.detach()) == 0.0 and s.grad is not None


def test_group_mean():
    v = torch.tensor([1.0, 3.0, 10.0, 2.0])
    g = torch.tensor([5, 5, 7, 9])
    assert torch.isclose(group_mean(v, g), torch.tensor((2.0 + 10.0 + 2.0) / 3))


def test_pool_patches_equals_python_loop():
    g = torch.Generator().manual_seed(2)
    feat = torch.randn(20, 3, generator=g)
    rows = torch.randint(0, 20, (50,), generator=g)
    patches = torch.randint(0, 12, (50,), generator=g)
    pooled, used = pool_patches(feat, rows, patches, 16)
    expected = {}
    for r, p in zip(rows.tolist(), patches.tolist()):
        expected.setdefault(p, []).append(feat[r])
    assert used.tolist() == sorted(expected)  # patches with no point are skipped
    for i, p in enumerate(used.tolist()):
        assert torch.allclose(pooled[i], torch.stack(expected[p]).mean(0), atol=1e-6)


def test_cross_modal_loss_matches_formula():
    pred = torch.tensor([[1.0, 2.0, 3.0], [0.0, 1.0, 0.0]])
    target = torch.tensor([[3.0, 2.0, 1.0], [0.0, 2.0, 1.0]])
    loss = cross_modal_loss(pred, target, scale=10.0)
    vals = []
    for a, b in zip(pred.numpy(), target.numpy()):
        a, b = a - a.mean(), b - b.mean()
        vals.append(1 - a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    assert math.isclose(float(loss), 10 * np.mean(vals), rel_tol=1e-5)
    # the first pair is anti-correlated after centring: cos = -1
    assert math.isclose(vals[0], 2.0, rel_tol=1e-6)


def test_ema_update():
    t = [torch.tensor([1.0, 2.0]), torch.tensor([[0.0]])]
    s = [torch.tensor([3.0, 6.0]), torch.tensor([[10.0]])]
    ema_update(t, s, 0.9)
    assert torch.allclose(t[0], torch.tensor([0.9 * 1 + 0.1 * 3, 0.9 * 2 + 0.1 * 6]))
    assert torch.allclose(t[1], torch.tensor([[1.0]]))
    with pytest.raises(ValueError):
        ema_update(t, s[:1], 0.9)


def test_clustering_head_outputs_cosines_to_unit_prototypes():
    torch.manual_seed(0)
    head = ClusteringHead(12, hidden_channels=16, embed_channels=8, num_prototypes=10)
    out = head(torch.randn(7, 12))
    assert out.shape == (7, 10) and out.abs().max() <= 1 + 1e-5
    w = head.prototype.weight
    assert torch.allclose(w.norm(dim=1), torch.ones(10), atol=1e-5)
    trainable = {n for n, p in head.named_parameters() if p.requires_grad}
    assert "prototype.parametrizations.weight.original0" not in trainable  # gain fixed at 1


def test_match_nearest_equals_brute_force():
    g = torch.Generator().manual_seed(3)
    q, r = torch.rand(40, 3, generator=g), torch.rand(30, 3, generator=g)
    qg, rg = torch.randint(0, 3, (40,), generator=g), torch.randint(0, 3, (30,), generator=g)
    got = match_nearest(q, qg, r, rg, radius=0.25, chunk=7)
    expected = []
    for i in range(40):
        cand = [j for j in range(30) if rg[j] == qg[i]]
        if not cand:
            continue
        d = [float((q[i] - r[j]).norm()) for j in cand]
        if min(d) < 0.25:
            expected.append([i, cand[int(np.argmin(d))]])
    assert got.tolist() == expected


def test_roll_views_and_channels():
    assert roll_views(torch.arange(6), 2).tolist() == [1, 0, 3, 2, 5, 4]
    assert upcast_channels((48, 96, 192, 384, 512), 2) == 1088
    assert upcast_channels((48, 96, 192, 384, 512), 3) == 1184


def test_schedules():
    assert cosine_warmup(0, 100, 0.1, 0.4, 0.4, 0.05) == pytest.approx(0.1)
    assert cosine_warmup(4, 100, 0.1, 0.4, 0.4, 0.05) == pytest.approx(0.4)
    assert cosine_warmup(50, 100, 0.1, 0.4, 0.4, 0.05) == pytest.approx(0.4)
    assert cosine_warmup(0, 100, 0.994, 0.994, 1.0, 0.0) == pytest.approx(0.994)
    assert cosine_warmup(50, 100, 0.994, 0.994, 1.0, 0.0) == pytest.approx(0.997)
    assert cosine_warmup(100, 100, 0.994, 0.994, 1.0, 0.0) == 1.0
    # matches torch's OneCycleLR (cos anneal, pct_start 0.05, div 10, final div 1000)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.004)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.004, total_steps=200, pct_start=0.05,
                                                anneal_strategy="cos", div_factor=10.0, final_div_factor=1000.0,
                                                cycle_momentum=False)
    for step in range(200):
        assert opt.param_groups[0]["lr"] == pytest.approx(0.004 * one_cycle_factor(step, 200), rel=1e-6, abs=1e-12)
        opt.step()
        sched.step()


def _sinkhorn_rank(rank, world, port, scores, out_dir):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        part = scores[rank * 50:(rank + 1) * 50] if rank == 0 else scores[50:]
        torch.save(sinkhorn_knopp(part, 0.05, 3), f"{out_dir}/q{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_sinkhorn_balances_over_all_ranks(tmp_path, free_port):
    """Two gloo ranks holding 50 and 70 samples give the assignment of all 120 at once."""
    import torch.multiprocessing as mp

    g = torch.Generator().manual_seed(4)
    scores = torch.rand(120, 8, generator=g)
    # spawn, not fork: forking a test process that already runs torch/Dask threads can crash the child
    mp.spawn(_sinkhorn_rank, args=(2, free_port, scores, str(tmp_path)), nprocs=2, join=True)
    q = torch.cat([torch.load(tmp_path / "q0.pt"), torch.load(tmp_path / "q1.pt")])
    assert torch.allclose(q, sinkhorn_knopp(scores, 0.05, 3), atol=1e-6)


def test_pretraining_loss_pairs_the_views_as_sonata():
    """mask: masked view v <- teacher view v; roll: <- the other global view; unmask:
    local views <- the principal view of their sample; cross-modal skipped without images."""
    from concerto.config import PretrainConfig
    from concerto.ssl.pretrainer import Encoded, pretraining_loss

    cfg = PretrainConfig.tiny()
    K = 6
    g = torch.Generator().manual_seed(5)
    # teacher: view 0 at x=0 and x=1, view 1 at x=0.05 and x=1.05 (same sample)
    t_origin = torch.tensor([[0.0, 0, 0], [1.0, 0, 0], [0.05, 0, 0], [1.05, 0, 0]])
    glob = Encoded(torch.zeros(4, 3), t_origin, torch.tensor([0, 0, 1, 1]), torch.arange(4))
    t_mask, t_unmask = torch.randn(4, K, generator=g), torch.randn(4, K, generator=g)
    masked = Encoded(torch.zeros(3, 3), torch.tensor([[0.98, 0, 0], [0.02, 0, 0], [1.06, 0, 0]]),
                     torch.tensor([0, 0, 1]), torch.arange(3))
    local = Encoded(torch.zeros(2, 3), torch.tensor([[0.9, 0, 0], [0.06, 0, 0]]), torch.tensor([0, 1]),
                    torch.arange(2))
    out = dict(mask_logits=torch.randn(3, K, generator=g), unmask_logits=torch.randn(2, K, generator=g),
               masked=masked, local=local, patch_pred=torch.zeros(0, 4, requires_grad=True),
               patch_used=torch.zeros(0, dtype=torch.long))
    batch = {"num_global": 2, "num_local": 2}
    cfg.distill.shared_teacher_head = False  # Sonata's pairing first
    cfg.cross_modal.no_image_self_distill = False
    terms = pretraining_loss(out, (glob, t_mask, t_unmask), None, batch, cfg, teacher_temp=0.05)
    d = cfg.distill
    exp_mask = distillation_loss(out["mask_logits"], t_mask, torch.tensor([[0, 1], [1, 0], [2, 3]]),
                                 masked.view, d.student_temp, 0.05, d.sinkhorn_iters)
    exp_roll = distillation_loss(out["mask_logits"], t_mask, torch.tensor([[0, 3], [1, 2], [2, 1]]),
                                 masked.view, d.student_temp, 0.05, d.sinkhorn_iters)
    exp_unmask = distillation_loss(out["unmask_logits"], t_unmask, torch.tensor([[0, 1], [1, 0]]),
                                   local.view, d.student_temp, 0.05, d.sinkhorn_iters)
    assert torch.allclose(terms["mask"], exp_mask) and torch.allclose(terms["roll_mask"], exp_roll)
    assert torch.allclose(terms["unmask"], exp_unmask) and "cross_modal" not in terms
    total = d.mask_weight * exp_mask + d.roll_mask_weight * exp_roll + d.unmask_weight * exp_unmask
    assert torch.allclose(terms["loss"], total)
    # released Concerto: the local views' targets from the teacher's mask head too, and a
    # batch without images puts the normalised self-distillation loss in the cross-modal place
    cfg.distill.shared_teacher_head = True
    cfg.cross_modal.no_image_self_distill = True
    terms = pretraining_loss(out, (glob, t_mask, t_unmask), None, batch, cfg, teacher_temp=0.05)
    exp_shared = distillation_loss(out["unmask_logits"], t_mask, torch.tensor([[0, 1], [1, 0]]),
                                   local.view, d.student_temp, 0.05, d.sinkhorn_iters)
    assert torch.allclose(terms["unmask"], exp_shared)
    ssl = d.mask_weight * exp_mask + d.roll_mask_weight * exp_roll + d.unmask_weight * exp_shared
    norm = ssl / (d.mask_weight + d.roll_mask_weight + d.unmask_weight)
    assert torch.allclose(terms["cross_modal"], norm)
    assert torch.allclose(terms["loss"], ssl + cfg.cross_modal.weight * norm)
