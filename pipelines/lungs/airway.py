"""Trachea / main-bronchi detection for the classical lung segmentation (:mod:`pipelines.lungs.lungseg`).

Arrays are ``[z, y, x]`` on the canonical LPS grid (x toward patient Left, z toward Superior), HU, with
``spacing_zyx`` in mm. The trachea is found as the top-most round, midline, pure-air cross-section inside the
candidate lung air, then grown in 3D through pure-air voxels; a growth that balloons (emphysema, noise) is
retried with a stricter threshold and dropped if it still leaks.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi

from pipelines.lungs.ops import SLICE_STRUCTURE


def _trachea_seed(
    core: np.ndarray,
    spacing_zyx: Sequence[float],
    midline_x: float,
    *,
    area_mm2: tuple[float, float] = (40.0, 900.0),
    max_offset_mm: float = 35.0,
    search_fraction: float = 0.5,
) -> np.ndarray | None:
    """Mask of a 2D trachea cross-section in the top-most slice that has one, or ``None``.

    Args:
        core: ``[z, y, x]`` bool, pure-air voxels inside the candidate lung air.
        spacing_zyx: Voxel spacing in mm.
        midline_x: Body midline, x voxel index.
        area_mm2: Allowed cross-section area in mm² (about 7 to 34 mm diameter).
        max_offset_mm: Largest distance of the cross-section centroid from the midline, mm.
        search_fraction: Fraction of the air's z-extent, from the top, that is searched.
    """
    zs = np.flatnonzero(core.any(axis=(1, 2)))
    if zs.size == 0:
        return None
    pix_mm2 = float(spacing_zyx[1] * spacing_zyx[2])
    z_lo = int(zs[-1] - search_fraction * (zs[-1] - zs[0]))
    for z in range(int(zs[-1]), z_lo - 1, -1):
        lab, n = ndi.label(core[z])
        if n == 0:
            continue
        idx = np.arange(1, n + 1)
        areas = ndi.sum_labels(np.ones_like(lab), lab, idx) * pix_mm2
        cents = np.array(ndi.center_of_mass(np.ones_like(lab), lab, idx)).reshape(n, 2)
        for k in np.argsort(-areas):
            offset = abs(cents[k, 1] - midline_x) * spacing_zyx[2]
            if area_mm2[0] <= areas[k] <= area_mm2[1] and offset <= max_offset_mm:
                seed = np.zeros(core.shape, dtype=bool)
                seed[z] = lab == k + 1
                return seed
    return None


def find_airway(
    lung_air: np.ndarray,
    hu_s: np.ndarray,
    spacing_zyx: Sequence[float],
    midline_x: float,
    *,
    airway_hu: float = -950.0,
    max_airway_ml: float = 250.0,
) -> np.ndarray:
    """Trachea and main bronchi (and whatever pure-air airway connects to them) inside ``lung_air``.

    Args:
        lung_air: ``[z, y, x]`` bool, candidate lung air (outside air and gas already removed).
        hu_s: ``[z, y, x]`` smoothed HU on the same grid.
        spacing_zyx: Voxel spacing in mm.
        midline_x: Body midline, x voxel index.
        airway_hu: Pure-air threshold (HU) for the lumen; stricter values are tried if growth leaks.
        max_airway_ml: Growth larger than this (ml) is treated as a leak into the parenchyma.

    Returns:
        ``[z, y, x]`` bool airway mask (all ``False`` when no trachea is found or every growth leaks).
    """
    voxel_ml = float(np.prod(spacing_zyx)) / 1000.0
    for thr in (airway_hu, airway_hu - 25.0, airway_hu - 40.0):
        core = lung_air & (hu_s < thr)
        seed = _trachea_seed(core, spacing_zyx, midline_x)
        if seed is None:
            continue
        lab, _ = ndi.label(core)
        ids = np.unique(lab[seed])
        grown = np.isin(lab, ids[ids > 0])
        if grown.sum() * voxel_ml <= max_airway_ml:
            return grown
    return np.zeros(lung_air.shape, dtype=bool)


def slice_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Label the 2D (in-plane, 4-connected) components of every axial slice of a ``[z, y, x]`` mask."""
    lab, n = ndi.label(mask, structure=SLICE_STRUCTURE)
    return lab, int(n)
