"""pipelines.imaging.io: reading every format with its geometry, validation, NIfTI checks SimpleITK skips, DICOM slice
checks, case discovery, size limits before reading, atomic writes, and the exact canonical round trip."""

from __future__ import annotations

import gzip
import itertools
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from helpers import chest_hu, chest_image, to_image, write_case, write_dicom_series

from pipelines.imaging import dicom_geometry, discovery, filesys, io
from pipelines.imaging import nifti_checks as io_nifti


def _geometry(img: sitk.Image) -> tuple:
    return (img.GetSize(), img.GetSpacing(), img.GetOrigin(), img.GetDirection())


def _oblique_free_image() -> sitk.Image:
    img = to_image(chest_hu((12, 20, 24)), spacing_xyz=(0.8, 1.1, 2.5), origin=(-10.5, 22.0, -300.0))
    return sitk.DICOMOrient(img, "RAI")


# --------------------------------------------------------------------------------------------- reading
@pytest.mark.parametrize("ext", [".nii.gz", ".nii", ".mhd", ".nrrd"])
def test_read_image_keeps_geometry_and_voxels(tmp_path: Path, ext: str) -> None:
    img = _oblique_free_image()
    path = write_case(img, tmp_path / f"scan{ext}")
    back = io.read_image(path)
    for got, want in zip(_geometry(back), _geometry(img)):
        np.testing.assert_allclose(got, want, atol=1e-4)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(img))


def test_read_dicom_series_folder(tmp_path: Path) -> None:
    img = to_image(chest_hu((12, 20, 24)), spacing_xyz=(0.8, 1.1, 2.5), origin=(-10.5, 22.0, -300.0))
    write_dicom_series(img, tmp_path / "series")
    back = io.read_image(tmp_path / "series")
    for got, want in zip(_geometry(back), _geometry(img)):
        np.testing.assert_allclose(got, want, atol=1e-3)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(img))


def test_missing_file_named(tmp_path: Path) -> None:
    with pytest.raises(filesys.ImageReadError, match=r"nowhere\.nii\.gz: no such file"):
        io.read_image(tmp_path / "nowhere.nii.gz")


def test_itk_messages_are_cleaned() -> None:
    msg = (
        "Exception thrown in SimpleITK ImageFileReader_Execute: /tmp/build/itkImageBase.hxx:77:\n"
        "ITK ERROR: Image(0x5645fb765f80): Zero-valued spacing is not supported.\nRefusing to change spacing"
    )
    assert filesys.first_line(msg) == "Zero-valued spacing is not supported."
    msg = (
        "Exception thrown in SimpleITK ImageFileReader_Execute: /work/src/sitkImageReaderBase.cxx:99:\n"
        'sitk::ERROR: Unable to determine ImageIO reader for "/x/y.nii.gz"'
    )
    assert filesys.first_line(msg).startswith("not a readable image")


# --------------------------------------------------------------------------------------------- NIfTI checks
def test_nifti_fast_path_reads_no_voxels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_case(chest_image(), tmp_path / "ok.nii.gz")

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("voxel data streamed for a valid int16 file")

    monkeypatch.setattr(io_nifti, "_stream_voxels", boom)
    io_nifti.check_nifti_file(path)  # gzip trailer agrees with the header: no decompression pass


def test_multi_member_gzip_is_not_mistaken_for_truncated(tmp_path: Path) -> None:
    """bgzip/pigz-style files hold several gzip members; the trailer then covers only the last one."""
    raw = write_case(chest_image(), tmp_path / "plain.nii").read_bytes()
    path = tmp_path / "members.nii.gz"
    path.write_bytes(gzip.compress(raw[:5000]) + gzip.compress(raw[5000:]))
    io_nifti.check_nifti_file(path)
    assert io.read_image(path).GetSize() == (56, 48, 24)


def test_float_nifti_with_finite_values_passes(tmp_path: Path) -> None:
    path = write_case(to_image(chest_hu().astype(np.float32)), tmp_path / "f.nii.gz")
    io_nifti.check_nifti_file(path)


def test_simpleitk_hides_nan_so_we_check_the_file(tmp_path: Path) -> None:
    arr = chest_hu().astype(np.float32)
    arr[3, 4, 5] = np.nan
    path = write_case(to_image(arr), tmp_path / "nan.nii.gz")
    assert np.isfinite(sitk.GetArrayViewFromImage(sitk.ReadImage(str(path)))).all()  # the silent repair
    with pytest.raises(filesys.ImageReadError, match="1 voxels are NaN or infinite"):
        io.read_image(path)


# --------------------------------------------------------------------------------------------- validation
def test_validate_image() -> None:
    io.validate_image(chest_image())
    with pytest.raises(filesys.ImageReadError, match="2D"):
        io.validate_image(sitk.Image([8, 8], sitk.sitkInt16))
    with pytest.raises(filesys.ImageReadError, match="scalar"):
        io.validate_image(sitk.Image([8, 8, 8], sitk.sitkVectorFloat32, 3))
    one_t = sitk.JoinSeries([chest_image()])
    io.validate_image(one_t)  # a single time point is accepted and squeezed
    assert io.to_3d(one_t).GetDimension() == 3
    arr = chest_hu().astype(np.float32)
    arr[0, 0, 0] = np.inf
    with pytest.raises(filesys.ImageReadError, match="NaN or infinite"):
        io.validate_image(to_image(arr), "mem")


def test_dicom_slice_checks(tmp_path: Path) -> None:
    files = [str(f) for f in write_dicom_series(chest_image(), tmp_path / "s")]
    dicom_geometry.check_dicom_slices(tmp_path, files)
    with pytest.raises(filesys.ImageReadError, match="duplicate slice positions"):
        dicom_geometry.check_dicom_slices(tmp_path, files + files[:1])
    with pytest.raises(filesys.ImageReadError, match="at least 2"):
        dicom_geometry.check_dicom_slices(tmp_path, files[:1])
    with pytest.raises(filesys.ImageReadError, match="missing slices"):
        dicom_geometry.check_dicom_slices(tmp_path, files[:5] + files[6:])


# --------------------------------------------------------------------------------------------- discovery
def test_discover_cases(tmp_path: Path) -> None:
    write_case(chest_image(), tmp_path / "a.nii.gz")
    write_case(chest_image(), tmp_path / "sub" / "a.mhd")  # same stem: the folder makes the id unique
    write_case(chest_image(), tmp_path / "sub" / "b.nrrd")
    (tmp_path / ".hidden.nii.gz").write_bytes(b"x")
    (tmp_path / "readme.txt").write_text("not a scan")
    write_dicom_series(chest_image(), tmp_path / "dicom" / "exam")
    write_dicom_series(chest_image(), tmp_path / "dicom" / "report", modality="SR")
    cases = discovery.discover_cases(tmp_path)
    ids = [c.case_id for c in cases]
    assert ids == ["a", "dicom_exam", "sub_a", "sub_b"]
    exam = cases[1]
    assert exam.is_dicom and len(exam.dicom_files) == 24
    assert all(not c.path.name.endswith(".raw") for c in cases)
    # the SR folder holds nothing to screen: its note rides on the first case of the run instead of vanishing
    assert any("in report: modality SR is not a 3D CT/MR series" in n for n in cases[0].notes), cases[0].notes
    assert discovery.discover_cases(tmp_path / "dicom" / "report") == []


def test_check_size_reads_only_the_header(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_case(chest_image(), tmp_path / "c.nii.gz")
    case = discovery.CaseInput("c", path)
    monkeypatch.setattr(io, "read_image", lambda *a, **k: pytest.fail("voxels read"))
    discovery.check_size(case, max_voxels=56 * 48 * 24)
    with pytest.raises(filesys.ImageReadError, match=r"56x48x24 .* max_input_voxels"):
        discovery.check_size(case, max_voxels=56 * 48 * 24 - 1)
    files = [str(f) for f in write_dicom_series(chest_image(), tmp_path / "d")]
    with pytest.raises(filesys.ImageReadError, match="56x48x24"):
        discovery.check_size(discovery.CaseInput("d", tmp_path / "d", dicom_files=files), max_voxels=1000)


# --------------------------------------------------------------------------------------------- writing
def test_atomic_write_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out" / "table.csv"
    with pytest.raises(RuntimeError), filesys.atomic_write(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert not target.exists() and list(target.parent.iterdir()) == []
    filesys.atomic_write_text(target, "ok\n")
    assert target.read_text() == "ok\n" and [p.name for p in target.parent.iterdir()] == ["table.csv"]


def test_write_image_mhd_is_atomic_pair(tmp_path: Path) -> None:
    io.write_image(chest_image(), tmp_path / "m.mhd")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.mhd", "m.zraw"]
    assert io.read_image(tmp_path / "m.mhd").GetSize() == (56, 48, 24)


# --------------------------------------------------------------------------------------------- canonical grid
CODES = sorted(
    {"".join(p) for perm in itertools.permutations(("LR", "PA", "SI")) for p in itertools.product(*perm)}
)


def test_canonical_round_trip_is_exact_for_all_48_orientations() -> None:
    base = to_image(chest_hu((6, 7, 8)), spacing_xyz=(0.7, 1.3, 2.9), origin=(5.0, -7.0, 11.0))
    assert len(CODES) == 48
    for code in CODES:
        img = sitk.DICOMOrient(base, code)
        arr, canon = io.canonical_array(img)
        assert canon.orientation == "LPS"
        assert canon == io.ImageHeader.of(sitk.DICOMOrient(img, "LPS")), code
        np.testing.assert_array_equal(arr, sitk.GetArrayFromImage(base).astype(np.float32))
        back = io.from_canonical(arr.astype(np.int16), img)
        assert _geometry(back) == _geometry(img), code
        np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(img))


def test_canonical_array_owns_its_memory() -> None:
    """Same dtype and already LPS: the array must still be a copy, not a view into the image's buffer."""
    img = to_image(chest_hu((4, 5, 6)), spacing_xyz=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0))
    img = sitk.Cast(img, sitk.sitkInt16)
    arr, _ = io.canonical_array(img, dtype=np.int16)
    assert arr.flags.owndata and arr.flags.c_contiguous
    assert not np.shares_memory(arr, sitk.GetArrayViewFromImage(img))
    expected = sitk.GetArrayFromImage(img).copy()
    del img
    np.testing.assert_array_equal(arr, expected)


def test_canonical_array_of_slightly_oblique_scan_matches_dicomorient() -> None:
    base = to_image(chest_hu((5, 6, 7)), spacing_xyz=(0.8, 0.9, 2.5), origin=(-3.0, 4.0, 9.0))
    angle = np.deg2rad(4.0)
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    for code in ("RAI", "SLP", "IPR"):
        img = sitk.DICOMOrient(base, code)
        img.SetDirection(tuple((rot @ np.asarray(img.GetDirection()).reshape(3, 3)).ravel()))
        arr, canon = io.canonical_array(img, dtype=np.int16)
        ref = sitk.DICOMOrient(img, "LPS")
        np.testing.assert_array_equal(arr, sitk.GetArrayFromImage(ref))
        want = io.ImageHeader.of(ref)
        assert canon.size == want.size and canon.spacing == want.spacing
        np.testing.assert_allclose(canon.origin, want.origin, atol=1e-9)
        np.testing.assert_allclose(canon.direction, want.direction, atol=1e-12)
