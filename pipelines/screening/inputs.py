"""What :func:`pipelines.screening.api.screen` accepts as input, turned into paths or SimpleITK images.

Accepted:

- a path (``str`` or ``os.PathLike``): a file, a DICOM folder or a folder searched recursively; or a list of
  paths;
- a ``SimpleITK.Image`` (its own geometry: origin, spacing and direction in LPS world mm; values in HU);
- a nibabel image (``Nifti1Image``, ``Nifti2Image``, ...): its array ``[i, j, k]`` and its voxel-to-**RAS**
  affine are converted to an LPS SimpleITK image with the same geometry (a sheared affine is refused);
- a numpy array ``[z, y, x]`` in HU with ``spacing_zyx=(z, y, x)`` in mm: taken as the canonical grid of
  CONTRIBUTING.md (x toward the patient's left, y posterior, z superior; identity direction) with its first
  voxel at the LPS origin ``(0, 0, 0)`` mm, so reported LPS centres are millimetres from voxel ``[0, 0, 0]``;
- a list of in-memory images (each of the three kinds above; arrays share ``spacing_zyx``).

Anything else is refused with a ``TypeError`` that says what was given.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

#: LPS = diag(-1, -1, 1) @ RAS.
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])
_ACCEPTED = (
    "a path (str or os.PathLike) or a list of paths, a SimpleITK.Image, a nibabel image, or a numpy array "
    "[z, y, x] in HU with spacing_zyx=(z, y, x) mm (or a list of in-memory images)"
)


def describe(obj: Any) -> str:
    """``numpy.ndarray of shape (3, 4) and dtype int16``-style description of what a caller passed."""
    kind = type(obj)
    name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
    shape = getattr(obj, "shape", None)
    if shape is not None and not callable(shape):
        name += f" of shape {tuple(shape)}"
    dtype = getattr(obj, "dtype", None)
    return f"{name} and dtype {dtype}" if dtype is not None and shape is not None else name


def is_path(obj: Any) -> bool:
    return isinstance(obj, str | os.PathLike)


def is_in_memory(obj: Any) -> bool:
    """A SimpleITK image, a nibabel image (duck-typed: ``affine`` and ``dataobj``) or a numpy array."""
    return isinstance(obj, sitk.Image | np.ndarray) or (hasattr(obj, "affine") and hasattr(obj, "dataobj"))


def as_paths(inputs: Any) -> list[Path] | Path | None:
    """``inputs`` as ``Path`` objects (a list for a list), or None when they are not paths."""
    if is_path(inputs):
        return Path(inputs)
    if isinstance(inputs, list | tuple) and inputs and all(is_path(p) for p in inputs):
        return [Path(p) for p in inputs]
    return None


def as_images(inputs: Any, *, spacing_zyx: Sequence[float] | None = None) -> list[sitk.Image]:
    """In-memory input(s) as SimpleITK images (LPS world, HU).

    Raises:
        TypeError: for anything :mod:`pipelines.screening.inputs` does not accept, saying what it got.
        ValueError: for an array without a valid ``spacing_zyx``, a non-3D array, or a sheared affine.
    """
    items = list(inputs) if isinstance(inputs, list | tuple) else [inputs]
    if not items:
        raise ValueError(f"no input given: pass {_ACCEPTED}")
    bad = [describe(x) for x in items if not is_in_memory(x)]
    if bad:
        where = "" if len(items) == 1 and not isinstance(inputs, list | tuple) else "a list holding "
        raise TypeError(f"cannot screen {where}{bad[0]}: pass {_ACCEPTED}")
    if spacing_zyx is not None and not any(isinstance(x, np.ndarray) for x in items):
        raise ValueError("spacing_zyx applies to numpy array inputs only (images carry their own spacing)")
    return [to_sitk(x, spacing_zyx=spacing_zyx) for x in items]


def to_sitk(obj: Any, *, spacing_zyx: Sequence[float] | None = None) -> sitk.Image:
    """One SimpleITK image, nibabel image or numpy array ``[z, y, x]`` (with ``spacing_zyx`` mm) as a
    SimpleITK image."""
    if isinstance(obj, sitk.Image):
        return obj
    if isinstance(obj, np.ndarray):
        return array_to_sitk(obj, spacing_zyx=spacing_zyx)
    return nibabel_to_sitk(obj)


def array_to_sitk(array_zyx: np.ndarray, *, spacing_zyx: Sequence[float] | None) -> sitk.Image:
    """A ``[z, y, x]`` HU array on the canonical LPS grid (identity direction, origin ``(0, 0, 0)`` mm) with
    voxel size ``spacing_zyx`` (mm, array-axis order) as a SimpleITK image."""
    if spacing_zyx is None:
        raise ValueError(
            f"a numpy array ({describe(array_zyx)}) needs its voxel size: screen(array, out, spacing_zyx=(z, y, x))"
        )
    spacing = _spacing(spacing_zyx)
    if array_zyx.ndim != 3:
        raise ValueError(f"a numpy array input must be 3D [z, y, x], got {describe(array_zyx)}")
    image = sitk.GetImageFromArray(_pixels(array_zyx, describe(array_zyx)))
    image.SetSpacing(spacing[::-1])
    return image


def nibabel_to_sitk(img: Any) -> sitk.Image:
    """A nibabel image (array ``[i, j, k]``, voxel-to-RAS ``affine``) as an LPS SimpleITK image on the same
    grid: spacing from the affine's column norms, direction the normalised columns, origin its translation."""
    affine = np.asarray(img.affine, dtype=float)
    data = np.asanyarray(img.dataobj)
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(
            f"a nibabel image input must be 3D, got {describe(img)} with data shape {data.shape}"
        )
    lps = _RAS_TO_LPS @ affine[:3, :3]
    spacing = np.linalg.norm(lps, axis=0)
    if not np.all(np.isfinite(affine)) or np.any(spacing <= 0):
        raise ValueError(
            f"the nibabel image's affine is not a valid voxel-to-world matrix: {affine.tolist()}"
        )
    direction = lps / spacing
    if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-4):
        raise ValueError("the nibabel image's affine is sheared (non-orthogonal axes); resample it first")
    image = sitk.GetImageFromArray(_pixels(data.transpose(2, 1, 0), describe(img)))
    image.SetSpacing(spacing.tolist())
    image.SetOrigin((_RAS_TO_LPS @ affine[:3, 3]).tolist())
    image.SetDirection(direction.flatten().tolist())
    return image


def _spacing(spacing_zyx: Any) -> tuple[float, float, float]:
    values = list(spacing_zyx) if isinstance(spacing_zyx, list | tuple | np.ndarray) else []
    ok = len(values) == 3 and all(
        isinstance(v, int | float | np.number) and not isinstance(v, bool) and math.isfinite(v) and v > 0
        for v in values
    )
    if not ok:
        raise ValueError(f"spacing_zyx must be three positive numbers (z, y, x) in mm, not {spacing_zyx!r}")
    return float(values[0]), float(values[1]), float(values[2])


def _pixels(array: np.ndarray, what: str) -> np.ndarray:
    if array.dtype in (np.float64, np.float16):
        array = array.astype(np.float32)
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ValueError(f"cannot screen {what}: the voxels must be numbers (HU)")
    return np.ascontiguousarray(array)
