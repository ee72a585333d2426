"""Our implementation of VGGT (Wang et al. 2025, facebookresearch/vggt).

``VGGT(config)`` has exactly the submodules and parameter names of the official
``facebook/VGGT-1B`` checkpoint, so ``load_vggt`` loads it with zero missing and
zero unexpected keys. ``VGGTConfig()`` holds the official 1B values;
``VGGTConfig.tiny()`` is a small configuration of the same classes for tests.

Input: images [S, 3, H, W] or [B, S, 3, H, W] in [0, 1], H and W multiples of
the patch size (518 px wide for the released model). Output (``VGGTOutput``):
pose encoding [B, S, 9] (translation, quaternion xyzw, fov_h, fov_w, of the
camera-from-world transform in OpenCV axes, world = first camera), depth and
confidence [B, S, H, W], optional world points [B, S, H, W, 3] and confidence.
On CUDA the aggregator runs under bf16 autocast; the heads always run in fp32.

Checked against the official code (facebookresearch/vggt, commit 44b3afb): the
1B model's state-dict keys, shapes and order are identical, and with the same
random weights at tiny sizes every output (tokens, pose encoding, depth, points,
confidences, track features) is bit-identical on CPU
(``tests/test_vggt.py::test_matches_the_official_implementation_when_installed``
runs that comparison wherever the official package is importable). Point
tracking (``query_points``) is implemented too; the lifter does not use it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from preprocess.lift.vggt_heads import CameraHead, DPTHead, TrackHead
from preprocess.lift.vggt_layers import Block, DinoV2Encoder, Rope2D, grid_positions

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class VGGTConfig:
    """Architecture hyper-parameters. Defaults are the released VGGT-1B."""

    img_size: int = 518
    patch_size: int = 14
    embed_dim: int = 1024  # width of the DINOv2 encoder and of the aggregator
    depth: int = 24  # frame/global block pairs
    num_heads: int = 16
    mlp_ratio: float = 4.0
    num_register_tokens: int = 4
    rope_freq: float = 100.0
    init_values: float = 0.01
    dino_depth: int = 24  # ViT-L/14 with registers
    dino_heads: int = 16
    camera_trunk_depth: int = 4
    camera_heads: int = 16
    dpt_features: int = 256
    dpt_out_channels: tuple = (256, 512, 1024, 1024)
    dpt_layers: tuple = (4, 11, 17, 23)
    track_features: int = 128
    track_hidden: int = 384
    track_corr_levels: int = 7
    track_corr_radius: int = 4
    track_depth: int = 6
    track_heads: int = 8
    track_virtual_tracks: int = 64
    enable_camera: bool = True
    enable_depth: bool = True
    enable_point: bool = True
    enable_track: bool = True

    @staticmethod
    def tiny() -> "VGGTConfig":
        """Same classes, tiny sizes: 28 px square position table, patch 7,
        width 32, 2 block pairs, 2 heads (head dim 16, RoPE-compatible)."""
        return VGGTConfig(
            img_size=28, patch_size=7, embed_dim=32, depth=2, num_heads=2, num_register_tokens=2,
            dino_depth=1, dino_heads=2, camera_trunk_depth=1, camera_heads=2, dpt_features=16,
            dpt_out_channels=(8, 16, 32, 32), dpt_layers=(0, 0, 1, 1), track_features=8, track_hidden=16,
            track_corr_levels=2, track_corr_radius=1, track_depth=1, track_heads=2, track_virtual_tracks=4,
        )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class VGGTOutput:
    """Predictions for B sequences of S views at H x W (image resolution)."""

    pose_enc: Optional[Tensor] = None  # [B, S, 9] last refinement iteration
    pose_enc_list: list = field(default_factory=list)
    depth: Optional[Tensor] = None  # [B, S, H, W] z-depth, units of the first camera's frame
    depth_conf: Optional[Tensor] = None  # [B, S, H, W] >= 1
    world_points: Optional[Tensor] = None  # [B, S, H, W, 3]
    world_points_conf: Optional[Tensor] = None  # [B, S, H, W]
    track: Optional[Tensor] = None  # [B, S, N, 2] pixels (last iteration), with query_points
    track_list: list = field(default_factory=list)
    track_vis: Optional[Tensor] = None  # [B, S, N] in (0, 1)
    track_conf: Optional[Tensor] = None  # [B, S, N] in (0, 1)


class Aggregator(nn.Module):
    """Alternating-attention trunk.

    Per view: DINOv2 patch tokens, prefixed with one camera token and R register
    tokens (one learned set for the first view, another for the rest). Then
    ``depth`` rounds of a frame block (attention within a view) and a global
    block (attention across all S views' tokens); both use 2D RoPE on patch
    tokens (positions start at 1, special tokens sit at position 0). Returns,
    per round, the frame and global outputs concatenated: [B, S, P, 2C].
    """

    def __init__(self, cfg: VGGTConfig):
        super().__init__()
        C = cfg.embed_dim
        self.patch_size = cfg.patch_size
        self.patch_embed = DinoV2Encoder(cfg.img_size, cfg.patch_size, C, cfg.dino_depth, cfg.dino_heads,
                                         cfg.num_register_tokens, cfg.mlp_ratio, init_values=1.0)
        self.rope = Rope2D(cfg.rope_freq) if cfg.rope_freq > 0 else None

        def make_block():
            return Block(C, cfg.num_heads, cfg.mlp_ratio, init_values=cfg.init_values, qk_norm=True, rope=self.rope)

        self.frame_blocks = nn.ModuleList([make_block() for _ in range(cfg.depth)])
        self.global_blocks = nn.ModuleList([make_block() for _ in range(cfg.depth)])
        # index 0: the first view's token, index 1: every other view's
        self.camera_token = nn.Parameter(torch.randn(1, 2, 1, C) * 1e-6)
        self.register_token = nn.Parameter(torch.randn(1, 2, cfg.num_register_tokens, C) * 1e-6)
        self.patch_start_idx = 1 + cfg.num_register_tokens
        self.reset_constants()

    def reset_constants(self, device=None) -> None:
        """(Re)create the non-persistent normalisation buffers (needed after
        building on the meta device and loading weights with ``assign``)."""
        self.register_buffer("_mean", torch.tensor(IMAGENET_MEAN, device=device).view(1, 1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(IMAGENET_STD, device=device).view(1, 1, 3, 1, 1), persistent=False)

    @staticmethod
    def _per_view(token: Tensor, B: int, S: int) -> Tensor:
        """[1, 2, X, C] -> [B*S, X, C]: entry 0 for view 0, entry 1 for the rest."""
        first = token[:, :1].expand(B, 1, *token.shape[2:])
        rest = token[:, 1:].expand(B, S - 1, *token.shape[2:])
        return torch.cat((first, rest), dim=1).reshape(B * S, *token.shape[2:])

    def forward(self, images: Tensor) -> tuple[list[Tensor], int]:
        B, S, C_in, H, W = images.shape
        if C_in != 3:
            raise ValueError(f"expected 3 image channels, got {C_in}")
        x = ((images - self._mean) / self._std).reshape(B * S, 3, H, W)
        patches = self.patch_embed(x)
        special = [self._per_view(self.camera_token, B, S), self._per_view(self.register_token, B, S)]
        tokens = torch.cat([t.to(patches.dtype) for t in special] + [patches], dim=1)
        _, P, C = tokens.shape

        pos = None
        if self.rope is not None:
            gh, gw = H // self.patch_size, W // self.patch_size
            pos = grid_positions(B * S, gh, gw, images.device) + 1
            pos = torch.cat((torch.zeros(B * S, self.patch_start_idx, 2, dtype=pos.dtype, device=pos.device), pos), dim=1)

        outputs = []
        for frame_block, global_block in zip(self.frame_blocks, self.global_blocks):
            tokens = frame_block(tokens.reshape(B * S, P, C), pos=pos)
            frame_out = tokens.reshape(B, S, P, C)
            gpos = None if pos is None else pos.reshape(B, S * P, 2)
            tokens = global_block(tokens.reshape(B, S * P, C), pos=gpos)
            global_out = tokens.reshape(B, S, P, C)
            outputs.append(torch.cat((frame_out, global_out), dim=-1))
        return outputs, self.patch_start_idx


class VGGT(nn.Module):
    """VGGT: aggregator + camera head + depth DPT + point DPT + track head."""

    def __init__(self, config: Optional[VGGTConfig] = None):
        super().__init__()
        cfg = config or VGGTConfig()
        self.config = cfg
        dim_in = 2 * cfg.embed_dim
        self.aggregator = Aggregator(cfg)
        dpt = dict(patch_size=cfg.patch_size, features=cfg.dpt_features, out_channels=cfg.dpt_out_channels,
                   layers=cfg.dpt_layers)
        self.camera_head = (CameraHead(dim_in, cfg.camera_trunk_depth, cfg.camera_heads, cfg.mlp_ratio)
                            if cfg.enable_camera else None)
        self.point_head = DPTHead(dim_in, output_dim=4, activation="inv_log", **dpt) if cfg.enable_point else None
        self.depth_head = DPTHead(dim_in, output_dim=2, activation="exp", **dpt) if cfg.enable_depth else None
        self.track_head = (TrackHead(dim_in, cfg.patch_size, cfg.dpt_layers, cfg.dpt_out_channels,
                                     features=cfg.track_features, hidden=cfg.track_hidden,
                                     corr_levels=cfg.track_corr_levels, corr_radius=cfg.track_corr_radius,
                                     depth=cfg.track_depth, num_heads=cfg.track_heads,
                                     num_virtual_tracks=cfg.track_virtual_tracks)
                           if cfg.enable_track else None)

    def forward(self, images: Tensor, with_points: bool = True, with_depth: bool = True,
                autocast_dtype: Optional[torch.dtype] = None, query_points: Optional[Tensor] = None) -> VGGTOutput:
        """images [S,3,H,W] or [B,S,3,H,W] in [0,1]. ``autocast_dtype`` defaults to
        bf16 on CUDA and None (fp32) elsewhere; the heads run in fp32.
        ``query_points`` [N,2] or [B,N,2] pixels (x, y) in view 0: also track them."""
        if images.ndim == 4:
            images = images[None]
        if query_points is not None and query_points.ndim == 2:
            query_points = query_points[None]
        if images.ndim != 5:
            raise ValueError(f"expected images [S,3,H,W] or [B,S,3,H,W], got {list(images.shape)}")
        H, W = images.shape[-2:]
        p = self.config.patch_size
        if H % p or W % p:
            raise ValueError(f"image size {H}x{W} must be a multiple of the patch size {p}")
        device_type = images.device.type
        if autocast_dtype is None and device_type == "cuda":
            autocast_dtype = torch.bfloat16
        with torch.autocast(device_type=device_type, dtype=autocast_dtype or torch.float32,
                            enabled=autocast_dtype is not None):
            tokens, start = self.aggregator(images)
        with torch.autocast(device_type=device_type, enabled=False):
            tokens = [t.float() for t in tokens]
            out = VGGTOutput()
            if self.camera_head is not None:
                out.pose_enc_list = self.camera_head(tokens)
                out.pose_enc = out.pose_enc_list[-1]
            if self.depth_head is not None and with_depth:
                depth, out.depth_conf = self.depth_head(tokens, (H, W), start)
                out.depth = depth[..., 0]
            if self.point_head is not None and with_points:
                out.world_points, out.world_points_conf = self.point_head(tokens, (H, W), start)
            if query_points is not None:
                if self.track_head is None:
                    raise ValueError("query_points given but the track head is disabled")
                out.track_list, out.track_vis, out.track_conf = self.track_head(tokens, (H, W), start,
                                                                                query_points.float())
                out.track = out.track_list[-1]
        return out


# --- checkpoint loading -----------------------------------------------------

CHECKPOINT_FILES = ("model.safetensors", "model.pt")


class CheckpointError(RuntimeError):
    """A checkpoint that does not fit the model; names the file and the keys."""


def read_state_dict(path: str | Path) -> dict:
    """Tensors of a ``.safetensors`` or torch (``weights_only``) checkpoint.
    Accepts a bare state dict or one wrapped under "model"/"state_dict"."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}': file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            # mmap: the 5 GB checkpoint is not copied into memory a second time
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # corrupt/truncated file: say which
        raise CheckpointError(f"checkpoint '{path}': cannot be read ({type(e).__name__}: {e})") from e
    for wrapper in ("model", "state_dict"):
        if isinstance(state, dict) and wrapper in state and isinstance(state[wrapper], dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"checkpoint '{path}': not a state dict of tensors")
    return state


def resolve_checkpoint(name_or_path: str | Path) -> Path:
    """A local file, a directory holding model.safetensors/model.pt, or a Hugging
    Face repo id (downloaded with huggingface_hub, safetensors preferred)."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    if p.is_dir():
        for fname in CHECKPOINT_FILES:
            if (p / fname).is_file():
                return p / fname
        raise CheckpointError(f"checkpoint directory '{p}': none of {', '.join(CHECKPOINT_FILES)} found")
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as e:
        raise CheckpointError(f"'{name_or_path}' is not a local file and huggingface_hub is not installed") from e
    errors = []
    for fname in CHECKPOINT_FILES:
        try:
            return Path(hf_hub_download(repo_id=str(name_or_path), filename=fname))
        except Exception as e:  # offline, missing file, gated repo ...
            errors.append(f"{fname}: {type(e).__name__}: {e}")
    raise CheckpointError(f"cannot fetch '{name_or_path}' from the Hugging Face hub: " + "; ".join(errors))


def load_vggt(name_or_path: str | Path = "facebook/VGGT-1B", config: Optional[VGGTConfig] = None,
              device: str | torch.device = "cpu", strict: bool = True) -> VGGT:
    """Build ``VGGT(config)`` and load the checkpoint into it (eval mode).

    With ``strict`` any missing or unexpected key, or a shape mismatch, raises
    ``CheckpointError`` listing them."""
    path = resolve_checkpoint(name_or_path)
    state = read_state_dict(path)
    if strict:
        # every parameter comes from the checkpoint: build without allocating
        # (meta device) and take the loaded tensors as they are
        model = build_on_meta(config)
        check_state_dict(model, state, source=str(path), strict=True)
        model.load_state_dict(state, strict=True, assign=True)
        model.aggregator.reset_constants()
    else:
        model = VGGT(config)
        check_state_dict(model, state, source=str(path), strict=False)
        model.load_state_dict(state, strict=False)
    return model.to(device).eval()


def check_state_dict(model: nn.Module, state: dict, source: str = "state dict", strict: bool = True) -> None:
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: checkpoint {list(state[k].shape)} vs model {list(own[k].shape)}"
              for k in sorted(set(own) & set(state)) if tuple(own[k].shape) != tuple(state[k].shape)]
    problems = []
    if shapes:
        problems.append(f"{len(shapes)} shape mismatches ({'; '.join(shapes[:5])})")
    if strict and missing:
        problems.append(f"{len(missing)} missing keys ({', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''})")
    if strict and unexpected:
        problems.append(f"{len(unexpected)} unexpected keys ({', '.join(unexpected[:5])}{' ...' if len(unexpected) > 5 else ''})")
    if problems:
        raise CheckpointError(f"checkpoint '{source}' does not fit VGGT: " + "; ".join(problems))


def state_dict_shapes(model: nn.Module) -> dict[str, tuple]:
    """{key: shape} of a model's state dict (works on the meta device)."""
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def build_on_meta(config: Optional[VGGTConfig] = None) -> VGGT:
    """The model with meta tensors: names and shapes without memory."""
    with torch.device("meta"):
        return VGGT(config)


def key_names(model: nn.Module) -> Sequence[str]:
    return list(model.state_dict().keys())
