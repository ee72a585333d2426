"""Write tests/fixtures/store_format1: a tiny store made by the format-1 store code
(commit c7f1883, before chunk checksums), and what that code reads back from it.

    .venv/bin/python scripts/make_format1_store_fixture.py

The old ``pipelines`` and ``preprocess`` packages are extracted from git into a
temporary folder and run there, so nothing of today's writer is involved.
``expected.npz`` holds the old reader's samples, to check today's reader and
``--migrate`` against. Used by tests/test_store_integrity.py.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

COMMIT = "c7f1883"
ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "fixtures" / "store_format1"

# run inside the old checkout: argv[1] = output folder
OLD_CODE = """
import sys
from pathlib import Path

import numpy as np

from pipelines.store import ShardStore, ShardWriter, commit
from pipelines.store.layout import SHARD_FORMAT
from pipelines.store.synthetic import synthetic_scene

assert SHARD_FORMAT == "concerto-shard/1", SHARD_FORMAT
out = Path(sys.argv[1])
rng = np.random.default_rng(3)
scenes = [synthetic_scene(rng, "alpha", f"s{i}", n_points=300, image_sizes=[(12, 16)] * 4, n_segments=2,
                          corr_per_image=40) for i in range(2)]
# small chunks: several chunks per array, as a real store has
info = ShardWriter(str(out / "store"), point_chunk=128, corr_chunk=64).write(scenes)
commit(str(out / "store"), None, [info], note="format-1 fixture (commit %s)" % sys.argv[2])
store = ShardStore.open(str(out / "store"))
expected = {}
for i in range(len(store)):
    s = store[i]
    expected[f"{i}/key"] = np.array(s["key"])
    for k in ("coord", "color", "normal", "segment_label", "K", "pose"):
        expected[f"{i}/{k}"] = s[k]
    for v in range(len(s["rgb"])):
        expected[f"{i}/rgb{v}"] = s["rgb"][v]
        expected[f"{i}/corr_point{v}"] = s["corr_point"][v]
        expected[f"{i}/corr_pixel{v}"] = s["corr_pixel"][v]
np.savez_compressed(out / "expected.npz", **expected)
print(len(store), "samples")
"""


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "old"
        old.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", COMMIT, "pipelines", "preprocess"],
                                 check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
        built = Path(tmp) / "out"
        built.mkdir()
        # cwd and PYTHONPATH = the old tree only, so its packages are the ones imported
        subprocess.run([sys.executable, "-c", OLD_CODE, str(built), COMMIT], cwd=old, check=True,
                       env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(old), "OMP_NUM_THREADS": "1"})
        if OUT.exists():
            shutil.rmtree(OUT)
        shutil.copytree(built, OUT)
    size = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"wrote {OUT} ({size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
