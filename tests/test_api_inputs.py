"""``screen()`` accepts a path, a SimpleITK image, a nibabel image or a numpy array with spacing (issue 19),
and says what it got when it cannot use one."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from helpers import (
    chest_hu,
    chest_image,
    read_summary,
    run_screen,
    sitk_affine_ras,
    write_case,
)

from pipelines.screening import inputs as api_inputs


def _oblique(path: Path) -> Path:
    """A chest image with a rotated direction, anisotropic spacing and an origin, written to ``path``."""
    image = chest_image()
    image.SetSpacing((0.8, 0.9, 2.5))
    image.SetOrigin((-20.0, 35.0, 110.0))
    c, s = np.cos(0.2), np.sin(0.2)
    image.SetDirection((c, -s, 0.0, s, c, 0.0, 0.0, 0.0, -1.0))
    return write_case(image, path)


def _same_geometry(a: sitk.Image, b: sitk.Image) -> None:
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b))


def test_nibabel_image_keeps_the_file_geometry(tmp_path: Path) -> None:
    path = _oblique(tmp_path / "oblique.nii.gz")
    read = sitk.ReadImage(str(path))
    converted = api_inputs.nibabel_to_sitk(nib.load(path))
    _same_geometry(converted, read)
    np.testing.assert_allclose(sitk_affine_ras(converted), nib.load(path).affine, atol=1e-4)


def test_numpy_array_is_the_canonical_grid_with_its_spacing() -> None:
    hu = chest_hu()
    image = api_inputs.array_to_sitk(hu, spacing_zyx=(2.5, 0.9, 0.8))
    assert image.GetSpacing() == (0.8, 0.9, 2.5) and image.GetOrigin() == (0.0, 0.0, 0.0)
    assert image.GetDirection() == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), hu)  # [z, y, x] kept as given


@pytest.mark.parametrize(
    ("given", "spacing", "error", "message"),
    [
        (42, None, TypeError, "cannot screen int: pass a path"),
        ({"image": "x"}, None, TypeError, "cannot screen dict"),
        (torch.zeros(4, 4, 4), None, TypeError, "cannot screen torch.Tensor of shape (4, 4, 4)"),
        (["a.nii.gz", np.zeros((4, 4, 4))], None, TypeError, "cannot screen a list holding str"),
        ([], None, ValueError, "no input given"),
        (np.zeros((8, 8, 8), np.int16), None, ValueError, "needs its voxel size: screen(array, out, spacing_zyx=(z, y, x))"),
        (np.zeros((8, 8)), (1, 1, 1), ValueError, "must be 3D [z, y, x], got numpy.ndarray of shape (8, 8)"),
        (np.zeros((8, 8, 8)), (1, 0, 1), ValueError, "spacing_zyx must be three positive numbers"),
        (np.zeros((8, 8, 8)), (1, float("nan"), 1), ValueError, "spacing_zyx must be three positive numbers"),
        (np.zeros((8, 8, 8), bool), (1, 1, 1), ValueError, "the voxels must be numbers"),
        (sitk.Image(8, 8, 8, sitk.sitkInt16), (1, 1, 1), ValueError, "spacing_zyx applies to numpy array inputs only"),
    ],
)  # fmt: skip
def test_unusable_inputs_say_what_they_got(given, spacing, error, message) -> None:
    with pytest.raises(error) as info:
        api_inputs.as_images(given, spacing_zyx=spacing)
    assert message in str(info.value), str(info.value)


def test_sheared_nibabel_affine_is_refused() -> None:
    affine = np.eye(4)
    affine[0, 1] = 0.5
    with pytest.raises(ValueError, match="sheared"):
        api_inputs.nibabel_to_sitk(nib.Nifti1Image(np.zeros((8, 8, 8), np.int16), affine))


def test_screen_refuses_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="cannot screen int"):
        run_screen(42, tmp_path / "out")
    with pytest.raises(ValueError, match="spacing_zyx applies to numpy array inputs only"):
        run_screen(tmp_path / "a.nii.gz", tmp_path / "out", spacing_zyx=(1, 1, 1))
    with pytest.raises(TypeError, match="output_dir must be a path"):
        run_screen(chest_image(), 3)
    assert not (tmp_path / "out").exists()


def test_screen_accepts_each_input_kind_with_the_same_result(tmp_path: Path, weights: str) -> None:
    """One scan as a path, a SimpleITK image, a nibabel image and a numpy array: the same lungs are found."""
    hu = chest_hu()
    image = sitk.GetImageFromArray(hu)
    image.SetSpacing((4.0, 4.0, 4.0))
    path = write_case(image, tmp_path / "scan.nii.gz")
    from_path = run_screen(path, tmp_path / "path", weights=weights)
    in_memory = run_screen(
        [sitk.ReadImage(str(path)), nib.load(path), hu],
        tmp_path / "memory",
        weights=weights,
        spacing_zyx=(4, 4, 4),
    )
    assert (from_path.succeeded, in_memory.succeeded, in_memory.failed) == (1, 3, 0)
    reference = read_summary(tmp_path / "path")["scan"]
    rows = read_summary(tmp_path / "memory")
    assert sorted(rows) == ["image_0000", "image_0001", "image_0002"]
    assert float(reference["lung_volume_ml"]) > 0
    for row in rows.values():
        assert row["status"] == "ok"
        for column in ("lung_volume_ml", "right_lung_volume_ml", "left_lung_volume_ml", "nodule_count"):
            assert row[column] == reference[column], column
