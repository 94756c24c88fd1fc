"""Finding the cases in what the user gave: files, folders of files, DICOM series; case ids; size checks.

A case id is the scan's path under the folder given (folders joined by ``_``), safe as a folder name and never
a patient identifier read from a header. Special files are skipped with a note, never opened; a DICOM folder
holding several series gives one case per CT series, localizers and non-CT series are skipped with a reason.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import SimpleITK as sitk

from pipelines.imaging.filesys import (
    IMAGE_SUFFIXES,
    ImageReadError,
    is_special_file,
    refuse_special,
    skip_special_file,
    strip_image_suffix,
)

if TYPE_CHECKING:
    from pipelines.imaging.header import Header

_TAG_MODALITY = "0008|0060"
_TAG_IMAGE_TYPE = "0008|0008"


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
    from pipelines.imaging.header import Header, read_header

    if case.image is not None:
        return Header.of_image(case.image)
    if case.dicom_files:
        refuse_special(case.dicom_files[0])
    else:
        refuse_special(case.path)
    return read_header(case.path, dicom_files=case.dicom_files or None)


def peek_size(case: CaseInput) -> tuple[int, int, int]:
    """Image size ``(x, y, z)`` from the header only (no voxel data is read; a special file is never opened)."""
    size = _case_header(case).size
    return tuple((list(size) + [1, 1])[:3])  # type: ignore[return-value]


def check_size(case: CaseInput, *, max_voxels: int) -> None:
    """Refuse, from the header, a scan larger than ``max_voxels`` voxels (every dimension) or ``2 * max_voxels``
    bytes (bounded memory per case; :func:`pipelines.imaging.header.check_limits`). A FIFO, socket or device is
    refused without being opened; a header that cannot be read is left to :func:`read_image` to explain."""
    from pipelines.imaging.header import check_limits

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
