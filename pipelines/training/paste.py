"""Training augmentation: paste freshly designed nodules into training patches (nodule insertion on the fly).

A few dozen training scans hold only a few hundred nodules, and a network sees each of them thousands of times.
Inserting synthetic nodules into real scans is the standard way CAD studies multiply positives; done per patch,
every step shows the network new nodules of every type, size and location class in new surroundings.

The nodules are designed and rendered by the phantom generator (:func:`pipelines.phantom.nodules.design_nodule`,
:func:`~pipelines.phantom.nodules.render_nodules`: solid, part-solid, ground-glass, calcified; round, lobulated,
spiculated) and blended as :mod:`pipelines.phantom.insert` inserts into real CT (:func:`blend_nodules`:
rendered onto a smoothed copy of the patch, and only the blurred difference is added back), so the patch keeps
its own noise and texture inside the nodule. A nodule goes where it can lie: free in the lung (parenchymal), touching the lung border
(juxta-pleural), or touching a vessel (juxta-vascular), never over a labelled nodule, and only where at least
:data:`~pipelines.phantom.nodules.MIN_VISIBLE` of it shows (not inside a vessel, where its label would teach the
network to mark the vessel).

Patches are ``[1, z, y, x]`` on the isotropic network grid, intensities scaled from ``[hu_min, hu_max]`` to
``[0, 1]`` (:class:`pipelines.imaging.transforms.ScaleHUd`), labels binary, lung masks > 0 inside the lungs.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import torch
from monai.transforms import MapTransform, Randomizable
from scipy import ndimage as ndi

from pipelines.phantom.insert import blend_nodules
from pipelines.phantom.nodules import (
    LOCATIONS,
    MIN_VISIBLE,
    TYPE_P,
    TYPES,
    Nodule,
    design_nodule,
    visible_fraction,
)
from pipelines.phantom.shapes import Grid
from pipelines.realnodules.bank import NoduleBank, is_subsolid, load_bank
from pipelines.realnodules.paste import RealNodule, draw_real, paste_real

#: Probabilities of the location classes (parenchymal, juxta-pleural, juxta-vascular), as the generator's.
LOCATION_P = (0.45, 0.3, 0.25)
#: Positions tried per nodule before it is skipped: each must leave :data:`MIN_VISIBLE` of it showing.
PLACE_TRIES = 5


def _as_numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _pick(rng: np.random.Generator, mask: np.ndarray) -> np.ndarray | None:
    """A random ``(z, y, x)`` index where ``mask`` holds, or None."""
    idx = np.flatnonzero(mask)
    if idx.size == 0:
        return None
    return np.asarray(np.unravel_index(idx[rng.integers(idx.size)], mask.shape), dtype=float)


class Placeable(Protocol):
    """What placement needs of a nodule: its location class and size (mm)."""

    location: str

    @property
    def radius(self) -> float: ...

    @property
    def r_max(self) -> float: ...


def place_center(
    rng: np.random.Generator,
    nodule: Placeable,
    *,
    lung_depth: np.ndarray,
    free: np.ndarray,
    vessels: np.ndarray,
    spacing_mm: float,
) -> np.ndarray | None:
    """A centre ``(z, y, x)`` (voxel index) for ``nodule`` of its ``location`` class, or None if none fits.

    Args:
        lung_depth: distance (mm) of every voxel to the nearest non-lung voxel (0 outside the lung).
        free: voxels at least the nodule's reach away from labelled (or already pasted) nodules.
        vessels: dense voxels inside the lung (vessel walls a juxta-vascular nodule can lean on).
    """
    r = nodule.r_max
    if nodule.location == "juxta-pleural":
        return _pick(rng, free & (np.abs(lung_depth - 0.9 * r) <= max(0.6, 0.5 * spacing_mm)))
    if nodule.location == "juxta-vascular":
        for _ in range(20):
            v = _pick(rng, vessels & free)
            if v is None:
                return None
            u = rng.normal(size=3)
            u /= np.linalg.norm(u) + 1e-9
            c = v + u * (0.85 * nodule.radius + 1.0) / spacing_mm
            k = np.round(c).astype(int)
            if np.all(k >= 0) and np.all(k < lung_depth.shape) and lung_depth[tuple(k)] >= 0.7 * r:
                if free[tuple(k)]:
                    return c
        return None
    return _pick(rng, free & (lung_depth >= r + 1.0))


def paste_nodules(
    hu: np.ndarray,
    label: np.ndarray,
    lungs: np.ndarray,
    rng: np.random.Generator,
    *,
    count: int,
    spacing_mm: float = 1.0,
    d_min: float = 3.0,
    vessel_hu: float = -300.0,
    type_p: Sequence[float] = TYPE_P,
    location_p: Sequence[float] = LOCATION_P,
    bank: NoduleBank | None = None,
    bank_indices: Sequence[int] | np.ndarray | None = None,
    bank_p: Sequence[float] | np.ndarray | None = None,
    real_share: float = 0.0,
    scale_jitter: float = 0.1,
) -> tuple[np.ndarray, np.ndarray, list[Any]]:
    """Paste up to ``count`` new nodules into a ``[z, y, x]`` HU patch with binary ``label`` and ``lungs``.

    ``type_p`` and ``location_p`` are the probabilities of the nodule types
    (:data:`pipelines.phantom.nodules.TYPES`) and location classes (:data:`~pipelines.phantom.nodules.LOCATIONS`);
    both default to the generator's mix. With a ``bank``, each nodule is with probability ``real_share`` a real
    one (drawn from ``bank_indices``, default all; flipped, turned about z, scaled by ``1 +- scale_jitter``,
    pasted with its own HU by :func:`pipelines.realnodules.paste.paste_real`) instead of a generator design.

    Returns:
        ``(hu float32, label uint8, pasted nodules)``; the inputs are not modified. Nodules that find no
        place (small or lung-free patches) are skipped.
    """
    hu = np.asarray(hu, dtype=np.float32)
    lung = np.asarray(lungs) > 0
    out_label = (np.asarray(label) > 0).astype(np.uint8)
    if count <= 0 or lung.sum() < 200:
        return hu.copy(), out_label, []
    sp = (spacing_mm,) * 3
    lung_depth = ndi.distance_transform_edt(lung, sampling=sp)
    vessels = lung & (hu > vessel_hu) & (lung_depth > 2.0)
    # distance (mm) to the labelled nodules; pasted ones keep apart by centre distance
    to_label = ndi.distance_transform_edt(out_label == 0, sampling=sp) if out_label.any() else None
    grid = Grid(hu.shape, sp, (0.0, 0.0, 0.0))  # type: ignore[arg-type]
    placed: list[Nodule] = []
    reals: list[RealNodule] = []
    hu = hu.copy()
    pool = np.arange(len(bank)) if bank is not None and bank_indices is None else np.asarray(bank_indices)
    for _ in range(count):
        if bank is not None and len(pool) and rng.random() < real_share:
            real = _paste_one_real(
                hu,
                out_label,
                rng,
                bank,
                int(rng.choice(pool) if bank_p is None else rng.choice(pool, p=bank_p)),
                location_p=location_p,
                to_label=to_label,
                lung_depth=lung_depth,
                vessels=vessels,
                spacing_mm=spacing_mm,
                others=[*placed, *reals],
                scale_jitter=scale_jitter,
            )
            if real is not None:
                reals.append(real)
            continue
        nodule = design_nodule(rng, d_min=d_min, type_p=tuple(type_p))
        nodule.location = str(rng.choice(LOCATIONS, p=list(location_p)))
        reach = _reach(nodule)
        free = to_label > reach + 3.0 if to_label is not None else np.ones(hu.shape, bool)
        for _ in range(PLACE_TRIES):  # a place where most of the nodule shows (not inside a vessel)
            centre = place_center(
                rng, nodule, lung_depth=lung_depth, free=free, vessels=vessels, spacing_mm=spacing_mm
            )
            if centre is None:
                break
            nodule.center = grid.index_to_world(centre[None])[0]
            if visible_fraction(nodule, hu, grid) >= MIN_VISIBLE:
                break
            centre = None
        if centre is None:
            continue
        others: list[Any] = [*placed, *reals]
        if any(np.linalg.norm(nodule.center - o.center) <= reach + _reach(o) + 3.0 for o in others):
            continue
        placed.append(nodule)
    if not placed:
        return hu, out_label, list(reals)
    new_hu, new = blend_nodules(hu, grid, placed, rng)
    out_label[new > 0] = 1
    return new_hu, out_label, [*reals, *placed]


def _paste_one_real(
    hu: np.ndarray,
    label: np.ndarray,
    rng: np.random.Generator,
    bank: NoduleBank,
    index: int,
    *,
    location_p: Sequence[float],
    to_label: np.ndarray | None,
    lung_depth: np.ndarray,
    vessels: np.ndarray,
    spacing_mm: float,
    others: Sequence[Any],
    scale_jitter: float,
) -> RealNodule | None:
    """Place and paste one bank nodule into ``hu``/``label`` in place; the nodule, or None if it found no place."""
    nodule = draw_real(bank, index, rng, scale_jitter=scale_jitter)
    nodule.location = str(rng.choice(LOCATIONS, p=list(location_p)))
    free = to_label > nodule.r_max + 3.0 if to_label is not None else np.ones(hu.shape, bool)
    for _ in range(PLACE_TRIES):
        centre = place_center(
            rng, nodule, lung_depth=lung_depth, free=free, vessels=vessels, spacing_mm=spacing_mm
        )
        if centre is None:
            return None
        world = centre[::-1] * spacing_mm
        if any(np.linalg.norm(world - o.center) <= nodule.r_max + _reach(o) + 3.0 for o in others):
            continue
        if paste_real(hu, label, nodule, centre, spacing_zyx=(spacing_mm,) * 3, min_visible=MIN_VISIBLE):
            nodule.center = world  # world (x, y, z) mm of the patch grid, as the generator's nodules
            return nodule
    return None


def _probabilities(name: str, values: Sequence[float], names: Sequence[str]) -> tuple[float, ...]:
    """``values`` as a probability vector over ``names``; a clear error naming ``name`` otherwise."""
    try:
        p = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be {len(names)} numbers for {tuple(names)}, not {values!r}") from None
    if len(p) != len(names) or any(not np.isfinite(v) or v < 0 for v in p) or abs(sum(p) - 1.0) > 1e-6:
        raise ValueError(
            f"{name} must be {len(names)} non-negative numbers for {tuple(names)} summing to 1, not {values!r}"
        )
    return p


def _reach(nodule: Any) -> float:
    """How far (mm) a nodule's body and spicules can reach from its centre."""
    return float(nodule.r_max) * (2.2 if len(getattr(nodule, "spicules", ())) else 1.0)


#: Banks read by the transform, by path (each DataLoader worker reads a bank once).
_BANKS: dict[str, NoduleBank] = {}


def _draw_weights(
    bank: NoduleBank | None, indices: np.ndarray | None, subsolid_weight: float
) -> np.ndarray | None:
    """Draw probabilities over ``indices`` with subsolid nodules weighted ``subsolid_weight``; None for uniform."""
    if not np.isfinite(subsolid_weight) or subsolid_weight <= 0:
        raise ValueError(f"subsolid_weight must be a positive number, not {subsolid_weight}")
    if bank is None or indices is None or subsolid_weight == 1.0:
        return None
    w = np.asarray(
        [subsolid_weight if is_subsolid(str(bank.table["texture"][i])) else 1.0 for i in indices], float
    )
    return w / w.sum()


def _bank_for(bank: str | NoduleBank | None) -> NoduleBank | None:
    if bank is None or isinstance(bank, NoduleBank):
        return bank
    key = str(bank)
    if key not in _BANKS:
        _BANKS[key] = load_bank(key)
    return _BANKS[key]


class RandPasteNodulesd(Randomizable, MapTransform):
    """With probability ``prob``, paste 1..``max_count`` new nodules into a training patch (see module doc).

    Args:
        keys: ``(image, label, lungs)`` keys, in that order; ``image`` scaled to [0, 1] from
            ``[hu_min, hu_max]``, all ``[1, z, y, x]``.
        prob: chance that a patch gets nodules.
        max_count: most nodules per patch.
        spacing_mm: isotropic voxel size of the patch.
        type_p: probabilities of the nodule types (``solid``, ``part-solid``, ``ground-glass``, ``calcified``);
            None for the generator's mix. Raising the kinds a model misses shows it more of them.
        location_p: probabilities of the location classes (``parenchymal``, ``juxta-pleural``,
            ``juxta-vascular``); None for the generator's mix.
        bank: real nodules (:class:`pipelines.realnodules.bank.NoduleBank` or the path of its ``.npz``); None for
            generator nodules only.
        bank_split: which of the bank's splits to draw from (``train``; never the validation split).
        real_share: chance that a pasted nodule is a real one from the bank.
        scale_jitter: real nodules are scaled by a factor in ``1 +- scale_jitter``.
        subsolid_weight: how much more often a real nodule the readers rated subsolid (LIDC texture Part Solid
            or Non-Solid, :func:`pipelines.realnodules.bank.is_subsolid`) is drawn than a solid one; 1 draws
            them uniformly (about one in eight is subsolid).
    """

    def __init__(
        self,
        keys: Sequence[str] = ("image", "label", "lungs"),
        *,
        prob: float = 0.5,
        max_count: int = 2,
        hu_min: float = -1000.0,
        hu_max: float = 500.0,
        spacing_mm: float = 1.0,
        type_p: Sequence[float] | None = None,
        location_p: Sequence[float] | None = None,
        bank: str | NoduleBank | None = None,
        bank_split: str = "train",
        real_share: float = 0.0,
        scale_jitter: float = 0.1,
        subsolid_weight: float = 1.0,
    ) -> None:
        MapTransform.__init__(self, keys)
        if not 0.0 <= float(real_share) <= 1.0 or not 0.0 <= float(scale_jitter) < 0.5:
            raise ValueError(
                f"real_share must lie in [0, 1] and scale_jitter in [0, 0.5), not {real_share}, {scale_jitter}"
            )
        self.bank = _bank_for(bank)
        self.bank_indices = self.bank.indices(bank_split) if self.bank is not None else None
        if self.bank is not None and not len(self.bank_indices):  # type: ignore[arg-type]
            raise ValueError(f"the nodule bank has no nodules in split {bank_split!r}")
        self.real_share, self.scale_jitter = float(real_share), float(scale_jitter)
        self.bank_p = _draw_weights(self.bank, self.bank_indices, float(subsolid_weight))
        if len(self.keys) != 3:
            raise ValueError(f"keys must be (image, label, lungs), not {keys!r}")
        self.type_p = _probabilities("type_p", TYPE_P if type_p is None else type_p, TYPES)
        self.location_p = _probabilities(
            "location_p", LOCATION_P if location_p is None else location_p, LOCATIONS
        )
        self.prob, self.max_count = float(prob), int(max_count)
        self.hu_min, self.hu_max, self.spacing_mm = float(hu_min), float(hu_max), float(spacing_mm)
        self._do = False
        self._seed = 0

    def randomize(self, data: Any = None) -> None:
        self._do = self.R.rand() < self.prob
        self._seed = int(self.R.randint(0, 2**31 - 1))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize()
        if not self._do:
            return d
        ik, lk, mk = self.keys
        image, label = d[ik], d[lk]
        scale = self.hu_max - self.hu_min
        hu = _as_numpy(image)[0].astype(np.float32) * scale + self.hu_min
        rng = np.random.default_rng(self._seed)
        count = int(rng.integers(1, self.max_count + 1))
        new_hu, new_label, placed = paste_nodules(
            hu,
            _as_numpy(label)[0],
            _as_numpy(d[mk])[0],
            rng,
            count=count,
            spacing_mm=self.spacing_mm,
            type_p=self.type_p,
            location_p=self.location_p,
            bank=self.bank,
            bank_indices=self.bank_indices,
            bank_p=self.bank_p,
            real_share=self.real_share,
            scale_jitter=self.scale_jitter,
        )
        if not placed:
            return d
        img = np.clip((new_hu - self.hu_min) / scale, 0.0, 1.0).astype(np.float32)[None]
        lab = new_label[None].astype(_as_numpy(label).dtype)
        # back on the patch's own device (the GPU profile runs the random transforms there)
        d[ik] = torch.as_tensor(img, device=image.device) if isinstance(image, torch.Tensor) else img
        d[lk] = torch.as_tensor(lab, device=label.device) if isinstance(label, torch.Tensor) else lab
        return d
