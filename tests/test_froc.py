"""LUNA16 FROC/CPM: the official conformance fixture and a hand-computed case."""

from __future__ import annotations

import csv
import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from pipelines.evaluation import froc
from pipelines.evaluation.froc import Finding, Mark

# ------------------------------------------------------------------------------ hand-computed case
# Scan A: nodule N1 (0,0,0) d=10, nodule N2 (50,0,0) d=6, excluded E1 (0,50,0) d=-1 (radius 5).
# Scan B: nodule N3 (100,0,0) d=8.  Scan C: nothing (still counts in the FP/scan divisor).
NODULES = [
    Finding("A", (0.0, 0.0, 0.0), 10.0, 0),
    Finding("A", (50.0, 0.0, 0.0), 6.0, 1),
    Finding("B", (100.0, 0.0, 0.0), 8.0, 2),
]
EXCLUDED = [Finding("A", (0.0, 50.0, 0.0), -1.0, 0)]
MARKS = [
    Mark("A", (1.0, 0.0, 0.0), 0.90, 0),  # hits N1 (double: lower than the next one)
    Mark("A", (3.0, 0.0, 0.0), 0.95, 1),  # hits N1 -> N1 scored 0.95
    Mark("A", (0.0, 54.0, 0.0), 0.80, 2),  # 4 mm from a diameter -1 finding: ignored
    Mark("A", (0.0, 56.0, 0.0), 0.70, 3),  # 6 mm from it: FP
    Mark("A", (53.5, 0.0, 0.0), 0.99, 4),  # 3.5 mm from N2 (radius 3): FP
    Mark("B", (100.0, 3.0, 0.0), 0.50, 5),  # hits N3
    Mark("B", (0.0, 0.0, 0.0), 0.60, 6),  # FP
    Mark("B", (200.0, 0.0, 0.0), 0.30, 7),  # FP
    Mark("D", (0.0, 0.0, 0.0), 1.00, 8),  # scan not evaluated: ignored
]
UIDS = ["A", "B", "C"]


def _hand_match() -> froc.MatchResult:
    return froc.match_marks(nodules=NODULES, marks=MARKS, seriesuids=UIDS, excluded=EXCLUDED)


def test_hand_case_counts_and_classes():
    m = _hand_match()
    assert m.mark_class == [
        "double",
        "TP",
        "ignored_excluded",
        "FP",
        "FP",
        "TP",
        "FP",
        "FP",
        "outside_subset",
    ]
    c = m.counts
    assert (c["TP"], c["FP"], c["FN"], c["total_nodules"]) == (2, 4, 1, 3)
    assert (c["ignored_on_excluded"], c["double_detections"], c["total_candidates"], c["n_scans"]) == (
        1,
        1,
        8,
        3,
    )
    np.testing.assert_array_equal(m.nodule_score, [0.95, np.nan, 0.50])


def test_hand_case_froc_curve_and_cpm():
    # sorted: .99 FP, .95 TP, .7 FP, .6 FP, .5 TP, .3 FP; the (2 FP, 1 TP) point is collinear -> dropped
    curve = froc.curve_for(_hand_match())
    np.testing.assert_allclose(curve.fps, [0, 1 / 3, 1 / 3, 1, 1, 4 / 3])
    np.testing.assert_allclose(curve.sensitivity, [0, 0, 1 / 3, 1 / 3, 2 / 3, 2 / 3])
    np.testing.assert_allclose(curve.thresholds, [np.inf, 0.99, 0.95, 0.6, 0.5, 0.3])
    interp = froc.sensitivities_at(curve, convention="interp")
    np.testing.assert_allclose(interp, [0, 0, 1 / 3, 2 / 3, 2 / 3, 2 / 3, 2 / 3])
    assert froc.cpm(curve) == pytest.approx(3 / 7, abs=1e-12)
    # nearest point, first wins on ties, starting distance max(fps) = 4/3 (unicorn_eval getCPM):
    # rates 4 and 8 are farther than 4/3 from every point -> 0
    nearest = froc.sensitivities_at(curve, convention="nearest")
    np.testing.assert_allclose(nearest, [0, 0, 0, 1 / 3, 2 / 3, 0, 0])
    assert froc.threshold_at(curve, 4.0) == 0.3
    assert froc.threshold_at(curve, 0.5) == 0.95


def test_curve_restricted_to_a_nodule_subset_keeps_false_positives():
    m = _hand_match()
    curve = froc.curve_for(m, np.array([False, False, True]))  # N3 only; hits on N1 ignored, not FP
    # FP .99, .7, .6 (the .7 point is collinear, dropped), TP .5, FP .3
    np.testing.assert_allclose(curve.fps, [0, 1 / 3, 1, 1, 4 / 3])
    np.testing.assert_allclose(curve.sensitivity, [0, 0, 0, 1, 1])


def test_cap_keeps_only_marks_strictly_above_the_cut():
    p = np.array([5, 4, 3, 3, 3, 1], dtype=float)
    np.testing.assert_array_equal(
        froc.cap_marks(p, max_marks=3), [1, 1, 0, 0, 0, 0]
    )  # ties at the cut dropped
    np.testing.assert_array_equal(froc.cap_marks(p, max_marks=5), [1, 1, 1, 1, 1, 0])
    assert froc.cap_marks(p, max_marks=6).all() and froc.cap_marks(p, max_marks=0).all()


def test_no_false_positives_and_no_detections_border_cases():
    only_tp = froc.froc_curve(tp_scores=np.array([0.9, 0.8]), fp_scores=np.array([]), n_nodules=4, n_scans=2)
    np.testing.assert_allclose(only_tp.fps, 0.0)
    assert only_tp.sensitivity[-1] == pytest.approx(0.5)
    only_fp = froc.froc_curve(tp_scores=np.array([]), fp_scores=np.array([0.9]), n_nodules=4, n_scans=2)
    np.testing.assert_allclose(only_fp.sensitivity, 0.0)
    empty = froc.froc_curve(tp_scores=np.array([]), fp_scores=np.array([]), n_nodules=0, n_scans=1)
    assert froc.cpm(empty) == 0.0


def test_bootstrap_is_seeded_and_collapses_on_one_scan():
    m = _hand_match()
    a = froc.bootstrap_froc(m, n_bootstrap=200, seed=3)
    b = froc.bootstrap_froc(m, n_bootstrap=200, seed=3)
    np.testing.assert_array_equal(a.cpm, b.cpm)
    assert np.nanstd(a.cpm) > 0
    lo, hi = a.interval(a.cpm)
    assert lo <= froc.cpm(froc.curve_for(m)) <= hi
    # a single scan: every replicate is the scan itself
    one = froc.match_marks(nodules=NODULES, marks=MARKS, seriesuids=["A"], excluded=EXCLUDED)
    boot = froc.bootstrap_froc(one, n_bootstrap=20, seed=0)
    expected = froc.sensitivities_at(froc.curve_for(one))
    np.testing.assert_allclose(boot.sensitivities, np.broadcast_to(expected, boot.sensitivities.shape))


def test_size_buckets_and_case_attributes(tmp_path: Path):
    assert [froc.size_bucket(d) for d in (2.5, 5.99, 6.0, 9.99, 10.0, 20.0, 35.0)] == [
        "3-6",
        "3-6",
        "6-10",
        "6-10",
        "10-20",
        "20-30+",
        "20-30+",
    ]
    table = tmp_path / "cases.csv"
    table.write_text(
        "seriesuid,nodule_id,type,location,diameter_mm,solid_component_mm,coordX,coordY,coordZ,mean_hu\n"
        "A,1,solid,central,10,10,0.5,0,0,40\n"
        "B,1,ground_glass,juxtapleural,8,0,100,0.4,0,-600\n"
        "B,2,part_solid,central,8,3,140,0,0,-300\n"
    )
    attrs = froc.attach_case_attributes(NODULES, table)
    assert attrs == [
        {"type": "solid", "location": "central"},
        {"type": "unknown", "location": "unknown"},
        {"type": "ground_glass", "location": "juxtapleural"},
    ]


def test_reads_seriesuids_with_or_without_header(tmp_path: Path):
    (tmp_path / "a.csv").write_text("1.2.3\n1.2.4\n\n1.2.3\n")
    (tmp_path / "b.csv").write_text("seriesuid\n1.2.3\n")
    assert froc.read_seriesuids(tmp_path / "a.csv") == ["1.2.3", "1.2.4"]
    assert froc.read_seriesuids(tmp_path / "b.csv") == ["1.2.3"]
    (tmp_path / "bad.csv").write_text("uid,x\n")
    with pytest.raises(ValueError, match="missing column"):
        froc.read_marks_csv(tmp_path / "bad.csv")


# ------------------------------------------------------------------------------ official fixture
def _fixture(shared_data: Path) -> Path:
    d = shared_data / "luna16"
    if not (d / "expected.json").is_file():
        pytest.skip("LUNA16 conformance fixture absent")
    return d


def _fixture_match(d: Path, submission: str, *, full: bool = False, cap: int = 100) -> froc.MatchResult:
    suffix = "_full" if full else ""
    return froc.match_marks(
        nodules=froc.read_findings_csv(d / f"annotations{suffix}.csv"),
        excluded=froc.read_findings_csv(d / f"annotations_excluded{suffix}.csv"),
        marks=froc.read_marks_csv(d / submission),
        seriesuids=froc.read_seriesuids(d / "seriesuids_subset.csv"),
        max_marks_per_scan=cap,
    )


@pytest.mark.parametrize("submission", ["submission.csv", "submission_cap100.csv"])
def test_official_fixture_counts_sensitivities_and_cpm(shared_data: Path, submission: str):
    d = _fixture(shared_data)
    exp = json.loads((d / "expected.json").read_text())
    m = _fixture_match(d, submission)
    keys = ("TP", "FP", "FN", "total_candidates", "total_nodules", "ignored_on_excluded", "double_detections")
    assert {k: m.counts[k] for k in keys} == {k: exp["official_counts"][k] for k in keys}
    assert m.counts["n_scans"] == exp["evaluation_setup"]["n_scans"] == 60
    curve = froc.curve_for(m)
    for conv in froc.CPM_CONVENTIONS:
        ref = exp[f"cpm_{conv}"]
        sens = froc.sensitivities_at(curve, convention=conv)
        exact = [float(Fraction(s)) for s in ref["sensitivities_exact"]]
        np.testing.assert_allclose(sens, exact, rtol=0, atol=1e-12)
        assert abs(sens.mean() - ref["cpm"]) < 1e-9
    # the FROC points themselves, as the official script wrote them (9 decimals)
    official = np.loadtxt(d / "official_outputs" / "froc_submission.txt", delimiter=",")
    assert curve.fps.shape[0] == official.shape[0] == exp["froc_curve"]["n_points"]
    np.testing.assert_allclose(curve.fps, official[:, 0], atol=6e-10)
    np.testing.assert_allclose(curve.sensitivity, official[:, 1], atol=6e-10)
    np.testing.assert_allclose(curve.thresholds[1:], official[1:, 2], atol=6e-10)


def test_official_fixture_row_classes(shared_data: Path):
    d = _fixture(shared_data)
    m = _fixture_match(d, "submission.csv")
    with open(d / "submission_labels.csv", newline="") as fh:
        labels = [r["expected_class"] for r in csv.DictReader(fh)]
    hit = {"TP": "hit", "double": "hit"}  # which of two equal-probability hits is "the" TP is arbitrary
    assert [hit.get(c, c) for c in m.mark_class] == [hit.get(c, c) for c in labels]
    lines = (d / "official_outputs" / "nodulesWithoutCandidate_submission.txt").read_text().splitlines()
    official_missed = {(c[0], round(float(c[2]), 4)) for c in (ln.split(",") for ln in lines if ln)}
    ours = {
        (n.seriesuid, round(n.center_lps_mm[0], 4)) for n, s in zip(m.nodules, m.nodule_score) if np.isnan(s)
    }
    assert ours == official_missed and len(ours) == 16


def test_official_fixture_full_files_and_no_cap_variant(shared_data: Path):
    d = _fixture(shared_data)
    exp = json.loads((d / "expected.json").read_text())
    full = _fixture_match(d, "submission.csv", full=True)
    assert (full.counts["TP"], full.counts["FP"], full.counts["ignored_on_excluded"]) == (61, 613, 29)
    assert froc.cpm(froc.curve_for(full)) == pytest.approx(exp["cpm_interp"]["cpm"], abs=1e-9)
    nocap = _fixture_match(d, "submission_cap100.csv", cap=0)
    ref = exp["cap100_variant"]["official_functions_without_cap"]
    assert (nocap.counts["TP"], nocap.counts["FP"], nocap.counts["FN"]) == (ref["TP"], ref["FP"], ref["FN"])
    curve = froc.curve_for(nocap)
    assert froc.cpm(curve) == pytest.approx(ref["cpm_interp"], abs=1e-9)
    assert froc.cpm(curve, convention="nearest") == pytest.approx(ref["cpm_nearest"], abs=1e-9)
