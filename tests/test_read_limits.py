"""Hostile headers refused before any voxel is read (issue 23): the voxel limit counts every dimension and the
bytes per voxel, spacings must be 0.05-20 mm, direction matrices must be orthonormal (never straightened).
(The resampled network grid: tests/test_grid_limit.py.)"""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from helpers import (
    chest_hu,
    chest_image,
    read_failures,
    run_screen,
    to_image,
    write_case,
)

from pipelines.imaging import discovery, filesys, io
from pipelines.imaging import header as io_header
from pipelines.imaging import nifti_checks as io_nifti

LIMIT = 1_000_000


@pytest.fixture
def no_voxel_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if anything reads or decompresses voxel data."""

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("voxel data was read")

    monkeypatch.setattr(io_nifti, "_stream_voxels", boom)
    monkeypatch.setattr(io_nifti, "check_nifti_file", boom)
    monkeypatch.setattr(sitk, "ReadImage", boom)
    monkeypatch.setattr(sitk.ImageSeriesReader, "Execute", boom)


def _nifti_header_only(path: Path, shape: tuple[int, ...], dtype: type = np.int16) -> Path:
    """A ``.nii.gz`` whose header claims ``shape`` but which holds only 1000 voxel bytes (tiny on disk)."""
    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(dtype)
    hdr.set_data_shape(shape)
    hdr.set_zooms((1.0,) * len(shape))
    hdr.set_xyzt_units("mm")
    hdr["vox_offset"] = 352
    path.write_bytes(gzip.compress(bytes(hdr.binaryblock) + b"\0" * 4 + b"\0" * 1000))
    return path


def _mhd_header_only(path: Path, *, dims: str, element: str, matrix: str = "1 0 0 0 1 0 0 0 1") -> Path:
    path.write_text(
        "ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
        f"TransformMatrix = {matrix}\nOffset = 0 0 0\nElementSpacing = 1 1 1\nDimSize = {dims}\n"
        f"ElementType = {element}\nElementDataFile = {path.stem}.raw\n"
    )
    (path.parent / f"{path.stem}.raw").write_bytes(b"\0" * 4096)
    return path


def _reason(err: pytest.ExceptionInfo[filesys.ImageReadError]) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


# --------------------------------------------------------------------------------------------- limits
@pytest.mark.parametrize("shape", [(100, 100, 100, 5), (100, 100, 50, 2, 3)])
def test_every_dimension_counts_before_decompression(
    tmp_path: Path, no_voxel_reads: None, shape: tuple[int, ...]
) -> None:
    """4D/5D headers: the first three dimensions alone (1 M / 0.5 M voxels) pass the old three-axis check."""
    path = _nifti_header_only(tmp_path / "bomb.nii.gz", shape)
    assert path.stat().st_size < 5000
    dims = "x".join(map(str, shape))
    pattern = rf"bomb\.nii\.gz: volume of {dims} = .* exceeds the limit of 1\.0 M voxels .*max_input_voxels"
    with pytest.raises(filesys.ImageReadError) as err:
        discovery.check_size(discovery.CaseInput("bomb", path), max_voxels=LIMIT)
    assert re.search(pattern, _reason(err)), err.value
    with pytest.raises(filesys.ImageReadError, match=pattern):
        io.read_image(path, max_voxels=LIMIT)


def test_float64_metaimage_refused_by_bytes(tmp_path: Path, no_voxel_reads: None) -> None:
    """The issue's 390 M-voxel float64 .mhd (3.1 GB): under the 400 M voxel limit, over its 0.8 GB of bytes."""
    path = _mhd_header_only(tmp_path / "doubles.mhd", dims="1000 1000 390", element="MET_DOUBLE")
    with pytest.raises(filesys.ImageReadError) as err:
        discovery.check_size(discovery.CaseInput("doubles", path), max_voxels=400_000_000)
    reason = _reason(err)
    assert "doubles.mhd" in reason and "float64 volume of 1000x1000x390" in reason, reason
    assert "3.12 GB" in reason and "0.80 GB" in reason and "max_input_voxels" in reason, reason
    with pytest.raises(filesys.ImageReadError, match="3.12 GB"):
        io.read_image(path, max_voxels=400_000_000)
    # the same header as int16 holds 0.78 GB: within the limit
    small = _mhd_header_only(tmp_path / "shorts.mhd", dims="1000 1000 390", element="MET_SHORT")
    discovery.check_size(discovery.CaseInput("shorts", small), max_voxels=400_000_000)


def test_nrrd_and_metaimage_headers_parsed_without_itk(tmp_path: Path) -> None:
    img = to_image(chest_hu((6, 7, 8)), spacing_xyz=(0.7, 0.8, 2.5))
    img = sitk.DICOMOrient(img, "RAI")
    for ext in (".nrrd", ".mhd", ".mha", ".nii.gz"):
        path = write_case(img, tmp_path / f"s{ext}")
        header = io_header.read_header(path)
        assert header.size == (8, 7, 6), ext
        np.testing.assert_allclose(header.spacing, (0.7, 0.8, 2.5), rtol=1e-6)
        assert header.bytes_per_voxel == 2 and header.element == "int16", ext
        io_header.check_geometry(header, path)
    huge = tmp_path / "huge.nrrd"
    huge.write_bytes(b"NRRD0004\ntype: double\ndimension: 3\nsizes: 2000 2000 2000\nencoding: raw\n\n")
    with pytest.raises(filesys.ImageReadError, match=r"huge\.nrrd: volume of 2000x2000x2000 = 8000 M"):
        discovery.check_size(discovery.CaseInput("huge", huge), max_voxels=LIMIT)


def test_dicom_limit_counts_rows_columns_files(tmp_path: Path) -> None:
    from helpers import write_dicom_series

    files = [str(f) for f in write_dicom_series(chest_image(), tmp_path / "d")]
    case = discovery.CaseInput("d", tmp_path / "d", dicom_files=files)
    discovery.check_size(case, max_voxels=56 * 48 * 24)
    with pytest.raises(filesys.ImageReadError, match=r"volume of 56x48x24 = 64512 voxels exceeds"):
        discovery.check_size(case, max_voxels=56 * 48 * 24 - 1)


def test_bad_input_beside_good_scan_fails_alone(tmp_path: Path, weights: str) -> None:
    inp = tmp_path / "in"
    write_case(chest_image(), inp / "good.nii.gz")
    _nifti_header_only(inp / "bomb.nii.gz", (100, 100, 100, 5))
    _mhd_header_only(inp / "doubles.mhd", dims="100 100 60", element="MET_DOUBLE")
    res = run_screen(inp, tmp_path / "out", weights=weights, max_input_voxels=LIMIT)
    assert (res.succeeded, res.failed) == (1, 2)
    failures = read_failures(tmp_path / "out")
    assert "exceeds the limit" in failures["bomb"]["reason"]
    assert "bomb.nii.gz" in failures["bomb"]["reason"]
    assert "float64 volume of 100x100x60" in failures["doubles"]["reason"]


# --------------------------------------------------------------------------------------------- spacing
@pytest.mark.parametrize("spacing", [50.0, 0.01])
def test_absurd_spacing_refused_from_the_header(tmp_path: Path, spacing: float) -> None:
    path = write_case(to_image(chest_hu(), spacing_xyz=(4.0, 4.0, spacing)), tmp_path / "odd.nii.gz")
    with pytest.raises(
        filesys.ImageReadError, match=r"odd\.nii\.gz: spacing .* outside the accepted 0\.05-20 mm"
    ):
        io.read_image(path)
    mem = to_image(chest_hu(), spacing_xyz=(spacing, 4.0, 4.0))
    with pytest.raises(filesys.ImageReadError, match="outside the accepted"):
        io.validate_image(mem, "mem")


def test_spacing_bounds_are_inclusive() -> None:
    assert io_header.spacing_problem((0.05, 20.0, 1.0)) == ""
    assert "outside" in io_header.spacing_problem((0.049, 1.0, 1.0))
    assert "strictly positive" in io_header.spacing_problem((1.0, float("inf"), 1.0))


def test_nifti_spacing_in_metres_is_scaled(tmp_path: Path) -> None:
    """xyzt_units = metre: 0.004 m voxels are 4 mm (SimpleITK scales them the same way)."""
    img = nib.Nifti1Image(chest_hu().transpose(2, 1, 0).copy(), np.diag([0.004, 0.004, 0.004, 1.0]))
    img.header.set_xyzt_units("meter")
    nib.save(img, tmp_path / "metres.nii.gz")
    assert io_header.read_header(tmp_path / "metres.nii.gz").spacing == pytest.approx((4.0, 4.0, 4.0))


# --------------------------------------------------------------------------------------------- shear
def test_sheared_metaimage_refused_not_straightened(tmp_path: Path) -> None:
    path = write_case(chest_image(), tmp_path / "shear.mhd")
    path.write_text(
        path.read_text().replace(
            "TransformMatrix = 1 0 0 0 1 0 0 0 1", "TransformMatrix = 1 0 0 0.3 1 0 0 0 1"
        )
    )
    assert sitk.ReadImage(str(path)).GetDirection()[1] == pytest.approx(0.3)  # SimpleITK reads it as is
    with pytest.raises(filesys.ImageReadError) as err:
        io.read_image(path)
    assert re.search(r"shear\.mhd: direction matrix is not orthogonal .* 73\.3 degrees", _reason(err)), (
        err.value
    )


def test_scaled_metaimage_matrix_refused(tmp_path: Path) -> None:
    path = _mhd_header_only(
        tmp_path / "scaled.mhd", dims="8 8 8", element="MET_SHORT", matrix="2 0 0 0 2 0 0 0 2"
    )
    with pytest.raises(
        filesys.ImageReadError, match=r"scaled\.mhd: direction matrix axes are not unit vectors"
    ):
        io.read_image(path)


def test_sheared_nrrd_refused(tmp_path: Path) -> None:
    path = write_case(chest_image(), tmp_path / "shear.nrrd")
    head, sep, data = path.read_bytes().partition(b"\n\n")
    head = head.replace(
        b"space directions: (4,0,0) (0,4,0) (0,0,4)", b"space directions: (4,0,0) (1.2,4,0) (0,0,4)"
    )
    path.write_bytes(head + sep + data)
    with pytest.raises(filesys.ImageReadError, match=r"shear\.nrrd: direction matrix is not orthogonal"):
        io.read_image(path)


def test_sheared_nifti_sform_refused(tmp_path: Path) -> None:
    """With a sheared sform and a plain qform SimpleITK silently uses the qform: a different geometry."""
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    affine[0, 1] = 1.5
    img = nib.Nifti1Image(chest_hu().transpose(2, 1, 0).copy(), affine)
    img.header.set_sform(affine, code=1)
    img.header.set_qform(np.diag([4.0, 4.0, 4.0, 1.0]), code=1)
    nib.save(img, tmp_path / "sform.nii.gz")
    with pytest.raises(filesys.ImageReadError, match=r"sform\.nii\.gz: direction matrix is not orthogonal"):
        io.read_image(tmp_path / "sform.nii.gz")


def test_sheared_in_memory_image_refused() -> None:
    img = chest_image()
    img.SetDirection((1.0, 0.2, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    with pytest.raises(filesys.ImageReadError, match="not orthogonal"):
        io.validate_image(img, "mem")
