"""Classical (no-network) lung segmentation of chest CT into right and left lung.

All arrays are ``[z, y, x]`` on the canonical grid (SimpleITK ``DICOMOrient(image, "LPS")`` then
``GetArrayFromImage``): x grows toward patient **L**eft, so the right lung lies at smaller x; y toward
**P**osterior; z toward **S**uperior. Intensities are Hounsfield units, spacing is ``spacing_zyx`` in mm.
Labels: 0 background, 1 right lung, 2 left lung (as lungmask).

Method, on a grid coarsened to about 2 mm by block averaging (fast, and it averages low-dose noise):

1. Smooth, threshold air (``air_hu``).
2. Outside air: per axial slice, air components touching the in-plane border that are mostly pure air
   (< ``pure_air_hu``). Lungs cut by the border of a cropped scan are denser (parenchyma, vessels) and stay.
3. 3D components of the remaining air; pure-gas components (stomach, bowel, gaps at the table, an isolated
   trachea: pure-air fraction >= ``gas_fraction``) and small or far-away pieces are dropped.
4. Trachea and main bronchi are found from a round midline pure-air seed and removed
   (:mod:`pipelines.lungs.airway`).
5. Lungs that touch (anterior junction) are split by erosion until two cores on either side of the body
   midline appear, then a watershed on HU; each piece goes to the side of the midline its centroid lies on.
6. Per side: closing by a ball of ``close_radius_mm`` (juxta-pleural nodules) and per-slice hole filling
   (vessels, nodules, consolidation enclosed by lung), then nearest-neighbour upsampling.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import watershed

from pipelines.lungs.airway import find_airway, slice_components
from pipelines.lungs.ops import (
    block_factors,
    block_mean_hu,
    bounding_box,
    close_mm,
    component_stats,
    dilate_mm,
    fill_holes_per_slice,
    upsample_labels,
)

RIGHT, LEFT = 1, 2
_NAMES = {RIGHT: "right", LEFT: "left"}


def _check_inputs(hu_zyx: np.ndarray, spacing_zyx: Sequence[float]) -> tuple[float, float, float]:
    if hu_zyx.ndim != 3:
        raise ValueError(f"hu_zyx must be a 3D [z, y, x] array, not shape {hu_zyx.shape}")
    sp = tuple(float(s) for s in spacing_zyx)
    if len(sp) != 3 or not all(np.isfinite(s) and s > 0 for s in sp):
        raise ValueError(f"spacing_zyx must be three strictly positive mm values, not {tuple(spacing_zyx)}")
    return sp[0], sp[1], sp[2]


def _outside_air(air: np.ndarray, pure: np.ndarray, *, pure_fraction: float) -> np.ndarray:
    """Per-slice air components that touch the in-plane border and are mostly pure air (outside the body)."""
    lab, n = slice_components(air)
    if n == 0:
        return np.zeros(air.shape, dtype=bool)
    border = np.zeros(n + 1, dtype=bool)
    for edge in (lab[:, 0, :], lab[:, -1, :], lab[:, :, 0], lab[:, :, -1]):
        border[np.unique(edge)] = True
    _, frac, _ = component_stats(lab, n, pure, centroids=False)
    outside = np.zeros(n + 1, dtype=bool)
    outside[1:] = border[1:] & (frac >= pure_fraction)
    return outside[lab]


def _midline_x(outside: np.ndarray, air: np.ndarray) -> float:
    """Body midline as an x index: median over slices of the centre of the not-outside x-extent."""
    inside = ~outside
    centres = []
    for z in np.flatnonzero(air.any(axis=(1, 2))):
        cols = np.flatnonzero(inside[z].any(axis=0))
        if cols.size:
            centres.append(0.5 * (cols[0] + cols[-1]))
    return float(np.median(centres)) if centres else 0.5 * (outside.shape[2] - 1)


def _keep_lung_components(
    mask: np.ndarray,
    pure: np.ndarray,
    spacing_zyx: Sequence[float],
    *,
    gas_fraction: float,
    min_ml: float,
    main_fraction: float,
    satellite_mm: float,
    min_thickness_mm: float = 0.0,
) -> np.ndarray:
    """3D components of ``mask`` that look like lung.

    Pure gas (stomach, bowel, gaps at the table: a pure-air voxel fraction >= ``gas_fraction``) and pieces
    under ``min_ml`` go, and so do big but thin sheets whose largest inscribed ball has a radius under
    ``min_thickness_mm`` (the foam core of a carbon-fibre couch, ~-900 HU, is a lung-dense curved slab a few
    mm thick; vessels, holes in the air mask, are filled per slice before measuring). Of the rest, components of at least ``main_fraction`` of the largest are lungs; smaller ones
    stay only within ``satellite_mm`` of those (lung cut off by a vessel or fissure), which drops bowel
    content that mimics lung density below the diaphragm.
    """
    lab, n = ndi.label(mask)
    if n == 0:
        return mask
    counts, frac, _ = component_stats(lab, n, pure, centroids=False)
    vols = counts * float(np.prod(spacing_zyx)) / 1000.0
    ok = (frac < gas_fraction) & (vols >= min_ml)
    if min_thickness_mm > 0 and ok.any():
        big = ok & (vols >= main_fraction * vols[ok].max())
        big_mask = np.concatenate([[False], big])[lab]
        box = bounding_box(big_mask, margin=(1, 1, 1))
        # vessels are holes in the air mask: fill them per slice first, or a small lung crowded with vessels
        # (no ball of 10 mm between them) is taken for a sheet and the whole scan loses its lungs
        depth = ndi.distance_transform_edt(fill_holes_per_slice(big_mask[box]), sampling=spacing_zyx)
        radius = np.zeros(n)
        lab_box = lab[box]
        for k in np.flatnonzero(big):  # a few big components: a pass each beats ndi.maximum's full argsort
            radius[k] = float(depth[lab_box == k + 1].max(initial=0.0))
        ok &= ~big | (radius >= min_thickness_mm)
    if not ok.any():
        return np.zeros(mask.shape, dtype=bool)
    main = ok & (vols >= main_fraction * vols[ok].max())
    main_mask = np.concatenate([[False], main])[lab]
    satellites = ok & ~main
    if satellites.any():
        sat_mask = np.concatenate([[False], satellites])[lab]
        box = bounding_box(sat_mask, margin=[int(np.ceil(satellite_mm / s)) + 1 for s in spacing_zyx])
        near = dilate_mm(main_mask[box], satellite_mm, spacing_zyx)
        touched = np.zeros(n + 1, dtype=bool)
        touched[np.unique(lab[box][near])] = True
        main |= satellites & touched[1:]
    return np.concatenate([[False], main])[lab]


def _split_component(
    comp: np.ndarray, hu_s: np.ndarray, spacing_zyx: Sequence[float], midline_x: float
) -> list[np.ndarray]:
    """Split one component into right/left parts if erosion reveals two cores across the midline."""
    box = bounding_box(comp, margin=(1, 1, 1))
    sub = comp[box]
    depth = ndi.distance_transform_edt(sub, sampling=spacing_zyx)
    x0 = box[2].start
    for radius in np.arange(1.0, 30.0, 1.5) * min(spacing_zyx[1:]):
        lab, n = ndi.label(depth > radius)
        if n < 2:
            if n == 0:
                break
            continue
        counts = np.bincount(lab.ravel())[1:]
        a, b = np.argsort(-counts)[:2]
        if counts[b] < 0.1 * counts.sum():
            continue
        xa = ndi.center_of_mass(lab == a + 1)[2] + x0
        xb = ndi.center_of_mass(lab == b + 1)[2] + x0
        if (xa - midline_x) * (xb - midline_x) >= 0:
            continue
        markers = np.where(lab == a + 1, 1, 0) + np.where(lab == b + 1, 2, 0)
        ws = watershed(hu_s[box], markers=markers, mask=sub)
        parts = []
        for k in (1, 2):
            part = np.zeros(comp.shape, dtype=bool)
            part[box] = ws == k
            parts.append(part)
        return parts
    return [comp]


def _assign_sides(
    lungs: np.ndarray, hu_s: np.ndarray, spacing_zyx: Sequence[float], midline_x: float
) -> np.ndarray:
    """Label lung air 1 (right, x < midline) or 2 (left), splitting components that straddle the midline."""
    lab, n = ndi.label(lungs)
    out = np.zeros(lungs.shape, dtype=np.uint8)
    xs = np.arange(lungs.shape[2])
    for k in range(1, n + 1):
        comp = lab == k
        cols = comp.sum(axis=(0, 1))
        right_frac = cols[xs < midline_x].sum() / cols.sum()
        parts = [comp]
        if 0.1 < right_frac < 0.9:
            parts = _split_component(comp, hu_s, spacing_zyx, midline_x)
        for part in parts:
            cx = (part.sum(axis=(0, 1)) * xs).sum() / max(part.sum(), 1)
            out[part] = RIGHT if cx < midline_x else LEFT
    return out


def _refine_sides(
    labels: np.ndarray, forbidden: np.ndarray, spacing_zyx: Sequence[float], *, close_radius_mm: float
) -> np.ndarray:
    """Close each side by a ball (juxta-pleural nodules) and fill per-slice holes (vessels, consolidation).

    Neither step may add ``forbidden`` voxels (outside air, the mediastinal airway and its wall).
    """
    grown = {}
    for side in (RIGHT, LEFT):
        mask = labels == side
        if mask.any():
            closed = close_mm(mask, close_radius_mm, spacing_zyx)
            filled = fill_holes_per_slice(closed)
            mask |= (closed | _enclosed_holes(filled & ~closed, filled)) & ~forbidden
        grown[side] = mask
    out = np.zeros(labels.shape, dtype=np.uint8)
    out[grown[RIGHT]] = RIGHT
    out[grown[LEFT] & ~grown[RIGHT]] = LEFT
    both = grown[RIGHT] & grown[LEFT]
    out[both] = labels[both]
    return out


def _enclosed_holes(holes: np.ndarray, filled: np.ndarray, *, open_fraction: float = 0.5) -> np.ndarray:
    """Per-slice holes that are enclosed in 3D too (vessels, nodules), not the top of the diaphragm.

    Near the lung base the liver dome shows as a hole in axial slices. Such a hole component sits on
    tissue outside the lung: most of its inferior face (the voxels just below it, ``z - 1``) lies outside
    ``filled``. A vessel or nodule hole has lung, or more hole, below it.
    """
    lab, n = ndi.label(holes)
    if n == 0:
        return holes
    top, below = lab[1:], lab[:-1]
    face = (top > 0) & (below != top)  # inferior face of each component
    face_n = np.bincount(top[face], minlength=n + 1)
    face_out = np.bincount(top[face & ~filled[:-1]], minlength=n + 1)
    keep = face_out <= open_fraction * np.maximum(face_n, 1)
    keep[0] = False
    return keep[lab]


def _mediastinal_airway(airway: np.ndarray, lungs: np.ndarray, spacing_zyx: Sequence[float]) -> np.ndarray:
    """Airway not enclosed by lung in its slice (trachea, main bronchi), grown by a wall margin (~3 mm)."""
    enclosed = fill_holes_per_slice(lungs | airway) & ~fill_holes_per_slice(airway) | lungs
    central = airway & ~enclosed
    if not central.any():
        central = airway
    return dilate_mm(central, max(3.0, max(spacing_zyx[1:])), spacing_zyx)


def segment_lungs(
    hu_zyx: np.ndarray,
    spacing_zyx: Sequence[float],
    *,
    working_spacing_mm: Sequence[float] = (2.5, 2.0, 2.0),
    smooth_sigma_mm: float = 1.0,
    air_hu: float = -320.0,
    pure_air_hu: float = -950.0,
    gas_fraction: float = 0.3,
    airway_hu: float = -950.0,
    min_lung_ml: float = 3.0,
    main_fraction: float = 0.1,
    satellite_mm: float = 10.0,
    close_radius_mm: float = 10.0,
    min_thickness_mm: float = 10.0,
) -> np.ndarray:
    """Segment the right and left lung of a CT volume.

    Args:
        hu_zyx: CT in HU, ``[z, y, x]`` on the canonical LPS grid (any integer or float dtype).
        spacing_zyx: Voxel spacing in mm, ``(z, y, x)``.
        working_spacing_mm: Approximate spacing ``(z, y, x)`` of the internal coarse grid; finer inputs are
            block-averaged to it and the result is upsampled back (nearest neighbour).
        smooth_sigma_mm: Gaussian smoothing before thresholds, mm.
        air_hu: Voxels below this (smoothed HU) are air-like: lung parenchyma, airways, gas.
        pure_air_hu: Block-averaged voxels below this are pure air (gas, outside air, airway lumen); lung
            parenchyma, even emphysematous, is mostly above it.
        gas_fraction: Air components with at least this fraction of pure-air voxels are gas (bowel,
            stomach, gaps at the table), not lung. Border-touching slice components with half are outside.
        airway_hu: Lumen threshold for trachea/main-bronchi growing.
        min_lung_ml: Smallest lung component kept, ml.
        main_fraction: Components of at least this fraction of the largest are lungs in their own right.
        satellite_mm: Smaller components are kept only within this distance (mm) of a main lung component.
        close_radius_mm: Ball radius of the per-side closing that keeps juxta-pleural nodules in the lung.
        min_thickness_mm: A large air-like component is lung only if a ball of this radius (mm) fits in it;
            thin sheets (a couch's foam core, a pad) are not.

    Returns:
        uint8 ``[z, y, x]`` labels, same shape as ``hu_zyx``: 0 background, 1 right lung, 2 left lung.

    Example:
        >>> import SimpleITK as sitk
        >>> img = sitk.DICOMOrient(sitk.ReadImage("chest.nii.gz"), "LPS")  # doctest: +SKIP
        >>> labels = segment_lungs(sitk.GetArrayFromImage(img), img.GetSpacing()[::-1])  # doctest: +SKIP
    """
    sp_in = _check_inputs(hu_zyx, spacing_zyx)
    factors = block_factors(hu_zyx.shape, sp_in, target_mm=working_spacing_mm)
    sp = tuple(s * f for s, f in zip(sp_in, factors))
    raw = block_mean_hu(hu_zyx, factors)
    pure = (raw < pure_air_hu).astype(np.float32)
    hu_s = raw
    if smooth_sigma_mm > 0:
        hu_s = ndi.gaussian_filter(raw, [smooth_sigma_mm / s for s in sp], mode="nearest", truncate=2.5)
    air = hu_s < air_hu
    outside = _outside_air(air, pure, pure_fraction=0.5)
    keep = dict(
        gas_fraction=gas_fraction, min_ml=min_lung_ml, main_fraction=main_fraction, satellite_mm=satellite_mm
    )
    lungs = _keep_lung_components(air & ~outside, pure, sp, min_thickness_mm=min_thickness_mm, **keep)
    midline = _midline_x(outside, lungs if lungs.any() else air)
    airway = find_airway(lungs, hu_s, sp, midline, airway_hu=airway_hu)
    forbidden = outside
    if airway.any():
        lungs = _keep_lung_components(lungs & ~dilate_mm(airway, max(sp), sp), pure, sp, **keep)
        forbidden = outside | _mediastinal_airway(airway, lungs, sp)
    labels = _assign_sides(lungs, hu_s, sp, midline)
    labels = _refine_sides(labels, forbidden, sp, close_radius_mm=close_radius_mm)
    return upsample_labels(labels, factors, hu_zyx.shape)


def lung_side_at(
    labels_zyx: np.ndarray,
    index_zyx: Sequence[float],
    *,
    spacing_zyx: Sequence[float] = (1.0, 1.0, 1.0),
    max_distance_mm: float = 5.0,
) -> str:
    """Lung side of a voxel: ``"right"``, ``"left"`` or ``"outside"``.

    A point outside both lungs but within ``max_distance_mm`` of one (a juxta-pleural nodule's centre) takes
    the side of the nearest lung voxel.

    Args:
        labels_zyx: ``[z, y, x]`` labels from :func:`segment_lungs` (1 right, 2 left).
        index_zyx: Voxel index ``(z, y, x)`` on the same grid (floats are rounded).
        spacing_zyx: Voxel spacing in mm, used for the distance.
        max_distance_mm: Search radius, mm.
    """
    idx = np.rint(np.asarray(index_zyx, dtype=float)).astype(int)
    shape = np.asarray(labels_zyx.shape)
    if idx.shape != (3,) or (idx < 0).any() or (idx >= shape).any():
        return "outside"
    value = int(labels_zyx[tuple(idx)])
    if value in _NAMES:
        return _NAMES[value]
    sp = np.asarray(spacing_zyx, dtype=float)
    reach = np.ceil(max_distance_mm / sp).astype(int)
    lo, hi = np.maximum(idx - reach, 0), np.minimum(idx + reach + 1, shape)
    window = labels_zyx[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    pts = np.argwhere(np.isin(window, list(_NAMES)))
    if pts.size == 0:
        return "outside"
    dist = np.linalg.norm((pts + lo - idx) * sp, axis=1)
    best = int(np.argmin(dist))
    if dist[best] > max_distance_mm:
        return "outside"
    return _NAMES[int(window[tuple(pts[best])])]


def lung_volumes_ml(labels_zyx: np.ndarray, spacing_zyx: Sequence[float]) -> dict[str, float]:
    """Right, left and total lung volume in ml from ``[z, y, x]`` labels and ``spacing_zyx`` (mm)."""
    voxel_ml = float(np.prod([float(s) for s in spacing_zyx])) / 1000.0
    counts = np.bincount(np.asarray(labels_zyx, dtype=np.uint8).ravel(), minlength=3)
    right, left = float(counts[RIGHT]) * voxel_ml, float(counts[LEFT]) * voxel_ml
    return {"right_lung_ml": right, "left_lung_ml": left, "total_lung_ml": right + left}
