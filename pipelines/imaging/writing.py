"""Results written back on the input file's own grid (size, spacing, origin, direction), atomically.

Arrays come from the canonical ``[z, y, x]`` LPS grid (:mod:`pipelines.imaging.io`); :func:`write_mask` maps them
back exactly (:func:`pipelines.imaging.io.from_canonical`), so a mask overlays its scan in any viewer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from pipelines.imaging import io
from pipelines.imaging.preprocess import CaseGeometry


def write_mask(array_zyx: np.ndarray, geometry: CaseGeometry, path: Path, *, compress: bool) -> Path:
    """Write a canonical ``[z, y, x]`` array on the input file's own grid (size, spacing, origin, direction)."""
    image = io.from_canonical(array_zyx, geometry.original, geometry.canonical)
    return io.write_image(image, path, compress=compress)


def smallest_label_dtype(array: np.ndarray) -> np.ndarray:
    dtype = np.uint8 if int(array.max(initial=0)) <= 255 else np.uint16
    return array.astype(dtype, copy=False)  # no copy when it already is that dtype


def write_probability(prob_zyx: np.ndarray, geometry: CaseGeometry, path: Path, *, compress: bool) -> Path:
    image = io.from_canonical(prob_zyx.astype(np.float32), geometry.original, geometry.canonical)
    return io.write_image(sitk.Cast(image, sitk.sitkFloat32), path, compress=compress)
