"""What a scan's header promises, read without its voxels, and the checks made on it before any voxel is read.

A header can claim far more data than its file holds (a 4 MB ``.nii.gz`` of zeros decompresses to gigabytes)
or a geometry that cannot be screened exactly. :func:`read_header` reads only the header: NIfTI (the raw
``nifti1``/``nifti2`` header, as stored), MetaImage (``.mhd``/``.mha`` header text) and NRRD (``.nrrd``/``.nhdr``
header text) are parsed here; other files and DICOM slices go through SimpleITK's ``ReadImageInformation``,
which reads headers only. :func:`check_limits` and :func:`check_geometry` then refuse, with a one-line
:class:`pipelines.imaging.filesys.ImageReadError` naming the file:

- more voxels than the limit, counting **every** dimension (a 4D/5D image is the product of all its sizes);
- more bytes than ``max_voxels * LIMIT_BYTES_PER_VOXEL`` (the limit counts int16 voxels: a float64 image may
  hold a quarter of them), element size times components;
- spacings outside ``[MIN_SPACING_MM, MAX_SPACING_MM]`` on any spatial axis (no CT or MRI of a person has
  voxels under 0.05 mm or over 20 mm; such values are unit mistakes or hostile headers, and they make the
  resampled network grid explode);
- an image with more than one volume (4D with several time points): only 3D scans are screened;
- a direction matrix that is not orthonormal (sheared axes): SimpleITK keeps or silently orthogonalises such
  a matrix, so results would be placed on a geometry the file does not describe. They are refused, never
  coerced.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from pipelines.imaging.filesys import ImageReadError, first_line, full_suffix

#: The voxel limit counts int16 voxels: an image may hold ``max_voxels * 2`` bytes of voxel data.
LIMIT_BYTES_PER_VOXEL = 2
#: Accepted voxel spacing per spatial axis, mm (inclusive).
MIN_SPACING_MM = 0.05
MAX_SPACING_MM = 20.0
#: Largest |cosine| between two direction axes (and deviation of an axis' length from 1) still orthonormal.
ORTHONORMAL_TOLERANCE = 1e-3

_HEADER_BYTES = 1 << 16  # text headers longer than this are not images we accept


@dataclass(frozen=True)
class Header:
    """An image header without its voxels.

    Attributes:
        size: every dimension, index order ``(x, y, z, t, ...)`` (a DICOM series: ``(columns, rows, files)``).
        spacing: voxel size in mm of the spatial axes ``(x, y[, z])`` as stored (a DICOM slice: ``(x, y)``).
        bytes_per_voxel: element size times components per voxel.
        element: the element type for messages (``int16``, ``float64``).
        direction: ``3 x 3`` matrix whose columns are the index axes in world coordinates, normalised, when
            the header stores one that SimpleITK might alter; ``None`` when it cannot be sheared.
    """

    size: tuple[int, ...]
    spacing: tuple[float, ...]
    bytes_per_voxel: int
    element: str
    direction: np.ndarray | None = None

    @property
    def voxels(self) -> int:
        return math.prod(self.size)  # Python integers: no overflow for hostile sizes

    @property
    def nbytes(self) -> int:
        return self.voxels * self.bytes_per_voxel

    @classmethod
    def of_image(cls, image: sitk.Image) -> Header:
        """The header of an in-memory SimpleITK image."""
        name, item = _itk_element(image.GetPixelID())
        return cls(
            tuple(int(v) for v in image.GetSize()),
            tuple(float(v) for v in image.GetSpacing()[:3]),
            item * image.GetNumberOfComponentsPerPixel(),
            name,
            _direction_matrix(image.GetDirection()),
        )


# --------------------------------------------------------------------------------------------- checks
def check_limits(header: Header, path: str | os.PathLike[str], *, max_voxels: int) -> None:
    """Refuse a header that promises more than ``max_voxels`` voxels or ``max_voxels * 2`` bytes.

    Raises:
        ImageReadError: naming the file, the size, and the limit (setting ``max_input_voxels``).
    """
    dims = "x".join(str(v) for v in header.size)
    if header.voxels > max_voxels:
        raise ImageReadError(
            path,
            f"volume of {dims} = {format_count(header.voxels)} voxels exceeds the limit of {format_count(max_voxels)} "
            "voxels (setting max_input_voxels); every dimension counts",
        )
    max_bytes = max_voxels * LIMIT_BYTES_PER_VOXEL
    if header.nbytes > max_bytes:
        raise ImageReadError(
            path,
            f"{header.element} volume of {dims} holds {_gb(header.nbytes)} of voxel data, which exceeds the limit "
            f"of {_gb(max_bytes)} (setting max_input_voxels = {format_count(max_voxels)} voxels of "
            f"{LIMIT_BYTES_PER_VOXEL} bytes)",
        )


def check_geometry(header: Header, path: str | os.PathLike[str]) -> None:
    """Refuse more than one volume, spacings outside the accepted range, and sheared direction matrices.

    Raises:
        ImageReadError: naming the file and what is wrong.
    """
    extra = header.size[3:]
    if any(v > 1 for v in extra):
        raise ImageReadError(
            path, f"expected a 3D image, got {len(header.size)}D of size {header.size} (several volumes)"
        )
    problem = spacing_problem(header.spacing)
    if problem:
        raise ImageReadError(path, problem)
    if header.direction is not None:
        problem = direction_problem(header.direction)
        if problem:
            raise ImageReadError(path, problem)


def spacing_problem(spacing: tuple[float, ...] | list[float]) -> str:
    """Why ``spacing`` (mm, any axis order) cannot be screened, or ``""`` when it lies within the bounds."""
    values = tuple(float(v) for v in spacing)
    if not all(math.isfinite(v) and v > 0 for v in values):
        return f"spacing must be strictly positive and finite, not {values}"
    if any(v < MIN_SPACING_MM or v > MAX_SPACING_MM for v in values):
        shown = tuple(round(v, 4) for v in values)
        return (
            f"spacing {shown} mm is outside the accepted {MIN_SPACING_MM}-{MAX_SPACING_MM:g} mm per axis "
            "(a unit mistake or a damaged header?)"
        )
    return ""


def direction_problem(direction: np.ndarray) -> str:
    """Why a ``3 x 3`` direction matrix (columns = index axes) is not a rotation/reflection, or ``""``."""
    m = np.asarray(direction, dtype=float).reshape(3, 3)
    if not np.all(np.isfinite(m)):
        return "direction matrix holds non-finite values"
    lengths = np.linalg.norm(m, axis=0)
    if np.any(lengths < 1e-6):
        return "direction matrix has a zero-length axis"
    unit = m / lengths
    gram = unit.T @ unit
    worst = float(np.max(np.abs(gram - np.eye(3))))
    if worst > ORTHONORMAL_TOLERANCE:
        i, j = divmod(int(np.argmax(np.abs(gram - np.eye(3)))), 3)
        angle = math.degrees(math.acos(max(-1.0, min(1.0, float(gram[i, j])))))
        return (
            f"direction matrix is not orthogonal (index axes {i} and {j} at {angle:.1f} degrees): sheared "
            "voxels cannot be screened on an exact grid, and the file is refused rather than straightened"
        )
    if np.any(np.abs(lengths - 1) > ORTHONORMAL_TOLERANCE):
        shown = tuple(round(float(v), 4) for v in lengths)
        return f"direction matrix axes are not unit vectors (lengths {shown}): scaled or damaged geometry"
    return ""


def _direction_matrix(values: tuple[float, ...] | list[float]) -> np.ndarray | None:
    """A SimpleITK direction tuple (row-major ``3 x 3``) as a matrix; ``None`` for other dimensions."""
    return np.asarray(values, dtype=float).reshape(3, 3) if len(values) == 9 else None


def _unit_columns(m: np.ndarray) -> np.ndarray:
    """Columns scaled to unit length (those of length 0 stay 0 and are reported by direction_problem)."""
    lengths = np.linalg.norm(m, axis=0)
    return m / np.where(lengths > 0, lengths, 1.0)


def format_count(n: int) -> str:
    """A voxel count for messages: ``64512``, ``1.5 M``, ``390 M``."""
    return f"{n / 1e6:.0f} M" if n >= 10_000_000 else f"{n / 1e6:.1f} M" if n >= 1_000_000 else str(n)


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 10_000_000 else f"{n} bytes"


# --------------------------------------------------------------------------------------------- reading
def read_header(path: str | os.PathLike[str], *, dicom_files: list[str] | None = None) -> Header:
    """The header of an image file or a DICOM series, without reading voxel data.

    Args:
        path: a NIfTI, MetaImage, NRRD or other SimpleITK-readable file (or the DICOM folder).
        dicom_files: the slice files of a DICOM series: the first one's header times the number of files.

    Raises:
        ImageReadError: naming the file, when no header can be read.
    """
    if dicom_files:
        first = _itk_header(dicom_files[0])
        return Header(
            (*first.size[:2], len(dicom_files)), first.spacing[:2], first.bytes_per_voxel, first.element
        )
    p = Path(path)
    suffix = full_suffix(p)
    parse = {".nii": _nifti, ".nii.gz": _nifti, ".mhd": _metaimage, ".mha": _metaimage}.get(suffix)
    parse = parse or {".nrrd": _nrrd, ".nhdr": _nrrd}.get(suffix)
    if parse is not None:
        try:
            return parse(p)
        except (ValueError, KeyError, IndexError, OSError, EOFError):
            pass  # not what the name says: let SimpleITK's header reader decide
    return _itk_header(str(p))


def _itk_header(path: str) -> Header:
    r = sitk.ImageFileReader()
    r.SetFileName(path)
    try:
        r.ReadImageInformation()
    except RuntimeError as err:
        raise ImageReadError(path, f"cannot read image header: {first_line(str(err))}") from None
    name, item = _itk_element(r.GetPixelID())
    return Header(
        tuple(int(v) for v in r.GetSize()),
        tuple(float(v) for v in r.GetSpacing()[:3]),
        item * max(1, int(r.GetNumberOfComponents())),
        name,
        _direction_matrix(r.GetDirection()),
    )


_ITK_ELEMENTS = {
    "int8": ("sitkInt8", "sitkVectorInt8"),
    "uint8": ("sitkUInt8", "sitkVectorUInt8", "sitkLabelUInt8"),
    "int16": ("sitkInt16", "sitkVectorInt16"),
    "uint16": ("sitkUInt16", "sitkVectorUInt16", "sitkLabelUInt16"),
    "int32": ("sitkInt32", "sitkVectorInt32"),
    "uint32": ("sitkUInt32", "sitkVectorUInt32", "sitkLabelUInt32"),
    "int64": ("sitkInt64", "sitkVectorInt64"),
    "uint64": ("sitkUInt64", "sitkVectorUInt64", "sitkLabelUInt64"),
    "float32": ("sitkFloat32", "sitkVectorFloat32"),
    "float64": ("sitkFloat64", "sitkVectorFloat64"),
    "complex64": ("sitkComplexFloat32",),
    "complex128": ("sitkComplexFloat64",),
}
_ITK_ELEMENT_OF = {
    getattr(sitk, const): name
    for name, consts in _ITK_ELEMENTS.items()
    for const in consts
    if hasattr(sitk, const)
}


def _itk_element(pixel_id: int) -> tuple[str, int]:
    """``(numpy name, bytes per component)`` of a SimpleITK pixel id (8 bytes when unknown: conservative)."""
    name = _ITK_ELEMENT_OF.get(pixel_id)
    return (name, np.dtype(name).itemsize) if name else (f"pixel type {pixel_id}", 8)


# --------------------------------------------------------------------------------------------- NIfTI
_NIFTI_UNIT_MM = {1: 1000.0, 2: 1.0, 3: 0.001}  # xyzt_units & 7: metre, mm, micron (as ITK scales them)


def _nifti(path: Path) -> Header:
    from pipelines.imaging.nifti_checks import raw_nifti_header

    hdr = raw_nifti_header(path, gz=path.name.lower().endswith(".gz"))
    ndim = int(hdr["dim"][0])
    if not 1 <= ndim <= 7:
        raise ImageReadError(path, f"NIfTI header has dim[0] = {ndim}, not 1-7")
    size = tuple(int(v) for v in hdr["dim"][1 : ndim + 1])
    if any(v < 1 for v in size):
        raise ImageReadError(path, f"NIfTI header sizes {size} are not positive")
    dtype = hdr.get_data_dtype()
    scale = _NIFTI_UNIT_MM.get(int(hdr["xyzt_units"]) & 7, 1.0)
    spacing = tuple(float(v) * scale for v in hdr["pixdim"][1 : 1 + min(ndim, 3)])
    direction = None
    if int(hdr["sform_code"]) > 0 and ndim >= 3:
        m = np.array([hdr["srow_x"][:3], hdr["srow_y"][:3], hdr["srow_z"][:3]], dtype=float)
        direction = _unit_columns(m)  # SimpleITK silently reads the qform instead when the sform is sheared
    return Header(size, spacing, int(dtype.itemsize), _dtype_name(dtype), direction)


def _dtype_name(dtype: np.dtype) -> str:
    return str(dtype.name) if dtype.fields is None else f"{len(dtype.fields)}-component {dtype.itemsize}-byte"


# --------------------------------------------------------------------------------------------- MetaImage
_MET_ELEMENTS = {
    "MET_CHAR": "int8",
    "MET_UCHAR": "uint8",
    "MET_SHORT": "int16",
    "MET_USHORT": "uint16",
    "MET_INT": "int32",
    "MET_UINT": "uint32",
    "MET_LONG": "int32",
    "MET_ULONG": "uint32",
    "MET_LONG_LONG": "int64",
    "MET_ULONG_LONG": "uint64",
    "MET_FLOAT": "float32",
    "MET_DOUBLE": "float64",
}


def _text_head(path: Path) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(_HEADER_BYTES)


def _metaimage(path: Path) -> Header:
    fields: dict[str, str] = {}
    for line in _text_head(path).split(b"\n"):
        key, sep, value = line.partition(b"=")
        if not sep:
            continue
        name = key.strip().decode("latin-1")
        fields[name] = value.strip().decode("latin-1")
        if name == "ElementDataFile":
            break  # binary voxel data may follow in a .mha
    ndims = int(fields["NDims"])
    size = tuple(int(v) for v in fields["DimSize"].split())
    if len(size) != ndims or any(v < 1 for v in size):
        raise ValueError("DimSize does not match NDims")
    spacing_text = fields.get("ElementSpacing") or fields.get("ElementSize") or " ".join(["1"] * ndims)
    spacing = tuple(float(v) for v in spacing_text.split())[: min(ndims, 3)]
    element = _MET_ELEMENTS[fields["ElementType"].removesuffix("_ARRAY")]
    channels = int(fields.get("ElementNumberOfChannels", "1"))
    matrix_text = fields.get("TransformMatrix") or fields.get("Rotation") or fields.get("Orientation")
    direction = None
    if matrix_text and ndims == 3:
        direction = np.asarray([float(v) for v in matrix_text.split()], dtype=float).reshape(3, 3)
    return Header(size, spacing, np.dtype(element).itemsize * max(1, channels), element, direction)


# --------------------------------------------------------------------------------------------- NRRD
_NRRD_ELEMENTS = {
    "int8": ("signed char", "int8", "char"),
    "uint8": ("uchar", "unsigned char", "uint8"),
    "int16": ("short", "short int", "signed short", "signed short int", "int16"),
    "uint16": ("ushort", "unsigned short", "unsigned short int", "uint16"),
    "int32": ("int", "signed int", "int32"),
    "uint32": ("uint", "unsigned int", "uint32"),
    "int64": ("longlong", "long long", "long long int", "signed long long", "signed long long int", "int64"),
    "uint64": ("ulonglong", "unsigned long long", "unsigned long long int", "uint64"),
    "float32": ("float",),
    "float64": ("double",),
}
_NRRD_ELEMENT_OF = {alias: name for name, aliases in _NRRD_ELEMENTS.items() for alias in aliases}
_NRRD_VECTOR = re.compile(r"\(([^)]*)\)|none")


def _nrrd(path: Path) -> Header:
    head = _text_head(path)
    if not head.startswith(b"NRRD"):
        raise ValueError("no NRRD magic")
    fields: dict[str, str] = {}
    for line in head.split(b"\n\n", 1)[0].split(b"\n")[1:]:
        key, sep, value = line.partition(b": ")
        if sep and not line.startswith(b"#"):
            fields[key.strip().decode("latin-1").lower()] = value.strip().decode("latin-1")
    ndim = int(fields["dimension"])
    size = tuple(int(v) for v in fields["sizes"].split())
    if len(size) != ndim or any(v < 1 for v in size):
        raise ValueError("sizes do not match dimension")
    element = _NRRD_ELEMENT_OF[fields["type"].lower().replace("_t", "").strip()]
    vectors = [
        None if m.group(0) == "none" else [float(v) for v in m.group(1).split(",")]
        for m in _NRRD_VECTOR.finditer(fields.get("space directions", ""))
    ]
    axes = [np.asarray(v, dtype=float) for v in vectors if v is not None]
    if axes:
        spacing = tuple(float(np.linalg.norm(a)) for a in axes)[:3]
    else:
        spacing = tuple(float(v) for v in fields.get("spacings", "").split() if v.lower() != "nan")[:3]
    ok = len(axes) == 3 and all(a.size == 3 for a in axes)
    direction = _unit_columns(np.stack(axes, axis=1)) if ok else None
    return Header(size, spacing, np.dtype(element).itemsize, element, direction)
