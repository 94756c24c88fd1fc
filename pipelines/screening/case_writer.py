"""Write one screened case (masks, tables, report, ``result.json`` last) and the run-level files."""

from __future__ import annotations

import logging
import platform
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

import monai
import numpy as np
import SimpleITK as sitk
import torch

from pipelines.batch import records
from pipelines.export.markups import write_markups
from pipelines.imaging import discovery, filesys, io, writing
from pipelines.imaging.preprocess import CaseGeometry
from pipelines.nodules.record import Candidate
from pipelines.screening import outputs
from pipelines.screening.scoring import CaseResult
from pipelines.screening.settings import ScreeningSettings

log = logging.getLogger("lungscreen")


def write_case(
    *,
    output_dir: Path,
    case: discovery.CaseInput,
    data: dict[str, Any],
    result: CaseResult,
    settings: ScreeningSettings,
    timings: dict[str, float],
    bundle_version: str,
    write_start: float,
    fingerprint: str = "",
) -> Path:
    """Write every output of one case atomically; ``result.json`` goes last and marks the case complete.

    ``fingerprint`` (:func:`pipelines.batch.records.run_fingerprint`) is recorded in ``result.json``: a rerun skips the
    case only if its own fingerprint is the same.
    """
    from pipelines.nodules.extract import lung_zones
    from pipelines.nodules.lungrads import assign_categories
    from pipelines.screening.assessability import assess_case

    geometry: CaseGeometry = data["geometry"]
    folder = records.case_dir(output_dir, case.case_id)
    done = folder / "result.json"
    if done.exists():
        done.unlink()  # an overwrite: the case is incomplete until the new record lands
    records.remove_stale_temporaries(folder)  # left by a run killed while writing this case
    ext = ".nii.gz" if settings.compress else ".nii"
    spacing = io.spacing_zyx(geometry.canonical)
    assessment = assess_case(
        dicom_files=case.dicom_files, geometry=geometry, lung_labels_zyx=result.lung_mask
    )
    category = assign_categories(result.nodules, incomplete_reason=assessment.reason or None)
    for n, zone in zip(result.nodules, lung_zones(result.lung_mask, result.nodules)):
        n["lung_zone"] = zone
    # the masks on the input's own grid, made once: written here and, with dicom_out, exported as a SEG
    lungs_image = io.from_canonical(result.lung_mask, geometry.original, geometry.canonical)
    nodules_image = io.from_canonical(
        writing.smallest_label_dtype(result.nodule_mask), geometry.original, geometry.canonical
    )
    io.write_image(lungs_image, folder / f"lungs{ext}", compress=settings.compress)
    io.write_image(nodules_image, folder / f"nodules{ext}", compress=settings.compress)
    if settings.write_probability and result.probability is not None:
        writing.write_probability(
            result.probability.full(), geometry, folder / f"probability{ext}", compress=settings.compress
        )
    volumes = outputs.lung_volumes_ml(result.lung_mask, spacing)
    warnings: list[str] = result.warnings + list(case.notes) + list(assessment.warnings)
    if not assessment.assessable:
        warnings.append(f"not assessable (Lung-RADS 0): {assessment.reason}")
    meta = {
        "case_id": case.case_id,
        "bundle_version": bundle_version,
        "settings_sha256": settings.sha256(),
        "units": {
            "coordinates": "mm, ITK/DICOM LPS world frame (RAS given too)",
            "volume": "mm3",
            "hu": "HU",
        },
        "input_geometry": _geometry_dict(geometry),
        "assessment": assessment.to_dict(),
        "lung_rads": category,
        "warnings": warnings,
        **volumes,
    }
    public = [_public(n) for n in result.nodules]
    if settings.dicom_out:
        warnings += _export_dicom(folder, case, (lungs_image, nodules_image), public, category["category"])
    filesys.atomic_write_text(folder / "nodules.csv", records.to_csv(result.nodules, outputs.NODULE_COLUMNS))
    records.write_json(folder / "nodules.json", {**meta, "nodules": public})
    write_markups(folder, public, category=category["category"])
    filesys.atomic_write_text(
        folder / "candidates.csv",
        records.to_csv(result.candidates, outputs.CANDIDATE_COLUMNS),
    )
    report_rel = ""
    if settings.report:
        report_rel = write_report(folder, case, data, result, category, meta)
    timings["write"] = time.perf_counter() - write_start
    summary = {
        "case_id": case.case_id,
        "status": "ok",
        "nodule_count": len(result.nodules),
        "largest_nodule_mm": max((float(n["mean_diameter_mm"]) for n in result.nodules), default=0.0),
        "lung_rads": category.get("category", ""),
        **volumes,
        **{f"seconds_{k}": round(v, 3) for k, v in timings.items()},
        "seconds_total": round(sum(timings.values()), 3),
        "warnings": "; ".join(warnings),
        "report": report_rel,
    }
    record = {
        "case_id": case.case_id,
        "fingerprint": fingerprint,
        "summary": summary,
        "assessment": assessment.to_dict(),
        "candidates": [
            {
                **{k: c[k] for k in ("center_lps_x_mm", "center_lps_y_mm", "center_lps_z_mm", "probability")},
                "source": c.get("source", "network"),
            }
            for c in result.candidates
        ],
        "info": result.info,
    }
    return records.write_json(done, record)


def _export_dicom(
    folder: Path,
    case: discovery.CaseInput,
    masks: tuple[sitk.Image, sitk.Image],
    rows: list[dict[str, Any]],
    category: str,
) -> list[str]:
    """DICOM SEG + SR of a DICOM-series case into ``folder/dicom/`` (``dicom_out``); warnings for the case.

    ``masks``: the lung and nodule labels on the input's own grid (as written beside them).

    A case read from another format, or a series the export refuses (e.g. anonymised with blank UIDs), keeps its
    screening outputs and gets a one-line warning (in ``summary.csv`` and the report) instead of the objects.
    """
    if not case.is_dicom:
        return [f"no DICOM export: {case.path} is not a DICOM series (dicom_out needs DICOM input)"]
    from pipelines.export.dicom_out import write_dicom_outputs
    from pipelines.export.dicom_source import DicomExportError

    try:
        write_dicom_outputs(
            folder,
            source_files=case.dicom_files,
            lungs=masks[0],
            nodules=masks[1],
            nodule_rows=rows,
            category=category,
        )
    except (DicomExportError, ImportError) as err:
        log.warning("case %s: no DICOM export: %s", case.case_id, err)
        return [f"no DICOM export: {' '.join(str(err).split())}"]
    return []


def _public(nodule: Candidate) -> dict[str, Any]:
    """A nodule as ``nodules.json`` shows it: ``diameter_mm`` (the equivalent-sphere size the candidate merging uses)
    appears only under its own name, ``equivalent_diameter_mm``, beside the Lung-RADS ``mean_diameter_mm``."""
    return {k: v for k, v in nodule.items() if k != "diameter_mm"}


def _geometry_dict(g: CaseGeometry) -> dict[str, Any]:
    return {
        "size_xyz": list(g.original.size),
        "spacing_xyz_mm": [round(v, 6) for v in g.original.spacing],
        "origin_lps_mm": [round(v, 4) for v in g.original.origin],
        "direction": [round(v, 6) for v in g.original.direction],
        "orientation": g.original.orientation,
        "network_spacing_zyx_mm": [round(v, 4) for v in g.network_spacing_zyx],
    }


def write_report(
    folder: Path,
    case: discovery.CaseInput,
    data: dict[str, Any],
    result: CaseResult,
    category: dict,
    meta: dict,
) -> str:
    from pipelines.report.html import write_case_report

    geometry: CaseGeometry = data["geometry"]
    path = write_case_report(
        case_id=case.case_id,
        out_dir=folder,
        hu_zyx=data["hu"],
        spacing_zyx=io.spacing_zyx(geometry.canonical),
        nodules=result.nodules,
        nodule_mask_zyx=result.nodule_mask,
        probability_zyx=result.probability,
        lung_mask_zyx=result.lung_mask,
        category=category,
        extra={
            k: meta[k] for k in ("lung_volume_ml", "right_lung_volume_ml", "left_lung_volume_ml", "warnings")
        },
    )
    return str(Path(path).relative_to(folder.parent.parent))


def write_run_files(
    output_dir: Path,
    settings: ScreeningSettings,
    bundle_version: str,
    *,
    case_ids: Collection[str] | None = None,
) -> dict[str, int]:
    """Rebuild summary/failures/submission tables, the index page and ``run.json`` for the cases ``case_ids``
    (those of the current run; None: every case folder of OUT). Raises OSError when a file cannot be written."""
    records.remove_stale_temporaries(Path(output_dir))
    loaded = records.load_run_records(output_dir, case_ids)
    counts = outputs.rebuild_run_tables(output_dir, loaded)
    if settings.report:
        from pipelines.report.html import write_index

        write_index(run_dir=Path(output_dir), rows=loaded[2])
    records.write_json(
        Path(output_dir) / "run.json",
        {
            "bundle_version": bundle_version,
            "settings": settings.to_dict(),
            "settings_sha256": settings.sha256(),
            "versions": {
                "python": platform.python_version(),
                "monai": monai.__version__,
                "torch": torch.__version__,
                "numpy": np.__version__,
            },
            **counts,
        },
    )
    return counts
