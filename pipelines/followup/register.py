"""Register a prior chest CT to the current one: lungs-driven rigid, then affine, then a local shift per nodule.

Both scans stay in their own geometry (SimpleITK images: LPS world mm, any orientation on disk; lung masks on
the same grid as their scan, any label > 0 is lung). The result maps a point of the **current** scan (LPS world
mm) to the same anatomy in the **prior** scan (LPS world mm), and back.

Stages (fixed image = current, moving image = prior; HU clamped to [-1000, 400]):

1. **Rigid** (Euler, 6 parameters), started by aligning the centres of mass of the two lung masks; both scans
   resampled to ``global_spacing_mm`` (2.5 mm) for speed; Mattes mutual information (robust to the dose and
   noise of two screening scans) sampled inside the current lungs dilated by ``mask_dilation_mm``; two
   resolution levels.
2. **Affine** (12 parameters: breath-hold differences scale and shear the lungs), started from the rigid result.
3. **Local refinement**: for each current nodule, a translation in a ``box_mm`` cube (40 mm) around it at the
   scans' own resolution, normalised correlation, composed after the affine map; a shift larger than
   ``max_local_shift_mm`` (or a failure) falls back to the affine map and says so in ``notes``.

Iterations are bounded (:data:`RIGID_ITERATIONS` ...) so the whole registration of a screening CT takes seconds
on two CPU cores.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

__all__ = [
    "AffineMap",
    "Registration",
    "RegistrationError",
    "refine_local",
    "register_global",
    "register_prior",
]

HU_RANGE = (-1000.0, 400.0)
RIGID_ITERATIONS = 150
AFFINE_ITERATIONS = 100
LOCAL_ITERATIONS = 60
_SEED = 20240607


class RegistrationError(ValueError):
    """The prior could not be registered to the current scan (the message says why)."""


@dataclass(frozen=True)
class AffineMap:
    """``y = matrix @ x + offset`` between two LPS world frames (mm).

    Attributes:
        matrix: ``[3, 3]``.
        offset: ``[3]`` mm.
    """

    matrix: np.ndarray
    offset: np.ndarray

    def apply(self, points_lps_mm: np.ndarray) -> np.ndarray:
        """Map ``[3]`` or ``[n, 3]`` LPS points (mm); same shape back."""
        p = np.asarray(points_lps_mm, float)
        return p @ self.matrix.T + self.offset

    def inverse(self) -> AffineMap:
        inv = np.linalg.inv(self.matrix)
        return AffineMap(matrix=inv, offset=-inv @ self.offset)

    def then_shift_first(self, shift_mm: np.ndarray) -> AffineMap:
        """The map ``x -> self(x + shift)`` (a local translation applied before this map)."""
        return AffineMap(matrix=self.matrix, offset=self.matrix @ np.asarray(shift_mm, float) + self.offset)

    @staticmethod
    def identity() -> AffineMap:
        return AffineMap(matrix=np.eye(3), offset=np.zeros(3))

    @staticmethod
    def from_sitk(transform: sitk.Euler3DTransform | sitk.AffineTransform) -> AffineMap:
        """From a SimpleITK matrix-offset transform (Euler3D, Affine): ``A (x - c) + c + t``."""
        a = np.array(list(transform.GetMatrix()), dtype=np.float64).reshape(3, 3)
        c = np.array(list(transform.GetCenter()), dtype=np.float64)
        tr = np.array(list(transform.GetTranslation()), dtype=np.float64)
        return AffineMap(matrix=a, offset=c + tr - a @ c)

    def to_sitk(self) -> sitk.AffineTransform:
        t = sitk.AffineTransform(3)
        t.SetMatrix([float(v) for v in self.matrix.ravel()])
        t.SetTranslation([float(v) for v in self.offset])
        return t


@dataclass(frozen=True)
class Registration:
    """Current-to-prior mapping: one global affine map and one refined map per current nodule.

    Attributes:
        global_map: current LPS mm -> prior LPS mm.
        local_maps: one per nodule centre given to :func:`register_prior` (the global map where refinement was
            not possible).
        local_centers_lps_mm: ``[k, 3]`` the nodule centres (current scan, LPS mm) the local maps belong to.
        local_shift_mm: how far each local map moves its centre from the global map, mm.
        notes: what fell back or looked doubtful, one line each.
    """

    global_map: AffineMap
    local_maps: tuple[AffineMap, ...] = ()
    local_centers_lps_mm: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    local_shift_mm: tuple[float, ...] = ()
    notes: tuple[str, ...] = ()

    def current_to_prior(self, points_lps_mm: np.ndarray, *, nodule_index: int | None = None) -> np.ndarray:
        """Map current-scan points (LPS mm) into the prior scan, by nodule ``nodule_index``'s local map if given."""
        chosen = self.global_map if nodule_index is None else self.local_maps[nodule_index]
        return chosen.apply(points_lps_mm)

    def prior_to_current(self, points_lps_mm: np.ndarray, *, nodule_index: int | None = None) -> np.ndarray:
        """Map prior-scan points (LPS mm) into the current scan (the inverse of :meth:`current_to_prior`)."""
        chosen = self.global_map if nodule_index is None else self.local_maps[nodule_index]
        return chosen.inverse().apply(points_lps_mm)


def _clamped(image: sitk.Image) -> sitk.Image:
    return sitk.Clamp(sitk.Cast(image, sitk.sitkFloat32), sitk.sitkFloat32, HU_RANGE[0], HU_RANGE[1])


def _resampled(image: sitk.Image, spacing_mm: float, interpolator: int, default: float) -> sitk.Image:
    """``image`` on a grid of ``spacing_mm`` covering the same extent, same direction."""
    size = [max(int(round(n * s / spacing_mm)), 1) for n, s in zip(image.GetSize(), image.GetSpacing())]
    return sitk.Resample(
        image,
        size,
        sitk.Transform(),
        interpolator,
        image.GetOrigin(),
        (spacing_mm,) * 3,
        image.GetDirection(),
        default,
        image.GetPixelID(),
    )


def _binary(mask: sitk.Image, reference: sitk.Image, name: str) -> sitk.Image:
    if mask.GetSize() != reference.GetSize():
        raise RegistrationError(
            f"{name} lung mask size {mask.GetSize()} differs from its scan {reference.GetSize()}"
        )
    binary = sitk.Cast(mask > 0, sitk.sitkUInt8)
    binary.CopyInformation(reference)
    if not np.any(sitk.GetArrayViewFromImage(binary)):
        raise RegistrationError(f"{name} lung mask is empty: cannot register")
    return binary


def _centroid(mask: sitk.Image) -> np.ndarray:
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(mask)
    return np.asarray(stats.GetCentroid(1), float)


def _method(
    iterations: int, mask: sitk.Image | None, *, threads: int | None, sampling: float
) -> sitk.ImageRegistrationMethod:
    r = sitk.ImageRegistrationMethod()
    r.SetMetricAsMattesMutualInformation(numberOfHistogramBins=40)
    r.SetMetricSamplingStrategy(r.RANDOM)
    r.SetMetricSamplingPercentage(sampling, _SEED)
    if mask is not None:
        r.SetMetricFixedMask(mask)
    r.SetInterpolator(sitk.sitkLinear)
    r.SetOptimizerAsRegularStepGradientDescent(
        learningRate=2.0, minStep=1e-3, numberOfIterations=iterations, relaxationFactor=0.6
    )
    r.SetOptimizerScalesFromPhysicalShift()
    r.SetShrinkFactorsPerLevel([2, 1])
    r.SetSmoothingSigmasPerLevel([2.0, 0.0])
    r.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    if threads:
        r.SetNumberOfThreads(threads)
    return r


def register_global(
    current: sitk.Image,
    current_lungs: sitk.Image,
    prior: sitk.Image,
    prior_lungs: sitk.Image,
    *,
    global_spacing_mm: float = 2.5,
    mask_dilation_mm: float = 10.0,
    affine: bool = True,
    threads: int | None = None,
) -> AffineMap:
    """Rigid then affine registration of the prior to the current scan (module docstring, stages 1-2).

    Args:
        current, prior: the two CT scans (HU), each in its own geometry (LPS world mm).
        current_lungs, prior_lungs: lung masks on the grid of their scan (> 0 is lung).
        global_spacing_mm: isotropic grid (mm) both scans are resampled to for these stages.
        mask_dilation_mm: the current lungs are dilated by this (mm) to make the metric's sampling mask.
        affine: run the affine stage after the rigid one.
        threads: SimpleITK threads (``None``: its default).

    Returns:
        the map current LPS mm -> prior LPS mm.

    Raises:
        RegistrationError: an empty lung mask, a mask not on its scan's grid, or an ITK failure (one line).
    """
    cur_mask = _binary(current_lungs, current, "current")
    pri_mask = _binary(prior_lungs, prior, "prior")
    fixed = _resampled(_clamped(current), global_spacing_mm, sitk.sitkLinear, HU_RANGE[0])
    moving = _resampled(_clamped(prior), global_spacing_mm, sitk.sitkLinear, HU_RANGE[0])
    mask = _resampled(cur_mask, global_spacing_mm, sitk.sitkNearestNeighbor, 0)
    radius = max(int(round(mask_dilation_mm / global_spacing_mm)), 1)
    mask = sitk.BinaryDilate(mask, [radius] * 3)
    c_cur, c_pri = _centroid(cur_mask), _centroid(pri_mask)
    rigid = sitk.Euler3DTransform()
    rigid.SetCenter([float(v) for v in c_cur])
    rigid.SetTranslation([float(v) for v in c_pri - c_cur])
    try:
        r = _method(RIGID_ITERATIONS, mask, threads=threads, sampling=0.25)
        r.SetInitialTransform(rigid, inPlace=True)
        r.Execute(fixed, moving)
        result: sitk.Euler3DTransform | sitk.AffineTransform = rigid
        if affine:
            aff = sitk.AffineTransform(3)
            aff.SetCenter(rigid.GetCenter())
            aff.SetMatrix(rigid.GetMatrix())
            aff.SetTranslation(rigid.GetTranslation())
            r = _method(AFFINE_ITERATIONS, mask, threads=threads, sampling=0.25)
            r.SetInitialTransform(aff, inPlace=True)
            r.Execute(fixed, moving)
            result = aff
    except RuntimeError as err:
        raise RegistrationError(f"registration failed: {str(err).strip().splitlines()[-1]}") from None
    return AffineMap.from_sitk(result)


def _crop(image: sitk.Image, center_lps_mm: np.ndarray, half_mm: float) -> sitk.Image | None:
    """The part of ``image`` inside an axis-aligned (LPS) cube around a point, or ``None`` if it misses."""
    corners = [
        center_lps_mm + half_mm * np.array([i, j, k]) for i in (-1, 1) for j in (-1, 1) for k in (-1, 1)
    ]
    index = np.array([image.TransformPhysicalPointToContinuousIndex([float(v) for v in c]) for c in corners])
    lo = np.maximum(np.floor(index.min(axis=0)).astype(int), 0)
    hi = np.minimum(np.ceil(index.max(axis=0)).astype(int) + 1, np.asarray(image.GetSize()))
    if np.any(hi - lo < 4):
        return None
    return sitk.RegionOfInterest(image, [int(v) for v in hi - lo], [int(v) for v in lo])


def _extent_mm(image: sitk.Image) -> list[float]:
    return [n * sp for n, sp in zip(image.GetSize(), image.GetSpacing())]


def refine_local(
    current: sitk.Image,
    prior: sitk.Image,
    global_map: AffineMap,
    center_lps_mm: np.ndarray,
    *,
    box_mm: float = 40.0,
    max_local_shift_mm: float = 10.0,
    threads: int | None = None,
) -> tuple[AffineMap, str]:
    """A translation refining ``global_map`` in a ``box_mm`` cube around one current point (stage 3).

    Args:
        current, prior: the scans (HU, LPS world mm, own geometry).
        global_map: current LPS -> prior LPS from :func:`register_global`.
        center_lps_mm: ``[3]`` the nodule centre in the current scan, LPS mm.
        box_mm: edge of the cube (mm) whose voxels drive the refinement.
        max_local_shift_mm: a larger shift is refused (the global map is kept).
        threads: SimpleITK threads.

    Returns:
        ``(map, note)``: the refined map (``x -> global(x + shift)``) and ``""``, or the global map and a note
        saying why it was kept.
    """
    center = np.asarray(center_lps_mm, float)
    fixed = _crop(current, center, box_mm / 2)
    moving = _crop(prior, global_map.apply(center), box_mm / 2 + max_local_shift_mm + 10.0)
    if (
        fixed is None
        or moving is None
        or min(_extent_mm(fixed)) < box_mm / 2
        or min(_extent_mm(moving)) < box_mm
    ):
        return global_map, "box not inside both scans: global map kept"
    shift = sitk.TranslationTransform(3)
    r = sitk.ImageRegistrationMethod()
    r.SetMetricAsCorrelation()
    r.SetInterpolator(sitk.sitkLinear)
    r.SetOptimizerAsRegularStepGradientDescent(
        learningRate=1.0, minStep=1e-2, numberOfIterations=LOCAL_ITERATIONS, relaxationFactor=0.6
    )
    r.SetOptimizerScalesFromPhysicalShift()
    r.SetMovingInitialTransform(global_map.to_sitk())
    r.SetInitialTransform(shift, inPlace=True)
    if threads:
        r.SetNumberOfThreads(threads)
    try:
        r.Execute(_clamped(fixed), _clamped(moving))
    except RuntimeError as err:
        return global_map, f"local refinement failed ({str(err).strip().splitlines()[-1]}): global map kept"
    offset = np.asarray(shift.GetOffset(), float)
    if not np.all(np.isfinite(offset)) or float(np.linalg.norm(offset)) > max_local_shift_mm:
        return (
            global_map,
            f"local shift {np.linalg.norm(offset):.1f} mm > {max_local_shift_mm:g} mm: global map kept",
        )
    return global_map.then_shift_first(offset), ""


def register_prior(
    current: sitk.Image,
    current_lungs: sitk.Image,
    prior: sitk.Image,
    prior_lungs: sitk.Image,
    *,
    nodule_centers_lps_mm: Sequence[Sequence[float]] | np.ndarray = (),
    global_spacing_mm: float = 2.5,
    box_mm: float = 40.0,
    max_local_shift_mm: float = 10.0,
    threads: int | None = None,
) -> Registration:
    """Register the prior scan to the current one: global affine map, then one local map per current nodule.

    Args:
        current, current_lungs, prior, prior_lungs: as in :func:`register_global`.
        nodule_centers_lps_mm: ``[k, 3]`` current nodule centres (LPS mm) to refine locally around.
        global_spacing_mm, box_mm, max_local_shift_mm, threads: see :func:`register_global` and
            :func:`refine_local`.

    Returns:
        a :class:`Registration` (maps current LPS mm <-> prior LPS mm).

    Raises:
        RegistrationError: the global stages failed (see :func:`register_global`).
    """
    global_map = register_global(
        current, current_lungs, prior, prior_lungs, global_spacing_mm=global_spacing_mm, threads=threads
    )
    centers = np.asarray(nodule_centers_lps_mm, float).reshape(-1, 3)
    maps, shifts, notes = [], [], []
    for index, center in enumerate(centers):
        local, note = refine_local(
            current,
            prior,
            global_map,
            center,
            box_mm=box_mm,
            max_local_shift_mm=max_local_shift_mm,
            threads=threads,
        )
        maps.append(local)
        shifts.append(float(np.linalg.norm(local.apply(center) - global_map.apply(center))))
        if note:
            notes.append(f"nodule {index + 1}: {note}")
    return Registration(
        global_map=global_map,
        local_maps=tuple(maps),
        local_centers_lps_mm=centers,
        local_shift_mm=tuple(shifts),
        notes=tuple(notes),
    )
