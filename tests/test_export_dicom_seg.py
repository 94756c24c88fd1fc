"""DICOM SEG export: every segment read back frame by frame equals the truth of that source file (a series with
flipped rows, slices stored in descending z, files named in no order), identifiers copied from the source,
masks off the series' grid and non-DICOM inputs refused with one line."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

pytest.importorskip("highdicom")
import export_fixtures as fx  # noqa: E402
import highdicom as hd  # noqa: E402
import pydicom  # noqa: E402

from pipelines.export.dicom_out import write_dicom_outputs  # noqa: E402
from pipelines.export.dicom_source import (  # noqa: E402
    DicomExportError,
    frames_on_source,
    read_source_series,
    require_dicom_input,
)
from pipelines.imaging import io  # noqa: E402


@pytest.fixture
def exported(tmp_path: Path) -> tuple[fx.Series, dict[str, Path]]:
    series = fx.write_series(tmp_path / "src")
    lungs, nodules = fx.masks_on_grid(io.read_image(tmp_path / "src"))
    # through NIfTI, as the pipeline hands them over (lungs.nii.gz / nodules.nii.gz on the input's grid)
    sitk.WriteImage(lungs, str(tmp_path / "lungs.nii.gz"))
    sitk.WriteImage(nodules, str(tmp_path / "nodules.nii.gz"))
    paths = write_dicom_outputs(
        tmp_path / "case",
        source_files=series.files,
        lungs=sitk.ReadImage(str(tmp_path / "lungs.nii.gz")),
        nodules=sitk.ReadImage(str(tmp_path / "nodules.nii.gz")),
        nodule_rows=fx.nodule_rows(),
        category="3",
    )
    return series, paths


def _frames_by_source(seg: pydicom.Dataset) -> dict[tuple[str, int], np.ndarray]:
    """Every stored frame, keyed by (referenced source SOP instance UID, segment number)."""
    pixels = seg.pixel_array.reshape(int(seg.NumberOfFrames), int(seg.Rows), int(seg.Columns))
    out = {}
    for frame, item in zip(pixels, seg.PerFrameFunctionalGroupsSequence, strict=True):
        source = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        out[(str(source), number)] = frame
    return out


@pytest.mark.parametrize(
    ("key", "truth_attr", "numbers"), [("lungs_seg", "lungs", (1, 2)), ("nodules_seg", "nodules", (1, 2))]
)
def test_segments_equal_truth_per_source_frame(
    exported, key: str, truth_attr: str, numbers: tuple[int, ...]
) -> None:
    series, paths = exported
    seg = pydicom.dcmread(paths[key])
    stored = _frames_by_source(seg)
    assert {uid for uid, _ in stored} <= set(series.sop_uids)
    checked = 0
    for uid, truth in zip(series.sop_uids, getattr(series, truth_attr), strict=True):
        for number in numbers:
            expected = (truth == number).astype(np.uint8)
            frame = stored.get((uid, number), np.zeros_like(expected))  # empty frames are omitted
            np.testing.assert_array_equal(frame, expected, err_msg=f"{key} segment {number}, source {uid}")
            checked += int(expected.sum())
    assert checked > 0
    # and through highdicom's own reader, by source instance, on the source's frame positions
    hseg = hd.seg.segread(paths[key])
    by_instance = hseg.get_pixels_by_source_instance(
        source_sop_instance_uids=series.sop_uids, segment_numbers=list(numbers),
        assert_missing_frames_are_empty=True,
    )  # fmt: skip
    for i, truth in enumerate(getattr(series, truth_attr)):
        for s, number in enumerate(numbers):
            np.testing.assert_array_equal(by_instance[i, :, :, s], truth == number)


def test_frame_positions_are_the_sources(exported) -> None:
    series, paths = exported
    positions = {
        str(ds.SOPInstanceUID): [float(v) for v in ds.ImagePositionPatient]
        for ds in (pydicom.dcmread(f, stop_before_pixels=True) for f in series.files)
    }
    seg = pydicom.dcmread(paths["nodules_seg"])
    for item in seg.PerFrameFunctionalGroupsSequence:
        source = str(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        position = [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
        np.testing.assert_allclose(position, positions[source], atol=1e-3)


def test_references_and_identifiers(exported) -> None:
    series, paths = exported
    source = pydicom.dcmread(series.files[0], stop_before_pixels=True)
    for key in ("lungs_seg", "nodules_seg"):
        seg = pydicom.dcmread(paths[key], stop_before_pixels=True)
        assert seg.SOPClassUID == pydicom.uid.SegmentationStorage
        assert seg.SegmentationType == "BINARY"
        referenced = seg.ReferencedSeriesSequence[0]
        assert referenced.SeriesInstanceUID == series.series_uid
        assert {str(i.ReferencedSOPInstanceUID) for i in referenced.ReferencedInstanceSequence} == set(
            series.sop_uids
        )
        for keyword in (
            "PatientID",
            "PatientName",
            "PatientBirthDate",
            "StudyInstanceUID",
            "AccessionNumber",
        ):
            assert seg.get(keyword) == source.get(keyword), keyword
        assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID
        assert seg.SeriesInstanceUID != series.series_uid
    lungs = pydicom.dcmread(paths["lungs_seg"], stop_before_pixels=True)
    nodules = pydicom.dcmread(paths["nodules_seg"], stop_before_pixels=True)
    assert lungs.SeriesInstanceUID == nodules.SeriesInstanceUID  # one SEG series, two instances


def test_segment_coding(exported) -> None:
    _, paths = exported
    lungs = pydicom.dcmread(paths["lungs_seg"], stop_before_pixels=True)
    got = []
    for segment in lungs.SegmentSequence:
        kind = segment.SegmentedPropertyTypeCodeSequence[0]
        modifier = kind.SegmentedPropertyTypeModifierCodeSequence[0]
        got.append((segment.SegmentLabel, kind.CodeValue, kind.CodingSchemeDesignator, modifier.CodeValue))
        assert segment.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "91723000"
        assert segment.SegmentAlgorithmType == "AUTOMATIC"
        algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
        assert algorithm.AlgorithmName == "lungscreen"
    assert got == [("Right lung", "39607008", "SCT", "24028007"), ("Left lung", "39607008", "SCT", "7771000")]
    nodules = pydicom.dcmread(paths["nodules_seg"], stop_before_pixels=True)
    assert [s.SegmentNumber for s in nodules.SegmentSequence] == [1, 2]
    assert [s.TrackingID for s in nodules.SegmentSequence] == ["Nodule 1", "Nodule 2"]
    for s in nodules.SegmentSequence:
        assert s.SegmentedPropertyTypeCodeSequence[0].CodeValue == "27925004"  # Nodule
        assert s.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"
        assert s.AnatomicRegionSequence[0].CodeValue == "39607008"  # Lung


def test_reoriented_mask_gives_the_same_frames(tmp_path: Path) -> None:
    """A mask on a permuted/flipped copy of the grid (DICOMOrient) still lands on the right pixels."""
    series = fx.write_series(tmp_path / "src")
    datasets = read_source_series(series.files)
    lungs, _ = fx.masks_on_grid(io.read_image(tmp_path / "src"))
    by_uid = dict(zip(series.sop_uids, series.lungs, strict=True))
    for orientation in ("LPS", "RAI", "SLP"):
        oriented = sitk.DICOMOrient(lungs, orientation)
        frames = frames_on_source(sitk.GetArrayFromImage(oriented), oriented, datasets)
        for ds, frame in zip(datasets, frames, strict=True):
            np.testing.assert_array_equal(frame, by_uid[str(ds.SOPInstanceUID)], err_msg=orientation)


def test_sorted_by_position_along_normal(tmp_path: Path) -> None:
    series = fx.write_series(tmp_path / "src")
    datasets = read_source_series(list(reversed(series.files)))
    z = [float(ds.ImagePositionPatient[2]) for ds in datasets]
    assert z == sorted(z, reverse=True)  # the normal points to the feet: increasing along it = descending z


def test_mask_off_grid_is_refused(tmp_path: Path) -> None:
    series = fx.write_series(tmp_path / "src")
    lungs, nodules = fx.masks_on_grid(io.read_image(tmp_path / "src"))
    shifted = sitk.Image(lungs)
    shifted.SetOrigin(tuple(np.asarray(lungs.GetOrigin()) + (0.3, 0.0, 0.0)))
    with pytest.raises(DicomExportError, match="not on a voxel centre") as err:
        write_dicom_outputs(tmp_path / "case", source_files=series.files, lungs=shifted, nodules=nodules,
                            nodule_rows=fx.nodule_rows(), category="3")  # fmt: skip
    assert "\n" not in str(err.value)
    coarse = sitk.Image(lungs)
    coarse.SetSpacing(tuple(2 * s for s in lungs.GetSpacing()))
    coarse.SetOrigin(lungs.GetOrigin())
    with pytest.raises(DicomExportError, match="not the series' grid"):
        write_dicom_outputs(tmp_path / "case", source_files=series.files, lungs=coarse, nodules=nodules,
                            nodule_rows=fx.nodule_rows(), category="3")  # fmt: skip
    assert not (tmp_path / "case" / "dicom").exists()


def test_nodule_rows_must_match_mask(tmp_path: Path) -> None:
    series = fx.write_series(tmp_path / "src")
    lungs, nodules = fx.masks_on_grid(io.read_image(tmp_path / "src"))
    with pytest.raises(DicomExportError, match=r"labels \[2\] that no nodule row has"):
        write_dicom_outputs(tmp_path / "case", source_files=series.files, lungs=lungs, nodules=nodules,
                            nodule_rows=fx.nodule_rows()[:1], category="3")  # fmt: skip


def test_non_dicom_input_refused_in_one_line(tmp_path: Path) -> None:
    nifti = tmp_path / "scan.nii.gz"
    with pytest.raises(DicomExportError) as err:
        require_dicom_input(nifti)
    assert str(err.value) == f"--dicom-out needs a DICOM series input; {nifti} is NIfTI"
    with pytest.raises(DicomExportError, match="is NIfTI"):
        read_source_series([nifti])
    text = tmp_path / "notes.dcm"
    text.write_text("not an image\n")
    with pytest.raises(DicomExportError, match=r"notes\.dcm is not a DICOM file") as err2:
        read_source_series([text])
    assert "\n" not in str(err2.value)
    with pytest.raises(DicomExportError, match="no DICOM files"):
        read_source_series([])


def test_no_nodules_writes_lungs_and_report_only(tmp_path: Path) -> None:
    series = fx.write_series(tmp_path / "src")
    grid = io.read_image(tmp_path / "src")
    lungs, _ = fx.masks_on_grid(grid)
    empty = np.zeros(sitk.GetArrayViewFromImage(grid).shape, np.uint8)
    paths = write_dicom_outputs(tmp_path / "case", source_files=series.files, lungs=lungs, nodules=empty,
                                nodule_rows=[], category="1", grid=grid)  # fmt: skip
    assert sorted(paths) == ["lungs_seg", "sr"]
    assert sorted(p.name for p in (tmp_path / "case" / "dicom").iterdir()) == [
        "lungs.seg.dcm",
        "nodules.sr.dcm",
    ]


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (Debian dicom3tools) is not installed")
def test_dciodvfy_finds_no_errors(exported) -> None:
    _, paths = exported
    for path in paths.values():
        out = subprocess.run(["dciodvfy", "-new", str(path)], capture_output=True, text=True, timeout=60)
        lines = (out.stdout + out.stderr).splitlines()
        errors = [line for line in lines if line.startswith("Error")]
        assert not errors, f"{path.name}: {errors}"
        # the only warnings allowed: our private coding scheme (Lung-RADS terms have no standard code)
        others = [line for line in lines if line.startswith("Warning") and "99LUNGSCREEN" not in line]
        assert not others, f"{path.name}: {others}"


def test_cli_help_does_not_import_dicom_libraries() -> None:
    code = "import sys; import pipelines.cli.main; import pipelines.export.dicom_source; " \
        "print(sorted(m for m in ('pydicom', 'highdicom') if m in sys.modules))"  # fmt: skip
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "[]"
