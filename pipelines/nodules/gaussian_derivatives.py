"""Gaussian-derivative Hessians of boxes of a ``[z, y, x]`` volume, computed pass by pass on demand.

The Hessian of the Gaussian-smoothed volume is separable: 3 passes along x (derivative orders 0, 1, 2), 6 along
y and 6 along z (``scipy.ndimage.correlate1d``, edges replicated), each cropped to the wanted box along the axes
already filtered. Passes are computed when an entry first needs them and kept: the three diagonal entries need
8 of the 15 passes (``d2/dz2`` alone 3), so a caller that finds the first entries too weak never pays for the
others (:mod:`pipelines.nodules.second_look`). The values do not depend on which entries were asked for, or in which
order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from scipy import ndimage as ndi

#: Gaussian kernels reach this many sigmas (SciPy's default).
TRUNCATE = 4.0
#: Which pass feeds which Hessian entry: ``(a, b): (z order, y order, x order)``, axes 0 z, 1 y, 2 x.
ORDERS = {
    (0, 0): (2, 0, 0),
    (1, 1): (0, 2, 0),
    (2, 2): (0, 0, 2),
    (0, 1): (1, 1, 0),
    (0, 2): (1, 0, 1),
    (1, 2): (0, 1, 1),
}


def kernel_radius(sigma: float) -> int:
    """Half-width (voxels) of the kernels of :func:`kernels`."""
    return max(1, math.ceil(TRUNCATE * sigma))


@lru_cache(maxsize=64)
def kernels(sigma: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sampled Gaussian and its first and second derivatives (voxel units), radius :func:`kernel_radius`.

    For correlation (``out[i] = sum_t k[t] in[i + t - r]``); float32 (the precision the second look has always
    used for them), read-only (cached per ``sigma``).
    """
    r = kernel_radius(sigma)
    x = np.arange(-r, r + 1, dtype=np.float64)
    g = np.exp(-(x**2) / (2 * sigma**2))
    g /= g.sum()
    # reversed: ndimage correlates, the derivatives need a convolution
    out = tuple(
        k.astype(np.float32) for k in (g, (x / sigma**2 * g), ((x**2 / sigma**4 - 1.0 / sigma**2) * g))
    )
    for k in out:
        k.flags.writeable = False
    return out  # type: ignore[return-value]


class HessianPasses:
    """The Gaussian-derivative Hessian of the box ``inner`` of ``x`` (``[z, y, x]``, voxel units), by entry.

    Args:
        x: the volume (any real dtype; read as float32); exact where it extends ``inner`` by
            :func:`kernel_radius` voxels, edges replicated elsewhere.
        sigma: the Gaussian's standard deviation in voxels.
        inner: the box of ``x`` whose Hessian is wanted (all of ``x`` by default).
    """

    def __init__(self, x: np.ndarray, sigma: float, inner: tuple[slice, slice, slice] | None = None) -> None:
        self._x = np.asarray(x, np.float32)
        self._k = kernels(sigma)
        box = inner if inner is not None else (slice(None),) * 3
        self._box = tuple(slice(*b.indices(n)[:2]) for b, n in zip(box, self._x.shape))
        self.shape = tuple(b.stop - b.start for b in self._box)
        self._passes: dict[tuple[int, ...], np.ndarray] = {}  # (x order,) or (y order, x order)
        self._entries: dict[tuple[int, int], np.ndarray] = {}

    def _along(self, v: np.ndarray, order: int, axis: int) -> np.ndarray:
        crop = [slice(None)] * 3
        crop[axis] = self._box[axis]
        return ndi.correlate1d(v, self._k[order], axis=axis, mode="nearest")[tuple(crop)]

    def _pass(self, *orders: int) -> np.ndarray:
        """The x pass of order ``(ox,)`` or the y pass ``(oy, ox)``, cropped to the box along its axes."""
        if orders not in self._passes:
            if len(orders) == 1:
                self._passes[orders] = self._along(self._x, orders[0], 2)
            else:
                self._passes[orders] = self._along(self._pass(orders[1]), orders[0], 1)
        return self._passes[orders]

    def entry(self, a: int, b: int) -> np.ndarray:
        """``d2 / da db`` (``a <= b``) over the box, float32."""
        if (a, b) not in self._entries:
            oz, oy, ox = ORDERS[a, b]
            self._entries[a, b] = self._along(self._pass(oy, ox), oz, 0)
        return self._entries[a, b]

    def diagonal(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(d2/dz2, d2/dy2, d2/dx2)``: 8 of the 15 passes."""
        return self.entry(0, 0), self.entry(1, 1), self.entry(2, 2)

    def all(self) -> dict[tuple[int, int], np.ndarray]:
        """Every entry ``{(a, b): d2/da db}`` with ``a <= b``."""
        return {ab: self.entry(*ab) for ab in ORDERS}


def hessian(
    x: np.ndarray, sigma: float, inner: tuple[slice, slice, slice] | None = None
) -> dict[tuple[int, int], np.ndarray]:
    """Gaussian-derivative Hessian ``{(a, b): d2/da db}`` (a <= b; axes 0 z, 1 y, 2 x) of ``[z, y, x]`` ``x``.

    Separable and shared (3 passes along x, 6 along y, 6 along z instead of 18), edges replicated, ``sigma`` in
    voxels. With ``inner`` (a box of ``x``) only that box is returned, and each pass is cropped to it along the
    axes already filtered: the later passes then run on a fraction of the volume (a 25^3 box around a 9^3 box:
    ~5x less). See :class:`HessianPasses`.
    """
    return HessianPasses(x, sigma, inner).all()


def weakest_curvature_bound(diagonal: Sequence[np.ndarray]) -> np.ndarray:
    """Upper bound of ``l3**2 / |l1|`` (``l1 <= l2 <= l3 < 0``) from a Hessian's diagonal alone (float64).

    Every ``-h[i, i]`` lies between ``|l3|`` and ``|l1|`` (Rayleigh quotients), so ``l3**2 / |l1| <=
    min(-h[i, i])**2 / max(-h[i, i])``; 0 where a diagonal entry is not negative (no negative definite
    matrix has one). About 0 along a vessel parallel to an axis, exact for a ball.
    """
    d = -np.stack([np.asarray(v, np.float64) for v in diagonal])
    lo, hi = d.min(0), d.max(0)
    return np.where(lo > 0, lo**2 / np.where(hi > 0, hi, 1.0), 0.0)


def valid_band(kernel: np.ndarray, size: int) -> np.ndarray:
    """``(size + len(kernel) - 1, size)`` matrix ``T`` with ``(line @ T)[i] = sum_t kernel[t] line[i + t]``."""
    k = np.asarray(kernel)
    out = np.zeros((size + len(k) - 1, size), k.dtype)
    cols = np.arange(size)
    out[cols[None, :] + np.arange(len(k))[:, None], cols[None, :]] = k[:, None]
    return out


class BoxBatch:
    """Gaussian-derivative Hessians at the central ``size``^3 voxels of a batch of boxes, by entry.

    ``x`` is ``[box, z, y, x]`` with ``size + 2 r`` voxels per axis (``r`` = :func:`kernel_radius`), the margin
    already read from the volume (its edges replicated): every pass is a stack of small matrix products with a
    band matrix, for the output voxels only (no whole lines), over all boxes in one call (float32). Each product
    is at most ``(size + 2 r)^2 x size`` (so BLAS keeps to one thread per product: many threads spinning on
    tiny products cost 5x on a busy machine). The values agree with :class:`HessianPasses`' to float32
    rounding of the sums (about 1e-6 of the entries' scale), not bit for bit: meant for bounds with a margin.
    Entries come back ``[box, z, y, x]``.
    """

    def __init__(self, x: np.ndarray, sigma: float, size: int) -> None:
        k = kernels(sigma)
        if x.ndim != 4 or x.shape[1:] != (size + len(k[0]) - 1,) * 3:
            raise ValueError(f"boxes of {size + len(k[0]) - 1}^3 voxels expected, not {x.shape[1:]}")
        self._x = np.asarray(x, np.float32)
        self._bands = tuple(valid_band(v, size) for v in k)  # (size + 2 r, size): x pass on the right
        self._left = tuple(np.ascontiguousarray(b.T) for b in self._bands)  # y and z passes on the left
        self._passes: dict[tuple[int, ...], np.ndarray] = {}
        self._entries: dict[tuple[int, int], np.ndarray] = {}

    def __len__(self) -> int:
        return len(self._x)

    def _pass(self, *orders: int) -> np.ndarray:
        """x pass ``(ox,)``: ``[box, z, y, x']``; y pass ``(oy, ox)``: ``[box, z, y', x']``."""
        if orders not in self._passes:
            if len(orders) == 1:
                self._passes[orders] = np.matmul(self._x, self._bands[orders[0]])
            else:
                self._passes[orders] = np.matmul(self._left[orders[0]], self._pass(orders[1]))
        return self._passes[orders]

    def entry(self, a: int, b: int) -> np.ndarray:
        """``d2 / da db`` (``a <= b``) at every box's central voxels, ``[box, z, y, x]`` float32."""
        if (a, b) not in self._entries:
            oz, oy, ox = ORDERS[a, b]
            zyx = self._pass(oy, ox)
            n, w, sy, sx = zyx.shape
            out = np.matmul(self._left[oz], zyx.reshape(n, w, sy * sx))
            self._entries[a, b] = out.reshape(n, -1, sy, sx)
        return self._entries[a, b]

    def take(self, boxes: np.ndarray) -> BoxBatch:
        """The same batch restricted to ``boxes`` (indices or a boolean mask), keeping what was computed."""
        out = object.__new__(BoxBatch)
        out._x = self._x[boxes]
        out._bands, out._left = self._bands, self._left
        out._passes = {k: v[boxes] for k, v in self._passes.items()}
        out._entries = {k: v[boxes] for k, v in self._entries.items()}
        return out
