"""Concerto: PTv3 point-cloud encoder pretraining (self-distillation + cross-modal).

``concerto.load(name_or_path, device="cpu")`` returns an ``Encoder`` whose
``embed(coord, color, normal)`` gives per-point features (see concerto.inference).
Imported lazily so ``import concerto`` stays light (no torch until used).
"""

__all__ = ["load", "Encoder"]


def __getattr__(name: str):
    if name in __all__:
        from concerto import inference

        return getattr(inference, name)
    raise AttributeError(f"module 'concerto' has no attribute {name!r}")
