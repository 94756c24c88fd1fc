"""Assessability: a scan that was not (or could not be) read completely is Lung-RADS 0 with its reason, never a
green category (pipelines/screening/assessability.py). Rule-level tests on synthetic lung masks, then whole screenings of
synthetic and real scans (abdomen only, a 2-slice stack, 4 mm slices) through the engine."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from helpers import (
    read_result,
    read_summary,
    run_screen,
    to_image,
    write_case,
    write_dicom_series,
)
from PIL import Image

from pipelines.report.images import MARKER_COLORS
from pipelines.report.index import BADGE_COLORS
from pipelines.screening.assessability import Limits, assess, assess_case

GREEN = {BADGE_COLORS["1"], BADGE_COLORS["2"], MARKER_COLORS["1"], MARKER_COLORS["2"]}


def _lungs(shape_zyx, spacing_zyx, *, z_mm=(20.0, 240.0), semi_yx_mm=(70.0, 45.0)) -> np.ndarray:
    """Two lung ellipsoids (1 right, 2 left) spanning ``z_mm`` (from the first slice) on a ``[z, y, x]`` grid."""
    nz, ny, nx = shape_zyx
    z, y, x = np.meshgrid(*(np.arange(n) * s for n, s in zip(shape_zyx, spacing_zyx)), indexing="ij")
    zc, zr = (z_mm[0] + z_mm[1]) / 2, (z_mm[1] - z_mm[0]) / 2
    cy, cx = ny * spacing_zyx[1] / 2, nx * spacing_zyx[2] / 2
    labels = np.zeros(shape_zyx, np.uint8)
    for label, side in ((1, -1), (2, 1)):
        lx = cx + side * 1.2 * semi_yx_mm[1]
        inside = ((z - zc) / zr) ** 2 + ((y - cy) / semi_yx_mm[0]) ** 2 + ((x - lx) / semi_yx_mm[1]) ** 2 <= 1
        labels[inside] = label
    return labels


SPACING = (2.0, 2.0, 2.0)
SHAPE = (130, 120, 150)  # 260 x 240 x 300 mm


def _assess(labels, spacing=SPACING, **kw):
    return assess(spacing_zyx=spacing, shape_zyx=labels.shape, lung_labels_zyx=labels, **kw)


# ------------------------------------------------------------------------------------------------ rules
def test_a_whole_chest_is_assessable() -> None:
    result = _assess(_lungs(SHAPE, SPACING))
    assert result.assessable and result.screened and result.reasons == () and result.warnings == ()
    assert 2800 < result.measures["lung_volume_ml"] < 3000 and result.measures["lung_z_mm"] >= 200
    assert result.measures["top_fraction"] == result.measures["bottom_fraction"] == 0.0


def test_no_lung_at_all() -> None:
    result = _assess(np.zeros(SHAPE, np.uint8))
    assert not result.assessable and result.screened
    assert result.reasons == ("no lung tissue found in the scan",)


def test_lung_bases_only_in_the_top_slices_of_an_abdominal_scan() -> None:
    full = _lungs((130, *SHAPE[1:]), SPACING)
    abdomen = full[
        :25
    ]  # the scan ends 30 mm above the lung bases (z 20 mm): a few hundred mL of lung at most
    result = _assess(abdomen)
    assert not result.assessable
    text = result.reason
    assert "lungs absent or mostly outside the field of view" in text
    assert "lung coverage too short" in text and "lung apices cut off" in text


def test_apices_or_bases_cut_off() -> None:
    cut_top = _lungs(SHAPE, SPACING)[:80]  # the scan stops 100 mm below the apices
    result = _assess(cut_top)
    assert not result.assessable and "lung apices cut off" in result.reason
    assert result.measures["top_fraction"] >= 0.25 and result.measures["lung_volume_ml"] > 500
    cut_bottom = _lungs(SHAPE, SPACING)[50:]
    assert "lung bases cut off" in _assess(cut_bottom).reason
    grazing = _lungs(SHAPE, SPACING)[12:]  # ends 4 mm into the rounded base: a sliver on the end slice
    assert _assess(grazing).assessable


def test_lungs_cut_off_at_the_sides() -> None:
    result = _assess(_lungs(SHAPE, SPACING)[:, :, 35:-35])  # a field of view narrower than the chest
    assert not result.assessable and "cut off at the sides" in result.reason


def test_too_short_lung_coverage_alone() -> None:
    flat = _lungs(SHAPE, SPACING, z_mm=(100.0, 180.0), semi_yx_mm=(110.0, 60.0))  # 80 mm tall, 2.2 L
    result = _assess(flat)
    assert len(result.reasons) == 1 and result.measures["lung_z_mm"] < 100.0
    assert result.reason.startswith("lung coverage too short: the lungs span 82 mm in z (less than 100 mm)")


@pytest.mark.parametrize(
    ("slice_mm", "assessable", "warned"),
    [(1.0, True, False), (2.5, True, False), (2.6, True, True), (3.0, True, True), (3.2, False, False)],
)
def test_slice_thickness_limits(slice_mm: float, assessable: bool, warned: bool) -> None:
    spacing = (slice_mm, 2.0, 2.0)
    shape = (int(260 / slice_mm), *SHAPE[1:])
    result = _assess(_lungs(shape, spacing), spacing)
    assert result.assessable is assessable
    assert bool(result.warnings) is warned
    if not assessable:
        assert (
            f"voxel spacing {slice_mm:.2f} mm along z (superior-inferior): coarser than the 3 mm"
            in result.reason
        )


def test_dicom_slice_thickness_counts_when_larger_than_the_spacing() -> None:
    result = _assess(_lungs(SHAPE, SPACING), slice_thickness_mm=5.0)
    assert not result.assessable and "slice thickness 5.00 mm (DICOM SliceThickness)" in result.reason


def test_a_thin_slab_is_not_screened_and_lung_rules_are_skipped() -> None:
    spacing = (1.25, 0.7, 0.7)
    result = _assess(np.ones((2, 400, 400), np.uint8), spacing)  # a 2-slice stack full of lung
    assert not result.screened and not result.assessable
    assert len(result.reasons) == 1 and "2.5 mm (2 voxels) along z" in result.reason
    assert "localizer" in result.reason


def test_localizer_image_type() -> None:
    result = _assess(_lungs(SHAPE, SPACING), image_type="ORIGINAL\\PRIMARY\\LOCALIZER")
    assert not result.assessable and "localizer" in result.reason


def test_limits_are_configurable_and_recorded() -> None:
    labels = _lungs(SHAPE, SPACING)
    assert not _assess(labels, limits=Limits(min_lung_volume_ml=10_000)).assessable
    record = _assess(labels).to_dict()
    assert record["assessable"] is True and set(record["measures"]) >= {"slice_mm", "lung_volume_ml"}


def test_assess_case_reads_slice_thickness_and_image_type_from_dicom(tmp_path: Path) -> None:
    from pipelines.imaging.io import ImageHeader
    from pipelines.imaging.preprocess import CaseGeometry

    image = to_image(np.zeros((4, 8, 8), np.int16), spacing_xyz=(1.0, 1.0, 2.5))
    files = write_dicom_series(
        image, tmp_path / "s", image_type="ORIGINAL\\PRIMARY\\LOCALIZER", extra_tags={"0018|0050": "5.0"}
    )
    header = ImageHeader.of(image)
    geometry = CaseGeometry(header, header, ((0, 4), (0, 8), (0, 8)), (4, 8, 8), (2.5, 1.0, 1.0))
    result = assess_case(dicom_files=[str(f) for f in files], geometry=geometry, lung_labels_zyx=None)
    assert "slice thickness 5.00 mm" in result.reason and "localizer" in result.reason


# --------------------------------------------------------------------------------------- whole screenings
BODY, LUNG = 40, -850


def _chest(nz: int, dz: float, *, lungs: bool = True) -> sitk.Image:
    """A synthetic chest (or, without lungs, abdomen) CT with 2.5 mm pixels (240 x 300 mm) and ``dz`` mm slices,
    z extent ``nz * dz``; the lungs span 20 mm to 240 mm from the first slice."""
    shape, spacing = (nz, 96, 120), (dz, 2.5, 2.5)
    hu = np.full(shape, -1000, np.int16)
    z, y, x = np.meshgrid(*(np.arange(n) * s for n, s in zip(shape, spacing)), indexing="ij")
    hu[((y - 120.0) / 108.0) ** 2 + ((x - 150.0) / 138.0) ** 2 <= 1] = BODY
    if lungs:
        hu[_lungs(shape, spacing, z_mm=(20.0, 240.0), semi_yx_mm=(60.0, 40.0)) > 0] = LUNG
    else:  # bowel gas: two 20 mm air pockets in soft tissue
        for zc, yc, xc in ((nz * dz / 3, 90.0, 120.0), (nz * dz / 2, 150.0, 180.0)):
            hu[(z - zc) ** 2 + (y - yc) ** 2 + (x - xc) ** 2 <= 100.0] = -1000
    return to_image(hu, spacing_xyz=(2.5, 2.5, dz))


def _not_green(out: Path, case_id: str) -> dict:
    result = read_result(out, case_id)
    summary = result["summary"]
    assert summary["status"] == "ok" and summary["lung_rads"] == "0", summary
    assert not result["assessment"]["assessable"] and result["assessment"]["reasons"]
    assert "not assessable (Lung-RADS 0)" in summary["warnings"]
    folder = out / "cases" / case_id
    nodules = (folder / "nodules.json").read_text()
    assert '"category": "1"' not in nodules and '"category": "2"' not in nodules
    text = (folder / "report.html").read_text()
    assert "Lung-RADS 0" in text and not any(colour in text for colour in GREEN)
    mip = np.asarray(Image.open(folder / "report_files" / "mip_coronal.png").convert("RGB")).astype(int)
    for colour in (MARKER_COLORS["1"], MARKER_COLORS["2"]):
        rgb = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)])
        assert int((np.abs(mip - rgb).sum(axis=-1) < 40).sum()) == 0
    return result


def test_synthetic_abdomen_two_slices_and_thick_slices_are_not_green(tmp_path: Path, weights: str) -> None:
    inp = tmp_path / "in"
    write_case(_chest(130, 2.0), inp / "chest.nii.gz")  # the control: assessable
    write_case(_chest(40, 2.0, lungs=False), inp / "abdomen.nii.gz")
    write_case(_chest(65, 4.0), inp / "thick.nii.gz")
    two = sitk.GetArrayFromImage(_chest(130, 2.0))[60:62]
    write_case(to_image(two, spacing_xyz=(2.5, 2.5, 2.0)), inp / "two_slices.nii.gz")
    out = tmp_path / "out"
    res = run_screen(inp, out, weights=weights, report=True)
    assert (res.succeeded, res.failed) == (4, 0)

    control = read_result(out, "chest")
    assert control["summary"]["lung_rads"] == "1" and control["assessment"]["assessable"]
    assert _not_green(out, "abdomen")["assessment"]["reasons"][0] == "no lung tissue found in the scan"
    thick = _not_green(out, "thick")
    assert thick["assessment"]["reasons"] == [
        "voxel spacing 4.00 mm along z (superior-inferior): coarser than the 3 mm the model supports"
    ]
    two_slices = _not_green(out, "two_slices")
    assert not two_slices["assessment"]["screened"] and two_slices["info"]["windows_run"] == 0
    assert two_slices["summary"]["nodule_count"] == 0 and two_slices["candidates"] == []
    assert read_summary(out)["two_slices"]["lung_rads"] == "0"


SHARED_CT = Path(__file__).resolve().parents[2] / "shared" / "data" / "ct"


@pytest.mark.slow
def test_real_abdomen_scans_and_two_slice_stack_are_not_green(tmp_path: Path, weights: str) -> None:
    names = ("totalseg_abdomen_ct_dicom", "totalseg_abdomen_ct_3mm.nii.gz", "lidc_two_slices_dicom")
    if not all((SHARED_CT / n).exists() for n in names):
        pytest.skip("../shared/data is not present")
    out = tmp_path / "out"
    res = run_screen([SHARED_CT / n for n in names], out, weights=weights, report=True)
    assert (res.succeeded, res.failed) == (3, 0)
    dicom = _not_green(out, "totalseg_abdomen_ct_dicom")
    assert dicom["assessment"]["reasons"] == ["no lung tissue found in the scan"]
    nifti = _not_green(out, "totalseg_abdomen_ct_3mm")
    assert any("lungs absent or mostly outside" in r for r in nifti["assessment"]["reasons"])
    assert any("lung apices cut off" in r for r in nifti["assessment"]["reasons"])
    lidc = _not_green(out, "lidc_two_slices_dicom")
    assert not lidc["assessment"]["screened"] and lidc["summary"]["nodule_count"] == 0
