"""Reading scans of any format and orientation, writing results in the original geometry, atomically.

Every scan enters through :func:`read_image` (NIfTI, MetaImage, NRRD, a DICOM series folder or a single
DICOM file) and is validated there, so a bad file fails with an :class:`ImageReadError` that names it.
Work happens on the *canonical* grid (:func:`to_canonical`: SimpleITK ``DICOMOrient`` to ``LPS``, arrays
indexed ``[z, y, x]``); results go back to the file's own grid with :func:`from_canonical`, which restores
the exact size, spacing, origin and direction of the input.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import SimpleITK as sitk

from pipelines.imaging import filesys
from pipelines.imaging.filesys import (
    ImageReadError,
    atomic_write,
    first_line,
    full_suffix,
    refuse_special,
)

if TYPE_CHECKING:
    pass


# DICOM tags read for series selection. Identifying attributes (names, IDs, dates) are never read.


def write_image(image: sitk.Image, path: str | os.PathLike[str], *, compress: bool = True) -> Path:
    """Write a SimpleITK image atomically (``.nii.gz`` compressed unless ``compress=False``).

    MetaImage (``.mhd``) is written with its ``.raw`` companion; both are renamed into place.
    """
    final = Path(path)
    if full_suffix(final) == ".mhd":
        return _write_mhd(image, final, compress=compress)
    with atomic_write(final) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=compress)
    return final


def _write_mhd(image: sitk.Image, final: Path, *, compress: bool) -> Path:
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".tmp-{final.stem}-", dir=final.parent))
    try:
        sitk.WriteImage(image, str(tmp_dir / final.name), useCompression=compress)
        for produced in sorted(tmp_dir.iterdir(), key=lambda p: p.suffix != ".raw" and p.suffix != ".zraw"):
            if filesys.before_replace is not None:
                filesys.before_replace(produced, final.parent / produced.name)
            os.replace(produced, final.parent / produced.name)  # data first, header last
    finally:
        for leftover in tmp_dir.glob("*"):
            leftover.unlink()
        tmp_dir.rmdir()
    return final


def read_image(
    path: str | os.PathLike[str], *, dicom_files: list[str] | None = None, max_voxels: int | None = None
) -> sitk.Image:
    """Read a 3D scan and validate it; the header is checked before any voxel is read.

    Args:
        path: a NIfTI/MetaImage/NRRD file, a folder holding one DICOM series, or a DICOM file.
        dicom_files: explicit ordered slice files (from :func:`discover_cases`) for a DICOM series.
        max_voxels: refuse, from the header, images with more voxels (every dimension) or more than
            ``2 * max_voxels`` bytes (:func:`pipelines.imaging.header.check_limits`); ``None``: no limit here
            (the screening engine checks its setting with :func:`check_size` first).

    Returns:
        The image in its own on-disk geometry (SimpleITK: LPS world, spacing ``(x, y, z)`` in mm).

    Raises:
        ImageReadError: naming the file, for a missing/empty/corrupt/truncated file, a FIFO/socket/device, a
            non-image file, an image that is not 3D (2D or 4D), too large, non-finite voxels, a spacing outside
            0.05-20 mm, a sheared direction, or a gantry-tilted DICOM series.
    """
    p = Path(path)
    refuse_special(p)
    if not p.exists():
        raise ImageReadError(p, "no such file or folder")
    if p.is_file() and p.stat().st_size == 0:
        raise ImageReadError(p, "empty file (0 bytes)")
    if p.is_file() and not os.access(p, os.R_OK):
        raise ImageReadError(p, "file is not readable (permission denied)")
    try:
        if p.is_dir() and not dicom_files:
            dicom_files = _dicom_folder_files(p)
        _check_header(p, dicom_files=dicom_files, max_voxels=max_voxels)
        if dicom_files:
            image = _read_dicom_files(p, dicom_files)
        else:
            if full_suffix(p) in (".nii", ".nii.gz"):
                from pipelines.imaging.nifti_checks import check_nifti_file

                check_nifti_file(p)
            image = sitk.ReadImage(str(p))
    except ImageReadError:
        raise
    except RuntimeError as err:  # SimpleITK raises RuntimeError with a long ITK trace
        raise ImageReadError(p, f"cannot read image: {first_line(str(err))}") from None
    validate_image(image, p)
    return image


def _check_header(path: Path, *, dicom_files: list[str] | None, max_voxels: int | None) -> None:
    """Header-only checks before reading (limits, spacing, shear); an unreadable header is left to the reader."""
    from pipelines.imaging import header as io_header

    refuse_special(dicom_files[0] if dicom_files else path)
    try:
        header = io_header.read_header(path, dicom_files=dicom_files)
    except ImageReadError:
        return  # the reader below gives the precise reason
    if max_voxels is not None:
        io_header.check_limits(header, path, max_voxels=max_voxels)
    io_header.check_geometry(header, path)


def validate_image(image: sitk.Image, path: str | os.PathLike[str] = "<memory>") -> None:
    """Raise :class:`ImageReadError` unless ``image`` is a finite, scalar, 3D volume with a spacing of 0.05-20 mm
    per axis and an orthonormal direction (limits in :mod:`pipelines.imaging.header`)."""
    dim = image.GetDimension()
    size = image.GetSize()
    if dim == 4 and size[3] == 1:
        pass  # a 4D image with one time point is reduced by the caller via to_3d
    elif dim != 3:
        raise ImageReadError(path, f"expected a 3D image, got {dim}D of size {size}")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ImageReadError(
            path, f"expected a scalar image, got {image.GetNumberOfComponentsPerPixel()} components"
        )
    if min(size[:3]) < 2:
        raise ImageReadError(path, f"image of size {size[:3]} is a single slice (2D), not a volume")
    from pipelines.imaging.header import direction_problem, spacing_problem

    problem = spacing_problem(image.GetSpacing()[:3])
    if not problem:
        problem = direction_problem(np.asarray(image.GetDirection(), dtype=float).reshape(dim, dim)[:3, :3])
    if problem:
        raise ImageReadError(path, problem)
    if image.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64):
        arr = sitk.GetArrayViewFromImage(image)
        if not np.isfinite(arr).all():
            bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
            raise ImageReadError(path, f"{bad} voxels are NaN or infinite")


def _dicom_folder_files(folder: Path) -> list[str]:
    """The slice files of the one DICOM series in ``folder`` (GDCM skips FIFOs and devices when listing)."""
    series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise ImageReadError(folder, "folder holds no DICOM series")
    if len(series) > 1:
        raise ImageReadError(
            folder, f"folder holds {len(series)} DICOM series; use discover_cases to split them"
        )
    return list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series[0]))


def _read_dicom_files(folder: Path, files: list[str]) -> sitk.Image:
    from pipelines.imaging.dicom_geometry import check_dicom_slices

    check_dicom_slices(folder, files)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOff()
    reader.LoadPrivateTagsOff()
    return reader.Execute()


def to_3d(image: sitk.Image) -> sitk.Image:
    """Drop a trailing singleton 4th dimension (some NIfTI writers add one)."""
    if image.GetDimension() == 4 and image.GetSize()[3] == 1:
        size = list(image.GetSize())
        size[3] = 0
        return sitk.Extract(image, size, [0, 0, 0, 0])
    return image


# --------------------------------------------------------------------------------------------- geometry
def orientation_code(image: sitk.Image) -> str:
    """Three-letter code of where each index axis points (ITK convention: ``LPS`` = x->L, y->P, z->S)."""
    return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection())


def to_canonical(image: sitk.Image) -> sitk.Image:
    """Permute/flip axes so x->Left, y->Posterior, z->Superior (no resampling; exact and invertible)."""
    return sitk.DICOMOrient(to_3d(image), "LPS")


@dataclass(frozen=True)
class ImageHeader:
    """Geometry of an image without its voxels: size ``(x, y, z)``, spacing (mm), origin (LPS mm), direction."""

    size: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]

    @classmethod
    def of(cls, image: sitk.Image) -> ImageHeader:
        img = to_3d(image)
        return cls(img.GetSize(), img.GetSpacing(), img.GetOrigin(), img.GetDirection())

    @property
    def orientation(self) -> str:
        return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(self.direction)

    def apply(self, image: sitk.Image) -> sitk.Image:
        """Stamp this geometry on ``image`` (sizes must agree)."""
        if tuple(image.GetSize()) != tuple(self.size):
            raise ValueError(f"image of size {image.GetSize()} does not match header size {self.size}")
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image


def from_canonical(
    canonical: sitk.Image | np.ndarray,
    reference: sitk.Image | ImageHeader,
    canonical_header: ImageHeader | None = None,
) -> sitk.Image:
    """Bring an image (or ``[z, y, x]`` array) on the canonical grid of ``reference`` back to its own grid.

    Args:
        canonical: image or array on the canonical (LPS) grid of the reference scan.
        reference: the original scan, or its :class:`ImageHeader`.
        canonical_header: header of the canonical grid; derived from ``reference`` when it is an image.

    Returns:
        An image with exactly the reference's size, spacing, origin and direction, so it overlays the scan.
    """
    ref = reference if isinstance(reference, ImageHeader) else ImageHeader.of(reference)
    if isinstance(canonical, np.ndarray):
        if canonical_header is None:
            if not isinstance(reference, sitk.Image):
                raise ValueError("canonical_header is required when reference is a header")
            canonical_header = ImageHeader.of(to_canonical(reference))
        img = canonical_header.apply(sitk.GetImageFromArray(canonical))
    else:
        img = canonical
    back = sitk.DICOMOrient(img, ref.orientation)
    if tuple(back.GetSize()) != tuple(ref.size):
        raise ValueError(f"canonical image of size {img.GetSize()} does not match reference {ref.size}")
    return ref.apply(back)


_AXIS_OF_LETTER = {"L": (0, 1), "R": (0, -1), "P": (1, 1), "A": (1, -1), "S": (2, 1), "I": (2, -1)}


def canonical_array(image: sitk.Image, *, dtype: type = np.float32) -> tuple[np.ndarray, ImageHeader]:
    """The canonical ``[z, y, x]`` array (as ``dtype``) and the header of the canonical grid.

    The same permutation and flips as :func:`to_canonical` (SimpleITK ``DICOMOrient`` to ``LPS``, which
    also decides the nearest orientation of a slightly oblique scan), done as numpy views over the
    image's buffer and one copy into ``dtype``: several times faster than ``DICOMOrient`` plus a copy
    on a full CT. The header equals ``ImageHeader.of(to_canonical(image))``.
    """
    image = to_3d(image)
    code = orientation_code(image)
    size, spacing = image.GetSize(), image.GetSpacing()
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    view = sitk.GetArrayViewFromImage(image)  # [k, j, i] = index axes (2, 1, 0)
    world_of = [_AXIS_OF_LETTER[c] for c in code]  # index axis a -> (LPS world axis, sign)
    # canonical index axis w is the input index axis a with world_of[a][0] == w
    source = [next(a for a in range(3) if world_of[a][0] == w) for w in range(3)]
    arr = view.transpose([2 - source[2 - ax] for ax in range(3)])
    flips = tuple(
        slice(None, None, -1) if world_of[source[2 - ax]][1] < 0 else slice(None) for ax in range(3)
    )
    # always a copy: a view would dangle once the image (the view's buffer owner) is freed
    arr = np.array(arr[flips], dtype=dtype, order="C", copy=True)
    first = np.array([size[a] - 1 if world_of[a][1] < 0 else 0 for a in range(3)], dtype=float)
    origin = np.asarray(image.GetOrigin(), dtype=float) + direction @ (first * np.asarray(spacing, float))
    new_dir = np.stack([direction[:, source[w]] * world_of[source[w]][1] for w in range(3)], axis=1)
    header = ImageHeader(
        tuple(int(size[source[w]]) for w in range(3)),
        tuple(float(spacing[source[w]]) for w in range(3)),
        tuple(float(v) for v in origin),
        tuple(float(v) for v in new_dir.ravel()),
    )
    return arr, header


def spacing_zyx(image: sitk.Image | ImageHeader) -> tuple[float, float, float]:
    """Spacing in array-axis order ``(z, y, x)`` in mm (SimpleITK's ``GetSpacing`` is ``(x, y, z)``)."""
    sx, sy, sz = (image.spacing if isinstance(image, ImageHeader) else image.GetSpacing())[:3]
    return (float(sz), float(sy), float(sx))


def header_image(header: ImageHeader) -> sitk.Image:
    """A 1-voxel image carrying ``header``'s origin, spacing and direction (for index <-> world mapping)."""
    img = sitk.Image([1, 1, 1], sitk.sitkUInt8)
    img.SetSpacing(header.spacing)
    img.SetOrigin(header.origin)
    img.SetDirection(header.direction)
    return img
