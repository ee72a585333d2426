"""The 2D teacher's targets and losses (concerto.eval.teacher2d), on label maps written here."""
import numpy as np
import torch

from concerto.eval.teacher2d import class_weights, patch_fractions, patch_labels, soft_cross_entropy
from concerto.patches import PatchGrid


def _label_map():
    """28 x 28 pixels = 2 x 2 patches of 14 at image size 28: class 1 everywhere, a 5 x 5 block of
    class 2 in the top-left patch, nothing labelled in the bottom-right patch."""
    lab = np.ones((28, 28), np.int64)
    lab[:5, :5] = 2
    lab[14:, 14:] = -1
    return lab


def test_majority_and_shares_of_each_patch():
    grid = PatchGrid(28, 14)
    lab = _label_map()
    assert patch_labels(lab, grid, 3).tolist() == [[1, 1], [1, -1]]
    shares = patch_fractions(lab, grid, 3)
    np.testing.assert_allclose(shares[0, 0], [0.0, 1 - 25 / 196, 25 / 196], rtol=1e-6)
    np.testing.assert_allclose(shares[0, 1], [0.0, 1.0, 0.0])
    np.testing.assert_allclose(shares[1, 1], [0.0, 0.0, 0.0])  # nothing labelled: no target


def test_soft_cross_entropy_is_cross_entropy_for_one_hot_shares_and_skips_empty_rows():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 4, generator=g)
    labels = torch.tensor([0, 3, 1, 1, 2, -1])
    shares = torch.nn.functional.one_hot(labels.clamp(min=0), 4).float()
    shares[labels < 0] = 0
    w = class_weights(labels, 4, 0.5)
    for weight in (None, w):
        hard = torch.nn.functional.cross_entropy(logits, labels, weight=weight, ignore_index=-1, reduction="sum")
        soft = soft_cross_entropy(logits, shares, weight)
        torch.testing.assert_close(soft * 5, hard)  # mean over the 5 labelled rows


def test_class_weights_follow_inverse_frequency():
    labels = torch.tensor([0] * 90 + [1] * 10 + [-1] * 5)
    w = class_weights(labels, 3, 0.5)
    assert w[2] == 0  # absent class
    torch.testing.assert_close(w[1] / w[0], torch.tensor(3.0))  # (90 / 10) ** 0.5
    torch.testing.assert_close(w[:2].mean(), torch.tensor(1.0))
    assert class_weights(labels, 3, 0.0) is None
