"""The cross-modal path carries a learned 2D teacher's semantics into the point encoder.

A short deterministic pretraining (tiny preset, 40 steps, 4 procedural rooms through the
real store) with a learned teacher (tests/fixtures/teacher2d_tiny, made by
scripts/make_teacher2d_fixture.py): on images of 2 unseen rooms, the mean-centred cosine
between the run's predictor output on patch-pooled point features and the teacher's patch
features must rise clearly. It must not rise when the correspondences' point indices are
shuffled (``ShuffledCorrespondences``) or when the cross-modal weight is 0.
"""
from __future__ import annotations

from pathlib import Path

import pytest

FIXTURE = Path(__file__).parent / "fixtures" / "teacher2d_tiny"
STEPS = 40
MIN_AFTER = 0.15  # centred cosine after training, at least
MIN_RISE = 0.15  # and at least this much above its value at initialisation


def assert_agreement_rises(result: dict) -> None:
    before, after = result["before"]["centred_cosine"], result["after"]["centred_cosine"]
    assert after >= MIN_AFTER and after - before >= MIN_RISE, (
        f"predictor/teacher agreement on unseen images did not rise clearly: centred cosine "
        f"{before:.3f} -> {after:.3f} (need >= {MIN_AFTER} and a rise >= {MIN_RISE})")


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    from concerto.data import open_store
    from testkit.room_store import build_room_store

    root = tmp_path_factory.mktemp("xm")
    train = build_room_store(root / "train", num_scenes=4, seed=5, points_per_scene=20_000, frames_per_scene=8,
                             image_size=(320, 240))
    unseen = build_room_store(root / "unseen", num_scenes=2, seed=6, points_per_scene=20_000, frames_per_scene=8,
                              image_size=(320, 240))
    return open_store(train), open_store(unseen), root


def _run(stores, mode: str) -> dict:
    from concerto.config import load_config
    from concerto.eval.cross_modal_check import ShuffledCorrespondences, short_pretrain

    train, unseen, root = stores
    cfg = load_config("tiny", [f"cross_modal.model_id={FIXTURE}", "cross_modal.encoder_config=null",
                               f"run.steps={STEPS}"])
    data = ShuffledCorrespondences(train) if mode == "shuffled" else train
    return short_pretrain(cfg, data, root / f"run_{mode}", zero_weight=mode == "zero_weight", eval_store=unseen)


def test_agreement_rises_with_learned_teacher(stores):
    assert_agreement_rises(_run(stores, "learned"))


def test_agreement_does_not_rise_with_shuffled_correspondences(stores):
    result = _run(stores, "shuffled")
    with pytest.raises(AssertionError):
        assert_agreement_rises(result)


def test_agreement_does_not_rise_with_zero_weight(stores):
    result = _run(stores, "zero_weight")
    with pytest.raises(AssertionError):
        assert_agreement_rises(result)
