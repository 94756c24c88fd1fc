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
:func:`pipelines.postprocess.shape_adjusted` moves every candidate by its :func:`blobness`), and second-look
candidates are never reported as nodules; they go to ``candidates.csv`` and the LUNA16 submission, where they
raise the sensitivity at 2-8 false positives per scan. The filter runs only in boxes around the
low-probability components (up to a few hundred small boxes per scan, about 1 s), on the isotropic network
grid, on the CPU (SciPy).

Dot response at scale ``s`` (mm), eigenvalues ``l1 <= l2 <= l3`` of the Hessian of the Gaussian-smoothed HU
image: ``s**2 * l3**2 / |l1|`` where all three are negative, else 0 (HU; ``s**2`` normalises across scales);
the response is the maximum over :data:`SIGMAS_MM`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

#: Gaussian scales (mm) of the dot filter: a sphere of diameter d answers most at s = d / (2 sqrt 3), so
#: these cover nodules of about 3.5-7 mm (larger ones are the network's own strength; a 3 mm scale cost
#: 2.5x the time for the kernel reach alone).
SIGMAS_MM = (1.0, 1.5, 2.0)
#: Neighbourhood (voxels) of the local-maximum test and of the probability look-up around a spot.
_PEAK_SIZE = 5
#: Gaussian kernels reach this many sigmas (SciPy's default; 3 lowered borderline spots' responses by ~3 %).
TRUNCATE = 4.0


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


def _kernels(sigma: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sampled Gaussian and its first and second derivatives (voxel units), radius ``ceil(TRUNCATE sigma)``."""
    r = max(1, math.ceil(TRUNCATE * sigma))
    x = np.arange(-r, r + 1, dtype=np.float64)
    g = np.exp(-(x**2) / (2 * sigma**2))
    g /= g.sum()
    # reversed: ndimage correlates, the derivatives need a convolution
    return g, (x / sigma**2 * g), ((x**2 / sigma**4 - 1.0 / sigma**2) * g)


def hessian(
    x: np.ndarray, sigma: float, inner: tuple[slice, slice, slice] | None = None
) -> dict[tuple[int, int], np.ndarray]:
    """Gaussian-derivative Hessian ``{(a, b): d2/da db}`` (a <= b; axes 0 z, 1 y, 2 x) of ``[z, y, x]`` ``x``.

    Separable and shared (3 passes along x, 6 along y, 6 along z instead of 18), edges replicated. With
    ``inner`` (a box of ``x``) only that box is returned, and each pass is cropped to it along the axes already
    filtered: the later passes then run on a fraction of the volume (a 25^3 box around a 9^3 box: ~5x less).
    """
    g, g1, g2 = (k.astype(np.float32) for k in _kernels(sigma))
    k = (g, g1, g2)
    zs, ys, xs = inner if inner is not None else (slice(None),) * 3

    def along(v: np.ndarray, order: int, axis: int) -> np.ndarray:
        return ndi.correlate1d(v, k[order], axis=axis, mode="nearest")

    ax = {o: along(x, o, 2)[:, :, xs] for o in range(3)}  # x-derivative order o
    axy = {
        (oy, ox): along(ax[ox], oy, 1)[:, ys, :]
        for oy, ox in ((0, 0), (1, 0), (2, 0), (0, 1), (1, 1), (0, 2))
    }
    return {
        (0, 0): along(axy[0, 0], 2, 0)[zs],
        (1, 1): along(axy[2, 0], 0, 0)[zs],
        (2, 2): along(axy[0, 2], 0, 0)[zs],
        (0, 1): along(axy[1, 0], 1, 0)[zs],
        (0, 2): along(axy[0, 1], 1, 0)[zs],
        (1, 2): along(axy[1, 1], 0, 0)[zs],
    }


def blobness(
    hu: np.ndarray, centre_zyx: Sequence[float] | np.ndarray, radius_mm: float, spacing_mm: float
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
    reach = max(1, math.ceil(TRUNCATE * sigma))
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


def dot_response(
    hu: np.ndarray,
    spacing_mm: float,
    *,
    sigmas_mm: Sequence[float] = SIGMAS_MM,
    mask: np.ndarray | None = None,
    inner: tuple[slice, slice, slice] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Multi-scale Hessian dot response (HU) of an isotropic ``[z, y, x]`` HU volume and the best scale (mm).

    Eigenvalues are computed only where the Hessian's trace is negative (a bright blob's is).

    Args:
        hu: CT in HU on an isotropic grid of ``spacing_mm``.
        mask: optional boolean, the shape of ``inner``; the response is 0 outside it.
        inner: the box of ``hu`` where the response is wanted (all of it by default); exact where ``hu``
            extends it by the kernel reach (``TRUNCATE`` sigmas), edges replicated elsewhere.

    Returns:
        ``(response, sigma_mm)``, both float32 of ``inner``'s shape (``sigma_mm`` 0 where the response is 0).
    """
    x = np.asarray(hu, dtype=np.float32)
    box = inner if inner is not None else (slice(None),) * 3
    shape = x[box].shape
    best = np.zeros(shape, np.float32)
    best_sigma = np.zeros(shape, np.float32)
    keep = np.ones(shape, bool) if mask is None else np.asarray(mask, bool)
    for s_mm in sigmas_mm:
        d = hessian(x, float(s_mm) / float(spacing_mm), inner)
        sel = keep & (d[0, 0] + d[1, 1] + d[2, 2] < 0)
        if not sel.any():
            continue
        h = np.empty((int(sel.sum()), 3, 3), np.float32)
        for (a, b), v in d.items():
            h[:, a, b] = h[:, b, a] = v[sel]
        ev = np.linalg.eigvalsh(h)  # ascending: ev[:, 0] the most negative
        l1, l3 = ev[:, 0], ev[:, 2]
        r = np.where(l3 < 0, l3**2 / np.maximum(-l1, 1e-6), 0.0) * float(s_mm) ** 2
        resp = np.zeros(shape, np.float32)
        resp[sel] = r
        better = resp > best
        best[better] = resp[better]
        best_sigma[better] = float(s_mm)
    return best, best_sigma


def _seed_clusters(seeds: np.ndarray, *, reach: int) -> list[np.ndarray]:
    """Group ``(n, 3)`` voxel indices into clusters linked by Chebyshev distance <= ``reach``."""
    if len(seeds) == 0:
        return []
    pairs = cKDTree(seeds).query_pairs(reach, p=np.inf, output_type="ndarray")
    graph = coo_matrix((np.ones(len(pairs), bool), (pairs[:, 0], pairs[:, 1])), shape=(len(seeds),) * 2)
    _, cluster = connected_components(graph, directed=False)
    order = np.argsort(cluster, kind="stable")
    bounds = np.flatnonzero(np.diff(cluster[order])) + 1
    return np.split(seeds[order], bounds)


def _covered(seeds: np.ndarray, avoid: Sequence[tuple[np.ndarray, float]], *, slack: float) -> bool:
    """Whether every spot a cluster can give (within ``slack`` voxels of a seed) falls in one avoided ball.

    Such a cluster (typically the faint halo around a network candidate) is skipped unfiltered: its spots would
    all be dropped.
    """
    return any(float(np.linalg.norm(seeds - c, axis=1).max()) + slack <= r for c, r in avoid)


def find_spots(
    hu: np.ndarray,
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

    Args:
        hu: ``[z, y, x]`` CT in HU; ``probability`` the network's ``[z, y, x]`` probability on the same grid;
            ``lungs`` lung labels there (None: no lung restriction).
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
    lung = np.ones(prob.shape, bool) if lungs is None else np.asarray(lungs).reshape(prob.shape) > 0
    half = _PEAK_SIZE // 2
    reach = math.ceil(TRUNCATE * max(SIGMAS_MM) / spacing_mm)
    avoid = [  # balls (centre, radius in voxels) where no spot may lie
        (np.asarray(c, float), max(min_separation_mm, float(r) + 2.0) / spacing_mm) for c, r in avoid_zyx
    ]
    # clusters of seed voxels whose 5^3 neighbourhoods touch: the 26-connected components of "a seed within 2
    # voxels", found on the sparse seeds (a full-volume label and maximum filter cost ~1 s per scan)
    clusters = [
        c
        for c in _seed_clusters(np.argwhere(prob >= min_probability), reach=2 * half + 1)
        if not _covered(c, avoid, slack=half * math.sqrt(3.0))
    ]

    def spots_of(seeds: np.ndarray) -> list[Spot]:
        # the response is needed where a peak may be (a seed within 2 voxels) and 2 voxels around: that box,
        # computed from the box wider by the kernel reach
        lo = np.maximum(seeds.min(0) - 2 * half, 0)
        hi = np.minimum(seeds.max(0) + 2 * half + 1, prob.shape)
        need = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        wlo = np.maximum(lo - reach, 0)
        wide = tuple(slice(int(a), int(b)) for a, b in zip(wlo, np.minimum(hi + reach, prob.shape)))
        local = np.zeros(tuple(int(b - a) for a, b in zip(lo, hi)), bool)
        local[tuple((seeds - lo).T)] = True
        mine = ndi.maximum_filter(local, size=_PEAK_SIZE) & lung[need]  # in the lungs, a seed within 2 voxels
        needed = ndi.maximum_filter(mine, size=_PEAK_SIZE) & lung[need]  # exact for the 5^3 peak test
        inner = tuple(slice(int(a - w), int(b - w)) for a, b, w in zip(lo, hi, wlo))
        resp, sig = dot_response(hu[wide], spacing_mm, mask=needed, inner=inner)  # type: ignore[arg-type]
        peaks = (resp == ndi.maximum_filter(resp, size=_PEAK_SIZE)) & (resp >= min_response_hu) & mine
        out = []
        for p in np.argwhere(peaks):
            idx = tuple(int(a + b) for a, b in zip(p, lo))
            around = tuple(slice(max(i - half, 0), i + half + 1) for i in idx)
            out.append(Spot(idx, float(prob[around].max()), float(resp[tuple(p)]), float(sig[tuple(p)])))  # type: ignore[arg-type]
        return out

    # SciPy's filters release the GIL: threads share the clusters (1.9x on 2 cores); map keeps their order
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(clusters)))) as pool:
        spots = [s for found in pool.map(spots_of, clusters) for s in found]
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
