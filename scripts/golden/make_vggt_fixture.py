"""Golden fixture for our VGGT (preprocess/lift/vggt_model.py): run the official
facebookresearch/vggt code on a tiny configuration with random weights and
save its inputs, weights and every head's outputs to
tests/fixtures/vggt_tiny_golden.npz. Run by hand, never by the suite:

    /work/official/vggt-venv/bin/python scripts/golden/make_vggt_fixture.py \\
        --official /work/official/vggt --commit 44b3afbd1869d8bde4894dd8ea1e293112dd5eba

``--official`` is a tree of the official repository at ``--commit`` (it must
hold ``vggt/``); the venv has torch 2.13.0 (CPU), numpy<2, einops and
huggingface_hub (the official VGGT class imports PyTorchModelHubMixin), no
torchvision. The tiny sizes are ``VGGTConfig.tiny()`` with the tracker's
attention at the official fixed 8 heads and 64 virtual tracks. The official
VGGT class builds its parts at full size, so the script builds the tiny parts
with the official classes and assigns them to an official VGGT instance, whose
own ``forward`` then runs every head (camera, depth, point, track).
"""
from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

import numpy as np
import torch

OUT = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "vggt_tiny_golden.npz"
SEED = 0
# tiny sizes, as preprocess.lift.vggt_model.VGGTConfig.tiny()
IMG, PATCH, DIM, DEPTH, HEADS, REGS = 28, 7, 32, 2, 2, 2
DPT = dict(features=16, out_channels=[8, 16, 32, 32], intermediate_layer_idx=[0, 0, 1, 1])
TRACK = dict(features=8, hidden=16, corr_levels=2, corr_radius=1, depth=1)


def build_official(root: Path):
    sys.path.insert(0, str(root))
    import vggt.layers.vision_transformer as vt
    import vggt.models.aggregator as agg_mod
    from vggt.heads.camera_head import CameraHead
    from vggt.heads.dpt_head import DPTHead
    from vggt.heads.track_head import TrackHead
    from vggt.heads.track_modules.base_track_predictor import BaseTrackerPredictor
    from vggt.layers import MemEffAttention
    from vggt.layers.block import NestedTensorBlock
    from vggt.models.vggt import VGGT

    def tiny_dino(patch_size=14, num_register_tokens=0, **kw):  # stands in for vit_large at tiny width
        return vt.DinoVisionTransformer(patch_size=patch_size, embed_dim=DIM, depth=1, num_heads=HEADS, mlp_ratio=4,
                                        block_fn=functools.partial(NestedTensorBlock, attn_class=MemEffAttention),
                                        num_register_tokens=num_register_tokens, **kw)

    agg_mod.vit_large = tiny_dino
    model = VGGT.__new__(VGGT)
    torch.nn.Module.__init__(model)
    model.aggregator = agg_mod.Aggregator(img_size=IMG, patch_size=PATCH, embed_dim=DIM, depth=DEPTH, num_heads=HEADS,
                                          num_register_tokens=REGS)
    model.camera_head = CameraHead(dim_in=2 * DIM, trunk_depth=1, num_heads=HEADS)
    model.point_head = DPTHead(dim_in=2 * DIM, patch_size=PATCH, output_dim=4, activation="inv_log",
                               conf_activation="expp1", **DPT)
    model.depth_head = DPTHead(dim_in=2 * DIM, patch_size=PATCH, output_dim=2, activation="exp",
                               conf_activation="expp1", **DPT)
    # TrackHead's own constructor sizes its DPT for 24 trunk layers: build it empty and give it tiny parts
    track = TrackHead.__new__(TrackHead)
    torch.nn.Module.__init__(track)
    track.patch_size, track.iters = PATCH, 4
    track.feature_extractor = DPTHead(dim_in=2 * DIM, patch_size=PATCH, features=TRACK["features"],
                                      out_channels=DPT["out_channels"], intermediate_layer_idx=DPT["intermediate_layer_idx"],
                                      feature_only=True, down_ratio=2, pos_embed=False)
    track.tracker = BaseTrackerPredictor(stride=2, corr_levels=TRACK["corr_levels"], corr_radius=TRACK["corr_radius"],
                                         latent_dim=TRACK["features"], hidden_size=TRACK["hidden"], depth=TRACK["depth"],
                                         predict_conf=True)
    model.track_head = track
    return model.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--official", type=Path, required=True, help="tree of facebookresearch/vggt at --commit")
    ap.add_argument("--commit", required=True, help="the official commit the tree is")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    torch.manual_seed(SEED)
    model = build_official(args.official)
    with torch.no_grad():  # random everything: layer scales and zero inits hide nothing
        for name, p in model.named_parameters():
            scale = 0.2 if name.startswith(("aggregator", "camera_head")) else 0.03
            p.copy_(torch.randn_like(p) * scale)
    gen = torch.Generator().manual_seed(SEED + 1)
    images = torch.rand(1, 3, 3, IMG, 42, generator=gen)  # 3 views, non-square
    query = torch.tensor([[[3.0, 4.0], [20.5, 10.0], [40.0, 27.0]]])
    with torch.no_grad():
        pred = model(images, query_points=query)
    state = {f"w/{k}": v.numpy() for k, v in model.state_dict().items()}
    out = dict(
        images=images.numpy(), query_points=query.numpy(),
        pose_enc=pred["pose_enc"].numpy(), pose_enc_list=torch.stack(pred["pose_enc_list"]).numpy(),
        depth=pred["depth"].numpy(), depth_conf=pred["depth_conf"].numpy(),
        world_points=pred["world_points"].numpy(), world_points_conf=pred["world_points_conf"].numpy(),
        track=pred["track"].numpy(), track_vis=pred["vis"].numpy(), track_conf=pred["conf"].numpy(),
        official_commit=np.array(args.commit), torch_version=np.array(torch.__version__),
        command=np.array(" ".join([Path(sys.executable).name, "scripts/golden/make_vggt_fixture.py",
                                   "--official", str(args.official), "--commit", args.commit])),
        config=np.array(f"tiny: img {IMG}, patch {PATCH}, dim {DIM}, depth {DEPTH}, heads {HEADS}, registers {REGS}, "
                        f"dpt {DPT}, track {TRACK}, tracker heads 8, virtual tracks 64, seed {SEED}"),
        **state,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB, {len(state)} weight tensors)")


if __name__ == "__main__":
    main()
