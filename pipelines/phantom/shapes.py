"""Geometry primitives of the synthetic chest CT: the voxel grid, signed distances and tube rasterisation.

Everything here works in world **LPS millimetres** (x toward patient left, y toward posterior, z toward
superior) on the *canonical* grid: arrays are indexed ``[z, y, x]`` and voxel ``(i, j, k)`` sits at
``origin_xyz + spacing * (i, j, k)`` (identity direction). Signed distances are negative inside a shape.
Partial volume is modelled by turning a signed distance ``d`` into an occupied fraction
``clip(0.5 - d / h, 0, 1)`` where ``h`` is the voxel size, so edges are anti-aliased at render time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk

Array = Any  # numpy arrays (or numpy scalars where a function is evaluated on one axial slice)


@dataclass(frozen=True)
class Grid:
    """A canonical (LPS, identity direction) voxel grid.

    Attributes:
        shape_zyx: array shape ``(nz, ny, nx)``.
        spacing_zyx: voxel size in mm, in array-axis order.
        origin_xyz: LPS world position (mm) of voxel ``[0, 0, 0]``.
    """

    shape_zyx: tuple[int, int, int]
    spacing_zyx: tuple[float, float, float]
    origin_xyz: tuple[float, float, float]

    def axes(self) -> tuple[Array, Array, Array]:
        """World coordinates (mm) broadcastable to ``shape_zyx``: ``x[1,1,nx]``, ``y[1,ny,1]``, ``z[nz,1,1]``."""
        nz, ny, nx = self.shape_zyx
        sz, sy, sx = self.spacing_zyx
        ox, oy, oz = self.origin_xyz
        x = (ox + sx * np.arange(nx, dtype=np.float32)).reshape(1, 1, nx)
        y = (oy + sy * np.arange(ny, dtype=np.float32)).reshape(1, ny, 1)
        z = (oz + sz * np.arange(nz, dtype=np.float32)).reshape(nz, 1, 1)
        return x, y, z

    def z_axis(self, k0: int = 0, k1: int | None = None) -> Array:
        """World z (mm) of slices ``k0..k1``, shaped ``[n, 1, 1]``."""
        k1 = self.shape_zyx[0] if k1 is None else k1
        return (self.origin_xyz[2] + self.spacing_zyx[0] * np.arange(k0, k1, dtype=np.float32)).reshape(
            -1, 1, 1
        )

    @property
    def h(self) -> float:
        """Anti-aliasing width in mm: the mean voxel size."""
        return float(np.mean(self.spacing_zyx))

    def world_to_index_zyx(self, xyz: Array) -> Array:
        """Continuous array indices ``[..., (k, j, i)]`` of LPS world points ``[..., (x, y, z)]``."""
        p = (np.asarray(xyz, dtype=np.float64) - np.asarray(self.origin_xyz)) / np.asarray(
            self.spacing_zyx[::-1]
        )
        return p[..., ::-1]

    def sample_nearest(self, array_zyx: Array, xyz: Array) -> tuple[Array, Array]:
        """Values of ``array_zyx`` at the voxels nearest to world points ``[n, 3]`` and whether each is on the grid.

        Points off the grid take the value of the nearest edge voxel; the mask tells them apart.
        """
        idx = np.round(self.world_to_index_zyx(xyz)).astype(int)
        shape = np.asarray(self.shape_zyx)
        inside = np.all((idx >= 0) & (idx < shape), axis=-1)
        idx = np.clip(idx, 0, shape - 1)
        return np.asarray(array_zyx)[idx[..., 0], idx[..., 1], idx[..., 2]], inside

    def index_to_world(self, kji: Array) -> Array:
        """LPS world points ``[..., (x, y, z)]`` of array indices ``[..., (k, j, i)]``."""
        kji = np.asarray(kji, dtype=np.float64)
        return np.asarray(self.origin_xyz) + kji[..., ::-1] * np.asarray(self.spacing_zyx[::-1])

    def to_image(self, array_zyx: Array) -> sitk.Image:
        """Wrap an array on this grid as a SimpleITK image with LPS identity direction."""
        img = sitk.GetImageFromArray(array_zyx)
        img.SetSpacing(tuple(float(s) for s in self.spacing_zyx[::-1]))
        img.SetOrigin(tuple(float(o) for o in self.origin_xyz))
        return img


def coverage(d: Array, h: float) -> Array:
    """Occupied fraction (0..1) of a voxel of size ``h`` mm whose centre has signed distance ``d`` mm."""
    out = np.asarray(0.5 - d * (1.0 / h), dtype=np.float32)
    return np.clip(out, 0.0, 1.0, out=out) if out.ndim else np.clip(out, 0.0, 1.0)


def ellipsoid_sdf(
    x: Array, y: Array, z: Array, center: tuple[float, float, float], radii: tuple[float, ...]
) -> Array:
    """Approximate signed distance (mm) to an axis-aligned ellipsoid (Quilez's ``k0 (k0 - 1) / k1``)."""
    r0, r1, r2 = (float(r) for r in radii)
    px = (x - float(center[0])) * (1.0 / r0)
    py = (y - float(center[1])) * (1.0 / r1)
    pz = (z - float(center[2])) * (1.0 / r2)
    k0 = np.sqrt(px * px + py * py + pz * pz)
    k1 = np.sqrt((px * (1.0 / r0)) ** 2 + (py * (1.0 / r1)) ** 2 + (pz * (1.0 / r2)) ** 2)
    return k0 * (k0 - 1.0) / np.maximum(k1, 1e-6)


def ellipse_sdf(
    x: Array, y: Array, cx: float | Array, cy: float | Array, ax: float | Array, ay: float | Array
) -> Array:
    """Approximate signed distance (mm) to an axis-aligned ellipse in the x-y plane (an infinite cylinder)."""
    if np.ndim(ax) == 0 and np.ndim(ay) == 0:
        ax, ay = float(ax), float(ay)
    if np.ndim(cx) == 0 and np.ndim(cy) == 0:
        cx, cy = float(cx), float(cy)
    px = (x - cx) / ax
    py = (y - cy) / ay
    k0 = np.sqrt(px * px + py * py)
    k1 = np.sqrt((px / ax) ** 2 + (py / ay) ** 2)
    return k0 * (k0 - 1.0) / np.maximum(k1, 1e-6)


def rotated_ellipsoid_sdf(x: Array, y: Array, z: Array, center: Array, axes: Array, radii: Array) -> Array:
    """Approximate signed distance (mm) to an ellipsoid whose unit axes are the rows of ``axes`` (3x3).

    For a scalar ``z`` (one axial slice) that misses the ellipsoid, returns the scalar 1e3 without work.
    """
    if np.ndim(z) == 0 and abs(float(z) - float(center[2])) > float(np.max(radii)) + 10.0:
        return np.float32(1e3)
    d = (x - float(center[0]), y - float(center[1]), z - float(center[2]))
    ax = [[float(a) for a in row] for row in axes]
    local = [d[0] * ax[i][0] + d[1] * ax[i][1] + d[2] * ax[i][2] for i in range(3)]
    return ellipsoid_sdf(local[0], local[1], local[2], (0.0, 0.0, 0.0), tuple(radii))


def smooth_min(a: Array, b: Array, k: float) -> Array:
    """Smooth union of two signed distances with blend radius ``k`` mm."""
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b * (1 - h) + a * h - k * h * (1 - h)


def segment_distance(px: Array, py: Array, pz: Array, p0: Array, p1: Array) -> tuple[Array, Array]:
    """Distance (mm) from points to the segment ``p0 -> p1`` and the segment parameter ``t`` in [0, 1]."""
    d = p1 - p0
    dd = float(d @ d) or 1e-9
    t = np.clip(((px - p0[0]) * d[0] + (py - p0[1]) * d[1] + (pz - p0[2]) * d[2]) / dd, 0.0, 1.0)
    qx = px - (p0[0] + t * d[0])
    qy = py - (p0[1] + t * d[1])
    qz = pz - (p0[2] + t * d[2])
    return np.sqrt(qx * qx + qy * qy + qz * qz), t


def rasterize_tubes(
    frac: Array,
    grid: Grid,
    starts: Array,
    ends: Array,
    r_start: Array,
    r_end: Array,
    *,
    min_visible: float = 0.02,
) -> None:
    """Paint tapered tubes (capsules) into ``frac`` in place as occupied fractions (max-combined).

    Thin tubes keep their cross-sectional area: a tube thinner than half a voxel is drawn with radius
    ``h/2`` and its fraction scaled by ``(r / (h/2))^2``, which is how partial volume makes small vessels faint.

    Args:
        frac: float32 array ``[z, y, x]`` on ``grid`` receiving fractions in [0, 1].
        grid: the canonical grid.
        starts, ends: ``[n, 3]`` LPS world points (mm) of each segment.
        r_start, r_end: ``[n]`` radii (mm) at each end.
        min_visible: tubes whose peak fraction would stay below this are skipped.
    """
    h = grid.h
    half = h / 2.0
    spacing_xyz = np.asarray(grid.spacing_zyx[::-1])
    origin = np.asarray(grid.origin_xyz)
    shape_xyz = np.asarray(grid.shape_zyx[::-1])
    x_ax, y_ax, z_ax = (a.ravel() for a in grid.axes())
    for p0, p1, ra, rb in zip(starts, ends, r_start, r_end):
        r_max = max(ra, rb)
        if (r_max / half) ** 2 < min_visible:
            continue
        ext = max(r_max, half) + h
        lo = np.floor((np.minimum(p0, p1) - ext - origin) / spacing_xyz).astype(int)
        hi = np.ceil((np.maximum(p0, p1) + ext - origin) / spacing_xyz).astype(int) + 1
        lo = np.maximum(lo, 0)
        hi = np.minimum(hi, shape_xyz)
        if np.any(hi <= lo):
            continue
        xs = x_ax[lo[0] : hi[0]].reshape(1, 1, -1)
        ys = y_ax[lo[1] : hi[1]].reshape(1, -1, 1)
        zs = z_ax[lo[2] : hi[2]].reshape(-1, 1, 1)
        dist, t = segment_distance(xs, ys, zs, p0, p1)
        r = ra + t * (rb - ra)
        r_eff = np.maximum(r, half)
        occ = np.clip(0.5 - (dist - r_eff) / h, 0.0, 1.0) * np.minimum((r / r_eff) ** 2, 1.0)
        view = frac[lo[2] : hi[2], lo[1] : hi[1], lo[0] : hi[0]]
        np.maximum(view, occ.astype(np.float32), out=view)


def upsampled_noise(grid: Grid, *, sigma_mm: float, rng: np.random.Generator) -> Array:
    """Spatially correlated unit-variance noise on ``grid`` (float32 ``[z, y, x]``) with correlation ~``sigma_mm``.

    White noise is drawn on a coarse grid (spacing ``sigma_mm``), smoothed, normalised and resampled linearly,
    which is far cheaper than filtering at full resolution.
    """
    from scipy import ndimage

    nz, ny, nx = grid.shape_zyx
    step = max(sigma_mm, float(min(grid.spacing_zyx)))
    ext = np.asarray([nx, ny, nz]) * np.asarray(grid.spacing_zyx[::-1])
    coarse_xyz = np.ceil(ext / step).astype(int) + 4
    white = rng.standard_normal(tuple(coarse_xyz[::-1]), dtype=np.float32)
    smooth = ndimage.gaussian_filter(white, 1.0, mode="wrap")
    smooth /= max(float(smooth.std()), 1e-6)
    img = sitk.GetImageFromArray(smooth)
    img.SetSpacing((step, step, step))
    img.SetOrigin(tuple(float(o) - 2 * step for o in grid.origin_xyz))
    ref = sitk.Image([nx, ny, nz], sitk.sitkFloat32)
    ref.SetSpacing(tuple(float(s) for s in grid.spacing_zyx[::-1]))
    ref.SetOrigin(tuple(float(o) for o in grid.origin_xyz))
    out = sitk.Resample(img, ref, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return sitk.GetArrayViewFromImage(out).astype(np.float32)
