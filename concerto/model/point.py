"""The batched point-cloud record that flows through the encoder.

A ``Point`` is a dict with attribute access. Several point clouds are packed
along dimension 0; ``offset`` [B] (int64, cumulative end index of each sample,
no leading zero) and ``batch`` [N] (int64 sample index per point) describe the
packing, and either one is derived from the other.

Fields with a fixed meaning:

- ``coord`` float [N, 3]: metres.
- ``grid_size`` float: voxel edge in metres at this resolution.
- ``grid_coord`` int32 [N, 3]: voxel index, >= 0, one point per voxel.
- ``feat`` float [N, C]: features.
- ``mask`` bool [N] (optional): points whose embedding is replaced by the
  learnable mask token.
- ``order`` tuple[str]: curve names of the serializations, in the order their
  rows are stacked in ``serialized_code/order/inverse`` [k, N].
- ``serialized_depth`` int: bits per axis used by the codes.
- ``pooling_parent`` Point / ``pooling_inverse`` int64 [N_parent]: the finer
  Point this one was pooled from, and for each parent point the index of its
  voxel here.
- ``grid_sample_inverse`` int64 [N_input] (only on the first-stage Point when
  the model grid-sampled its input): for every input point, the index of the
  voxel that represents it; ``grid_sample_index`` [N]: the input row kept.
- ``sparse_conv_cache`` / ``attention_plans`` / ``attention_rows``: per-resolution
  caches (kernel maps, attention windows, window gathers composed with each
  curve order) shared by the blocks of one stage.
"""

from __future__ import annotations

from typing import Any, Iterator

import torch


def offset_to_bincount(offset: torch.Tensor) -> torch.Tensor:
    """Points per sample [B] from cumulative end offsets [B]."""
    return torch.diff(offset, prepend=offset.new_zeros(1))


def offset_to_batch(offset: torch.Tensor) -> torch.Tensor:
    """Sample index per point [N] (int64) from offsets [B]."""
    counts = offset_to_bincount(offset)
    return torch.arange(len(counts), device=offset.device).repeat_interleave(counts)


def batch_to_offset(batch: torch.Tensor) -> torch.Tensor:
    """Cumulative end offsets [B] (int64) from a sorted sample index per point."""
    return torch.cumsum(torch.bincount(batch), dim=0)


class Point(dict):
    """Dict with attribute access holding one packed batch of point clouds."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if "offset" in self and not torch.is_tensor(self["offset"]):
            self["offset"] = torch.as_tensor(self["offset"], dtype=torch.long)
        if "batch" not in self and "offset" in self:
            self["batch"] = offset_to_batch(self["offset"].long())
        elif "offset" not in self and "batch" in self:
            self["offset"] = batch_to_offset(self["batch"].long())
        elif "offset" not in self and "batch" not in self:
            ref = self.get("coord", self.get("feat", self.get("grid_coord")))
            if ref is not None:
                n = ref.shape[0]
                self["offset"] = torch.tensor([n], device=ref.device, dtype=torch.long)
                self["batch"] = torch.zeros(n, device=ref.device, dtype=torch.long)

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"Point has no field {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def __delattr__(self, name: str) -> None:
        try:
            del self[name]
        except KeyError:
            raise AttributeError(f"Point has no field {name!r}") from None

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        parts = []
        for k, v in self.items():
            if torch.is_tensor(v):
                parts.append(f"{k}={tuple(v.shape)}:{str(v.dtype).replace('torch.', '')}")
            elif isinstance(v, Point):
                parts.append(f"{k}=Point(n={v.num_points})")
            else:
                parts.append(f"{k}={v!r}")
        return "Point(" + ", ".join(parts) + ")"

    @property
    def num_points(self) -> int:
        return int(self["offset"][-1]) if len(self["offset"]) else 0

    @property
    def batch_size(self) -> int:
        return len(self["offset"])

    def shallow_copy(self) -> "Point":
        """A new Point sharing every tensor with this one."""
        return Point(dict(self))

    def parents(self) -> Iterator["Point"]:
        """This Point, then its pooling parents, finest last."""
        p: Point | None = self
        while p is not None:
            yield p
            p = p.get("pooling_parent")

    def serialization(
        self,
        order: tuple[str, ...] | list[str] | str = ("z",),
        depth: int | None = None,
        shuffle_orders: bool = False,
        generator: torch.Generator | None = None,
    ) -> "Point":
        """Compute space-filling-curve codes for every curve in ``order``.

        Fills ``order`` (the curve names as given, unshuffled: pooling shuffles
        this original list again at every stage, as the reference does, so one
        seed gives the reference's orders), ``serialized_names`` (the names in
        the order of the codes), ``serialized_depth``, and
        ``serialized_code/order/inverse`` [k, N]. With ``shuffle_orders`` the k
        curves are permuted by ``torch.randperm(k, generator=generator)``.
        """
        from .serialization import serialize

        if "grid_coord" not in self:
            raise ValueError("Point.serialization needs grid_coord (grid-sample the input first)")
        given = (order,) if isinstance(order, str) else tuple(order)
        names = given
        if shuffle_orders:
            perm = torch.randperm(len(given), generator=generator).tolist()
            names = tuple(given[i] for i in perm)
        ser = serialize(self["grid_coord"], self["batch"], names, depth=depth)
        self["order"] = given
        self["serialized_names"] = names
        self["serialized_depth"] = ser.depth
        self["serialized_code"] = ser.code
        self["serialized_order"] = ser.order
        self["serialized_inverse"] = ser.inverse
        self.pop("attention_rows", None)  # composed with the old curve orders
        return self

    def index_to_input(self) -> torch.Tensor:
        """For every point of the finest ancestor's *input*, its index in this Point.

        Follows ``pooling_inverse`` from this Point down to the first stage and,
        if the model grid-sampled the input, ``grid_sample_inverse``. Returns
        int64 [N_input]: ``feat[point.index_to_input()]`` gives per-input-point
        features.
        """
        chain = list(self.parents())
        root = chain[-1]
        n_root = root.num_points
        index = torch.arange(n_root, device=root["offset"].device)
        # walk from the finest stage up to self
        for p in reversed(chain[:-1]):
            index = p["pooling_inverse"][index]
        if "grid_sample_inverse" in root:
            index = index[root["grid_sample_inverse"]]
        return index
