"""DICOM SR export (TID 1500): read back with highdicom, every nodule finding holds the values and units of its
``nodules.csv`` row, refers to its own segment of the nodules SEG (same tracking UID), and the report holds the
case's Lung-RADS category; lungs are findings with their volumes; identifiers come from the source."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

pytest.importorskip("highdicom")
import export_fixtures as fx  # noqa: E402
import highdicom as hd  # noqa: E402
import pydicom  # noqa: E402

from pipelines.export.dicom_out import write_dicom_outputs  # noqa: E402
from pipelines.export.dicom_sr import lung_rads_code  # noqa: E402
from pipelines.imaging import io  # noqa: E402

#: nodules.csv column -> (SNOMED/DCM code value of the concept name, UCUM unit)
EXPECTED = {
    "mean_diameter_mm": ("81827009", "mm"),
    "long_axis_mm": ("103339001", "mm"),
    "short_axis_mm": ("103340004", "mm"),
    "volume_mm3": ("118565006", "mm3"),
    "probability": ("122157", "1"),
}


@pytest.fixture
def written(tmp_path: Path) -> tuple[fx.Series, sitk.Image, dict[str, Path]]:
    series = fx.write_series(tmp_path / "src")
    lungs, nodules = fx.masks_on_grid(io.read_image(tmp_path / "src"))
    paths = write_dicom_outputs(tmp_path / "case", source_files=series.files, lungs=lungs, nodules=nodules,
                                nodule_rows=fx.nodule_rows(), category="4A")  # fmt: skip
    return series, lungs, paths


def _nodule_groups(
    report: hd.sr.MeasurementReport,
) -> dict[str, hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations]:
    groups = report.get_volumetric_roi_measurement_groups(finding_type=pydicom.sr.codedict.codes.SCT.Nodule)
    return {g.tracking_identifier: g for g in groups}


def test_measurements_equal_rows(written) -> None:
    _, _, paths = written
    sr = hd.sr.srread(paths["sr"])
    assert sr.SOPClassUID == pydicom.uid.Comprehensive3DSRStorage
    groups = _nodule_groups(sr.content)
    rows = fx.nodule_rows()
    assert sorted(groups) == [f"Nodule {row['nodule_id']}" for row in rows]
    for row in rows:
        group = groups[f"Nodule {row['nodule_id']}"]
        got = {m.name.value: (m.value, m.unit.value) for m in group.get_measurements()}
        assert len(got) == len(EXPECTED)
        for column, (code, unit) in EXPECTED.items():
            value, got_unit = got[code]
            assert value == pytest.approx(float(row[column]), abs=1e-9), column
            assert got_unit == unit, column
        diameter = next(m for m in group.get_measurements() if m.name.value == "81827009")
        assert diameter.derivation.value == "373098007"  # Mean
        evaluations = {q.name.meaning: q.value for q in group.get_qualitative_evaluations()}
        assert (
            evaluations["Nodule type (Lung-RADS)"].meaning
            == {"solid": "Solid nodule", "part-solid": "Part-solid nodule"}[row["type"]]
        )
        assert evaluations["Lung-RADS v2022 category"].value == "LR2"
        site = group.finding_sites[0]
        assert site.value.value == "39607008"  # Lung
        assert site.laterality.value == {"right": "24028007", "left": "7771000"}[row["lung_side"]]


def test_findings_refer_to_their_segments(written) -> None:
    _, _, paths = written
    seg = pydicom.dcmread(paths["nodules_seg"], stop_before_pixels=True)
    tracking = {
        f"Nodule {s.SegmentNumber}": (s.TrackingUID, int(s.SegmentNumber)) for s in seg.SegmentSequence
    }
    sr = hd.sr.srread(paths["sr"])
    for identifier, group in _nodule_groups(sr.content).items():
        uid, number = tracking[identifier]
        assert group.tracking_uid == uid
        reference = group.referenced_segment
        assert reference.referenced_sop_instance_uid == seg.SOPInstanceUID
        assert (
            reference.referenced_segment_numbers == [number] or reference.referenced_segment_numbers == number
        )


def test_case_category_and_lung_volumes(written) -> None:
    _, lungs, paths = written
    sr = pydicom.dcmread(paths["sr"])
    container = next(
        i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeMeaning == "Qualitative Evaluations"
    )
    item = container.ContentSequence[0]
    assert item.ConceptNameCodeSequence[0].CodeMeaning == "Lung-RADS v2022 category"
    assert item.ConceptCodeSequence[0].CodeValue == "LR4A"
    assert (
        item.ConceptCodeSequence[0].CodeMeaning == lung_rads_code("4A").meaning == "Lung-RADS 4A Suspicious"
    )
    report = hd.sr.srread(paths["sr"]).content
    lung_groups = report.get_volumetric_roi_measurement_groups(
        finding_type=pydicom.sr.codedict.codes.SCT.Lung
    )
    voxel_ml = float(np.prod(lungs.GetSpacing())) / 1000
    array = sitk.GetArrayViewFromImage(lungs)
    by_side = {g.tracking_identifier: g.get_measurements()[0] for g in lung_groups}
    for name, label in (("Right lung", 1), ("Left lung", 2)):
        assert by_side[name].value == pytest.approx(np.count_nonzero(array == label) * voxel_ml, rel=1e-9)
        assert by_side[name].unit.value == "ml"


def test_identifiers_and_evidence(written) -> None:
    series, _, paths = written
    source = pydicom.dcmread(series.files[0], stop_before_pixels=True)
    sr = pydicom.dcmread(paths["sr"])
    for keyword in ("PatientID", "PatientName", "PatientBirthDate", "StudyInstanceUID", "AccessionNumber"):
        assert sr.get(keyword) == source.get(keyword), keyword
    evidence = {
        str(i.ReferencedSOPInstanceUID)
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for s in study.ReferencedSeriesSequence
        for i in s.ReferencedSOPSequence
    }
    segs = {
        str(pydicom.dcmread(paths[k], stop_before_pixels=True).SOPInstanceUID)
        for k in ("lungs_seg", "nodules_seg")
    }
    assert evidence == set(series.sop_uids) | segs
    assert sr.CompletionFlag == "COMPLETE" and sr.VerificationFlag == "UNVERIFIED"


def test_empty_measurement_left_out_not_zero(tmp_path: Path) -> None:
    series = fx.write_series(tmp_path / "src")
    lungs, nodules = fx.masks_on_grid(io.read_image(tmp_path / "src"))
    rows = fx.nodule_rows()
    rows[0]["short_axis_mm"] = ""
    paths = write_dicom_outputs(tmp_path / "case", source_files=series.files, lungs=lungs, nodules=nodules,
                                nodule_rows=rows, category="2")  # fmt: skip
    group = _nodule_groups(hd.sr.srread(paths["sr"]).content)["Nodule 1"]
    assert "103340004" not in {m.name.value for m in group.get_measurements()}


def test_unknown_category_or_type_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown Lung-RADS category '5'"):
        lung_rads_code("5")
