"""Figures at the reporting threshold on a real-nodule validation set (generator nodules not counted)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.evaluation.operating_point import threshold_summary


def _write(path: Path, header: str, rows: list[str]) -> None:
    path.write_text("\n".join([header, *rows]) + "\n")


CASES_HEADER = "seriesuid,nodule_id,type,location,diameter_mm,solid_component_mm,coordX,coordY,coordZ,mean_hu"


def _dataset(
    tmp_path: Path, uids: list[str], annotations: list[str], cases: list[str], marks: list[str]
) -> tuple[Path, Path]:
    """A real-nodule set (seriesuids, annotations, cases) and its screening's submission.csv."""
    data, out = tmp_path / "data", tmp_path / "out"
    data.mkdir()
    out.mkdir()
    (data / "seriesuids.csv").write_text("".join(f"{u}\n" for u in uids))
    _write(data / "annotations.csv", "seriesuid,coordX,coordY,coordZ,diameter_mm", annotations)
    _write(data / "cases.csv", CASES_HEADER, cases)
    _write(out / "submission.csv", "seriesuid,coordX,coordY,coordZ,probability", marks)
    return data, out


def test_threshold_summary_counts_real_nodules_and_false_marks(tmp_path: Path) -> None:
    data, out = _dataset(
        tmp_path,
        ["a", "b"],
        ["a,0,0,0,8.0", "a,50,0,0,3.5", "b,0,0,0,6.0", "b,40,40,0,5.0"],
        [
            "a,1,Solid,real-parenchymal,8.0,0,0,0,0,-100",
            "a,2,Non-Solid/GGO,real-parenchymal,3.5,0,50,0,0,-600",
            "b,1,calcified,real-juxta-pleural,6.0,0,0,0,0,300",
            "b,2,generator,generator,5.0,0,40,40,0,0",
        ],
        ["a,0.5,0,0,0.95", "a,50,0,0,0.5", "b,0,0,1,0.9", "b,40,40,0,0.99", "b,-80,0,0,0.93", "a,90,9,9,0.2"],
    )
    s = threshold_summary(data, out, threshold=0.88)
    assert s["real_nodules"] == 3
    assert s["sensitivity"] == pytest.approx(2 / 3, abs=1e-3)
    assert s["sensitivity_ge4mm"] == 1.0
    assert (
        s["false_nodules_per_scan"] == 0.5
    )  # one mark at 0.93 on nothing, two scans; the generator hit is no FP
    assert s["by_type"] == {
        "Non-Solid/GGO": {"n": 1, "found": 0},
        "Solid": {"n": 1, "found": 1},
        "calcified": {"n": 1, "found": 1},
    }
    assert s["by_size"]["0-4 mm"] == {"n": 1, "found": 0}


def test_hosts_are_told_apart() -> None:
    from pipelines.realnodules.validation import host_group

    assert host_group("totalseg_chest_ct_crop_1p5mm_real_s301") == "totalseg_chest_ct_crop_1p5mm"
    assert host_group("phantom_s7000_0003_real_s10003") == "phantom_s7000"
    assert host_group("phantom_s7000_0003") == "phantom_s7000"
    assert host_group("my_scan_real_s3") == "my_scan"


def test_threshold_summary_of_a_subset_divides_by_its_own_scans(tmp_path: Path) -> None:
    ct_id, ph_id = "ct_real_s1", "phantom_s7_0000_real_s2"
    data, out = _dataset(
        tmp_path,
        [ct_id, ph_id],
        [f"{ct_id},0,0,0,8.0", f"{ph_id},0,0,0,6.0"],
        [f"{ct_id},1,Solid,real-parenchymal,8.0,0,0,0,0,-100", f"{ph_id},1,Solid,real-x,6.0,0,0,0,0,0"],
        [f"{ct_id},0,0,0,0.95", f"{ph_id},60,0,0,0.99", f"{ph_id},90,0,0,0.97"],
    )
    ct = threshold_summary(data, out, threshold=0.88, scans={"ct_real_s1"})
    assert (ct["scans"], ct["real_nodules"], ct["sensitivity"], ct["false_nodules_per_scan"]) == (
        1,
        1,
        1.0,
        0.0,
    )
    assert ct["cpm"] == 1.0
    both = threshold_summary(data, out, threshold=0.88)
    assert (both["scans"], both["false_nodules_per_scan"], both["sensitivity"]) == (2, 1.0, 0.5)
