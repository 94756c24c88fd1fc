"""The resampled network grid is bounded by the voxel limit (setting ``max_input_voxels``) before it is
allocated (issue 23): a very fine target spacing or very coarse input voxels never ask the allocator for
hundreds of GB, and the case fails with a reason naming its file and the limit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import (
    FAST,
    chest_hu,
    chest_image,
    read_failures,
    run_screen,
    to_image,
    write_case,
)

from pipelines.imaging import filesys, io, preprocess
from pipelines.imaging.preprocess import CaseGeometry
from pipelines.imaging.transforms import ResampleToSpacingd

LIMIT = 1_000_000


def _reason(err: pytest.ExceptionInfo[filesys.ImageReadError]) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


# --------------------------------------------------------------------------------------------- network grid
def _case(shape_zyx: tuple[int, int, int], spacing_zyx: tuple[float, float, float]) -> dict:
    hu = np.zeros(shape_zyx, np.int16)
    canon = io.ImageHeader(shape_zyx[::-1], spacing_zyx[::-1], (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    box = tuple((0, n) for n in shape_zyx)
    geometry = CaseGeometry(canon, canon, box, shape_zyx, spacing_zyx)  # type: ignore[arg-type]
    return {"image": hu, "lungs": hu.astype(np.uint8), "geometry": geometry, "source_name": "scan.nii.gz"}


def test_fine_target_spacing_refused_before_allocation(monkeypatch: pytest.MonkeyPatch) -> None:
    """target_spacing_mm=0.05 on a 300x340x340 mm chest: 277 G voxels asked of the allocator before."""
    monkeypatch.setattr(preprocess, "resample", lambda *a, **k: pytest.fail("resampled"))
    data = _case((300, 512, 512), (1.0, 0.664, 0.664))
    step = ResampleToSpacingd(
        ["image", "lungs"], spacing_mm=0.05, label_keys=["lungs"], max_voxels=400_000_000
    )
    with pytest.raises(filesys.ImageReadError) as err:
        step(data)
    reason = _reason(err)
    assert reason.startswith("scan.nii.gz: resampling the 300x340x340 mm region"), reason
    assert "0.05 mm voxels" in reason and "6000x6799x6799 grid of 277" in reason, reason
    assert "above the limit of 400 M (setting max_input_voxels)" in reason, reason


def test_grid_within_limit_resamples() -> None:
    data = _case((10, 12, 14), (2.0, 1.0, 1.0))
    out = ResampleToSpacingd(
        ["image", "lungs"], spacing_mm=1.0, label_keys=["lungs"], max_voxels=20 * 12 * 14
    )(data)
    assert tuple(out["image"].shape) == (20, 12, 14)
    with pytest.raises(filesys.ImageReadError, match="grid of 3360 voxels, above the limit of 3359"):
        ResampleToSpacingd(["image"], spacing_mm=1.0, max_voxels=20 * 12 * 14 - 1)(
            _case((10, 12, 14), (2.0, 1.0, 1.0))
        )


def test_coarse_scan_grid_refused_in_a_run(tmp_path: Path, weights: str) -> None:
    """Voxels of 19 mm (within the spacing bounds) make a huge 3 mm network grid: refused, the good scan runs."""
    inp = tmp_path / "in"
    write_case(chest_image(), inp / "good.nii.gz")
    write_case(to_image(chest_hu(), spacing_xyz=(19.0, 19.0, 19.0)), inp / "coarse.nii.gz")
    res = run_screen(inp, tmp_path / "out", weights=weights, max_input_voxels=LIMIT)
    assert (res.succeeded, res.failed) == (1, 1)
    reason = read_failures(tmp_path / "out")["coarse"]["reason"]
    assert (
        "coarse.nii.gz: resampling the" in reason and f"to {FAST['target_spacing_mm']:g} mm voxels" in reason
    )
    assert "setting max_input_voxels" in reason, reason


def test_segmentation_plan_grid_is_bounded_too(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipelines.segmentation.plan import SegPlan
    from pipelines.segmentation.transforms import ResampleToPland

    monkeypatch.setattr(preprocess, "resample", lambda *a, **k: pytest.fail("resampled"))
    plan = SegPlan(
        modality="mri", num_channels=1, label_values=(0, 1), label_names={}, target_spacing_zyx=(0.1, 0.1, 0.1),
        patch_size_zyx=(8, 16, 16), strides=((2, 2, 2),), features=(8, 16),
    )  # fmt: skip
    data = _case((40, 256, 256), (5.0, 1.0, 1.0))
    data["case_id"] = "mri_case"
    with pytest.raises(
        filesys.ImageReadError, match=r"^mri_case: resampling the 200x256x256 mm region .* 0\.1 mm"
    ):
        ResampleToPland(["image"], plan=plan, max_voxels=400_000_000)(data)
