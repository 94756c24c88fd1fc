"""Pasting real nodules from a :class:`~pipelines.realnodules.bank.NoduleBank` into CT (training patches, whole scans).

A real nodule keeps its own HU: inside its mask the host's voxels are replaced by the nodule's, and over
:data:`FEATHER_MM` outside the mask the nodule's surroundings (its own lung, or the lung background that the
bank padded its short z extent with) fade into the host, so there is no hard step at the edge or at the
nodule's first and last slice. The label is the readers' mask carried to the host grid.

The nodule is drawn on the host grid by sampling its 1 mm bank arrays (linear interpolation) at the host's
voxel centres, so any host spacing works; where the host is coarser than the bank the nodule is first smoothed
by the extra voxel width (partial volume as the scanner would give it). Orientation (flips, quarter turns about
z) is applied exactly to the arrays beforehand; scale jitter is folded into the sampling.

Arrays are ``[z, y, x]``; HU; positions are voxel indices of the host; spacings mm.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from pipelines.realnodules.bank import BANK_SPACING_MM, NoduleBank

#: Width (mm) over which a real nodule's surroundings fade into the host outside its mask.
FEATHER_MM = 1.5


@dataclass
class RealNodule:
    """A bank nodule, oriented and scaled, ready to place (quacks like a generator nodule for placement).

    Attributes:
        index: row in the bank.
        hu: float32 HU ``[z, y, x]`` on the bank grid (already flipped/turned).
        mask: bool, same shape.
        scale: size factor applied when drawn.
        radius: equivalent-sphere radius (mm) after scaling.
        r_max: farthest mask voxel from the mask's centroid (mm) after scaling.
        location: placement class (``parenchymal``, ``juxta-pleural``, ``juxta-vascular``).
        center: host voxel index ``(z, y, x)`` once placed.
    """

    index: int
    hu: np.ndarray
    mask: np.ndarray
    scale: float = 1.0
    radius: float = 0.0
    r_max: float = 0.0
    location: str = "parenchymal"
    center: np.ndarray | None = None


def orient(
    hu: np.ndarray, mask: np.ndarray, *, flips: Sequence[bool], turns: int
) -> tuple[np.ndarray, np.ndarray]:
    """Flip the ``[z, y, x]`` arrays along the axes where ``flips`` is True, then turn ``turns`` quarter turns about z."""
    for axis, f in enumerate(flips):
        if f:
            hu, mask = np.flip(hu, axis), np.flip(mask, axis)
    hu, mask = np.rot90(hu, int(turns) % 4, axes=(1, 2)), np.rot90(mask, int(turns) % 4, axes=(1, 2))
    return np.ascontiguousarray(hu), np.ascontiguousarray(mask)


def draw_real(
    bank: NoduleBank,
    index: int,
    rng: np.random.Generator,
    *,
    scale_jitter: float = 0.1,
    augment: bool = True,
) -> RealNodule:
    """Nodule ``index`` of ``bank`` with random flips, quarter turns about z and a scale in ``1 +- scale_jitter``."""
    hu, mask = bank.hu[index].astype(np.float32), bank.mask[index].astype(bool)
    scale = 1.0
    if augment:
        hu, mask = orient(
            hu, mask, flips=[bool(b) for b in rng.integers(0, 2, 3)], turns=int(rng.integers(4))
        )
        scale = float(rng.uniform(1.0 - scale_jitter, 1.0 + scale_jitter)) if scale_jitter > 0 else 1.0
    return _measured(RealNodule(index=int(index), hu=hu, mask=mask, scale=scale))


def _measured(n: RealNodule) -> RealNodule:
    idx = np.argwhere(n.mask)
    c = idx.mean(axis=0)
    step = BANK_SPACING_MM * n.scale
    n.radius = 0.5 * float((6.0 * len(idx) / np.pi) ** (1.0 / 3.0)) * step
    n.r_max = (float(np.sqrt(((idx - c) ** 2).sum(axis=1)).max()) + 0.5) * step
    return n


def footprint(
    nodule: RealNodule,
    centre_zyx: Sequence[float] | np.ndarray,
    host_shape: Sequence[int],
    host_spacing_zyx: Sequence[float],
) -> tuple[tuple[slice, ...], np.ndarray, np.ndarray, np.ndarray] | None:
    """Where the nodule lands on the host: ``(box, alpha, nodule_hu, label)`` over the box, or None if off-grid.

    ``alpha`` (float32, 1 on the mask, fading to 0 over :data:`FEATHER_MM`), the nodule's HU and its bool label
    are sampled at the host voxels of ``box`` with the nodule's mask centroid at host index ``centre_zyx``.
    """
    hs = np.asarray(host_spacing_zyx, float)
    step = BANK_SPACING_MM * nodule.scale
    c_n = np.argwhere(nodule.mask).mean(axis=0)
    c_h = np.asarray(centre_zyx, float)
    half = (np.asarray(nodule.mask.shape) / 2.0 + 1.0) * step / hs + 1.0
    lo = np.maximum(np.floor(c_h - half).astype(int), 0)
    hi = np.minimum(np.ceil(c_h + half).astype(int) + 1, np.asarray(host_shape))
    if np.any(hi <= lo):
        return None
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    d_out = ndimage.distance_transform_edt(~nodule.mask) * step
    alpha_n = np.clip(1.0 - d_out / FEATHER_MM, 0.0, 1.0).astype(np.float32)
    hu_n, mask_n = nodule.hu, nodule.mask.astype(np.float32)
    sigma = [np.sqrt(max(h**2 - step**2, 0.0)) / 2.355 / step for h in hs]
    if any(s > 0.05 for s in sigma):  # a coarser host: the scanner's partial volume
        hu_n = ndimage.gaussian_filter(hu_n, sigma, mode="nearest")
        alpha_n = ndimage.gaussian_filter(alpha_n, sigma)
        mask_n = ndimage.gaussian_filter(mask_n, sigma)
    axes = [c_n[a] + (np.arange(lo[a], hi[a]) - c_h[a]) * hs[a] / step for a in range(3)]
    pts = np.meshgrid(*axes, indexing="ij")
    alpha = ndimage.map_coordinates(alpha_n, pts, order=1, mode="constant", cval=0.0)
    hu = ndimage.map_coordinates(hu_n, pts, order=1, mode="nearest")
    m = ndimage.map_coordinates(mask_n, pts, order=1, mode="constant", cval=0.0)
    label = m >= 0.5
    if not label.any() and m.max() > 0.2:  # smaller than a host voxel: its most covered voxel
        label = m == m.max()
    return box, alpha.astype(np.float32), hu.astype(np.float32), label


def paste_real(
    hu: np.ndarray,
    label: np.ndarray,
    nodule: RealNodule,
    centre_zyx: Sequence[float] | np.ndarray,
    *,
    spacing_zyx: Sequence[float],
    label_value: int = 1,
    min_visible: float = 0.0,
    visible_below_hu: float = -300.0,
) -> int:
    """Paste ``nodule`` into ``hu`` (float HU) and ``label`` in place, its mask centroid at ``centre_zyx``.

    Args:
        min_visible: paste only if at least this share of the nodule's label voxels lies on host voxels
            below ``visible_below_hu`` (not inside a vessel or the chest wall).

    Returns:
        Label voxels written (0 when nothing was pasted).
    """
    fp = footprint(nodule, centre_zyx, hu.shape, spacing_zyx)
    if fp is None:
        return 0
    box, alpha, nhu, lab = fp
    if not lab.any():
        return 0
    host = hu[box]
    if min_visible > 0 and float(np.mean(host[lab] < visible_below_hu)) < min_visible:
        return 0
    hu[box] = host + alpha * (nhu - host)
    label[box][lab] = label_value
    return int(lab.sum())


def reader_category(texture: str, calcification: str) -> str:
    """The readers' rating as one word for tables: ``calcified`` unless Absent, else the LIDC texture."""
    calc = calcification.strip()
    if calc and calc != "Absent":
        return "calcified"
    return texture.strip() or "unrated"


def _distance_to_edge_mm(shape: Sequence[int], spacing_zyx: Sequence[float]) -> np.ndarray:
    """Per voxel, the distance (mm) from its centre to the nearest face of the image (half a voxel at the rim)."""
    out = np.full(tuple(shape), np.inf, np.float32)
    for axis, (n, sp) in enumerate(zip(shape, spacing_zyx)):
        i = np.arange(n, dtype=np.float32)
        d = (np.minimum(i, n - 1 - i) + 0.5) * float(sp)
        out = np.minimum(out, d.reshape([-1 if a == axis else 1 for a in range(len(shape))]))
    return out


def insert_real_into_array(
    hu: np.ndarray,
    lungs: np.ndarray,
    labels: np.ndarray,
    spacing_zyx: Sequence[float],
    bank: NoduleBank,
    indices: Sequence[int] | np.ndarray,
    rng: np.random.Generator,
    *,
    n: int,
    pleural_share: float = 0.3,
    tries: int = 30,
) -> tuple[np.ndarray, np.ndarray, list[RealNodule]]:
    """Insert up to ``n`` bank nodules (drawn from ``indices``, no repeats) into a whole scan.

    Args:
        hu: HU ``[z, y, x]`` on the canonical grid of spacing ``spacing_zyx``.
        lungs: lung labels (> 0 inside), same grid.
        labels: instance labels of nodules already in the scan (0 none); new ones get the next numbers.
        pleural_share: share of nodules placed touching the lung border; the rest lie free in the lung.

    Returns:
        ``(new_hu float32, new_labels, inserted nodules)`` (``center`` = host voxel index); inputs unchanged.
        Nodules with no place where most of them shows (:data:`~pipelines.phantom.nodules.MIN_VISIBLE`) are
        skipped. Orientation is random; the size is the nodule's own (no scale jitter).
    """
    from pipelines.phantom.nodules import FIELD_MARGIN_MM, MIN_VISIBLE

    out_hu = np.array(hu, dtype=np.float32)
    out_lab = np.array(labels, dtype=np.int32)
    sp = tuple(float(s) for s in spacing_zyx)
    depth = ndimage.distance_transform_edt(np.asarray(lungs) > 0, sampling=sp)
    edge = _distance_to_edge_mm(out_hu.shape, sp)
    away = ndimage.distance_transform_edt(out_lab == 0, sampling=sp) if out_lab.any() else None
    pool = list(rng.permutation(np.asarray(indices)))
    placed: list[RealNodule] = []
    next_id = int(out_lab.max()) + 1
    while pool and len(placed) < n:
        nod = draw_real(bank, int(pool.pop()), rng, scale_jitter=0.0)
        pleural = rng.random() < pleural_share
        nod.location = "juxta-pleural" if pleural else "parenchymal"
        band = max(0.6, 0.5 * max(sp))
        ok = np.abs(depth - 0.9 * nod.r_max) <= band if pleural else depth >= nod.r_max + 2.0
        ok &= edge >= nod.r_max + FIELD_MARGIN_MM  # a lung cut by the field of view has no border there
        if away is not None:
            ok &= away > nod.r_max + 5.0
        cand = np.flatnonzero(ok)
        for _ in range(tries if cand.size else 0):
            c = np.asarray(np.unravel_index(cand[rng.integers(cand.size)], out_hu.shape), float)
            c_mm = c * np.asarray(sp)
            if any(
                np.linalg.norm(c_mm - o.center * np.asarray(sp)) < nod.r_max + o.r_max + 5.0 for o in placed
            ):  # type: ignore[operator]
                continue
            if paste_real(
                out_hu, out_lab, nod, c, spacing_zyx=sp, label_value=next_id, min_visible=MIN_VISIBLE
            ):
                nod.center = c
                placed.append(nod)
                next_id += 1
                break
    return out_hu, out_lab, placed
