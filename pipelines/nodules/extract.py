"""From the network's nodule probability map to a nodule instance mask and a nodule table.

Everything here works on the canonical grid (SimpleITK ``DICOMOrient(image, "LPS")``): arrays are
indexed ``[z, y, x]``, x grows toward patient Left, y toward Posterior, z toward Superior; spacing is mm
in array-axis order. World coordinates (LPS/RAS mm) and voxel indices of the original file are added
afterwards by :mod:`pipelines.nodules.coordinates`, which needs the SimpleITK images.

Example:
    >>> mask, nodules = extract_nodules(prob_zyx, hu_zyx, (1.25, 0.7, 0.7), lung_labels_zyx=lungs_zyx)
    >>> nodules[0]["mean_diameter_mm"], nodules[0]["type"], nodules[0]["lung_side"]
    (8.1, 'part-solid', 'right')
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from pipelines.nodules.axes import axial_diameters_mm
from pipelines.nodules.coordinates import add_original_indices, add_world_coordinates
from pipelines.nodules.density import (
    DensityThresholds,
    classify_density,
    equivalent_diameter_mm,
    solid_component_mask,
)
from pipelines.nodules.record import Candidate
from pipelines.nodules.sparse_labels import components
from pipelines.nodules.split import split_touching as split_component

__all__ = [
    "DensityThresholds",
    "add_original_indices",
    "add_world_coordinates",
    "extract_nodules",
    "lung_zone",
    "peak_centre",
    "probability_score",
]

#: Share of a component's highest-probability voxels averaged into its score (at least one voxel).
TOP_FRACTION = 0.10
#: Margin (voxels) around a component's bounding box for HU filtering and the lung-side fallback.
_CROP_MARGIN = 2
_SIDE_SEARCH_MARGIN = 10
_CONNECTIVITY_26 = np.ones((3, 3, 3), dtype=bool)


def probability_score(probabilities: np.ndarray, *, top_fraction: float = TOP_FRACTION) -> float:
    """Score of one component: the mean of its highest ``top_fraction`` voxel probabilities.

    The maximum rests on a single voxel, so one sliding-window artefact decides it; the mean over the
    whole component is dragged toward the threshold by its boundary voxels, more so for small nodules.
    The mean of the top 10 % (at least one voxel) is stable and comparable across sizes.

    Args:
        probabilities: 1-D probabilities of the component's voxels.
        top_fraction: share of voxels averaged, in (0, 1].

    Returns:
        The score in [0, 1].
    """
    values = np.asarray(probabilities, dtype=np.float64).ravel()
    k = max(1, math.ceil(top_fraction * values.size))
    return float(np.partition(values, values.size - k)[values.size - k :].mean())


def _check_inputs(
    probability_zyx: np.ndarray,
    hu_zyx: np.ndarray,
    spacing_zyx: Any,
    threshold: float,
    seed_threshold: float | None,
    lung_labels_zyx: np.ndarray | None,
) -> np.ndarray:
    """Validate the arguments of :func:`extract_nodules`; return the spacing as a float array."""
    if probability_zyx.ndim != 3:
        raise ValueError(f"probability_zyx must be a 3-D [z, y, x] array, not shape {probability_zyx.shape}")
    if hu_zyx.shape != probability_zyx.shape:
        raise ValueError(
            f"hu_zyx {hu_zyx.shape} must have the shape of probability_zyx {probability_zyx.shape}"
        )
    if lung_labels_zyx is not None and lung_labels_zyx.shape != probability_zyx.shape:
        raise ValueError(
            f"lung_labels_zyx {lung_labels_zyx.shape} must have the shape of probability_zyx {probability_zyx.shape}"
        )
    spacing = np.asarray(spacing_zyx, dtype=np.float64)
    if spacing.shape != (3,) or not np.all(spacing > 0):
        raise ValueError(f"spacing_zyx must be three strictly positive mm values, not {tuple(spacing_zyx)}")
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"threshold must be in [0, 1), not {threshold}")
    if seed_threshold is not None and not threshold <= seed_threshold <= 1.0:
        raise ValueError(f"seed_threshold must be in [threshold={threshold}, 1], not {seed_threshold}")
    return spacing


def _padded(slc: tuple[slice, ...], shape: tuple[int, ...], margin: int) -> tuple[slice, ...]:
    """Bounding-box slices grown by ``margin`` voxels, clipped to ``shape``."""
    return tuple(
        slice(max(0, s.start - margin), min(n, s.stop + margin)) for s, n in zip(slc, shape, strict=True)
    )


def _lung_side(lung_labels_zyx: np.ndarray | None, box: tuple[slice, ...], component: np.ndarray) -> str:
    """``right`` (label 1), ``left`` (label 2) or ``unknown`` by majority vote of the lung labels.

    Votes are taken inside the component; a juxtapleural nodule outside the lung mask falls back to the
    lung voxels of its bounding box grown by a few voxels.
    """
    if lung_labels_zyx is None:
        return "unknown"
    votes = np.bincount(lung_labels_zyx[box][component].ravel().astype(np.int64), minlength=3)[1:3]
    if votes.sum() == 0:
        wide = _padded(box, lung_labels_zyx.shape, _SIDE_SEARCH_MARGIN)
        votes = np.bincount(lung_labels_zyx[wide].ravel().astype(np.int64), minlength=3)[1:3]
    if votes[0] == votes[1]:
        return "unknown"
    return "right" if votes[0] > votes[1] else "left"


def lung_z_extent(lung_labels_zyx: np.ndarray, labels: Sequence[int]) -> tuple[int, int] | None:
    """First and last canonical slice (z toward Superior) holding a voxel of ``labels``; None when none does."""
    per_slice = np.asarray(lung_labels_zyx).reshape(lung_labels_zyx.shape[0], -1)
    present = np.zeros(per_slice.shape[0], bool)
    for label in labels:  # one comparison per label: several times faster than np.isin on a full scan
        present |= (per_slice == label).any(axis=1)
    rows = np.flatnonzero(present)
    return None if rows.size == 0 else (int(rows[0]), int(rows[-1]))


def _zone(extent: tuple[int, int] | None, centre_z: float) -> str:
    if extent is None:
        return ""
    height = max(float(extent[1] - extent[0]), 1.0)
    fraction = (float(centre_z) - float(extent[0])) / height
    return "upper" if fraction >= 2.0 / 3.0 else ("middle" if fraction >= 1.0 / 3.0 else "lower")


def _side_labels(side: str) -> tuple[int, ...]:
    return {"right": (1,), "left": (2,)}.get(side, (1, 2))


def lung_zone(lung_labels_zyx: np.ndarray, centre_zyx: Sequence[float], side: str) -> str:
    """``upper``, ``middle`` or ``lower``: the third of its lung's height that holds a nodule's centre.

    A coarse stand-in for the lobe (no lobe segmentation here): the lung of ``side`` (label 1 right, 2 left;
    both for ``unknown``) spans z0..z1 on the canonical grid (z toward Superior), split into equal thirds.
    ``""`` when that lung is empty. For several nodules of one scan use :func:`lung_zones`.

    Args:
        lung_labels_zyx: lung labels ``[z, y, x]`` (canonical grid).
        centre_zyx: the nodule centre, continuous voxel index ``[z, y, x]`` on that grid.
        side: ``right``, ``left`` or ``unknown``.
    """
    return _zone(lung_z_extent(lung_labels_zyx, _side_labels(side)), float(centre_zyx[0]))


def lung_zones(lung_labels_zyx: np.ndarray, nodules: Sequence[Mapping[str, Any]]) -> list[str]:
    """:func:`lung_zone` of each nodule (``canonical_index_zyx``, ``lung_side``), each lung's extent found once."""
    extents: dict[tuple[int, ...], tuple[int, int] | None] = {}
    zones = []
    for n in nodules:
        labels = _side_labels(str(n.get("lung_side", "")))
        if labels not in extents:
            extents[labels] = lung_z_extent(lung_labels_zyx, labels)
        zones.append(_zone(extents[labels], float(n["canonical_index_zyx"][0])))
    return zones


def peak_centre(
    probability_box: np.ndarray,
    component: np.ndarray,
    box: tuple[slice, ...] | None = None,
    *,
    min_voxels: float = 1.0,
) -> tuple[float, float, float]:
    """A component's centre: the probability-weighted centroid of its peak.

    The peak is the 26-connected part of ``p >= (min + max) / 2`` (the component's own probability range)
    that holds the most probable voxel; the level is lowered to the ``min_voxels``-th highest probability
    when fewer voxels reach it (a peak smaller than the smallest nodule of interest is no nodule: e.g. the
    few voxels of a neck that a split gave to the weaker of two touching nodules).

    A nodule against a vessel or the pleura often grows a tail of lower probability along the vessel; the centroid of the whole component slides onto that tail (a
    7.5 mm calcified juxta-vascular nodule of the validation set: 4.2 mm off, outside its own radius,
    while the peak's centroid lies 0.3 mm from it). For a round component the peak's centroid is the
    component's own.

    Args:
        probability_box: probabilities of the component's bounding box.
        component: boolean mask of the component in that box.
        box: the box's slices in the full grid (indices are offset by their starts), or None.
        min_voxels: the fewest voxels of a peak.

    Returns:
        The continuous voxel index ``[z, y, x]``.
    """
    values = np.where(component, probability_box, -np.inf)
    inside = np.sort(probability_box[component].ravel())
    k = min(inside.size, max(1, math.ceil(min_voxels - 1e-9)))
    level = min(0.5 * (float(inside[-1]) + float(inside[0])), float(inside[-k]))
    core, _ = ndimage.label(values >= level, structure=_CONNECTIVITY_26)
    peak = core == core[np.unravel_index(int(np.argmax(values)), values.shape)]
    weights = probability_box[peak].astype(np.float64)
    weights = weights / weights.sum() if weights.sum() > 0 else np.full(weights.size, 1.0 / weights.size)
    starts = [0] * component.ndim if box is None else [s.start for s in box]
    return tuple(  # type: ignore[return-value]
        float(np.dot(c, weights) + s) for c, s in zip(np.nonzero(peak), starts, strict=True)
    )


def measure_nodules(
    box: tuple[slice, ...],
    component: np.ndarray,
    probability_zyx: np.ndarray,
    hu_zyx: np.ndarray,
    spacing: np.ndarray,
    density: DensityThresholds,
    min_voxels: float = 1.0,
) -> Candidate:
    """Measurements of one component whose mask ``component`` lies in the bounding box ``box``.

    ``min_voxels``: the fewest voxels of the peak whose centroid is the centre (:func:`peak_centre`).
    """
    hu = hu_zyx[box][component].astype(np.float64)
    centre = peak_centre(probability_zyx[box], component, box, min_voxels=min_voxels)
    volume = float(component.sum()) * float(np.prod(spacing))
    axes = axial_diameters_mm(component, spacing)
    wide = _padded(box, hu_zyx.shape, _CROP_MARGIN)
    inner = tuple(slice(b.start - w.start, b.stop - w.start) for b, w in zip(box, wide, strict=True))
    wide_mask = np.zeros(tuple(s.stop - s.start for s in wide), dtype=bool)
    wide_mask[inner] = component
    nodule_type, _ = classify_density(hu_zyx[wide], wide_mask, tuple(spacing), thresholds=density)
    equivalent = equivalent_diameter_mm(volume)
    return {
        "canonical_index_zyx": centre,
        "diameter_mm": equivalent,
        "equivalent_diameter_mm": equivalent,
        "mean_diameter_mm": axes["mean_diameter_mm"],
        "long_axis_mm": axes["long_axis_mm"],
        "short_axis_mm": axes["short_axis_mm"],
        "volume_mm3": volume,
        "voxel_count": int(component.sum()),
        "mean_hu": float(hu.mean()),
        "max_hu": float(hu.max()),
        "std_hu": float(hu.std()),
        "type": nodule_type,
        "solid_component_mm": _solid_component_mm(
            nodule_type, float(axes["mean_diameter_mm"]), hu_zyx[wide], wide_mask, spacing, density
        ),
    }


def _solid_component_mm(
    nodule_type: str,
    mean_diameter_mm: float,
    hu_wide: np.ndarray,
    mask_wide: np.ndarray,
    spacing: np.ndarray,
    density: DensityThresholds,
) -> float:
    """Lung-RADS mean diameter (mm) of the solid component: the part-solid nodule's largest solid part measured
    like the nodule (:func:`~pipelines.nodules.axes.axial_diameters_mm`); the whole nodule's for solid and
    calcified nodules; 0 for ground-glass."""
    if nodule_type == "ground-glass":
        return 0.0
    if nodule_type != "part-solid":
        return mean_diameter_mm
    solid = solid_component_mask(hu_wide, mask_wide, spacing, thresholds=density)
    return float(axial_diameters_mm(solid, spacing)["mean_diameter_mm"])


def _candidate_components(
    probability_zyx: np.ndarray, threshold: float, seed_threshold: float | None, min_voxels: float
) -> list[tuple[tuple[slice, ...], np.ndarray]]:
    """The big-enough, seeded 26-connected components of ``p > threshold``, in ``ndimage.label`` order.

    Labelled only around the supra-threshold voxels (:func:`pipelines.nodules.sparse_labels.components`).

    Returns:
        ``(bounding box, boolean component mask in it)`` for every kept component.
    """
    kept: list[tuple[tuple[slice, ...], np.ndarray]] = []
    for box, component in components(probability_zyx > threshold):
        if component.sum() < min_voxels:
            continue
        if seed_threshold is not None and not (probability_zyx[box][component] > seed_threshold).any():
            continue
        kept.append((box, component))
    return kept


def _pieces(
    components: list[tuple[tuple[slice, ...], np.ndarray]],
    spacing: np.ndarray,
    min_diameter_mm: float,
    min_voxels: float,
    *,
    split: bool,
) -> list[tuple[tuple[slice, ...], np.ndarray]]:
    """``(bounding box, boolean mask in it)`` of every component, or of its blobs when ``split``."""
    pieces = []
    for box, component in components:
        if not split:
            pieces.append((box, component))
            continue
        parts = split_component(component, spacing, min_diameter_mm=min_diameter_mm)
        for part, sub in enumerate(ndimage.find_objects(parts), start=1):
            if sub is None:
                continue
            piece = parts[sub] == part
            if piece.sum() >= min_voxels:
                pieces.append(
                    (
                        tuple(
                            slice(b.start + s.start, b.start + s.stop) for b, s in zip(box, sub, strict=True)
                        ),
                        piece,
                    )
                )
    return pieces


def extract_nodules(
    probability_zyx: np.ndarray,
    hu_zyx: np.ndarray,
    spacing_zyx: tuple[float, float, float] | np.ndarray,
    *,
    threshold: float = 0.5,
    seed_threshold: float | None = None,
    min_diameter_mm: float = 3.0,
    max_candidates: int = 100,
    lung_labels_zyx: np.ndarray | None = None,
    density: DensityThresholds | None = None,
    split_touching: bool = False,
) -> tuple[np.ndarray, list[Candidate]]:
    """Nodule instance mask and per-nodule measurements from a probability map.

    Components of ``p > threshold`` (26-connected) are nodule candidates; with ``seed_threshold`` only
    those holding a voxel with ``p > seed_threshold`` are kept (hysteresis: a low threshold shapes the
    mask, a high one decides existence). Components whose equivalent-sphere diameter is below
    ``min_diameter_mm`` are dropped; the remaining ones are ranked by :func:`probability_score` and the
    best ``max_candidates`` measured. With ``split_touching``, a component made of blobs joined by narrow
    necks is first cut into its blobs (:func:`~pipelines.nodules.split.split_touching`), each then
    size-filtered and scored on its own (the seed test applies to the whole component).

    Args:
        probability_zyx: nodule probability in [0, 1], canonical grid ``[z, y, x]``.
        hu_zyx: CT in HU on the same grid.
        spacing_zyx: voxel spacing in mm, array-axis order (``image.GetSpacing()[::-1]``).
        threshold: probability above which a voxel belongs to a nodule.
        seed_threshold: optional higher probability a component must reach somewhere to be kept.
        min_diameter_mm: smallest equivalent-sphere diameter (mm) kept.
        max_candidates: most nodules returned (highest scores first).
        lung_labels_zyx: optional lung labels on the same grid (1 right, 2 left) for ``lung_side``.
        density: thresholds for the density type (see :class:`DensityThresholds`).
        split_touching: split touching nodules at narrow necks (off by default: costs a distance
            transform per component).

    Returns:
        ``(mask, nodules)``. ``mask`` is uint16 ``[z, y, x]``, 0 background and nodule ``i`` labelled
        ``i`` (1..N, by descending probability). ``nodules[i - 1]`` describes it: ``nodule_id``;
        ``canonical_index_zyx`` (probability-weighted centroid of the component's peak,
        :func:`peak_centre`; continuous voxel index ``[z, y, x]``);
        ``equivalent_diameter_mm`` (diameter of the sphere of the same volume; also under ``diameter_mm``, the
        size the candidate merging and matching use); ``long_axis_mm``, ``short_axis_mm`` and
        ``mean_diameter_mm`` (Lung-RADS: on the largest axial slice, :func:`~pipelines.nodules.axes.axial_diameters_mm`);
        ``volume_mm3``; ``voxel_count``; ``mean_hu``, ``max_hu``, ``std_hu``; ``type``
        (:func:`~pipelines.nodules.density.classify_density`) and ``solid_component_mm`` (the solid part's
        Lung-RADS mean diameter: the nodule's own for solid and calcified, 0 for ground-glass); ``probability``
        (the network score, :func:`probability_score`; not calibrated); ``lung_side`` (``right``/``left``/``unknown``).
        An empty map gives an all-zero mask and ``[]``.

    Raises:
        ValueError: on mismatched shapes, non-positive spacing or thresholds out of range.
    """
    spacing = _check_inputs(probability_zyx, hu_zyx, spacing_zyx, threshold, seed_threshold, lung_labels_zyx)
    if max_candidates < 0:
        raise ValueError(f"max_candidates must be >= 0, not {max_candidates}")
    if max_candidates > np.iinfo(np.uint16).max:
        raise ValueError(f"max_candidates must fit a uint16 mask (<= 65535), not {max_candidates}")
    density = density or DensityThresholds()
    min_voxels = max(1.0, math.pi / 6.0 * min_diameter_mm**3 / float(np.prod(spacing)) - 1e-9)
    components = _candidate_components(probability_zyx, threshold, seed_threshold, min_voxels)

    scored = []
    for order, (box, component) in enumerate(
        _pieces(components, spacing, min_diameter_mm, min_voxels, split=split_touching)
    ):
        scored.append((probability_score(probability_zyx[box][component]), order, box, component))
    scored.sort(key=lambda item: (-item[0], item[1]))

    mask = np.zeros(probability_zyx.shape, dtype=np.uint16)
    nodules: list[Candidate] = []
    for nodule_id, (score, _, box, component) in enumerate(scored[:max_candidates], start=1):
        mask[box][component] = nodule_id
        row: Candidate = {"nodule_id": nodule_id}
        row.update(measure_nodules(box, component, probability_zyx, hu_zyx, spacing, density, min_voxels))
        row["probability"] = score
        row["lung_side"] = _lung_side(lung_labels_zyx, box, component)
        nodules.append(row)
    return mask, nodules


def measure_sphere(
    centre_zyx: Sequence[float],
    diameter_mm: float,
    probability_zyx: np.ndarray,
    hu_zyx: np.ndarray,
    spacing_zyx: tuple[float, float, float] | np.ndarray,
    *,
    lung_labels_zyx: np.ndarray | None = None,
    density: DensityThresholds | None = None,
) -> Candidate:
    """The measurements of :func:`extract_nodules` for a sphere of ``diameter_mm`` at ``centre_zyx``.

    For point candidates without a segmentation (:mod:`pipelines.nodules.second_look`): HU statistics, density type
    and lung side of the voxels within the sphere (at least the centre voxel); ``canonical_index_zyx`` is the
    given centre and the sizes are the sphere's.
    """
    spacing = np.asarray(spacing_zyx, float)
    c = np.asarray(centre_zyx, float)
    r = diameter_mm / 2.0
    lo = np.maximum(np.floor(c - r / spacing), 0).astype(int)
    hi = np.minimum(np.ceil(c + r / spacing) + 1, hu_zyx.shape).astype(int)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    grid = np.meshgrid(
        *[(np.arange(s.start, s.stop) - ci) * sp for s, ci, sp in zip(box, c, spacing)], indexing="ij"
    )
    component = sum(g**2 for g in grid) <= r**2
    centre_voxel = tuple(int(np.clip(round(ci) - s.start, 0, s.stop - s.start - 1)) for ci, s in zip(c, box))
    component[centre_voxel] = True
    row = measure_nodules(box, component, probability_zyx, hu_zyx, spacing, density or DensityThresholds())
    volume = math.pi / 6.0 * diameter_mm**3
    row.update(
        {
            "canonical_index_zyx": tuple(float(v) for v in c),
            "diameter_mm": float(diameter_mm),
            "equivalent_diameter_mm": float(diameter_mm),
            "mean_diameter_mm": float(diameter_mm),
            "long_axis_mm": float(diameter_mm),
            "short_axis_mm": float(diameter_mm),
            "volume_mm3": volume,
        }
    )
    row["lung_side"] = _lung_side(lung_labels_zyx, box, component)
    return row
