"""The source DICOM series of a case: its headers sorted by slice position, and our masks cut into its frames.

A mask written by the pipeline (``lungs.nii.gz``, ``nodules.nii.gz``) lies on the input's exact grid as SimpleITK
read it: array ``[z, y, x]``, index ``(x, y, z)``, LPS world mm. A DICOM frame is placed by its own
ImagePositionPatient (the centre of its first pixel, LPS mm), ImageOrientationPatient (row direction, then column
direction) and PixelSpacing (between rows, then between columns). :func:`frames_on_source` maps every pixel of
every frame to a voxel of the mask through world coordinates, so whatever the reader did (slices sorted in
either direction, flipped rows or columns, a permuted grid) the frame holds the voxels it covers. A mask that is
not on the series' grid (a resampled mask, another scan) is refused, never interpolated.

``pydicom`` is imported inside the functions: this module (and :class:`DicomExportError`) stays light enough for
the command line to import before screening.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import SimpleITK as sitk

if TYPE_CHECKING:
    from pydicom import Dataset

#: A frame's first pixel may lie this far (in voxels) off a voxel centre of the mask's grid (position tags are
#: rounded to a few decimals; a NIfTI header stores float32).
INDEX_TOLERANCE = 0.01
#: File name endings of the scan formats that are not DICOM (the refusal names the format).
NON_DICOM_FORMATS = {
    ".nii": "NIfTI",
    ".nii.gz": "NIfTI",
    ".mha": "MetaImage",
    ".mhd": "MetaImage",
    ".nrrd": "NRRD",
    ".nhdr": "NRRD",
}


class DicomExportError(ValueError):
    """DICOM output cannot be written for this case; the message is one line and names the file."""


def _format_of(path: Path) -> str | None:
    name = path.name.lower()
    for ending, fmt in NON_DICOM_FORMATS.items():
        if name.endswith(ending):
            return fmt
    return None


def require_dicom_input(path: str | os.PathLike[str]) -> None:
    """Refuse, before any work, an input that is not a DICOM series (a NIfTI/MetaImage/NRRD file).

    Only the name is looked at; :func:`read_source_series` checks the files themselves.

    Raises:
        DicomExportError: ``--dicom-out needs a DICOM series input; <path> is NIfTI`` (or MetaImage, NRRD).
    """
    fmt = _format_of(Path(path))
    if fmt is not None:
        raise DicomExportError(f"--dicom-out needs a DICOM series input; {path} is {fmt}")


def _read_header(path: Path) -> Dataset:
    import pydicom
    from pydicom.errors import InvalidDicomError

    require_dicom_input(path)
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError, EOFError) as err:
        reason = " ".join(str(err).split())[:120] or type(err).__name__
        raise DicomExportError(
            f"--dicom-out needs a DICOM series input; {path} is not a DICOM file ({reason})"
        ) from None


def _normal(ds: Dataset) -> np.ndarray:
    iop = np.asarray([float(v) for v in ds.ImageOrientationPatient], dtype=float)
    return np.cross(iop[:3], iop[3:])


def read_source_series(files: Sequence[str | os.PathLike[str]]) -> list[Dataset]:
    """The headers (no pixel data) of one DICOM image series, sorted by slice position along the slice normal
    (increasing).

    Raises:
        DicomExportError: no files, a file that is not DICOM, several series, or a slice without the geometry
            (ImagePositionPatient, ImageOrientationPatient, PixelSpacing, FrameOfReferenceUID) a SEG needs.
    """
    if not files:
        raise DicomExportError("--dicom-out needs a DICOM series input; no DICOM files were given")
    datasets = [_read_header(Path(f)) for f in files]
    required = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "FrameOfReferenceUID")
    for path, ds in zip(files, datasets, strict=True):
        keys = (*required, "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
        missing = [k for k in keys if k not in ds or ds[k].value in (None, "", [])]
        if missing:
            raise DicomExportError(
                f"{path}: DICOM slice without {', '.join(missing)} (anonymised without new UIDs?); "
                "DICOM SEG/SR cannot reference it"
            )
    series = {str(ds.SeriesInstanceUID) for ds in datasets}
    if len(series) != 1:
        raise DicomExportError(f"{files[0]}: the files hold {len(series)} DICOM series, not one")
    normal = _normal(datasets[0])
    order = np.argsort(
        [float(np.dot(normal, [float(v) for v in ds.ImagePositionPatient])) for ds in datasets]
    )
    return [datasets[i] for i in order]


def _world_to_index(grid: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """``(matrix, origin)`` with ``index (x, y, z) = matrix @ (world - origin)`` on ``grid`` (LPS mm)."""
    direction = np.asarray(grid.GetDirection(), dtype=float).reshape(3, 3)
    scale = direction @ np.diag(np.asarray(grid.GetSpacing(), dtype=float))
    return np.linalg.inv(scale), np.asarray(grid.GetOrigin(), dtype=float)


def _unit_step(step: np.ndarray, what: str, where: str) -> np.ndarray:
    rounded = np.rint(step)
    if np.abs(step - rounded).max() > INDEX_TOLERANCE or np.abs(rounded).sum() != 1:
        raise DicomExportError(
            f"{where}: the mask grid is not the series' grid (one {what} step is {np.round(step, 3).tolist()} "
            "voxels); masks must be on the input's exact grid"
        )
    return rounded.astype(np.int64)


def frame_voxels(ds: Dataset, grid: sitk.Image) -> np.ndarray:
    """Voxel index ``(x, y, z)`` on ``grid`` of every pixel of the DICOM frame ``ds``: int array ``[3, rows,
    columns]``.

    Raises:
        DicomExportError: the frame's pixels are not voxel centres of ``grid`` (another spacing, orientation or
            position) or fall outside it.
    """
    where = str(getattr(ds, "filename", None) or ds.SOPInstanceUID)
    matrix, origin = _world_to_index(grid)
    iop = np.asarray([float(v) for v in ds.ImageOrientationPatient], dtype=float)
    row_spacing, column_spacing = (float(v) for v in ds.PixelSpacing)  # between rows, between columns
    first = matrix @ (np.asarray([float(v) for v in ds.ImagePositionPatient], dtype=float) - origin)
    start = np.rint(first)
    if np.abs(first - start).max() > INDEX_TOLERANCE:
        raise DicomExportError(
            f"{where}: the frame's first pixel is at voxel {np.round(first, 3).tolist()} of the mask grid, not "
            "on a voxel centre; masks must be on the input's exact grid"
        )
    along_row = _unit_step(matrix @ (iop[:3] * column_spacing), "column", where)  # next column, same row
    along_column = _unit_step(matrix @ (iop[3:] * row_spacing), "row", where)  # next row, same column
    rows, columns = int(ds.Rows), int(ds.Columns)
    r = np.arange(rows)[None, :, None]
    c = np.arange(columns)[None, None, :]
    index = (
        start.astype(np.int64)[:, None, None] + along_column[:, None, None] * r + along_row[:, None, None] * c
    )
    size = np.asarray(grid.GetSize())[:, None, None]
    if (index < 0).any() or (index >= size).any():
        raise DicomExportError(
            f"{where}: the frame lies partly outside the mask grid of size {grid.GetSize()}"
        )
    return index


def frames_on_source(volume_zyx: np.ndarray, grid: sitk.Image, datasets: Sequence[Dataset]) -> np.ndarray:
    """Cut a volume on the input's grid into the source series' frames.

    Args:
        volume_zyx: array ``[z, y, x]`` on ``grid`` (labels of any integer type).
        grid: the geometry of ``volume_zyx`` (SimpleITK, LPS world mm): the input as read, or a mask read back.
        datasets: the source headers (:func:`read_source_series`), in the order the frames should come.

    Returns:
        ``[frames, rows, columns]``, same dtype: ``result[i]`` is the volume on ``datasets[i]``'s pixels.
    """
    volume = np.asarray(volume_zyx)
    if volume.shape != tuple(reversed(grid.GetSize())):
        raise DicomExportError(
            f"mask of shape {volume.shape} is not on a grid of size {grid.GetSize()} [x,y,z]"
        )
    frames = []
    for ds in datasets:
        x, y, z = frame_voxels(ds, grid)
        frames.append(volume[z, y, x])
    return np.stack(frames)


def as_grid_and_array(
    mask: sitk.Image | np.ndarray, grid: sitk.Image | None
) -> tuple[sitk.Image, np.ndarray]:
    """A mask given as a SimpleITK image (its own geometry) or as a ``[z, y, x]`` array on ``grid``."""
    if isinstance(mask, sitk.Image):
        return mask, sitk.GetArrayViewFromImage(mask)
    if grid is None:
        raise DicomExportError("a mask given as an array needs the grid it lies on (the input image)")
    return grid, np.asarray(mask)
