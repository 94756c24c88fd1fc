"""Comparing two screened case folders end to end: a grown, a stable, a new and a resolved nodule."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk

from pipelines.batch import records
from pipelines.followup.compare import FOLLOWUP_COLUMNS, FollowupError, compare_cases, write_followup
from pipelines.followup.register import AffineMap
from pipelines.imaging import filesys, io
from pipelines.nodules.lungrads import categorize_nodule
from pipelines.screening import outputs
from tests.followup_phantom import grid, render, rotation

A = rotation(2.0, -3.0, 4.0) @ np.diag([1.0, 1.0, 1.02])  # prior point y is current point A @ y + B
B = np.array([6.0, -4.0, 5.0])
TO_ANATOMY = AffineMap(matrix=A, offset=B)
# (anatomy centre LPS mm, mean diameter now, mean diameter then); None: absent on that scan
NODULES = {
    "grown": ((-40.0, -10.0, 15.0), 7.5, 5.0),
    "stable": ((35.0, 12.0, -20.0), 6.0, 6.0),
    "new": ((-30.0, 20.0, -25.0), 5.0, None),
    "resolved": ((42.0, -18.0, 22.0), None, 5.0),
}


def _write_case(folder, scan, lungs, rows, *, scan_name):
    folder.mkdir(parents=True)
    io.write_image(scan, folder.parent / scan_name)
    io.write_image(lungs, folder / "lungs.nii.gz")
    filesys.atomic_write_text(folder / "nodules.csv", records.to_csv(rows, outputs.NODULE_COLUMNS))
    records.write_json(folder / "result.json", {"case_id": folder.name})
    return folder.parent / scan_name


def _rows(when: int, to_frame):
    rows = []
    for name, (center, *diameters) in NODULES.items():
        d = diameters[when]
        if d is None:
            continue
        c = to_frame(np.asarray(center))
        rows.append(
            {
                "nodule_id": len(rows) + 1,
                "center_lps_x_mm": c[0],
                "center_lps_y_mm": c[1],
                "center_lps_z_mm": c[2],
                "mean_diameter_mm": d,
                "volume_mm3": np.pi / 6 * d**3,
                "type": "solid",
                "lung_rads": categorize_nodule(type="solid", diameter_mm=d, solid_component_mm=None)[
                    "category"
                ],
                "name": name,
            }
        )
    return rows


def _blobs(when: int):
    return [(c, d[when] / 2, 40.0) for c, *d in NODULES.values() if d[when] is not None]


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    root = tmp_path_factory.mktemp("followup")
    current, current_lungs = render(
        grid((54, 44, 47), (3.0, 3.0, 3.0)), lambda p: p, nodules=_blobs(0), seed=1
    )
    prior_grid = grid(
        (50, 42, 40), (3.2, 3.1, 3.5), direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1), center=(4, -2, 1)
    )
    prior, prior_lungs = render(prior_grid, TO_ANATOMY.apply, nodules=_blobs(1), seed=2)
    current_scan = _write_case(
        root / "cur" / "case", current, current_lungs, _rows(0, lambda p: p), scan_name="c.nii.gz"
    )
    prior_scan = _write_case(
        root / "pri" / "case", prior, prior_lungs, _rows(1, TO_ANATOMY.inverse().apply), scan_name="p.nii.gz"
    )
    return root / "cur" / "case", root / "pri" / "case", current_scan, prior_scan


def test_statuses_and_categories(cases):
    current_dir, prior_dir, current_scan, prior_scan = cases
    result = compare_cases(
        current_dir, prior_dir, current_scan=current_scan, prior_scan=prior_scan, interval_days=365, threads=2
    )
    by_status = {r["followup_status"]: r for r in result.rows}
    assert sorted(r["followup_status"] for r in result.rows) == ["growing", "new", "resolved", "stable"]
    grown, stable, new, resolved = (by_status[s] for s in ("growing", "stable", "new", "resolved"))
    assert (grown["nodule_id"], grown["prior_nodule_id"], grown["lung_rads"]) == (1, 1, "4A")
    assert grown["diameter_change_mm"] == pytest.approx(2.5)
    assert grown["volume_doubling_time_days"] == pytest.approx(365 * np.log(2) / np.log((7.5 / 5.0) ** 3))
    assert (stable["nodule_id"], stable["prior_nodule_id"], stable["lung_rads"]) == (2, 2, "2")
    assert stable["prior_rule"] == "stepped_3_to_2" and stable["size_category"] == "3"
    assert (new["nodule_id"], new["lung_rads"], new["prior_rule"]) == (3, "3", "new_solid")
    assert resolved["prior_nodule_id"] == 3 and resolved["lung_rads"] == ""
    assert result.category == "4A" and result.lung_rads["deciding_nodule_id"] == 1
    assert result.lung_rads["resolved_nodule_ids"] == [3]
    assert grown["match_distance_mm"] < 2.0 and stable["match_distance_mm"] < 2.0
    csv_path, json_path = write_followup(result, current_dir)
    with open(csv_path, newline="") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == list(FOLLOWUP_COLUMNS) and len(table) == 4
    record = json.loads(json_path.read_text())
    assert record["lung_rads"]["category"] == "4A" and record["registration"]["performed"]


def test_short_interval_keeps_category_3(cases):
    current_dir, prior_dir, current_scan, prior_scan = cases
    result = compare_cases(
        current_dir, prior_dir, current_scan=current_scan, prior_scan=prior_scan, interval_days=120, threads=2
    )
    stable = next(r for r in result.rows if r["followup_status"] == "stable")
    assert stable["lung_rads"] == "3"


def test_refusals_and_no_nodules(cases, tmp_path):
    current_dir, prior_dir, current_scan, prior_scan = cases
    incomplete = tmp_path / "incomplete"
    incomplete.mkdir()
    with pytest.raises(FollowupError, match="no result.json"):
        compare_cases(current_dir, incomplete, current_scan=current_scan, prior_scan=prior_scan)
    empty = tmp_path / "empty"
    empty.mkdir()
    filesys.atomic_write_text(empty / "nodules.csv", records.to_csv([], outputs.NODULE_COLUMNS))
    records.write_json(empty / "result.json", {})
    result = compare_cases(
        empty, prior_dir, current_scan=current_scan, prior_scan=prior_scan, interval_days=None
    )
    assert [r["followup_status"] for r in result.rows] == ["resolved"] * 3
    assert result.category == "1" and not result.registration["performed"]
    assert any("interval unknown" in w for w in result.warnings)
    bad = sitk.Image([4, 4, 4], sitk.sitkInt16)
    with pytest.raises(FollowupError):
        compare_cases(current_dir, prior_dir, current_scan=current_scan, prior_scan=bad, interval_days=30)


def test_nodules_json_and_unassessable_current(cases, tmp_path):
    current_dir, prior_dir, current_scan, prior_scan = cases
    with open(current_dir / "nodules.csv", newline="") as f:
        nodules = [dict(row) for row in csv.DictReader(f)][:1]
    folder = tmp_path / "json_case"
    records.write_json(
        folder / "nodules.json", {"assessment": {"assessable": False, "reasons": ["cut"]}, "nodules": nodules}
    )
    records.write_json(folder / "result.json", {})
    io.write_image(io.read_image(current_dir / "lungs.nii.gz"), folder / "lungs.nii.gz")
    result = compare_cases(
        folder, prior_dir, current_scan=current_scan, prior_scan=prior_scan, interval_days=365
    )
    assert result.category == "0" and "cut" in result.lung_rads["reason"]
    assert result.rows[0]["followup_status"] == "growing" and result.rows[0]["lung_rads"] == "0"
