"""Is a scan assessable for lung screening? The rule behind Lung-RADS 0 ("incomplete") and a skipped network.

A scan that was not (or could not be) read completely must never receive a reassuring category. This module
decides, from the scan's geometry and the lung mask, whether the case is *assessable*; when it is not, the case
is still written with status ``ok``, but its Lung-RADS category is **0 (incomplete)** with the reasons, never 1
or 2 (Lung-RADS v2022: category 0 = "part or all of lungs cannot be evaluated"). Each nodule of such a case is
category 0 as well; its own size category is kept as ``size_category``.

The rule. A case is **not assessable** when any of these holds (thresholds in :class:`Limits`):

1. **thin slab / localizer**: the volume spans less than ``min_extent_mm = 30`` mm along any axis (e.g. a
   2-slice stack of 1 mm slices: 2 mm; a localizer series that reached screening). The network is **not run**
   on such a volume (:func:`screenable`): a 3D detector has no context there, and the end-on vessels of a
   2-slice stack look like nodules. A series whose DICOM ImageType says LOCALIZER or SCOUT is not assessable
   either (those are normally skipped when the input folder is read).
2. **slices too thick**: the coarsest voxel spacing (in practice the slice spacing), or the DICOM
   SliceThickness when it is larger, exceeds ``max_slice_mm = 3.0`` mm: the network is validated on scans of
   0.6-2.5 mm slices (its small training phantoms reach 3.5 mm) and small nodules vanish in thick slices.
   Above ``warn_slice_mm = 2.5`` mm the case stays assessable with a warning (lung screening protocols
   reconstruct at 2.5 mm or thinner, 1 mm preferred).
3. **no lungs, or lungs mostly outside the field of view**: the lung mask holds less than
   ``min_lung_volume_ml = 500`` mL (adult lungs at inspiration hold 3-7 L, the smallest synthetic demo lungs
   about 1.1 L; an abdominal CT with the lung bases in its top slices holds a few hundred mL at most).
4. **lung coverage too short**: the lung mask spans less than ``min_lung_z_mm = 100`` mm from its first to its
   last axial slice (adult lungs span 200-300 mm from apex to base).
5. **lungs cut off at the top or bottom of the scan**: the first or last axial slice of the volume holds at
   least ``max_end_fraction = 0.25`` of the largest axial lung cross-section: the apex or the base continues
   beyond the scan. (A scan that ends in the narrow apex or in the thin posterior recesses of the base holds a
   few percent there.)
6. **lungs cut off at the sides**: the lung mask touches the in-plane border of the image (its first or last row
   or column) on at least ``max_side_fraction = 0.25`` of the slices that hold lung (a reconstruction field of
   view or a crop narrower than the chest).

Everything is measured on the canonical grid (``[z, y, x]``, z toward Superior, spacing in mm in array-axis
order); lung labels are 1 right, 2 left (0 background). Decision: not assessable is Lung-RADS 0 with status
``ok`` and the reasons in ``result.json`` (``assessment``), ``nodules.json``, the summary's warnings and the
report, rather than a failure: the masks and any nodules found are still worth a look, and Lung-RADS has a
category for exactly this.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Assessment", "Limits", "assess", "assess_case", "screenable"]

_AXES = ("z (superior-inferior)", "y (anterior-posterior)", "x (left-right)")
_TAG_SLICE_THICKNESS = "0018|0050"
_TAG_IMAGE_TYPE = "0008|0008"
_TOLERANCE_MM = 1e-3  # spacing read back from headers: 3.0000001 mm is 3 mm


@dataclass(frozen=True)
class Limits:
    """Thresholds of the assessability rule (mm, mL, fractions); see the module docstring for why."""

    min_extent_mm: float = 30.0
    max_slice_mm: float = 3.0
    warn_slice_mm: float = 2.5
    min_lung_volume_ml: float = 500.0
    min_lung_z_mm: float = 100.0
    max_end_fraction: float = 0.25
    max_side_fraction: float = 0.25


@dataclass(frozen=True)
class Assessment:
    """Outcome of :func:`assess`.

    Attributes:
        assessable: False when any rule fired: the case is Lung-RADS 0.
        screened: False when the volume is too thin for the network to run at all (rule 1).
        reasons: why it is not assessable (empty when it is).
        warnings: what is outside the recommended protocol without making it unassessable.
        measures: the numbers the rules were applied to (``slice_mm``, ``min_extent_mm``, ``lung_volume_ml``,
            ``lung_z_mm``, ``top_fraction``, ``bottom_fraction``, ``side_fraction``), rounded for the record.
    """

    assessable: bool
    screened: bool
    reasons: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    measures: dict[str, Any] = field(default_factory=dict)

    @property
    def reason(self) -> str:
        """All reasons in one line (empty when assessable)."""
        return "; ".join(self.reasons)

    def to_dict(self) -> dict[str, Any]:
        return {
            "assessable": self.assessable,
            "screened": self.screened,
            "reasons": list(self.reasons),
            "warnings": list(self.warnings),
            "measures": dict(self.measures),
        }


def _scan_rules(
    spacing_zyx: Sequence[float],
    shape_zyx: Sequence[int],
    limits: Limits,
    slice_thickness_mm: float | None,
    image_type: str,
) -> tuple[list[str], list[str], dict[str, Any], bool]:
    """Rules 1 and 2: ``(reasons, warnings, measures, screened)`` from the geometry alone."""
    spacing = np.asarray(spacing_zyx, float)
    extent = spacing * np.asarray(shape_zyx, float)
    thin, coarse = int(np.argmin(extent)), int(np.argmax(spacing))
    slice_mm = float(spacing[coarse])
    what = f"voxel spacing {slice_mm:.2f} mm along {_AXES[coarse]}"
    if slice_thickness_mm is not None and math.isfinite(slice_thickness_mm) and slice_thickness_mm > slice_mm:
        slice_mm = float(slice_thickness_mm)
        what = f"slice thickness {slice_mm:.2f} mm (DICOM SliceThickness)"
    reasons, warnings = [], []
    screened = float(extent[thin]) >= limits.min_extent_mm - _TOLERANCE_MM
    if not screened:
        reasons.append(
            f"the volume spans only {extent[thin]:.1f} mm ({int(shape_zyx[thin])} voxels) along {_AXES[thin]}, "
            f"less than {limits.min_extent_mm:g} mm: a localizer or partial stack, not screened"
        )
    if "LOCALIZER" in image_type.upper() or "SCOUT" in image_type.upper():
        reasons.append("the series is a localizer (DICOM ImageType), not a chest CT volume")
    if slice_mm > limits.max_slice_mm + _TOLERANCE_MM:
        reasons.append(f"{what}: coarser than the {limits.max_slice_mm:g} mm the model supports")
    elif slice_mm > limits.warn_slice_mm + _TOLERANCE_MM:
        warnings.append(
            f"{what}: coarser than the {limits.warn_slice_mm:g} mm of lung screening protocols; "
            "small nodules may be missed"
        )
    measures = {"slice_mm": round(slice_mm, 3), "min_extent_mm": round(float(extent[thin]), 1)}
    return reasons, warnings, measures, screened


def _lung_rules(
    lung_labels_zyx: np.ndarray | None, spacing_zyx: Sequence[float], limits: Limits
) -> tuple[list[str], dict[str, Any]]:
    """Rules 3-5: ``(reasons, measures)`` from the lung mask."""
    if lung_labels_zyx is None or lung_labels_zyx.size == 0:
        return ["no lung mask"], {}
    area = np.count_nonzero(np.asarray(lung_labels_zyx).reshape(lung_labels_zyx.shape[0], -1), axis=1)
    voxel_ml = float(np.prod(np.asarray(spacing_zyx, float))) / 1000.0
    volume_ml = float(area.sum()) * voxel_ml
    if area.max(initial=0) == 0:
        return ["no lung tissue found in the scan"], {"lung_volume_ml": 0.0, "lung_z_mm": 0.0}
    rows = np.flatnonzero(area)
    lung_z_mm = float(rows[-1] - rows[0] + 1) * float(spacing_zyx[0])
    largest = float(area.max())
    bottom, top = float(area[0]) / largest, float(area[-1]) / largest  # z grows toward Superior
    lungs = np.asarray(lung_labels_zyx) > 0
    edges = (lungs[:, 0, :], lungs[:, -1, :], lungs[:, :, 0], lungs[:, :, -1])
    edge = np.any(np.stack([e.any(axis=1) for e in edges]), axis=0)
    side = float(np.mean(edge[rows]))
    measures = {
        "lung_volume_ml": round(volume_ml, 1),
        "lung_z_mm": round(lung_z_mm, 1),
        "top_fraction": round(top, 3),
        "bottom_fraction": round(bottom, 3),
        "side_fraction": round(side, 3),
    }
    reasons = []
    if volume_ml < limits.min_lung_volume_ml:
        reasons.append(
            f"lungs absent or mostly outside the field of view: {volume_ml:.0f} mL of lung "
            f"(less than {limits.min_lung_volume_ml:g} mL)"
        )
    if lung_z_mm < limits.min_lung_z_mm:
        reasons.append(
            f"lung coverage too short: the lungs span {lung_z_mm:.0f} mm in z (less than {limits.min_lung_z_mm:g} mm)"
        )
    for name, fraction in (("apices", top), ("bases", bottom)):
        if fraction >= limits.max_end_fraction:
            end = "top" if name == "apices" else "bottom"
            reasons.append(
                f"lung {name} cut off: the {end} slice holds {fraction:.0%} of the largest axial lung area "
                f"({limits.max_end_fraction:.0%} or more)"
            )
    if side >= limits.max_side_fraction:
        reasons.append(
            f"lungs cut off at the sides: they touch the edge of the image on {side:.0%} of their slices "
            f"({limits.max_side_fraction:.0%} or more)"
        )
    return reasons, measures


def assess(
    *,
    spacing_zyx: Sequence[float],
    shape_zyx: Sequence[int],
    lung_labels_zyx: np.ndarray | None,
    slice_thickness_mm: float | None = None,
    image_type: str = "",
    limits: Limits | None = None,
) -> Assessment:
    """Apply the assessability rule of this module to one scan.

    Args:
        spacing_zyx: voxel spacing of the canonical grid, mm, array-axis order.
        shape_zyx: its shape ``[z, y, x]``.
        lung_labels_zyx: lung labels on that grid (0 background), or None when there is no mask.
        slice_thickness_mm: the DICOM SliceThickness when known (used when larger than the spacing).
        image_type: the DICOM ImageType, when known.
        limits: thresholds; :class:`Limits` defaults when None.

    Returns:
        The :class:`Assessment`; lung rules are skipped (their reasons would only repeat) when the volume is too
        thin to be screened.
    """
    limits = limits or Limits()
    reasons, warnings, measures, screened = _scan_rules(
        spacing_zyx, shape_zyx, limits, slice_thickness_mm, image_type
    )
    if screened:
        lung_reasons, lung_measures = _lung_rules(lung_labels_zyx, spacing_zyx, limits)
        reasons += lung_reasons
        measures.update(lung_measures)
    return Assessment(not reasons, screened, tuple(reasons), tuple(warnings), measures)


def screenable(data: dict[str, Any], *, limits: Limits | None = None) -> bool:
    """Whether the network should run on a preprocessed case (rule 1 of the module docstring).

    ``data`` is the preprocessing output: ``data["geometry"].canonical`` gives the canonical grid.
    """
    canonical = data["geometry"].canonical
    spacing = tuple(float(s) for s in canonical.spacing[:3])[::-1]
    shape = tuple(int(s) for s in canonical.size[:3])[::-1]
    extent = min(s * n for s, n in zip(spacing, shape, strict=True))
    return extent >= (limits or Limits()).min_extent_mm - _TOLERANCE_MM


def _dicom_header(files: Sequence[str]) -> tuple[float | None, str]:
    """``(SliceThickness mm or None, ImageType or "")`` of a DICOM series' first file; nothing when unreadable."""
    if not files:
        return None, ""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(files[0]))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None, ""
    thickness = None
    if reader.HasMetaDataKey(_TAG_SLICE_THICKNESS):
        try:
            thickness = float(reader.GetMetaData(_TAG_SLICE_THICKNESS).strip())
        except ValueError:
            thickness = None
    image_type = reader.GetMetaData(_TAG_IMAGE_TYPE) if reader.HasMetaDataKey(_TAG_IMAGE_TYPE) else ""
    return (thickness if thickness and thickness > 0 else None), image_type


def assess_case(
    *,
    dicom_files: Sequence[str],
    geometry: Any,
    lung_labels_zyx: np.ndarray | None,
    limits: Limits | None = None,
) -> Assessment:
    """:func:`assess` for a screened case: its canonical grid (``geometry.canonical``), its lung mask on that grid
    and, for a DICOM series, the SliceThickness and ImageType of its first file."""
    canonical = geometry.canonical
    thickness, image_type = _dicom_header(dicom_files)
    return assess(
        spacing_zyx=tuple(float(s) for s in canonical.spacing[:3])[::-1],
        shape_zyx=tuple(int(s) for s in canonical.size[:3])[::-1],
        lung_labels_zyx=lung_labels_zyx,
        slice_thickness_mm=thickness,
        image_type=image_type,
        limits=limits,
    )
