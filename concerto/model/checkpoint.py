"""Checkpoints in the official layout: ``{"config": dict, "state_dict": dict}``.

Official Sonata/Concerto backbone files use the reference's PT-v3m2 keyword
names in ``config`` and its parameter names in ``state_dict``; training
checkpoints wrap them in prefixes such as ``module.``,
``student.backbone.`` or ``module.student.backbone.``, which are stripped.
Files are always read with ``torch.load(..., weights_only=True)``. This module
converts layouts and loads; it writes no files (training writes them, see
concerto.train.checkpoint.export_backbone).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from .config import PTv3Config
from .ptv3 import PointTransformerV3

# Prefixes stripped from state-dict keys, longest first.
KNOWN_PREFIXES = (
    "module.student.backbone.",
    "module.teacher.backbone.",
    "student.backbone.",
    "teacher.backbone.",
    "module.backbone.",
    "backbone.",
    "module.",
)

# name -> (Hugging Face repo id, file name) of the released backbones.
PRETRAINED = {
    "sonata": ("facebook/sonata", "sonata.pth"),
    "sonata_small": ("facebook/sonata", "sonata_small.pth"),
    "concerto_base": ("Pointcept/Concerto", "concerto_base.pth"),
    "concerto_base_siglip": ("Pointcept/Concerto", "concerto_base_siglip.pth"),
    "concerto_large": ("Pointcept/Concerto", "concerto_large.pth"),
    "concerto_large_outdoor": ("Pointcept/Concerto", "concerto_large_outdoor.pth"),
    "concerto_small": ("Pointcept/Concerto", "concerto_small.pth"),
}


class CheckpointError(ValueError):
    """A checkpoint file or dict that cannot be loaded; the message names the file and the field."""


def strip_prefix(state_dict: dict[str, torch.Tensor], prefix: str | None = None) -> dict[str, torch.Tensor]:
    """Drop ``prefix`` (or the first of KNOWN_PREFIXES that every key carries) from all keys.

    With several wrapped models in one dict (student and teacher), only keys
    under the chosen prefix are kept.
    """
    candidates = (prefix,) if prefix is not None else KNOWN_PREFIXES
    keys = list(state_dict)
    for p in candidates:
        if keys and any(k.startswith(p) for k in keys):
            # "module." alone must wrap every key; nested prefixes select a sub-model
            if p == "module." and not all(k.startswith(p) for k in keys):
                continue
            return {k[len(p):]: v for k, v in state_dict.items() if k.startswith(p)}
    return dict(state_dict)


EXPECTED = ("a file written by torch.save: an official-layout backbone {config, state_dict} (.pth), "
            "a training state.pt, or a training run folder")


def torch_file(path: Path, name: str | None = None) -> Any:
    """``torch.load(path, weights_only=True)``; a file that is not a torch file at all
    (text, an image, a PLY) is refused naming what it looks like and what was expected."""
    name = name or str(path)
    with open(path, "rb") as f:
        head = f.read(8)
    # torch.save writes a zip archive (PK..) or, in the legacy format, a pickle (protocol byte 0x80)
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):
        looks = "an empty file" if not head else (
            "a text file" if all(32 <= b < 127 or b in (9, 10, 13) for b in head) else "not a torch file")
        raise CheckpointError(f"checkpoint {name}: {looks} (starts with {head!r}); expected {EXPECTED}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, pickle with code, ...
        raise CheckpointError(f"checkpoint {name}: cannot be read as a torch file ({type(exc).__name__}: {exc}); "
                              f"expected {EXPECTED}") from exc


def read_checkpoint(source: str | os.PathLike | dict[str, Any], prefix: str | None = None) -> tuple[dict | None, dict]:
    """(config dict or None, backbone state dict with prefixes stripped) from a path or a loaded dict."""
    name = str(source) if not isinstance(source, dict) else "<dict>"
    if isinstance(source, dict):
        ckpt = source
    else:
        path = Path(source)
        if not path.is_file():
            raise CheckpointError(f"checkpoint {name}: no such file")
        ckpt = torch_file(path, name)
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"checkpoint {name}: expected a dict, got {type(ckpt).__name__}")
    if "state_dict" in ckpt:
        state, config = ckpt["state_dict"], ckpt.get("config")
    elif "model" in ckpt and isinstance(ckpt["model"], dict):
        state, config = ckpt["model"], ckpt.get("config")
    elif all(torch.is_tensor(v) for v in ckpt.values()):
        state, config = ckpt, None
    else:
        raise CheckpointError(f"checkpoint {name}: no 'state_dict' field (keys: {sorted(ckpt)[:8]})")
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise CheckpointError(f"checkpoint {name}: 'state_dict' is not a dict of tensors")
    if config is not None and not isinstance(config, dict):
        raise CheckpointError(f"checkpoint {name}: 'config' is not a dict")
    return config, strip_prefix(state, prefix)


def load_checkpoint(
    source: str | os.PathLike | dict[str, Any],
    strict: bool = True,
    config: PTv3Config | dict | None = None,
    prefix: str | None = None,
    **overrides: Any,
) -> PointTransformerV3:
    """Build a PointTransformerV3 from a checkpoint and load its weights.

    The model config comes from ``config`` if given, else the file's
    ``config`` (reference keyword names), with ``overrides`` applied on top
    (e.g. ``sparse_conv_backend="torch"``, ``drop_path=0.0``). With ``strict``
    any missing or unexpected key raises CheckpointError listing them.
    """
    name = str(source) if not isinstance(source, dict) else "<dict>"
    file_config, state = read_checkpoint(source, prefix)
    if config is None:
        if file_config is None:
            raise CheckpointError(f"checkpoint {name}: has no 'config'; pass config=")
        config = file_config
    try:
        cfg = config if isinstance(config, PTv3Config) else PTv3Config.from_dict(config)
        if overrides:
            cfg = PTv3Config.from_dict({**cfg.to_dict(), **overrides})
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {name}: bad config ({exc})") from exc
    model = PointTransformerV3(cfg)
    result = model.load_state_dict(state, strict=False)
    if strict and (result.missing_keys or result.unexpected_keys):
        raise CheckpointError(
            f"checkpoint {name}: {len(result.missing_keys)} missing keys {result.missing_keys[:5]}, "
            f"{len(result.unexpected_keys)} unexpected keys {result.unexpected_keys[:5]}"
        )
    return model


def official_layout(model: PointTransformerV3, prefix: str = "") -> dict:
    """``{"config": reference-style kwargs, "state_dict": CPU tensors}``: what an official
    backbone file holds (``torch.save`` it; concerto.train.checkpoint.export_backbone does, atomically)."""
    state = {prefix + k: v.detach().cpu() for k, v in model.state_dict().items()}
    return {"config": model.config.to_dict(), "state_dict": state}


def pretrained_location(name: str) -> tuple[str, str]:
    """(Hugging Face repo id, file name) of a released backbone, e.g. ``"concerto_large"``."""
    if name not in PRETRAINED:
        raise KeyError(f"unknown pretrained model {name!r}; known: {sorted(PRETRAINED)}")
    return PRETRAINED[name]


def load_pretrained(name: str, cache_dir: str | None = None, strict: bool = True, **overrides: Any) -> PointTransformerV3:
    """Download (via huggingface_hub) and load a released backbone such as ``"sonata"``.

    The weights are CC-BY-NC. ``overrides`` are applied to the file's config.
    """
    return load_checkpoint(pretrained_file(name, cache_dir), strict=strict, **overrides)


def _hub_reachable(endpoint: str, timeout_s: float) -> str | None:
    """None when a TCP connection to the hub's host opens within ``timeout_s``,
    else why not (one line)."""
    import socket
    from urllib.parse import urlparse

    url = urlparse(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout_s).close()
    except OSError as exc:
        return f"{url.hostname}:{port} cannot be reached ({type(exc).__name__}: {exc})"
    return None


def pretrained_file(name: str, cache_dir: str | None = None, timeout_s: float = 3.0) -> str:
    """The local path of released backbone ``name``: from the Hugging Face cache, else
    downloaded. Offline (``HF_HUB_OFFLINE`` set, or the hub's host not reachable
    within ``timeout_s``) a file not in the cache fails at once, not after the
    hub client's retries."""
    repo_id, filename = pretrained_location(name)
    from huggingface_hub import constants, hf_hub_download  # noqa: PLC0415 - optional network path
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return hf_hub_download(repo_id=repo_id, filename=filename, repo_type="model", cache_dir=cache_dir,
                               local_files_only=True)
    except LocalEntryNotFoundError:
        pass
    why = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else _hub_reachable(constants.ENDPOINT, timeout_s)
    if why is not None:
        raise CheckpointError(f"released weights '{name}' ({repo_id}/{filename}) are not in the Hugging Face cache "
                              f"({cache_dir or constants.HF_HUB_CACHE}) and {why}; download them where the hub is reachable "
                              f"(the cache folder can be copied) or pass the path of a local backbone file")
    return hf_hub_download(repo_id=repo_id, filename=filename, repo_type="model", cache_dir=cache_dir)
