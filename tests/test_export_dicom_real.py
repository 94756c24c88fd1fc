"""DICOM export on the real Siemens series of ``../shared/data/ct`` (skipped when absent).

The shared copy was anonymised by blanking its UIDs (SOPInstanceUID, StudyInstanceUID, SeriesInstanceUID are
empty), so a SEG cannot reference it: that is refused in one line. A copy with UIDs restored (the SOP instance
UID from each file's meta header, new study and series UIDs) is exported, and every SEG frame is compared with
our mask resampled by SimpleITK onto that source file's own slice geometry (an independent world mapping)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

pytest.importorskip("highdicom")
import pydicom  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402

from pipelines.export.dicom_out import write_dicom_outputs  # noqa: E402
from pipelines.export.dicom_source import DicomExportError, read_source_series  # noqa: E402
from pipelines.imaging import io  # noqa: E402

SERIES = "ct/totalseg_abdomen_ct_dicom"


@pytest.fixture
def real_series(shared_data: Path) -> list[Path]:
    folder = shared_data / SERIES
    if not folder.is_dir():
        pytest.skip(f"{folder} is not present")
    return sorted(p for p in folder.iterdir() if p.is_file())


def test_blanked_uids_refused_in_one_line(real_series: list[Path]) -> None:
    with pytest.raises(DicomExportError) as err:
        read_source_series(real_series)
    message = str(err.value)
    assert "\n" not in message and "SOPInstanceUID" in message and "cannot reference it" in message


def _with_uids(files: list[Path], folder: Path) -> list[Path]:
    folder.mkdir()
    study, series = generate_uid(), generate_uid()
    out = []
    for f in files:
        ds = pydicom.dcmread(f)
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.PatientID = study, series, "SHARED-REAL-1"
        ds.save_as(folder / f.name, enforce_file_format=True)
        out.append(folder / f.name)
    return out


def test_real_series_frames_equal_mask(real_series: list[Path], tmp_path: Path) -> None:
    files = _with_uids(real_series, tmp_path / "src")
    image = io.read_image(tmp_path / "src")
    hu = sitk.GetArrayFromImage(image)
    # a stand-in "lung" (air inside the body, split by the image's x half) and one spherical "nodule"
    lungs_zyx = np.where(hu < -400, np.where(np.arange(hu.shape[2]) < hu.shape[2] // 2, 1, 2), 0).astype(
        np.uint8
    )
    nodules_zyx = np.zeros_like(lungs_zyx)
    z, y, x = np.ogrid[: hu.shape[0], : hu.shape[1], : hu.shape[2]]
    nodules_zyx[(z - 9) ** 2 + ((y - 300) / 3) ** 2 + ((x - 200) / 3) ** 2 <= 9] = 1
    lungs = sitk.GetImageFromArray(lungs_zyx)
    lungs.CopyInformation(image)
    row = {"nodule_id": 1, "probability": 0.8, "center_lps_x_mm": 0, "center_lps_y_mm": 0, "center_lps_z_mm": 0,
           "mean_diameter_mm": 6.1, "long_axis_mm": 7.0, "short_axis_mm": 5.2, "volume_mm3": 110.0,
           "type": "solid", "lung_side": "right", "lung_rads": "3"}  # fmt: skip
    paths = write_dicom_outputs(tmp_path / "case", source_files=files, lungs=lungs, nodules=nodules_zyx,
                                nodule_rows=[row], category="3", grid=image)  # fmt: skip
    seg = pydicom.dcmread(paths["lungs_seg"])
    pixels = seg.pixel_array.reshape(int(seg.NumberOfFrames), int(seg.Rows), int(seg.Columns))
    stored = {}
    for frame, item in zip(pixels, seg.PerFrameFunctionalGroupsSequence, strict=True):
        uid = str(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        stored[(uid, int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber))] = frame
    for f in files:
        slice_image = sitk.ReadImage(str(f))  # the file's own geometry, read by SimpleITK alone
        expected = sitk.GetArrayFromImage(
            sitk.Resample(lungs, slice_image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
        )[0]
        uid = str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID)
        for number in (1, 2):
            frame = stored.get((uid, number), np.zeros_like(expected))
            np.testing.assert_array_equal(frame, expected == number, err_msg=f"{f.name} segment {number}")
    assert any(frame.any() for frame in stored.values())
    sr = pydicom.dcmread(paths["sr"], stop_before_pixels=True)
    assert sr.PatientID == "SHARED-REAL-1" and sr.StudyInstanceUID == seg.StudyInstanceUID
