"""Nodule change between two scans: diameters, volumes, volume doubling time, study interval."""

from __future__ import annotations

import datetime as dt
import math

import pytest

from pipelines.followup.growth import (
    interval_days,
    measure_change,
    parse_dicom_date,
    study_date,
    volume_doubling_time_days,
)


def test_vdt_doubling_and_special_cases():
    assert volume_doubling_time_days(
        volume_then_mm3=100, volume_now_mm3=200, interval_days=90
    ) == pytest.approx(90)
    assert volume_doubling_time_days(
        volume_then_mm3=100, volume_now_mm3=400, interval_days=90
    ) == pytest.approx(45)
    assert volume_doubling_time_days(volume_then_mm3=100, volume_now_mm3=100, interval_days=90) == math.inf
    assert volume_doubling_time_days(
        volume_then_mm3=200, volume_now_mm3=100, interval_days=90
    ) == pytest.approx(-90)
    assert volume_doubling_time_days(volume_then_mm3=0, volume_now_mm3=100, interval_days=90) is None
    assert volume_doubling_time_days(volume_then_mm3=100, volume_now_mm3=200, interval_days=0) is None
    assert volume_doubling_time_days(volume_then_mm3=math.nan, volume_now_mm3=200, interval_days=9) is None


def test_measure_change():
    change = measure_change(
        diameter_then_mm=5.0,
        diameter_now_mm=6.0,
        volume_then_mm3=65.4,
        volume_now_mm3=130.8,
        interval_days=120,
    )
    assert change.diameter_change_mm == pytest.approx(1.0)
    assert change.diameter_change_pct == pytest.approx(20.0)
    assert change.volume_change_pct == pytest.approx(100.0)
    assert change.volume_doubling_time_days == pytest.approx(120.0)
    unknown = measure_change(
        diameter_then_mm=0.0,
        diameter_now_mm=6.0,
        volume_then_mm3=None,
        volume_now_mm3=1.0,
        interval_days=None,
    )
    assert unknown.diameter_change_pct is None and unknown.volume_doubling_time_days is None
    assert unknown.to_dict()["interval_days"] is None


def test_dates():
    assert parse_dicom_date("20240229") == dt.date(2024, 2, 29)
    assert parse_dicom_date("2024.03.01") == dt.date(2024, 3, 1)
    assert interval_days("20230301", "20240301") == 366
    assert interval_days(dt.date(2024, 1, 1), "20240401") == 91
    for bad in ("", "2024-01-01", "20240230", "abc"):
        with pytest.raises(ValueError, match="DICOM date"):
            parse_dicom_date(bad)
    with pytest.raises(ValueError, match="after"):
        interval_days("20250101", "20240101")


def test_study_date_from_dicom(tmp_path):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyDate = "20240315"
    folder = tmp_path / "series"
    folder.mkdir()
    (folder / "a_notes.txt").write_text("not dicom")
    ds.save_as(folder / "b.dcm", enforce_file_format=True)
    assert study_date(folder) == dt.date(2024, 3, 15)
    assert study_date(folder / "a_notes.txt") is None
