"""Lung nodules of the synthetic chest CT: placement inside the lungs and partial-volume rendering.

Nodules are solid, part-solid (ground-glass halo around a solid core), ground-glass or calcified; round,
lobulated (radius modulated by a few smooth bumps) or spiculated (thin strands radiating outward); free
in the parenchyma, juxta-pleural (touching the chest wall) or juxta-vascular (touching a vessel). They
never overlap each other and lie inside the lung. Positions are LPS world mm; arrays ``[z, y, x]``.

A nodule is painted as ``max(scan, nodule)`` (vessels and walls stay visible through it), so one placed
where the scan is already dense (inside a hilar vessel, the chest wall, the mediastinum) is labelled but
mostly invisible: no reader would annotate it, and as training labels such nodules teach a network to mark
pieces of vessels. Given the scan, :func:`place_nodules` therefore keeps a position only where at least
:data:`MIN_VISIBLE` of the nodule's body shows (:func:`visible_fraction`); in the phantoms of v0.6 that rule
would have moved about one nodule in five, and the network had found none of those under 30 % visible.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipelines.phantom.shapes import Array, Grid, coverage, rasterize_tubes

TYPES = ("solid", "part-solid", "ground-glass", "calcified")
LOCATIONS = ("parenchymal", "juxta-pleural", "juxta-vascular")
SdfFn = Callable[[Array], Array]  # points [n, 3] (LPS mm) -> signed distance to the lung (mm)


@dataclass
class Nodule:
    """One nodule's design (mm, HU, LPS world)."""

    center: Array
    radius: float
    type: str
    location: str
    side: int
    solid_radius: float = 0.0
    hu: float = 30.0
    core_hu: float = 30.0
    lobe_dirs: Array = field(default_factory=lambda: np.zeros((0, 3)))
    lobe_amps: Array = field(default_factory=lambda: np.zeros(0))
    spicules: Array = field(default_factory=lambda: np.zeros((0, 3)))

    @property
    def r_max(self) -> float:
        return self.radius * (1.0 + float(self.lobe_amps.sum()))

    @property
    def diameter_mm(self) -> float:
        return 2.0 * self.radius

    def surface_sdf(self, pts: Array) -> Array:
        """Signed distance (mm, approximate) of points ``[..., 3]`` to the nodule surface."""
        d = pts - self.center
        rho = np.linalg.norm(d, axis=-1)
        unit = d / np.maximum(rho, 1e-6)[..., None]
        r = self.radius * np.ones_like(rho)
        for v, a in zip(self.lobe_dirs, self.lobe_amps):
            r = r + self.radius * a * np.exp(6.0 * (unit @ v - 1.0))
        return rho - r


def _unit(rng: np.random.Generator, n: int) -> Array:
    v = rng.normal(size=(n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


#: Least share of a nodule's body that must show against the scan it is placed in (see the module docstring).
MIN_VISIBLE = 0.6
#: Typical lung parenchyma (HU): a nodule's contrast is its density above this.
PARENCHYMA_HU = -850.0


def _ball_points(n: int) -> Array:
    """``n`` fixed points spread uniformly in the unit ball."""
    rng = np.random.default_rng(0)
    return _unit(rng, n) * (rng.random(n) ** (1 / 3))[:, None]


#: Scaled onto a nodule, these estimate :func:`visible_fraction` (fixed: no caller's random stream moves).
_BALL_POINTS = _ball_points(256)


#: Probabilities of the nodule types of :data:`TYPES` in generated scans.
TYPE_P = (0.5, 0.15, 0.2, 0.15)


def design_nodule(
    rng: np.random.Generator, *, d_min: float, type_p: tuple[float, ...] | list[float] = TYPE_P
) -> Nodule:
    """Draw type, size, shape and density of one nodule (centre filled in by :func:`place_nodules`).

    ``type_p`` gives the probabilities of :data:`TYPES` (the generator's mix by default); the random stream is
    the same whatever its values.
    """
    kind = str(rng.choice(TYPES, p=list(type_p)))
    lo = max(d_min, 5.0) if kind in ("part-solid", "ground-glass") else d_min
    hi = 12.0 if kind == "calcified" else 30.0
    diameter = lo * (hi / lo) ** (rng.random() ** 1.6)
    n = Nodule(center=np.zeros(3), radius=diameter / 2, type=kind, location="parenchymal", side=1)
    if kind == "solid":
        n.hu = n.core_hu = float(rng.uniform(-10, 70))
    elif kind == "ground-glass":
        n.hu = n.core_hu = float(rng.uniform(-750, -350))
    elif kind == "part-solid":
        n.hu = float(rng.uniform(-700, -400))
        n.core_hu = float(rng.uniform(-10, 60))
        n.solid_radius = n.radius * float(rng.uniform(0.3, 0.7))
    else:
        n.hu = float(rng.uniform(40, 120))
        n.core_hu = float(rng.uniform(250, 1000))
        n.solid_radius = n.radius * float(rng.uniform(0.5, 1.0))
    if kind != "calcified" and rng.random() < 0.55:
        k = int(rng.integers(2, 6))
        n.lobe_dirs = _unit(rng, k)
        n.lobe_amps = rng.uniform(0.08, 0.25, size=k)
    if kind in ("solid", "part-solid") and diameter > 7 and rng.random() < 0.35:
        n.spicules = _unit(rng, int(rng.integers(5, 14)))
    return n


def _fits(n: Nodule, lung: SdfFn, *, tol: float) -> bool:
    pts = n.center + _unit(np.random.default_rng(0), 64) * n.r_max
    return bool(np.all(lung(pts) <= tol)) and float(lung(n.center[None])[0]) < -0.5 * n.radius


def visible_fraction(n: Nodule, hu: Array, grid: Grid) -> float:
    """Share of ``n``'s body where painting it would raise the scan by at least half its own contrast.

    The contrast is ``n.hu - PARENCHYMA_HU`` (the body's density, not a solid or calcified core's); a point
    shows when the scan there (``hu``, ``[z, y, x]`` on ``grid``, nearest voxel) is at most
    ``n.hu - contrast / 2``: about -410 HU for a solid nodule, -725 HU for a -600 HU ground-glass one. Points
    off the grid count as hidden. Deterministic (its own sampler): placing with it does not shift the
    caller's random stream.
    """
    pts = n.center + _BALL_POINTS * n.r_max
    pts = pts[n.surface_sdf(pts) < 0]
    if not len(pts):
        pts = n.center[None]
    before, inside = grid.sample_nearest(hu, pts)
    limit = n.hu - 0.5 * (n.hu - PARENCHYMA_HU)
    return float(np.mean(inside & (before <= limit)))


def place_nodules(
    specs: list[Nodule],
    *,
    lungs: dict[int, SdfFn],
    candidates: dict[int, Array],
    vessels: tuple[Array, Array, Array],
    rng: np.random.Generator,
    scan: tuple[Array, Grid] | None = None,
    min_visible: float = MIN_VISIBLE,
) -> list[Nodule]:
    """Give each designed nodule a location class and a centre inside a lung; drop those that do not fit.

    Args:
        specs: designed nodules.
        lungs: per side (1 right, 2 left) a signed-distance function of points ``[n, 3]`` (LPS mm).
        candidates: per side, points ``[m, 3]`` sampled uniformly inside the lung.
        vessels: ``(starts, ends, radii)`` of vessel segments (LPS mm) to attach juxta-vascular nodules to.
        scan: ``(hu [z, y, x], grid)`` the nodules will be painted into; with it a position is kept only
            where :func:`visible_fraction` reaches ``min_visible`` and the whole nodule, with
            :data:`FIELD_MARGIN_MM` to spare, lies inside the grid (a lung cut by a cropped scan's field of view
            has no border there to stop it); without it, only the lung decides.
    """
    placed: list[Nodule] = []
    starts, ends, radii = vessels
    mid_vessels = np.flatnonzero((radii > 1.0) & (radii < 4.5))
    for n in specs:
        n.location = str(rng.choice(LOCATIONS, p=[0.45, 0.3, 0.25] if len(mid_vessels) else [0.6, 0.4, 0.0]))
        for _ in range(300):
            n.side = int(rng.choice([1, 2]))
            lung, pts = lungs[n.side], candidates[n.side]
            c = pts[rng.integers(len(pts))]
            if n.location == "juxta-vascular" and len(mid_vessels):
                i = mid_vessels[rng.integers(len(mid_vessels))]
                p = starts[i] + rng.uniform(0.2, 0.8) * (ends[i] - starts[i])
                axis = (ends[i] - starts[i]) / (np.linalg.norm(ends[i] - starts[i]) + 1e-9)
                perp = np.cross(axis, _unit(rng, 1)[0])
                c = p + perp / (np.linalg.norm(perp) + 1e-9) * (radii[i] + 0.85 * n.radius)
            elif n.location == "juxta-pleural":
                c = _push_to_pleura(c, n.r_max + 0.1, lung)
            n.center = c
            if any(np.linalg.norm(c - o.center) < n.r_max + o.r_max + 3.0 for o in placed):
                continue
            if not _fits(n, lung, tol=0.3 if n.location == "juxta-pleural" else -1.0):
                continue
            if scan is not None and not (
                inside_field(n, scan[1]) and visible_fraction(n, *scan) >= min_visible
            ):
                continue
            placed.append(n)
            break
    return placed


#: A placed nodule keeps this much room (mm) beyond its largest radius from the edge of the image.
FIELD_MARGIN_MM = 2.0


def inside_field(n: Nodule, grid: Grid, margin_mm: float = FIELD_MARGIN_MM) -> bool:
    """Whether the ball of ``n.r_max + margin_mm`` around ``n.center`` lies inside ``grid``'s field of view."""
    centre = np.asarray(grid.world_to_index_zyx(np.asarray(n.center, float)), float)
    room = (float(n.r_max) + margin_mm) / np.asarray(grid.spacing_zyx, float)
    return bool(np.all(centre - room >= -0.5) and np.all(centre + room <= np.asarray(grid.shape_zyx) - 0.5))


def _push_to_pleura(c: Array, radius: float, lung: SdfFn) -> Array:
    """Move ``c`` along the lung-distance gradient so that the nodule surface touches the pleura."""
    for _ in range(6):
        eps = 0.5
        grad = np.array([(lung((c + e)[None]) - lung((c - e)[None]))[0] / (2 * eps) for e in np.eye(3) * eps])
        g = grad / (np.linalg.norm(grad) + 1e-9)
        d = float(lung(c[None])[0])
        c = c - g * (d + radius)
    return c


def render_nodules(hu: Array, grid: Grid, nodules: list[Nodule], rng: np.random.Generator) -> Array:
    """Paint nodules into ``hu`` (float32 ``[z, y, x]``, in place) and return their instance labels.

    A nodule raises density but never lowers it (vessels and the chest wall stay visible through it).
    Labels (uint8, or uint16 past 255 nodules) cover voxels more than half inside the nodule body; the
    voxel holding the centre is always labelled, so nodules smaller than a voxel still have one.
    """
    labels = np.zeros(grid.shape_zyx, dtype=np.uint8 if len(nodules) < 256 else np.uint16)
    h = grid.h
    for idx, n in enumerate(nodules, start=1):
        ext = n.r_max * (2.2 if len(n.spicules) else 1.0) + 2 * h
        c_idx = grid.world_to_index_zyx(n.center)
        lo = np.floor(c_idx - ext / np.asarray(grid.spacing_zyx)).astype(int)
        hi = np.ceil(c_idx + ext / np.asarray(grid.spacing_zyx)).astype(int) + 1
        lo = np.maximum(lo, 0)
        hi = np.minimum(hi, grid.shape_zyx)
        box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        shape = (int(hi[0] - lo[0]), int(hi[1] - lo[1]), int(hi[2] - lo[2]))
        corner = grid.index_to_world(lo)
        sub = Grid(shape, grid.spacing_zyx, (float(corner[0]), float(corner[1]), float(corner[2])))
        x, y, z = sub.axes()
        pts = np.stack(np.broadcast_arrays(x, y, z), axis=-1)
        d = n.surface_sdf(pts)
        occ = coverage(d, h)
        tex = 1.0 + 0.04 * rng.standard_normal(occ.shape).astype(np.float32)
        value = (
            np.full(occ.shape, n.hu, dtype=np.float32)
            + (12.0 if n.type != "calcified" else 0.0) * (tex - 1) * 25
        )
        if n.solid_radius > 0:
            core = coverage(np.linalg.norm(pts - n.center, axis=-1) - n.solid_radius, h)
            value += core * (n.core_hu - value)
        if len(n.spicules):
            spic = np.zeros(sub.shape_zyx, dtype=np.float32)
            lengths = n.radius * rng.uniform(0.6, 1.6, size=len(n.spicules))
            starts = n.center + n.spicules * n.radius * 0.8
            ends = n.center + n.spicules * (n.radius + lengths)[:, None]
            widths = rng.uniform(0.35, 0.8, size=len(n.spicules))
            rasterize_tubes(spic, sub, starts, ends, widths, widths * 0.3)
            occ = np.maximum(occ, spic * 0.8)
        view = hu[box]
        np.maximum(view, view + occ * (value - view), out=view)
        lab = labels[box]
        lab[(coverage(d, h) >= 0.5) & (lab == 0)] = idx
        k, j, i = np.round(grid.world_to_index_zyx(n.center)).astype(int)
        if 0 <= k < grid.shape_zyx[0] and 0 <= j < grid.shape_zyx[1] and 0 <= i < grid.shape_zyx[2]:
            labels[k, j, i] = idx
    return labels


def measure_nodules(
    labels: Array, image: Array, grid: Grid, nodules: list[Nodule]
) -> tuple[Array, list[dict[str, Any]]]:
    """Renumber labels 1..N over the nodules that have voxels and describe each from its mask."""
    out = np.zeros_like(labels)
    rows: list[dict[str, Any]] = []
    for old, n in enumerate(nodules, start=1):
        idx = np.argwhere(labels == old)
        if len(idx) == 0:
            continue
        new = len(rows) + 1
        out[labels == old] = new
        center = grid.index_to_world(idx.mean(axis=0))
        solid = {"solid": n.diameter_mm, "calcified": n.diameter_mm, "part-solid": 2 * n.solid_radius}.get(
            n.type, 0.0
        )
        rows.append(
            {
                "nodule_id": new,
                "center_lps_mm": tuple(float(c) for c in center),
                "diameter_mm": round(n.diameter_mm, 2),
                "type": n.type,
                "location": n.location,
                "solid_component_mm": round(solid, 2),
                "mean_hu": round(float(image[labels == old].mean()), 1),
                "n_voxels": len(idx),
                "side": n.side,
            }
        )
    return out, rows
