"""Array helpers for the classical lung segmentation (:mod:`pipelines.lungs.lungseg`).

Every function here works on numpy arrays on the canonical ``[z, y, x]`` grid (SimpleITK ``DICOMOrient``
"LPS": x toward patient Left, y toward Posterior, z toward Superior), with ``spacing_zyx`` in millimetres.
Morphology is done with Euclidean distance transforms so that radii are physical (mm) and voxels outside
the array count as "unknown" rather than background: a lung cut by the scan border is not eroded there.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi

#: In-plane connectivity only (3x3x3 structure with the z neighbours switched off): per-slice 2D operations
#: in one vectorised call.
SLICE_STRUCTURE = np.zeros((3, 3, 3), dtype=bool)
SLICE_STRUCTURE[1] = ndi.generate_binary_structure(2, 1)


def block_factors(
    shape_zyx: Sequence[int], spacing_zyx: Sequence[float], *, target_mm: Sequence[float]
) -> tuple[int, int, int]:
    """Integer block sizes that bring each axis' spacing up to about ``target_mm``.

    Args:
        shape_zyx: Array shape ``(z, y, x)``.
        spacing_zyx: Voxel spacing in mm, ``(z, y, x)``.
        target_mm: Wanted working spacing in mm, ``(z, y, x)``; coarser inputs are left alone (factor 1).

    Returns:
        Factors ``(fz, fy, fx)``, each in ``[1, shape]``.
    """
    out = []
    for n, sp, tgt in zip(shape_zyx, spacing_zyx, target_mm):
        out.append(int(max(1, min(int(n), np.floor(float(tgt) / float(sp) + 0.25)))))
    return out[0], out[1], out[2]


def block_mean_hu(
    hu_zyx: np.ndarray, factors: Sequence[int], *, clip_hu: tuple[float, float] = (-1024.0, 600.0)
) -> np.ndarray:
    """Block-average a CT volume (HU, ``[z, y, x]``) by integer ``factors``, clipping HU first.

    Clipping to ``clip_hu`` keeps the outside-of-field padding (-2048/-3024) and bone/metal from biasing the
    averages. The array is processed in slabs of ``fz`` slices, so memory stays near one output copy. The
    last partial block of each axis averages the voxels it has (edge replication).

    Returns:
        float32 array of shape ``ceil(shape / factors)``, HU.
    """
    fz, fy, fx = (int(f) for f in factors)
    nz, ny, nx = hu_zyx.shape
    oy, ox = -(-ny // fy), -(-nx // fx)
    out = np.empty((-(-nz // fz), oy, ox), dtype=np.float32)
    pad = ((0, 0), (0, oy * fy - ny), (0, ox * fx - nx))
    # integer HU clipped to integer bounds sum exactly in int32 (the float32 sums are exact too: integers far
    # below 2**24), so both give the same means; the integer path skips a float copy of every voxel
    exact = np.issubdtype(hu_zyx.dtype, np.integer) and all(float(c).is_integer() for c in clip_hu)
    for k, z0 in enumerate(range(0, nz, fz)):
        if exact:
            slab = np.clip(hu_zyx[z0 : z0 + fz], int(clip_hu[0]), int(clip_hu[1])).astype(np.int32)
        else:
            slab = np.clip(hu_zyx[z0 : z0 + fz], clip_hu[0], clip_hu[1], dtype=np.float32)
        if any(p[1] for p in pad):
            slab = np.pad(slab, pad, mode="edge")
        # block sums as sums of strided slices, axis by axis (x, then y, then z): the order of a sum over a
        # short axis, several times faster than a reduction over it
        in_plane = _strided_sum(_strided_sum(slab, fx, axis=2), fy, axis=1)
        total = _strided_sum(in_plane, slab.shape[0], axis=0)[0]
        out[k] = total.astype(np.float32) / np.float32(slab.shape[0] * fy * fx)
    return out


def _strided_sum(a: np.ndarray, f: int, *, axis: int) -> np.ndarray:
    """Sums of ``f`` consecutive entries along ``axis`` (its length a multiple of ``f``), added in order."""
    if f == 1:
        return a
    part = [slice(None)] * a.ndim
    part[axis] = slice(0, None, f)
    total = a[tuple(part)].copy()
    for i in range(1, f):
        part[axis] = slice(i, None, f)
        total += a[tuple(part)]
    return total


def upsample_labels(labels_zyx: np.ndarray, factors: Sequence[int], shape_zyx: Sequence[int]) -> np.ndarray:
    """Nearest-neighbour inverse of :func:`block_mean_hu`: repeat each coarse voxel and crop to ``shape_zyx``.

    The coarse grid is repeated in-plane first (a slice per coarse slice), then each slice is broadcast to its
    ``fz`` output slices in one write: no full-size intermediate.
    """
    fz, fy, fx = (int(f) for f in factors)
    nz, ny, nx = (int(n) for n in shape_zyx)
    rows = np.repeat(np.repeat(labels_zyx, fx, axis=2)[:, :, :nx], fy, axis=1)[:, :ny]
    out = np.empty((nz, ny, nx), dtype=labels_zyx.dtype)
    whole = min(nz // fz, rows.shape[0])
    out[: whole * fz].reshape(whole, fz, ny, nx)[...] = rows[:whole, None]
    if whole * fz < nz:
        out[whole * fz :] = rows[whole]
    return out


def distance_outside_mm(mask: np.ndarray, spacing_zyx: Sequence[float]) -> np.ndarray:
    """Distance in mm from every voxel to the nearest ``True`` voxel of ``mask`` (0 inside ``mask``)."""
    if not mask.any():
        return np.full(mask.shape, np.inf, dtype=np.float32)
    return ndi.distance_transform_edt(~mask, sampling=spacing_zyx).astype(np.float32)


def dilate_mm(mask: np.ndarray, radius_mm: float, spacing_zyx: Sequence[float]) -> np.ndarray:
    """Binary dilation by a ball of ``radius_mm`` (anisotropic spacing aware).

    The distance transform runs only over the mask's bounding box grown by the radius: the same result,
    several times faster for compact masks (airways, satellites) in a large volume.
    """
    if radius_mm <= 0 or not mask.any():
        return mask.copy()
    box = bounding_box(mask, margin=[int(np.ceil(radius_mm / s)) + 1 for s in spacing_zyx])
    out = np.zeros(mask.shape, dtype=bool)
    out[box] = distance_outside_mm(mask[box], spacing_zyx) <= radius_mm
    return out


def erode_mm(mask: np.ndarray, radius_mm: float, spacing_zyx: Sequence[float]) -> np.ndarray:
    """Binary erosion by a ball of ``radius_mm``; voxels beyond the array border do not erode."""
    if radius_mm <= 0 or mask.all():
        return mask.copy()
    return distance_outside_mm(~mask, spacing_zyx) > radius_mm


def close_mm(mask: np.ndarray, radius_mm: float, spacing_zyx: Sequence[float]) -> np.ndarray:
    """Binary closing (dilate then erode) by a ball of ``radius_mm``, computed in the mask's bounding box."""
    if radius_mm <= 0 or not mask.any():
        return mask.copy()
    box = bounding_box(mask, margin=[int(np.ceil(radius_mm / s)) + 1 for s in spacing_zyx])
    sub = mask[box]
    closed = erode_mm(dilate_mm(sub, radius_mm, spacing_zyx), radius_mm, spacing_zyx)
    out = mask.copy()
    out[box] |= closed
    return out


def bounding_box(mask: np.ndarray, *, margin: Sequence[int] = (0, 0, 0)) -> tuple[slice, ...]:
    """Slices of the bounding box of ``mask`` grown by ``margin`` voxels per axis, clipped to the array."""
    slices = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        idx = np.flatnonzero(mask.any(axis=other))
        lo = max(0, int(idx[0]) - int(margin[axis]))
        hi = min(mask.shape[axis], int(idx[-1]) + 1 + int(margin[axis]))
        slices.append(slice(lo, hi))
    return tuple(slices)


def fill_holes_per_slice(mask: np.ndarray) -> np.ndarray:
    """Fill holes in every axial ``[y, x]`` slice of a ``[z, y, x]`` mask (one vectorised call).

    Holes lie inside the mask's in-plane bounding box, so the fill runs over that box (plus a one-voxel
    rim that connects the background around it).
    """
    if not mask.any():
        return mask.copy()
    box = bounding_box(mask, margin=(0, 1, 1))
    out = mask.copy()
    out[box] = ndi.binary_fill_holes(mask[box], structure=SLICE_STRUCTURE)
    return out


def component_stats(
    labels: np.ndarray, n: int, values: np.ndarray, *, centroids: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Voxel count, mean of ``values`` and centroid ``(z, y, x)`` (voxels) of components ``1..n``.

    Returns:
        ``(counts[n], means[n], centroids[n, 3])``; index ``i`` is component ``i + 1``. With
        ``centroids=False`` the centroids are not computed (three full-volume passes saved) and are nan.
    """
    flat = labels.ravel()
    counts = np.bincount(flat, minlength=n + 1)[1:].astype(np.float64)
    sums = np.bincount(flat, weights=values.ravel().astype(np.float64), minlength=n + 1)[1:]
    means = sums / np.maximum(counts, 1)
    cents = np.full((n, 3), np.nan)
    if not centroids:
        return counts, means, cents
    for axis in range(3):
        shape = [1, 1, 1]
        shape[axis] = labels.shape[axis]
        grid = np.arange(labels.shape[axis], dtype=np.float64).reshape(shape)
        coord = np.broadcast_to(grid, labels.shape).ravel()
        cents[:, axis] = np.bincount(flat, weights=coord, minlength=n + 1)[1:] / np.maximum(counts, 1)
    return counts, means, cents
