"""PTv3 encoder: key names, checkpoints, grid sampling, upcast, equivariance, backends, a large batch."""

import copy

import pytest
import torch

from concerto.model import (
    Point,
    PointTransformerV3,
    PTv3Config,
    grid_sample,
    load_checkpoint,
    pretrained_location,
    read_checkpoint,
    upcast,
)
from concerto.model.checkpoint import CheckpointError

ORDERS = ("z", "z-trans", "hilbert", "hilbert-trans")


def scenes(sizes, seed=0, extent=2.0, on_planes=0.7):
    """Packed batch of random room-ish clouds: points on a few planes plus clutter, 9 input channels."""
    gen = torch.Generator().manual_seed(seed)
    coords = []
    for n in sizes:
        c = torch.rand(n, 3, generator=gen) * extent
        axis = torch.randint(0, 3, (n,), generator=gen)
        on_plane = torch.rand(n, generator=gen) < on_planes
        c[on_plane, axis[on_plane]] = 0.0  # floor / walls
        coords.append(c)
    coord = torch.cat(coords)
    color = torch.rand(len(coord), 3, generator=gen)
    normal = torch.nn.functional.normalize(torch.randn(len(coord), 3, generator=gen), dim=1)
    feat = torch.cat([coord, color, normal], 1)
    return Point(coord=coord, feat=feat, offset=torch.tensor(sizes).cumsum(0))


def tiny(**kw):
    torch.manual_seed(0)
    kw.setdefault("sparse_conv_backend", "torch")
    return PointTransformerV3(PTv3Config.tiny(**kw))


def test_official_key_names_and_shapes():
    with torch.device("meta"):  # shapes only, no 108M-parameter allocation
        model = PointTransformerV3(PTv3Config.base())
    sd = model.state_dict()
    expected = {
        "embedding.stem.linear.weight": (48, 9),
        "embedding.stem.norm.weight": (48,),
        "embedding.mask_token": (1, 48),
        "enc.enc0.block0.cpe.0.weight": (48, 3, 3, 3, 48),
        "enc.enc0.block0.cpe.0.bias": (48,),
        "enc.enc0.block0.cpe.1.weight": (48, 48),
        "enc.enc0.block0.cpe.2.weight": (48,),
        "enc.enc0.block0.norm1.0.weight": (48,),
        "enc.enc0.block0.attn.qkv.weight": (144, 48),
        "enc.enc0.block0.attn.proj.weight": (48, 48),
        "enc.enc0.block0.norm2.0.weight": (48,),
        "enc.enc0.block0.mlp.0.fc1.weight": (192, 48),
        "enc.enc0.block0.mlp.0.fc2.weight": (48, 192),
        "enc.enc1.down.proj.weight": (96, 48),
        "enc.enc1.down.norm.0.weight": (96,),
        "enc.enc3.block11.attn.qkv.weight": (1152, 384),
        "enc.enc4.block2.mlp.0.fc2.bias": (512,),
    }
    for key, shape in expected.items():
        assert tuple(sd[key].shape) == shape, key
    assert not any(k.startswith("dec.") for k in sd)
    per_block = 18  # cpe 6 + norm1 2 + qkv 2 + proj 2 + norm2 2 + mlp 4
    n_blocks = sum(PTv3Config.base().enc_depths)
    assert len([k for k in sd if ".block" in k]) == n_blocks * per_block
    assert len(sd) == n_blocks * per_block + 4 * 4 + 5  # + 4 poolings (proj, norm) + embedding


def test_grid_sample_keeps_one_point_per_voxel_and_the_inverse():
    p = scenes([500, 300], seed=1, extent=0.3)
    for mode in ("first", "random"):
        s = grid_sample(p, grid_size=0.05, mode=mode, generator=torch.Generator().manual_seed(0))
        key = s.batch * 10**6 + s.grid_coord[:, 0] * 10**4 + s.grid_coord[:, 1] * 100 + s.grid_coord[:, 2]
        assert len(torch.unique(key)) == s.num_points
        # every input point lands in the voxel of its representative
        cell = torch.floor(p.coord / 0.05).long()
        rep = s.grid_sample_index[s.grid_sample_inverse]
        assert torch.equal(cell[rep], cell)
        assert torch.equal(p.batch[rep], p.batch)
        assert s.offset.tolist()[-1] == s.num_points and len(s.offset) == 2
        for b in range(2):  # per-sample voxel indices start at 0
            assert s.grid_coord[s.batch == b].min(0).values.tolist() == [0, 0, 0]
    first = grid_sample(p, 0.05, mode="first")
    # "first" keeps the lowest input index of each voxel
    lowest = torch.full((first.num_points,), 10**9).scatter_reduce(
        0, first.grid_sample_inverse, torch.arange(p.num_points), reduce="amin"
    )
    assert torch.equal(first.grid_sample_index, lowest)


def test_bad_inputs_raise_clear_errors():
    model = tiny()
    p = scenes([200])
    p.coord[5, 1] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        model(p)
    p = scenes([200])
    p.feat = p.feat[:, :6]
    with pytest.raises(ValueError, match=r"feat must be \[N, 9\]"):
        model(p)
    with pytest.raises(ValueError, match="enc_channels"):
        PTv3Config.tiny(enc_channels=(16, 16))
    with pytest.raises(ValueError, match="unknown key"):
        PTv3Config.from_dict({"enc_depth": (1,)})


def test_forward_shapes_upcast_and_inverse_chain():
    model = tiny().eval()
    p = scenes([1500, 400, 30])
    with torch.no_grad():
        out = model(p, orders=ORDERS)
    assert out.feat.shape[1] == 64 and out.batch_size == 3
    levels = [q.num_points for q in out.parents()]
    assert levels == sorted(levels) and len(levels) == 5
    up = upcast(out, levels=2)
    assert up.feat.shape == (levels[2], 32 + 32 + 64)
    assert "pooling_parent" in out  # upcast does not consume the chain
    # upcast columns are the stage features broadcast through pooling_inverse
    stage2 = list(out.parents())[2]
    torch.testing.assert_close(up.feat[:, :32], stage2.feat)
    idx = up.index_to_input()
    assert idx.shape == (1930,)
    # every input point maps into its own sample
    assert torch.equal(up.batch[idx], p.batch)
    with pytest.raises(ValueError, match="pooling levels"):
        upcast(out, levels=5)


def test_base_upcast_channels():
    # base channels with one block per stage: the upcast widths depend on channels only
    cfg = PTv3Config.base(sparse_conv_backend="torch", enc_depths=(1,) * 5, enc_patch_size=(64,) * 5)
    model = PointTransformerV3(cfg).eval()
    with torch.no_grad():
        out = model(scenes([600], seed=2))
    assert upcast(out, 2).feat.shape[1] == 1088
    assert upcast(out, 3).feat.shape[1] == 1184


def test_mask_token_replaces_masked_embeddings():
    model = tiny().eval()
    with torch.no_grad():
        model.embedding.mask_token.fill_(3.0)
    p = grid_sample(scenes([300]), 0.02, mode="first")
    p.mask = torch.arange(p.num_points) % 3 == 0
    emb = model.embedding(Point(dict(p)))
    assert torch.all(emb.feat[p.mask] == 3.0)
    assert not torch.any(emb.feat[~p.mask] == 3.0)
    with torch.no_grad():
        masked = model(p, orders=ORDERS)
        unmasked = model(Point({k: v for k, v in p.items() if k != "mask"}), orders=ORDERS)
    assert not torch.allclose(masked.feat, unmasked.feat)


def test_permutation_equivariance_with_fixed_orders():
    model = tiny().eval()
    p = grid_sample(scenes([800, 300], seed=3), 0.02, mode="first")  # one point per voxel
    p = Point({k: p[k] for k in ("coord", "feat", "offset")})
    n0 = int(p.offset[0])
    perm = torch.cat([torch.randperm(n0), n0 + torch.randperm(p.num_points - n0)])
    q = Point(coord=p.coord[perm], feat=p.feat[perm], offset=p.offset)
    with torch.no_grad():
        a = upcast(model(p, orders=ORDERS), 4)
        b = upcast(model(q, orders=ORDERS), 4)
    fa = a.feat[a.index_to_input()]
    fb = b.feat[b.index_to_input()]
    torch.testing.assert_close(fb, fa[perm], rtol=1e-4, atol=1e-5)


def test_fixed_orders_are_recorded_and_reproducible():
    model = tiny().eval()
    p = scenes([500])
    per_stage = [ORDERS[i:] + ORDERS[:i] for i in range(4)] + [ORDERS]
    with torch.no_grad():
        a = model(p, orders=per_stage)
        b = model(p, orders=per_stage)
    assert [q.order for q in reversed(list(a.parents()))] == per_stage
    torch.testing.assert_close(a.feat, b.feat)


def official_config_dict(cfg: PTv3Config) -> dict:
    """A config dict as the reference writes it (its keyword names, incl. kernel switches)."""
    d = {k: v for k, v in cfg.to_dict().items() if k not in ("grid_size", "sparse_conv_backend", "attention_backend",
                                                             "input_color_range")}
    d.update(enable_flash=True, upcast_attention=False, upcast_softmax=False, traceable=True)
    return d


def test_official_layout_checkpoint_loads_and_reproduces(tmp_path):
    model = tiny().eval()
    p = scenes([700, 200], seed=5)
    with torch.no_grad():
        expected = model(p, orders=ORDERS).feat
    prefix = "module.student.backbone."
    state = {prefix + k: v.clone() for k, v in model.state_dict().items()}
    # a training checkpoint also carries other modules; they must be ignored
    state["module.student.head.weight"] = torch.zeros(3)
    state.update({"module.teacher.backbone." + k: torch.zeros_like(v) for k, v in model.state_dict().items()})
    path = tmp_path / "official.pth"
    torch.save({"config": official_config_dict(model.config), "state_dict": state, "outputs": expected}, path)

    _, stripped = read_checkpoint(path)
    assert set(stripped) == set(model.state_dict())  # head and teacher keys left out
    # strict: raises on any missing or unexpected backbone key
    loaded = load_checkpoint(path, strict=True, sparse_conv_backend="torch").eval()
    with torch.no_grad():
        again = loaded(p, orders=ORDERS).feat
    saved = torch.load(path, weights_only=True)["outputs"]
    torch.testing.assert_close(again, saved)
    assert loaded.config.extra["enable_flash"] is True


def test_backbone_export_round_trip_and_errors(tmp_path):
    model = tiny(drop_path=0.1)
    from concerto.train.checkpoint import export_backbone

    path = export_backbone(model, tmp_path / "ckpt" / "model.pth")
    loaded = load_checkpoint(path)
    assert loaded.config == model.config
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k

    ckpt = torch.load(path, weights_only=True)
    del ckpt["state_dict"]["enc.enc2.block0.attn.qkv.weight"]
    with pytest.raises(CheckpointError, match="1 missing keys"):
        load_checkpoint(ckpt)
    assert load_checkpoint(ckpt, strict=False) is not None

    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated.pth"):
        load_checkpoint(truncated)
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(tmp_path / "absent.pth")


def test_model_package_imports_only_torch_numpy_and_itself():
    import subprocess
    import sys

    code = ("import sys, concerto.model; print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'preprocess', 'pipelines', 'prefect', 'zarr', 'dask'}) + "
            "sorted(m for m in sys.modules if m.startswith('concerto.') and not m.startswith('concerto.model')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_pretrained_names_resolve():
    assert pretrained_location("sonata") == ("facebook/sonata", "sonata.pth")
    assert pretrained_location("concerto_large") == ("Pointcept/Concerto", "concerto_large.pth")
    assert pretrained_location("concerto_base") == ("Pointcept/Concerto", "concerto_base.pth")
    with pytest.raises(KeyError, match="unknown pretrained"):
        pretrained_location("sonata_xxl")


def test_decoder_mode_returns_full_resolution():
    model = tiny(enc_mode=False).eval()
    assert "dec.dec0.up.proj_skip.0.weight" in model.state_dict()
    p = scenes([600, 100])
    with torch.no_grad():
        out = model(p, orders=ORDERS)
    first = grid_sample(p, 0.02, mode="first")
    assert out.feat.shape == (first.num_points, 16)
    assert out.index_to_input().shape == (700,)


def test_deepcopy_for_an_ema_teacher():
    model = tiny().eval()
    teacher = copy.deepcopy(model)
    p = scenes([300])
    with torch.no_grad():
        torch.testing.assert_close(teacher(p, orders=ORDERS).feat, model(p, orders=ORDERS).feat)


def test_spconv_backend_gives_the_same_model_output():
    pytest.importorskip("spconv.pytorch")
    p = scenes([900, 250], seed=7)
    a = tiny(sparse_conv_backend="torch").eval()
    b = tiny(sparse_conv_backend="spconv").eval()
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(b(p, orders=ORDERS).feat, a(p, orders=ORDERS).feat, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_forward_backward_on_large_scenes():
    model = tiny().train()
    p = scenes([10000, 20000, 40000], seed=11, extent=5.0, on_planes=0.9)
    p.mask = torch.rand(p.num_points, generator=torch.Generator().manual_seed(1)) < 0.3
    out = model(p, generator=torch.Generator().manual_seed(0))
    feats = upcast(out, 2)
    loss = feats.feat.square().mean() + out.feat.mean()
    loss.backward()
    assert torch.isfinite(loss)
    assert out.batch_size == 3
    missing = [n for n, q in model.named_parameters() if q.grad is None]
    assert not missing, missing
    assert all(torch.isfinite(q.grad).all() for q in model.parameters())
    # each sample's points map into that sample at every level
    idx = feats.index_to_input()
    assert torch.equal(feats.batch[idx], p.batch)


def test_bf16_autocast_forward_backward():
    model = tiny().train()
    p = scenes([1500, 400])
    p.mask = torch.rand(p.num_points, generator=torch.Generator().manual_seed(0)) < 0.3
    with torch.autocast("cpu", dtype=torch.bfloat16):
        feats = upcast(model(p, generator=torch.Generator().manual_seed(0)), 2).feat
        loss = feats.float().square().mean()
    loss.backward()
    assert feats.dtype == torch.bfloat16
    for name, q in model.named_parameters():
        assert q.grad is not None and q.grad.dtype == torch.float32 and torch.isfinite(q.grad).all(), name


def _ddp_rank(rank: int, world: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    model = DistributedDataParallel(tiny().train())
    p = scenes([600, 300], seed=100 + rank)  # different data per rank
    p.mask = torch.rand(p.num_points, generator=torch.Generator().manual_seed(rank)) < 0.3
    out = model(p, generator=torch.Generator().manual_seed(rank))
    upcast(out, 2).feat.square().mean().backward()
    torch.save({n: q.grad for n, q in model.module.named_parameters()}, f"{out_dir}/grad{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_gloo_averages_gradients(tmp_path, free_port):
    import torch.multiprocessing as mp

    mp.spawn(_ddp_rank, args=(2, free_port, str(tmp_path)), nprocs=2, join=True)
    g0 = torch.load(tmp_path / "grad0.pt", weights_only=True)
    g1 = torch.load(tmp_path / "grad1.pt", weights_only=True)
    assert set(g0) == set(g1)
    for name in g0:
        torch.testing.assert_close(g0[name], g1[name], msg=name)
    assert any(g0[n].abs().sum() > 0 for n in g0)


def test_backward_is_deterministic_across_repeats():
    """Same weights, input and orders -> bit-identical gradients, run after run.
    (Max pooling once started from uninitialised memory, whose stale values could
    tie with the max and take a share of the gradient at random.)"""
    def grads():
        model = tiny().train()
        g = torch.Generator().manual_seed(1)
        coord = torch.rand(3000, 3, generator=g) * 3
        p = Point(coord=coord, feat=torch.rand(3000, 9, generator=g), grid_size=0.02, offset=torch.tensor([1800, 3000]))
        out = model(p, generator=torch.Generator().manual_seed(2))
        upcast(out, 2).feat.square().mean().backward()
        return {n: q.grad.clone() for n, q in model.named_parameters() if q.grad is not None}

    first = grads()
    for _ in range(6):
        again = grads()
        assert [n for n in first if not torch.equal(first[n], again[n])] == []
