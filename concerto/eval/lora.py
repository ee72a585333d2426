"""Low-rank adapters (LoRA) on the encoder's Linear layers, through the ``peft`` library.

The reference LoRA fine-tuning (Pointcept ``DefaultLORASegmentorV2``: rank 8,
alpha 16, dropout 0.1) adapts the ``qkv`` projections of the encoder's
attention; ``targets`` may add ``proj`` (attention output), ``fc1`` / ``fc2``
(MLP). Only ``enc.enc*.block*`` layers are adapted (pooling also has a ``proj``).

Each adapted Linear computes ``W x + b + (alpha / rank) * B(A(dropout(x)))``
with A [rank, in] random and B [out, rank] zero at the start, so an untrained
adapter changes nothing. ``merge_lora`` folds ``(alpha / rank) * B @ A`` into
``W`` and puts plain ``nn.Linear`` modules back: the result has the original
module tree and state-dict keys (the official checkpoint layout).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

# suffix of the module name inside an encoder block -> what it is
TARGETS = {"qkv": "attn.qkv", "proj": "attn.proj", "fc1": "mlp.0.fc1", "fc2": "mlp.0.fc2"}


def target_pattern(targets: Sequence[str]) -> str:
    """peft ``target_modules`` regex (full match on module names) for ``targets`` in encoder blocks."""
    bad = [t for t in targets if t not in TARGETS]
    if bad or not targets:
        raise ValueError(f"LoRA targets {list(bad) or list(targets)}: expected some of {sorted(TARGETS)}")
    alts = "|".join(TARGETS[t].replace(".", r"\.") for t in targets)
    return rf"(.*\.)?enc\.enc\d+\.block\d+\.({alts})"


def add_lora(backbone: nn.Module, rank: int = 8, alpha: float = 16.0, targets: Sequence[str] = ("qkv",),
             dropout: float = 0.1) -> int:
    """Wrap ``backbone``'s target Linears with LoRA adapters in place; returns how many were wrapped.

    Only the adapters' ``lora_A`` / ``lora_B`` parameters require grad afterwards
    (everything else in ``backbone`` is frozen).
    """
    from peft import LoraConfig, inject_adapter_in_model

    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}")
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, bias="none",
                        target_modules=target_pattern(targets))
    inject_adapter_in_model(config, backbone)
    wrapped = len(lora_layers(backbone))
    if wrapped == 0:
        raise ValueError(f"LoRA targets {list(targets)} matched no Linear of the encoder")
    for name, p in backbone.named_parameters():
        p.requires_grad_("lora_" in name)
    return wrapped


def lora_layers(module: nn.Module) -> dict[str, nn.Module]:
    """{name: peft LoRA layer} inside ``module``."""
    from peft.tuners.lora import LoraLayer

    return {n: m for n, m in module.named_modules() if isinstance(m, LoraLayer)}


def lora_parameters(module: nn.Module) -> dict[str, nn.Parameter]:
    """{name: adapter parameter} (lora_A / lora_B weights) of ``module``."""
    return {n: p for n, p in module.named_parameters() if "lora_" in n}


@torch.no_grad()
def merge_lora(module: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight and replace the wrapper by the base Linear, in place."""
    for name, layer in sorted(lora_layers(module).items(), key=lambda kv: -kv[0].count(".")):
        layer.merge()
        base = layer.get_base_layer()
        parent_name, _, child = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, child, base)
    return module
