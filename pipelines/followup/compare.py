"""Compare a screened case with its prior: register, match, measure change, Lung-RADS v2022 with the prior.

Reads two case folders in the layout of :mod:`pipelines.screening.outputs` (``nodules.json``, else ``nodules.csv``;
``lungs.nii.gz``; ``result.json`` marks a complete case) and the two scans they were screened from, then runs
:func:`pipelines.followup.register.register_prior` -> :func:`pipelines.followup.match.match_distances` ->
:func:`pipelines.followup.growth.measure_change` -> :func:`pipelines.followup.lungrads_prior.categorize_followup_scan`.
Sizes then and now are both the ``nodules.csv`` measurements (``mean_diameter_mm``, ``volume_mm3``), made by the
same pipeline on each scan. Coordinates: LPS world mm; a prior centre is given in the prior's frame and mapped
into the current one.

:func:`write_followup` writes ``followup.csv`` (:data:`FOLLOWUP_COLUMNS`) and ``followup.json`` into a case
folder, atomically.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from pipelines.batch import records
from pipelines.followup import growth, lungrads_prior, match, register
from pipelines.imaging import filesys, io

__all__ = [
    "FOLLOWUP_COLUMNS",
    "FollowupError",
    "FollowupResult",
    "compare_cases",
    "read_case_nodules",
    "write_followup",
]

FOLLOWUP_COLUMNS = (
    "nodule_id",
    "prior_nodule_id",
    "followup_status",
    "lung_rads",
    "size_category",
    "prior_rule",
    "reason",
    "type",
    "prior_type",
    "diameter_then_mm",
    "diameter_now_mm",
    "diameter_change_mm",
    "diameter_change_pct",
    "solid_component_then_mm",
    "solid_component_now_mm",
    "volume_then_mm3",
    "volume_now_mm3",
    "volume_change_mm3",
    "volume_change_pct",
    "volume_doubling_time_days",
    "interval_days",
    "match_distance_mm",
    "center_lps_x_mm",
    "center_lps_y_mm",
    "center_lps_z_mm",
    "prior_center_lps_x_mm",
    "prior_center_lps_y_mm",
    "prior_center_lps_z_mm",
    "local_shift_mm",
)
_CENTER = ("center_lps_x_mm", "center_lps_y_mm", "center_lps_z_mm")


class FollowupError(ValueError):
    """The comparison cannot be made; the message is one line naming the file or the step."""


@dataclass
class FollowupResult:
    """A current case compared with its prior.

    Attributes:
        rows: one per current nodule (input order), then one per resolved prior nodule; keys
            :data:`FOLLOWUP_COLUMNS` (``lung_rads`` is empty for a resolved nodule).
        lung_rads: :func:`pipelines.followup.lungrads_prior.categorize_followup_scan`'s dict (``category`` is the
            case category with the prior applied).
        interval_days: days from the prior to the current scan (``None``: unknown).
        registration: the global map (``matrix``, ``offset_mm``: current LPS -> prior LPS) and its notes.
        current_case, prior_case: the two case folders.
        warnings: one line each.
    """

    rows: list[dict[str, Any]]
    lung_rads: dict[str, Any]
    interval_days: float | None
    registration: dict[str, Any]
    current_case: str
    prior_case: str
    warnings: list[str] = field(default_factory=list)

    @property
    def category(self) -> str:
        return str(self.lung_rads["category"])

    def to_dict(self) -> dict[str, Any]:
        return {
            "current_case": self.current_case,
            "prior_case": self.prior_case,
            "interval_days": self.interval_days,
            "lung_rads": self.lung_rads,
            "registration": self.registration,
            "warnings": list(self.warnings),
            "nodules": self.rows,
        }


def _unquote(value: Any) -> Any:
    """A ``nodules.csv`` cell back as written (:func:`pipelines.batch.records.csv_safe` prefixes some text with ``'``)."""
    return value[1:] if isinstance(value, str) and value.startswith("'") else value


def read_case_nodules(case_dir: str | os.PathLike[str]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """``(nodules, meta)`` of a complete case folder: ``nodules.json`` (else ``nodules.csv``, meta empty).

    Raises:
        FollowupError: no ``result.json`` (incomplete case), no or unreadable nodule table, a nodule without
            centre or mean diameter.
    """
    folder = Path(case_dir)
    if not (folder / "result.json").is_file():
        raise FollowupError(f"{folder}: not a complete case folder (no result.json)")
    try:
        if (folder / "nodules.json").is_file():
            meta = json.loads((folder / "nodules.json").read_text(encoding="utf-8"))
            nodules = list(meta.pop("nodules"))
        else:
            with open(folder / "nodules.csv", newline="", encoding="utf-8") as f:
                nodules = [{k: _unquote(v) for k, v in row.items()} for row in csv.DictReader(f)]
            meta = {}
        for n in nodules:
            n["_center"] = np.array([float(n[k]) for k in _CENTER])
            n["mean_diameter_mm"] = float(n["mean_diameter_mm"])
            if isinstance(n.get("nodule_id"), str) and n["nodule_id"].isdigit():
                n["nodule_id"] = int(n["nodule_id"])  # as nodules.json has it
    except FileNotFoundError:
        raise FollowupError(f"{folder}: no nodules.json or nodules.csv") from None
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise FollowupError(f"{folder}: unreadable nodule table ({type(err).__name__}: {err})") from None
    return nodules, meta


def _lungs(case_dir: Path, scan: sitk.Image) -> sitk.Image:
    for name in ("lungs.nii.gz", "lungs.nii"):
        if (case_dir / name).is_file():
            lungs = io.read_image(case_dir / name)
            if lungs.GetSize() != scan.GetSize():
                raise FollowupError(
                    f"{case_dir / name}: lung mask grid {lungs.GetSize()} differs from the scan's"
                )
            lungs.CopyInformation(scan)  # the same grid, written by us; header rounding must not shift it
            return lungs
    raise FollowupError(f"{case_dir}: no lungs.nii.gz")


def _scan(scan: str | os.PathLike[str] | sitk.Image) -> sitk.Image:
    return scan if isinstance(scan, sitk.Image) else io.read_image(scan)


def _interval(
    interval_days: float | None, current_scan: Any, prior_scan: Any, warnings: list[str]
) -> float | None:
    if interval_days is not None:
        return float(interval_days)
    if isinstance(current_scan, sitk.Image) or isinstance(prior_scan, sitk.Image):
        warnings.append("interval unknown (no interval given): no stepped management")
        return None
    then, now = growth.study_date(prior_scan), growth.study_date(current_scan)
    if then is None or now is None:
        warnings.append("interval unknown (no DICOM StudyDate, none given): no stepped management")
        return None
    try:
        return float(growth.interval_days(then, now))
    except ValueError as err:
        raise FollowupError(str(err)) from None


def _incomplete(meta: Mapping[str, Any]) -> str | None:
    assessment = meta.get("assessment") or {}
    if assessment and not assessment.get("assessable", True):
        return "; ".join(assessment.get("reasons") or ["not assessable"])
    return None


def compare_cases(
    current_case_dir: str | os.PathLike[str],
    prior_case_dir: str | os.PathLike[str],
    *,
    current_scan: str | os.PathLike[str] | sitk.Image,
    prior_scan: str | os.PathLike[str] | sitk.Image,
    interval_days: float | None = None,
    distance_floor_mm: float = match.DISTANCE_FLOOR_MM,
    distance_factor: float = match.DISTANCE_FACTOR,
    size_ratio: tuple[float, float] = match.SIZE_RATIO,
    threads: int | None = None,
) -> FollowupResult:
    """Compare the nodules of a screened case with those of its prior case (module docstring).

    Args:
        current_case_dir, prior_case_dir: case folders written by the screening (``cases/<id>``).
        current_scan, prior_scan: the scans those cases were screened from (path or SimpleITK image); their
            grids are the grids of the case folders' masks.
        interval_days: days from the prior to the current scan; ``None``: from the DICOM StudyDates, else
            unknown (a warning; growth still graded, no stepped management).
        distance_floor_mm, distance_factor, size_ratio: matching gates (:func:`pipelines.followup.match.match_nodules`).
        threads: SimpleITK threads for the registration.

    Returns:
        a :class:`FollowupResult`.

    Raises:
        FollowupError: an incomplete or unreadable case folder, a scan that cannot be read, a prior dated after
            the current scan, or a registration failure (one line).
    """
    warnings: list[str] = []
    current_dir, prior_dir = Path(current_case_dir), Path(prior_case_dir)
    current, current_meta = read_case_nodules(current_dir)
    prior, prior_meta = read_case_nodules(prior_dir)
    days = _interval(interval_days, current_scan, prior_scan, warnings)
    if _incomplete(prior_meta):
        warnings.append(f"prior not fully assessable ({_incomplete(prior_meta)}): prior categories not used")
    reg = _register(current_dir, prior_dir, current_scan, prior_scan, current, prior, threads=threads)
    distances = _distances(reg, current, prior)
    matching = match.match_distances(
        distances,
        current_diameters_mm=np.array([n["mean_diameter_mm"] for n in current]),
        prior_diameters_mm=np.array([n["mean_diameter_mm"] for n in prior]),
        distance_floor_mm=distance_floor_mm,
        distance_factor=distance_factor,
        size_ratio=size_ratio,
    )
    priors: list[lungrads_prior.PriorMeasurement | None] = []
    for index in range(len(current)):
        j = matching.prior_of(index)
        measured = None if j is None else lungrads_prior.prior_from_row(prior[j])
        if measured is not None and _incomplete(prior_meta):
            measured = lungrads_prior.PriorMeasurement(
                measured.type, measured.diameter_mm, measured.solid_component_mm
            )
        priors.append(measured)
    category = lungrads_prior.categorize_followup_scan(
        current,
        priors=priors,
        interval_days=days,
        resolved_ids=[prior[j].get("nodule_id", j + 1) for j in matching.resolved],
        incomplete_reason=_incomplete(current_meta),
    )
    rows = _rows(current, prior, matching, category["nodule_categories"], reg, distances, days)
    warnings.extend(reg.notes if reg is not None else ())
    return FollowupResult(
        rows=rows,
        lung_rads=category,
        interval_days=days,
        registration=_registration_dict(reg),
        current_case=str(current_dir),
        prior_case=str(prior_dir),
        warnings=warnings,
    )


def _register(
    current_dir: Path,
    prior_dir: Path,
    current_scan: Any,
    prior_scan: Any,
    current: Sequence[Mapping[str, Any]],
    prior: Sequence[Mapping[str, Any]],
    *,
    threads: int | None,
) -> register.Registration | None:
    """The registration, or ``None`` when one side has no nodule (nothing to match)."""
    if not current or not prior:
        return None
    try:
        current_image, prior_image = _scan(current_scan), _scan(prior_scan)
    except filesys.ImageReadError as err:
        raise FollowupError(str(err)) from None
    try:
        return register.register_prior(
            current_image,
            _lungs(current_dir, current_image),
            prior_image,
            _lungs(prior_dir, prior_image),
            nodule_centers_lps_mm=np.array([n["_center"] for n in current]),
            threads=threads,
        )
    except register.RegistrationError as err:
        raise FollowupError(f"{prior_dir}: {err}") from None


def _distances(
    reg: register.Registration | None,
    current: Sequence[Mapping[str, Any]],
    prior: Sequence[Mapping[str, Any]],
) -> np.ndarray:
    """``[n_current, n_prior]`` mm: current centre to each prior centre mapped by that current nodule's local map."""
    out = np.zeros((len(current), len(prior)))
    if reg is None:
        return out
    prior_centers = np.array([n["_center"] for n in prior])
    for i, n in enumerate(current):
        mapped = reg.prior_to_current(prior_centers, nodule_index=i)
        out[i] = np.linalg.norm(mapped - n["_center"], axis=1)
    return out


def _vdt(value: float | None) -> float | str | None:
    """Volume doubling time for the tables: ``"inf"``/``"-inf"`` for an unchanged volume (JSON has no infinity)."""
    if value is not None and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value


def _rows(
    current: Sequence[Mapping[str, Any]],
    prior: Sequence[Mapping[str, Any]],
    matching: match.Matching,
    categories: Sequence[Mapping[str, Any]],
    reg: register.Registration | None,
    distances: np.ndarray,
    days: float | None,
) -> list[dict[str, Any]]:
    rows = []
    for i, (n, cat) in enumerate(zip(current, categories, strict=True)):
        j = matching.prior_of(i)
        row: dict[str, Any] = {
            "nodule_id": n.get("nodule_id", i + 1),
            "followup_status": cat["followup_status"],
            "lung_rads": cat["category"],
            "size_category": cat["size_category"],
            "prior_rule": cat["prior_rule"],
            "reason": cat["reason"],
            "type": n.get("type"),
            "diameter_now_mm": n["mean_diameter_mm"],
            "solid_component_now_mm": lungrads_prior.optional_float(n.get("solid_component_mm")),
            "volume_now_mm3": lungrads_prior.optional_float(n.get("volume_mm3")),
            "interval_days": days,
            **dict(zip(_CENTER, (float(v) for v in n["_center"]))),
        }
        if reg is not None:
            row["local_shift_mm"] = reg.local_shift_mm[i]
        if j is not None:
            row.update(_prior_part(prior[j], j, distances[i, j]))
            change = growth.measure_change(
                diameter_then_mm=row["diameter_then_mm"],
                diameter_now_mm=row["diameter_now_mm"],
                volume_then_mm3=row["volume_then_mm3"],
                volume_now_mm3=row["volume_now_mm3"],
                interval_days=days,
            )
            row.update(
                {k: v for k, v in change.to_dict().items() if k.endswith(("_change_mm", "_pct", "_mm3"))}
            )
            row["volume_doubling_time_days"] = _vdt(change.volume_doubling_time_days)
        rows.append(row)
    for j in matching.resolved:
        rows.append({"followup_status": "resolved", "lung_rads": "", **_prior_part(prior[j], j, None)})
    return rows


def _prior_part(p: Mapping[str, Any], j: int, distance: float | None) -> dict[str, Any]:
    return {
        "prior_nodule_id": p.get("nodule_id", j + 1),
        "prior_type": p.get("type"),
        "diameter_then_mm": p["mean_diameter_mm"],
        "solid_component_then_mm": lungrads_prior.optional_float(p.get("solid_component_mm")),
        "volume_then_mm3": lungrads_prior.optional_float(p.get("volume_mm3")),
        "match_distance_mm": None if distance is None else float(distance),
        **{f"prior_{k}": float(v) for k, v in zip(_CENTER, p["_center"])},
    }


def _registration_dict(reg: register.Registration | None) -> dict[str, Any]:
    if reg is None:
        return {"performed": False, "why": "no nodule on one of the two scans: nothing to match"}
    return {
        "performed": True,
        "maps": "current LPS mm -> prior LPS mm: y = matrix @ x + offset_mm",
        "matrix": reg.global_map.matrix.round(6).tolist(),
        "offset_mm": reg.global_map.offset.round(4).tolist(),
        "local_shift_mm": [round(v, 3) for v in reg.local_shift_mm],
        "notes": list(reg.notes),
    }


def write_followup(result: FollowupResult, case_dir: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write ``followup.csv`` (:data:`FOLLOWUP_COLUMNS`) and ``followup.json`` into ``case_dir``, atomically.

    Returns:
        the two paths.
    """
    folder = Path(case_dir)
    table = filesys.atomic_write_text(folder / "followup.csv", records.to_csv(result.rows, FOLLOWUP_COLUMNS))
    record = records.write_json(folder / "followup.json", result.to_dict())
    return table, record
