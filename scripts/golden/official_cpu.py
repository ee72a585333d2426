"""Import pieces of the official Pointcept code on a CPU-only machine (golden fixtures).

Run only with the separate official venv (see /work/official/README.txt), never by
the suite. What it changes, and why:

- package ``__init__`` files of ``pointcept``, ``pointcept.models``,
  ``pointcept.datasets`` ... import every model and dataset (dozens of optional
  dependencies); they are registered as empty packages so only the modules asked
  for are imported;
- ``timm.layers`` (DropPath, trunc_normal_), ``transformers`` (AutoModel, never
  called: the 2D encoder's output is fed in), ``pointops`` (k-nearest query, a CUDA
  extension: brute force here, same results) and ``pointcept.engines.hooks``
  (HookBase) get small stand-ins;
- spconv convolutions default to ``ConvAlgo.Native`` (the others need CUDA), and
  in eval mode the bias is added outside the convolution (spconv fuses it in a
  CUDA-only kernel);
- torchvision (data-side fixtures only; an extra --target install) is imported
  without registering its compiled ops, which do not load against this torch;
- ``Tensor.cuda`` returns the tensor (the official forward moves a few constants to
  the GPU).
"""
from __future__ import annotations

import sys
import types
from pathlib import Path

import torch
from torch import nn


def _package(name: str, path: Path | None = None) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__path__ = [str(path)] if path is not None else []
    sys.modules[name] = mod
    return mod


class DropPath(nn.Module):
    """Stochastic depth per sample (as timm's)."""

    def __init__(self, drop_prob: float = 0.0, scale_by_keep: bool = True):
        super().__init__()
        self.drop_prob, self.scale_by_keep = drop_prob, scale_by_keep

    def forward(self, x):
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * (mask / keep if self.scale_by_keep else mask)


def _knn_query(k, xyz, offset, new_xyz, new_offset):
    """pointops.knn_query: for each query point, its k nearest reference points of
    the same batch segment; returns (idx int [M,k], distance [M,k])."""
    idx, dist = [], []
    s0 = q0 = 0
    for s1, q1 in zip(offset.tolist(), new_offset.tolist()):
        d = torch.cdist(new_xyz[q0:q1].double(), xyz[s0:s1].double())
        v, i = d.topk(k, dim=1, largest=False)
        idx.append(i + s0)
        dist.append(v.float())
        s0, q0 = s1, q1
    return torch.cat(idx).int(), torch.cat(dist)


def stub_timm() -> None:
    """``timm.layers`` with DropPath and trunc_normal_ (timm itself pulls a CUDA torch)."""
    timm = _package("timm")
    layers = types.ModuleType("timm.layers")
    layers.DropPath = DropPath
    layers.trunc_normal_ = nn.init.trunc_normal_
    sys.modules["timm.layers"] = layers
    timm.layers = layers


def setup(pointcept_root: str | Path) -> None:
    root = Path(pointcept_root)
    sys.path.insert(0, str(root))
    stub_timm()
    tr = types.ModuleType("transformers")

    class AutoModel:  # never loads anything: the fixture feeds the 2D features
        @staticmethod
        def from_pretrained(*a, **k):
            raise RuntimeError("no 2D encoder in the golden fixture")

    tr.AutoModel = AutoModel
    sys.modules["transformers"] = tr
    # torchvision's compiled ops (nms, ...) do not load against this torch; the transforms
    # used here (ToTensor, Resize on PIL images, GaussianBlur, Normalize, crop) are pure
    # Python, so skip only the registration of the compiled ops' meta kernels
    sys.modules["torchvision._meta_registrations"] = types.ModuleType("torchvision._meta_registrations")
    termcolor = types.ModuleType("termcolor")  # logger colours only
    termcolor.colored = lambda text, *a, **k: text
    sys.modules.setdefault("termcolor", termcolor)
    pointops = types.ModuleType("pointops")
    pointops.knn_query = _knn_query
    sys.modules["pointops"] = pointops

    pkg = root / "pointcept"
    for name, sub in (("pointcept", ""), ("pointcept.models", "models"), ("pointcept.datasets", "datasets"),
                      ("pointcept.engines", "engines"),
                      ("pointcept.models.point_transformer_v3", "models/point_transformer_v3"),
                      ("pointcept.models.concerto", "models/concerto"),
                      ("pointcept.models.sonata", "models/sonata"), ("pointcept.utils", "utils")):
        _package(name, pkg / sub if sub else pkg)
    hooks = types.ModuleType("pointcept.engines.hooks")

    class HookBase:
        trainer = None

    hooks.HookBase = HookBase
    sys.modules["pointcept.engines.hooks"] = hooks

    torch.Tensor.cuda = lambda self, *a, **k: self  # constants moved to the GPU stay here
    spconv_on_cpu()


def spconv_on_cpu() -> None:
    """Every sparse conv with ``ConvAlgo.Native``; in eval the bias added outside the conv."""
    import spconv.pytorch as spconv
    from spconv.core import ConvAlgo
    from spconv.pytorch.conv import SparseConvolution

    init = SparseConvolution.__init__

    def native_init(self, *args, **kwargs):
        kwargs["algo"] = ConvAlgo.Native
        init(self, *args, **kwargs)

    SparseConvolution.__init__ = native_init
    forward = SparseConvolution.forward

    def cpu_forward(self, input, *args, **kwargs):
        if self.training or self.bias is None:
            return forward(self, input, *args, **kwargs)
        bias = self.bias
        self.bias = None
        try:
            out = forward(self, input, *args, **kwargs)
        finally:
            self.bias = bias
        return out.replace_feature(out.features + bias)

    SparseConvolution.forward = cpu_forward
    del spconv


def setup_sonata(sonata_root: str | Path) -> None:
    """Import ``sonata.transform`` without the package ``__init__`` (it loads the model code)."""
    _package("sonata", Path(sonata_root) / "sonata")


def official_commit(root: str | Path) -> str:
    """The pinned commit recorded next to the official tree (README.txt), or 'unknown'."""
    readme = Path(root).parent / "README.txt"
    if readme.is_file():
        for line in readme.read_text().splitlines():
            if line.startswith("Pointcept/Pointcept"):
                return line.split()[-1]
    return "unknown"
