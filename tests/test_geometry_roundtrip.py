"""Issue 3 round trips: whatever the on-disk orientation, format, origin and spacing, the written masks have the
input's exact grid and overlay it, and a planted object is reported at its world position (LPS and RAS) and at
its voxel in the ORIGINAL file's index space.

One screening run covers every variant (module fixture); the network is :class:`helpers.ThresholdNet`, which
fires only on the bright planted ball, so the expected answer is known exactly.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from helpers import (
    FAST,
    LUNG_HU,
    chest_hu,
    lung_centre_zyx,
    patched_network,
    read_failures,
    run_screen,
    sitk_affine_ras,
    to_image,
    write_case,
    write_dicom_series,
)

SHAPE = (24, 48, 56)  # z, y, x on the canonical grid
SPACING_XYZ = (3.5, 3.0, 4.0)  # anisotropic, mm
ORIGIN = (-97.3, 41.2, -305.5)  # LPS mm
RADIUS_MM, BALL_HU = 7.0, 300
# (case id, orientation code handed to DICOMOrient, extension or "dicom")
VARIANTS = [
    ("lps_nii", "LPS", ".nii.gz"),
    ("ras_nii", "RAS", ".nii.gz"),
    ("rai_nii", "RAI", ".nii.gz"),
    ("lpi_nii", "LPI", ".nii.gz"),
    ("pls_nii", "PLS", ".nii.gz"),
    ("sra_nii", "SRA", ".nii.gz"),
    ("ilp_nii", "ILP", ".nii.gz"),
    ("ras_mhd", "RAS", ".mhd"),
    ("asl_mhd", "ASL", ".mhd"),
    ("lps_nrrd", "LPS", ".nrrd"),
    ("rpi_nrrd", "RPI", ".nrrd"),
    ("lps_dicom", "LPS", "dicom"),
    ("ras_dicom", "RAS", "dicom"),
]


def _base() -> tuple[sitk.Image, tuple[float, float, float]]:
    """Canonical chest with a ball in the right lung; returns the image and the ball's world centre (LPS mm)."""
    centre_zyx = lung_centre_zyx(SHAPE, side="right")
    sx, sy, sz = SPACING_XYZ
    hu = chest_hu(SHAPE, spacing_zyx=(sz, sy, sx), sphere=(centre_zyx, RADIUS_MM, BALL_HU))
    img = to_image(hu, spacing_xyz=SPACING_XYZ, origin=ORIGIN)
    world = img.TransformContinuousIndexToPhysicalPoint(tuple(float(v) for v in centre_zyx[::-1]))
    return img, (float(world[0]), float(world[1]), float(world[2]))


@pytest.fixture(scope="module")
def screened(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("geometry")
    inp, out = root / "in", root / "out"
    base, world = _base()
    sources: dict[str, Path] = {}
    for case_id, code, ext in VARIANTS:
        img = sitk.DICOMOrient(base, code)
        assert sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(img.GetDirection()) == code
        if ext == "dicom":
            write_dicom_series(img, inp / case_id)
            sources[case_id] = inp / case_id
        else:
            sources[case_id] = write_case(img, inp / f"{case_id}{ext}")
    with pytest.MonkeyPatch.context() as mp, patched_network(mp, threshold=0.75):
        # the fake network's logit is a 200x-steep step: at T = 1 its probabilities are binary and the mask
        # contour after resampling from the 3 mm grid is the ball's; tempered (T = 4) the interpolated
        # probabilities move it inward, which is about this toy's step, not about geometry
        res = run_screen(inp, out, logit_temperature=1.0, candidate_threshold=0.1)
    return {"res": res, "out": out, "sources": sources, "world": world}


def _nodules(out: Path, case_id: str) -> list[dict[str, str]]:
    with open(out / "cases" / case_id / "nodules.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _nib_affine(path: Path) -> np.ndarray:
    img = nib.load(str(path))
    assert isinstance(img, nib.Nifti1Image)
    return np.asarray(img.affine)


def _read_input(path: Path) -> sitk.Image:
    from pipelines.imaging.io import read_image

    return read_image(path)


def test_every_variant_succeeds(screened: dict[str, Any]) -> None:
    res = screened["res"]
    assert read_failures(screened["out"]) == {}
    assert (res.succeeded, res.failed) == (len(VARIANTS), 0)


@pytest.mark.parametrize("case_id", [v[0] for v in VARIANTS])
def test_masks_have_the_input_grid_and_overlay_it(screened: dict[str, Any], case_id: str) -> None:
    src: Path = screened["sources"][case_id]
    original = _read_input(src)
    hu = sitk.GetArrayFromImage(original)
    for name in ("lungs", "nodules"):
        path = screened["out"] / "cases" / case_id / f"{name}.nii.gz"
        mask = sitk.ReadImage(str(path))
        assert mask.GetSize() == original.GetSize()
        np.testing.assert_allclose(mask.GetSpacing(), original.GetSpacing(), atol=1e-5)
        np.testing.assert_allclose(mask.GetOrigin(), original.GetOrigin(), atol=1e-4)
        np.testing.assert_allclose(mask.GetDirection(), original.GetDirection(), atol=1e-6)
        affine = _nib_affine(path)
        expected = _nib_affine(src) if src.name.endswith(".nii.gz") else sitk_affine_ras(original)
        np.testing.assert_allclose(affine, expected, atol=1e-4)
    lungs = sitk.GetArrayFromImage(sitk.ReadImage(str(screened["out"] / "cases" / case_id / "lungs.nii.gz")))
    lung_tissue = hu == LUNG_HU
    covered = np.count_nonzero(lungs[lung_tissue] > 0) / np.count_nonzero(lung_tissue)
    outside = np.count_nonzero(lungs[hu == -1000] > 0)
    assert covered > 0.9, f"lung mask covers only {covered:.2%} of the lung voxels: flipped or shifted"
    assert outside == 0
    nodules = sitk.GetArrayFromImage(
        sitk.ReadImage(str(screened["out"] / "cases" / case_id / "nodules.nii.gz"))
    )
    ball = hu >= BALL_HU - 1
    # 36 ball voxels; the 3 mm network grid blurs its rim, so 3/4 of them is the bar, plus the mask centroid
    assert np.count_nonzero(nodules[ball] == 1) / np.count_nonzero(ball) >= 0.75
    centroid = np.argwhere(nodules == 1).mean(axis=0) - np.argwhere(ball).mean(axis=0)
    assert np.abs(centroid).max() < 1.0, centroid
    assert np.count_nonzero(nodules[~ball] > 0) < np.count_nonzero(ball)


@pytest.mark.parametrize("case_id", [v[0] for v in VARIANTS])
def test_planted_ball_reported_at_its_world_and_voxel_position(
    screened: dict[str, Any], case_id: str
) -> None:
    rows = _nodules(screened["out"], case_id)
    assert len(rows) == 1, rows
    row = rows[0]
    wx, wy, wz = screened["world"]
    lps = np.array([float(row[f"center_lps_{a}_mm"]) for a in "xyz"])
    ras = np.array([float(row[f"center_ras_{a}_mm"]) for a in "xyz"])
    err = float(np.linalg.norm(lps - (wx, wy, wz)))
    assert err < 2.0 < RADIUS_MM, f"LPS centre off by {err:.2f} mm"
    np.testing.assert_allclose(ras, (-wx, -wy, wz), atol=2.0)
    np.testing.assert_allclose(ras, lps * (-1, -1, 1), atol=1e-3)
    assert row["lung_side"] == "right"

    original = _read_input(screened["sources"][case_id])
    ijk = np.array([float(row[f"voxel_{a}"]) for a in "ijk"])
    back = original.TransformContinuousIndexToPhysicalPoint(tuple(ijk.tolist()))
    np.testing.assert_allclose(back, lps, atol=0.05)
    i, j, k = (int(round(v)) for v in ijk)
    assert original[i, j, k] == BALL_HU  # the ORIGINAL file's index space points into the ball
    lungs = sitk.ReadImage(str(screened["out"] / "cases" / case_id / "lungs.nii.gz"))
    assert lungs[i, j, k] == 1  # right lung


def test_in_memory_image_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An in-memory, non-canonical SimpleITK image gets the same treatment as a file."""
    base, (wx, wy, wz) = _base()
    img = sitk.DICOMOrient(base, "RAI")
    with patched_network(monkeypatch, threshold=0.75):
        res = run_screen(img, tmp_path / "out")
    assert res.exit_code == 0
    mask = sitk.ReadImage(str(tmp_path / "out" / "cases" / "image_0000" / "nodules.nii.gz"))
    assert mask.GetSize() == img.GetSize() and mask.GetDirection() == pytest.approx(img.GetDirection())
    rows = _nodules(tmp_path / "out", "image_0000")
    assert len(rows) == 1
    assert float(rows[0]["center_lps_x_mm"]) == pytest.approx(wx, abs=2.0)
    assert float(rows[0]["center_lps_z_mm"]) == pytest.approx(wz, abs=2.0)
    # result.json lists the candidates with where they came from (the bench tells network ones apart by it)
    record = json.loads((tmp_path / "out" / "cases" / "image_0000" / "result.json").read_text())
    assert [c["source"] for c in record["candidates"]][:1] == ["network"]
    assert record["candidates"][0]["center_lps_x_mm"] == pytest.approx(wx, abs=2.0)
    assert FAST["target_spacing_mm"] == 3.0
