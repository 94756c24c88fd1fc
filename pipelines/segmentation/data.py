"""Cases of the generic segmentation recipe: channel grouping (nnU-Net names), label pairing, loading.

Folder layout (as nnU-Net): ``images/case_0000.nii.gz``, ``images/case_0001.nii.gz`` ... are the channels of
``case`` (e.g. several MRI sequences), ``labels/case.nii.gz`` its label map. A single-channel case may also be
named ``case.nii.gz``. Every channel and the label must share one geometry (size, spacing, origin,
direction); otherwise loading fails with an :class:`pipelines.imaging.filesys.ImageReadError` naming the file.

Loaded arrays are on the canonical grid (:func:`pipelines.imaging.io.to_canonical`): images ``[C, z, y, x]`` float32,
labels ``[z, y, x]`` int64, spacing ``(z, y, x)`` in mm.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from pipelines.imaging import discovery, filesys, io
from pipelines.imaging.preprocess import CaseGeometry

CHANNEL_RE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
GEOMETRY_ATOL = 1e-3


@dataclass
class SegCase:
    """One case: its ordered channels, its label map (training) and why it cannot be used, if so.

    Attributes:
        case_id: name without the ``_0000`` channel suffix and extension.
        channels: channel ``c`` is ``channels[c]`` (``case_000c``).
        label: label map path (training) or None.
        problem: a one-line reason when the files do not form a usable case (missing channel numbers).
    """

    case_id: str
    channels: list[discovery.CaseInput] = field(default_factory=list)
    label: Path | None = None
    problem: str | None = None

    @property
    def path(self) -> Path:
        """Path of channel 0 (for messages and failure records)."""
        return Path(self.channels[0].path) if self.channels else Path(self.case_id)


@dataclass
class LoadedCase:
    """A case on the canonical grid.

    Attributes:
        case_id: the case name.
        image: ``[C, z, y, x]`` float32 (HU for CT, a.u. for MRI, N4-corrected when asked).
        label: ``[z, y, x]`` int64 label values, or None.
        geometry: original and canonical headers; crop box = whole volume, network fields = canonical grid.
    """

    case_id: str
    image: np.ndarray
    label: np.ndarray | None
    geometry: CaseGeometry

    @property
    def spacing_zyx(self) -> tuple[float, float, float]:
        return io.spacing_zyx(self.geometry.canonical)


# ------------------------------------------------------------------------------------------- discovery
def group_channels(
    inputs: Sequence[discovery.CaseInput], *, num_channels: int | None = None
) -> list[SegCase]:
    """Group discovered scans into cases by nnU-Net channel suffixes (``_0000``, ``_0001``...).

    Args:
        inputs: scans from :func:`pipelines.imaging.discovery.discover_cases`.
        num_channels: channels per case expected by a model. With 1, every file is its own case (so that
            ``scan_0000``, ``scan_0001`` are two scans, not two channels); a lone ``case_0000`` is named ``case``.
            With None the suffixes decide.

    A lone file whose suffix is not ``_0000`` (``scan_2024.nii.gz``) is a single-channel case named by its
    whole stem. A group whose channel numbers are not ``0..C-1`` gets a ``problem``.
    """
    groups: dict[str, list[tuple[int, discovery.CaseInput]]] = defaultdict(list)
    plain: list[discovery.CaseInput] = []
    for c in inputs:
        m = CHANNEL_RE.match(c.case_id)
        if m:
            groups[m["case"]].append((int(m["channel"]), c))
        else:
            plain.append(c)
    cases = [SegCase(c.case_id, [c]) for c in plain]
    for name, members in groups.items():
        members.sort(key=lambda t: t[0])
        numbers = [n for n, _ in members]
        if len(members) == 1:
            only = members[0][1]
            cases.append(SegCase(name if numbers[0] == 0 else only.case_id, [only]))
        elif num_channels == 1:
            cases.extend(SegCase(c.case_id, [c]) for _, c in members)
        elif numbers != list(range(len(members))):
            found = ", ".join(f"_{n:04d}" for n in numbers)
            problem = f"channels {found} are not numbered consecutively from _0000"
            cases.append(SegCase(name, [c for _, c in members], problem=problem))
        else:
            cases.append(SegCase(name, [c for _, c in members]))
    ids = [case.case_id for case in cases]
    for case in cases:
        if ids.count(case.case_id) > 1 and case.problem is None:
            case.problem = f"case {case.case_id!r} exists both as a plain file and as channel files"
    return sorted(cases, key=lambda case: case.case_id)


def find_cases(
    root: str | Path | Sequence[str | Path], *, num_channels: int | None = None, recursive: bool = False
) -> list[SegCase]:
    """Discover scans under ``root`` (files, folders, DICOM series) and group their channels
    (:func:`group_channels`)."""
    found = discovery.discover_cases(
        root if isinstance(root, str | Path) else list(root), recursive=recursive
    )
    return group_channels(found, num_channels=num_channels)


def find_labelled_cases(images: str | Path, labels: str | Path) -> list[SegCase]:
    """Training cases: ``images/`` grouped into channels, each paired with ``labels/<case_id>``.

    When every image file has a label of its own full name (``scan_0000.nii.gz`` with ``scan_0000.nii.gz``),
    the files are single-channel cases; otherwise nnU-Net channel suffixes group them.
    """
    found = discovery.discover_cases(images, recursive=False)
    label_ids = _label_files(labels)
    if found and all(c.case_id in label_ids for c in found):
        cases = group_channels(found, num_channels=1)
        cases = [SegCase(c.channels[0].case_id, c.channels) for c in cases]
    else:
        cases = group_channels(found)
    return pair_labels(cases, labels)


def _label_files(labels_dir: str | Path) -> dict[str, Path]:
    folder = Path(labels_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"labels folder {folder} does not exist")
    return {
        filesys.strip_image_suffix(p.name): p for p in sorted(folder.iterdir()) if not p.name.startswith(".")
    }


def pair_labels(cases: Sequence[SegCase], labels_dir: str | Path) -> list[SegCase]:
    """Attach ``labels_dir/<case_id>.<ext>`` to every case.

    Raises:
        FileNotFoundError: when the folder is missing, or listing the cases without a label map.
        ValueError: when a case has a ``problem`` (training needs every case whole).
    """
    folder = Path(labels_dir)
    by_id = _label_files(folder)
    missing = [c.case_id for c in cases if c.case_id not in by_id]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} case(s) have no label map in {folder} (expected <case>.nii.gz): {missing[:10]}"
        )
    for c in cases:
        if c.problem:
            raise ValueError(f"case {c.case_id} ({c.path}): {c.problem}")
        c.label = by_id[c.case_id]
    return list(cases)


# ------------------------------------------------------------------------------------------- loading
def check_same_geometry(ref: io.ImageHeader, other: io.ImageHeader, *, path: str | Path, what: str) -> None:
    """Raise :class:`filesys.ImageReadError` unless two headers describe the same grid."""
    checks = (
        ("size", tuple(ref.size) == tuple(other.size)),
        ("spacing", np.allclose(ref.spacing, other.spacing, atol=GEOMETRY_ATOL)),
        ("origin", np.allclose(ref.origin, other.origin, atol=max(GEOMETRY_ATOL, 1e-3 * min(ref.spacing)))),
        ("direction", np.allclose(ref.direction, other.direction, atol=GEOMETRY_ATOL)),
    )
    for name, ok in checks:
        if not ok:
            raise filesys.ImageReadError(
                path,
                f"{what} {name} {getattr(other, name)} differs from channel 0's {getattr(ref, name)}; "
                "all channels and the label of a case must share one grid",
            )


def _read(case_input: discovery.CaseInput) -> sitk.Image:
    if case_input.image is not None:
        io.validate_image(case_input.image)
        return io.to_3d(case_input.image)
    return io.to_3d(io.read_image(case_input.path, dicom_files=case_input.dicom_files or None))


def load_case(case: SegCase, *, n4: bool = False, with_label: bool = True) -> LoadedCase:
    """Read every channel (and the label) onto the canonical grid, checking they share one geometry.

    Args:
        case: from :func:`find_cases` / :func:`pair_labels`.
        n4: apply N4 bias-field correction to every channel (MRI), before reorientation.
        with_label: read ``case.label`` (must be set).

    Raises:
        filesys.ImageReadError: naming the file, for unreadable files, mismatched grids or non-integer labels.
    """
    from pipelines.imaging.modality import n4_bias_correct

    if case.problem:
        raise filesys.ImageReadError(case.path, case.problem)
    arrays, original, canon_header = [], None, None
    for index, ci in enumerate(case.channels):
        img = _read(ci)
        header = io.ImageHeader.of(img)
        if original is None:
            original = header
        else:
            check_same_geometry(original, header, path=ci.path, what=f"channel {index:04d}")
        if n4:
            img = n4_bias_correct(img)
        canon = io.to_canonical(img)
        canon_header = canon_header or io.ImageHeader.of(canon)
        arrays.append(sitk.GetArrayFromImage(canon).astype(np.float32, copy=False))
    assert original is not None and canon_header is not None
    label = None
    if with_label:
        label = _load_label(case, original)
    image = np.stack(arrays)
    geometry = CaseGeometry(
        original=original,
        canonical=canon_header,
        crop_box=tuple((0, n) for n in image.shape[1:]),  # type: ignore[arg-type]
        network_shape=tuple(image.shape[1:]),  # type: ignore[arg-type]
        network_spacing_zyx=io.spacing_zyx(canon_header),
    )
    return LoadedCase(case.case_id, image, label, geometry)


def _load_label(case: SegCase, original: io.ImageHeader) -> np.ndarray:
    if case.label is None:
        raise filesys.ImageReadError(case.path, "no label map attached to this case")
    img = io.to_3d(io.read_image(case.label))
    check_same_geometry(original, io.ImageHeader.of(img), path=case.label, what="label")
    arr = sitk.GetArrayFromImage(io.to_canonical(img))
    if arr.dtype.kind == "f":
        if not np.array_equal(arr, np.round(arr)):
            raise filesys.ImageReadError(case.label, "label map holds non-integer values")
    if arr.min() < 0:
        raise filesys.ImageReadError(case.label, f"label map holds negative values (min {arr.min()})")
    return arr.astype(np.int64)
