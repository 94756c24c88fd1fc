"""Lung-RADS v2022 baseline categories: every size threshold pinned on both sides."""

from __future__ import annotations

import math

import pytest

from pipelines.nodules.lungrads import (
    MANAGEMENT,
    assign_categories,
    categorize_nodule,
    categorize_scan,
    round_mean_diameter_mm,
)

# (type, mean diameter mm, solid component mm, expected category)
BOUNDARIES = [
    # solid: <6 -> 2, [6, 8) -> 3, [8, 15) -> 4A, >=15 -> 4B
    ("solid", 0.0, None, "2"),
    ("solid", 5.9, None, "2"),
    ("solid", 5.94, None, "2"),  # rounds to 5.9
    ("solid", 5.95, None, "3"),  # rounds half-up to 6.0
    ("solid", 6.0, None, "3"),
    ("solid", 7.9, None, "3"),
    ("solid", 7.95, None, "4A"),
    ("solid", 8.0, None, "4A"),
    ("solid", 14.9, None, "4A"),
    ("solid", 14.94, None, "4A"),
    ("solid", 14.95, None, "4B"),
    ("solid", 15.0, None, "4B"),
    ("solid", 42.0, None, "4B"),
    # part-solid: total <6 -> 2; total >=6 with solid <6 -> 3; solid [6, 8) -> 4A; solid >=8 -> 4B
    ("part-solid", 5.9, 5.9, "2"),
    ("part-solid", 5.9, 0.0, "2"),
    ("part-solid", 6.0, 0.0, "3"),
    ("part-solid", 6.0, 5.9, "3"),
    ("part-solid", 20.0, 5.94, "3"),
    ("part-solid", 20.0, 5.95, "4A"),
    ("part-solid", 20.0, 6.0, "4A"),
    ("part-solid", 20.0, 7.9, "4A"),
    ("part-solid", 20.0, 8.0, "4B"),
    ("part-solid", 9.0, 8.0, "4B"),
    # ground-glass: <30 -> 2, >=30 -> 3 (at baseline)
    ("ground-glass", 1.0, None, "2"),
    ("ground-glass", 29.9, None, "2"),
    ("ground-glass", 29.94, None, "2"),
    ("ground-glass", 29.95, None, "3"),
    ("ground-glass", 30.0, None, "3"),
    ("ground-glass", 55.0, None, "3"),
    # benign calcification pattern -> 1 whatever the size
    ("calcified", 3.0, None, "1"),
    ("calcified", 25.0, 25.0, "1"),
]


@pytest.mark.parametrize(("nodule_type", "diameter", "solid", "expected"), BOUNDARIES)
def test_threshold_boundaries(nodule_type: str, diameter: float, solid: float | None, expected: str) -> None:
    result = categorize_nodule(type=nodule_type, diameter_mm=diameter, solid_component_mm=solid)
    assert result["category"] == expected, result["reason"]
    assert result["management"] == MANAGEMENT[expected]
    assert result["diameter_rounded_mm"] == round_mean_diameter_mm(diameter)


@pytest.mark.parametrize(
    ("value", "rounded"), [(5.95, 6.0), (5.94, 5.9), (7.949999, 7.9), (0.05, 0.1), (14.95, 15.0), (2.25, 2.3)]
)
def test_rounding_is_half_up_to_one_decimal(value: float, rounded: float) -> None:
    assert round_mean_diameter_mm(value) == rounded


def test_part_solid_without_solid_measurement_is_conservative() -> None:
    result = categorize_nodule(type="part-solid", diameter_mm=9.0, solid_component_mm=None)
    assert result["category"] == "4B"
    assert "assumed" in result["reason"]
    small = categorize_nodule(type="part-solid", diameter_mm=5.0, solid_component_mm=None)
    assert small["category"] == "2"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"type": "nonsolid", "diameter_mm": 5.0, "solid_component_mm": None}, "must be one of"),
        ({"type": "solid", "diameter_mm": -1.0, "solid_component_mm": None}, "non-negative"),
        ({"type": "solid", "diameter_mm": math.nan, "solid_component_mm": None}, "finite"),
        ({"type": "part-solid", "diameter_mm": 9.0, "solid_component_mm": math.inf}, "finite"),
    ],
)
def test_invalid_inputs_raise_clear_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        categorize_nodule(**kwargs)


def test_empty_scan_is_category_1_with_note() -> None:
    result = categorize_scan([])
    assert result["category"] == "1"
    assert result["deciding_nodule_id"] is None
    assert result["version"] == "v2022"
    note = result["note"].lower()
    assert "not a medical device" in note
    assert "prior-dependent rules (growth, new, stable) are not applied without a prior" in note


def test_scan_category_is_the_most_suspicious_nodule() -> None:
    nodules = [
        {"nodule_id": 1, "type": "solid", "diameter_mm": 4.2, "solid_component_mm": 4.2},
        {"nodule_id": 2, "type": "ground-glass", "diameter_mm": 31.0, "solid_component_mm": None},
        {"nodule_id": 3, "type": "part-solid", "diameter_mm": 12.0, "solid_component_mm": 6.5},
        {"nodule_id": 4, "type": "calcified", "diameter_mm": 20.0, "solid_component_mm": 20.0},
        {"nodule_id": 5, "type": "solid", "diameter_mm": 7.0, "solid_component_mm": 7.0},
    ]
    result = categorize_scan(nodules)
    assert [r["category"] for r in result["nodule_categories"]] == ["2", "3", "4A", "1", "3"]
    assert result["category"] == "4A"
    assert result["deciding_nodule_id"] == 3
    assert result["deciding_nodule"]["category"] == "4A"
    assert result["management"].startswith("Low-dose CT in 3 months")
    assert "nodule 3" in result["reason"]


def test_ties_are_broken_by_size_and_csv_values_are_accepted() -> None:
    nodules = [
        {"nodule_id": "a", "type": "solid", "diameter_mm": "9.1", "solid_component_mm": ""},
        {"nodule_id": "b", "type": "solid", "diameter_mm": 12.3, "solid_component_mm": float("nan")},
    ]
    result = categorize_scan(nodules)
    assert result["category"] == "4A"
    assert result["deciding_nodule_id"] == "b"


def test_only_benign_calcified_nodules_give_category_1() -> None:
    result = categorize_scan([{"nodule_id": 1, "type": "calcified", "diameter_mm": 9.0}])
    assert result["category"] == "1"
    assert result["deciding_nodule_id"] == 1


def test_incomplete_scan_is_category_0_for_every_nodule_and_names_a_suspicious_one() -> None:
    nodules = [
        {"nodule_id": 7, "type": "solid", "mean_diameter_mm": 16.0, "solid_component_mm": None},
        {"nodule_id": 8, "type": "solid", "mean_diameter_mm": 4.0, "solid_component_mm": None},
    ]
    result = categorize_scan(nodules, incomplete_reason="lung apices outside the field of view")
    assert result["category"] == "0" and result["descriptor"] == "Incomplete"
    assert result["deciding_nodule_id"] is None and result["deciding_nodule"] is None
    assert [c["category"] for c in result["nodule_categories"]] == ["0", "0"]  # nothing looks benign
    assert [c["size_category"] for c in result["nodule_categories"]] == ["4B", "2"]  # kept for the reader
    assert "apices" in result["reason"] and "nodule 7 would be Lung-RADS 4B" in result["reason"]


def test_incomplete_scan_without_suspicious_nodule_gives_only_the_reason() -> None:
    result = categorize_scan(
        [{"nodule_id": 1, "type": "solid", "mean_diameter_mm": 4.0}], incomplete_reason="slices 4 mm thick"
    )
    assert result["reason"] == "incomplete: slices 4 mm thick"


def test_category_uses_the_mean_diameter_not_the_equivalent_diameter() -> None:
    # an elongated nodule: equivalent-sphere 5.2 mm (category 2), Lung-RADS mean diameter 6.4 mm (category 3)
    nodule = {
        "nodule_id": 1,
        "type": "solid",
        "mean_diameter_mm": 6.4,
        "equivalent_diameter_mm": 5.2,
        "diameter_mm": 5.2,
    }
    result = categorize_scan([nodule])
    assert result["category"] == "3" and "6.4 mm" in result["reason"]
    assert "mean diameter" in result["size_basis"] and "volume not used" in result["size_basis"]


@pytest.mark.parametrize(
    ("mean_mm", "expected"),
    [(5.94, "2"), (5.95, "3"), (7.94, "3"), (7.95, "4A"), (14.94, "4A"), (14.95, "4B")],
)
def test_solid_boundaries_on_the_mean_diameter(mean_mm: float, expected: str) -> None:
    nodule = {"nodule_id": 1, "type": "solid", "mean_diameter_mm": mean_mm, "diameter_mm": 1.0}
    assert categorize_scan([nodule])["category"] == expected


def test_assign_categories_writes_each_nodule_once() -> None:
    nodules = [
        {"nodule_id": 1, "type": "solid", "mean_diameter_mm": 9.0},
        {"nodule_id": 2, "type": "ground-glass", "mean_diameter_mm": 12.0},
    ]
    result = assign_categories(nodules)
    assert result["category"] == "4A"
    assert [(n["lung_rads"], n["size_category"]) for n in nodules] == [("4A", "4A"), ("2", "2")]
    assign_categories(nodules, incomplete_reason="lungs cut off")
    assert [(n["lung_rads"], n["size_category"]) for n in nodules] == [("0", "4A"), ("0", "2")]
