"""Writes tests/fixtures/teacher2d_tiny: a tiny learned 2D teacher (DINOv2 class, 2 layers, 32
channels, 112 px = 8 x 8 patches) trained for 8 epochs on 8 procedural rooms (seed 1000, 16
frames each at 320 x 240, class palette); used by tests/test_cross_modal_learns.py.

    .venv/bin/python scripts/make_teacher2d_fixture.py   (about a minute on 2 cores)
"""
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from concerto.eval.teacher2d import TeacherSpec, make_teacher  # noqa: E402

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "teacher2d_tiny"


def main() -> None:
    spec = TeacherSpec(image_size=112, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=64, epochs=8)
    with tempfile.TemporaryDirectory() as tmp:
        info = make_teacher(tmp, rooms=8, val_rooms=2, seed=1000, spec=spec)
        if FIXTURE.exists():
            shutil.rmtree(FIXTURE)
        shutil.copytree(Path(tmp) / "model", FIXTURE)
    print(f"wrote {FIXTURE}: held-out per-patch accuracy {info['held_out']['patch_acc']:.3f}")


if __name__ == "__main__":
    main()
