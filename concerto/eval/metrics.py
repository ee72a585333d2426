"""Semantic-segmentation metrics from a confusion matrix (pure numpy).

Conventions: labels are class ids 0..K-1; ``ignore_index`` (default -1) marks
points without a label, which count nowhere. ``confusion[t, p]`` counts points
of true class t predicted as p.

- IoU_c = TP_c / (TP_c + FP_c + FN_c); classes with an empty union (neither in
  the ground truth nor predicted) are NaN and left out of mIoU.
- Acc_c = TP_c / (TP_c + FN_c); classes absent from the ground truth are NaN
  and left out of mAcc.
- allAcc = sum TP / number of labelled points.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def confusion_matrix(target: np.ndarray, pred: np.ndarray, num_classes: int, ignore_index: int = -1) -> np.ndarray:
    """int64 [K, K] counts of (true, predicted) over points whose target != ignore_index.

    ``target`` and ``pred`` int [N]. Raises ValueError for a shape mismatch or a
    label outside [0, K) (other than ignore_index in the target).
    """
    target = np.asarray(target).reshape(-1).astype(np.int64)
    pred = np.asarray(pred).reshape(-1).astype(np.int64)
    if target.shape != pred.shape:
        raise ValueError(f"confusion_matrix: target has {target.size} entries, pred {pred.size}")
    keep = target != ignore_index
    t, p = target[keep], pred[keep]
    for name, x in (("target", t), ("pred", p)):
        if x.size and (x.min() < 0 or x.max() >= num_classes):
            raise ValueError(f"confusion_matrix: {name} has labels outside [0, {num_classes}): "
                             f"min {x.min()}, max {x.max()}")
    return np.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


@dataclass
class SegMetrics:
    """Per-class IoU / accuracy [K] (NaN where undefined) and their summaries."""

    iou: np.ndarray
    acc: np.ndarray
    miou: float
    macc: float
    all_acc: float
    support: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # labelled points per class

    def to_dict(self, class_names=None) -> dict:
        names = list(class_names) if class_names is not None else [str(i) for i in range(len(self.iou))]

        def clean(x):
            return None if not np.isfinite(x) else float(x)

        return {
            "mIoU": clean(self.miou), "mAcc": clean(self.macc), "allAcc": clean(self.all_acc),
            "per_class": {n: {"iou": clean(i), "acc": clean(a), "support": int(s)}
                          for n, i, a, s in zip(names, self.iou, self.acc, self.support)},
        }


def metrics_from_confusion(confusion: np.ndarray) -> SegMetrics:
    """mIoU, mAcc, allAcc (see module doc) from a [K, K] confusion matrix."""
    c = np.asarray(confusion, dtype=np.float64)
    if c.ndim != 2 or c.shape[0] != c.shape[1]:
        raise ValueError(f"metrics_from_confusion: expected a square matrix, got shape {list(c.shape)}")
    tp = np.diag(c)
    support = c.sum(1)
    predicted = c.sum(0)
    union = support + predicted - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        acc = np.where(support > 0, tp / support, np.nan)
    total = c.sum()
    miou = float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")
    macc = float(np.nanmean(acc)) if np.isfinite(acc).any() else float("nan")
    all_acc = float(tp.sum() / total) if total > 0 else float("nan")
    return SegMetrics(iou=iou, acc=acc, miou=miou, macc=macc, all_acc=all_acc, support=support.astype(np.int64))


def segmentation_metrics(target: np.ndarray, pred: np.ndarray, num_classes: int, ignore_index: int = -1) -> SegMetrics:
    """Shortcut: ``metrics_from_confusion(confusion_matrix(...))``."""
    return metrics_from_confusion(confusion_matrix(target, pred, num_classes, ignore_index))
