"""Evaluation API: detection report files, segmentation metrics, lung Dice, official fixture end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.metrics import compute_dice

from pipelines.evaluation import evaluate as evaluation

ANNOTATIONS = "seriesuid,coordX,coordY,coordZ,diameter_mm\nA,0,0,0,10\nA,50,0,0,6\nB,100,0,0,8\n"
EXCLUDED = "seriesuid,coordX,coordY,coordZ,diameter_mm\nA,0,50,0,-1\n"
PREDICTIONS = (
    "seriesuid,coordX,coordY,coordZ,probability\n"
    "A,1,0,0,0.90\nA,3,0,0,0.95\nA,0,54,0,0.80\nA,0,56,0,0.70\nA,53.5,0,0,0.99\n"
    "B,100,3,0,0.50\nB,0,0,0,0.60\nB,200,0,0,0.30\nD,0,0,0,1.0\n"
)
CASES = (
    "seriesuid,nodule_id,type,location,diameter_mm,solid_component_mm,coordX,coordY,coordZ,mean_hu\n"
    "A,1,solid,central,10,10,0,0,0,40\nA,2,ground_glass,central,6,0,50,0,0,-650\n"
    "B,1,solid,juxtapleural,8,8,100,0,0,30\n"
)


def _write_csvs(tmp: Path) -> dict[str, Path]:
    files = {"annotations": ANNOTATIONS, "excluded": EXCLUDED, "predictions": PREDICTIONS, "cases": CASES}
    out = {}
    for name, text in files.items():
        out[name] = tmp / f"{name}.csv"
        out[name].write_text(text)
    out["uids"] = tmp / "uids.csv"
    out["uids"].write_text("A\nB\nC\n")
    return out


def test_evaluate_writes_metrics_plot_and_summary(tmp_path: Path):
    f = _write_csvs(tmp_path)
    m = evaluation.evaluate(
        annotations=f["annotations"],
        predictions=f["predictions"],
        excluded=f["excluded"],
        seriesuids=f["uids"],
        cases_table=f["cases"],
        out_dir=tmp_path / "out",
        n_bootstrap=100,
        seed=1,
    )
    det = m["detection"]
    assert det["cpm"] == pytest.approx(3 / 7) and det["cpm_nearest"]["cpm"] == pytest.approx(1 / 7)
    assert (det["counts"]["TP"], det["counts"]["FP"], det["counts"]["FN"], det["counts"]["n_scans"]) == (
        2,
        4,
        1,
        3,
    )
    lo, hi = det["ci95_cpm"]
    assert 0 <= lo <= det["cpm"] <= hi <= 1
    assert set(det["by_type"]) == {"solid", "ground_glass"}
    assert det["by_type"]["ground_glass"]["n_detected_any"] == 0
    assert det["by_type"]["solid"]["sensitivity_any"] == 1.0
    assert set(det["by_size"]) == {"6-10", "10-20"}
    assert det["nodules_ge6mm"]["n_nodules"] == 3
    missed = det["missed_nodules"]
    assert [(n["seriesuid"], n["coordX"], n["reason"], n["type"]) for n in missed] == [
        ("A", 50.0, "no_candidate", "ground_glass")
    ]
    on_disk = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert on_disk["detection"]["cpm"] == pytest.approx(3 / 7)
    assert on_disk["detection"]["froc_curve"]["thresholds"][0] is None  # inf -> null (strict JSON)
    assert (tmp_path / "out" / "froc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "CPM **0.429**" in summary and "ground_glass" in summary
    assert not list((tmp_path / "out").glob(".tmp-*"))


def test_default_seriesuids_are_those_seen(tmp_path: Path):
    f = _write_csvs(tmp_path)
    m = evaluation.evaluate(
        annotations=f["annotations"], predictions=f["predictions"], out_dir=tmp_path / "o", n_bootstrap=0
    )
    det = m["detection"]
    # without the list: scans A, B and D (a row of D is a false positive now); C is unknown
    assert det["counts"]["n_scans"] == 3 and det["counts"]["FP"] == 6  # no excluded file: ignored mark is FP
    assert "ci95_cpm" not in det


# ------------------------------------------------------------------------------ segmentation
def _ball(shape, center_zyx, radius_vox) -> np.ndarray:
    zz, yy, xx = np.indices(shape)
    c = np.asarray(center_zyx)
    return (zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 <= radius_vox**2


def _ref_and_pred() -> tuple[np.ndarray, np.ndarray]:
    shape = (40, 40, 40)
    ref = np.zeros(shape, np.uint8)
    ref[_ball(shape, (10, 10, 10), 4)] = 1
    ref[_ball(shape, (28, 28, 28), 3)] = 2
    ref[_ball(shape, (10, 30, 30), 2)] = 3  # never predicted
    pred = np.zeros(shape, np.uint8)
    pred[_ball(shape, (10, 10, 11), 4)] = 4  # shifted by one voxel in x
    pred[_ball(shape, (28, 28, 28), 3)] = 7  # exact
    pred[_ball(shape, (30, 8, 30), 2)] = 9  # false positive component
    return pred, ref


def test_nodule_metrics_match_hand_computation():
    pred, ref = _ref_and_pred()
    spacing_zyx = (1.0, 0.8, 0.8)
    voxel = 0.64
    res = evaluation.nodule_metrics(pred, ref, spacing_zyx=spacing_zyx)
    rows = {r["ref_label"]: r for r in res["nodules"]}
    a, b = ref == 1, pred == 4
    assert rows[1]["pred_label"] == 4
    assert rows[1]["dice"] == pytest.approx(2 * (a & b).sum() / (a.sum() + b.sum()))
    assert 0.7 < rows[1]["dice"] < 0.95
    assert rows[1]["ref_volume_mm3"] == pytest.approx(a.sum() * voxel)
    assert rows[2]["dice"] == pytest.approx(1.0) and rows[2]["volume_error_mm3"] == pytest.approx(0.0)
    assert rows[2]["diameter_error_mm"] == pytest.approx(0.0, abs=1e-9)
    v = (ref == 2).sum() * voxel
    assert rows[2]["ref_diameter_mm"] == pytest.approx((6 * v / np.pi) ** (1 / 3))
    assert rows[3]["pred_label"] is None and rows[3]["dice"] == 0.0
    assert (res["n_pred_components"], res["n_unmatched_pred"]) == (3, 1)
    # a binary prediction is split into connected components with the same result
    binary = evaluation.nodule_metrics((pred > 0).astype(np.uint8), ref, spacing_zyx=spacing_zyx)
    assert [r["dice"] for r in binary["nodules"]] == pytest.approx([r["dice"] for r in res["nodules"]])


def test_lung_dice_per_side():
    ref = np.zeros((10, 20, 40), np.uint8)
    ref[2:8, 4:16, 4:18] = 1  # right lung: smaller x
    ref[2:8, 4:16, 22:36] = 2
    pred = ref.copy()
    pred[2:8, 4:16, 4:6] = 0  # right lung loses 2 of 14 columns
    d = evaluation.lung_dice(pred, ref)
    assert d["right"] == pytest.approx(2 * 12 / (12 + 14)) and d["left"] == pytest.approx(1.0)
    assert evaluation.lung_dice(pred, np.where(ref == 2, 0, ref))["left"] is None
    # same numbers as MONAI's compute_dice on one-hot channels
    one_hot = [torch.from_numpy(np.stack([x == 1, x == 2]))[None] for x in (pred, ref)]
    monai_dice = compute_dice(one_hot[0], one_hot[1], include_background=True)[0]
    assert [d["right"], d["left"]] == pytest.approx(monai_dice.tolist())


def _write(arr: np.ndarray, path: Path, *, orient: str | None = None) -> None:
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.8, 0.8, 1.0))
    img.SetOrigin((-10.0, 20.0, -100.0))
    if orient:
        img = sitk.DICOMOrient(img, orient)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))


def test_evaluate_segmentation_folders_resamples_other_orientation(tmp_path: Path):
    pred, ref = _ref_and_pred()
    lungs = np.zeros_like(ref)
    lungs[5:35, 5:35, 2:18] = 1
    lungs[5:35, 5:35, 22:38] = 2
    _write(ref, tmp_path / "ref" / "labels" / "A.nii.gz")
    _write(lungs, tmp_path / "ref" / "lungs" / "A.mhd")
    # a screening output folder keeps its cases under cases/
    _write(pred, tmp_path / "pred" / "cases" / "A" / "nodules.nii.gz")
    _write(lungs, tmp_path / "pred" / "cases" / "A" / "lungs.nii.gz", orient="RAS")  # other orientation
    f = _write_csvs(tmp_path)
    m = evaluation.evaluate(
        annotations=f["annotations"],
        predictions=f["predictions"],
        seriesuids=["A", "B"],
        out_dir=tmp_path / "out",
        pred_dir=tmp_path / "pred",
        ref_dir=tmp_path / "ref",
        n_bootstrap=0,
    )
    seg = m["segmentation"]
    assert seg["summary"]["lung_dice_right_mean"] == pytest.approx(1.0)
    assert seg["summary"]["lung_dice_left_mean"] == pytest.approx(1.0)
    assert (seg["summary"]["n_ref_nodules"], seg["summary"]["n_matched"]) == (3, 2)
    case = seg["cases"][0]
    centre = case["nodules"][1]["center_lps_mm"]  # label 2 at voxel (28, 28, 28) [z, y, x]
    assert centre == pytest.approx([-10 + 28 * 0.8, 20 + 28 * 0.8, -100 + 28.0])
    assert "Segmentation" in (tmp_path / "out" / "summary.md").read_text()


# ------------------------------------------------------------------------------ fixture end to end
def test_evaluate_on_official_fixture(shared_data: Path, tmp_path: Path):
    d = shared_data / "luna16"
    if not (d / "expected.json").is_file():
        pytest.skip("LUNA16 conformance fixture absent")
    exp = json.loads((d / "expected.json").read_text())
    m = evaluation.evaluate(
        annotations=d / "annotations.csv",
        predictions=d / "submission_cap100.csv",
        excluded=d / "annotations_excluded.csv",
        seriesuids=d / "seriesuids_subset.csv",
        out_dir=tmp_path,
        n_bootstrap=200,
        seed=0,
    )
    det = m["detection"]
    for k in ("TP", "FP", "FN", "total_candidates", "ignored_on_excluded", "double_detections"):
        assert det["counts"][k] == exp["official_counts"][k]
    assert det["cpm"] == pytest.approx(exp["cpm_interp"]["cpm"], abs=1e-9)
    assert det["cpm_nearest"]["cpm"] == pytest.approx(exp["cpm_nearest"]["cpm"], abs=1e-9)
    assert det["sensitivities"] == pytest.approx(exp["cpm_interp"]["sensitivities"], abs=1e-12)
    assert sum(1 for n in det["nodules"] if n["reason"] == "no_candidate") == exp["official_counts"]["FN"]
    assert len(det["missed_nodules"]) == round(77 * (1 - exp["cpm_interp"]["sensitivities"][5]))
