"""Follow-up screening end to end (issue 22): ``screen --pairs`` / ``--prior`` on tiny chest scans with a bright ball
that the threshold network finds, the follow-up categories written into the case, a failing prior as a failure
row, and a chained follow-up that takes an earlier case folder as its prior."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import SimpleITK as sitk
import torch
from helpers import (
    FAST,
    ThresholdNet,
    chest_hu,
    lung_centre_zyx,
    patched_network,
    read_rows,
    to_image,
    write_case,
)

from pipelines.cli.main import main
from pipelines.followup.run import PairInput, read_pairs_table, screen_followup

SHAPE = (70, 96, 112)  # 2.5 mm voxels: lungs over 100 mm in z and over 500 mL, so the scans are assessable
SPACING = (2.5, 2.5, 2.5)
BALL_HU = 200  # solid, not calcified; above the threshold network's ~125 HU
NET = {"logit_temperature": 1.0, "candidate_threshold": 0.1}


def _scan(radius_mm: float, seed: int) -> sitk.Image:
    hu = chest_hu(
        SHAPE, spacing_zyx=SPACING, sphere=(lung_centre_zyx(SHAPE), radius_mm, BALL_HU), noise_hu=5, seed=seed
    )
    return to_image(hu, spacing_xyz=SPACING)


@pytest.fixture(scope="module")
def followed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One run of a pairs table: a nodule that grew (interval given), and a pair whose prior is not an image."""
    root = tmp_path_factory.mktemp("followup_run")
    scans = root / "table" / "scans"
    write_case(_scan(7.5, 1), scans / "cur.nii.gz")
    write_case(_scan(5.5, 2), scans / "pri.nii.gz")
    write_case(to_image(chest_hu()), scans / "cur_b.nii.gz")  # tiny: only its failing prior matters
    (scans / "broken.nii.gz").write_text("not an image")
    table = root / "table" / "pairs.csv"
    table.write_text(
        "current,prior,interval_days\nscans/cur.nii.gz,scans/pri.nii.gz,200\nscans/cur_b.nii.gz,scans/broken.nii.gz,\n"
    )
    out = root / "out"
    with pytest.MonkeyPatch.context() as mp, patched_network(mp, threshold=0.75):
        res = screen_followup(table, out, weights="", progress=False, **{**FAST, "report": True, **NET})
    return {"res": res, "out": out, "root": root}


def test_pairs_table_compares_and_updates_the_case(followed: dict[str, Any]) -> None:
    res, out = followed["res"], followed["out"]
    assert (res.succeeded, res.failed, res.total, res.exit_code) == (1, 1, 2, 1)
    run = {r["case_id"]: r for r in read_rows(out / "followup.csv")}
    assert (
        run["cur"]["status"] == "ok"
        and run["cur"]["growing"] == "1"
        and float(run["cur"]["interval_days"]) == 200
    )
    (row,) = read_rows(out / "cases" / "cur" / "followup.csv")
    assert (row["followup_status"], row["prior_nodule_id"], row["prior_rule"]) == (
        "growing",
        "1",
        "growing_solid",
    )
    assert float(row["diameter_now_mm"]) - float(row["diameter_then_mm"]) > 1.5
    assert float(row["volume_now_mm3"]) > float(row["volume_then_mm3"])
    # the case carries the follow-up category (4B: a growing solid nodule >= 8 mm) and keeps the baseline one
    (nodule,) = read_rows(out / "cases" / "cur" / "nodules.csv")
    assert (nodule["lung_rads"], nodule["size_category"]) == ("4B", "4A")
    meta = json.loads((out / "cases" / "cur" / "nodules.json").read_text())
    assert meta["lung_rads"]["category"] == "4B" and meta["lung_rads"]["prior_applied"] is True
    assert meta["baseline_lung_rads"]["category"] == "4A"
    assert meta["nodules"][0]["followup_status"] == "growing"
    result = json.loads((out / "cases" / "cur" / "result.json").read_text())
    assert (result["summary"]["lung_rads"], result["summary"]["baseline_lung_rads"]) == ("4B", "4A")
    summary = {r["case_id"]: r for r in read_rows(out / "summary.csv")}
    assert summary["cur"]["lung_rads"] == "4B"
    page = (out / "cases" / "cur" / "report.html").read_text()
    assert page.count('id="followup"') == 1 and "report_files/followup_001.png" in page
    assert (out / "cases" / "cur" / "report_files" / "followup_001.png").stat().st_size > 1000
    assert "Lung-RADS without the prior" in page


def test_a_prior_that_is_not_an_image_is_a_failure_row(followed: dict[str, Any]) -> None:
    out = followed["out"]
    failures = {r["case_id"]: r for r in read_rows(out / "failures.csv")}
    assert set(failures) == {"cur_b"}
    assert "broken.nii.gz" in failures["cur_b"]["reason"] and "\n" not in failures["cur_b"]["reason"]
    summary = {r["case_id"]: r for r in read_rows(out / "summary.csv")}
    assert summary["cur_b"]["status"] == "failed" and summary["cur_b"]["lung_rads"] == ""
    assert not (out / "cases" / "cur_b" / "result.json").exists()  # no category without the prior asked for
    assert not (out / "cases" / "cur_b" / "followup.csv").exists()
    assert {r["case_id"]: r["status"] for r in read_rows(out / "followup.csv")}["cur_b"] == "failed"


@pytest.mark.slow
def test_a_rerun_compares_again_without_stacking(followed: dict[str, Any]) -> None:
    """Rerun into the same OUT: screenings skipped, the comparison redone, the baseline category kept."""
    out, table = followed["out"], followed["root"] / "table" / "pairs.csv"
    with pytest.MonkeyPatch.context() as mp, patched_network(mp, threshold=0.75):
        res = screen_followup(table, out, weights="", progress=False, **{**FAST, "report": True, **NET})
    assert (res.succeeded, res.failed) == (1, 1)
    result = json.loads((out / "cases" / "cur" / "result.json").read_text())
    assert (result["summary"]["lung_rads"], result["summary"]["baseline_lung_rads"]) == ("4B", "4A")
    meta = json.loads((out / "cases" / "cur" / "nodules.json").read_text())
    assert meta["baseline_lung_rads"]["category"] == "4A"
    page = (out / "cases" / "cur" / "report.html").read_text()
    assert page.count('id="followup"') == 1 and page.count("Lung-RADS without the prior") == 1


def test_cli_prior_case_folder_chains_the_follow_up(
    followed: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``screen CURRENT OUT --prior cases/<id>/``: the earlier follow-up case is the prior (no second screening)."""
    weights = tmp_path / "threshold.pt"
    torch.save(ThresholdNet().state_dict(), weights)
    current = write_case(_scan(7.5, 4), tmp_path / "later.nii.gz")
    out = tmp_path / "out"
    prior_case = followed["out"] / "cases" / "cur"
    fast = [f"target_spacing_mm={FAST['target_spacing_mm']}", f"lung_margin_mm={FAST['lung_margin_mm']}"]
    with patched_network(monkeypatch, threshold=0.75):
        code = main(
            ["screen", str(current), str(out), "--prior", str(prior_case), "--interval-days", "400"]
            + ["--device", "cpu", "--roi-size", "32", "32", "32", "--no-report", "--quiet", "--weights", str(weights)]
            + ["--set", *fast, "fine_spacing_mm=null", "logit_temperature=1.0", "candidate_threshold=0.1"]
        )  # fmt: skip
    assert code == 0
    assert not (out / "priors").exists()
    (row,) = read_rows(out / "cases" / "later" / "followup.csv")
    assert (row["followup_status"], row["prior_nodule_id"], float(row["interval_days"])) == (
        "stable",
        "1",
        400,
    )
    record = json.loads((out / "cases" / "later" / "followup.json").read_text())
    assert record["prior_case"] == str(prior_case)


def test_read_pairs_table_resolves_relative_paths_and_intervals(tmp_path: Path) -> None:
    table = tmp_path / "t" / "pairs.csv"
    table.parent.mkdir()
    table.write_text(f"current,prior,interval_days\na.nii.gz,old/a.nii.gz,90\n{tmp_path}/b.nii.gz,b0,\n")
    assert read_pairs_table(table) == [
        PairInput(table.parent / "a.nii.gz", table.parent / "old" / "a.nii.gz", 90.0),
        PairInput(tmp_path / "b.nii.gz", table.parent / "b0", None),
    ]
    for text, words in (
        ("current,interval_days\na,1\n", "needs the columns"),
        ("current,prior,interval_days\na,b,-3\n", "line 2"),
        ("current,prior\na,\n", "empty"),
        ("current,prior\n", "no pairs"),
    ):
        table.write_text(text)
        with pytest.raises(ValueError, match=words):
            read_pairs_table(table)


def test_bad_pairs_are_refused_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="pair"):
        screen_followup([("a.nii.gz",)], tmp_path / "o")
    with pytest.raises(ValueError, match="two pairs"):
        screen_followup([("a.nii.gz", "b.nii.gz"), ("a.nii.gz", "c.nii.gz")], tmp_path / "o")
    with pytest.raises(ValueError, match="interval_days"):
        screen_followup([("a.nii.gz", "b.nii.gz", float("nan"))], tmp_path / "o")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "words",
    [
        ["screen", "a.nii.gz", "out", "--pairs", "p.csv"],  # --pairs takes OUT alone
        ["screen", "out", "--pairs", "p.csv", "--prior", "b.nii.gz"],
        ["screen", "a.nii.gz", "out", "--interval-days", "30"],  # an interval without a prior
        ["screen", "a.nii.gz", "b.nii.gz", "out", "--prior", "c.nii.gz"],  # one current scan per prior
    ],
)
def test_cli_follow_up_usage_errors(words: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(words) == 2
    assert "lungscreen screen" in capsys.readouterr().err
