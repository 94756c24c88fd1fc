"""``--dicom-out``: a case's DICOM SEG and SR objects, filed with the source study.

:func:`write_dicom_outputs` writes, into ``<case_dir>/dicom/``:

* ``lungs.seg.dcm``: right and left lung (:mod:`pipelines.export.dicom_seg`);
* ``nodules.seg.dcm``: one segment per nodule (only when there are nodules);
* ``nodules.sr.dcm``: the TID 1500 measurement report (:mod:`pipelines.export.dicom_sr`).

They copy the source's patient and study identifiers (PatientID, PatientName, StudyInstanceUID, ...): a PACS
files them with the study they came from. That is why the export is opt-in. Each file is written atomically.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from pipelines.export.dicom_source import (
    DicomExportError,
    as_grid_and_array,
    frames_on_source,
    read_source_series,
)

__all__ = ["DicomExportError", "write_dicom_outputs", "DICOM_FOLDER"]

DICOM_FOLDER = "dicom"


def _check_nodule_ids(nodule_rows: Sequence[Mapping[str, Any]], nodule_frames: np.ndarray) -> None:
    ids = [int(row["nodule_id"]) for row in nodule_rows]
    if ids != list(range(1, len(ids) + 1)):
        raise DicomExportError(f"nodule ids must run 1..{len(ids)} in order (as in nodules.csv), not {ids}")
    present = set(np.unique(nodule_frames).tolist()) - {0}
    if present - set(ids):
        raise DicomExportError(
            f"nodules mask holds labels {sorted(present - set(ids))} that no nodule row has"
        )
    if set(ids) - present:
        raise DicomExportError(f"nodules {sorted(set(ids) - present)} have no voxel in the nodules mask")


def _save(dataset: Any, path: Path) -> Path:
    from pipelines.imaging.filesys import atomic_write

    with atomic_write(path) as tmp:
        dataset.save_as(tmp, enforce_file_format=True)
    return path


def write_dicom_outputs(
    case_dir: str | os.PathLike[str],
    *,
    source_files: Sequence[str | os.PathLike[str]],
    lungs: sitk.Image | np.ndarray,
    nodules: sitk.Image | np.ndarray,
    nodule_rows: Sequence[Mapping[str, Any]],
    category: str,
    grid: sitk.Image | None = None,
) -> dict[str, Path]:
    """Write the case's DICOM SEG (lungs; nodules) and SR (TID 1500) into ``<case_dir>/dicom/``.

    Args:
        case_dir: the case's output folder.
        source_files: the DICOM files of the input series (any order).
        lungs: lung labels (1 right, 2 left) on the input's exact grid: a SimpleITK image, or an array
            ``[z, y, x]`` on ``grid``.
        nodules: nodule instance labels 1..N (N = ``len(nodule_rows)``), same grid.
        nodule_rows: the rows of ``nodules.csv`` / ``nodules.json`` (``NODULE_COLUMNS``; text or numbers),
            ``nodule_id`` 1..N in order.
        category: the case's Lung-RADS v2022 category (``"1"``..``"4X"``, ``"0"``).
        grid: the input image (its geometry), needed only when a mask is an array.

    Returns:
        ``{"lungs_seg": path, "nodules_seg": path, "sr": path}`` (``nodules_seg`` absent without nodules).

    Raises:
        DicomExportError: a source file that is not DICOM, several series, or masks not on the series' grid.
    """
    import highdicom as hd

    from pipelines.export import dicom_seg, dicom_sr

    source = read_source_series(source_files)
    lung_grid, lung_array = as_grid_and_array(lungs, grid)
    nodule_grid, nodule_array = as_grid_and_array(nodules, grid)
    lung_frames = frames_on_source(lung_array, lung_grid, source)
    if lung_frames.max(initial=0) > 2 or lung_frames.min(initial=0) < 0:
        raise DicomExportError("lungs mask must hold labels 0, 1 (right) and 2 (left) only")
    nodule_frames = frames_on_source(nodule_array, nodule_grid, source)
    _check_nodule_ids(nodule_rows, nodule_frames)
    if not nodule_rows and not lung_frames.any():
        raise DicomExportError("nothing to export: the lungs mask is empty and there are no nodules")

    folder = Path(case_dir) / DICOM_FOLDER
    seg_series = hd.UID()
    lungs_seg = dicom_seg.build_segmentation(
        source, lung_frames.astype(np.uint8), dicom_seg.lung_segments(), series_uid=seg_series,
        instance_number=1, label="LUNGS", description="Right and left lung (lungscreen)",
    )  # fmt: skip
    paths = {"lungs_seg": _save(lungs_seg, folder / "lungs.seg.dcm")}
    tracking = {int(row["nodule_id"]): hd.UID() for row in nodule_rows}
    nodules_seg = None
    if nodule_rows:
        labels = nodule_frames.astype(dicom_seg.label_dtype(len(nodule_rows)))
        nodules_seg = dicom_seg.build_segmentation(
            source, labels, dicom_seg.nodule_segments(nodule_rows, tracking), series_uid=seg_series,
            instance_number=2, label="NODULES", description="Lung nodules, one segment each (lungscreen)",
        )  # fmt: skip
        paths["nodules_seg"] = _save(nodules_seg, folder / "nodules.seg.dcm")
    voxel_ml = float(np.prod(lung_grid.GetSpacing())) / 1000.0
    volumes = {number: float(np.count_nonzero(lung_array == number)) * voxel_ml for number in (1, 2)}
    report = dicom_sr.measurement_report(
        nodule_rows, category=category, lungs_seg=lungs_seg, lung_volumes_ml=volumes,
        nodule_seg=nodules_seg, tracking_uids=tracking,
    )  # fmt: skip
    evidence = [lungs_seg] + ([nodules_seg] if nodules_seg is not None else [])
    paths["sr"] = _save(dicom_sr.build_sr(source, report, evidence=evidence), folder / "nodules.sr.dcm")
    return paths
