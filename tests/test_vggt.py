"""Our VGGT implementation: shapes, checkpoint loading, official key naming."""
from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from preprocess.lift.vggt_layers import Rope2D
from preprocess.lift.vggt_model import (
    VGGT,
    CheckpointError,
    VGGTConfig,
    build_on_meta,
    count_parameters,
    load_vggt,
    state_dict_shapes,
)

TINY = VGGTConfig.tiny()


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return VGGT(TINY).eval()


def test_tiny_forward_shapes(tiny_model):
    S, H, W = 3, 28, 42  # non-square: the DINOv2 position table is resized
    images = torch.rand(S, 3, H, W)
    with torch.no_grad():
        out = tiny_model(images)
    assert out.pose_enc.shape == (1, S, 9)
    assert len(out.pose_enc_list) == 4
    assert out.depth.shape == (1, S, H, W)
    assert out.depth_conf.shape == (1, S, H, W)
    assert out.world_points.shape == (1, S, H, W, 3)
    assert out.world_points_conf.shape == (1, S, H, W)
    assert (out.depth > 0).all(), "depth activation is exp: strictly positive"
    assert (out.depth_conf >= 1).all(), "confidence activation is 1 + exp"
    assert (out.pose_enc[..., 7:] >= 0).all(), "field of view goes through ReLU"
    assert torch.isfinite(out.pose_enc).all()


def test_batched_input_and_view_order_of_special_tokens(tiny_model):
    torch.manual_seed(1)
    images = torch.rand(2, 2, 3, 28, 28)
    with torch.no_grad():
        out = tiny_model(images, with_points=False)
        single = tiny_model(images[1], with_points=False)
    assert out.depth.shape == (2, 2, 28, 28) and out.world_points is None
    torch.testing.assert_close(out.depth[1], single.depth[0], rtol=1e-4, atol=1e-5)
    # The first view gets its own camera/register tokens (it defines the world
    # frame): the same image predicts a different camera in another slot.
    model = copy.deepcopy(tiny_model)
    with torch.no_grad():
        model.aggregator.camera_token.normal_()  # trained tokens differ; init ones are ~1e-6
        model.aggregator.register_token.normal_()
        ref = model(images[1], with_points=False)
        swapped = model(images[1].flip(0), with_points=False)
    assert not torch.allclose(swapped.pose_enc[0, 1], ref.pose_enc[0, 0], atol=1e-3)


def test_bf16_autocast_runs_and_stays_close(tiny_model):
    torch.manual_seed(2)
    images = torch.rand(2, 3, 28, 28)
    with torch.no_grad():
        ref = tiny_model(images)
        low = tiny_model(images, autocast_dtype=torch.bfloat16)
    assert low.depth.dtype == torch.float32, "heads run in fp32"
    assert torch.allclose(low.pose_enc, ref.pose_enc, atol=0.1, rtol=0.1)


def test_rope_is_relative():
    """<rope(q, p), rope(k, r)> depends only on p - r; position 0 is identity."""
    torch.manual_seed(3)
    rope = Rope2D(100.0)
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)

    def dot(p, r):
        pq = torch.tensor([[p]], dtype=torch.long)
        pk = torch.tensor([[r]], dtype=torch.long)
        return float((rope(q, pq) * rope(k, pk)).sum())

    assert dot((3, 5), (1, 2)) == pytest.approx(dot((12, 9), (10, 6)), rel=1e-5, abs=1e-5)
    assert dot((3, 5), (1, 2)) != pytest.approx(dot((3, 5), (2, 1)), rel=1e-3)
    torch.testing.assert_close(rope(q, torch.zeros(1, 1, 2, dtype=torch.long)), q)


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_checkpoint_roundtrip_zero_missing_zero_unexpected(tiny_model, tmp_path, fmt):
    state = tiny_model.state_dict()
    if fmt == "pt":
        path = tmp_path / "model.pt"
        torch.save(state, path)
    else:
        from safetensors.torch import save_file

        path = tmp_path / "model.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    # the model a checkpoint is loaded into starts from different weights
    torch.manual_seed(123)
    loaded = load_vggt(tmp_path, config=TINY)  # directory: finds the file
    own = loaded.state_dict()
    assert set(own) == set(state)
    assert not any(t.is_meta for t in list(loaded.parameters()) + list(loaded.buffers()))
    for k in state:
        assert torch.equal(own[k], state[k]), k
    images = torch.rand(2, 3, 28, 28)
    with torch.no_grad():
        a, b = tiny_model(images), loaded(images)
    torch.testing.assert_close(a.depth, b.depth)
    torch.testing.assert_close(a.pose_enc, b.pose_enc)


def test_checkpoint_errors_name_the_keys(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no network here: fail fast, clearly
    import huggingface_hub.constants

    # the env var is read when huggingface_hub is imported, which may have happened already
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    state = dict(tiny_model.state_dict())
    del state["camera_head.embed_pose.weight"]
    state["depth_head.extra.weight"] = torch.zeros(1)
    path = tmp_path / "bad.pt"
    torch.save({"model": state}, path)  # wrapped state dicts are accepted
    with pytest.raises(CheckpointError) as err:
        load_vggt(path, config=TINY)
    msg = str(err.value)
    assert "camera_head.embed_pose.weight" in msg and "depth_head.extra.weight" in msg and str(path) in msg

    truncated = tmp_path / "trunc.pt"
    good = tmp_path / "good.pt"
    torch.save(tiny_model.state_dict(), good)
    truncated.write_bytes(good.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="trunc.pt"):
        load_vggt(truncated, config=TINY)
    with pytest.raises(CheckpointError, match="Hugging Face hub"):
        load_vggt("nobody-here/no-such-model", config=TINY)
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="none of"):
        load_vggt(empty, config=TINY)


# Official VGGT-1B key names and shapes, written from facebookresearch/vggt
# (vggt/models/vggt.py, aggregator.py, heads/*.py, layers/*.py at commit 44b3afb):
# Aggregator(embed_dim 1024, depth 24, heads 16, 4 registers, qk_norm, RoPE 100)
# with a DINOv2 ViT-L/14-reg patch embed (518 px -> 37x37 + cls position table,
# layer scale 1.0); CameraHead(dim_in 2048, trunk 4); DPTHead(features 256,
# out_channels 256/512/1024/1024); TrackHead(features 128, tracker hidden 384,
# corr 7 levels x radius 4, 6 layers, 64 virtual tracks).
OFFICIAL_1B_KEYS = {
    "aggregator.camera_token": (1, 2, 1, 1024),
    "aggregator.register_token": (1, 2, 4, 1024),
    "aggregator.patch_embed.cls_token": (1, 1, 1024),
    "aggregator.patch_embed.pos_embed": (1, 1370, 1024),
    "aggregator.patch_embed.register_tokens": (1, 4, 1024),
    "aggregator.patch_embed.mask_token": (1, 1024),
    "aggregator.patch_embed.patch_embed.proj.weight": (1024, 3, 14, 14),
    "aggregator.patch_embed.patch_embed.proj.bias": (1024,),
    "aggregator.patch_embed.blocks.0.norm1.weight": (1024,),
    "aggregator.patch_embed.blocks.23.attn.qkv.weight": (3072, 1024),
    "aggregator.patch_embed.blocks.23.attn.proj.bias": (1024,),
    "aggregator.patch_embed.blocks.11.ls1.gamma": (1024,),
    "aggregator.patch_embed.blocks.5.mlp.fc1.weight": (4096, 1024),
    "aggregator.patch_embed.blocks.5.mlp.fc2.weight": (1024, 4096),
    "aggregator.patch_embed.blocks.23.ls2.gamma": (1024,),
    "aggregator.patch_embed.norm.weight": (1024,),
    "aggregator.frame_blocks.0.attn.q_norm.weight": (64,),
    "aggregator.frame_blocks.23.attn.k_norm.bias": (64,),
    "aggregator.frame_blocks.7.attn.qkv.bias": (3072,),
    "aggregator.global_blocks.0.ls1.gamma": (1024,),
    "aggregator.global_blocks.23.mlp.fc1.weight": (4096, 1024),
    "aggregator.global_blocks.12.norm2.bias": (1024,),
    "camera_head.trunk.0.attn.qkv.weight": (6144, 2048),
    "camera_head.trunk.3.mlp.fc2.weight": (2048, 8192),
    "camera_head.trunk.3.ls2.gamma": (2048,),
    "camera_head.token_norm.weight": (2048,),
    "camera_head.trunk_norm.bias": (2048,),
    "camera_head.empty_pose_tokens": (1, 1, 9),
    "camera_head.embed_pose.weight": (2048, 9),
    "camera_head.poseLN_modulation.1.weight": (6144, 2048),
    "camera_head.pose_branch.fc1.weight": (1024, 2048),
    "camera_head.pose_branch.fc2.weight": (9, 1024),
    "depth_head.norm.weight": (2048,),
    "depth_head.projects.0.weight": (256, 2048, 1, 1),
    "depth_head.projects.3.weight": (1024, 2048, 1, 1),
    "depth_head.resize_layers.0.weight": (256, 256, 4, 4),
    "depth_head.resize_layers.1.weight": (512, 512, 2, 2),
    "depth_head.resize_layers.3.weight": (1024, 1024, 3, 3),
    "depth_head.scratch.layer1_rn.weight": (256, 256, 3, 3),
    "depth_head.scratch.layer4_rn.weight": (256, 1024, 3, 3),
    "depth_head.scratch.refinenet1.resConfUnit1.conv1.weight": (256, 256, 3, 3),
    "depth_head.scratch.refinenet4.resConfUnit2.conv2.bias": (256,),
    "depth_head.scratch.refinenet4.out_conv.weight": (256, 256, 1, 1),
    "depth_head.scratch.output_conv1.weight": (128, 256, 3, 3),
    "depth_head.scratch.output_conv2.0.weight": (32, 128, 3, 3),
    "depth_head.scratch.output_conv2.2.weight": (2, 32, 1, 1),
    "point_head.scratch.output_conv2.2.weight": (4, 32, 1, 1),
    "point_head.scratch.output_conv2.2.bias": (4,),
    "track_head.feature_extractor.projects.2.weight": (1024, 2048, 1, 1),
    "track_head.feature_extractor.scratch.layer1_rn.weight": (128, 256, 3, 3),
    "track_head.feature_extractor.scratch.output_conv1.weight": (128, 128, 3, 3),
    "track_head.tracker.corr_mlp.fc1.weight": (384, 567),
    "track_head.tracker.corr_mlp.fc2.weight": (128, 384),
    "track_head.tracker.query_ref_token": (1, 2, 388),
    "track_head.tracker.updateformer.virual_tracks": (1, 64, 1, 384),
    "track_head.tracker.updateformer.input_norm.weight": (388,),
    "track_head.tracker.updateformer.input_transform.weight": (384, 388),
    "track_head.tracker.updateformer.flow_head.weight": (130, 384),
    "track_head.tracker.updateformer.time_blocks.5.attn.in_proj_weight": (1152, 384),
    "track_head.tracker.updateformer.time_blocks.5.attn.out_proj.weight": (384, 384),
    "track_head.tracker.updateformer.space_virtual_blocks.0.mlp.fc1.weight": (1536, 384),
    "track_head.tracker.updateformer.space_point2virtual_blocks.5.cross_attn.in_proj_bias": (1152,),
    "track_head.tracker.updateformer.space_virtual2point_blocks.0.norm_context.weight": (384,),
    "track_head.tracker.fmap_norm.weight": (128,),
    "track_head.tracker.ffeat_norm.weight": (128,),
    "track_head.tracker.ffeat_updater.0.weight": (128, 128),
    "track_head.tracker.vis_predictor.0.weight": (1, 128),
    "track_head.tracker.conf_predictor.0.bias": (1,),
}
# Keys the official model does NOT have (would be "unexpected" when loading).
NOT_OFFICIAL = [
    "depth_head.scratch.refinenet4.resConfUnit1.conv1.weight",  # has_residual=False
    "depth_head.resize_layers.2.weight",  # Identity
    "depth_head.scratch.layer1_rn.bias",  # bias=False
    "track_head.feature_extractor.scratch.output_conv2.0.weight",  # feature_only
    "aggregator.patch_embed.blocks.0.attn.q_norm.weight",  # DINOv2 has no QK-norm
    "camera_head.trunk.0.attn.q_norm.weight",
    "camera_head.adaln_norm.weight",  # no affine
    "aggregator._mean",  # non-persistent buffer
]


def test_1b_key_names_and_shapes_match_the_official_naming():
    model = build_on_meta(VGGTConfig())
    shapes = state_dict_shapes(model)
    for key, shape in OFFICIAL_1B_KEYS.items():
        assert key in shapes, f"missing official key {key}"
        assert shapes[key] == shape, f"{key}: {shapes[key]} != official {shape}"
    for key in NOT_OFFICIAL:
        assert key not in shapes, f"{key} is not in the official checkpoint"
    # Per-module key counts from the official structure: DINOv2 4 tokens + proj 2
    # + 24 blocks x 14 + norm 2 = 344; frame/global blocks 24 x 18 each (QK-norm);
    # + camera/register tokens 2 -> 1210. Camera head 4 x 14 + 13 = 69. DPT 62
    # (track feature extractor 58, no output_conv2). Tracker 336.
    prefixes = {}
    for key in shapes:
        prefixes[key.split(".")[0]] = prefixes.get(key.split(".")[0], 0) + 1
    assert prefixes == {"aggregator": 1210, "camera_head": 69, "depth_head": 62, "point_head": 62, "track_head": 394}
    n = count_parameters(model)
    assert 1.2e9 < n < 1.3e9, n  # "VGGT-1B": about 1.26 billion parameters


def test_tiny_config_uses_the_same_classes():
    big, tiny = build_on_meta(VGGTConfig()), build_on_meta(TINY)
    strip = lambda k: ".".join(p for p in k.split(".") if not p.isdigit())  # noqa: E731
    assert {strip(k) for k in big.state_dict()} == {strip(k) for k in tiny.state_dict()}


def test_disabled_heads_are_absent():
    cfg = dataclasses.replace(TINY, enable_track=False, enable_point=False)
    model = VGGT(cfg)
    assert not any(k.startswith(("track_head", "point_head")) for k in model.state_dict())
    with torch.no_grad():
        out = model(torch.rand(2, 3, 28, 28))
    assert out.world_points is None and out.depth.shape == (1, 2, 28, 28)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_matches_cpu_fp32(tiny_model):
    """The GPU path (bf16 autocast aggregator, SDPA kernels) computes the same
    function as the CPU fp32 twin, up to bf16 rounding."""
    torch.manual_seed(4)
    images = torch.rand(3, 3, 28, 42)
    with torch.no_grad():
        ref = tiny_model(images)
        gpu = copy.deepcopy(tiny_model).cuda()(images.cuda())
    torch.testing.assert_close(gpu.depth.cpu(), ref.depth, rtol=0.05, atol=0.05)
    torch.testing.assert_close(gpu.pose_enc.cpu(), ref.pose_enc, rtol=0.05, atol=0.05)


def test_tracking_shapes_and_query_view(tiny_model):
    torch.manual_seed(5)
    images = torch.rand(3, 3, 28, 42)
    query = torch.tensor([[3.0, 4.0], [20.5, 10.0], [40.0, 27.0], [0.0, 0.0]])
    with torch.no_grad():
        out = tiny_model(images, with_points=False, query_points=query)
    assert out.track.shape == (1, 3, 4, 2) and len(out.track_list) == 4
    assert out.track_vis.shape == (1, 3, 4) and out.track_conf.shape == (1, 3, 4)
    torch.testing.assert_close(out.track[0, 0], query)  # the query view keeps its points
    assert torch.isfinite(out.track).all() and ((out.track_vis > 0) & (out.track_vis < 1)).all()


def test_matches_the_official_golden_fixture():
    """tests/fixtures/vggt_tiny_golden.npz: the official facebookresearch/vggt
    code (commit in the file) run by scripts/golden/make_vggt_fixture.py on the
    tiny configuration with random weights. Our model with the same weights must
    give every head's outputs: camera (all refinement iterations), depth, point
    map, tracks."""
    from pathlib import Path

    import numpy as np

    data = np.load(Path(__file__).parent / "fixtures" / "vggt_tiny_golden.npz")
    assert len(str(data["official_commit"])) == 40
    cfg = dataclasses.replace(TINY, track_heads=8, track_virtual_tracks=64)  # the official tracker's fixed sizes
    ours = VGGT(cfg).eval()
    state = {k[2:]: torch.from_numpy(data[k]) for k in data.files if k.startswith("w/")}
    ours.load_state_dict(state, strict=True)
    images = torch.from_numpy(data["images"])
    with torch.no_grad():
        out = ours(images, query_points=torch.from_numpy(data["query_points"]))

    def close(got, key, **tol):
        want = torch.from_numpy(data[key])
        if key == "depth":  # the official depth keeps a channel axis: [B,S,H,W,1]
            want = want[..., 0]
        torch.testing.assert_close(got, want, **tol)

    close(out.pose_enc, "pose_enc")
    close(torch.stack(out.pose_enc_list), "pose_enc_list")
    close(out.depth, "depth")
    close(out.depth_conf, "depth_conf")
    close(out.world_points, "world_points")
    close(out.world_points_conf, "world_points_conf")
    close(out.track, "track")
    close(out.track_vis, "track_vis")
    close(out.track_conf, "track_conf")
