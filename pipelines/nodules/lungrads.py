"""Lung-RADS v2022 categories for a baseline low-dose CT screen (no prior examination).

Implements the size and density rules of ACR Lung-RADS v2022 (released November 2022) that can be
applied to a single, baseline scan:

=================  ==========================================================================
category           baseline finding
=================  ==========================================================================
1 Negative         no nodules; nodules with a benign calcification pattern
2 Benign           solid < 6 mm; part-solid < 6 mm total; ground-glass < 30 mm
3 Probably benign  solid >= 6 to < 8 mm; part-solid >= 6 mm total with solid component < 6 mm;
                   ground-glass >= 30 mm
4A Suspicious      solid >= 8 to < 15 mm; part-solid with solid component >= 6 to < 8 mm
4B Very suspicious solid >= 15 mm; part-solid with solid component >= 8 mm
=================  ==========================================================================

Sizes are **mean diameters in mm rounded to one decimal place** (v2022: measure the long and the short axis to
one decimal point and "report mean nodule diameter to one decimal point"; Lung-RADS v1.0 rounded to whole mm);
the rounding is half-up, so 5.95 mm counts as 6.0 mm. The mean diameter is the mean of the long axis and the
perpendicular short axis on the axial slice where the nodule is largest (:mod:`pipelines.nodules.axes`; the
nodule dicts' ``mean_diameter_mm``). Lung-RADS also allows volume; this module uses the mean diameter only
(:data:`SIZE_BASIS`), and volumes are reported beside it. A solid component is measured the same way.

Not applied (they need a prior scan or a reader): growth, new and stable nodules, stepped management of
stable nodules, juxtapleural/perifissural and airway nodules, atypical cysts, the 4X upgrade for
additional suspicious features, and the "S" modifier. Category 0 is produced only when the caller says
the lungs could not be fully evaluated (:mod:`pipelines.screening.assessability`); every nodule of such a scan is then
category 0 too, its size-and-type category kept as ``size_category``, so nothing of a scan that was not fully
read looks benign.

Reference: Christensen J, Prosper AE, Wu CC, et al. ACR Lung-RADS v2022: Assessment Categories and
Management Recommendations. J Am Coll Radiol. 2024;21(3):473-488. doi:10.1016/j.jacr.2023.09.009.

This is not a medical device; a radiologist assigns the category.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from pipelines.nodules.record import Candidate

LUNG_RADS_VERSION = "v2022"
REFERENCE = (
    "ACR Lung-RADS v2022 (Christensen J et al., J Am Coll Radiol 2024;21(3):473-488, "
    "doi:10.1016/j.jacr.2023.09.009)"
)
NOTE = (
    "Not a medical device; prior-dependent rules (growth, new, stable) are not applied without a prior. "
    "Baseline-screen size and density rules only; juxtapleural, airway, cyst, 4X and S rules need a reader."
)
NODULE_TYPES = ("solid", "part-solid", "ground-glass", "calcified")
SIZE_BASIS = (
    "mean diameter: mean of the long axis and the perpendicular short axis on the nodule's largest axial slice, "
    "mm to one decimal (volume not used)"
)

#: Severity order used to pick the scan category (0 is handled separately: it means "incomplete").
CATEGORY_ORDER = ("1", "2", "3", "4A", "4B", "4X")

DESCRIPTORS = {
    "0": "Incomplete",
    "1": "Negative",
    "2": "Benign appearance or behavior",
    "3": "Probably benign",
    "4A": "Suspicious",
    "4B": "Very suspicious",
    "4X": "Very suspicious",
}

_PET = "PET/CT may be considered if there is a solid nodule or solid component of 8 mm or more"
MANAGEMENT = {
    "0": "Additional lung cancer screening CT images and/or comparison to prior chest CT examinations needed",
    "1": "Continue annual screening: low-dose CT in 12 months",
    "2": "Continue annual screening: low-dose CT in 12 months",
    "3": "Low-dose CT in 6 months",
    "4A": f"Low-dose CT in 3 months; {_PET}",
    "4B": (
        f"Diagnostic chest CT with or without contrast; {_PET}; tissue sampling and/or referral for further "
        "clinical evaluation, depending on clinical evaluation, patient preference and probability of malignancy"
    ),
    "4X": (
        f"Diagnostic chest CT with or without contrast; {_PET}; tissue sampling and/or referral for further "
        "clinical evaluation, depending on clinical evaluation, patient preference and probability of malignancy"
    ),
}


def round_mean_diameter_mm(value_mm: float) -> float:
    """Round a mean diameter (mm) to one decimal place, half-up, as Lung-RADS v2022 reports it.

    Uses the shortest decimal representation of the float, so ``5.95`` becomes ``6.0`` (plain ``round``
    would give ``5.9`` because of binary floating point and banker's rounding).
    """
    return float(Decimal(repr(float(value_mm))).quantize(Decimal("0.1"), rounding=ROUND_HALF_UP))


def _check_size(name: str, value_mm: float) -> float:
    value = float(value_mm)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite, non-negative number of mm, not {value_mm!r}")
    return round_mean_diameter_mm(value)


def _result(category: str, reason: str, nodule_type: str, diameter: float, solid: float | None) -> dict:
    return {
        "category": category,
        "descriptor": DESCRIPTORS[category],
        "management": MANAGEMENT[category],
        "reason": reason,
        "type": nodule_type,
        "diameter_rounded_mm": diameter,
        "solid_component_rounded_mm": solid,
    }


def _solid_category(d: float) -> tuple[str, str]:
    if d < 6.0:
        return "2", f"solid, {d:.1f} mm < 6 mm"
    if d < 8.0:
        return "3", f"solid, {d:.1f} mm in [6, 8) mm at baseline"
    if d < 15.0:
        return "4A", f"solid, {d:.1f} mm in [8, 15) mm at baseline"
    return "4B", f"solid, {d:.1f} mm >= 15 mm"


def _part_solid_category(d: float, solid: float) -> tuple[str, str]:
    if d < 6.0:
        return "2", f"part-solid, total {d:.1f} mm < 6 mm at baseline"
    if solid < 6.0:
        return "3", f"part-solid, total {d:.1f} mm >= 6 mm, solid component {solid:.1f} mm < 6 mm"
    if solid < 8.0:
        return "4A", f"part-solid, solid component {solid:.1f} mm in [6, 8) mm"
    return "4B", f"part-solid, solid component {solid:.1f} mm >= 8 mm"


def categorize_nodule(*, type: str, diameter_mm: float, solid_component_mm: float | None) -> dict:
    """Lung-RADS v2022 category of one nodule on a baseline screen.

    Args:
        type: density type, one of ``solid``, ``part-solid``, ``ground-glass``, ``calcified``
            (``calcified`` means a benign calcification pattern).
        diameter_mm: mean (or equivalent) diameter of the whole nodule in mm; rounded to 0.1 mm here.
        solid_component_mm: mean diameter of the solid component in mm, used for part-solid nodules.
            When it is ``None`` for a part-solid nodule it is conservatively taken equal to the total
            diameter, and the reason says so.

    Returns:
        dict with ``category`` (``"1"``, ``"2"``, ``"3"``, ``"4A"``, ``"4B"``), ``descriptor``,
        ``management`` (recommendation text), ``reason`` (the rule that fired), ``type``,
        ``diameter_rounded_mm`` and ``solid_component_rounded_mm``.

    Raises:
        ValueError: unknown type, or a size that is negative, NaN or infinite.
    """
    if type not in NODULE_TYPES:
        raise ValueError(f"nodule type must be one of {', '.join(NODULE_TYPES)}, not {type!r}")
    d = _check_size("diameter_mm", diameter_mm)
    solid = None if solid_component_mm is None else _check_size("solid_component_mm", solid_component_mm)
    if type == "calcified":
        return _result("1", "benign calcification pattern", type, d, solid)
    if type == "ground-glass":
        if d < 30.0:
            return _result("2", f"ground-glass, {d:.1f} mm < 30 mm", type, d, solid)
        return _result("3", f"ground-glass, {d:.1f} mm >= 30 mm at baseline", type, d, solid)
    if type == "solid":
        category, reason = _solid_category(d)
        return _result(category, reason, type, d, solid)
    assumed = solid is None
    solid_used = d if solid is None else min(solid, d)
    category, reason = _part_solid_category(d, solid_used)
    if assumed:
        reason += " (solid component not measured: assumed equal to the total diameter)"
    return _result(category, reason, type, d, solid)


def _rank(category: str) -> int:
    return CATEGORY_ORDER.index(category)


def _size_mm(nodule: Mapping[str, Any]) -> float:
    """The Lung-RADS mean diameter of a nodule dict: ``mean_diameter_mm``, else ``diameter_mm`` (older callers)."""
    value = nodule.get("mean_diameter_mm")
    return float(nodule["diameter_mm"] if value is None or value == "" else value)


def categorize_scan(nodules: Sequence[Mapping[str, Any]], *, incomplete_reason: str | None = None) -> dict:
    """Lung-RADS v2022 category of a baseline screening scan: the most suspicious nodule decides.

    Args:
        nodules: nodule dicts with at least ``type``, ``mean_diameter_mm`` (or ``diameter_mm``: taken as the
            mean diameter) and optionally ``solid_component_mm`` and ``nodule_id`` (as in ``nodules.json``).
        incomplete_reason: when given (e.g. "lungs not fully in the field of view"), the scan is
            category 0 (incomplete) whatever the nodules are, and so is every nodule (its own size-and-type
            category stays in ``size_category``); a nodule that would be category 3 or higher is named in the
            reason.

    Returns:
        dict with ``category``, ``descriptor``, ``management``, ``reason``, ``deciding_nodule_id``
        (``None`` when no nodule decided), ``deciding_nodule`` (the per-nodule result of the deciding
        nodule, or ``None``), ``nodule_categories`` (one per input nodule, in input order, each with
        ``nodule_id``, ``category`` and ``size_category``), ``size_basis``, ``version`` (``"v2022"``),
        ``reference`` and ``note``.
    """
    per_nodule = []
    for index, nodule in enumerate(nodules):
        result = categorize_nodule(
            type=str(nodule["type"]),
            diameter_mm=_size_mm(nodule),
            solid_component_mm=_optional_float(nodule.get("solid_component_mm")),
        )
        result["nodule_id"] = nodule.get("nodule_id", index + 1)
        result["size_category"] = result["category"]
        per_nodule.append(result)
    deciding = max(per_nodule, key=lambda r: (_rank(r["category"]), r["diameter_rounded_mm"]), default=None)
    if deciding is None:
        category, reason = "1", "no lung nodules"
    else:
        category, reason = deciding["category"], f"nodule {deciding['nodule_id']}: {deciding['reason']}"
    if incomplete_reason:
        category, reason = "0", f"incomplete: {incomplete_reason}"
        if deciding is not None and _rank(deciding["category"]) >= _rank("3"):
            reason += (
                f"; nodule {deciding['nodule_id']} would be Lung-RADS {deciding['category']} on its own "
                f"({deciding['reason']})"
            )
        for result in per_nodule:
            result.update(category="0", descriptor=DESCRIPTORS["0"], management=MANAGEMENT["0"])
    return scan_result(category, reason, deciding, per_nodule)


def scan_result(
    category: str, reason: str, deciding: dict[str, Any] | None, per_nodule: list[dict[str, Any]]
) -> dict[str, Any]:
    """The scan-level Lung-RADS record: ``category`` with its descriptor and management, the ``reason``, the
    deciding nodule (none for category 0), every nodule's result and the rule set's provenance."""
    return {
        "category": category,
        "descriptor": DESCRIPTORS[category],
        "management": MANAGEMENT[category],
        "reason": reason,
        "deciding_nodule_id": None if deciding is None or category == "0" else deciding["nodule_id"],
        "deciding_nodule": None if category == "0" else deciding,
        "nodule_categories": per_nodule,
        "size_basis": SIZE_BASIS,
        "version": LUNG_RADS_VERSION,
        "reference": REFERENCE,
        "note": NOTE,
    }


def assign_categories(nodules: Sequence[Candidate], *, incomplete_reason: str | None = None) -> dict:
    """:func:`categorize_scan`, and each nodule dict gets its ``lung_rads`` and ``size_category`` (in place).

    The one place a case's nodules are categorised: the tables and the report read ``lung_rads`` back.
    """
    category = categorize_scan(nodules, incomplete_reason=incomplete_reason)
    for nodule, result in zip(nodules, category["nodule_categories"], strict=True):
        nodule["lung_rads"] = result["category"]
        nodule["size_category"] = result["size_category"]
    return category


def _optional_float(value: Any) -> float | None:
    """``None`` for missing, empty or NaN values (CSV round trips), else ``float(value)``."""
    if value is None or value == "":
        return None
    number = float(value)
    return None if math.isnan(number) else number
