"""Point Transformer V3 encoder (PT-v3m2 as used by Sonata and Concerto).

Typical use::

    from concerto.model import PointTransformerV3, PTv3Config, Point, upcast

    model = PointTransformerV3(PTv3Config.base())
    point = Point(coord=coord, feat=feat, grid_size=0.02, offset=offset)
    # coord float [N, 3] metres; feat float [N, 9] (coord, color, normal);
    # offset int64 [B] cumulative end index of each sample (or batch [N]);
    # optional mask bool [N] -> those points get the learnable mask token.
    out = model(point)              # deepest stage (stage 4 of 5 for base)
    feats = upcast(out, levels=2)   # stage-2 Point, feat = 192 + 384 + 512 = 1088 ch
    per_input = feats.feat[feats.index_to_input()]   # one row per input point

- Input without ``grid_coord`` is grid-sampled inside the model at
  ``grid_size`` (default 0.02 m): a random point per voxel in train mode, the
  first in eval mode (``grid_sample_mode=`` overrides). The first-stage Point
  keeps ``grid_sample_inverse``; every pooled Point keeps ``pooling_parent``
  and ``pooling_inverse``; ``Point.index_to_input()`` composes them.
- Curves: ``model(point, orders=[...])`` fixes the serialization orders (one
  list for all stages or one per stage) instead of shuffling them as the
  reference does; the used names are in each stage's ``Point.order``.
- Backends chosen at run time, same function and parameters:
  ``sparse_conv_backend`` "auto" | "torch" | "spconv" and
  ``attention_backend`` "auto" | "sdpa" | "flash" (config fields).
- Checkpoints: ``official_layout(model)`` (the dict to save) /
  ``load_checkpoint(path)`` use the official ``{"config", "state_dict"}`` layout
  and key names (files are written by concerto.train.checkpoint.export_backbone);
  ``load_pretrained("sonata" | "concerto_base" | "concerto_large" | ...)``
  fetches released weights from Hugging Face (CC-BY-NC).
"""

from .checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_pretrained,
    official_layout,
    pretrained_location,
    read_checkpoint,
)
from .config import PTv3Config
from .grid_sample import grid_sample
from .point import Point
from .pooling import upcast
from .ptv3 import PointTransformerV3

__all__ = [
    "CheckpointError",
    "PTv3Config",
    "Point",
    "PointTransformerV3",
    "grid_sample",
    "load_checkpoint",
    "load_pretrained",
    "official_layout",
    "pretrained_location",
    "read_checkpoint",
    "upcast",
]
