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


# --- track head -------------------------------------------------------------------

def sample_bilinear(img: Tensor, xy: Tensor, padding_mode: str = "border") -> Tensor:
    """Bilinear samples of img [B, C, H, W] at pixel positions xy [B, ..., 2]
    (x = column, y = row; pixel centres at integers) -> [B, C, ...]."""
    H, W = img.shape[-2:]
    scale = torch.tensor([2.0 / max(W - 1, 1), 2.0 / max(H - 1, 1)], device=xy.device, dtype=img.dtype)
    grid = xy.to(img.dtype) * scale - 1.0
    shape = grid.shape
    out = F.grid_sample(img, grid.reshape(shape[0], -1, 1, 2), align_corners=True, padding_mode=padding_mode)
    return out.reshape(shape[0], img.shape[1], *shape[1:-1])


def sincos_grid_embed(dim: int, gh: int, gw: int) -> Tensor:
    """[1, dim, gh, gw] fixed 2D embedding of integer cell positions: first half
    encodes the column, second half the row; each half sin then cos with
    frequencies 10000 ** (-k / (dim/4))."""
    half = dim // 2
    k = torch.arange(half // 2, dtype=torch.float64) / (half / 2.0)
    omega = 1.0 / 10000 ** k
    cols = torch.arange(gw, dtype=torch.float64).repeat(gh)
    rows = torch.arange(gh, dtype=torch.float64).repeat_interleave(gw)

    def emb(pos):
        a = pos[:, None] * omega[None]
        return torch.cat((a.sin(), a.cos()), dim=1)

    out = torch.cat((emb(cols), emb(rows)), dim=1).float()
    return out.reshape(gh, gw, dim).permute(2, 0, 1)[None]


def flow_embed(xy: Tensor, C: int) -> Tensor:
    """[..., 2] displacements -> [..., 2C]: per axis, interleaved sin/cos of
    x * k * 1000 / C for even k < C."""
    div = torch.arange(0, C, 2, device=xy.device, dtype=torch.float32) * (1000.0 / C)
    out = []
    for a in (xy[..., 0:1], xy[..., 1:2]):
        ang = a.float() * div
        out.append(torch.stack((ang.sin(), ang.cos()), dim=-1).flatten(-2))
    return torch.cat(out, dim=-1)


class TrackAttnBlock(nn.Module):
    """Self-attention block of the tracker (torch MultiheadAttention). As in the
    released model, the residual is taken after norm1."""

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
    """Alternates attention along time (per track) and across tracks through a
    small set of learned virtual tracks. [B, N, S, D_in] -> [B, N, S, D_out]."""

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

    def forward(self, x: Tensor) -> Tensor:
        x = self.input_transform(self.input_norm(x))
        init = x
        B, N, T, D = x.shape
        V = self.virual_tracks.shape[1]
        tokens = torch.cat((x, self.virual_tracks.repeat(B, 1, T, 1)), dim=1)
        for time_block, v_self, p2v, v2p in zip(self.time_blocks, self.space_virtual_blocks,
                                                 self.space_point2virtual_blocks, self.space_virtual2point_blocks):
            tokens = time_block(tokens.reshape(B * (N + V), T, D)).reshape(B, N + V, T, D)
            space = tokens.permute(0, 2, 1, 3).reshape(B * T, N + V, D)
            points, virtual = space[:, :N], space[:, N:]
            virtual = v_self(v2p(virtual, points))
            points = p2v(points, virtual)
            tokens = torch.cat((points, virtual), dim=1).reshape(B, T, N + V, D).permute(0, 2, 1, 3)
        tokens = tokens[:, :N] + init
        return self.flow_head(self.output_norm(tokens))


class TrackPredictor(nn.Module):
    """Iterative point tracker (``BaseTrackerPredictor``): correlation pyramid
    around the current estimate + update transformer -> coordinate and feature
    updates; visibility and confidence from the final track features."""

    def __init__(self, latent_dim: int, hidden: int, corr_levels: int, corr_radius: int, depth: int,
                 num_heads: int, num_virtual_tracks: int, stride: int = 2, max_scale: float = 518.0):
        super().__init__()
        self.latent_dim, self.corr_levels, self.corr_radius = latent_dim, corr_levels, corr_radius
        self.stride, self.max_scale = stride, max_scale
        self.corr_mlp = Mlp(corr_levels * (2 * corr_radius + 1) ** 2, hidden, latent_dim)
        self.transformer_dim = 3 * latent_dim + 4
        self.query_ref_token = nn.Parameter(torch.randn(1, 2, self.transformer_dim))
        self.updateformer = EfficientUpdateFormer(depth, self.transformer_dim, hidden, num_heads, latent_dim + 2,
                                                  num_virtual_tracks)
        self.fmap_norm = nn.LayerNorm(latent_dim)
        self.ffeat_norm = nn.GroupNorm(1, latent_dim)
        self.ffeat_updater = nn.Sequential(nn.Linear(latent_dim, latent_dim), nn.GELU())
        self.vis_predictor = nn.Sequential(nn.Linear(latent_dim, 1))
        self.conf_predictor = nn.Sequential(nn.Linear(latent_dim, 1))

    def _correlations(self, pyramid: list[Tensor], feats: Tensor, coords: Tensor) -> Tensor:
        """feats [B,S,N,C] vs each pyramid level around coords [B,S,N,2] ->
        [B,S,N, levels * (2r+1)^2]."""
        B, S, N, C = feats.shape
        r = self.corr_radius
        lin = torch.linspace(-r, r, 2 * r + 1, device=coords.device, dtype=coords.dtype)
        # offset grid [2r+1, 2r+1, 2]: entry (a, b) adds lin[a] to x and lin[b] to y
        # (this transposed layout is what the released weights expect)
        offsets = torch.stack(torch.meshgrid(lin, lin, indexing="ij"), dim=-1)
        out = []
        for level, fmap in enumerate(pyramid):
            h, w = fmap.shape[-2:]
            corr = feats @ fmap.reshape(B, S, C, h * w) / C ** 0.5  # [B,S,N,hw]
            centre = coords.reshape(B * S * N, 1, 1, 2) / 2 ** level
            grid = centre + offsets[None]
            sampled = sample_bilinear(corr.reshape(B * S * N, 1, h, w), grid, padding_mode="zeros")
            out.append(sampled.reshape(B, S, N, -1))
        return torch.cat(out, dim=-1)

    def forward(self, query_points: Tensor, fmaps: Tensor, iters: int = 4):
        """query_points [B,N,2] pixels (x, y) in the first view; fmaps [B,S,C,h,w]
        at 1/stride resolution. Returns (list of tracks [B,S,N,2] in pixels, one
        per iteration, visibility [B,S,N], confidence [B,S,N]), both in (0, 1)."""
        B, N, _ = query_points.shape
        _, S, C, h, w = fmaps.shape
        fmaps = self.fmap_norm(fmaps.permute(0, 1, 3, 4, 2)).permute(0, 1, 4, 2, 3)
        coords = (query_points / float(self.stride))[:, None].expand(B, S, N, 2).clone()
        query_xy = coords[:, 0].clone()
        query_feat = sample_bilinear(fmaps[:, 0], query_xy).permute(0, 2, 1)  # [B,N,C]
        feats = query_feat[:, None].expand(B, S, N, C)
        pyramid = [fmaps]
        for _ in range(self.corr_levels - 1):
            prev = pyramid[-1]
            pooled = F.avg_pool2d(prev.reshape(B * S, C, *prev.shape[-2:]), 2, stride=2)
            pyramid.append(pooled.reshape(B, S, C, *pooled.shape[-2:]))
        pos = sincos_grid_embed(self.transformer_dim, h, w).to(fmaps.device).expand(B, -1, -1, -1)
        pos = sample_bilinear(pos, query_xy).permute(0, 2, 1).reshape(B * N, 1, -1)
        ref = torch.cat((self.query_ref_token[:, :1], self.query_ref_token[:, 1:2].expand(-1, S - 1, -1)), dim=1)
        tracks = []
        for _ in range(iters):
            coords = coords.detach()
            corr = self.corr_mlp(self._correlations(pyramid, feats, coords).permute(0, 2, 1, 3).reshape(B * N, S, -1))
            flows = (coords - coords[:, :1]).permute(0, 2, 1, 3).reshape(B * N, S, 2)
            flows_emb = torch.cat((flow_embed(flows, self.latent_dim // 2), flows / self.max_scale,
                                   flows / self.max_scale), dim=-1)
            feats_ = feats.permute(0, 2, 1, 3).reshape(B * N, S, C)
            x = torch.cat((flows_emb, corr, feats_), dim=2) + pos + ref.to(flows.dtype)
            delta = self.updateformer(x.reshape(B, N, S, -1)).reshape(B * N * S, -1)
            feats_ = self.ffeat_updater(self.ffeat_norm(delta[:, 2:])) + feats_.reshape(B * N * S, C)
            feats = feats_.reshape(B, N, S, C).permute(0, 2, 1, 3)
            coords = coords + delta[:, :2].reshape(B, N, S, 2).permute(0, 2, 1, 3)
            coords[:, 0] = query_xy  # the query view's positions are given, not estimated
            tracks.append(coords * self.stride)
        flat = feats.reshape(B * S * N, C)
        vis = torch.sigmoid(self.vis_predictor(flat)).reshape(B, S, N)
        conf = torch.sigmoid(self.conf_predictor(flat)).reshape(B, S, N)
        return tracks, vis, conf


class TrackHead(nn.Module):
    """Track head: a feature-only DPT at half resolution (no position
    embedding) and the iterative tracker (stride 2)."""

    def __init__(self, dim_in: int, patch_size: int, layers: Sequence[int], out_channels: Sequence[int],
                 features: int = 128, hidden: int = 384, corr_levels: int = 7, corr_radius: int = 4,
                 depth: int = 6, num_heads: int = 8, num_virtual_tracks: int = 64, iters: int = 4):
        super().__init__()
        self.iters = iters
        self.feature_extractor = DPTHead(dim_in, patch_size, features=features, out_channels=out_channels,
                                         layers=layers, pos_embed=False, feature_only=True, down_ratio=2)
        self.tracker = TrackPredictor(features, hidden, corr_levels, corr_radius, depth, num_heads,
                                      num_virtual_tracks, stride=2)

    def features(self, tokens_list, image_hw, patch_start_idx) -> Tensor:
        """Track feature maps [B, S, features, H/2, W/2]."""
        return self.feature_extractor(tokens_list, image_hw, patch_start_idx)

    def forward(self, tokens_list, image_hw, patch_start_idx, query_points: Tensor, iters: Optional[int] = None):
        """query_points [B,N,2] pixels in view 0 -> (tracks list of [B,S,N,2],
        visibility [B,S,N], confidence [B,S,N])."""
        fmaps = self.features(tokens_list, image_hw, patch_start_idx)
        return self.tracker(query_points, fmaps, iters or self.iters)
