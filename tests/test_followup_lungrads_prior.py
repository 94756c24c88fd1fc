"""Lung-RADS v2022 prior-dependent rules: new, growing, stable (stepped), resolved; each threshold on both sides."""

from __future__ import annotations

import pytest

from pipelines.followup.lungrads_prior import (
    PriorMeasurement,
    categorize_followup_nodule,
    categorize_followup_scan,
    diameter_change_mm,
    is_growth,
    prior_from_row,
)


def _cat(nodule_type, d, solid=None, prior=None, days=365.0):
    return categorize_followup_nodule(
        type=nodule_type, diameter_mm=d, solid_component_mm=solid, prior=prior, interval_days=days
    )


NEW = [
    # solid new: <4 -> 2, [4, 6) -> 3, [6, 8) -> 4A, >=8 -> 4B (rounded half-up to 0.1 mm)
    ("solid", 3.9, None, "2"),
    ("solid", 3.94, None, "2"),
    ("solid", 3.95, None, "3"),
    ("solid", 4.0, None, "3"),
    ("solid", 5.9, None, "3"),
    ("solid", 5.95, None, "4A"),
    ("solid", 6.0, None, "4A"),
    ("solid", 7.9, None, "4A"),
    ("solid", 8.0, None, "4B"),
    ("solid", 20.0, None, "4B"),
    # part-solid new: total <6 -> 3; else solid component <4 -> 4A, >=4 -> 4B
    ("part-solid", 5.9, 5.0, "3"),
    ("part-solid", 5.94, 1.0, "3"),
    ("part-solid", 5.95, 1.0, "4A"),
    ("part-solid", 6.0, 3.9, "4A"),
    ("part-solid", 10.0, 3.94, "4A"),
    ("part-solid", 10.0, 3.95, "4B"),
    ("part-solid", 10.0, 4.0, "4B"),
    ("part-solid", 10.0, None, "4B"),  # solid component not measured: taken equal to the total
    # ground-glass new: <30 -> 2, >=30 -> 3
    ("ground-glass", 29.9, None, "2"),
    ("ground-glass", 29.95, None, "3"),
    ("ground-glass", 30.0, None, "3"),
    ("calcified", 12.0, None, "1"),
]


@pytest.mark.parametrize(("nodule_type", "d", "solid", "expected"), NEW)
def test_new_nodule_thresholds(nodule_type, d, solid, expected):
    result = _cat(nodule_type, d, solid)
    assert result["category"] == expected, result["reason"]
    assert result["followup_status"] == "new"


def test_growth_is_more_than_1_5_mm_of_rounded_diameters():
    assert diameter_change_mm(7.6, 6.1) == pytest.approx(1.5)
    assert not is_growth(7.6, 6.1)  # exactly 1.5: not growth (float 7.6 - 6.1 = 1.4999999999999991)
    assert is_growth(7.7, 6.1)  # 1.6
    assert not is_growth(6.54, 5.0)  # 6.5 - 5.0 = 1.5
    assert is_growth(6.55, 5.0)  # rounds to 6.6: 1.6
    assert not is_growth(4.0, 6.0)


GROWING = [
    # (type, d now, solid now, prior, expected, status)
    ("solid", 5.6, None, PriorMeasurement("solid", 4.1, None, "2"), "2", "stable"),  # +1.5
    ("solid", 5.7, None, PriorMeasurement("solid", 4.1, None, "2"), "4A", "growing"),  # +1.6, < 8
    ("solid", 7.9, None, PriorMeasurement("solid", 6.0, None, "3"), "4A", "growing"),
    ("solid", 7.95, None, PriorMeasurement("solid", 6.0, None, "3"), "4B", "growing"),  # rounds to 8.0
    ("solid", 8.0, None, PriorMeasurement("solid", 6.0, None, "3"), "4B", "growing"),
    ("solid", 16.0, None, PriorMeasurement("solid", 14.0, None, "4A"), "4B", "growing"),
    # part-solid: a growing solid component <4 -> 4A, >=4 -> 4B
    ("part-solid", 12.0, 3.9, PriorMeasurement("part-solid", 12.0, 2.3, "3"), "4A", "growing"),  # +1.6
    ("part-solid", 12.0, 3.8, PriorMeasurement("part-solid", 12.0, 2.3, "3"), "3", "stable"),  # +1.5
    ("part-solid", 12.0, 4.0, PriorMeasurement("part-solid", 12.0, 2.4, "3"), "4B", "growing"),
    # a ground-glass nodule that gained a solid component: new solid component
    ("part-solid", 12.0, 2.0, PriorMeasurement("ground-glass", 12.0, None, "2"), "4A", "growing"),
    ("part-solid", 12.0, 4.0, PriorMeasurement("ground-glass", 12.0, None, "2"), "4B", "growing"),
    # total grew, solid component did not: size rules (total >= 6, solid < 6 -> 3)
    ("part-solid", 14.0, 3.0, PriorMeasurement("part-solid", 10.0, 3.0, "3"), "3", "growing"),
    # ground-glass growing: < 30 -> 2, >= 30 -> 3
    ("ground-glass", 29.9, None, PriorMeasurement("ground-glass", 20.0, None, "2"), "2", "growing"),
    ("ground-glass", 30.0, None, PriorMeasurement("ground-glass", 28.0, None, "2"), "3", "growing"),
    ("ground-glass", 40.0, None, PriorMeasurement("ground-glass", 35.0, None, "3"), "3", "growing"),
]


@pytest.mark.parametrize(("nodule_type", "d", "solid", "prior", "expected", "status"), GROWING)
def test_growing_rules(nodule_type, d, solid, prior, expected, status):
    result = _cat(nodule_type, d, solid, prior, days=180)
    assert (result["category"], result["followup_status"]) == (expected, status), result["reason"]


def test_calcified_is_category_1_and_its_status_still_reports_growth():
    prior = PriorMeasurement("calcified", 9.9, None, "1")
    grown = _cat("calcified", 12.6, None, prior=prior)
    assert (grown["category"], grown["followup_status"], grown["prior_rule"]) == ("1", "growing", "calcified")
    assert grown["diameter_change_mm"] == pytest.approx(2.7)
    assert _cat("calcified", 11.4, None, prior=prior)["followup_status"] == "stable"  # +1.5: not growth


def test_growth_window_12_months():
    prior = PriorMeasurement("solid", 5.0, None, "2")
    within = _cat("solid", 7.0, prior=prior, days=365.0)  # 11.99 months
    beyond = _cat("solid", 7.0, prior=prior, days=366.0)  # 12.02 months
    assert within["prior_rule"] == "growing_solid" and within["category"] == "4A"
    assert beyond["prior_rule"] == "growth_beyond_12_months"
    assert beyond["category"] == "4A"  # never a reassuring category for a nodule that grew
    assert "reader" in beyond["reason"]
    unknown = _cat("solid", 7.0, prior=prior, days=None)
    assert unknown["prior_rule"] == "growing_solid"


def test_stepped_management_boundaries():
    prior_4a = PriorMeasurement("solid", 10.0, None, "4A")
    assert _cat("solid", 10.0, prior=prior_4a, days=91)["category"] == "4A"  # 2.99 months
    step = _cat("solid", 10.0, prior=prior_4a, days=92)  # 3.02 months
    assert (step["category"], step["prior_rule"], step["followup_status"]) == (
        "3",
        "stepped_4A_to_3",
        "stable",
    )
    assert step["size_category"] == "4A"
    prior_3 = PriorMeasurement("solid", 7.0, None, "3")
    assert _cat("solid", 7.0, prior=prior_3, days=182)["category"] == "3"  # 5.98 months
    assert _cat("solid", 7.0, prior=prior_3, days=183)["category"] == "2"  # 6.01 months
    decreased = _cat("solid", 5.0, prior=prior_3, days=183)
    assert (decreased["category"], decreased["followup_status"]) == ("2", "stable")
    assert decreased["diameter_change_mm"] == pytest.approx(-2.0)


def test_stable_without_step():
    assert (
        _cat("solid", 20.0, prior=PriorMeasurement("solid", 20.0, None, "4B"), days=400)["category"] == "4B"
    )
    kept = _cat("solid", 7.0, prior=PriorMeasurement("solid", 7.0, None, "2"), days=400)
    assert (kept["category"], kept["prior_rule"]) == ("2", "stable_keeps_prior")
    # no interval or no prior category: baseline size rules (never a step down)
    assert (
        _cat("solid", 10.0, prior=PriorMeasurement("solid", 10.0, None, "4A"), days=None)["category"] == "4A"
    )
    assert _cat("solid", 7.0, prior=PriorMeasurement("solid", 7.0, None, None), days=400)["category"] == "3"


def test_size_threshold_crossed_without_growth_reclassifies_by_size():
    result = _cat("solid", 6.0, prior=PriorMeasurement("solid", 5.9, None, "2"), days=365)
    assert (result["category"], result["prior_rule"]) == ("3", "size_threshold_crossed")
    result = _cat("solid", 5.95, prior=PriorMeasurement("solid", 5.9, None, "2"), days=365)
    assert result["category"] == "3"  # 5.95 rounds to 6.0
    result = _cat("solid", 5.94, prior=PriorMeasurement("solid", 5.9, None, "2"), days=365)
    assert result["category"] == "2"


def test_stable_ground_glass_is_2_whatever_its_size():
    result = _cat("ground-glass", 35.0, prior=PriorMeasurement("ground-glass", 35.0, None, "3"), days=30)
    assert (result["category"], result["prior_rule"]) == ("2", "stable_ground_glass")


def test_scan_category_resolved_and_incomplete():
    nodules = [
        {"nodule_id": 1, "type": "solid", "mean_diameter_mm": 5.0},
        {"nodule_id": 2, "type": "solid", "mean_diameter_mm": 9.0, "solid_component_mm": ""},
    ]
    priors = [PriorMeasurement("solid", 5.0, None, "2"), PriorMeasurement("solid", 6.0, None, "3")]
    scan = categorize_followup_scan(nodules, priors=priors, interval_days=365, resolved_ids=[7])
    assert scan["category"] == "4B" and scan["deciding_nodule_id"] == 2
    assert [r["followup_status"] for r in scan["nodule_categories"]] == ["stable", "growing"]
    assert scan["resolved_nodule_ids"] == [7]
    empty = categorize_followup_scan([], priors=[], interval_days=365, resolved_ids=[1, 2])
    assert empty["category"] == "1"
    incomplete = categorize_followup_scan(nodules, priors=priors, interval_days=365, incomplete_reason="cut")
    assert incomplete["category"] == "0"
    assert [r["category"] for r in incomplete["nodule_categories"]] == ["0", "0"]
    assert incomplete["nodule_categories"][1]["followup_category"] == "4B"
    with pytest.raises(ValueError):
        categorize_followup_scan(nodules, priors=priors[:1], interval_days=365)


def test_prior_from_row_and_bad_input():
    prior = prior_from_row(
        {"type": "part-solid", "mean_diameter_mm": "8.2", "solid_component_mm": "", "lung_rads": "3"}
    )
    assert prior == PriorMeasurement("part-solid", 8.2, None, "3")
    assert prior_from_row({"type": "solid", "mean_diameter_mm": 4, "lung_rads": "0"}).category is None
    with pytest.raises(ValueError):
        _cat("solid", 5.0, prior=PriorMeasurement("solid", 5.0), days=-1)
    with pytest.raises(ValueError):
        _cat("blob", 5.0)


BECAME_SOLID = [
    # (d now, solid now (solid: the whole), prior, expected, status)
    # part-solid 12 mm with a 2.4 mm solid part -> solid 12 mm: solid part +9.6 mm, >= 4 mm -> 4B
    (12.0, PriorMeasurement("part-solid", 12.0, 2.4, "3"), "4B", "growing"),
    # ground-glass 5 mm -> solid 3.9 mm: new solid component < 4 mm -> 4A
    (3.9, PriorMeasurement("ground-glass", 5.0, None, "2"), "4A", "growing"),
    (4.0, PriorMeasurement("ground-glass", 5.0, None, "2"), "4B", "growing"),
    # the solid part grew by exactly 1.5 mm: not growth; size rules of a solid nodule (6 to < 8 mm: 3)
    (6.5, PriorMeasurement("part-solid", 7.0, 5.0, "3"), "3", "stable"),
    (6.6, PriorMeasurement("part-solid", 7.0, 5.0, "3"), "4B", "growing"),
    # solid component not measured on the prior: no transition rule; the total decides (stable here)
    (7.0, PriorMeasurement("part-solid", 7.0, None, "3"), "3", "stable"),
]


@pytest.mark.parametrize(("d", "prior", "expected", "status"), BECAME_SOLID)
def test_subsolid_that_became_solid_is_graded_by_its_solid_component(d, prior, expected, status):
    result = _cat("solid", d, None, prior, days=180)
    assert (result["category"], result["followup_status"]) == (expected, status), result["reason"]
    if status == "growing":
        assert result["prior_rule"] == "subsolid_became_solid"
        assert result["solid_change_mm"] > 1.5


def test_solid_on_both_scans_keeps_the_solid_rules():
    result = _cat("solid", 7.0, None, PriorMeasurement("solid", 6.9, None, "4A"), days=100)
    assert result["prior_rule"] == "stepped_4A_to_3" and result["category"] == "3"
