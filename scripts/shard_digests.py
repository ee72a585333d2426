"""Digest every shard chunk of a fixed build, to show a refactor leaves the bytes as they were.

``python scripts/shard_digests.py OUT_DIR`` builds 3 procedural rooms (seed 0) into
``OUT_DIR/store`` with ``pipelines`` alone (no Prefect, in-process), then prints one
line per shard file (scene keys -> relative path -> sha256) and a digest of all of
them. Shard ids, the shard's root metadata and manifests carry run ids and times, so
files are named by the scenes they hold and only the arrays' chunk and metadata
files are hashed.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path


def main(out: Path) -> None:
    store = out / "store"
    if not store.exists():
        subprocess.run([sys.executable, "-m", "pipelines.build", "--store", str(store),
                        "--source", f"synthetic:{out / 'scenes'}:num_scenes=3,seed=0"],
                       check=True, stdout=subprocess.DEVNULL)
    latest = sorted((store / "manifests").glob("v*.json"))[-1]
    manifest = json.loads(latest.read_text())
    lines = []
    for shard in manifest["shards"]:
        sid = shard["id"] if isinstance(shard, dict) else shard
        keys = ",".join(sorted(s["key"] if isinstance(s, dict) else s for s in shard.get("scenes", []))) \
            if isinstance(shard, dict) else sid
        root = store / "shards" / sid
        # the shard's own zarr.json and inventory.json name its id and time: skip them
        for f in sorted(p for p in root.rglob("*") if p.is_file() and p.parent != root):
            rel = f.relative_to(root).as_posix()
            lines.append(f"{keys} {rel} {hashlib.sha256(f.read_bytes()).hexdigest()}")
    lines.sort()
    print("\n".join(lines))
    print("ALL", hashlib.sha256("\n".join(lines).encode()).hexdigest(), len(lines), "files")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
