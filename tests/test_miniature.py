"""The miniature experiment's command end to end at toy sizes: every stage runs, every row is filled."""
import json

import pytest

from concerto.eval import miniature

pytestmark = pytest.mark.slow


def test_miniature_runs_from_nothing(tmp_path, capsys):
    out = tmp_path / "mini"
    rc = miniature.main(["--output", str(out), "--pretrain-rooms", "2", "--val-rooms", "1", "--test-rooms", "1",
                         "--teacher-rooms", "2", "--teacher-val-rooms", "1", "--teacher-epochs", "1",
                         "--teacher-image-size", "56", "--frames", "4", "--points", "3000", "--width", "96",
                         "--height", "72", "--steps", "2", "--seeds", "0", "--jobs", "2", "--probe-epochs", "2",
                         "--probe-points", "500", "--eval-split", "val"])
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    assert results["split"] == "val"
    assert set(results["summary"]) == {row for row, _ in miniature.ROWS}
    for row, _ in miniature.ROWS:
        assert 0.0 <= results["summary"][row]["mIoU"] <= 1.0
        assert len(results["per_seed"][row]) == 1
    assert set(results["timing_s"]) == {"build", "teacher", "pretrain", "probe", "report", "total"}
    assert results["teacher"]["spec"]["image_size"] == 56
    assert 0.0 < results["seen_fraction"] <= 1.0
    for png in ("bars.png", "pca_sonata_vs_concerto.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| Concerto (c), learned 2D teacher |" in (out / "results.md").read_text()
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["benchmark"] == "miniature" and line["baseline"] == pytest.approx(
        results["summary"]["sonata"]["mIoU"], abs=1e-6)
