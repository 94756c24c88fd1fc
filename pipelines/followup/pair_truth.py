"""Known truth of a follow-up pair: the pose/breath-hold change between the scans and the nodules' histories.

A follow-up pair is one patient scanned twice. The *prior* differs from the *current* by a known affine map of
world LPS millimetres, :class:`PoseChange`: ``p_prior = R S (p_current - c) + c + t`` with ``R`` a small rotation
(patient pose), ``S`` a diagonal breath-hold scale (the prior's lungs ``scale_xyz`` times the current's, about the
centre ``c``, the lung apex for a phantom: the bases move most) and ``t`` a translation (couch height and scan
start). It maps current points to prior points, which is the direction SimpleITK's registration returns with
the current scan as the fixed image and the prior as the moving one.

Each truth nodule is planned in the current scan's frame (:class:`PlannedNodule`) with a status:

* ``stable``: the same size in both scans;
* ``grown``: larger in the current scan. ``change == "volume"``: the whole nodule grew, volume x1.3..x3 and mean
  diameter by more than 2 mm (Lung-RADS counts > 1.5 mm); ``change == "solid"``: a part-solid nodule whose body
  kept its size while its solid component grew by 2-4 mm (from nothing: the prior was ground-glass);
* ``new``: only in the current scan;
* ``resolved``: only in the prior.

A nodule does not deform with breathing: in the prior it is the same shape, turned by ``R`` (not scaled by
``S``), its centre moved by the full map. Sizes are of the nodule's design (not of a voxel mask):
``volume_mm3`` integrates the body on a fine grid, ``diameter_mm`` is the equivalent-sphere diameter of that
volume (the whole nodule's for a solid or calcified one's solid component, the core's for a part-solid one), and
the centre is the body's centroid (LPS mm).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipelines.phantom.nodules import Nodule, design_nodule
from pipelines.phantom.shapes import Array

STATUSES = ("new", "grown", "stable", "resolved")
#: Type mixes (solid, part-solid, ground-glass, calcified) by status: calcified nodules neither grow nor resolve.
GROWN_P = (0.6, 0.15, 0.25, 0.0)
STABLE_P = (0.5, 0.15, 0.2, 0.15)
NEW_P = (0.6, 0.15, 0.2, 0.05)
RESOLVED_P = (0.5, 0.15, 0.35, 0.0)
#: Least increase of mean diameter (mm) of a grown nodule, and of the solid part of a part-solid one.
MIN_GROWTH_MM = 2.0
MAX_DIAMETER_MM = 20.0


def _rotation(deg_xyz: Array) -> Array:
    ax, ay, az = np.deg2rad(np.asarray(deg_xyz, dtype=float))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


@dataclass(frozen=True)
class PoseChange:
    """Known map from the current scan's world (LPS mm) to the prior's: ``p' = R S (p - c) + c + t``.

    Attributes:
        rotation_deg: rotations about x, y, z (degrees), applied x first.
        translation_mm: ``t`` (x, y, z) in mm.
        scale_xyz: breath-hold scale of the prior relative to the current (1 = same inspiration).
        centre_xyz: ``c``, the fixed point of rotation and scale (LPS mm).
    """

    rotation_deg: tuple[float, float, float]
    translation_mm: tuple[float, float, float]
    scale_xyz: tuple[float, float, float]
    centre_xyz: tuple[float, float, float]

    @property
    def rotation(self) -> Array:
        """The 3x3 rotation ``R``."""
        return _rotation(self.rotation_deg)

    def matrix(self) -> Array:
        """The 4x4 homogeneous matrix of the map current -> prior (LPS mm)."""
        m = self.rotation @ np.diag(self.scale_xyz)
        c = np.asarray(self.centre_xyz, float)
        out = np.eye(4)
        out[:3, :3] = m
        out[:3, 3] = c + np.asarray(self.translation_mm, float) - m @ c
        return out

    def to_prior(self, xyz: Array) -> Array:
        """Prior-scan world points ``[..., 3]`` (LPS mm) of current-scan points ``xyz``."""
        m = self.matrix()
        return np.asarray(xyz, float) @ m[:3, :3].T + m[:3, 3]

    def to_current(self, xyz: Array) -> Array:
        """Current-scan world points ``[..., 3]`` (LPS mm) of prior-scan points ``xyz`` (the inverse map)."""
        m = np.linalg.inv(self.matrix())
        return np.asarray(xyz, float) @ m[:3, :3].T + m[:3, 3]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready parameters and both matrices (``current_to_prior``, ``prior_to_current``)."""
        return {
            "rotation_deg": list(self.rotation_deg),
            "translation_mm": list(self.translation_mm),
            "scale_xyz": list(self.scale_xyz),
            "centre_xyz": list(self.centre_xyz),
            "current_to_prior": self.matrix().round(9).tolist(),
            "prior_to_current": np.linalg.inv(self.matrix()).round(9).tolist(),
        }


def sample_pose(
    rng: np.random.Generator,
    *,
    centre_xyz: Array,
    max_rotation_deg: tuple[float, float, float] = (2.0, 2.0, 3.0),
    max_translation_mm: tuple[float, float, float] = (8.0, 12.0, 15.0),
    scale_z: tuple[float, float] = (0.93, 1.0),
    scale_xy: tuple[float, float] = (0.98, 1.0),
) -> PoseChange:
    """Draw a pose and breath-hold change: rotations and translations uniform within +- the maxima (y, the
    couch height), the prior's scale uniform in ``scale_z`` along z and ``scale_xy`` in-plane (one value)."""
    rot = rng.uniform(-1.0, 1.0, 3) * np.asarray(max_rotation_deg, float)
    tr = rng.uniform(-1.0, 1.0, 3) * np.asarray(max_translation_mm, float)
    sxy, sz = float(rng.uniform(*scale_xy)), float(rng.uniform(*scale_z))
    return PoseChange(
        rotation_deg=tuple(round(float(v), 4) for v in rot),  # type: ignore[arg-type]
        translation_mm=tuple(round(float(v), 4) for v in tr),  # type: ignore[arg-type]
        scale_xyz=(round(sxy, 5), round(sxy, 5), round(sz, 5)),
        centre_xyz=tuple(float(v) for v in np.asarray(centre_xyz, float)),  # type: ignore[arg-type]
    )


@dataclass
class PlannedNodule:
    """One truth nodule of a pair, designed in the current scan's frame.

    Attributes:
        truth_id: the nodule's id, also its label value in both label images.
        status: one of :data:`STATUSES`.
        change: ``volume`` or ``solid`` for a grown nodule, else ``""``.
        body: the design at its largest size (placement fills in ``center``, ``side``, ``location``).
        radius: base radius (mm) in the ``current`` and ``prior`` scan, None where the nodule is absent.
        solid_radius: radius (mm) of the solid core (part-solid, calcified) in each scan.
    """

    truth_id: int
    status: str
    change: str
    body: Nodule
    radius: dict[str, float | None] = field(default_factory=dict)
    solid_radius: dict[str, float] = field(default_factory=dict)


def _resize(n: Nodule, d_lo: float, d_hi: float) -> Nodule:
    """Clamp the base diameter to ``[d_lo, d_hi]``, scaling the solid core with it."""
    d = float(np.clip(n.diameter_mm, d_lo, d_hi))
    f = d / n.diameter_mm
    n.radius, n.solid_radius = n.radius * f, n.solid_radius * f
    return n


def _plan_one(rng: np.random.Generator, status: str, change: str, d_min: float, tid: int) -> PlannedNodule:
    radius: dict[str, float | None]
    if status == "grown" and change == "solid":
        n = _resize(design_nodule(rng, d_min=max(d_min, 8.0), type_p=(0, 1, 0, 0)), 8.0, MAX_DIAMETER_MM)
        solid_d = float(np.clip(2 * n.solid_radius, 4.0, 0.8 * n.diameter_mm))
        prior_d = solid_d - float(rng.uniform(MIN_GROWTH_MM, 4.0))
        prior_d = prior_d if prior_d >= 1.5 else 0.0  # a ground-glass prior: a new solid component
        radius = {"current": n.radius, "prior": n.radius}
        solid = {"current": solid_d / 2, "prior": prior_d / 2}
    elif status == "grown":
        n = _resize(design_nodule(rng, d_min=max(d_min, 7.0), type_p=GROWN_P), 7.0, MAX_DIAMETER_MM)
        d = n.diameter_mm
        v_min = max(1.3, (d / (d - MIN_GROWTH_MM)) ** 3)
        g = float(rng.uniform(v_min, 3.0)) ** (1.0 / 3.0) if v_min < 3.0 else 3.0 ** (1.0 / 3.0)
        radius = {"current": n.radius, "prior": n.radius / g}
        solid = {"current": n.solid_radius, "prior": n.solid_radius / g}
    else:
        mix = {"stable": STABLE_P, "new": NEW_P, "resolved": RESOLVED_P}[status]
        n = _resize(design_nodule(rng, d_min=d_min, type_p=mix), d_min, MAX_DIAMETER_MM - 5.0)
        radius = {
            "current": None if status == "resolved" else n.radius,
            "prior": None if status == "new" else n.radius,
        }
        solid = {"current": n.solid_radius, "prior": n.solid_radius}
    return PlannedNodule(
        truth_id=tid, status=status, change=change, body=n, radius=radius, solid_radius=solid
    )


def plan_nodules(
    rng: np.random.Generator, *, d_min: float, counts: dict[str, int] | None = None
) -> list[PlannedNodule]:
    """Design the truth nodules of one pair (before placement), ids 1..N.

    Args:
        d_min: smallest diameter (mm).
        counts: nodules per kind, keys ``grown``, ``solid`` (part-solid, solid component grown), ``stable``,
            ``new``, ``resolved``; drawn when None (1-2 grown, 1-2 stable, 0-1 solid, 1 new, 0-1 resolved).
    """
    if counts is None:
        counts = {
            "grown": 1 + int(rng.random() < 0.5),
            "solid": int(rng.random() < 0.5),
            "stable": 1 + int(rng.random() < 0.5),
            "new": 1,
            "resolved": int(rng.random() < 0.6),
        }
    kinds = [("grown", "volume")] * counts.get("grown", 0) + [("grown", "solid")] * counts.get("solid", 0)
    kinds += [(s, "") for s in ("stable", "new", "resolved") for _ in range(counts.get(s, 0))]
    return [_plan_one(rng, s, c, d_min, i) for i, (s, c) in enumerate(kinds, start=1)]


def version(p: PlannedNodule, scan: str, pose: PoseChange | None = None) -> Nodule | None:
    """The nodule as drawn in ``scan`` (``current`` or ``prior``; the prior needs ``pose``), None if absent."""
    r = p.radius.get(scan)
    if r is None:
        return None
    n = copy.deepcopy(p.body)
    n.radius, n.solid_radius = float(r), float(p.solid_radius[scan])
    if n.type == "part-solid" and n.solid_radius <= 0:
        n.type, n.core_hu = "ground-glass", n.hu
    if scan == "prior":
        if pose is None:
            raise ValueError("the prior version of a nodule needs the pose change")
        rot = pose.rotation
        n.center = pose.to_prior(p.body.center)
        n.lobe_dirs = np.asarray(n.lobe_dirs) @ rot.T
        n.spicules = np.asarray(n.spicules) @ rot.T
    return n


def body_stats(n: Nodule, *, steps: int = 64) -> tuple[float, Array]:
    """Volume (mm3) and centroid (LPS mm) of a nodule's body (``surface_sdf < 0``) on a fine regular grid."""
    half = n.r_max + 0.5
    h = 2 * half / steps
    ax = (np.arange(steps) + 0.5) * h - half
    pts = np.stack(np.meshgrid(ax, ax, ax, indexing="ij"), axis=-1).reshape(-1, 3) + np.asarray(n.center)
    inside = n.surface_sdf(pts) < 0
    if not inside.any():
        return 0.0, np.asarray(n.center, float)
    return float(inside.sum() * h**3), pts[inside].mean(axis=0)


def describe(p: PlannedNodule, scan: str, pose: PoseChange) -> dict[str, Any]:
    """Truth measures of the nodule in ``scan``: ``x, y, z`` (centroid, LPS mm of that scan), ``diameter_mm``
    (equivalent sphere), ``volume_mm3``, ``solid_mm``, ``type``; empty where the nodule is absent.

    Measured on the design in the current frame and carried to the prior rigidly (the centroid's offset from
    the centre turned by ``R``), so an unchanged nodule has exactly the same size in both scans.
    """
    shown = version(p, scan, pose)
    if shown is None:
        return {}
    n = copy.deepcopy(p.body)  # the size drawn in this scan, in the current frame (unturned)
    n.radius, n.solid_radius = shown.radius, shown.solid_radius
    vol, c = body_stats(n)
    if scan == "prior":
        c = pose.to_prior(n.center) + pose.rotation @ (c - np.asarray(n.center, float))
    kind = shown.type
    diameter = round(float((6.0 * vol / np.pi) ** (1.0 / 3.0)), 3)
    return {
        "x": float(c[0]),
        "y": float(c[1]),
        "z": float(c[2]),
        "diameter_mm": diameter,
        "volume_mm3": round(vol, 2),
        "solid_mm": diameter
        if kind in ("solid", "calcified")
        else (round(2 * n.solid_radius, 2) if kind == "part-solid" else 0.0),
        "type": kind,
    }


#: Columns of ``truth.csv``: per nodule, the current (``cur_``) and prior (``prior_``) measures and the change.
TRUTH_COLUMNS = (
    "pair_id",
    "truth_id",
    "status",
    "change",
    "type",
    "prior_type",
    "location",
    "interval_days",
    "cur_x",
    "cur_y",
    "cur_z",
    "cur_diameter_mm",
    "cur_volume_mm3",
    "cur_solid_mm",
    "cur_mask_mm3",
    "prior_x",
    "prior_y",
    "prior_z",
    "prior_diameter_mm",
    "prior_volume_mm3",
    "prior_solid_mm",
    "prior_mask_mm3",
    "volume_ratio",
    "diameter_change_mm",
    "solid_change_mm",
    "doubling_days",
)


def truth_row(pair_id: str, p: PlannedNodule, pose: PoseChange, *, interval_days: int) -> dict[str, Any]:
    """One ``truth.csv`` row (:data:`TRUTH_COLUMNS`, without the mask volumes, which need the label images)."""
    a, b = describe(p, "current", pose), describe(p, "prior", pose)
    row: dict[str, Any] = {
        "pair_id": pair_id,
        "truth_id": p.truth_id,
        "status": p.status,
        "change": p.change,
        "type": a.get("type", ""),
        "prior_type": b.get("type", ""),
        "location": p.body.location,
        "interval_days": interval_days,
    }
    row.update({f"cur_{k}": v for k, v in a.items() if k != "type"})
    row.update({f"prior_{k}": v for k, v in b.items() if k != "type"})
    if a and b:
        ratio = a["volume_mm3"] / max(b["volume_mm3"], 1e-9)
        row["volume_ratio"] = round(ratio, 4)
        row["diameter_change_mm"] = round(a["diameter_mm"] - b["diameter_mm"], 3)
        row["solid_change_mm"] = round(a["solid_mm"] - b["solid_mm"], 3)
        if p.status == "grown" and ratio > 1.0:
            row["doubling_days"] = round(float(interval_days * np.log(2.0) / np.log(ratio)), 1)
    return row
