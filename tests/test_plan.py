"""Dataset fingerprint and plan: target spacing, pooling, patch size, validated plan.json accessor."""

from __future__ import annotations

import json

import numpy as np
import pytest
from mri_phantoms import make_mri_phantoms

from pipelines.segmentation.plan import (
    PlanError,
    SegPlan,
    load_plan,
    make_plan,
    patch_size,
    plan_dataset,
    pooling_strides,
    target_spacing,
)


def test_target_spacing_is_the_median_and_handles_anisotropy():
    iso = [[1.0, 0.8, 0.8], [1.2, 0.7, 0.7], [1.5, 0.9, 0.9]]
    assert target_spacing(np.array(iso)) == (1.2, 0.8, 0.8)
    # thick slices (5-7 mm over 0.8 mm in plane): the coarse axis takes its 10th percentile
    aniso = [[5.0, 0.8, 0.8], [6.0, 0.8, 0.8], [7.0, 0.8, 0.8], [7.0, 0.8, 0.8]]
    z, y, x = target_spacing(np.array(aniso))
    assert z == pytest.approx(np.percentile([5, 6, 7, 7], 10)) and (y, x) == (0.8, 0.8)


def test_pooling_waits_for_the_coarse_axis():
    strides = pooling_strides((20, 192, 224), (6.5, 0.78, 0.78))
    assert strides[:3] == [(1, 2, 2)] * 3  # z (6.5 mm) is pooled only once x/y reach ~3 mm
    assert strides[3][0] == 2
    assert pooling_strides((8, 8, 8), (1, 1, 1)) == [(2, 2, 2)]  # stops at 4-voxel maps


@pytest.mark.parametrize("budget", [16**3, 48**3, 96**3])
def test_patch_fits_the_budget_and_divides_by_the_strides(budget):
    patch, strides = patch_size((25, 256, 256), (6.5, 0.78, 0.78), max_patch_voxels=budget)
    div = np.prod(np.asarray(strides).reshape(-1, 3), axis=0)
    assert np.prod(patch) <= budget
    assert all(p % d == 0 for p, d in zip(patch, div))
    assert patch[0] <= 25  # never larger than the median image along the thin axis


def _plan(**changes) -> SegPlan:
    base = dict(
        modality="mri", num_channels=1, label_values=(0, 1, 2), label_names={}, target_spacing_zyx=(2, 1, 1),
        patch_size_zyx=(8, 16, 16), strides=((2, 2, 2), (1, 2, 2)), features=(8, 16, 32),
    )  # fmt: skip
    return SegPlan(**{**base, **changes})


def test_plan_round_trip_and_validation_errors_list_the_choices(tmp_path):
    plan = _plan(label_names={"2": "lesion"})
    path = plan.save(tmp_path / "plan.json")
    assert load_plan(tmp_path) == plan and plan.num_classes == 3 and plan.divisors == (2, 4, 4)
    assert plan.label_name(2) == "lesion" and plan.label_name(1) == "label_1"
    with pytest.raises(PlanError, match=r"'pet' is unknown; valid choices are \['ct', 'mri'\]"):
        _plan(modality="pet")
    with pytest.raises(PlanError, match="multiples of the total strides"):
        _plan(patch_size_zyx=(7, 16, 16))
    with pytest.raises(PlanError, match="statistics for each of the 1 channel"):
        _plan(modality="ct")
    with pytest.raises(PlanError, match="'n4'"):
        _plan(modality="ct", n4=True, intensity=({"mean": 0},))
    data = json.loads(path.read_text())
    data["roi"] = [1, 2, 3]
    path.write_text(json.dumps(data))
    with pytest.raises(PlanError, match=r"unknown field\(s\) \['roi'\]; valid fields are \['modality'"):
        load_plan(path)
    del data["roi"], data["strides"]
    path.write_text(json.dumps(data))
    with pytest.raises(PlanError, match=r"missing field\(s\) \['strides'\]"):
        load_plan(path)
    with pytest.raises(PlanError, match="plan file not found"):
        load_plan(tmp_path / "nothing")


def test_make_plan_from_a_fingerprint():
    fp = {
        "n_cases": 3,
        "spacings_zyx": [[3.0, 1.0, 1.0], [3.0, 1.0, 1.0], [3.0, 1.0, 1.0]],
        "shapes_zyx": [[40, 100, 100], [50, 120, 120], [60, 110, 110]],
        "label_values": [0, 1, 4],
        "intensity": [{"mean": 40.0, "std": 20.0, "percentile_00_5": -50.0, "percentile_99_5": 200.0}],
    }
    plan = make_plan(fp, modality="ct", max_patch_voxels=32**3, label_names={"4": "tumour"})
    assert plan.target_spacing_zyx == (3.0, 1.0, 1.0) and plan.n4 is False
    assert np.prod(plan.patch_size_zyx) <= 32**3 and plan.label_values == (0, 1, 4)
    assert plan.label_names == {"1": "label_1", "4": "tumour"}
    assert plan.fingerprint["median_shape_zyx"] == [50.0, 110.0, 110.0]


def test_plan_dataset_on_phantoms(tmp_path):
    data = make_mri_phantoms(tmp_path, n=3, seed=5, channels=2)
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "organ": 1, "lesion": 2}}))
    plan = plan_dataset(images=data / "images", labels=data / "labels", modality="mri", out=tmp_path / "m")
    assert load_plan(tmp_path / "m") == plan
    assert plan.num_channels == 2 and plan.label_values == (0, 1, 2) and plan.n4
    assert plan.label_names == {"1": "organ", "2": "lesion"}
    assert plan.target_spacing_zyx == (4.0, 2.0, 2.0)
    assert all(p <= n for p, n in zip(plan.patch_size_zyx, (12, 24, 24)))
    # channel statistics come from the labelled voxels: channel 0 (organ/lesion bright) > channel 1
    assert plan.intensity[0]["mean"] > plan.intensity[1]["mean"] > 0
