"""VGGT prediction heads: camera (iterative pose refinement), DPT dense head
(depth and point maps) and the track head's modules.

Inputs are the aggregator's per-layer token lists: ``tokens[i]`` [B, S, P, 2C]
(frame- and global-attention outputs concatenated), with the camera token at
index 0 and patch tokens from ``patch_start_idx`` on. Names of submodules match
the official checkpoint.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from preprocess.lift.vggt_layers import Block, Mlp, sincos_embed_1d, uv_grid

POSE_ENC_DIM = 9  # translation (3), quaternion xyzw (4), fov_h, fov_w


class CameraHead(nn.Module):
    """Pose encoding [B, S, 9] from the last layer's camera tokens.

    Four refinement iterations; each embeds the current (raw) estimate, uses it
    to modulate the normalised camera tokens (adaLN: shift, scale, gate), runs a
    small transformer over the S views and adds a predicted delta. Activations:
    translation and quaternion linear, field of view ReLU.
    """

    def __init__(self, dim_in: int, trunk_depth: int = 4, num_heads: int = 16, mlp_ratio: float = 4.0,
                 init_values: float = 0.01):
        super().__init__()
        self.trunk = nn.Sequential(*[Block(dim_in, num_heads, mlp_ratio, init_values=init_values) for _ in range(trunk_depth)])
        self.token_norm = nn.LayerNorm(dim_in)
        self.trunk_norm = nn.LayerNorm(dim_in)
        self.empty_pose_tokens = nn.Parameter(torch.zeros(1, 1, POSE_ENC_DIM))
        self.embed_pose = nn.Linear(POSE_ENC_DIM, dim_in)
        self.poseLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim_in, 3 * dim_in))
        self.adaln_norm = nn.LayerNorm(dim_in, elementwise_affine=False, eps=1e-6)
        self.pose_branch = Mlp(dim_in, dim_in // 2, POSE_ENC_DIM)

    def forward(self, tokens_list: Sequence[Tensor], num_iterations: int = 4) -> list[Tensor]:
        """Returns the activated pose encoding after each iteration, each [B, S, 9]."""
        cam = self.token_norm(tokens_list[-1][:, :, 0])
        B, S, _ = cam.shape
        raw: Optional[Tensor] = None
        outputs = []
        for _ in range(num_iterations):
            if raw is None:
                cond = self.embed_pose(self.empty_pose_tokens.expand(B, S, -1))
            else:
                cond = self.embed_pose(raw.detach())
            shift, scale, gate = self.poseLN_modulation(cond).chunk(3, dim=-1)
            x = gate * (self.adaln_norm(cam) * (1 + scale) + shift) + cam
            x = self.trunk(x)
            delta = self.pose_branch(self.trunk_norm(x))
            raw = delta if raw is None else raw + delta
            outputs.append(torch.cat((raw[..., :7], F.relu(raw[..., 7:])), dim=-1))
        return outputs


class ResidualConvUnit(nn.Module):
    """relu(x) + conv2(relu(conv1(relu(x)))), 3x3 convs with bias.

    The skip adds relu(x), not x: the released model applies an in-place ReLU
    to its input before the skip connection reads it, and its weights were
    trained that way."""

    def __init__(self, features: int):
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(x)
        return x + self.conv2(F.relu(self.conv1(x)))


class FeatureFusionBlock(nn.Module):
    """RefineNet-style fusion: (x + rcu1(skip)) -> rcu2 -> bilinear resize
    (to ``size`` or 2x) -> 1x1 conv."""

    def __init__(self, features: int, has_residual: bool = True):
        super().__init__()
        self.out_conv = nn.Conv2d(features, features, 1)
        if has_residual:
            self.resConfUnit1 = ResidualConvUnit(features)
        self.has_residual = has_residual
        self.resConfUnit2 = ResidualConvUnit(features)

    def forward(self, x: Tensor, skip: Optional[Tensor] = None, size=None) -> Tensor:
        if self.has_residual and skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        if size is None:
            size = (x.shape[-2] * 2, x.shape[-1] * 2)
        x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)
        return self.out_conv(x)


class DPTHead(nn.Module):
    """Dense prediction from four token layers.

    Patch tokens of layers ``layers`` -> LayerNorm -> 1x1 conv to
    ``out_channels[i]`` -> (+ sin/cos position) -> resample to 4x, 2x, 1x, 1/2x of
    the patch grid -> fused coarse-to-fine -> upsampled to the image size.
    With ``feature_only`` returns features [B, S, F, H/down, W/down]; otherwise
    ``output_dim`` channels whose last is confidence (1 + exp) and the rest the
    prediction (``activation``: "exp" for depth, "inv_log" for points).
    """

    def __init__(self, dim_in: int, patch_size: int = 14, output_dim: int = 4, activation: str = "inv_log",
                 features: int = 256, out_channels: Sequence[int] = (256, 512, 1024, 1024),
                 layers: Sequence[int] = (4, 11, 17, 23), pos_embed: bool = True, feature_only: bool = False,
                 down_ratio: int = 1):
        super().__init__()
        self.patch_size = patch_size
        self.activation = activation
        self.layers = tuple(layers)
        self.use_pos_embed = pos_embed
        self.feature_only = feature_only
        self.down_ratio = down_ratio
        oc = list(out_channels)
        self.norm = nn.LayerNorm(dim_in)
        self.projects = nn.ModuleList([nn.Conv2d(dim_in, c, 1) for c in oc])
        self.resize_layers = nn.ModuleList([
            nn.ConvTranspose2d(oc[0], oc[0], kernel_size=4, stride=4),
            nn.ConvTranspose2d(oc[1], oc[1], kernel_size=2, stride=2),
            nn.Identity(),
            nn.Conv2d(oc[3], oc[3], kernel_size=3, stride=2, padding=1),
        ])
        scratch = nn.Module()
        for i, c in enumerate(oc, start=1):
            setattr(scratch, f"layer{i}_rn", nn.Conv2d(c, features, 3, padding=1, bias=False))
        scratch.refinenet1 = FeatureFusionBlock(features)
        scratch.refinenet2 = FeatureFusionBlock(features)
        scratch.refinenet3 = FeatureFusionBlock(features)
        scratch.refinenet4 = FeatureFusionBlock(features, has_residual=False)
        if feature_only:
            scratch.output_conv1 = nn.Conv2d(features, features, 3, padding=1)
        else:
            scratch.output_conv1 = nn.Conv2d(features, features // 2, 3, padding=1)
            scratch.output_conv2 = nn.Sequential(
                nn.Conv2d(features // 2, 32, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(32, output_dim, 1)
            )
        self.scratch = scratch

    @staticmethod
    def _add_pos_embed(x: Tensor, W: int, H: int, ratio: float = 0.1) -> Tensor:
        gh, gw = x.shape[-2:]
        grid = uv_grid(gw, gh, aspect=W / H, device=x.device, dtype=x.dtype)
        C = x.shape[1]
        emb = torch.cat((sincos_embed_1d(C // 2, grid[..., 0]), sincos_embed_1d(C // 2, grid[..., 1])), dim=-1)
        emb = emb.reshape(gh, gw, C).permute(2, 0, 1)[None].to(x.dtype)
        return x + ratio * emb

    def forward(self, tokens_list: Sequence[Tensor], image_hw: tuple[int, int], patch_start_idx: int,
                frames_chunk: Optional[int] = 8):
        """tokens_list[i] [B, S, P, 2C]. Returns (pred [B,S,H,W,output_dim-1],
        conf [B,S,H,W]), or features when ``feature_only``. Views are processed
        in chunks of ``frames_chunk`` to bound memory."""
        S = tokens_list[0].shape[1]
        if not frames_chunk or frames_chunk >= S:
            return self._forward_views(tokens_list, image_hw, patch_start_idx, 0, S)
        parts = [self._forward_views(tokens_list, image_hw, patch_start_idx, s, min(s + frames_chunk, S))
                 for s in range(0, S, frames_chunk)]
        if self.feature_only:
            return torch.cat(parts, dim=1)
        return torch.cat([p[0] for p in parts], dim=1), torch.cat([p[1] for p in parts], dim=1)

    def _forward_views(self, tokens_list, image_hw, patch_start_idx, s0, s1):
        H, W = image_hw
        gh, gw = H // self.patch_size, W // self.patch_size
        B = tokens_list[0].shape[0]
        S = s1 - s0
        feats = []
        for i, layer in enumerate(self.layers):
            x = tokens_list[layer][:, s0:s1, patch_start_idx:]
            x = self.norm(x.reshape(B * S, -1, x.shape[-1]))
            x = x.permute(0, 2, 1).reshape(B * S, -1, gh, gw)
            x = self.projects[i](x)
            if self.use_pos_embed:
                x = self._add_pos_embed(x, W, H)
            feats.append(self.resize_layers[i](x))
        sc = self.scratch
        l1, l2, l3, l4 = (getattr(sc, f"layer{i + 1}_rn")(f) for i, f in enumerate(feats))
        out = sc.refinenet4(l4, size=l3.shape[-2:])
        out = sc.refinenet3(out, l3, size=l2.shape[-2:])
        out = sc.refinenet2(out, l2, size=l1.shape[-2:])
        out = sc.refinenet1(out, l1)
        out = sc.output_conv1(out)
        size = (int(gh * self.patch_size / self.down_ratio), int(gw * self.patch_size / self.down_ratio))
        out = F.interpolate(out, size=size, mode="bilinear", align_corners=True)
        if self.use_pos_embed:
            out = self._add_pos_embed(out, W, H)
        if self.feature_only:
            return out.reshape(B, S, *out.shape[1:])
        out = sc.output_conv2(out).permute(0, 2, 3, 1)  # [BS, H, W, out]
        pred, conf = out[..., :-1], out[..., -1]
        if self.activation == "exp":
            pred = torch.exp(pred)
        elif self.activation == "inv_log":
            pred = torch.sign(pred) * torch.expm1(pred.abs())
        else:
            raise ValueError(f"unknown DPT activation '{self.activation}'")
        conf = 1 + conf.exp()
        return pred.reshape(B, S, *pred.shape[1:]), conf.reshape(B, S, *conf.shape[1:])


# --- track head modules (weights loaded; the tracker is not run by the lifter) ---

class TrackAttnBlock(nn.Module):
    """Self-attention block of the tracker (torch MultiheadAttention)."""

    def __init__(self, hidden: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden)
        self.norm2 = nn.LayerNorm(hidden)
        self.attn = nn.MultiheadAttention(hidden, num_heads, batch_first=True)
        self.mlp = Mlp(hidden, int(hidden * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm1(x)
        x = x + self.attn(x, x, x, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class TrackCrossAttnBlock(nn.Module):
    """Cross-attention block of the tracker (queries x, keys/values context)."""

    def __init__(self, hidden: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden)
        self.norm_context = nn.LayerNorm(hidden)
        self.norm2 = nn.LayerNorm(hidden)
        self.cross_attn = nn.MultiheadAttention(hidden, num_heads, batch_first=True)
        self.mlp = Mlp(hidden, int(hidden * mlp_ratio))

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        x = self.norm1(x)
        context = self.norm_context(context)
        x = x + self.cross_attn(x, context, context, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class EfficientUpdateFormer(nn.Module):
    """Time/space transformer of the tracker with virtual tracks."""

    def __init__(self, depth: int, input_dim: int, hidden: int, num_heads: int, output_dim: int,
                 num_virtual_tracks: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.input_norm = nn.LayerNorm(input_dim)
        self.input_transform = nn.Linear(input_dim, hidden)
        self.output_norm = nn.LayerNorm(hidden)
        self.flow_head = nn.Linear(hidden, output_dim)
        # Spelling kept from the official checkpoint.
        self.virual_tracks = nn.Parameter(torch.randn(1, num_virtual_tracks, 1, hidden))
        self.time_blocks = nn.ModuleList([TrackAttnBlock(hidden, num_heads, mlp_ratio) for _ in range(depth)])
        self.space_virtual_blocks = nn.ModuleList([TrackAttnBlock(hidden, num_heads, mlp_ratio) for _ in range(depth)])
        self.space_point2virtual_blocks = nn.ModuleList([TrackCrossAttnBlock(hidden, num_heads, mlp_ratio) for _ in range(depth)])
        self.space_virtual2point_blocks = nn.ModuleList([TrackCrossAttnBlock(hidden, num_heads, mlp_ratio) for _ in range(depth)])


class TrackPredictor(nn.Module):
    """Parameters of the iterative point tracker (``BaseTrackerPredictor``)."""

    def __init__(self, latent_dim: int, hidden: int, corr_levels: int, corr_radius: int, depth: int,
                 num_heads: int, num_virtual_tracks: int):
        super().__init__()
        self.corr_mlp = Mlp(corr_levels * (2 * corr_radius + 1) ** 2, hidden, latent_dim)
        transformer_dim = 3 * latent_dim + 4
        self.query_ref_token = nn.Parameter(torch.randn(1, 2, transformer_dim))
        self.updateformer = EfficientUpdateFormer(depth, transformer_dim, hidden, num_heads, latent_dim + 2,
                                                  num_virtual_tracks)
        self.fmap_norm = nn.LayerNorm(latent_dim)
        self.ffeat_norm = nn.GroupNorm(1, latent_dim)
        self.ffeat_updater = nn.Sequential(nn.Linear(latent_dim, latent_dim), nn.GELU())
        self.vis_predictor = nn.Sequential(nn.Linear(latent_dim, 1))
        self.conf_predictor = nn.Sequential(nn.Linear(latent_dim, 1))


class TrackHead(nn.Module):
    """Track head: a feature-only DPT (half resolution, no position embedding)
    and the tracker. Only the feature extractor runs here (``features``); point
    tracking is not needed for lifting and is not implemented."""

    def __init__(self, dim_in: int, patch_size: int, layers: Sequence[int], out_channels: Sequence[int],
                 features: int = 128, hidden: int = 384, corr_levels: int = 7, corr_radius: int = 4,
                 depth: int = 6, num_heads: int = 8, num_virtual_tracks: int = 64):
        super().__init__()
        self.feature_extractor = DPTHead(dim_in, patch_size, features=features, out_channels=out_channels,
                                         layers=layers, pos_embed=False, feature_only=True, down_ratio=2)
        self.tracker = TrackPredictor(features, hidden, corr_levels, corr_radius, depth, num_heads,
                                      num_virtual_tracks)

    def features(self, tokens_list, image_hw, patch_start_idx) -> Tensor:
        """Track feature maps [B, S, features, H/2, W/2]."""
        return self.feature_extractor(tokens_list, image_hw, patch_start_idx)
