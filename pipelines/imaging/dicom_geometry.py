"""Geometry of a DICOM series from its slice headers: orientation and the steps between slice positions.

A DICOM slice places its pixels with ImageOrientationPatient (row and column directions, LPS) and
ImagePositionPatient (the world position of its first pixel, LPS mm). SimpleITK builds a volume from the first
slice's orientation and stacks the slices along that orientation's normal, at the distance between slice
positions. That is exact only when the positions step along the normal. With gantry tilt, the positions
step along the table axis while the slice planes are tilted: each slice is shifted in-plane relative to the
normal stack, so the voxels are sheared and far slices land centimetres from where the DICOM geometry puts
them (a 20-degree tilt over 92 mm: 31 mm). Such a series, and orientations whose row and column are not
orthonormal, are refused here rather than screened on a wrong grid.

Why refused and not resampled: an exact correction would resample each slice in-plane onto an orthogonal grid
(dcm2niix's gantry-tilt correction) and write every output mask back through the inverse shear; the masks
could then not be stored with the scan's own (sheared) geometry in a NIfTI header that SimpleITK writes. A
clear refusal keeps every reported position exact; a tilt-corrected NIfTI of the series can be screened.

:func:`check_dicom_slices` reads the slice headers; the rest are pure functions of positions (``[N, 3]`` LPS mm)
and orientations (the six ImageOrientationPatient values).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from pipelines.imaging.filesys import ImageReadError, refuse_special

_TAG_ORIENTATION = "0020|0037"
_TAG_POSITION = "0020|0032"

#: A series whose slice positions step more than this off the slice normal is tilted (degrees).
TILT_TOLERANCE_DEG = 0.1
#: ...and only when the far slice is shifted in-plane by more than this (mm): rounding of the position tags.
TILT_MIN_SHIFT_MM = 0.02
#: In-plane jitter of single slices off a straight line of positions that is refused (mm).
JITTER_TOLERANCE_MM = 0.1
#: Largest |row . column| and deviation of their lengths from 1 accepted in ImageOrientationPatient.
ORIENTATION_TOLERANCE = 1e-3


def orientation_problem(orientation: Sequence[float]) -> str:
    """Why six ImageOrientationPatient values are not two orthonormal directions, or ``""``."""
    values = np.asarray(orientation, dtype=float)
    if values.shape != (6,) or not np.all(np.isfinite(values)):
        return f"ImageOrientationPatient must hold 6 finite numbers, not {tuple(values.tolist())}"
    row, col = values[:3], values[3:]
    lengths = (float(np.linalg.norm(row)), float(np.linalg.norm(col)))
    if any(abs(v - 1) > ORIENTATION_TOLERANCE for v in lengths):
        return f"ImageOrientationPatient row/column are not unit vectors (lengths {lengths[0]:.4f}, {lengths[1]:.4f})"
    cosine = float(row @ col) / (lengths[0] * lengths[1])
    if abs(cosine) > ORIENTATION_TOLERANCE:
        angle = math.degrees(math.acos(max(-1.0, min(1.0, cosine))))
        return (
            f"ImageOrientationPatient row and column are at {angle:.1f} degrees, not 90: sheared pixels "
            "cannot be screened on an exact grid"
        )
    return ""


def slice_normal(orientation: Sequence[float]) -> np.ndarray:
    """Unit normal (row x column) of an ImageOrientationPatient, LPS."""
    values = np.asarray(orientation, dtype=float)
    n = np.cross(values[:3], values[3:])
    return n / np.linalg.norm(n)


def tilt(orientation: Sequence[float], positions: np.ndarray) -> tuple[float, float, float]:
    """How far slice positions step off the slice normal.

    Args:
        orientation: the series' ImageOrientationPatient (six values).
        positions: ``[N, 3]`` ImagePositionPatient of every slice (LPS mm), any order.

    Returns:
        ``(angle_deg, shift_mm, jitter_mm)``: the angle between the slice normal and the straight line fitted
        through the positions (least squares through the first slice), the in-plane shift of the farthest
        slice along that line, and the largest in-plane distance of a slice from that line.
    """
    normal = slice_normal(orientation)
    p = np.asarray(positions, dtype=float).reshape(-1, 3)
    p = p[np.argsort(p @ normal)]
    d = p - p[0]
    along = d @ normal
    lateral = d - along[:, None] * normal
    denom = float(along @ along)
    if len(p) < 2 or denom <= 0:
        return 0.0, 0.0, 0.0
    step = (along @ lateral) / denom  # in-plane shift per mm along the normal
    residual = lateral - along[:, None] * step
    angle = math.degrees(math.atan(float(np.linalg.norm(step))))
    shift = float(np.linalg.norm(step) * abs(along[-1]))
    jitter = float(np.max(np.linalg.norm(residual, axis=1)))
    return angle, shift, jitter


def tilt_problem(orientation: Sequence[float], positions: np.ndarray) -> str:
    """Why the slice positions do not stack along the slice normal (gantry tilt, jitter), or ``""``."""
    angle, shift, jitter = tilt(orientation, positions)
    if angle > TILT_TOLERANCE_DEG and shift > TILT_MIN_SHIFT_MM:
        return (
            f"gantry-tilted DICOM series: slice positions step {angle:.1f} degrees off the slice normal (far "
            f"slice shifted {shift:.1f} mm in-plane), so its voxels are sheared; refused rather than screened "
            "on a wrong grid (screen a tilt-corrected conversion, e.g. dcm2niix's)"
        )
    if jitter > JITTER_TOLERANCE_MM:
        return (
            f"DICOM slices are shifted in-plane irregularly (up to {jitter:.2f} mm off a straight stack): "
            "no single grid describes the series"
        )
    return ""


def check_dicom_slices(folder: Path, files: list[str], *, tolerance: float = 0.1) -> None:
    """Refuse a DICOM series with mixed or sheared orientations, gantry tilt, missing slices or uneven gaps.

    Slice positions are projected on the slice normal; the gaps must agree within ``tolerance`` (relative).
    Positions must step along the normal (:func:`pipelines.imaging.dicom_geometry.tilt_problem`).
    Series without position tags (header-stripped) are accepted as SimpleITK orders them.
    """
    if len(files) < 2:
        raise ImageReadError(folder, f"DICOM series has {len(files)} slice; a volume needs at least 2")
    orientations, positions = [], []
    for f in files:
        refuse_special(f)
        r = sitk.ImageFileReader()
        r.SetFileName(f)
        try:
            r.ReadImageInformation()
            if r.HasMetaDataKey(_TAG_ORIENTATION) and r.HasMetaDataKey(_TAG_POSITION):
                orientations.append(_floats(r.GetMetaData(_TAG_ORIENTATION), 6))
                positions.append(_floats(r.GetMetaData(_TAG_POSITION), 3))
        except RuntimeError:
            raise ImageReadError(f, "unreadable DICOM slice") from None
        except ValueError:
            raise ImageReadError(f, "unreadable ImageOrientationPatient/ImagePositionPatient tag") from None
    if len(positions) != len(files):
        return
    ori = np.asarray(orientations)
    if np.abs(ori - ori[0]).max() > 1e-3:
        raise ImageReadError(folder, "DICOM series mixes slice orientations")
    problem = orientation_problem(ori[0]) or tilt_problem(ori[0], np.asarray(positions))
    if problem:
        raise ImageReadError(folder, problem)
    normal = np.cross(ori[0, :3], ori[0, 3:])
    z = np.sort(np.asarray(positions) @ normal)
    gaps = np.diff(z)
    if np.any(gaps < 1e-3):
        raise ImageReadError(folder, "DICOM series has duplicate slice positions")
    median = float(np.median(gaps))
    uneven = np.abs(gaps - median) > tolerance * median
    if uneven.any():
        worst = float(gaps[uneven].max())
        raise ImageReadError(
            folder,
            f"DICOM series has missing slices or uneven gaps ({int(uneven.sum())} gaps differ from "
            f"{median:.2f} mm, largest {worst:.2f} mm)",
        )


def _floats(text: str, count: int) -> list[float]:
    values = [float(v) for v in text.replace(",", "\\").split("\\") if v.strip()]
    if len(values) != count:
        raise ValueError(f"expected {count} numbers, got {len(values)}")
    return values
