"""Evaluation of a frozen encoder: segmentation metrics, linear probing, feature pictures.

- ``concerto.eval.metrics``: confusion matrix -> mIoU / mAcc / allAcc (pure numpy).
- ``concerto.eval.linear_probe``: ``python -m concerto.eval.linear_probe --data ... --checkpoint ...``.
- ``concerto.eval.pictures``: PCA-of-features colours, point splatting to PNG, PLY, similarity heatmaps.
"""
