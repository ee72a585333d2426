"""A store that never serves wrong data and never silently drops a dataset, on
real stores and real processes: repair after corruption, concurrent builds,
concurrent quarantine updates, adding vs pruning without Prefect."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from pipelines.build import BuildOptions, SceneSettings, run_build
from pipelines.quarantine import load_quarantine
from pipelines.store import ShardStore, load_manifest
from pipelines.store.inspect import main as inspect_main
from pipelines.store.location import SHARD_DIR

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(image_width=64, image_height=48, points_per_scene=2000, frames_per_scene=4)
KW = dict(settings=SceneSettings(min_correspondences=10), scenes_per_task=2, shard_size=2)


def synthetic(path: Path, name: str, num_scenes: int, seed: int) -> dict:
    return {"kind": "synthetic", "path": str(path), "name": name, "options": dict(TINY, num_scenes=num_scenes, seed=seed)}


def samples(store: str) -> dict:
    """{(key, image group): arrays of the sample} at the latest complete version."""
    s = ShardStore.open(store)
    out = {}
    for i in range(len(s)):
        x = s[i]
        out[(x["key"], x["image_group"])] = [x["coord"], x["color"], x["pose"], *x["rgb"], *x["corr_pixel"], *x["corr_point"]]
    return out


def written_scene_count(store: str) -> int:
    """Scenes physically written into shard folders (built, listed or not)."""
    return sum(len(json.loads((p / "zarr.json").read_text())["attributes"]["scenes"])
               for p in (Path(store) / SHARD_DIR).iterdir())


def test_adding_is_the_default_and_prune_says_what_it_removed(tmp_path):
    store = str(tmp_path / "store")
    a, b = synthetic(tmp_path / "a", "A", 2, seed=1), synthetic(tmp_path / "b", "B", 1, seed=2)
    run_build(BuildOptions(store=store, sources=[a, b], **KW))
    s = run_build(BuildOptions(store=store, sources=[b], **KW))  # B alone: A stays listed
    assert s.removed == [] and {k.split("/")[0] for k in ShardStore.open(store).scene_keys()} == {"A", "B"}
    s = run_build(BuildOptions(store=store, sources=[b], prune=True, **KW))
    assert s.removed == ["A/room000_seed1", "A/room001_seed1"] and s.per_source["A"]["removed"] == 2
    assert ShardStore.open(store).scene_keys() == ["B/room000_seed2"]
    assert set(load_manifest(store).sources) == {"B"}


@pytest.mark.slow
def test_repair_makes_a_corrupted_store_verify_with_fresh_build_contents(tmp_path):
    store = str(tmp_path / "store")
    run_build(BuildOptions(store=store, sources=[synthetic(tmp_path / "src", "S", 3, seed=3)], **KW))
    fresh = samples(store)
    m = load_manifest(store)
    victim = m.shards[0]
    chunk = Path(store) / SHARD_DIR / victim.id / "points" / "coord" / "c" / "0" / "0"
    data = bytearray(chunk.read_bytes())
    data[-25] ^= 0x40  # same size: only the checksum can tell
    chunk.write_bytes(bytes(data))
    assert ShardStore.open(store).verify()
    out = tmp_path / "repair.txt"
    assert inspect_main([store, "--repair", "--verify"], out=open(out, "w")) == 0
    text = out.read_text()
    assert "1 damaged shards" in text and "verify: ok" in text
    m2 = load_manifest(store)
    assert victim.id not in {sh.id for sh in m2.shards} and m2.version == m.version + 1
    repaired = samples(store)
    assert repaired.keys() == fresh.keys()
    for k in fresh:
        assert all(np.array_equal(x, y) for x, y in zip(fresh[k], repaired[k])), k
    # nothing damaged: nothing to do
    assert inspect_main([store, "--repair"], out=open(out, "w")) == 0 and "nothing to do" in out.read_text()


_BUILD = """
import json, sys
from pipelines.build import BuildOptions, SceneSettings, run_build
store, source = sys.argv[1], json.loads(sys.argv[2])
s = run_build(BuildOptions(store=store, sources=[source], settings=SceneSettings(min_correspondences=10),
                           scenes_per_task=1, shard_size=1))
print(json.dumps(s.as_dict()))
"""


def _spawn(code: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", code, *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
@pytest.mark.parametrize("same_source", [False, True], ids=["different-sources", "same-source"])
def test_concurrent_builds_list_and_build_every_scene_once(tmp_path, same_source):
    store = str(tmp_path / "store")
    a = synthetic(tmp_path / "a", "A", 3, seed=4)
    b = a if same_source else synthetic(tmp_path / "b", "B", 3, seed=5)
    procs = [_spawn(_BUILD, store, json.dumps(src)) for src in (a, b)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (stdout, stderr) in zip(procs, outs):
        assert p.returncode == 0, stderr[-3000:]
    keys = ShardStore.open(store).scene_keys()
    expected = 3 if same_source else 6
    assert len(keys) == len(set(keys)) == expected  # listed exactly once
    assert written_scene_count(store) == expected  # built exactly once: the second run waited, then skipped
    summaries = [json.loads(o[0].strip().splitlines()[-1]) for o in outs]
    assert sorted(s["scenes"]["processed"] for s in summaries) == ([0, 3] if same_source else [3, 3])
    assert load_manifest(store).state == "complete"


_HAMMER = """
import sys
from pipelines.quarantine import SceneFailure, update_quarantine
store, who, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
for i in range(n):
    update_quarantine(store, [SceneFailure.of(f"{who}/s{i}", who, f"s{i}", "", "load", RuntimeError("bad"))])
"""


@pytest.mark.slow
def test_concurrent_quarantine_updates_lose_nothing(tmp_path):
    store = str(tmp_path / "store")
    n = 150
    procs = [_spawn(_HAMMER, store, who, str(n)) for who in ("p", "q")]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
    assert len(load_quarantine(store)) == 2 * n


def test_concerto_store_lists_quarantined_scenes_with_their_whole_reason(tmp_path):
    """``concerto-store <url> --quarantine``: also for a store where every scene failed (no manifest)."""
    import io

    from pipelines.quarantine import SceneFailure, update_quarantine

    store = tmp_path / "store"
    assert inspect_main([str(store), "--quarantine"], out=io.StringIO()) == 0
    reason = "mesh.ply: mesh file '/data/scans/room7/mesh.ply': truncated or padded body: 89119 bytes, expected 178548"
    update_quarantine(store, [SceneFailure.of("scans/room7", "scans", "room7", "h", "load", ValueError(reason)),
                              SceneFailure.of("scans/*", "scans", "*", "", "discover", FileNotFoundError("no /x"))])
    out = io.StringIO()
    assert inspect_main([str(store), "--quarantine"], out=out) == 0
    lines = out.getvalue().splitlines()
    assert lines[0] == f"quarantine of {store}: 2 scenes (re-run the build to retry them)", lines
    room = next(ln for ln in lines if "scans/room7" in ln)
    assert "stage load" in room and f"ValueError: {reason}" in room, room
    assert any("scans/*" in ln and "stage discover" in ln and "FileNotFoundError" in ln for ln in lines), lines
