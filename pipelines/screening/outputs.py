"""Writing per-case and per-run outputs atomically; rebuilding run tables from per-case records.

Layout of an output folder::

    OUT/cases/<case_id>/lungs.nii.gz       lung labels (1 right, 2 left), the input's exact grid
    OUT/cases/<case_id>/nodules.nii.gz     nodule instance labels 1..N (ids of nodules.csv), same grid
    OUT/cases/<case_id>/probability.nii.gz nodule probability (only with write_probability)
    OUT/cases/<case_id>/nodules.csv|json   reported nodules (units in every column name)
    OUT/cases/<case_id>/candidates.csv     every candidate with its scores (what the LUNA16 CSV holds)
    OUT/cases/<case_id>/report.html        visual report (+ report_files/)
    OUT/cases/<case_id>/result.json        written last: its presence means the case is complete
    OUT/summary.csv, OUT/failures.csv, OUT/submission.csv (LUNA16), OUT/index.html, OUT/run.json
    OUT/failures.log                       the traceback of each failure in failures.csv (only when some failed)

Per-case ``result.json`` and ``.state/failed/<case_id>.json`` records are the truth; the run tables are
rebuilt from them, so sharded runs (one writer per rank) and resumed runs merge by construction. The tables
list the cases of the current run only (``case_ids``): rows of cases no longer in the input are dropped.

Every CSV cell of text that a spreadsheet would read as a formula (starting with ``=``, ``+``, ``-``, ``@``, a
tab or a carriage return) is written with a leading ``'`` (OWASP's rule; :func:`csv_safe`); numbers stay
numbers.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.batch.records import load_run_records, to_csv, write_failure_tables
from pipelines.imaging import filesys

NODULE_COLUMNS = (
    "nodule_id",
    "probability",
    "segmentation_probability",
    "classifier_probability",
    "blobness",
    "center_lps_x_mm",
    "center_lps_y_mm",
    "center_lps_z_mm",
    "center_ras_x_mm",
    "center_ras_y_mm",
    "center_ras_z_mm",
    "voxel_i",
    "voxel_j",
    "voxel_k",
    "mean_diameter_mm",
    "long_axis_mm",
    "short_axis_mm",
    "equivalent_diameter_mm",
    "volume_mm3",
    "mean_hu",
    "max_hu",
    "type",
    "solid_component_mm",
    "lung_side",
    "lung_zone",
    "lung_rads",
    "size_category",
)
#: ``candidates.csv``: every candidate, with where it came from (``network`` or ``second_look``) and the network
#: grid (mm) whose score it carries (:mod:`pipelines.screening.multiscale`).
CANDIDATE_COLUMNS = ("candidate_id", *NODULE_COLUMNS[1:-3], "source", "scale_mm")
SUMMARY_COLUMNS = (
    "case_id",
    "input",
    "status",
    "nodule_count",
    "largest_nodule_mm",
    "lung_rads",
    "lung_volume_ml",
    "right_lung_volume_ml",
    "left_lung_volume_ml",
    "seconds_total",
    "seconds_preprocess",
    "seconds_network",
    "seconds_postprocess",
    "seconds_write",
    "warnings",
    "report",
)
SUBMISSION_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "probability")


def rebuild_run_tables(
    output_dir: Path,
    records: tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]] | None = None,
    *,
    case_ids: Collection[str] | None = None,
) -> dict[str, int]:
    """Rebuild ``summary.csv``, ``failures.csv`` (+ ``failures.log``) and ``submission.csv`` from the per-case
    records (``records`` from :func:`load_run_records`, read here for ``case_ids`` when not given)."""
    out = Path(output_dir)
    results, failures, rows = records if records is not None else load_run_records(out, case_ids)
    filesys.atomic_write_text(out / "summary.csv", to_csv(rows, SUMMARY_COLUMNS))
    write_failure_tables(out, failures)
    submission = []
    for r in results:
        for c in r.get("candidates", []):
            submission.append(
                {
                    "seriesuid": r["case_id"],
                    "coordX": c["center_lps_x_mm"],
                    "coordY": c["center_lps_y_mm"],
                    "coordZ": c["center_lps_z_mm"],
                    "probability": c["probability"],
                }
            )
    filesys.atomic_write_text(out / "submission.csv", to_csv(submission, SUBMISSION_COLUMNS))
    return {"succeeded": len(results), "failed": len(failures)}


def lung_volumes_ml(lungs_zyx: np.ndarray, spacing_zyx: tuple[float, float, float]) -> dict[str, float]:
    voxel_ml = float(np.prod(spacing_zyx)) / 1000.0
    right = float(np.count_nonzero(lungs_zyx == 1)) * voxel_ml
    left = float(np.count_nonzero(lungs_zyx == 2)) * voxel_ml
    return {
        "right_lung_volume_ml": round(right, 1),
        "left_lung_volume_ml": round(left, 1),
        "lung_volume_ml": round(right + left, 1),
    }
