"""Floor levels, a navigability grid and a floor-plan room split, computed from
surface samples of a Z-up mesh (pure numpy/scipy; no habitat).

Everything works on a dense set of surface samples (points + unit normals, GLB
world, metres) instead of triangles, so one code path serves any mesh.

- ``find_levels``: floor heights = heights where upward-facing surface covers a
  large area, at least a storey apart (tables and beds are too small or too
  close above a floor to count).
- ``NavGrid`` (``build_nav_grid``): a 2D grid over one level. A cell is
  *navigable* when it has floor within ``floor_tolerance`` of the level, no
  surface in the body band (``step_height`` .. camera height + ``head_room``
  above the floor, so the camera is never inside furniture or a wall), a
  ceiling above (up to ``max_ceiling``; so roofs are not rooms) and is at least
  ``agent_radius`` from a blocked or floorless cell.
- ``split_rooms``: rooms without annotations. The navigable area is eroded by
  half a door width, so doorways (narrower than ``door_width``) close and each
  room becomes its own connected component; the components then grow back
  cell by cell through the navigable area (so doorways are shared out and no
  label passes through a wall). Corridors narrower than a door vanish in the
  erosion and join the rooms next to them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class GridSpec:
    """Axis-aligned 2D grid in the GLB world's x/y plane: cell (i, j) covers
    x in [x0 + j cell, x0 + (j+1) cell), y in [y0 + i cell, ...)."""

    x0: float
    y0: float
    cell: float
    shape: tuple[int, int]  # (rows along y, cols along x)

    def index(self, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Cells (rows, cols) of points [N,2] and a mask of those inside the grid."""
        xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        col = np.floor((xy[:, 0] - self.x0) / self.cell).astype(np.int64)
        row = np.floor((xy[:, 1] - self.y0) / self.cell).astype(np.int64)
        inside = (row >= 0) & (row < self.shape[0]) & (col >= 0) & (col < self.shape[1])
        return row, col, inside

    def centre(self, row, col) -> np.ndarray:
        """World x/y [.., 2] of cell centres."""
        return np.stack([self.x0 + (np.asarray(col) + 0.5) * self.cell, self.y0 + (np.asarray(row) + 0.5) * self.cell], axis=-1)

    def lookup(self, mask: np.ndarray, xy: np.ndarray) -> np.ndarray:
        """mask[cell of each point], False outside the grid; bool [N]."""
        row, col, inside = self.index(xy)
        out = np.zeros(len(row), bool)
        out[inside] = mask[row[inside], col[inside]]
        return out


@dataclass
class NavGrid:
    """One floor level: ``floor`` (floor surface seen), ``blocked`` (surface in
    the body band), ``covered`` (a ceiling above; all True when not required)
    and ``navigable`` bool [rows, cols] on ``spec``; ``level_z`` the floor
    height (m)."""

    spec: GridSpec
    level_z: float
    floor: np.ndarray
    blocked: np.ndarray
    navigable: np.ndarray
    covered: np.ndarray | None = None

    def is_navigable(self, xy: np.ndarray) -> np.ndarray:
        return self.spec.lookup(self.navigable, xy)


def find_levels(
    points: np.ndarray,
    normals: np.ndarray,
    sample_area: float,
    min_level_area: float = 4.0,
    storey_height: float = 2.0,
    up_cosine: float = 0.9,
    bin_size: float = 0.1,
) -> list[float]:
    """Floor heights (m, ascending) of a Z-up mesh from surface samples.

    points/normals float [N,3]; ``sample_area`` m^2 of surface each sample stands
    for. Upward-facing samples (normal z > ``up_cosine``) are binned by height;
    a bin holding >= ``min_level_area`` m^2 is a level, scanning upwards and
    skipping ``storey_height`` above each level found. Height = median of the
    samples within one bin of the peak.
    """
    up = normals[:, 2] > up_cosine
    z = np.asarray(points, dtype=np.float64)[up, 2]
    if z.size == 0:
        return []
    lo = z.min()
    bins = np.floor((z - lo) / bin_size).astype(np.int64)
    area = np.bincount(bins) * sample_area
    levels: list[float] = []
    next_allowed = -np.inf
    for b in np.nonzero(area >= min_level_area)[0]:
        bz = lo + b * bin_size
        if bz < next_allowed:
            continue
        near = z[(bins >= b - 1) & (bins <= b + 1)]
        levels.append(float(np.median(near)))
        next_allowed = levels[-1] + storey_height
    return levels


def build_nav_grid(
    points: np.ndarray,
    normals: np.ndarray,
    level_z: float,
    camera_height: float,
    cell: float = 0.1,
    floor_tolerance: float = 0.15,
    step_height: float = 0.2,
    head_room: float = 0.1,
    agent_radius: float = 0.15,
    up_cosine: float = 0.9,
    bounds_xy: tuple | None = None,
    require_ceiling: bool = True,
    max_ceiling: float = 4.0,
) -> NavGrid:
    """Navigability grid of the level at ``level_z`` (see the module docstring).

    Samples must be denser than ``cell`` (spacing <= cell / 2) or floor cells
    go missing; one-cell holes in the floor are closed."""
    points = np.asarray(points, dtype=np.float64)
    if bounds_xy is None:
        lo, hi = points[:, :2].min(0) - cell, points[:, :2].max(0) + cell
    else:
        lo, hi = np.asarray(bounds_xy[0], float), np.asarray(bounds_xy[1], float)
    shape = (max(1, int(np.ceil((hi[1] - lo[1]) / cell))), max(1, int(np.ceil((hi[0] - lo[0]) / cell))))
    spec = GridSpec(float(lo[0]), float(lo[1]), float(cell), shape)
    dz = points[:, 2] - level_z
    is_floor = (np.abs(dz) <= floor_tolerance) & (normals[:, 2] > up_cosine)
    in_body = (dz > step_height) & (dz < camera_height + head_room)
    floor = rasterise(spec, points[is_floor, :2])
    floor = ndimage.binary_closing(floor, iterations=1) | floor
    blocked = rasterise(spec, points[in_body, :2])
    free = floor & ~blocked
    covered = np.ones(spec.shape, bool)
    if require_ceiling:
        # indoors only: a horizontal surface above head height (roofs, terraces
        # and the tops of ceiling slabs have none). |n_z| because scanned
        # ceilings are not reliably wound downwards.
        above = (dz >= camera_height + head_room) & (dz <= max_ceiling) & (np.abs(normals[:, 2]) > up_cosine)
        ceiling = rasterise(spec, points[above, :2])
        covered = ndimage.binary_closing(ceiling, iterations=1) | ceiling
        free &= covered
    r = int(np.ceil(agent_radius / cell))
    navigable = ndimage.binary_erosion(free, structure=_disk(r), border_value=0) if r > 0 else free
    return NavGrid(spec=spec, level_z=float(level_z), floor=floor, blocked=blocked, navigable=navigable, covered=covered)


def split_rooms(nav: NavGrid, door_width: float = 1.0, min_room_area: float = 2.0) -> np.ndarray:
    """Room labels int32 [rows, cols]: 0.. on navigable cells, -1 elsewhere.

    Erodes the navigable area by ``door_width / 2`` (doorways close), labels the
    remaining pieces and grows them back through the navigable area. Rooms under ``min_room_area`` m^2 are dropped
    (their cells become -1). Labels are renumbered in order of appearance."""
    nav_mask = nav.navigable
    r = max(1, int(np.ceil(door_width / 2.0 / nav.spec.cell)))
    core = ndimage.binary_erosion(nav_mask, structure=_disk(r), border_value=0)
    core_lab, n_core = ndimage.label(core)
    labels = np.full(nav_mask.shape, -1, np.int32)
    if n_core == 0:
        # No room is wider than a door: each connected area is one room.
        labels[nav_mask] = ndimage.label(nav_mask)[0][nav_mask] - 1
    else:
        # grow the pieces back one cell at a time inside the navigable area
        # (geodesic, so a label never jumps through a wall)
        grown = core_lab.copy()
        while True:
            reach = ndimage.grey_dilation(grown, size=(3, 3))
            new = nav_mask & (grown == 0) & (reach > 0)
            if not new.any():
                break
            grown[new] = reach[new]
        labels[grown > 0] = grown[grown > 0] - 1
        # areas no piece reaches (rooms narrower than a door): their own room
        orphan = nav_mask & (grown == 0)
        if orphan.any():
            o_lab, _ = ndimage.label(orphan)
            labels[orphan] = o_lab[orphan] - 1 + n_core
    min_cells = min_room_area / nav.spec.cell**2
    out = np.full_like(labels, -1)
    nxt = 0
    for lab in _labels_in_order(labels):
        mask = labels == lab
        if mask.sum() >= min_cells:
            out[mask] = nxt
            nxt += 1
    return out


def room_footprints(nav: NavGrid, labels: np.ndarray, max_growth: float = 1.5, wall_margin: float = 0.25) -> list[np.ndarray]:
    """Each room's extent on the grid, bool [rows, cols] per label 0..max.

    The rooms' navigable cells grow together, one cell per step and never into
    another room's cells, through the level's indoor surface cells (floor or
    blocked, under a ceiling) for up to ``max_growth`` m: so furniture, the
    floor under it and the walls join the room beside them, and a wall between
    two rooms is split down its middle. Holes are filled and each extent grows by
    ``wall_margin`` m (into no other room's cells) so the faces of its outer
    walls are inside."""
    grown = np.where(labels >= 0, labels + 1, 0).astype(np.int32)
    support = (nav.floor | nav.blocked) & (nav.covered if nav.covered is not None else True)
    for _ in range(int(np.ceil(max_growth / nav.spec.cell))):
        reach = ndimage.grey_dilation(grown, size=(3, 3))
        new = support & (grown == 0) & (reach > 0)
        if not new.any():
            break
        grown[new] = reach[new]
    r = int(np.ceil(wall_margin / nav.spec.cell))
    out = []
    for k in range(int(labels.max()) + 1 if labels.size else 0):
        mask = ndimage.binary_fill_holes(grown == k + 1)
        if r > 0:  # the margin never enters another room's cells
            mask = ndimage.binary_dilation(mask, structure=_disk(r)) & ((grown == 0) | (grown == k + 1) | mask)
        out.append(mask)
    return out


def choose_camera_cell(candidates: np.ndarray, navigable: np.ndarray, spec: GridSpec, min_clearance: float = 0.5) -> np.ndarray | None:
    """The room's camera spot (world x/y [2]) among ``candidates`` (navigable
    cells of the room): the cell nearest the candidates' centroid among those at
    least ``min_clearance`` m (or the largest clearance available) from any
    non-navigable cell. None if there is no candidate."""
    cand = candidates & navigable
    if not cand.any():
        return None
    clearance = ndimage.distance_transform_edt(navigable) * spec.cell
    rows, cols = np.nonzero(cand)
    c = clearance[rows, cols]
    good = c >= min(min_clearance, c.max())
    centroid = spec.centre(rows, cols).mean(axis=0)
    xy = spec.centre(rows[good], cols[good])
    return xy[np.argmin(np.linalg.norm(xy - centroid, axis=1))]


def rasterise(spec: GridSpec, xy: np.ndarray) -> np.ndarray:
    """bool [rows, cols]: cells holding at least one of the points xy [N,2]."""
    mask = np.zeros(spec.shape, bool)
    row, col, inside = spec.index(xy)
    mask[row[inside], col[inside]] = True
    return mask


def _disk(radius: int) -> np.ndarray:
    y, x = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return x * x + y * y <= radius * radius


def _labels_in_order(labels: np.ndarray) -> list[int]:
    flat = labels.reshape(-1)
    vals, first = np.unique(flat[flat >= 0], return_index=True)
    return [int(v) for v in vals[np.argsort(first)]]
