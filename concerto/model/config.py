"""Configuration of the PTv3 encoder (reference PT-v3m2 keyword names)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .serialization import ORDERS

# Reference keywords this implementation accepts but that do not change the
# function (kernel choice, bookkeeping); recorded so official configs load.
_ACCEPTED_NOOP_KEYS = ("enable_flash", "upcast_attention", "upcast_softmax", "traceable", "type")

# Size presets: name -> the fields that differ from the dataclass defaults (base).
# The one table of them: PTv3Config.preset / .base / .large / .tiny, training's
# ``model.preset`` and concerto.inference read it.
PRESETS: dict[str, dict[str, Any]] = {
    # Concerto/Sonata base: 5 stages, channels 48..512, depths (3,3,3,12,3), patch 1024
    "base": {},
    # Concerto large: channels (64,128,256,512,768), heads (4,8,16,32,48)
    "large": dict(enc_channels=(64, 128, 256, 512, 768), enc_num_head=(4, 8, 16, 32, 48)),
    # a few-thousand-parameter model for tests
    "tiny": dict(
        enc_depths=(1, 1, 1, 1, 1),
        enc_channels=(16, 16, 32, 32, 64),
        enc_num_head=(2, 2, 2, 2, 4),
        enc_patch_size=(64, 64, 64, 64, 64),
        dec_depths=(1, 1, 1, 1),
        dec_channels=(16, 16, 32, 32),
        dec_num_head=(2, 2, 2, 2),
        dec_patch_size=(64, 64, 64, 64),
        drop_path=0.0,
    ),
}

# How the input colour channels were scaled in training (concerto.ssl.views.scale_color).
COLOR_RANGES = ("unit", "symmetric")


@dataclass
class PTv3Config:
    """Point Transformer V3 (PT-v3m2, as used by Sonata and Concerto).

    Per-stage tuples have ``num_stages`` entries (``stride`` one fewer).
    ``sparse_conv_backend`` / ``attention_backend`` pick kernels at run time and
    do not change the function.
    """

    in_channels: int = 9
    order: tuple[str, ...] = ("z", "z-trans", "hilbert", "hilbert-trans")
    stride: tuple[int, ...] = (2, 2, 2, 2)
    enc_depths: tuple[int, ...] = (3, 3, 3, 12, 3)
    enc_channels: tuple[int, ...] = (48, 96, 192, 384, 512)
    enc_num_head: tuple[int, ...] = (3, 6, 12, 24, 32)
    enc_patch_size: tuple[int, ...] = (1024, 1024, 1024, 1024, 1024)
    dec_depths: tuple[int, ...] = (3, 3, 3, 3)
    dec_channels: tuple[int, ...] = (96, 96, 192, 384)
    dec_num_head: tuple[int, ...] = (6, 6, 12, 32)
    dec_patch_size: tuple[int, ...] = (1024, 1024, 1024, 1024)
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    qk_scale: float | None = None
    attn_drop: float = 0.0
    proj_drop: float = 0.0
    drop_path: float = 0.3
    layer_scale: float | None = None
    pre_norm: bool = True
    shuffle_orders: bool = True
    enable_rpe: bool = False
    mask_token: bool = True
    enc_mode: bool = True
    freeze_encoder: bool = False
    grid_size: float = 0.02
    sparse_conv_backend: str = "auto"
    attention_backend: str = "auto"
    # how training fed the colour channels: "unit" colour / 255 (released), "symmetric"
    # colour / 127.5 - 1 (older runs); recorded so checkpoints and exports carry it
    # (a file without it: "unit"), read by concerto.inference. Not a reference keyword.
    input_color_range: str = "unit"
    # reference keywords kept only so a checkpoint's config round-trips
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("order", "stride", "enc_depths", "enc_channels", "enc_num_head", "enc_patch_size",
                     "dec_depths", "dec_channels", "dec_num_head", "dec_patch_size"):
            value = getattr(self, name)
            setattr(self, name, (value,) if isinstance(value, (str, int)) else tuple(value))
        self.validate()

    @property
    def num_stages(self) -> int:
        return len(self.enc_depths)

    def validate(self) -> None:
        """Raise ValueError naming the first inconsistent field."""
        s = self.num_stages
        for name in ("enc_channels", "enc_num_head", "enc_patch_size"):
            if len(getattr(self, name)) != s:
                raise ValueError(f"PTv3Config.{name} has {len(getattr(self, name))} entries, expected {s}")
        if len(self.stride) != s - 1:
            raise ValueError(f"PTv3Config.stride has {len(self.stride)} entries, expected {s - 1}")
        if not self.enc_mode:
            for name in ("dec_depths", "dec_channels", "dec_num_head", "dec_patch_size"):
                if len(getattr(self, name)) != s - 1:
                    raise ValueError(f"PTv3Config.{name} has {len(getattr(self, name))} entries, expected {s - 1}")
            for i, (c, h) in enumerate(zip(self.dec_channels, self.dec_num_head)):
                if c % h:
                    raise ValueError(f"PTv3Config.dec_channels[{i}]={c} not divisible by dec_num_head[{i}]={h}")
        for i, (c, h) in enumerate(zip(self.enc_channels, self.enc_num_head)):
            if c % h:
                raise ValueError(f"PTv3Config.enc_channels[{i}]={c} not divisible by enc_num_head[{i}]={h}")
        bad = [o for o in self.order if o not in ORDERS]
        if bad or not self.order:
            raise ValueError(f"PTv3Config.order has unknown curves {bad}; expected names from {ORDERS}")
        if self.enable_rpe:
            raise ValueError("PTv3Config.enable_rpe=True (relative position bias) is not supported")
        if self.sparse_conv_backend not in ("auto", "torch", "spconv"):
            raise ValueError(f"PTv3Config.sparse_conv_backend={self.sparse_conv_backend!r}")
        if self.attention_backend not in ("auto", "sdpa", "flash"):
            raise ValueError(f"PTv3Config.attention_backend={self.attention_backend!r}")
        if self.input_color_range not in COLOR_RANGES:
            raise ValueError(f"PTv3Config.input_color_range={self.input_color_range!r}; expected one of {COLOR_RANGES}")
        if self.in_channels < 1:
            raise ValueError(f"PTv3Config.in_channels must be >= 1, got {self.in_channels}")

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "PTv3Config":
        """The size preset ``name`` (a key of ``PRESETS``) with ``overrides`` on top;
        ValueError naming the known presets for another name."""
        if name not in PRESETS:
            raise ValueError(f"PTv3Config: unknown preset {name!r}; expected one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    @classmethod
    def base(cls, **overrides: Any) -> "PTv3Config":
        """Concerto/Sonata base: 5 stages, channels 48..512, depths (3,3,3,12,3), patch 1024."""
        return cls.preset("base", **overrides)

    @classmethod
    def large(cls, **overrides: Any) -> "PTv3Config":
        """Concerto large: channels (64,128,256,512,768), heads (4,8,16,32,48)."""
        return cls.preset("large", **overrides)

    @classmethod
    def tiny(cls, **overrides: Any) -> "PTv3Config":
        """A few-thousand-parameter model for tests."""
        return cls.preset("tiny", **overrides)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PTv3Config":
        """Build from a dict with the reference's keyword names (a checkpoint's ``config``).

        Unknown keys raise ValueError; reference keywords that only select
        kernels (``enable_flash``, ``upcast_*``, ``traceable``) are kept in ``extra``.
        """
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        kw, extra = {}, dict(d.get("extra", {}))
        for key, value in d.items():
            if key == "extra":
                continue
            if key in names:
                kw[key] = value
            elif key in _ACCEPTED_NOOP_KEYS:
                extra[key] = value
            else:
                raise ValueError(f"PTv3Config: unknown key {key!r}")
        return cls(**kw, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (lists, no tuples) that ``from_dict`` reads back; ``extra`` is flattened in."""
        d = dataclasses.asdict(self)
        extra = d.pop("extra")
        d = {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
        d.update(extra)
        return d
