"""Segmentation metrics (hand-computed cases), scene split, linear head, and the probe end to end."""
import json
from pathlib import Path

import numpy as np
import pytest

from concerto.eval.linear_probe import (
    LabelledScene,
    ProbeError,
    evaluate,
    main,
    run_probe,
    split_scenes,
    train_linear_head,
)
from concerto.eval.metrics import confusion_matrix, metrics_from_confusion, segmentation_metrics
from testkit.room_store import build_room_store

# ----------------------------------------------------------------------------- metrics


def test_confusion_matrix_hand_case():
    target = np.array([0, 0, 1, 1, 2, -1])
    pred = np.array([0, 1, 1, 1, 0, 2])
    conf = confusion_matrix(target, pred, 3)
    np.testing.assert_array_equal(conf, [[1, 1, 0], [0, 2, 0], [1, 0, 0]])


def test_metrics_hand_case():
    # class 0: TP 1, FN 1, FP 1 -> IoU 1/3, acc 1/2
    # class 1: TP 2, FN 0, FP 1 -> IoU 2/3, acc 1
    # class 2: TP 0, FN 1, FP 0 -> IoU 0,   acc 0
    m = segmentation_metrics(np.array([0, 0, 1, 1, 2, -1]), np.array([0, 1, 1, 1, 0, 2]), 3)
    np.testing.assert_allclose(m.iou, [1 / 3, 2 / 3, 0.0])
    np.testing.assert_allclose(m.acc, [0.5, 1.0, 0.0])
    assert m.miou == pytest.approx(1 / 3)
    assert m.macc == pytest.approx(0.5)
    assert m.all_acc == pytest.approx(3 / 5)  # the ignored point counts nowhere
    np.testing.assert_array_equal(m.support, [2, 2, 1])


def test_metrics_absent_and_spurious_classes():
    # class 3 never occurs nor is predicted: left out; class 2 is predicted but absent: IoU 0, acc undefined
    conf = np.array([[4, 0, 1, 0],
                     [0, 3, 0, 0],
                     [0, 0, 0, 0],
                     [0, 0, 0, 0]])
    m = metrics_from_confusion(conf)
    assert np.isnan(m.iou[3]) and np.isnan(m.acc[3])
    assert m.iou[2] == 0.0 and np.isnan(m.acc[2])
    assert m.miou == pytest.approx((4 / 5 + 1.0 + 0.0) / 3)
    assert m.macc == pytest.approx((4 / 5 + 1.0) / 2)
    assert m.all_acc == pytest.approx(7 / 8)
    d = m.to_dict(["a", "b", "c", "d"])
    assert d["per_class"]["d"] == {"iou": None, "acc": None, "support": 0}
    json.dumps(d)  # NaN-free


def test_metrics_perfect_and_errors():
    y = np.array([0, 1, 2, 2, 1])
    m = segmentation_metrics(y, y, 3)
    assert m.miou == m.macc == m.all_acc == 1.0
    with pytest.raises(ValueError, match="pred has labels outside"):
        confusion_matrix(y, y + 1, 3)
    with pytest.raises(ValueError, match="target has 5 entries, pred 4"):
        confusion_matrix(y, y[:4], 3)


# ----------------------------------------------------------------------------- split and head


def test_split_is_seeded_disjoint_and_complete():
    keys = [f"src/scene{i}" for i in range(10)]
    train, val = split_scenes(keys[::-1], 0.25, seed=0)
    assert (train, val) == split_scenes(keys, 0.25, seed=0)  # input order does not matter
    assert len(val) == 2 and len(train) == 8 and not set(train) & set(val) and set(train) | set(val) == set(keys)
    assert any(split_scenes(keys, 0.25, seed=s)[1] != val for s in range(1, 6))
    assert len(split_scenes(keys[:2], 0.9, 0)[0]) == 1  # always at least one of each
    with pytest.raises(ProbeError, match="at least 2 labelled scenes"):
        split_scenes(keys[:1], 0.25, 0)


def test_linear_head_learns_separable_classes():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 16)) * 3
    label = rng.integers(0, 4, 4000)
    feat = (centres[label] + rng.normal(size=(4000, 16))).astype(np.float32)
    label[::50] = -1  # unlabelled points are ignored
    head = train_linear_head(feat, label, 4, epochs=5, lr=0.05, batch_points=1000, seed=0)
    scene = LabelledScene("s", "", np.zeros((4000, 3), np.float32), np.zeros((4000, 3), np.uint8),
                          np.zeros((4000, 3), np.float32), label)
    m = evaluate(head, {"s": feat}, [scene], 4)
    assert m.miou > 0.9 and m.all_acc > 0.95
    again = train_linear_head(feat, label, 4, epochs=5, lr=0.05, batch_points=1000, seed=0)
    np.testing.assert_array_equal(head.weight, again.weight)  # seeded


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def rooms(tmp_path_factory):
    """A real labelled store: procedural rooms through depth rendering, segments and ShardWriter."""
    return build_room_store(tmp_path_factory.mktemp("rooms"), num_scenes=4, points_per_scene=4000,
                            frames_per_scene=4, image_size=(48, 36))


def test_probe_end_to_end_cli(rooms, tmp_path, capsys):
    out = tmp_path / "probe.json"
    cache = tmp_path / "cache"
    assert main(["--data", rooms, "--checkpoint", "random", "--config", "tiny", "--epochs", "5",
                 "--val-fraction", "0.25", "--output", str(out), "--cache", str(cache), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "held-out  mIoU" in text and "floor" in text and "wall" in text
    result = json.loads(out.read_text())
    assert len(result["split"]["val"]) == 1 and len(result["split"]["train"]) == 3
    assert result["class_names"][:3] == ["floor", "wall", "ceiling"]
    val = result["val"]
    assert 0.0 <= val["mIoU"] <= 1.0 and 0.0 <= val["allAcc"] <= 1.0
    # random features of (coord, colour, normal) still separate floor / wall / ceiling better than chance
    assert val["allAcc"] > 0.3
    assert sum(c["support"] for c in val["per_class"].values()) > 1000
    cached = sorted(cache.rglob("*.npy"))
    assert len(cached) == 4
    # a second run reads the cached features and reproduces the result exactly
    stamp = [p.stat().st_mtime_ns for p in cached]
    again = run_probe(rooms, "random", config="tiny", epochs=5, cache_dir=str(cache), progress=False)
    assert [p.stat().st_mtime_ns for p in cached] == stamp
    assert again["val"] == result["val"]


def test_probe_with_official_checkpoint(rooms, tmp_path):
    """The backbone file the official code wrote (tests/fixtures, see
    test_golden_concerto): its features upcast two levels (48 channels), probed with
    a seeded split; the result is pinned (measured on this code, which gives the
    official features for that file)."""
    path = Path(__file__).parent / "fixtures" / "concerto_golden_backbone.pth"
    result = run_probe(rooms, str(path), epochs=3, val_fraction=0.5, seed=1, progress=False,
                       output=str(tmp_path / "r.json"))
    assert result["channels"] == 48 and len(result["split"]["val"]) == 2
    # measured 0.17532 / 0.42863 / 0.31529 (CPU, 1 and 2 threads alike); the tolerance is for other BLAS builds
    val = result["val"]
    assert (val["mIoU"], val["allAcc"], val["mAcc"]) == pytest.approx((0.17532, 0.42863, 0.31529), abs=5e-3)
    assert json.loads((tmp_path / "r.json").read_text())["val"] == result["val"]


def test_probe_bad_inputs_are_one_line_errors(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["--data", str(tmp_path / "empty"), "--checkpoint", "random", "--output", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "empty" in err and "\n" not in err
    assert not (tmp_path / "x.json").exists()
