"""Lung-RADS v2022 categories of a follow-up screen: the rules that need a prior examination.

:mod:`pipelines.nodules.lungrads` applies the baseline size and density rules; this module adds the rules that compare a
nodule with its measurement on the prior scan. Each current nodule is **new** (no prior match), **growing**,
or **stable** (not growing, decreased included); a prior nodule without a current match is **resolved** and
takes no category. Rules, as in the v2022 assessment-category table (sizes are mean diameters in mm rounded
half-up to one decimal, :func:`pipelines.nodules.lungrads.round_mean_diameter_mm`):

* **Growth** is "an increase in mean diameter of > 1.5 mm within a 12-month interval": the difference of the
  two rounded diameters, so 1.5 mm is not growth and 1.6 mm is. An increase of > 1.5 mm over a longer interval
  is still graded as growth here (never a reassuring category for a nodule that grew), and the rule is
  ``growth_beyond_12_months`` with a note for the reader (v2022 puts a slow-growing solid or part-solid nodule
  that grows over several screening exams in 4B; one prior cannot show that).
* **Size thresholds** apply at first detection and when a nodule enlarges into a higher size category, even
  without meeting the growth definition: such a nodule is reclassified by the baseline size rules.
* **New**: solid < 4 mm 2, 4 to < 6 mm 3, 6 to < 8 mm 4A, >= 8 mm 4B; part-solid < 6 mm total 3, else by its
  new solid component: < 4 mm 4A, >= 4 mm 4B; ground-glass < 30 mm 2, >= 30 mm 3.
* **Growing**: solid < 8 mm 4A, >= 8 mm 4B; part-solid with a new or growing solid component (its solid
  component grew by > 1.5 mm, or a ground-glass nodule gained one) < 4 mm 4A, >= 4 mm 4B; part-solid whose
  total grew but whose solid component did not: baseline size rules; ground-glass < 30 mm 2, >= 30 mm 3 (v2022
  makes a *slowly* growing >= 30 mm ground-glass nodule 2; telling slow from not is left to the reader, so 3).
* **Subsolid turned solid**: a nodule that was part-solid or ground-glass on the prior and is solid now has a
  solid component equal to its whole: when that whole exceeds the prior's solid component by > 1.5 mm (a
  ground-glass prior's solid component is 0), the part-solid rule for a new or growing solid component applies
  (< 4 mm 4A, >= 4 mm 4B; never below the size rules' category), rule ``subsolid_became_solid``. The lexicon
  names no separate rule for this transition; reading it as solid-component growth is the conservative choice
  (a subsolid nodule that solidifies is a sign of invasion), and a density type that flips between scans
  without real change is then reported as growing rather than stable.
* **Stable or decreased** (stepped management): a category 4A nodule stable or decreased at the 3-month
  follow-up becomes 3, a category 3 nodule at the 6-month follow-up becomes 2 (the prior's category is the one
  recorded for the prior nodule; "at the 3-/6-month follow-up" is read as an interval of at least 3 / 6 months,
  a month being 365.25 / 12 days, so a follow-up a few days early keeps the higher category); a ground-glass
  nodule that is stable is 2 whatever its size; otherwise a stable nodule keeps the prior's category (a 4B
  stays 4B: "proven benign after work-up" is a reader's call). Without a known prior category or interval the
  baseline size rules apply.

The lexicon's Lung-RADS v1.1 text "Category 3 or 4 nodules unchanged for >= 3 months" (category 2) was replaced
in v2022 by the stepped management above; it is not applied.

Not applied (they need a reader): perifissural and juxtapleural nodules (< 10 mm: 2), airway nodules, atypical
cysts, 4X, the "S" modifier, 4B lesions proven benign, findings suggesting infection (category 0 with a 1-3 month
follow-up), and "slow growth over multiple screening exams" (4B).

Reference: Christensen J, Prosper AE, Wu CC, et al. ACR Lung-RADS v2022: Assessment Categories and
Management Recommendations. J Am Coll Radiol. 2024;21(3):473-488 (also Chest 2024;165(3):738-753).
The new and growing thresholds above were checked row by row against the published v1.1 assessment table (whose
new/growing rows v2022 kept unchanged) and against v2022's growth ("> 1.5 mm within a 12-month interval") and
size-threshold definitions; the stepped management (4A -> 3 at 3 months, 3 -> 2 at 6 months) is v2022's
addition and replaced v1.1's "category 3 or 4 nodules unchanged for >= 3 months" (2).

This is not a medical device; a radiologist assigns the category.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from pipelines.nodules.lungrads import (
    CATEGORY_ORDER,
    DESCRIPTORS,
    MANAGEMENT,
    NODULE_TYPES,
    categorize_nodule,
    round_mean_diameter_mm,
    scan_result,
)

__all__ = [
    "FOLLOWUP_STATUSES",
    "GROWTH_THRESHOLD_MM",
    "DAYS_PER_MONTH",
    "PriorMeasurement",
    "categorize_followup_nodule",
    "categorize_followup_scan",
    "diameter_change_mm",
    "is_growth",
    "optional_float",
    "prior_from_row",
]

FOLLOWUP_STATUSES = ("new", "growing", "stable", "resolved")
#: v2022 growth: an increase in mean diameter of more than this (mm), within :data:`GROWTH_WINDOW_MONTHS`.
GROWTH_THRESHOLD_MM = 1.5
GROWTH_WINDOW_MONTHS = 12.0
DAYS_PER_MONTH = 365.25 / 12.0
#: Stepped management: prior category -> (months of stability needed, category it steps down to).
STEPPED = {"4A": (3.0, "3"), "3": (6.0, "2")}
NOTE = (
    "Not a medical device; Lung-RADS v2022 with the prior-dependent rules (new, growing, stable, stepped "
    "management) applied from one prior scan; perifissural, juxtapleural, airway, cyst, infection, 4X and S rules "
    "need a reader."
)


@dataclass(frozen=True)
class PriorMeasurement:
    """A matched nodule as measured on the prior scan.

    Attributes:
        type: density type on the prior (one of :data:`pipelines.nodules.lungrads.NODULE_TYPES`).
        diameter_mm: Lung-RADS mean diameter on the prior, mm.
        solid_component_mm: mean diameter of the solid component on the prior, mm (``None``: not measured; a
            solid nodule's solid component is its diameter, a ground-glass nodule's is 0).
        category: the Lung-RADS category recorded for it on the prior (``None`` or ``"0"``: unknown).
    """

    type: str
    diameter_mm: float
    solid_component_mm: float | None = None
    category: str | None = None


def _months(interval_days: float | None) -> float | None:
    if interval_days is None:
        return None
    days = float(interval_days)
    if not math.isfinite(days) or days < 0:
        raise ValueError(
            f"interval_days must be a finite, non-negative number of days, not {interval_days!r}"
        )
    return days / DAYS_PER_MONTH


def diameter_change_mm(current_mm: float, prior_mm: float) -> float:
    """Change of a mean diameter (mm), current minus prior, each rounded half-up to 0.1 mm first (exact)."""
    now = Decimal(repr(round_mean_diameter_mm(current_mm)))
    then = Decimal(repr(round_mean_diameter_mm(prior_mm)))
    return float(now - then)


def is_growth(current_mm: float, prior_mm: float) -> bool:
    """v2022 growth in size: the rounded mean diameter increased by more than 1.5 mm (1.5 is not, 1.6 is)."""
    return diameter_change_mm(current_mm, prior_mm) > GROWTH_THRESHOLD_MM


def _rank(category: str) -> int:
    return CATEGORY_ORDER.index(category)


def _prior_solid(prior: PriorMeasurement) -> float | None:
    if prior.type == "solid":
        return prior.diameter_mm
    if prior.type == "ground-glass":
        return 0.0
    return prior.solid_component_mm


def _new_category(nodule_type: str, d: float, solid: float) -> tuple[str, str, str]:
    """(category, rule, reason) of a new nodule; sizes already rounded."""
    if nodule_type == "solid":
        cuts = ((4.0, "2", "< 4 mm"), (6.0, "3", "4 to < 6 mm"), (8.0, "4A", "6 to < 8 mm"))
        for limit, category, text in cuts:
            if d < limit:
                return category, "new_solid", f"new solid, {d:.1f} mm ({text})"
        return "4B", "new_solid", f"new solid, {d:.1f} mm >= 8 mm"
    if nodule_type == "part-solid":
        if d < 6.0:
            return "3", "new_part_solid", f"new part-solid, total {d:.1f} mm < 6 mm"
        category = "4A" if solid < 4.0 else "4B"
        return category, "new_solid_component", f"new part-solid, new solid component {solid:.1f} mm"
    category = "2" if d < 30.0 else "3"
    return category, "new_ground_glass", f"new ground-glass, {d:.1f} mm"


def _growing_category(nodule_type: str, d: float, solid: float, solid_grew: bool) -> tuple[str, str, str]:
    """(category, rule, reason) of a growing nodule, or ``("", ...)`` when the baseline size rules decide."""
    if nodule_type == "solid":
        category = "4A" if d < 8.0 else "4B"
        return category, "growing_solid", f"growing solid, {d:.1f} mm ({'< 8' if d < 8.0 else '>= 8'} mm)"
    if nodule_type == "part-solid":
        if not solid_grew:
            return "", "growing_total_size_rules", "part-solid, total grew, solid component did not"
        category = "4A" if solid < 4.0 else "4B"
        return (
            category,
            "growing_solid_component",
            f"part-solid, new or growing solid component {solid:.1f} mm",
        )
    if d < 30.0:
        return "2", "growing_ground_glass", f"growing ground-glass, {d:.1f} mm < 30 mm"
    return "3", "growing_ground_glass", f"growing ground-glass, {d:.1f} mm >= 30 mm (slow growth: 2, reader)"


def _stable_category(
    nodule_type: str, size_category: str, prior: PriorMeasurement, months: float | None
) -> tuple[str, str, str]:
    """(category, rule, reason) of a matched nodule that did not grow."""
    if nodule_type == "ground-glass":
        return "2", "stable_ground_glass", "ground-glass, stable or slowly growing"
    prior_size = categorize_nodule(
        type=prior.type if prior.type in NODULE_TYPES else nodule_type,
        diameter_mm=prior.diameter_mm,
        solid_component_mm=prior.solid_component_mm,
    )["category"]
    if _rank(size_category) > _rank(prior_size):
        return size_category, "size_threshold_crossed", "enlarged into a higher size category (size rules)"
    known = prior.category if prior.category in CATEGORY_ORDER else None
    if known is None or months is None:
        why = "prior category unknown" if known is None else "interval unknown"
        return size_category, "stable_size_rules", f"stable; {why}: size rules"
    if known in STEPPED:
        needed, lower = STEPPED[known]
        if months >= needed:
            text = f"category {known} stable or decreased at {months:.1f} months (>= {needed:g}): stepped to {lower}"
            return lower, f"stepped_{known}_to_{lower}", text
        return known, "stable_keeps_prior", f"stable at {months:.1f} months (< {needed:g}): stays {known}"
    if known == "1":
        return size_category, "stable_size_rules", "stable; prior category 1: size rules"
    return known, "stable_keeps_prior", f"stable: keeps the prior's category {known}"


def _result(base: dict, category: str, status: str, rule: str, reason: str) -> dict:
    base = dict(base)
    base["size_category"] = base["category"]
    base.update(
        category=category,
        descriptor=DESCRIPTORS[category],
        management=MANAGEMENT[category],
        reason=reason,
        followup_status=status,
        prior_rule=rule,
    )
    return base


def categorize_followup_nodule(
    *,
    type: str,
    diameter_mm: float,
    solid_component_mm: float | None,
    prior: PriorMeasurement | None,
    interval_days: float | None,
) -> dict:
    """Lung-RADS v2022 category of one nodule of a follow-up screen (rules: module docstring).

    Args:
        type: density type now, one of :data:`pipelines.nodules.lungrads.NODULE_TYPES`.
        diameter_mm: mean diameter now, mm (rounded to 0.1 mm here).
        solid_component_mm: solid component now, mm (part-solid; ``None``: taken equal to the total).
        prior: the matched prior measurement, or ``None`` for a new nodule.
        interval_days: days between the prior and the current scan (``None``: unknown: no stepped management,
            growth graded as within 12 months).

    Returns:
        the dict of :func:`pipelines.nodules.lungrads.categorize_nodule` with ``category`` the follow-up category and
        ``size_category`` the baseline size-and-type category, plus ``followup_status`` (``new``, ``growing``,
        ``stable``), ``prior_rule`` (the rule that fired, e.g. ``new_solid``, ``growing_solid``,
        ``stepped_4A_to_3``), ``diameter_change_mm`` and ``solid_change_mm`` (rounded sizes; ``None`` for a new
        nodule or an unknown solid component) and ``interval_months``.

    Raises:
        ValueError: unknown type, a negative or non-finite size or interval.
    """
    base = categorize_nodule(type=type, diameter_mm=diameter_mm, solid_component_mm=solid_component_mm)
    months = _months(interval_days)
    d = base["diameter_rounded_mm"]
    solid_now = d if type == "solid" else base["solid_component_rounded_mm"]
    solid = min(d, d if solid_now is None else solid_now)
    extra: dict[str, Any] = {"diameter_change_mm": None, "solid_change_mm": None, "interval_months": months}
    if type == "calcified":  # benign calcification: category 1 whatever the change; the status still says it
        status = "new"
        if prior is not None:
            extra["diameter_change_mm"] = diameter_change_mm(d, prior.diameter_mm)
            status = "growing" if is_growth(d, prior.diameter_mm) else "stable"
        return {**_result(base, "1", status, "calcified", base["reason"]), **extra}
    if prior is None:
        category, rule, reason = _new_category(type, d, solid)
        return {**_result(base, category, "new", rule, reason), **extra}
    extra["diameter_change_mm"] = diameter_change_mm(d, prior.diameter_mm)
    prior_solid = _prior_solid(prior)
    if type in ("part-solid", "solid") and prior_solid is not None:
        extra["solid_change_mm"] = diameter_change_mm(solid, prior_solid)
    if type == "solid" and prior.type in ("part-solid", "ground-glass") and prior_solid is not None:
        if is_growth(d, prior_solid):
            return {**_became_solid(base, d, prior, prior_solid, months), **extra}
    if prior_solid is None:  # not measured on the prior: the total's growth stands for it (conservative)
        solid_grew = type == "part-solid" and is_growth(d, prior.diameter_mm)
    else:  # a ground-glass nodule that gained a solid component, or a solid component grown by > 1.5 mm
        solid_grew = type == "part-solid" and (
            (prior_solid == 0.0 and solid > 0.0) or is_growth(solid, prior_solid)
        )
    grew = is_growth(d, prior.diameter_mm) or solid_grew
    if grew:
        category, rule, reason = _growing_category(type, d, solid, solid_grew)
        if not category or _rank(category) < _rank(base["category"]):
            category = base["category"]
        if months is not None and months > GROWTH_WINDOW_MONTHS:
            rule = "growth_beyond_12_months"
            reason += f"; grew over {months:.1f} months (> 12 months)"
            if type != "ground-glass":
                reason += ": a solid or part-solid nodule growing slowly over several exams is 4B (reader)"
        return {**_result(base, category, "growing", rule, reason), **extra}
    category, rule, reason = _stable_category(type, base["category"], prior, months)
    return {**_result(base, category, "stable", rule, reason), **extra}


def _became_solid(
    base: dict, d: float, prior: PriorMeasurement, prior_solid: float, months: float | None
) -> dict:
    """A subsolid nodule on the prior that is solid now, its solid part grown by > 1.5 mm (module docstring)."""
    # at least the growing-solid category (4A below 8 mm, 4B from 8 mm): the 4 mm cut always reaches it
    category = max("4A" if d < 4.0 else "4B", base["category"], key=_rank)
    reason = f"{prior.type} on the prior (solid component {prior_solid:.1f} mm), solid now, {d:.1f} mm"
    if months is not None and months > GROWTH_WINDOW_MONTHS:
        reason += f"; over {months:.1f} months (> 12 months)"
    return _result(base, category, "growing", "subsolid_became_solid", reason)


def optional_float(value: Any) -> float | None:
    """``None`` for a missing, empty or NaN table cell, else ``float(value)``."""
    if value is None or value == "":
        return None
    number = float(value)
    return None if math.isnan(number) else number


def prior_from_row(row: Mapping[str, Any]) -> PriorMeasurement:
    """A :class:`PriorMeasurement` from a prior ``nodules.csv``/``nodules.json`` row (``type``,
    ``mean_diameter_mm``, ``solid_component_mm``, ``lung_rads``)."""
    category = str(row.get("lung_rads") or "") or None
    return PriorMeasurement(
        type=str(row["type"]),
        diameter_mm=float(row["mean_diameter_mm"]),
        solid_component_mm=optional_float(row.get("solid_component_mm")),
        category=category if category in CATEGORY_ORDER else None,
    )


def categorize_followup_scan(
    nodules: Sequence[Mapping[str, Any]],
    *,
    priors: Sequence[PriorMeasurement | None],
    interval_days: float | None,
    resolved_ids: Sequence[Any] = (),
    incomplete_reason: str | None = None,
) -> dict:
    """Lung-RADS v2022 category of a follow-up scan: the most suspicious current nodule decides.

    Args:
        nodules: current nodule dicts (``type``, ``mean_diameter_mm``, optional ``solid_component_mm`` and
            ``nodule_id``), as in ``nodules.csv``.
        priors: one per nodule, in the same order: its matched :class:`PriorMeasurement`, or ``None`` (new).
        interval_days: days from the prior to the current scan (``None``: unknown).
        resolved_ids: ids of prior nodules without a current match (recorded; they take no category).
        incomplete_reason: as in :func:`pipelines.nodules.lungrads.categorize_scan`: the scan and every nodule become
            category 0, the follow-up category kept as ``followup_category``.

    Returns:
        the dict shape of :func:`pipelines.nodules.lungrads.categorize_scan` (``category``, ``descriptor``,
        ``management``, ``reason``, ``deciding_nodule_id``, ``deciding_nodule``, ``nodule_categories``,
        ``size_basis``, ``version``, ``reference``, ``note``) plus ``interval_days``, ``resolved_nodule_ids``
        and ``prior_applied`` (``True``).
    """
    if len(priors) != len(nodules):
        raise ValueError(f"priors has {len(priors)} entries for {len(nodules)} nodules")
    per_nodule = []
    for index, (nodule, prior) in enumerate(zip(nodules, priors, strict=True)):
        result = categorize_followup_nodule(
            type=str(nodule["type"]),
            diameter_mm=float(nodule["mean_diameter_mm"]),
            solid_component_mm=optional_float(nodule.get("solid_component_mm")),
            prior=prior,
            interval_days=interval_days,
        )
        result["nodule_id"] = nodule.get("nodule_id", index + 1)
        per_nodule.append(result)
    deciding = max(per_nodule, key=lambda r: (_rank(r["category"]), r["diameter_rounded_mm"]), default=None)
    if deciding is None:
        category, reason = "1", "no lung nodules"
    else:
        category, reason = deciding["category"], f"nodule {deciding['nodule_id']}: {deciding['reason']}"
    if incomplete_reason:
        category, reason = "0", f"incomplete: {incomplete_reason}"
        for result in per_nodule:
            result["followup_category"] = result["category"]
            result.update(category="0", descriptor=DESCRIPTORS["0"], management=MANAGEMENT["0"])
    return {
        **scan_result(category, reason, deciding, per_nodule),
        "note": NOTE,
        "interval_days": interval_days,
        "resolved_nodule_ids": list(resolved_ids),
        "prior_applied": True,
    }
