"""What the store records about its shards, shared by the writer, the manifest
and the reader: ``ShardInfo`` and its ``SceneEntry`` rows (as a manifest lists
them), and the shard's inventory file (``<shard>/inventory.json``: {relative path:
[size in bytes, ``file_digest``]} of every other file of the shard).
"""
from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass

from pipelines.store.layout import ATTR_N_IMAGE_GROUPS, SHARD_FORMAT


@dataclass
class SceneEntry:
    """What a manifest records about one scene of a shard."""

    key: str
    source: str
    scene_id: str
    content_hash: str
    index: int  # position of the scene within its shard
    n_points: int
    n_images: int
    n_corr: int
    n_image_groups: int

    def to_json(self) -> dict:
        """The manifest's scene entry (its image-group count under the on-disk key)."""
        return {_JSON_KEY.get(k, k): v for k, v in self.__dict__.items()}

    @staticmethod
    def from_json(d: dict) -> "SceneEntry":
        return SceneEntry(**{k: d[_JSON_KEY.get(k, k)] for k in SceneEntry.__dataclass_fields__})


# SceneEntry field -> its key in a manifest, where the names differ
_JSON_KEY = {"n_image_groups": ATTR_N_IMAGE_GROUPS}


INVENTORY = "inventory.json"
# files fetched together when hashing a shard (concurrent GETs on object stores)
READ_GROUP = 32


def batches(items: list, n: int) -> list[list]:
    """``items`` cut into consecutive lists of at most ``n``."""
    return [items[i:i + n] for i in range(0, len(items), n)]


@dataclass
class ShardInfo:
    """A written shard as a manifest records it: its id, the scenes it serves,
    and the digest of its inventory file (``<shard>/inventory.json``: {relative
    path: [size in bytes, blake2b hex]} of every other file), used to detect
    missing, truncated or altered files. The inventory lives beside the data, not
    in the manifest, so manifests stay small however many chunk files a shard has."""

    id: str
    scenes: list[SceneEntry]
    inventory_digest: str
    nbytes: int = 0
    n_files: int = 0
    created: str = ""
    n_scenes_written: int = 0  # scenes physically in the shard (listed or not)
    points_written: int = 0
    format: str = SHARD_FORMAT

    @property
    def n_points(self) -> int:
        return sum(s.n_points for s in self.scenes)

    @property
    def n_image_groups(self) -> int:
        return sum(s.n_image_groups for s in self.scenes)

    def with_scenes(self, scenes: list[SceneEntry]) -> "ShardInfo":
        return dataclasses.replace(self, scenes=scenes)

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "created": self.created,
            "n_scenes_written": self.n_scenes_written,
            "points_written": self.points_written,
            "bytes": self.nbytes,
            "n_files": self.n_files,
            "inventory_digest": self.inventory_digest,
            "format": self.format,
            "scenes": [s.to_json() for s in self.scenes],
        }

    @staticmethod
    def from_json(d: dict) -> "ShardInfo":
        return ShardInfo(
            id=d["id"],
            scenes=[SceneEntry.from_json(s) for s in d["scenes"]],
            inventory_digest=d["inventory_digest"],
            nbytes=int(d.get("bytes", 0)),
            n_files=int(d.get("n_files", 0)),
            created=d.get("created", ""),
            n_scenes_written=int(d.get("n_scenes_written", len(d["scenes"]))),
            points_written=int(d.get("points_written", 0)),
            # manifests before store format 2 did not record it
            format=d.get("format", "concerto-shard/1"),
        )


def file_digest(data: bytes) -> str:
    """The digest an inventory records for a file (and a manifest for the inventory)."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()
