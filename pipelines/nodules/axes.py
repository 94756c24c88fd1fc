"""Lung-RADS size of a nodule: long and short axis on its largest axial slice and their mean.

Lung-RADS v2022 sizes a nodule by its *mean diameter*: the mean of the long axis and the short axis (the
longest extent perpendicular to the long axis, in the same plane), each measured to one decimal of a mm on lung
windows, the mean reported to one decimal. The lexicon allows the plane that shows the nodule's true size; this
module measures on the **axial slice where the nodule's cross-section is largest** (the slice a reader scrolls
to; ties go to the slice with the larger mean diameter). The category is based on this mean diameter, not on
the volume (Lung-RADS allows either; volumes are reported beside it).

The mask is a crop of the canonical grid, ``[z, y, x]``, spacing in mm in array-axis order; in-plane spacing may
differ between y and x. The outline of the slice is the marching-squares contour at half height of the binary
mask, holes filled, after a Gaussian blur of ``OUTLINE_SIGMA_PX = 0.6`` pixel (slices of fewer than
``MIN_BLUR_PIXELS`` pixels keep their pixel-edge outline). The long axis is the largest distance between two
outline points (maximum Feret diameter); the short axis is the largest distance, along a line perpendicular to
the long axis, between the outline's crossings of that line.

Accuracy (200 random ellipses per row, 0.5-1 mm pixels, random orientation and sub-pixel centre): a binary mask
places each end of an axis to about half a pixel. Without the blur the outline runs on pixel edges and the
longest of its chords overshoots (long axis +0.36 pixel on average, 57 % of the cases within half a pixel on
both axes); with it, +0.15 pixel for 6-24 mm ellipses and +0.02 for 3-8 mm ones, 89-93 % within half a pixel
and all within one pixel. Near-circular sections overshoot most (a disk: long axis +0.4 to +0.7 pixel), since
every direction competes for the maximum.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError
from skimage.measure import find_contours

from pipelines.nodules.lungrads import round_mean_diameter_mm

__all__ = ["axial_diameters_mm", "slice_diameters_mm"]

_PERPENDICULAR_SAMPLES = 256
#: Gaussian blur (pixels) of the binary slice before its half-height contour is traced (see the module docstring).
OUTLINE_SIGMA_PX = 0.6
#: Slices of fewer pixels keep their pixel-edge outline (blurred, they shrink: two pixels would measure 1.2 x 0.2).
MIN_BLUR_PIXELS = 16
_PAD = 3  # pixels of background around the slice: the blurred contour stays closed


def _outline_mm(mask_yx: np.ndarray, spacing_yx: tuple[float, float]) -> list[np.ndarray]:
    """Closed outlines (each ``[n, 2]``, (y, x) in mm, pixel centres at ``index * spacing``) of a 2D mask."""
    padded = np.pad(ndimage.binary_fill_holes(mask_yx).astype(np.float32), _PAD)
    smooth = padded
    if padded.sum() >= MIN_BLUR_PIXELS:  # a few pixels: the blur would shrink them
        smooth = ndimage.gaussian_filter(padded, OUTLINE_SIGMA_PX)
    scale = np.asarray(spacing_yx, float)
    return [(c - _PAD) * scale for c in find_contours(smooth, 0.5) if len(c) >= 2]


def _long_axis(points: np.ndarray) -> tuple[float, np.ndarray]:
    """Maximum Feret diameter (mm) of a point set and its unit direction."""
    try:
        hull = points[ConvexHull(points).vertices] if len(points) >= 3 else points
    except QhullError:  # all points on one line
        hull = points
    diff = hull[:, None, :] - hull[None, :, :]
    dist = np.hypot(diff[..., 0], diff[..., 1])
    i, j = np.unravel_index(int(np.argmax(dist)), dist.shape)
    length = float(dist[i, j])
    direction = diff[i, j] / length if length > 0 else np.array([0.0, 1.0])
    return length, direction


def _perpendicular_extent(outlines: list[np.ndarray], direction: np.ndarray) -> float:
    """Largest distance between the outline crossings of one line perpendicular to ``direction``."""
    normal = np.array([-direction[1], direction[0]])
    starts = np.concatenate([c[:-1] for c in outlines])
    ends = np.concatenate([c[1:] for c in outlines])
    s_a, s_b = starts @ direction, ends @ direction
    w_a, w_b = starts @ normal, ends @ normal
    lo, hi = float(min(s_a.min(), s_b.min())), float(max(s_a.max(), s_b.max()))
    if hi - lo <= 0:
        return float(max(w_a.max(), w_b.max()) - min(w_a.min(), w_b.min()))
    t = np.linspace(lo, hi, _PERPENDICULAR_SAMPLES)[:, None]
    ds = s_b - s_a
    crosses = ((s_a - t) * (s_b - t) <= 0) & (ds != 0)
    frac = np.where(crosses, (t - s_a) / np.where(ds == 0, 1.0, ds), 0.0)
    w = w_a + frac * (w_b - w_a)
    top = np.where(crosses, w, -np.inf).max(axis=1)
    bottom = np.where(crosses, w, np.inf).min(axis=1)
    widths = np.where(np.isfinite(top) & np.isfinite(bottom), top - bottom, 0.0)
    return float(widths.max())


def slice_diameters_mm(mask_yx: np.ndarray, spacing_yx: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """Long and short axis (mm, unrounded) of one axial cross-section.

    Args:
        mask_yx: boolean 2D mask ``[y, x]`` (not empty).
        spacing_yx: pixel spacing in mm, ``(y, x)``.
    """
    outlines = _outline_mm(np.asarray(mask_yx, bool), (float(spacing_yx[0]), float(spacing_yx[1])))
    if not outlines:
        return 0.0, 0.0
    long_axis, direction = _long_axis(np.concatenate(outlines))
    return long_axis, min(long_axis, _perpendicular_extent(outlines, direction))


def axial_diameters_mm(
    mask_zyx: np.ndarray, spacing_zyx: Sequence[float] | np.ndarray
) -> dict[str, float | int]:
    """Lung-RADS mean diameter of a nodule mask, measured on its largest axial slice.

    Args:
        mask_zyx: boolean mask ``[z, y, x]`` of one nodule (a crop of the canonical grid).
        spacing_zyx: voxel spacing in mm, array-axis order.

    Returns:
        ``long_axis_mm`` and ``short_axis_mm`` (each rounded to 0.1 mm, half-up), ``mean_diameter_mm`` (their
        mean rounded to 0.1 mm, half-up, as Lung-RADS v2022 reports it) and ``axial_slice`` (the z index in
        ``mask_zyx`` of the slice measured). An empty mask gives zeros and slice -1.
    """
    mask = np.asarray(mask_zyx, bool)
    areas = mask.reshape(mask.shape[0], -1).sum(axis=1)
    if areas.max(initial=0) == 0:
        return {"long_axis_mm": 0.0, "short_axis_mm": 0.0, "mean_diameter_mm": 0.0, "axial_slice": -1}
    spacing_yx = (float(spacing_zyx[1]), float(spacing_zyx[2]))
    best: tuple[float, float, int] | None = None
    for z in np.flatnonzero(areas == areas.max()).tolist():
        long_axis, short_axis = slice_diameters_mm(mask[z], spacing_yx)
        if best is None or long_axis + short_axis > best[0] + best[1]:
            best = (long_axis, short_axis, int(z))
    assert best is not None
    long_mm, short_mm = round_mean_diameter_mm(best[0]), round_mean_diameter_mm(best[1])
    return {
        "long_axis_mm": long_mm,
        "short_axis_mm": short_mm,
        "mean_diameter_mm": round_mean_diameter_mm((long_mm + short_mm) / 2.0),
        "axial_slice": best[2],
    }
