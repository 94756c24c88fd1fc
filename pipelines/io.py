"""Reading scans of any format and orientation, writing results in the original geometry, atomically.

Every scan enters through :func:`read_image` (NIfTI, MetaImage, NRRD, a DICOM series folder or a single
DICOM file) and is validated there, so a bad file fails with an :class:`ImageReadError` that names it.
Work happens on the *canonical* grid (:func:`to_canonical`: SimpleITK ``DICOMOrient`` to ``LPS``, arrays
indexed ``[z, y, x]``); results go back to the file's own grid with :func:`from_canonical`, which restores
the exact size, spacing, origin and direction of the input.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import stat
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import SimpleITK as sitk

if TYPE_CHECKING:
    from pipelines.io_header import Header

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".mhd", ".mha", ".nrrd", ".nhdr")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima", "")

# DICOM tags read for series selection. Identifying attributes (names, IDs, dates) are never read.
_TAG_MODALITY = "0008|0060"
_TAG_IMAGE_TYPE = "0008|0008"
_TAG_SERIES_UID = "0020|000e"


class ImageReadError(ValueError):
    """A scan could not be read or is not a usable 3D image; the message names the file."""

    def __init__(self, path: str | os.PathLike[str], reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


@dataclass
class CaseInput:
    """One scan to process.

    Attributes:
        case_id: the scan's path relative to the folder given, without extension, folders joined by ``_``
            (:func:`discover_cases`), plus ``_<hash>`` of the SeriesInstanceUID when a folder holds several series;
            safe as a folder name (:func:`safe_case_id`); never a patient identifier read from a header.
        path: the image file or the DICOM folder.
        dicom_files: the ordered slice files of a DICOM series (empty for single-file formats).
        notes: reasons why something was skipped next to this case (localizers, non-CT series).
        image: an in-memory image (then ``path`` is ``<memory>``).
        modality: the DICOM Modality (``CT``, ``MR``, ...) of a DICOM series; empty for other formats.
    """

    case_id: str
    path: Path
    dicom_files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    image: sitk.Image | None = None
    modality: str = ""

    @property
    def is_dicom(self) -> bool:
        return bool(self.dicom_files)


# --------------------------------------------------------------------------------------------- writing
def _default_file_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


_FILE_MODE = _default_file_mode()


#: Test hook: when set, called as ``before_replace(temporary, final)`` just before every rename of
#: :func:`atomic_write`, so a test can stop the process exactly at a rename point (``os._exit``) and check
#: that a rerun recovers. None in normal use.
before_replace: Callable[[Path, Path], None] | None = None


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], *, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only when the block succeeds.

    The temporary name keeps the final extension (SimpleITK picks the writer from it) and starts with
    ``.tmp-`` so an interrupted run never leaves a file that looks complete.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    ext = suffix if suffix is not None else _full_suffix(final)
    fd, tmp_name = tempfile.mkstemp(prefix=f".tmp-{final.name}-", suffix=ext, dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, _FILE_MODE)  # mkstemp makes 0600; outputs are shared like any file the user writes
    try:
        yield tmp
        if before_replace is not None:
            before_replace(tmp, final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_write(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_image(image: sitk.Image, path: str | os.PathLike[str], *, compress: bool = True) -> Path:
    """Write a SimpleITK image atomically (``.nii.gz`` compressed unless ``compress=False``).

    MetaImage (``.mhd``) is written with its ``.raw`` companion; both are renamed into place.
    """
    final = Path(path)
    if _full_suffix(final) == ".mhd":
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
            if before_replace is not None:
                before_replace(produced, final.parent / produced.name)
            os.replace(produced, final.parent / produced.name)  # data first, header last
    finally:
        for leftover in tmp_dir.glob("*"):
            leftover.unlink()
        tmp_dir.rmdir()
    return final


def _full_suffix(path: Path) -> str:
    name = path.name.lower()
    for ext in (".nii.gz", ".tar.gz"):
        if name.endswith(ext):
            return ext
    return path.suffix.lower()


def strip_image_suffix(name: str) -> str:
    """``case.nii.gz`` -> ``case``; ``case.mhd`` -> ``case``."""
    lower = name.lower()
    for ext in IMAGE_SUFFIXES:
        if lower.endswith(ext):
            return name[: -len(ext)]
    return name


# --------------------------------------------------------------------------------------------- reading
_SPECIAL_KINDS = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def special_file_kind(path: str | os.PathLike[str]) -> str:
    """``"a FIFO (named pipe)"``, ``"a socket"``, ``"a character device"``, ``"a block device"``, or ``""``.

    Decided by ``stat`` (following links) without opening the file: opening a FIFO blocks until someone
    writes to it, and a device such as ``/dev/zero`` never ends.
    """
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return ""  # missing or a dangling link: the reader says so
    return next((kind for test, kind in _SPECIAL_KINDS if test(mode)), "")


def is_special_file(path: str | os.PathLike[str]) -> bool:
    """True for a FIFO, socket or device (never opened by this package)."""
    return bool(special_file_kind(path))


def skip_special_file(path: str | os.PathLike[str], notes: list[str]) -> bool:
    """True (and a note appended to ``notes``) when ``path`` is a special file that discovery must skip."""
    kind = special_file_kind(path)
    if kind:
        notes.append(f"skipped {path}: {kind}, not a regular file (never opened)")
    return bool(kind)


def _refuse_special(path: str | os.PathLike[str]) -> None:
    kind = special_file_kind(path)
    if kind:
        raise ImageReadError(path, f"{kind}, not a regular file: refused without opening it")


def read_image(
    path: str | os.PathLike[str], *, dicom_files: list[str] | None = None, max_voxels: int | None = None
) -> sitk.Image:
    """Read a 3D scan and validate it; the header is checked before any voxel is read.

    Args:
        path: a NIfTI/MetaImage/NRRD file, a folder holding one DICOM series, or a DICOM file.
        dicom_files: explicit ordered slice files (from :func:`discover_cases`) for a DICOM series.
        max_voxels: refuse, from the header, images with more voxels (every dimension) or more than
            ``2 * max_voxels`` bytes (:func:`pipelines.io_header.check_limits`); ``None``: no limit here
            (the screening engine checks its setting with :func:`check_size` first).

    Returns:
        The image in its own on-disk geometry (SimpleITK: LPS world, spacing ``(x, y, z)`` in mm).

    Raises:
        ImageReadError: naming the file, for a missing/empty/corrupt/truncated file, a FIFO/socket/device, a
            non-image file, an image that is not 3D (2D or 4D), too large, non-finite voxels, a spacing outside
            0.05-20 mm, a sheared direction, or a gantry-tilted DICOM series.
    """
    p = Path(path)
    _refuse_special(p)
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
            if _full_suffix(p) in (".nii", ".nii.gz"):
                from pipelines.io_nifti import check_nifti_file

                check_nifti_file(p)
            image = sitk.ReadImage(str(p))
    except ImageReadError:
        raise
    except RuntimeError as err:  # SimpleITK raises RuntimeError with a long ITK trace
        raise ImageReadError(p, f"cannot read image: {_first_line(str(err))}") from None
    validate_image(image, p)
    return image


def _check_header(path: Path, *, dicom_files: list[str] | None, max_voxels: int | None) -> None:
    """Header-only checks before reading (limits, spacing, shear); an unreadable header is left to the reader."""
    from pipelines import io_header

    _refuse_special(dicom_files[0] if dicom_files else path)
    try:
        header = io_header.read_header(path, dicom_files=dicom_files)
    except ImageReadError:
        return  # the reader below gives the precise reason
    if max_voxels is not None:
        io_header.check_limits(header, path, max_voxels=max_voxels)
    io_header.check_geometry(header, path)


_ITK_NOISE = re.compile(r"^(Exception thrown in SimpleITK \S+:\s*)?\S+\.(cxx|hxx|h|cpp|txx):\d+:?$")
_ITK_PREFIX = re.compile(r"^(sitk::ERROR:|ITK ERROR:\s*\w+\(0x[0-9a-fA-F]+\):|Description:)\s*")


def _first_line(msg: str) -> str:
    """The human part of a SimpleITK/ITK exception: no source paths, no object addresses, one line."""
    for line in msg.splitlines():
        line = line.strip()
        if not line or _ITK_NOISE.match(line):
            continue
        line = _ITK_PREFIX.sub("", line)
        if line.startswith("Unable to determine ImageIO reader"):
            return "not a readable image (no reader recognises its content: corrupt or not an image)"
        if line:
            return line[:200]
    return " ".join(msg.split())[:200]


def validate_image(image: sitk.Image, path: str | os.PathLike[str] = "<memory>") -> None:
    """Raise :class:`ImageReadError` unless ``image`` is a finite, scalar, 3D volume with a spacing of 0.05-20 mm
    per axis and an orthonormal direction (limits in :mod:`pipelines.io_header`)."""
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
    from pipelines.io_header import direction_problem, spacing_problem

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
    from pipelines.dicom_geometry import check_dicom_slices

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


# --------------------------------------------------------------------------------------------- discovery
def discover_cases(root: str | os.PathLike[str] | list, *, recursive: bool = True) -> list[CaseInput]:
    """List the scans under ``root``: image files and DICOM series (a folder with several series is split).

    Args:
        root: a folder, one image file, one DICOM folder, or a list of those.
        recursive: walk sub-folders.

    Returns:
        Cases sorted by ``case_id``; localizer and non-CT DICOM series, and special files (FIFOs, devices,
        sockets: never opened) are left out with a note on the case list (``notes`` of the first case of that
        folder, or of the first case overall when nothing else is in that folder) and a logged warning.

    Case ids are readable and stable: a scan's path relative to the folder given, without the image extension,
    folders joined by ``_`` (``IN/patB/ct.nii.gz`` is ``patB_ct``; a file or DICOM folder given directly is its
    own name), so an id never depends on which other scans are present. They are never ``.``/``..``, never
    hold a path separator or start with a dot (:func:`safe_case_id`). Two scans never share an id: when two
    names meet (``a.nii.gz`` beside ``a.mhd``), each gets the short hash of its resolved path
    (``a_1f3e0c2d``); the same scan given twice is listed once.
    """
    roots = root if isinstance(root, list | tuple) else [root]
    cases: list[CaseInput] = []
    orphans: list[str] = []  # notes of folders whose every series was skipped
    for r in roots:
        p = Path(r)
        if is_special_file(p):  # named by the user: a failed case with its reason (never opened), not a skip
            cases.append(CaseInput(safe_case_id(strip_image_suffix(p.name)), p))
        elif p.is_file() and not _looks_like_dicom_file(p):
            cases.append(CaseInput(safe_case_id(strip_image_suffix(p.name)), p))
        elif p.is_file():
            cases.extend(_dicom_cases(p.parent, orphans, only_file=p, root=p.parent))
        elif p.is_dir():
            cases.extend(_walk(p, orphans, recursive=recursive))
        else:
            cases.append(CaseInput(safe_case_id(strip_image_suffix(p.name)), p))  # fails later, clearly
    cases = unique_case_ids(_drop_repeats(cases))
    for note in orphans:
        logging.getLogger("lungscreen").warning("%s", note)
    if cases:
        cases[0].notes.extend(orphans)
    return cases


_UNSAFE_ID_CHARS = re.compile(r"[\x00-\x1f\x7f/\\]")
MAX_CASE_ID_BYTES = 100  # a case id names folders and temporary files (<= 255 bytes with prefixes)


def safe_case_id(text: str) -> str:
    """``text`` made usable as a folder name inside OUT: never empty, ``.``/``..`` or hidden, no path separator.

    Control characters and ``/``, ``\\`` become ``_``; leading dots become ``_`` (``...nii.gz`` -> ``__``);
    an id longer than :data:`MAX_CASE_ID_BYTES` (UTF-8) is cut and given the short hash of the whole text.
    Other characters (``#``, ``%``, ``$``, ``=``, spaces, non-ASCII) are kept: tables and links escape them.
    """
    safe = _UNSAFE_ID_CHARS.sub("_", text)
    stripped = safe.lstrip(".")
    safe = "_" * (len(safe) - len(stripped)) + stripped
    if not safe:
        return "_"
    if len(safe.encode()) > MAX_CASE_ID_BYTES:
        digest = hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:8]
        cut = safe
        while len(cut.encode()) > MAX_CASE_ID_BYTES - 9:
            cut = cut[:-1]
        safe = f"{cut}_{digest}"
    return safe


def relative_case_id(path: Path, root: Path) -> str:
    """The id of a scan at ``path`` found under the folder ``root``: its relative path without the image
    extension, folders joined by ``_`` (``root/patB/ct.nii.gz`` -> ``patB_ct``); ``root`` itself gives its own
    name (a DICOM folder given directly)."""
    try:
        parts = list(path.relative_to(root).parts)
    except ValueError:
        parts = []
    if not parts:
        return safe_case_id(strip_image_suffix(path.name or path.resolve().name))
    parts[-1] = strip_image_suffix(parts[-1])
    return safe_case_id("_".join(parts))


def _walk(root: Path, orphans: list[str], *, recursive: bool) -> list[CaseInput]:
    found: list[CaseInput] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        folder = Path(dirpath)
        dicom_like = []
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            f = folder / name
            if skip_special_file(f, orphans):
                continue
            lower = name.lower()
            if lower.endswith(".raw") or lower.endswith(".zraw"):
                continue
            if any(lower.endswith(ext) for ext in IMAGE_SUFFIXES):
                found.append(CaseInput(relative_case_id(f, root), f))
            elif _looks_like_dicom_file(f):
                dicom_like.append(f)
        if dicom_like:
            found.extend(_dicom_cases(folder, orphans, root=root))
        if not recursive:
            break
    return found


def _looks_like_dicom_file(path: Path) -> bool:
    if path.suffix.lower() in (".dcm", ".dicom", ".ima"):
        return True
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _dicom_cases(
    folder: Path, orphans: list[str], *, root: Path, only_file: Path | None = None
) -> list[CaseInput]:
    base = relative_case_id(folder, root)
    try:
        series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    except RuntimeError:
        series_ids = ()
    if not series_ids:
        return [CaseInput(base, folder, notes=["no readable DICOM series"])]
    cases, notes = [], []
    for uid in series_ids:
        files = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid))
        if only_file is not None and str(only_file) not in files:
            continue
        skip, modality = _skip_reason(files[0])
        if skip:
            notes.append(f"skipped series {series_hash(uid)} in {folder.name}: {skip}")
            continue
        case_id = base if len(series_ids) == 1 else f"{base}_{series_hash(uid)}"
        cases.append(CaseInput(case_id, folder, dicom_files=files, modality=modality))
    if cases:
        cases[0].notes.extend(notes)
    else:
        orphans.extend(notes)
    return cases


def _skip_reason(first_file: str) -> tuple[str, str]:
    """``(why the series is skipped or "", its DICOM Modality or "")`` from the first file's header."""
    r = sitk.ImageFileReader()
    r.SetFileName(first_file)
    try:
        r.ReadImageInformation()
    except RuntimeError:
        return "", ""
    modality = r.GetMetaData(_TAG_MODALITY).strip().upper() if r.HasMetaDataKey(_TAG_MODALITY) else ""
    image_type = r.GetMetaData(_TAG_IMAGE_TYPE).upper() if r.HasMetaDataKey(_TAG_IMAGE_TYPE) else ""
    if "LOCALIZER" in image_type or "SCOUT" in image_type:
        return "localizer", modality
    if modality and modality not in ("CT", "MR", "PT"):
        return f"modality {modality} is not a 3D CT/MR series", modality
    return "", modality


def series_hash(series_uid: str) -> str:
    """Short, non-identifying id for a SeriesInstanceUID (first 12 hex digits of its SHA-256)."""
    return hashlib.sha256(series_uid.encode()).hexdigest()[:12]


def _identity(case: CaseInput) -> tuple[str, tuple[str, ...]]:
    return str(Path(case.path).resolve()), tuple(str(Path(f).resolve()) for f in case.dicom_files)


def _drop_repeats(cases: list[CaseInput]) -> list[CaseInput]:
    """The same scan listed twice (a file given twice, or given and also inside a folder given) once."""
    seen: set[tuple[str, tuple[str, ...]]] = set()
    kept = []
    for c in cases:
        key = _identity(c)
        if key not in seen:
            seen.add(key)
            kept.append(c)
    return kept


def unique_case_ids(cases: list[CaseInput]) -> list[CaseInput]:
    """Give each case of a shared id the short hash of its resolved path; return the cases sorted by id.

    The hash depends on the scan alone, so a case's id is the same whichever other scans meet it.
    """
    groups: dict[str, list[CaseInput]] = {}
    for c in cases:
        groups.setdefault(c.case_id, []).append(c)
    for case_id, members in groups.items():
        if len(members) > 1:
            for c in members:
                key = "|".join([_identity(c)[0], *_identity(c)[1][:1]])
                c.case_id = (
                    f"{case_id}_{hashlib.sha256(key.encode('utf-8', 'surrogateescape')).hexdigest()[:8]}"
                )
    taken: set[str] = set()
    for c in sorted(cases, key=lambda c: (c.case_id, str(c.path))):
        base, n = c.case_id, 1
        while c.case_id in taken:  # a hashed id equal to another scan's plain name: practically never
            n += 1
            c.case_id = f"{base}_{n}"
        taken.add(c.case_id)
    return sorted(cases, key=lambda c: (c.case_id, str(c.path)))


def _case_header(case: CaseInput) -> Header:
    from pipelines.io_header import Header, read_header

    if case.image is not None:
        return Header.of_image(case.image)
    if case.dicom_files:
        _refuse_special(case.dicom_files[0])
    else:
        _refuse_special(case.path)
    return read_header(case.path, dicom_files=case.dicom_files or None)


def peek_size(case: CaseInput) -> tuple[int, int, int]:
    """Image size ``(x, y, z)`` from the header only (no voxel data is read; a special file is never opened)."""
    size = _case_header(case).size
    return tuple((list(size) + [1, 1])[:3])  # type: ignore[return-value]


def check_size(case: CaseInput, *, max_voxels: int) -> None:
    """Refuse, from the header, a scan larger than ``max_voxels`` voxels (every dimension) or ``2 * max_voxels``
    bytes (bounded memory per case; :func:`pipelines.io_header.check_limits`). A FIFO, socket or device is
    refused without being opened; a header that cannot be read is left to :func:`read_image` to explain."""
    from pipelines.io_header import check_limits

    path = Path(case.path)
    if case.image is None and not case.dicom_files and (path.is_dir() or not path.exists()):
        return  # a folder or a missing file: read_image will explain what is wrong with it
    if case.image is None and path.is_file() and path.stat().st_size == 0:
        return
    try:
        header = _case_header(case)
    except ImageReadError as err:
        if is_special_file(err.path):
            raise
        return  # read_image gives the precise reason
    check_limits(header, case.path, max_voxels=max_voxels)
