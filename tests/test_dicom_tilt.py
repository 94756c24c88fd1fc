"""DICOM geometry exact or refused (issue 23): a gantry-tilted series (slice planes tilted, positions stepping
along the table) is refused with a one-line reason, as are sheared orientations and slices shifted in-plane;
a genuinely oblique series (positions stepping along its normal) keeps its exact geometry.

Refused rather than resampled: see :mod:`pipelines.imaging.dicom_geometry` for why."""

from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from helpers import chest_image, read_failures, run_screen, write_case, write_dicom_series

from pipelines.imaging import dicom_geometry, filesys, io


def _iop(row: tuple[float, float, float], col: tuple[float, float, float]) -> str:
    return "\\".join(f"{v:.6f}" for v in (*row, *col))


def _tilted_iop(degrees: float) -> str:
    """Rows along x; columns tilted by ``degrees`` about x (the gantry tilt axis)."""
    t = math.radians(degrees)
    return _iop((1.0, 0.0, 0.0), (0.0, math.cos(t), -math.sin(t)))


def _tilted_series(folder: Path, degrees: float) -> list[Path]:
    """The chest image's slices with a tilted ImageOrientationPatient; positions still step along z (4 mm)."""
    iop = _tilted_iop(degrees)
    return write_dicom_series(chest_image(), folder, orientation_override={k: iop for k in range(24)})


# --------------------------------------------------------------------------------------------- pure maths
def test_tilt_measures_angle_and_shift() -> None:
    positions = np.array([[0.0, 0.0, 4.0 * k] for k in range(24)])
    t = math.radians(20)
    orientation = (1.0, 0.0, 0.0, 0.0, math.cos(t), -math.sin(t))
    angle, shift, jitter = dicom_geometry.tilt(orientation, positions[::-1])  # order does not matter
    assert angle == pytest.approx(20.0, abs=1e-6)
    # the last slice lies 92 mm up the table: 92 cos(20) along the normal, 92 sin(20) = 31.5 mm in-plane
    assert shift == pytest.approx(92 * math.sin(t), abs=1e-6)
    assert jitter == pytest.approx(0.0, abs=1e-9)
    straight = dicom_geometry.tilt((1, 0, 0, 0, 1, 0), positions)
    assert straight == pytest.approx((0.0, 0.0, 0.0), abs=1e-12)


def test_position_rounding_is_not_tilt() -> None:
    """Two slices 1 mm apart with positions rounded to 1e-3 mm: up to 0.1 degree of apparent tilt, 1.4 um of
    shift; under the shift tolerance, so accepted."""
    positions = np.array([[0.0, 0.0, 0.0], [0.001, 0.001, 1.0]])
    assert dicom_geometry.tilt_problem((1, 0, 0, 0, 1, 0), positions) == ""


def test_orientation_problem() -> None:
    assert dicom_geometry.orientation_problem((1, 0, 0, 0, 1, 0)) == ""
    assert "at 80.0 degrees" in dicom_geometry.orientation_problem(
        (1, 0, 0, math.cos(math.radians(80)), math.sin(math.radians(80)), 0)
    )
    assert "not unit vectors" in dicom_geometry.orientation_problem((2, 0, 0, 0, 1, 0))
    assert "6 finite numbers" in dicom_geometry.orientation_problem((1, 0, 0, 0, 1))


# --------------------------------------------------------------------------------------------- series on disk
def test_tilted_series_is_refused(tmp_path: Path) -> None:
    _tilted_series(tmp_path / "tilt", 20.0)
    # what SimpleITK does without the check: slices stacked along the tilted normal, far slices 31 mm off
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(tmp_path / "tilt"))
    naive = sitk.ReadImage(files)
    far = np.asarray(naive.TransformIndexToPhysicalPoint((0, 0, 23)))
    assert np.linalg.norm(far - np.array([0.0, 0.0, 92.0])) > 30
    with pytest.raises(filesys.ImageReadError) as err:
        io.read_image(tmp_path / "tilt")
    reason = str(err.value)
    assert "\n" not in reason and reason.startswith(str(tmp_path / "tilt") + ": gantry-tilted DICOM series")
    assert "20.0 degrees off the slice normal" in reason and "shifted 31.5 mm" in reason, reason


def test_small_tilt_below_tolerance_is_accepted(tmp_path: Path) -> None:
    _tilted_series(tmp_path / "t", 0.02)  # 0.02 degrees over 92 mm: 0.03 mm, a rounding-level shift
    assert io.read_image(tmp_path / "t").GetSize() == (56, 48, 24)
    _tilted_series(tmp_path / "t2", 0.5)
    with pytest.raises(filesys.ImageReadError, match=r"0\.5 degrees off the slice normal"):
        io.read_image(tmp_path / "t2")


def test_oblique_series_keeps_exact_geometry(tmp_path: Path) -> None:
    """Tilted planes whose positions step along their own normal are a rotated grid, not a sheared one."""
    img = chest_image()
    t = math.radians(20)
    rot = np.array([[1, 0, 0], [0, math.cos(t), math.sin(t)], [0, -math.sin(t), math.cos(t)]])
    img.SetDirection(tuple(rot.ravel()))
    img.SetOrigin((-3.0, 7.0, -120.0))
    write_dicom_series(img, tmp_path / "oblique")
    back = io.read_image(tmp_path / "oblique")
    np.testing.assert_allclose(back.GetDirection(), img.GetDirection(), atol=1e-5)
    np.testing.assert_allclose(back.GetOrigin(), img.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(back.GetSpacing(), img.GetSpacing(), atol=1e-3)


def test_sheared_orientation_refused(tmp_path: Path) -> None:
    """Row and column at 80 degrees. The DICOM writer refuses such a tag, so the element is patched in the
    written files (implicit VR little endian: tag, 4-byte length, value)."""
    files = write_dicom_series(chest_image(), tmp_path / "shear")
    tag = b"\x20\x00\x37\x00"
    plain = tag + struct.pack("<I", 12) + b"1\\0\\0\\0\\1\\0 "
    value = b"1\\0\\0\\0.173648\\0.984808\\0"  # column at 80 degrees to the row
    for f in files:
        data = f.read_bytes()
        assert data.count(plain) == 1
        f.write_bytes(data.replace(plain, tag + struct.pack("<I", len(value)) + value))
    with pytest.raises(
        filesys.ImageReadError, match=r"shear: ImageOrientationPatient row and column are at 80\.0"
    ):
        io.read_image(tmp_path / "shear")


def test_slice_shifted_in_plane_refused(tmp_path: Path) -> None:
    files = write_dicom_series(chest_image(), tmp_path / "jitter")
    # move slice 9 by 2 mm along x: same orientation, same gap along the normal, off the straight stack
    img = sitk.ReadImage(str(files[9]))
    x, y, z = (float(v) for v in img.GetMetaData("0020|0032").split("\\"))
    img.SetMetaData("0020|0032", f"{x + 2:.4f}\\{y:.4f}\\{z:.4f}")
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    writer.SetFileName(str(files[9]))
    writer.Execute(img)
    with pytest.raises(
        filesys.ImageReadError, match=r"jitter: DICOM slices are shifted in-plane irregularly"
    ):
        io.read_image(tmp_path / "jitter")


def test_tilted_series_fails_alone_in_a_run(tmp_path: Path, weights: str) -> None:
    inp = tmp_path / "in"
    write_case(chest_image(), inp / "good.nii.gz")
    _tilted_series(inp / "tilted", 20.0)
    res = run_screen(inp, tmp_path / "out", weights=weights)
    assert (res.succeeded, res.failed, res.exit_code) == (1, 1, 1)
    reason = read_failures(tmp_path / "out")["tilted"]["reason"]
    assert "tilted: gantry-tilted DICOM series" in reason and "\n" not in reason
    assert not (tmp_path / "out" / "cases" / "tilted" / "result.json").exists()
