"""Follow-up pairs with known truth: one patient scanned twice, nodules grown, stable, new and resolved.

Two sources:

* **Phantom pairs** (:func:`make_phantom_pair`). The thorax of the phantom generator for the pair's seed (the
  same random draws as :func:`pipelines.phantom.generate.generate_case`, so the same patient) is rendered once without
  noise, couch or nodules. The current scan is that anatomy; the prior is the same noiseless anatomy resampled
  (SimpleITK, linear) under a known :class:`~pipelines.followup.pair_truth.PoseChange` (rotation, couch height and
  z shift, breath-hold scale) onto the prior's own grid (its own slice spacing and field of view). Each scan then gets its own couch,
  its nodules rendered at corresponding positions (the prior's centres mapped by the same pose change) and its
  own scanner model (kernel, dose, noise drawn independently) and on-disk orientation (always different from the
  current's). So nothing of the current's noise is in the prior.
* **Real-CT pairs** (:func:`make_real_pair`). The current scan is a real CT with nodules inserted as
  ``insert-nodules`` does (:func:`pipelines.phantom.insert.blend_nodules`: synthetic nodules keep the scan's own
  noise); the prior is the CT resampled under the pose change, plus independent correlated noise, with the prior
  nodules blended in and stored in a different orientation. Its field of view is the part of the CT's grid that
  the moved CT covers entirely (:func:`covered_prior_grid`), so it has no band of fill air at its faces. Its
  noise is the host's noise resampled plus new noise: a single real scan cannot give independent noise.

The breath-hold change is an affine scale of the whole scan about the lung apex (phantom) or the lungs' centre
(real CT), not a lung-only deformation. Arrays are ``[z, y, x]`` on canonical LPS grids until written; all
positions are LPS world mm; HU.

Layout written by :func:`make_followup_pairs`::

    current/<pair>.nii.gz, prior/<pair>.nii.gz                 the two scans (int16 HU)
    current_labels/<pair>.nii.gz, prior_labels/<pair>.nii.gz   truth nodule masks, value = truth_id in both
    pairs.csv    pair_id, current, prior, interval_days, current_labels, prior_labels, source
    truth.csv    one row per truth nodule (:data:`~pipelines.followup.pair_truth.TRUTH_COLUMNS`)
    pairs.json   seeds, pose/breath-hold parameters and matrices, scanner settings and orientations per pair
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from pipelines.followup.pair_truth import (
    TRUTH_COLUMNS,
    PlannedNodule,
    PoseChange,
    plan_nodules,
    sample_pose,
    truth_row,
    version,
)
from pipelines.phantom.anatomy import Thorax, lung_sdf, sample_thorax
from pipelines.phantom.generate import fit_grid
from pipelines.phantom.nodules import Nodule, place_nodules, render_nodules
from pipelines.phantom.render import render_thorax
from pipelines.phantom.scanner import (
    ORIENTATIONS,
    ScanSpec,
    apply_scanner,
    paint_table,
    sample_scan,
    to_disk_orientation,
)
from pipelines.phantom.shapes import Array, Grid, upsampled_noise
from pipelines.phantom.vessels import build_vessels, paint_trees, sample_lung_points

#: Default master seed of follow-up pair sets. Pair seeds are derived with a tag of their own
#: (:func:`pair_seed`), so no pair shares its patient with a case of ``sample-data`` for any master seed; the
#: default also differs from every master seed the Makefile uses (7, 1000, 7000, 9000, 101-106, 201-206, 301-308).
DEFAULT_SEED = 7700
_PAIR_TAG = 0x50414952  # "PAIR"
SIZES = ("small", "full")


def pair_seed(seed: int, index: int) -> int:
    """The generator seed of pair ``index`` of a set made with master ``seed``."""
    return int(np.random.SeedSequence([int(seed), int(index), _PAIR_TAG]).generate_state(1)[0])


@dataclass
class FollowupPair:
    """One follow-up pair in memory.

    Attributes:
        pair_id: its name.
        current, prior: int16 HU images, each in its own on-disk orientation.
        current_labels, prior_labels: uint8 truth masks on the same grids, value = ``truth_id``.
        truth: one ``truth.csv`` row per truth nodule.
        pose: the map from current to prior world coordinates.
        interval_days: days between the scans.
        meta: seeds, scanner settings and orientations (JSON-ready).
    """

    pair_id: str
    current: sitk.Image
    prior: sitk.Image
    current_labels: sitk.Image
    prior_labels: sitk.Image
    truth: list[dict[str, Any]]
    pose: PoseChange
    interval_days: int
    meta: dict[str, Any]


# --- geometry -------------------------------------------------------------------------------------------------


def _box_sdf(grid: Grid, p: Array, margin: float) -> Array:
    """Positive where world points ``[n, 3]`` lie outside ``grid``'s extent shrunk by ``margin`` mm."""
    lo = np.asarray(grid.origin_xyz) + margin
    hi = np.asarray(grid.origin_xyz) + (np.asarray(grid.shape_zyx[::-1]) - 1) * np.asarray(
        grid.spacing_zyx[::-1]
    )
    return np.max(np.maximum(lo - p, p - (hi - margin)), axis=-1)


def prior_grid_for(grid: Grid, *, dz_mm: float, xy_factor: float) -> Grid:
    """The prior's grid: the current's in-plane matrix with voxels ``xy_factor`` times as wide (its own
    reconstruction field of view, centred on the current's), and slices ``dz_mm`` apart over the current's z range."""
    nz, ny, nx = grid.shape_zyx
    dz, dy, dx = grid.spacing_zyx
    sy, sx = dy * xy_factor, dx * xy_factor
    ox = grid.origin_xyz[0] + 0.5 * ((nx - 1) * dx - (nx - 1) * sx)
    oy = grid.origin_xyz[1] + 0.5 * ((ny - 1) * dy - (ny - 1) * sy)
    nz_p = int(np.floor((nz - 1) * dz / dz_mm + 1e-6)) + 1
    return Grid((nz_p, ny, nx), (float(dz_mm), sy, sx), (ox, oy, grid.origin_xyz[2]))


def resample_to_prior(
    array: Array, grid: Grid, prior_grid: Grid, pose: PoseChange, *, fill: float, nearest: bool = False
) -> Array:
    """The current scan's ``array`` (``[z, y, x]`` on ``grid``) seen in the prior: sampled at ``to_current(q)``
    for every voxel ``q`` of ``prior_grid`` (linear, or nearest for labels); ``fill`` off the current grid."""
    inv = np.linalg.inv(pose.matrix())
    tx = sitk.AffineTransform(3)
    tx.SetMatrix([float(v) for v in inv[:3, :3].ravel()])
    tx.SetTranslation([float(v) for v in inv[:3, 3]])
    ref = sitk.Image([int(v) for v in prior_grid.shape_zyx[::-1]], sitk.sitkUInt8)
    ref.SetSpacing([float(s) for s in prior_grid.spacing_zyx[::-1]])
    ref.SetOrigin([float(o) for o in prior_grid.origin_xyz])
    interp = sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear
    out = sitk.Resample(grid.to_image(np.asarray(array)), ref, tx, interp, float(fill))
    return sitk.GetArrayFromImage(out)


def _lung_anchor(lungs: Array, grid: Grid, *, apex: bool) -> Array:
    """Centre of the pose change (LPS mm): the lungs' centroid, with z at the apex when ``apex``."""
    idx = np.argwhere(lungs > 0)
    c = grid.index_to_world(idx.mean(axis=0))
    if apex:
        c[2] = float(grid.index_to_world(np.array([idx[:, 0].max(), 0, 0]))[2])
    return c


def _fitting_pose(
    rng: np.random.Generator, lungs: Array, grid: Grid, prior_grid: Grid, *, apex: bool, **ranges: Any
) -> PoseChange:
    """A pose change whose prior keeps the lungs' bounding box inside ``prior_grid`` (5 mm margin) when it can."""
    idx = np.argwhere(lungs > 0)
    lo, hi = grid.index_to_world(idx.min(axis=0)), grid.index_to_world(idx.max(axis=0))
    corners = np.array([[a[0], b[1], c[2]] for a in (lo, hi) for b in (lo, hi) for c in (lo, hi)])
    centre = _lung_anchor(lungs, grid, apex=apex)
    pose = sample_pose(rng, centre_xyz=centre, **ranges)
    for _ in range(12):
        if float(_box_sdf(prior_grid, pose.to_prior(corners), 5.0).max()) <= 0:
            break
        tx, ty, tz = (0.6 * v for v in pose.translation_mm)
        pose = dataclasses.replace(pose, translation_mm=(tx, ty, tz))
    return pose


# --- shared nodule steps ---------------------------------------------------------------------------------------


def _place(
    plans: list[PlannedNodule],
    *,
    lungs: dict[int, Any],
    candidates: dict[int, Array],
    vessels: tuple[Array, Array, Array],
    rng: np.random.Generator,
    scan: tuple[Array, Grid],
) -> list[PlannedNodule]:
    """Place the plans' bodies in the current scan; keep (and renumber 1..N) the plans that found a place."""
    placed = place_nodules(
        [p.body for p in plans], lungs=lungs, candidates=candidates, vessels=vessels, rng=rng, scan=scan
    )
    kept = [p for p in plans if any(p.body is n for n in placed)]
    for i, p in enumerate(kept, start=1):
        p.truth_id = i
    return kept


def _versions(plans: list[PlannedNodule], scan: str, pose: PoseChange) -> tuple[list[Nodule], list[int]]:
    out, ids = [], []
    for p in plans:
        n = version(p, scan, pose)
        if n is not None:
            out.append(n)
            ids.append(p.truth_id)
    return out, ids


def _truth_labels(labels: Array, ids: list[int]) -> Array:
    """Instance labels 1..k (in drawing order) renumbered to the nodules' truth ids (uint8)."""
    lut = np.zeros(max(int(labels.max()), len(ids)) + 1, dtype=np.uint8)
    lut[1 : len(ids) + 1] = ids
    return lut[labels]


def _truth_table(
    pair_id: str,
    plans: list[PlannedNodule],
    pose: PoseChange,
    labels: dict[str, tuple[Array, Grid]],
    interval_days: int,
) -> list[dict[str, Any]]:
    rows = []
    for p in plans:
        row = truth_row(pair_id, p, pose, interval_days=interval_days)
        for scan, key in (("current", "cur"), ("prior", "prior")):
            lab, g = labels[scan]
            if p.radius.get(scan) is not None:
                row[f"{key}_mask_mm3"] = round(float((lab == p.truth_id).sum() * np.prod(g.spacing_zyx)), 2)
        rows.append(row)
    return rows


def _assemble(
    pid: str,
    images: dict[str, Array],
    labels: dict[str, tuple[Array, Grid]],
    codes: dict[str, str],
    *,
    plans: list[PlannedNodule],
    pose: PoseChange,
    interval: int,
    meta: dict[str, Any],
) -> FollowupPair:
    """The pair with each scan's image and truth labels (canonical arrays on its grid) stored as ``codes`` says."""
    disk = {k: to_disk_orientation(labels[k][1].to_image(images[k]), codes[k]) for k in codes}
    masks = {k: to_disk_orientation(labels[k][1].to_image(labels[k][0]), codes[k]) for k in codes}
    return FollowupPair(
        pair_id=pid,
        current=disk["current"],
        prior=disk["prior"],
        current_labels=masks["current"],
        prior_labels=masks["prior"],
        truth=_truth_table(pid, plans, pose, labels, interval),
        pose=pose,
        interval_days=interval,
        meta=meta,
    )


def _other_orientation(rng: np.random.Generator, code: str) -> str:
    return str(rng.choice([c for c in ORIENTATIONS if c != code]))


def _spec_meta(spec: ScanSpec) -> dict[str, Any]:
    g = spec.grid
    return {
        "orientation": spec.orientation,
        "shape_zyx": list(g.shape_zyx),
        "spacing_zyx": [round(s, 6) for s in g.spacing_zyx],
        "origin_xyz": [round(o, 6) for o in g.origin_xyz],
        "noise_hu": round(spec.noise_hu, 3),
        "blur_xy_mm": round(spec.blur_xy_mm, 4),
        "sharpen": round(spec.sharpen, 4),
    }


def _framed(lung_fn: Any, grid: Grid, prior_grid: Grid, pose: PoseChange, margin: float = 2.0) -> Any:
    """A lung signed-distance function that also keeps points ``margin`` mm inside both scans' grids."""

    def fn(p: Array) -> Array:
        p = np.asarray(p, float)
        frame = np.maximum(_box_sdf(grid, p, margin), _box_sdf(prior_grid, pose.to_prior(p), margin))
        return np.maximum(lung_fn(p), frame)

    return fn


def _in_both(points: Array, grid: Grid, prior_grid: Grid, pose: PoseChange, margin: float = 8.0) -> Array:
    if not len(points):
        return points
    ok = (_box_sdf(grid, points, margin) <= 0) & (_box_sdf(prior_grid, pose.to_prior(points), margin) <= 0)
    return points[ok]


# --- phantom pairs ---------------------------------------------------------------------------------------------


def phantom_anatomy(
    rng: np.random.Generator, *, size: str
) -> tuple[ScanSpec, Thorax, Array, Array, tuple[Array, Array, Array]]:
    """The noiseless thorax of the phantom generator (no couch, no nodules) from ``rng``'s first draws.

    Returns:
        ``(spec, thorax, hu, lungs, vessels)``: the scan settings, the patient, float32 HU ``[z, y, x]`` on
        ``spec.grid`` with vessels and airways, uint8 lung labels (1 right, 2 left) and the vessel segments
        ``(starts, ends, radii)`` (LPS mm) that juxta-vascular nodules attach to.
    """
    spec = sample_scan(rng, size=size)
    t = sample_thorax(rng, fov_mm=spec.fov_mm, z_center=0.0)
    spec, t = fit_grid(spec, t, rng, max_nz=140 if size == "small" else 320)
    grid = spec.grid
    hu, lungs, _ = render_thorax(t, grid, upsampled_noise(grid, sigma_mm=float(rng.uniform(4, 9)), rng=rng))
    arteries, veins, bronchi = build_vessels(t, rng, n_points=3200 if size == "full" else 700)
    paint_trees(hu, grid, t, arteries, veins, bronchi)
    tree = (
        np.concatenate([arteries.starts, veins.starts]),
        np.concatenate([arteries.ends, veins.ends]),
        np.concatenate([arteries.r0, veins.r0]),
    )
    return spec, t, hu, lungs, tree


def _prior_spec(rng: np.random.Generator, spec: ScanSpec, size: str) -> ScanSpec:
    """The prior's own scanner (slice spacing, field of view within +-5 %, kernel, dose, padding) over the
    current's z range, stored in another orientation."""
    drawn = sample_scan(rng, size=size)
    grid = prior_grid_for(
        spec.grid, dz_mm=drawn.grid.spacing_zyx[0], xy_factor=float(rng.uniform(0.95, 1.05))
    )
    code = (
        drawn.orientation
        if drawn.orientation != spec.orientation
        else _other_orientation(rng, spec.orientation)
    )
    return dataclasses.replace(drawn, grid=grid, orientation=code, blur_z_mm=0.42 * grid.spacing_zyx[0])


def make_phantom_pair(
    *, seed: int, size: str = "small", pair_id: str | None = None, counts: dict[str, int] | None = None
) -> FollowupPair:
    """One phantom follow-up pair (see the module docstring); the same ``seed`` always gives the same pair.

    Args:
        seed: generator seed (the thorax is that of ``generate_case(seed=seed, size=size)``).
        size: ``small`` (128x128, ~2.5 mm voxels) or ``full`` (512x512).
        counts: truth nodules per kind (:func:`~pipelines.followup.pair_truth.plan_nodules`); drawn when None.
    """
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, not {size!r}")
    rng = np.random.default_rng(seed)
    spec, t, hu, lungs, tree = phantom_anatomy(rng, size=size)
    grid = spec.grid
    prior_spec = _prior_spec(rng, spec, size)
    pg = prior_spec.grid
    pose = _fitting_pose(rng, lungs, grid, pg, apex=True)
    interval = int(rng.integers(80, 421))
    plans = plan_nodules(rng, d_min=5.0 if size == "small" else 4.0, counts=counts)
    fns = {
        s: _framed(lambda p, s=s: lung_sdf(t, p[:, 0], p[:, 1], p[:, 2], s), grid, pg, pose) for s in (1, 2)
    }
    cands = {s: _in_both(sample_lung_points(t, s, 1500, rng, margin=2.0), grid, pg, pose) for s in (1, 2)}
    plans = _place(plans, lungs=fns, candidates=cands, vessels=tree, rng=rng, scan=(hu, grid))
    prior_hu = resample_to_prior(hu, grid, pg, pose, fill=-1000.0)
    top_y = t.cy + t.body_b_post - 8.0 + float(rng.uniform(0, 25))
    paint_table(hu, grid, top_y=top_y, center_x=t.cx, rng=rng)
    back = pose.to_prior(np.array([t.cx, top_y, t.cz + 0.5 * t.lung_top]))
    paint_table(prior_hu, pg, top_y=float(back[1]), center_x=float(back[0]), rng=rng)
    labels = {}
    images = {}
    for scan, arr, sp in (("current", hu, spec), ("prior", prior_hu, prior_spec)):
        nods, ids = _versions(plans, scan, pose)
        labels[scan] = (_truth_labels(render_nodules(arr, sp.grid, nods, rng), ids), sp.grid)
        images[scan] = apply_scanner(arr, sp, rng)
    del hu, prior_hu
    pid = pair_id or f"pair_{seed}"
    meta = {"pair_seed": int(seed), "source": f"phantom-{size}", "current": _spec_meta(spec)}
    meta["prior"] = _spec_meta(prior_spec)
    codes = {"current": spec.orientation, "prior": prior_spec.orientation}
    return _assemble(pid, images, labels, codes, plans=plans, pose=pose, interval=interval, meta=meta)


# --- real-CT pairs ---------------------------------------------------------------------------------------------


@dataclass
class RealHost:
    """A real CT to make pairs from: canonical HU ``[z, y, x]`` (float32), lung labels, grid, stored orientation."""

    name: str
    hu: Array
    lungs: Array
    grid: Grid
    orientation: str


def load_host(path: str | Path, *, lung_mask: str | Path | None = None) -> RealHost:
    """Read a CT (oblique scans refused) and its lungs (given mask, else the project's lung segmenter)."""
    from pipelines.imaging.filesys import strip_image_suffix
    from pipelines.phantom.insert import host_scan

    _, code, ct, hu, lungs = host_scan(path, lung_mask)
    grid = Grid(hu.shape, tuple(ct.GetSpacing()[::-1]), tuple(ct.GetOrigin()))  # type: ignore[arg-type]
    return RealHost(strip_image_suffix(Path(path).name), hu, np.asarray(lungs, np.uint8), grid, code)


def covered_prior_grid(grid: Grid, pose: PoseChange) -> Grid:
    """The prior's grid for a pair made from one real CT: ``grid`` with every boundary plane peeled off that holds
    a voxel the pose maps (even partly, for linear interpolation) outside the CT.

    The prior is the CT seen under the pose change; sampled on the whole of ``grid`` it would carry bands of
    fill (air) at the faces where the moved anatomy leaves the field of view: a real prior has its own field of
    view, never an air band through the body (the detector marked bone beside such bands as calcified nodules:
    11 false nodules on the 6 real-CT priors of seed 7800). Peeling takes, each time, the face plane with the
    largest share of such voxels.
    """
    ones = np.ones(grid.shape_zyx, np.float32)
    valid = resample_to_prior(ones, grid, grid, pose, fill=0.0) >= 1.0 - 1e-4
    lo, hi = [0, 0, 0], list(grid.shape_zyx)
    while True:
        box = valid[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
        if box.all() or min(b - a for a, b in zip(lo, hi)) <= 2:
            break
        faces = []
        for axis in range(3):
            for side, plane in ((0, 0), (1, -1)):
                face = np.take(box, plane, axis=axis)
                faces.append((float(np.mean(~face)), axis, side))
        _, axis, side = max(faces)
        if side == 0:
            lo[axis] += 1
        else:
            hi[axis] -= 1
    origin = grid.index_to_world(np.asarray(lo, float)[None])[0]
    shape = tuple(int(b - a) for a, b in zip(lo, hi))
    return Grid(shape, grid.spacing_zyx, tuple(float(v) for v in origin))  # type: ignore[arg-type]


def _edt_lungs(host: RealHost, pose: PoseChange, pg: Grid) -> tuple[dict[int, Any], dict[int, Array]]:
    """Per side, a lung signed-distance function (from the mask's distance map) and deep candidate points; both
    keep nodules inside the host's grid and the prior's grid ``pg``."""
    g = host.grid
    fns: dict[int, Any] = {}
    cands: dict[int, Array] = {}
    for side in (1, 2):
        inside = ndimage.distance_transform_edt(host.lungs == side, sampling=g.spacing_zyx)

        def fn(p: Array, inside: Array = inside) -> Array:
            d, ok = g.sample_nearest(inside, p)
            return np.where(ok & (d > 0), -d, 5.0)

        fns[side] = _framed(fn, g, pg, pose)
        deep = np.argwhere(inside > 4.0)
        pts = g.index_to_world(deep[:: max(1, len(deep) // 4000)]) if len(deep) else np.zeros((0, 3))
        cands[side] = _in_both(pts, g, pg, pose)
    sides = [s for s in (1, 2) if len(cands[s])]
    if not sides:
        raise ValueError(f"{host.name}: no lung deep enough for nodules inside both scans")
    for s in (1, 2):
        if s not in sides:
            fns[s], cands[s] = fns[sides[0]], cands[sides[0]]
    return fns, cands


def _added_noise(
    shape: tuple[int, ...], spacing_zyx: Any, rng: np.random.Generator, *, sd_hu: float
) -> Array:
    noise = ndimage.gaussian_filter(
        rng.standard_normal(shape, dtype=np.float32), [0.7 / s for s in spacing_zyx], truncate=3.0
    )
    return noise * (sd_hu / max(float(noise.std()), 1e-6))


def make_real_pair(
    host: RealHost | str | Path,
    *,
    seed: int,
    pair_id: str | None = None,
    counts: dict[str, int] | None = None,
) -> FollowupPair:
    """One follow-up pair from a real CT (see the module docstring); the same host and ``seed`` give the same pair.

    The pose change is smaller than a phantom's (rotations +-2 degrees, translations +-4/6/6 mm, z scale
    0.93-1.0 about the lungs' centre): a cropped scan has little room around its lungs.
    """
    from pipelines.phantom.insert import blend_nodules

    h = host if isinstance(host, RealHost) else load_host(host)
    g = h.grid
    rng = np.random.default_rng(seed)
    pose = sample_pose(
        rng,
        centre_xyz=_lung_anchor(h.lungs, g, apex=False),
        max_rotation_deg=(2.0, 2.0, 2.0),
        max_translation_mm=(4.0, 6.0, 6.0),
    )
    interval = int(rng.integers(80, 421))
    plans = plan_nodules(rng, d_min=max(4.0, 1.5 * min(g.spacing_zyx)), counts=counts)
    pg = covered_prior_grid(g, pose)
    fns, cands = _edt_lungs(h, pose, pg)
    smooth = ndimage.gaussian_filter(np.asarray(h.hu, np.float32), 1.0)
    empty = np.zeros((0, 3))
    plans = _place(
        plans, lungs=fns, candidates=cands, vessels=(empty, empty, np.zeros(0)), rng=rng, scan=(smooth, g)
    )
    sd = float(rng.uniform(8.0, 20.0))
    prior_base = resample_to_prior(h.hu, g, pg, pose, fill=-1024.0)
    prior_base += _added_noise(prior_base.shape, g.spacing_zyx, rng, sd_hu=sd)
    prior_code = _other_orientation(rng, h.orientation)
    labels, images = {}, {}
    for scan, arr, grid in (("current", h.hu, g), ("prior", prior_base, pg)):
        nods, ids = _versions(plans, scan, pose)
        new, lab = blend_nodules(arr, grid, nods, rng, smooth=smooth if scan == "current" else None)
        labels[scan] = (_truth_labels(lab, ids), grid)
        images[scan] = np.clip(np.round(new), -32768, 32767).astype(np.int16)
    pid = pair_id or f"{h.name}_pair_{seed}"

    def geo(grid: Grid) -> dict[str, Any]:
        return {
            "shape_zyx": list(grid.shape_zyx),
            "spacing_zyx": list(grid.spacing_zyx),
            "origin_xyz": list(grid.origin_xyz),
        }

    meta = {
        "pair_seed": int(seed),
        "source": h.name,
        "current": {"orientation": h.orientation, **geo(g)},
        "prior": {"orientation": prior_code, **geo(pg), "added_noise_hu": round(sd, 3)},
    }
    codes = {"current": h.orientation, "prior": prior_code}
    return _assemble(pid, images, labels, codes, plans=plans, pose=pose, interval=interval, meta=meta)


# --- writing a set ---------------------------------------------------------------------------------------------

PAIRS_COLUMNS = ("pair_id", "current", "prior", "interval_days", "current_labels", "prior_labels", "source")
#: Version of the pair generator's output, written to ``pairs.json``.
PAIRS_VERSION = 2  # 2: a real-CT prior's field of view is the covered part (no fill bands)


def write_pair(out: Path, pair: FollowupPair) -> dict[str, Any]:
    """Write one pair's four images under ``out`` (atomically); return its ``pairs.csv`` row (paths relative)."""
    from pipelines.imaging.io import write_image

    row: dict[str, Any] = {"pair_id": pair.pair_id, "interval_days": pair.interval_days}
    row["source"] = pair.meta.get("source", "")
    for key in ("current", "prior", "current_labels", "prior_labels"):
        row[key] = f"{key}/{pair.pair_id}.nii.gz"
        write_image(getattr(pair, key), out / row[key], compress=True)
    return row


def make_followup_pairs(
    out_dir: str | Path,
    *,
    n_pairs: int,
    seed: int = DEFAULT_SEED,
    size: str = "small",
    host: str | Path | None = None,
    lung_mask: str | Path | None = None,
) -> Path:
    """Write ``n_pairs`` follow-up pairs with known truth in the layout of the module docstring.

    Args:
        out_dir: output folder (created).
        n_pairs: pairs to make (at least 1).
        seed: master seed; pair ``i`` uses :func:`pair_seed` ``(seed, i)``, recorded in ``pairs.json``.
        size: phantom size, ``small`` or ``full`` (ignored with ``host``).
        host: a real CT to make the pairs from instead of phantoms (each pair its own pose and nodules).
        lung_mask: the host's lung mask (else segmented).

    Returns:
        ``out_dir`` as a Path.
    """
    from pipelines.batch.records import to_csv, write_json
    from pipelines.imaging.filesys import atomic_write_text

    if n_pairs < 1 or size not in SIZES:
        raise ValueError(f"n_pairs must be at least 1 and size one of {SIZES}, not {n_pairs}, {size!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    real = load_host(host, lung_mask=lung_mask) if host is not None else None
    rows, truth, metas = [], [], []
    for i in range(n_pairs):
        s = pair_seed(seed, i)
        if real is None:
            pair = make_phantom_pair(seed=s, size=size, pair_id=f"pair_s{seed}_{i:04d}")
        else:
            pair = make_real_pair(real, seed=s, pair_id=f"{real.name}_pair_s{seed}_{i:04d}")
        rows.append(write_pair(out, pair))
        truth.extend(pair.truth)
        metas.append({"pair_id": pair.pair_id, "interval_days": pair.interval_days, **pair.meta})
        metas[-1]["pose"] = pair.pose.as_dict()
    atomic_write_text(out / "pairs.csv", to_csv(rows, PAIRS_COLUMNS))
    atomic_write_text(out / "truth.csv", to_csv(truth, TRUTH_COLUMNS))
    info = {
        "pair_generator": PAIRS_VERSION,
        "seed": int(seed),
        "seed_rule": "pair i uses numpy SeedSequence([seed, i, 0x50414952]).generate_state(1)[0]",
        "size": None if real is not None else size,
        "host": None if host is None else str(host),
        "pose_convention": "current_to_prior maps current-scan LPS mm to prior-scan LPS mm (p' = R S (p - c) + c + t)",
        "pairs": metas,
    }
    write_json(out / "pairs.json", info)
    return out


def is_current(folder: str | Path) -> bool:
    """Whether ``folder`` holds a complete pair set (``truth.csv``, ``pairs.json``) of this generator version."""
    root = Path(folder)
    try:
        meta = json.loads((root / "pairs.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (root / "truth.csv").is_file() and meta.get("pair_generator") == PAIRS_VERSION


# ``python -m pipelines.followup.pairs --is-current DIR``: exit 0 when the set is current (the Makefile's check)
if __name__ == "__main__":
    import sys

    args = sys.argv[1:]
    if len(args) != 2 or args[0] != "--is-current":
        sys.exit("usage: python -m pipelines.followup.pairs --is-current DIR")
    sys.exit(0 if is_current(args[1]) else 1)
