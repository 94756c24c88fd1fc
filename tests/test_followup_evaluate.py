"""The follow-up measurement against known truth, on a hand-made pairs folder and screening OUT."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipelines.batch import records
from pipelines.followup.compare import FOLLOWUP_COLUMNS
from pipelines.followup.evaluate import evaluate_followup, main, match_points
from pipelines.followup.pair_truth import TRUTH_COLUMNS
from pipelines.followup.pairs import PAIRS_COLUMNS
from pipelines.imaging import filesys

# truth: (truth_id, status, current centre or None, prior centre or None, diameter now, then, volume ratio)
TRUTH = [
    (1, "grown", (10.0, 0.0, 0.0), (12.0, 1.0, 0.0), 10.0, 8.0, 2.0),
    (2, "stable", (-40.0, 5.0, 20.0), (-38.0, 6.0, 20.0), 6.0, 6.0, 1.0),
    (3, "new", (30.0, 30.0, -30.0), None, 7.0, None, None),
    (4, "resolved", None, (-20.0, -20.0, -40.0), None, 5.0, None),
    (5, "grown", (50.0, -30.0, 10.0), (50.0, -30.0, 12.0), 9.0, 6.0, 3.0),  # never detected in the prior
    (6, "new", (-60.0, 40.0, 40.0), None, 5.0, None, None),  # detected, but paired with a false prior nodule
]


def _truth_row(tid, status, cur, pri, d_now, d_then, ratio):
    row = {"pair_id": "p0", "truth_id": tid, "status": status, "volume_ratio": ratio}
    for key, c, d in (("cur", cur, d_now), ("prior", pri, d_then)):
        if c is not None:
            row.update({f"{key}_x": c[0], f"{key}_y": c[1], f"{key}_z": c[2], f"{key}_diameter_mm": d})
    return row


def _nodule(nid, c):
    return {"nodule_id": nid, **dict(zip(("center_lps_x_mm", "center_lps_y_mm", "center_lps_z_mm"), c))}


def _setup(tmp_path: Path) -> tuple[Path, Path]:
    pairs, out = tmp_path / "pairs", tmp_path / "out"
    pairs.mkdir()
    filesys.atomic_write_text(
        pairs / "truth.csv", records.to_csv([_truth_row(*t) for t in TRUTH], TRUTH_COLUMNS)
    )
    pair = {"pair_id": "p0", "current": "current/p0.nii.gz", "prior": "prior/p0.nii.gz", "interval_days": 300}
    filesys.atomic_write_text(pairs / "pairs.csv", records.to_csv([pair], PAIRS_COLUMNS))
    cur_dir, pri_dir = out / "cases" / "p0", out / "priors" / "cases" / "p0"
    # ours: current 1 (truth 1, 1 mm off), 2 (truth 2), 3 (truth 3), 5 (truth 5), 6 (truth 6), 7 (false)
    current = [
        _nodule(1, (11.0, 0.0, 0.0)),
        _nodule(2, (-40.0, 5.0, 21.0)),
        _nodule(3, (30.0, 31.0, -30.0)),
        _nodule(5, (50.0, -30.0, 10.0)),
        _nodule(6, (-60.0, 40.0, 41.0)),
        _nodule(7, (0.0, 90.0, 0.0)),
    ]
    # prior: 1 (truth 1), 2 (truth 2), 3 (truth 4, resolved), 4 (false)
    prior = [
        _nodule(1, (12.0, 1.0, 1.0)),
        _nodule(2, (-38.0, 6.0, 20.0)),
        _nodule(3, (-20.0, -20.0, -41.0)),
        _nodule(4, (-90.0, 0.0, 0.0)),
    ]
    for folder, nodules in ((cur_dir, current), (pri_dir, prior)):
        records.write_json(folder / "nodules.json", {"nodules": nodules})
        records.write_json(folder / "result.json", {"case_id": "p0"})
    rows = [
        {"nodule_id": 1, "prior_nodule_id": 1, "followup_status": "growing", "prior_rule": "growing_solid",
         "volume_now_mm3": 220.0, "volume_then_mm3": 100.0},  # ratio 2.2 against 2.0: 10 %
        {"nodule_id": 2, "prior_nodule_id": 2, "followup_status": "stable", "prior_rule": "stable",
         "volume_now_mm3": 100.0, "volume_then_mm3": 100.0},
        {"nodule_id": 3, "followup_status": "new", "prior_rule": "new_solid"},
        {"nodule_id": 5, "followup_status": "new", "prior_rule": "new_solid"},
        {"nodule_id": 6, "prior_nodule_id": 4, "followup_status": "stable", "prior_rule": "stable",
         "volume_now_mm3": 60.0, "volume_then_mm3": 60.0},
        {"nodule_id": 7, "followup_status": "new", "prior_rule": "new_solid"},
        {"prior_nodule_id": 3, "followup_status": "resolved"},
    ]  # fmt: skip
    filesys.atomic_write_text(cur_dir / "followup.csv", records.to_csv(rows, FOLLOWUP_COLUMNS))
    records.write_json(cur_dir / "followup.json", {"prior_case": str(pri_dir)})
    return pairs, out


def test_match_points_is_one_to_one_nearest_first_within_the_gate() -> None:
    truth = np.array([[0.0, 0, 0], [3.0, 0, 0], [50.0, 0, 0]])
    ours = np.array([[2.5, 0, 0], [0.5, 0, 0], [58.0, 0, 0]])
    assert match_points(truth, np.array([5.0, 5.0, 5.0]), ours) == {1: 0, 0: 1}
    assert match_points(truth, np.array([5.0, 5.0, 10.0]), ours)[2] == 2
    assert match_points(truth, np.ones(3), np.zeros((0, 3))) == {}


def test_evaluate_counts_detection_and_comparison_apart(tmp_path: Path) -> None:
    pairs, out = _setup(tmp_path)
    report = evaluate_followup(pairs, out)
    assert report["detection"]["current"] == {"truth": 5, "detected": 5, "sensitivity": 1.0}
    assert report["detection"]["prior"] == {"truth": 4, "detected": 3, "sensitivity": 0.75}
    assert (report["detection"]["false_nodules_current"], report["detection"]["false_nodules_prior"]) == (
        1,
        1,
    )
    m = report["matching"]
    # truth pairs 1, 2, 5; 5's prior end was never detected, so 1 and 2 count, both paired correctly
    assert (m["truth_pairs"], m["both_ends_detected"], m["correct"], m["wrong_match"]) == (3, 2, 2, 0)
    assert (m["our_pairs"], m["our_pairs_same_truth"], m["our_pairs_with_a_false_nodule"]) == (3, 2, 1)
    assert report["matching_accuracy"] == 1.0
    assert report["volume_change_error_n"] == 2
    assert report["volume_change_error_median"] == 0.05  # 10 % and 0 %
    assert report["new"] == {
        "truth": 2,
        "detected": 2,
        "labelled_new": 1,
    }  # truth 6 was paired with a false one
    assert report["new_nodule_recall"] == 0.5
    assert report["growth"]["labelled_growing"] == 1 and report["growth"]["rate_of_all"] == 0.5
    assert report["resolved"] == {"truth": 1, "prior_detected": 1, "labelled_resolved": 1}
    assert report["prior_rules"]["new_solid"] == 3
    assert report["targets"]["new_nodule_recall"]["met"] is False
    assert report["targets"]["matching_accuracy"]["met"] is True


def test_module_entry_writes_json_and_markdown(tmp_path: Path) -> None:
    pairs, out = _setup(tmp_path)
    assert (
        main([str(pairs), str(out), "--json", str(tmp_path / "r.json"), "--md", str(tmp_path / "r.md")]) == 0
    )
    assert json.loads((tmp_path / "r.json").read_text())["matching_accuracy"] == 1.0
    assert "new_nodule_recall" in (tmp_path / "r.md").read_text()
