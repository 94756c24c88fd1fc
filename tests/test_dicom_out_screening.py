"""``screen --dicom-out`` end to end: SEG and SR next to the NIfTI masks, Slicer markups for every case.

The export modules are tested on their own (tests/test_export_*.py: frames, codes, read-back against the source
series); here the screening writes them: a DICOM series with a planted ball is screened by a fake network that
fires on it, and the objects read back agree with what the same case wrote as NIfTI and CSV.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk
from helpers import (
    chest_hu,
    lung_centre_zyx,
    patched_network,
    read_rows,
    run_screen,
    to_image,
    write_case,
    write_dicom_series,
)

hd = pytest.importorskip("highdicom")

from pipelines.cli.main import main  # noqa: E402
from pipelines.export.dicom_source import DicomExportError  # noqa: E402

SHAPE = (30, 40, 48)
SPACING = (3.0, 3.0, 3.0)


def _chest_with_ball() -> sitk.Image:
    centre = lung_centre_zyx(SHAPE, side="right")
    hu = chest_hu(SHAPE, spacing_zyx=SPACING, sphere=(centre, 7.0, 150))
    return to_image(hu, spacing_xyz=SPACING, origin=(-70.0, -60.0, 100.0))


@pytest.fixture(scope="module")
def screened(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("dicom_out")
    series = root / "in" / "series"
    # a flipped orientation on disk (rows anterior, slices head-first), as scanners write them
    image = sitk.DICOMOrient(_chest_with_ball(), "LAI")
    uid = "1.2.826.0.1.3680043.2.1125.77"
    write_dicom_series(
        image,
        series,
        series_uid=uid,
        extra_tags={"0020|0052": uid + ".9", "0010|0020": "LS-0001", "0010|0010": "Test^Patient"},
    )
    write_case(_chest_with_ball(), root / "in" / "plain.nii.gz")
    out = root / "out"
    with pytest.MonkeyPatch.context() as mp, patched_network(mp, threshold=0.75):
        res = run_screen(root / "in", out, logit_temperature=1.0, candidate_threshold=0.1, dicom_out=True)
    return {"res": res, "out": out, "series": series}


def test_dicom_case_gets_seg_and_sr_that_agree_with_its_nifti_outputs(screened: dict[str, Any]) -> None:
    assert (screened["res"].succeeded, screened["res"].failed) == (2, 0)
    case = screened["out"] / "cases" / "series"
    nodules = read_rows(case / "nodules.csv")
    assert len(nodules) == 1  # the planted ball
    lungs_nii = sitk.GetArrayFromImage(sitk.ReadImage(str(case / "lungs.nii.gz")))
    nodules_nii = sitk.GetArrayFromImage(sitk.ReadImage(str(case / "nodules.nii.gz")))

    lung_seg = hd.seg.segread(case / "dicom" / "lungs.seg.dcm")
    nodule_seg = hd.seg.segread(case / "dicom" / "nodules.seg.dcm")
    source = {str(p) for p in screened["series"].iterdir()}
    assert len(lung_seg.get_source_image_uids()) == len(source)
    # per segment, the SEG holds as many voxels as our own mask on the same source grid
    for number in (1, 2):
        frames = lung_seg.get_volume(segment_numbers=[number], combine_segments=False).array
        assert int(frames.sum()) == int(np.count_nonzero(lungs_nii == number)) > 0
    frames = nodule_seg.get_volume(segment_numbers=[1], combine_segments=False).array
    assert int(frames.sum()) == int(np.count_nonzero(nodules_nii == 1)) > 0
    assert lung_seg.PatientID == "LS-0001"  # filed with the study: identifiers are copied, by design

    sr = hd.sr.srread(case / "dicom" / "nodules.sr.dcm")
    groups = sr.content.get_volumetric_roi_measurement_groups()
    volumes = [
        m.value for g in groups for m in g.get_measurements() if m.name.meaning.lower().startswith("volume")
    ]
    assert pytest.approx(float(nodules[0]["volume_mm3"]), rel=1e-3) in volumes


def test_every_case_gets_slicer_markups_in_lps(screened: dict[str, Any]) -> None:
    for case_id in ("series", "plain"):
        case = screened["out"] / "cases" / case_id
        doc = json.loads((case / "nodules.mrk.json").read_text())
        markup = doc["markups"][0]
        assert markup["coordinateSystem"] == "LPS"
        rows = read_rows(case / "nodules.csv")
        points = markup["controlPoints"]
        assert len(points) == len(rows) == 1
        want = [float(rows[0][f"center_lps_{a}_mm"]) for a in "xyz"]
        assert points[0]["position"] == pytest.approx(want, abs=1e-3)


def test_a_nifti_case_in_the_folder_keeps_its_outputs_and_gets_a_warning(screened: dict[str, Any]) -> None:
    case = screened["out"] / "cases" / "plain"
    assert not (case / "dicom").exists() and (case / "nodules.nii.gz").is_file()
    summary = {r["case_id"]: r for r in read_rows(screened["out"] / "summary.csv")}
    assert "no DICOM export" in summary["plain"]["warnings"] and summary["plain"]["status"] == "ok"
    assert "no DICOM export" not in summary["series"]["warnings"]


def test_a_nifti_file_with_dicom_out_is_refused_before_any_work(tmp_path: Path, capsys: Any) -> None:
    scan = write_case(_chest_with_ball(), tmp_path / "scan.nii.gz")
    with pytest.raises(
        DicomExportError, match=r"--dicom-out needs a DICOM series input; .*scan.nii.gz is NIfTI"
    ):
        run_screen(scan, tmp_path / "out", dicom_out=True)
    assert not (tmp_path / "out").exists()
    assert main(["screen", str(scan), str(tmp_path / "out2"), "--dicom-out", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs a DICOM series input" in err[0] and "--debug" not in err[0]
