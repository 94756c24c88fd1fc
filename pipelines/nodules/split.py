"""Splitting touching nodules: distance-transform watershed, kept only across narrow necks.

Arrays are boolean crops ``[z, y, x]`` of the canonical grid; spacing is mm in array-axis order.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.feature import peak_local_max
from skimage.segmentation import watershed


def _find(parent: list[int], a: int) -> int:
    while parent[a] != a:
        parent[a] = parent[parent[a]]
        a = parent[a]
    return a


def _saddles(regions: np.ndarray, edt: np.ndarray) -> dict[tuple[int, int], float]:
    """Highest distance-to-edge (mm) on the boundary between each pair of face-adjacent regions."""
    saddles: dict[tuple[int, int], float] = {}
    for axis in range(regions.ndim):
        a = np.moveaxis(regions, axis, 0)
        e = np.moveaxis(edt, axis, 0)
        lo, hi = a[:-1], a[1:]
        touching = (lo != hi) & (lo > 0) & (hi > 0)
        if not touching.any():
            continue
        height = np.minimum(e[:-1], e[1:])[touching]
        for la, lb, h in zip(lo[touching].tolist(), hi[touching].tolist(), height.tolist(), strict=True):
            key = (min(la, lb), max(la, lb))
            saddles[key] = max(saddles.get(key, 0.0), h)
    return saddles


def split_touching(
    component_zyx: np.ndarray,
    spacing_zyx: tuple[float, float, float] | np.ndarray,
    *,
    min_diameter_mm: float,
    neck_ratio: float = 0.65,
) -> np.ndarray:
    """Split one connected mask into touching blobs joined by narrow necks.

    Seeds are the maxima of the Euclidean distance to the mask edge (mm) at least ``min_diameter_mm / 2``
    apart and at least ``min_diameter_mm / 4`` deep; the watershed of the negated distance grows them.
    Two neighbouring pieces stay merged unless the neck between them is thin: its inscribed radius
    (the highest distance on their shared boundary) must be below ``neck_ratio`` times the smaller
    piece's inscribed radius. On a voxel grid the distance transform reads a neck about half a voxel
    wider than it is, hence the default 0.65: two equal spheres of radius R (2.5-6 mm at 0.7 mm voxels)
    whose centres are 1.7 R or more apart (true neck radius <= 0.53 R, measured 0.54-0.62) are split;
    1.5 R apart (measured 0.76-0.84) they stay one nodule, as does a lobulated nodule (a bump whose neck
    is as wide as the bump) or a vessel running into a nodule.

    Args:
        component_zyx: boolean mask ``[z, y, x]`` of one connected component.
        spacing_zyx: voxel spacing, mm, array-axis order.
        min_diameter_mm: smallest nodule diameter of interest (sets seed spacing and depth).
        neck_ratio: neck-to-blob inscribed radius ratio below which blobs are separated.

    Returns:
        int32 labels ``[z, y, x]``: 0 outside, pieces 1..K (K = 1 when nothing is split).
    """
    mask = np.asarray(component_zyx, dtype=bool)
    spacing = np.asarray(spacing_zyx, dtype=np.float64)
    edt = ndimage.distance_transform_edt(np.pad(mask, 1), sampling=spacing)[1:-1, 1:-1, 1:-1]
    min_distance = max(1, int(round(min_diameter_mm / 2.0 / float(spacing.min()))))
    peaks = peak_local_max(
        edt,
        min_distance=min_distance,
        threshold_abs=max(min_diameter_mm / 4.0, 1e-6),
        labels=mask.astype(np.int32),
        exclude_border=False,
    )
    if len(peaks) < 2:
        return mask.astype(np.int32)
    markers = np.zeros(mask.shape, dtype=np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1, dtype=np.int32)
    regions = np.asarray(watershed(-edt, markers, mask=mask), dtype=np.int32)
    depth = ndimage.maximum(edt, regions, index=np.arange(len(peaks) + 1))
    parent = list(range(len(peaks) + 1))
    for (la, lb), saddle in sorted(_saddles(regions, edt).items(), key=lambda item: -item[1]):
        if saddle >= neck_ratio * min(depth[la], depth[lb]):
            parent[_find(parent, la)] = _find(parent, lb)
    roots = np.array([_find(parent, lab) for lab in range(len(peaks) + 1)])
    _, relabel = np.unique(roots, return_inverse=True)  # root of 0 is 0, so background stays 0
    return np.asarray(relabel[regions], dtype=np.int32)
