"""Second-look candidates: blob-shaped spots that the network scored below its candidate threshold.

The network's candidates are the components of ``p > candidate_threshold`` at least ``min_diameter_mm``
across. A small nodule the network sees only faintly (p 0.2-0.4 on a 3-5 mm nodule) falls through both
filters, and lowering them admits mostly vessel segments and crossings (validation: no CPM gain at any lower
threshold or diameter). A multi-scale Hessian *dot enhancement filter* (Li, Sone and Doi, Med. Phys. 30(8),
2003) tells the two apart: a bright blob has three large negative Hessian eigenvalues, a vessel only two.

Every spot within 2 voxels of ``p >= min_probability`` whose dot response reaches ``min_response_hu`` (a
local maximum over 5x5x5 voxels, inside the lungs, away from the network's candidates) becomes a point
candidate scored by the network's highest probability within 2 voxels. The score is capped below
``candidate_threshold`` (below every network candidate's, until the shape term of
:func:`pipelines.screening.scoring.shape_adjusted` moves every candidate by its :func:`blobness`), and second-look
candidates are never reported as nodules; they go to ``candidates.csv`` and the LUNA16 submission, where they
raise the sensitivity at 2-8 false positives per scan. The filter runs only in boxes around the
low-probability components (up to a few hundred small boxes per scan), on the isotropic network grid, on the
CPU (SciPy).

Cost and memory: the seed voxels are clustered by labelling around them (:func:`~pipelines.nodules.sparse_labels.
seed_clusters`: a few bytes per voxel of the grid however many voxels are seeds). Most clusters cannot reach
``min_response_hu`` anywhere a peak may lie; a screen settles them from bounds on the response, staged so that
the diagonal of the Hessian (3-8 of the 15 separable passes) rules out most, then the exact response: the small
clusters together (:func:`_screen_boxes`, float32 matrix products over a batch of boxes, against 0.99 of the
floor), the large ones one by one (:func:`_may_peak`). Only clusters left over are filtered exactly on their
whole box (:func:`dot_response` with ``floor_hu``: eigenvalues only where the bounds allow). The spots are those
the full filter gives everywhere (tests/test_second_look.py): on the v0.8.0 bench scan's two grids, 0.8 s of
CPU instead of 8.7 s (one thread, busy machine), and the same spots.

Dot response at scale ``s`` (mm), eigenvalues ``l1 <= l2 <= l3`` of the Hessian of the Gaussian-smoothed HU
image: ``s**2 * l3**2 / |l1|`` where all three are negative, else 0 (HU; ``s**2`` normalises across scales);
the response is the maximum over :data:`SIGMAS_MM`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from scipy import ndimage as ndi

from pipelines.nodules.gaussian_derivatives import (
    BoxBatch,
    HessianPasses,
    hessian,
    kernel_radius,
    weakest_curvature_bound,
)
from pipelines.nodules.sparse_labels import SeedCluster, seed_clusters

#: Gaussian scales (mm) of the dot filter: a sphere of diameter d answers most at s = d / (2 sqrt 3), so
#: these cover nodules of about 3.5-7 mm (larger ones are the network's own strength; a 3 mm scale cost
#: 2.5x the time for the kernel reach alone).
SIGMAS_MM = (1.0, 1.5, 2.0)
#: Neighbourhood (voxels) of the local-maximum test and of the probability look-up around a spot.
_PEAK_SIZE = 5
#: The response bounds that decide what to skip are compared against this share of the floor: a skipped
#: voxel's exact response is below it, and float32 eigenvalues (absolute error a few float32 epsilons of |l1|)
#: add at most ~1e-6 of it to the response computed.
_BOUND_MARGIN = 0.99
#: A cluster whose box holds more voxels is filtered in slabs along z (memory: ~80 bytes per voxel of a slab).
SLAB_VOXELS = 1 << 21
#: Clusters whose peak box fits one of these cubes are screened together, a batch at a time (most are a few
#: voxels across); larger ones one by one.
BATCH_SIZES = (8, 16)
#: Bytes of one batch's boxes with their margins (its passes take about as much again).
_BATCH_BYTES = 64 << 20


class Volume(Protocol):
    """A ``[z, y, x]`` volume read box by box: a numpy array, or one that makes each box when indexed."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    def __getitem__(self, box: Any) -> np.ndarray: ...


@dataclass(frozen=True)
class Spot:
    """One second-look candidate on the network grid.

    Attributes:
        index_zyx: voxel index ``(z, y, x)`` on the network grid.
        probability: the network's highest probability within 2 voxels.
        response_hu: dot-filter response (HU).
        sigma_mm: scale of the strongest response; ``2 * sqrt(3) * sigma_mm`` estimates the diameter.
    """

    index_zyx: tuple[int, int, int]
    probability: float
    response_hu: float
    sigma_mm: float

    @property
    def diameter_mm(self) -> float:
        return 2.0 * math.sqrt(3.0) * self.sigma_mm


def blobness(
    hu: Volume, centre_zyx: Sequence[float] | np.ndarray, radius_mm: float, spacing_mm: float
) -> float:
    """How ball-like the bright structure at ``centre_zyx`` is, at the scale of a ball of ``radius_mm``.

    ``|l|min / |l|max`` of the Hessian eigenvalues of the Gaussian-smoothed HU (scale ``radius / sqrt 3``, the
    scale a ball of that radius answers most, at least 1.5 mm) when all three are negative (a bright blob),
    else 0: about 1 for a ball, about 0 for a vessel (one eigenvalue near 0) or a wall (two). Network
    candidates are compact components of the probability map, so a large vessel seen end-on near the hilum
    looks as round to their measurements as a nodule; the HU around it does not.

    Args:
        hu: isotropic ``[z, y, x]`` HU volume (the network grid).
        centre_zyx: candidate centre, voxel indices of ``hu``.
        radius_mm: candidate radius.
        spacing_mm: voxel size of ``hu``.
    """
    sigma = max(float(radius_mm), 1.5) / math.sqrt(3.0) / float(spacing_mm)
    reach = kernel_radius(sigma)
    shape = np.asarray(hu.shape)
    c = np.clip(np.rint(np.asarray(centre_zyx, float)).astype(int), 0, shape - 1)
    lo, hi = np.maximum(c - reach, 0), np.minimum(c + reach + 1, shape)
    crop = np.ascontiguousarray(hu[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]], dtype=np.float32)
    inner = tuple(slice(int(i), int(i) + 1) for i in c - lo)
    h = hessian(crop, sigma, inner)  # type: ignore[arg-type]
    m = np.empty((3, 3))
    for (a, b), v in h.items():
        m[a, b] = m[b, a] = float(v.reshape(-1)[0])
    ev = np.linalg.eigvalsh(m)
    if not (ev < 0).all():
        return 0.0
    mags = np.abs(ev)
    return float(mags.min() / mags.max())


def _may_reach(h: dict[tuple[int, int], np.ndarray], level: float) -> np.ndarray:
    """Where the Hessians ``h`` (1-D entries, negative diagonal) may give ``l3**2 / |l1| >= level``.

    ``l3**2 / |l1| <= |det| / l1**2 <= 9 |det| / trace**2`` for a negative definite matrix (``|det| >= |l1|
    l3**2``, ``|l1| >= |trace| / 3``): tight for a ball, about 0 along a vessel in any direction. float64.
    """
    a, b, c = (h[i, i].astype(np.float64) for i in range(3))
    d, e, f = (h[k].astype(np.float64) for k in ((0, 1), (0, 2), (1, 2)))
    det = a * (b * c - f * f) - d * (d * c - f * e) + e * (d * f - b * e)
    return np.asarray(9.0 * np.abs(det) >= level * (a + b + c) ** 2)


def _diagonal_candidates(passes: HessianPasses, where: np.ndarray, level: float) -> np.ndarray:
    """Flat indices of the voxels of ``where`` whose Hessian diagonal allows ``l3**2 / |l1| >= level``.

    ``-d2/dz2`` bounds the response on its own (3 of the 15 passes), ``-d2/dy2`` too (5), and
    :func:`~pipelines.nodules.gaussian_derivatives.weakest_curvature_bound` of the whole diagonal best (8): each entry is
    computed only while some voxel is left.
    """
    at = np.flatnonzero(where & (passes.entry(0, 0) <= -level))
    for ab in ((1, 1), (2, 2)):
        if at.size:
            at = at[passes.entry(*ab).reshape(-1)[at] <= -level]
    if at.size:
        diagonal = [v.reshape(-1)[at] for v in passes.diagonal()]
        at = at[weakest_curvature_bound(diagonal) >= level]
    return at


def _scale_passes(
    x: Volume, spacing_mm: float, sigmas_mm: Sequence[float], box: tuple[slice, ...]
) -> list[tuple[float, HessianPasses]]:
    """A :class:`HessianPasses` of ``box`` per scale, each on ``x`` cropped to ``box`` and its kernels' reach.

    ``x`` is read once, over the widest scale's reach.
    """
    shape = x.shape
    reach = max(kernel_radius(float(s) / float(spacing_mm)) for s in sigmas_mm)
    outer = tuple(slice(max(b.start - reach, 0), min(b.stop + reach, n)) for b, n in zip(box, shape))
    read = np.asarray(x[outer], np.float32)
    out = []
    for s_mm in sigmas_mm:
        sigma = float(s_mm) / float(spacing_mm)
        r = kernel_radius(sigma)
        crop = tuple(slice(max(b.start - r, 0), min(b.stop + r, n)) for b, n in zip(box, shape))
        local = tuple(slice(b.start - c.start, b.stop - c.start) for b, c in zip(box, crop))
        view = read[tuple(slice(c.start - o.start, c.stop - o.start) for c, o in zip(crop, outer))]
        out.append((float(s_mm), HessianPasses(view, sigma, local)))  # type: ignore[arg-type]
    return out


def _scale_response(
    passes: HessianPasses, s_mm: float, where: np.ndarray, floor_hu: float
) -> tuple[np.ndarray, np.ndarray]:
    """The dot response at scale ``s_mm`` of the voxels of ``where``: ``(flat indices, float32 responses)``.

    With ``floor_hu`` > 0, only the voxels that may reach it (:func:`_diagonal_candidates`, :func:`_may_reach`);
    else every voxel with a negative trace.
    """
    level = _BOUND_MARGIN * float(floor_hu) / s_mm**2
    if floor_hu > 0:
        at = _diagonal_candidates(passes, where, level)
    else:
        zz, yy, xx = passes.diagonal()
        at = np.flatnonzero(where & (zz + yy + xx < 0))
    if not at.size:
        return at, np.zeros(0, np.float32)
    entries = {
        ab: passes.entry(*ab).reshape(-1)[at] for ab in ((0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2))
    }
    if floor_hu > 0:
        ok = _may_reach(entries, level)
        at = at[ok]
        entries = {k: v[ok] for k, v in entries.items()}
        if not at.size:
            return at, np.zeros(0, np.float32)
    return at, _responses(entries, s_mm)


def _responses(entries: dict[tuple[int, int], np.ndarray], s_mm: float) -> np.ndarray:
    """Dot responses (HU) of the Hessians ``entries`` (1-D, float32) at scale ``s_mm``."""
    h = np.empty((len(entries[0, 0]), 3, 3), np.float32)
    for (a, b), v in entries.items():
        h[:, a, b] = h[:, b, a] = v
    ev = np.linalg.eigvalsh(h)  # ascending: ev[:, 0] the most negative
    l1, l3 = ev[:, 0], ev[:, 2]
    return np.asarray(np.where(l3 < 0, l3**2 / np.maximum(-l1, 1e-6), 0.0) * s_mm**2)


def _may_peak(
    hu: Volume, spacing_mm: float, box: tuple[slice, ...], where: np.ndarray, floor_hu: float
) -> bool:
    """Whether a voxel of ``where`` (a mask of ``box``) reaches a dot response of ``floor_hu`` at some scale.

    Computed on the smallest box the cluster's peaks may lie in, and mostly from the Hessians' diagonals
    (:func:`_diagonal_candidates`): most seed clusters are settled with 3-8 of the 15 passes per scale. A
    cluster without such a voxel has no peak; the others are filtered in full (the 2 voxels around their peaks
    too) by :func:`dot_response`.
    """
    if not where.any():
        return False
    for s_mm, passes in _scale_passes(hu, spacing_mm, SIGMAS_MM, box):
        _, resp = _scale_response(passes, s_mm, where, floor_hu)
        if (resp >= floor_hu).any():
            return True
    return False


def _batch_reaches(batch: BoxBatch, where: np.ndarray, s_mm: float, floor_hu: float) -> np.ndarray:
    """Per box of ``batch``: whether a voxel of ``where`` (``[box, z, y, x]``) may reach ``floor_hu`` at ``s_mm``.

    The staged bounds of :func:`_diagonal_candidates` and :func:`_may_reach`, then the response itself, all
    against :data:`_BOUND_MARGIN` of the floor: the batch's float32 sums differ from the exact filter's by
    ~1e-6 of the entries' scale, far inside that margin, so no box that reaches the floor is missed.
    """
    level = _BOUND_MARGIN * float(floor_hu) / s_mm**2
    found = np.zeros(len(batch), bool)
    ids = np.arange(len(batch))
    ok = where
    for a in range(3):  # d2/dz2, then d2/dy2, then d2/dx2 bound the response; boxes with no voxel left go
        ok = ok & (batch.entry(a, a) <= -level)
        alive = np.asarray(ok.any(axis=(1, 2, 3)))
        if not alive.any():
            return found
        batch, ok, ids = batch.take(alive), ok[alive], ids[alive]
    voxels = np.nonzero(ok)
    keep = weakest_curvature_bound([batch.entry(a, a)[voxels] for a in range(3)]) >= level
    boxes, box_of = np.unique(voxels[0][keep], return_inverse=True)
    if not boxes.size:
        return found
    batch = batch.take(boxes)
    at = (box_of, *(v[keep] for v in voxels[1:]))
    entries = {ab: batch.entry(*ab)[at] for ab in ((0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2))}
    ok_voxels = _may_reach(entries, level)
    if ok_voxels.any():
        resp = _responses({k: v[ok_voxels] for k, v in entries.items()}, s_mm)
        found[ids[boxes[box_of[ok_voxels][resp >= _BOUND_MARGIN * float(floor_hu)]]]] = True
    return found


def _gather(hu: Volume, lo: np.ndarray, width: int) -> np.ndarray:
    """``[box, z, y, x]`` float32: ``width``^3 voxels of ``hu`` from each corner ``lo[box]``, edges replicated."""
    shape = np.asarray(hu.shape[:3])
    out = np.empty((len(lo), width, width, width), np.float32)
    for j, corner in enumerate(lo):
        if (corner >= 0).all() and (corner + width <= shape).all():
            out[j] = hu[tuple(slice(int(a), int(a) + width) for a in corner)]
        else:  # at the volume's edge: clipped indices repeat its last voxels, as mode="nearest" does
            idx = [np.clip(int(a) + np.arange(width), 0, n - 1) for a, n in zip(corner, shape)]
            out[j] = hu[np.ix_(*idx)]
    return out


def _screen_boxes(
    hu: Volume, spacing_mm: float, corners: np.ndarray, where: np.ndarray, floor_hu: float
) -> np.ndarray:
    """:func:`_may_peak` for many small peak boxes at once (a superset of the boxes it answers True for).

    Args:
        corners: ``(boxes, 3)`` first voxel of each peak box.
        where: ``[box, z, y, x]`` cubes holding each box's peak voxels from its corner on.
    """
    size = where.shape[1]
    found = np.zeros(len(corners), bool)
    for s_mm in SIGMAS_MM:
        sigma = float(s_mm) / float(spacing_mm)
        r = kernel_radius(sigma)
        width = size + 2 * r
        todo = np.flatnonzero(~found)
        step = max(1, _BATCH_BYTES // (4 * width**3))
        for i in range(0, len(todo), step):
            part = todo[i : i + step]
            batch = BoxBatch(_gather(hu, corners[part] - r, width), sigma, size)
            found[part[_batch_reaches(batch, where[part], s_mm, floor_hu)]] = True
    return found


def dot_response(
    hu: np.ndarray,
    spacing_mm: float,
    *,
    sigmas_mm: Sequence[float] = SIGMAS_MM,
    mask: np.ndarray | None = None,
    inner: tuple[slice, slice, slice] | None = None,
    floor_hu: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Multi-scale Hessian dot response (HU) of an isotropic ``[z, y, x]`` HU volume and the best scale (mm).

    Eigenvalues are computed only where the Hessian's trace is negative (a bright blob's is). Each scale
    filters only as much of ``hu`` around ``inner`` as its kernels reach. With ``floor_hu``, a scale is
    filtered further only where its Hessian's diagonal allows a response from the floor up, and eigenvalues
    are computed only where the whole Hessian does (:func:`_scale_response`).

    Args:
        hu: CT in HU on an isotropic grid of ``spacing_mm``.
        mask: optional boolean, the shape of ``inner``; the response is 0 outside it.
        inner: the box of ``hu`` where the response is wanted (all of it by default); exact where ``hu``
            extends it by the kernel reach (``TRUNCATE`` sigmas), edges replicated elsewhere.
        floor_hu: responses below this may come back lower, down to 0 (the scales that cannot reach it are
            skipped); from this level up they are exact, and so is every value when it is 0.

    Returns:
        ``(response, sigma_mm)``, both float32 of ``inner``'s shape (``sigma_mm`` 0 where the response is 0).
    """
    x = np.asarray(hu, dtype=np.float32)
    box = tuple(slice(*b.indices(n)[:2]) for b, n in zip(inner or (slice(None),) * 3, x.shape))
    shape = tuple(b.stop - b.start for b in box)
    keep = np.ones(shape, bool) if mask is None else np.asarray(mask, bool)
    best = np.zeros(shape, np.float32)
    best_sigma = np.zeros(shape, np.float32)
    flat_best, flat_sigma = best.reshape(-1), best_sigma.reshape(-1)
    for s_mm, passes in _scale_passes(x, spacing_mm, sigmas_mm, box):
        at, resp = _scale_response(passes, s_mm, keep, floor_hu)
        better = resp > flat_best[at]
        flat_best[at[better]] = resp[better]
        flat_sigma[at[better]] = s_mm
    return best, best_sigma


def _covered(cluster: SeedCluster, avoid: Sequence[tuple[np.ndarray, float]], *, slack: float) -> bool:
    """Whether every spot a cluster can give (within ``slack`` voxels of a seed) falls in one avoided ball.

    Such a cluster (typically the faint halo around a network candidate) is skipped unfiltered: its spots would
    all be dropped. A ball is ruled out from the cluster's box alone when a face of the box lies farther from
    its centre than the radius allows (a seed lies on every face).
    """
    if not avoid:
        return False
    centres = np.asarray([c for c, _ in avoid], float)
    radii = np.asarray([r for _, r in avoid], float)
    lo, hi = cluster.lo.astype(float), cluster.hi.astype(float) - 1.0
    farthest_face = np.maximum(np.abs(centres - lo), np.abs(centres - hi)).max(1)
    maybe = np.flatnonzero(farthest_face + slack <= radii + 1.0)  # + 1: never rule out on a rounding
    if not maybe.size:
        return False
    seeds = np.argwhere(cluster.seeds) + cluster.lo
    return any(float(np.linalg.norm(seeds - centres[i], axis=1).max()) + slack <= radii[i] for i in maybe)


@dataclass(frozen=True)
class _Region:
    """Where a cluster's peaks may lie: ``mine`` (a seed within 2 voxels, in the lungs) in the box ``need``
    (the seeds' box grown by 4 voxels: the peaks' and the 2 voxels the peak test reads around them)."""

    need: tuple[slice, slice, slice]
    mine: np.ndarray
    peak_lo: np.ndarray  # the box mine lies in (the seeds' box grown by 2), relative to ``need``
    peak_hi: np.ndarray

    @property
    def lo(self) -> np.ndarray:
        return np.asarray([b.start for b in self.need])


def _region(cluster: SeedCluster, shape: tuple[int, ...], lung: np.ndarray | None) -> _Region:
    half = _PEAK_SIZE // 2
    lo = np.maximum(cluster.lo - 2 * half, 0)
    hi = np.minimum(cluster.hi + 2 * half, shape)
    need = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    local = np.zeros(tuple(int(v) for v in hi - lo), bool)
    local[tuple(slice(int(a), int(b)) for a, b in zip(cluster.lo - lo, cluster.hi - lo))] = cluster.seeds
    mine = ndi.maximum_filter(local, size=_PEAK_SIZE)  # a seed within 2 voxels
    if lung is not None:
        mine &= lung[need]
    peak_lo = np.maximum(cluster.lo - half, 0) - lo
    peak_hi = np.minimum(cluster.hi + half, shape) - lo
    return _Region(need, mine, peak_lo, peak_hi)  # type: ignore[arg-type]


def _cluster_spots(
    region: _Region,
    hu: Volume,
    prob: np.ndarray,
    lung: np.ndarray | None,
    spacing_mm: float,
    *,
    min_response_hu: float,
    screened: bool = False,
) -> list[Spot]:
    """The peaks of one cluster: dot response >= ``min_response_hu``, the highest within 5^3 voxels, in the
    lungs, a seed within 2 voxels; in C order.

    The response is needed where a peak may be (a seed within 2 voxels) and 2 voxels around: that box,
    computed from the box wider by the kernel reach, once :func:`_may_peak` finds a voxel at the floor (or
    ``screened``: :func:`_screen_boxes` did). A box above :data:`SLAB_VOXELS` is filtered in slabs along z,
    each with the 2 voxels the peak test needs around it (the same values, less memory at once).
    """
    half = _PEAK_SIZE // 2
    reach = kernel_radius(max(SIGMAS_MM) / spacing_mm)
    lo, need, mine = region.lo, region.need, region.mine
    needed = None
    nz = mine.shape[0]
    step = max(1, SLAB_VOXELS // max(1, mine[0].size))
    out = []
    for z0 in range(0, nz, step):
        z1 = min(z0 + step, nz)
        if not (screened and step >= nz):
            peak = tuple(
                slice(int(a), int(b))
                for a, b in zip(
                    (max(z0, region.peak_lo[0]), *region.peak_lo[1:]),
                    (min(z1, region.peak_hi[0]), *region.peak_hi[1:]),
                )
            )
            box = tuple(slice(b.start + int(o), b.stop + int(o)) for b, o in zip(peak, lo))
            if not _may_peak(hu, spacing_mm, box, mine[peak], min_response_hu):
                continue  # most clusters end here
        if needed is None:  # where the peak test reads the response
            needed = ndi.maximum_filter(mine, size=_PEAK_SIZE)
            if lung is not None:
                needed &= lung[need]
        rz = slice(
            max(z0 - half, 0), min(z1 + half, nz)
        )  # the response's slab: the peak test's 2 voxels around
        box = (slice(int(lo[0]) + rz.start, int(lo[0]) + rz.stop), need[1], need[2])
        wide = tuple(slice(max(b.start - reach, 0), min(b.stop + reach, n)) for b, n in zip(box, prob.shape))
        inner = tuple(slice(b.start - w.start, b.stop - w.start) for b, w in zip(box, wide))
        resp, sig = dot_response(
            hu[wide],
            spacing_mm,
            mask=needed[rz],
            inner=inner,  # type: ignore[arg-type]
            floor_hu=min_response_hu,
        )
        peaks = (resp == ndi.maximum_filter(resp, size=_PEAK_SIZE)) & (resp >= min_response_hu)
        core = slice(z0 - rz.start, z1 - rz.start)
        for p in np.argwhere(peaks[core] & mine[z0:z1]):
            q = (int(p[0]) + core.start, int(p[1]), int(p[2]))
            idx = tuple(int(a + b) for a, b in zip(q, (box[0].start, lo[1], lo[2])))
            around = tuple(slice(max(i - half, 0), i + half + 1) for i in idx)
            out.append(Spot(idx, float(prob[around].max()), float(resp[q]), float(sig[q])))  # type: ignore[arg-type]
    return out


def _batch_screen(regions: list[_Region], hu: Volume, spacing_mm: float, floor_hu: float) -> dict[int, bool]:
    """:func:`_screen_boxes` for the regions of one z slab whose peak box fits a :data:`BATCH_SIZES` cube.

    Returns:
        ``{index in regions: whether it may peak}`` for the regions screened (the others are not keys).
    """
    out: dict[int, bool] = {}
    for size in BATCH_SIZES:
        picked = [
            i
            for i, g in enumerate(regions)
            if i not in out and SLAB_VOXELS >= g.mine.size and int((g.peak_hi - g.peak_lo).max()) <= size
        ]
        if not picked:
            continue
        where = np.zeros((len(picked), size, size, size), bool)
        corners = np.empty((len(picked), 3), int)
        for j, i in enumerate(picked):
            g = regions[i]
            peak = tuple(slice(int(a), int(b)) for a, b in zip(g.peak_lo, g.peak_hi))
            where[j][tuple(slice(0, b.stop - b.start) for b in peak)] = g.mine[peak]
            corners[j] = g.lo + g.peak_lo
        for i, may in zip(picked, _screen_boxes(hu, spacing_mm, corners, where, floor_hu)):
            out[i] = bool(may)
    return out


def find_spots(
    hu: Volume,
    probability: np.ndarray,
    lungs: np.ndarray | None,
    spacing_mm: float,
    *,
    min_probability: float,
    min_response_hu: float,
    max_probability: float,
    avoid_zyx: Sequence[tuple[Sequence[float], float]] = (),
    min_separation_mm: float = 5.0,
    workers: int = 2,
) -> list[Spot]:
    """Second-look candidates of one scan on the isotropic network grid (see the module docstring).

    Memory: a few bytes per voxel of the grid, and the dot filter's ~80 bytes per voxel of one box or slab
    (:data:`SLAB_VOXELS`) per worker, however many voxels reach ``min_probability``.

    Args:
        hu: ``[z, y, x]`` CT in HU (an array, or a :class:`Volume` that makes each box when indexed);
            ``probability`` the network's ``[z, y, x]`` probability on the same grid; ``lungs`` lung labels
            there (None: no lung restriction).
        spacing_mm: the grid's isotropic voxel size.
        min_probability: a spot needs this network probability within 2 voxels.
        min_response_hu: and at least this dot response.
        max_probability: scores are capped just below this (the network's candidate threshold).
        avoid_zyx: ``(centre index (z, y, x), radius mm)`` of the network's candidates; spots within
            ``max(min_separation_mm, radius + 2 mm)`` of one are dropped.
        min_separation_mm: spots closer than this to a stronger spot are dropped too.
        workers: threads that filter the clusters' boxes (the result does not depend on it).

    Returns:
        Spots by decreasing probability (then response).
    """
    prob = np.asarray(probability, dtype=np.float32)
    lung = None if lungs is None else np.asarray(lungs).reshape(prob.shape) > 0
    half = _PEAK_SIZE // 2
    avoid = [  # balls (centre, radius in voxels) where no spot may lie
        (np.asarray(c, float), max(min_separation_mm, float(r) + 2.0) / spacing_mm) for c, r in avoid_zyx
    ]
    # clusters of seed voxels whose 5^3 neighbourhoods touch: the 26-connected components of "a seed within 2
    # voxels"
    clusters = [
        c
        for c in seed_clusters(prob >= min_probability, reach=2 * half + 1)
        if not _covered(c, avoid, slack=half * math.sqrt(3.0))
    ]

    regions = [_region(c, prob.shape, lung) for c in clusters]
    screened = _batch_screen(regions, hu, spacing_mm, min_response_hu) if min_response_hu > 0 else {}
    todo = [(g, i in screened) for i, g in enumerate(regions) if screened.get(i, True)]

    def spots_of(item: tuple[_Region, bool]) -> list[Spot]:
        return _cluster_spots(
            item[0], hu, prob, lung, spacing_mm, min_response_hu=min_response_hu, screened=item[1]
        )

    # SciPy's filters release the GIL: threads share the clusters; map keeps their order
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(todo)))) as pool:
        spots = [s for found in pool.map(spots_of, todo) for s in found]
    spots.sort(key=lambda s: (-s.probability, -s.response_hu))
    kept: list[Spot] = []
    cap = float(np.nextafter(np.float32(max_probability), np.float32(0)))
    for s in spots:
        at = np.asarray(s.index_zyx, float)
        if any(np.linalg.norm(at - c) <= r for c, r in avoid):
            continue
        if any(np.linalg.norm(at - np.asarray(k.index_zyx)) * spacing_mm < min_separation_mm for k in kept):
            continue
        kept.append(Spot(s.index_zyx, min(s.probability, cap), s.response_hu, s.sigma_mm))
    return kept
