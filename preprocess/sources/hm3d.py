"""``hm3d``: Habitat-Matterport 3D, one scene record per navigable room.

```
<path>/<NNNNN>-<hash>/              path = a split folder (train/, val/, minival/),
    <hash>.glb                      or the HM3D root holding such split folders
    <hash>.basis.glb, <hash>.basis.navmesh      (habitat backend)
    <hash>.semantic.glb, <hash>.semantic.txt    optional: objects and rooms (regions)
```

The paper's unit is one room = one point cloud + four images, so each room is
its own scene ``<NNNNN>-<hash>_<room_id>``: the room's point cloud (0.02 m,
texture colours, instance = semantic object id and segment via ``category_map``
when annotations exist) and four views from one spot (random initial yaw, 90
degrees apart, the spot a navigable room cell jittered by up to 0.25 m), with
depth already rendered. See ``preprocess.habitat`` for how rooms are found.

``recipe`` (default "released"): "released" follows Pointcept's released
``preprocessing/concerto/hm3d`` script (rooms = the GLB's geometry groups,
camera at the mean of a 0.5 m grid inside the room's box, +-``jitter`` on all
axes, no navigability check; always the mesh backend, ``room_method`` and
``camera_height`` unused); "paper" follows the paper's text (semantic regions,
``camera_height`` 1.5 m above a navigable cell, horizontal jitter, habitat's
navmesh snapping when the habitat backend is used).

``discover`` has to find the rooms (it loads each house once); the room list is
cached as JSON in ``cache_dir`` under the house's content hash, so later
discoveries are cheap. A house that cannot be read still yields one ref,
``<NNNNN>-<hash>_unreadable``, whose ``load`` raises a SourceError naming the
file, so the build's quarantine report lists it.
"""
from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Optional

from preprocess.habitat import CaptureSettings, find_hm3d_scene, make_capture_backend, read_category_map
from preprocess.habitat.habitat_backend import habitat_available
from preprocess.scene import Scene
from preprocess.sources._common import AdapterBase, hashed_options, scene_hash
from preprocess.sources.base import SceneRef, SourceError, register_source
from preprocess.atomic_file import atomic_write

log = logging.getLogger(__name__)

SCENE_DIR = re.compile(r"^\d{5}-[A-Za-z0-9]+$")
SPLITS = ("train", "val", "minival", "test", "example")
UNREADABLE = "unreadable"
ROOM_CACHE_VERSION = 1


@register_source("hm3d")
class HM3DSource(AdapterBase):
    OPTIONS = {
        "backend": "auto",  # "auto" | "mesh" | "habitat"
        "image_width": 720,
        "image_height": 720,
        "hfov": 90.0,
        "camera_height": 1.5,
        "jitter": 0.25,
        "num_views": 4,
        "seed": 0,
        "max_rooms": None,  # per house; None = all
        "point_spacing": 0.02,
        "room_method": "auto",  # mesh backend: "auto" | "regions" | "nodes" | "floorplan"
        "render_backend": "auto",  # mesh backend: preprocess.render backend
        "category_map": None,  # tsv: raw_category, category, mpcat40
        "scene_dataset_config": None,  # habitat backend
        "cache_dir": "~/.cache/concerto/hm3d_rooms",  # None = no room-list cache
        "recipe": "released",  # "released" (Pointcept's released script) | "paper"
    }

    def __init__(self, path, name: Optional[str] = None, **options):
        super().__init__(path, name=name, **options)
        o = self.options
        if o["backend"] not in ("auto", "mesh", "habitat"):
            raise ValueError(f"source '{self.name}' (hm3d): option backend must be auto|mesh|habitat, got {o['backend']!r}")
        if o["recipe"] not in ("released", "paper"):
            raise ValueError(f"source '{self.name}' (hm3d): option recipe must be released|paper, got {o['recipe']!r}")
        if o["recipe"] == "released":
            if o["backend"] == "habitat":
                raise ValueError(f"source '{self.name}' (hm3d): recipe 'released' places cameras without habitat; use backend mesh")
            o["backend"] = "mesh"
        if o["backend"] == "auto":
            # the backend changes the images, so it is part of the options (and hashes)
            o["backend"] = "habitat" if habitat_available() else "mesh"
        for key in ("image_width", "image_height", "num_views"):
            if not isinstance(o[key], int) or o[key] < 1:
                raise ValueError(f"source '{self.name}' (hm3d): option {key} must be a positive integer, got {o[key]!r}")
        for key in ("point_spacing", "camera_height"):
            if not float(o[key]) > 0:
                raise ValueError(f"source '{self.name}' (hm3d): option {key} must be > 0, got {o[key]!r}")
        if not 0 < float(o["hfov"]) < 180:
            raise ValueError(f"source '{self.name}' (hm3d): option hfov must be in (0, 180), got {o['hfov']!r}")
        if o["max_rooms"] is not None and (not isinstance(o["max_rooms"], int) or o["max_rooms"] < 1):
            raise ValueError(f"source '{self.name}' (hm3d): option max_rooms must be None or an integer >= 1")
        if o["category_map"] is not None and not Path(o["category_map"]).is_file():
            raise ValueError(f"source '{self.name}' (hm3d): category_map file '{o['category_map']}' does not exist")

    def options_key(self) -> str:
        """As the base class, minus ``cache_dir`` (where the room lists are
        cached does not change what ``load`` produces)."""
        keep = {k: v for k, v in hashed_options(self.options).items() if k != "cache_dir"}
        return f"{self.kind}|" + "|".join(f"{k}={str(v)!r}" if isinstance(v, Path) else f"{k}={v!r}" for k, v in sorted(keep.items()))

    # ---------------------------------------------------------------- layout
    def _scene_dirs(self) -> dict[str, tuple[Path, str]]:
        """scene folder name -> (folder, split)."""
        out = {}
        direct = [d for d in sorted(self.path.iterdir()) if d.is_dir() and SCENE_DIR.match(d.name)]
        if direct:
            split = self.path.name if self.path.name in SPLITS else ""
            return {d.name: (d, split) for d in direct}
        for split in SPLITS:
            sd = self.path / split
            if sd.is_dir():
                for d in sorted(sd.iterdir()):
                    if d.is_dir() and SCENE_DIR.match(d.name):
                        out.setdefault(d.name, (d, split))
        return out

    def _house(self, folder_name: str, key: str):
        dirs = self._scene_dirs()
        if folder_name not in dirs:
            raise SourceError(key, str(self.path / folder_name), "HM3D scene folder not found")
        folder, split = dirs[folder_name]
        house = find_hm3d_scene(folder, split)
        if house is None:
            raise SourceError(key, str(folder), f"no {folder_name.split('-', 1)[-1]}.glb or .basis.glb in the scene folder")
        return house

    # ---------------------------------------------------------------- backend
    def settings(self) -> CaptureSettings:
        o = self.options
        return CaptureSettings(
            width=int(o["image_width"]), height=int(o["image_height"]), hfov_deg=float(o["hfov"]),
            num_views=int(o["num_views"]), camera_height=float(o["camera_height"]), jitter=float(o["jitter"]),
            point_spacing=float(o["point_spacing"]), seed=int(o["seed"]),
        )

    def backend(self):
        cache = self.cache()
        if "backend" not in cache:
            o = self.options
            cmap = read_category_map(o["category_map"]) if o["category_map"] else None
            if o["backend"] == "habitat":
                from preprocess.habitat import MeshBackend

                mesh = MeshBackend(self.settings(), room_method=o["room_method"], render_backend=o["render_backend"],
                                   category_map=cmap, recipe=o["recipe"])
                cache["backend"] = make_capture_backend("habitat", self.settings(), scene_dataset_config=o["scene_dataset_config"], mesh_backend=mesh)
            else:
                cache["backend"] = make_capture_backend("mesh", self.settings(), room_method=o["room_method"],
                                                        render_backend=o["render_backend"], category_map=cmap,
                                                        recipe=o["recipe"])
        return cache["backend"]

    # ---------------------------------------------------------------- discovery
    def discover(self) -> list[SceneRef]:
        refs = []
        for folder_name, (folder, split) in self._scene_dirs().items():
            house = find_hm3d_scene(folder, split)
            if house is None:
                log.warning("hm3d: %s has no <hash>.glb, skipped", folder)
                continue
            try:
                room_ids = self._room_ids(house)
            except Exception as exc:  # one bad house must not sink discovery: load() reports it
                log.warning("hm3d: cannot find rooms of %s: %s", folder, exc)
                room_ids = [UNREADABLE]
            for rid in room_ids:
                refs.append(self.ref(f"{folder_name}_{rid}", house.files))
        return refs

    def _room_ids(self, house) -> list[str]:
        house_hash = scene_hash(house.files, self.options_key(), self.options["hash_mode"])
        cache_file = None
        if self.options["cache_dir"]:
            cache_file = Path(os.path.expanduser(str(self.options["cache_dir"]))) / f"{house.scene_id}-{house_hash[:16]}.json"
            try:
                data = json.loads(cache_file.read_text())
                if data.get("version") == ROOM_CACHE_VERSION and data.get("hash") == house_hash:
                    return list(data["rooms"])
            except (OSError, ValueError):
                pass
        ids = [r.room_id for r in self.backend().rooms(house)]
        if self.options["max_rooms"] is not None:
            ids = ids[: self.options["max_rooms"]]
        if cache_file is not None:
            record = json.dumps({"version": ROOM_CACHE_VERSION, "hash": house_hash, "rooms": ids})
            atomic_write(cache_file, lambda p: p.write_text(record))
        return ids

    # ---------------------------------------------------------------- loading
    def load(self, ref: SceneRef) -> Scene:
        key = self.key(ref.scene_id)
        folder_name, _, room_id = ref.scene_id.partition("_")
        house = self._house(folder_name, key)
        backend = self.backend()
        try:
            rooms = {r.room_id: r for r in backend.rooms(house)}
        except SourceError:
            raise
        except Exception as exc:
            raise SourceError(key, str(house.glb), f"cannot read the house or find its rooms ({type(exc).__name__}: {exc})") from exc
        if room_id not in rooms:
            raise SourceError(key, str(house.glb), f"room '{room_id}' not found (rooms: {sorted(rooms)})")
        room = rooms[room_id]
        try:
            frames = backend.capture(room)
            points = backend.point_cloud(room)
        except Exception as exc:
            raise SourceError(key, str(house.glb), f"capture failed ({type(exc).__name__}: {exc})") from exc
        if len(points) == 0:
            raise SourceError(key, str(house.glb), f"room '{room_id}' has no surface to sample")
        categories = backend.categories(house)
        meta = {
            "split": house.split,
            "house": house.scene_id,
            "room_id": room.room_id,
            "room_method": room.method,
            "level_z": float(room.level_z),
            "backend": backend.name,
            "coordinate_frame": "GLB world, Z-up, metres",
        }
        if categories is not None:
            meta["categories"] = categories
        scene = Scene(scene_id=ref.scene_id, source=self.name, points=points, frames=frames, mesh_path=house.glb,
                      content_hash=ref.content_hash, meta=meta)
        return scene.validate(require_depth=True)
