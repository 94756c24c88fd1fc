"""Tests of the synthetic chest-CT generator: geometry on disk, determinism, HU plausibility, layout."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from pipelines.phantom.generate import generate_case
from pipelines.phantom.render import TISSUES
from pipelines.phantom.scanner import ORIENTATIONS, sample_scan, to_disk_orientation
from pipelines.phantom.write import make_dataset, write_case, write_tables


@pytest.fixture(scope="module")
def case():
    """One small CT case with nodules (seed chosen so that it has several)."""
    for seed in range(1, 20):
        c = generate_case(seed=seed)
        if len(c.nodules_table) >= 2:
            return c
    raise AssertionError("no small case with two nodules in 20 seeds")


def _canonical_array(img: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.DICOMOrient(img, "LPS"))


def _centroid_sitk(path: Path, label: int) -> np.ndarray:
    img = sitk.ReadImage(str(path))
    arr = sitk.GetArrayFromImage(img)
    kji = np.argwhere(arr == label).mean(axis=0)
    return np.asarray(img.TransformContinuousIndexToPhysicalPoint([float(v) for v in kji[::-1]]))


def _centroid_nibabel(path: Path, label: int) -> np.ndarray:
    img: Any = nib.load(str(path))
    ijk = np.argwhere(np.asarray(img.dataobj) == label).mean(axis=0)
    ras = img.affine @ np.r_[ijk, 1.0]
    return np.array([-ras[0], -ras[1], ras[2]])  # RAS -> LPS


def _read_annotations(root: Path) -> list[dict[str, str]]:
    with open(root / "annotations.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("code", ORIENTATIONS)
def test_annotation_equals_label_centroid_in_every_orientation(case, code, tmp_path):
    img, lungs, labels = (
        to_disk_orientation(sitk.DICOMOrient(i, "LPS"), code) for i in (case.image, case.lungs, case.nodules)
    )
    entry = write_case(tmp_path, "c", img, lungs, labels, fmt="nii")
    write_tables(tmp_path, ["c"], {"c": case.nodules_table}, {"c": entry}, seed=0, splits=(1, 0, 0))
    back = sitk.ReadImage(str(tmp_path / entry["image"]))
    assert sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(back.GetDirection()) == code
    rows = _read_annotations(tmp_path)
    assert len(rows) == len(case.nodules_table) >= 2
    for nid, row in enumerate(rows, start=1):
        world = np.array([float(row[c]) for c in ("coordX", "coordY", "coordZ")])
        for got in (
            _centroid_sitk(tmp_path / entry["label"], nid),
            _centroid_nibabel(tmp_path / entry["label"], nid),
        ):
            assert np.linalg.norm(got - world) < 0.5, (code, nid, got, world)


def test_orientations_vary_across_seeds():
    codes = {sample_scan(np.random.default_rng(s), size="small").orientation for s in range(60)}
    assert len(codes) >= 6 and "LPS" in codes and "RAS" in codes


def test_masks_share_image_geometry_on_disk(case, tmp_path):
    entry = write_case(tmp_path, "c", case.image, case.lungs, case.nodules, fmt="nii")
    imgs = [sitk.ReadImage(str(tmp_path / entry[k])) for k in ("image", "label", "lung")]
    for other in imgs[1:]:
        assert other.GetSize() == imgs[0].GetSize()
        assert np.allclose(other.GetSpacing(), imgs[0].GetSpacing())
        assert np.allclose(other.GetOrigin(), imgs[0].GetOrigin(), atol=1e-4)
        assert np.allclose(other.GetDirection(), imgs[0].GetDirection())
    assert imgs[0].GetPixelID() == sitk.sitkInt16
    assert set(np.unique(sitk.GetArrayFromImage(imgs[2]))) <= {0, 1, 2}


def test_hu_ranges_per_tissue_are_plausible(case):
    hu = _canonical_array(case.image).astype(np.float32)
    tis = _canonical_array(case.tissue)
    lungs = _canonical_array(case.lungs)
    assert -900 < np.median(hu[lungs > 0]) < -760
    assert -140 < np.median(hu[tis == TISSUES["fat"]]) < -40
    assert 0 < np.median(hu[tis == TISSUES["soft"]]) < 100
    bone = hu[tis == TISSUES["bone"]]
    assert np.percentile(bone, 90) > 300 and np.median(bone) > 150
    air = hu[(tis == TISSUES["air"]) & (hu > -1500)]
    assert abs(np.median(air) + 1000) < 30
    assert lungs[lungs > 0].size > 0.05 * lungs.size
    # the right lung (label 1) lies at smaller x (patient right) on the canonical grid
    xs = {s: np.nonzero(lungs == s)[2].mean() for s in (1, 2)}
    assert xs[1] < xs[2]


def test_nodules_inside_lungs_and_apart(case):
    labels = _canonical_array(case.nodules)
    lungs = _canonical_array(case.lungs)
    rows = case.nodules_table
    assert set(np.unique(labels)) == set(range(len(rows) + 1))
    for r in rows:
        assert r["type"] in {"solid", "part-solid", "ground-glass", "calcified"}
        assert r["location"] in {"parenchymal", "juxta-pleural", "juxta-vascular"}
        assert 3.0 <= r["diameter_mm"] <= 30.0
        inside = (lungs[labels == r["nodule_id"]] > 0).mean()
        assert inside > 0.95
    for i, a in enumerate(rows):
        for b in rows[i + 1 :]:
            gap = np.linalg.norm(np.subtract(a["center_lps_mm"], b["center_lps_mm"]))
            assert gap > (a["diameter_mm"] + b["diameter_mm"]) / 2


def test_same_seed_same_bytes_and_datalist_loads(tmp_path):
    from monai.data import load_decathlon_datalist

    a = make_dataset(tmp_path / "a", n=1, seed=7)
    b = make_dataset(tmp_path / "b", n=1, seed=7)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len(files) == 8  # image, lungs, labels, 4 tables and generator.json
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    entries = load_decathlon_datalist(str(a / "datalist.json"), data_list_key="training", base_dir=str(a))
    assert Path(entries[0]["image"]).is_file() and Path(entries[0]["lung"]).is_file()
    assert entries[0]["seriesuid"] == "phantom_s7_0000"
    assert (a / "seriesuids.csv").read_text() == "phantom_s7_0000\n"
    header = (a / "annotations.csv").read_text().splitlines()[0]
    assert header == "seriesuid,coordX,coordY,coordZ,diameter_mm"


def test_first_writes_the_same_case_as_the_full_dataset(tmp_path):
    whole = make_dataset(tmp_path / "whole", n=2, seed=7)
    one = make_dataset(tmp_path / "one", n=1, seed=7, first=1)
    assert (one / "seriesuids.csv").read_text() == "phantom_s7_0001\n"
    for f in ("images/phantom_s7_0001.nii.gz", "labels/phantom_s7_0001.nii.gz"):
        assert (one / f).read_bytes() == (whole / f).read_bytes(), f
    with pytest.raises(ValueError, match="first"):
        make_dataset(tmp_path / "bad", n=1, seed=7, first=-1)


def test_different_seed_different_image():
    a = sitk.GetArrayFromImage(generate_case(seed=11).image)
    b = sitk.GetArrayFromImage(generate_case(seed=12).image)
    assert a.shape != b.shape or not np.array_equal(a, b)


def test_mhd_format_and_splits(tmp_path):
    out = make_dataset(tmp_path, n=3, seed=2, fmt="mhd")
    mhds = sorted((out / "images").glob("*.mhd"))
    assert len(mhds) == 3 and all(p.with_suffix(".raw").is_file() for p in mhds)
    assert "ElementDataFile = phantom_s2_0000.raw" in (out / "images/phantom_s2_0000.mhd").read_text()
    img = sitk.ReadImage(str(mhds[0]))
    assert img.GetPixelID() == sitk.sitkInt16
    dl = json.loads((out / "datalist.json").read_text())
    assert [len(dl[k]) for k in ("training", "validation", "test")] == [1, 1, 1]


def test_mri_mode_makes_float_images_with_lesions():
    for seed in range(1, 10):
        c = generate_case(seed=seed, modality="mri")
        if c.nodules_table:
            break
    arr = sitk.GetArrayFromImage(c.image)
    assert arr.dtype == np.float32 and arr.min() >= 0 and arr.max() > 100
    lab = sitk.GetArrayFromImage(c.nodules)
    assert lab.max() == len(c.nodules_table) >= 1
    assert c.image.GetSize() == c.nodules.GetSize()


def test_insert_nodules_into_existing_ct(case, tmp_path):
    from pipelines.phantom.insert import insert_nodules

    src = tmp_path / "scan.nii.gz"
    sitk.WriteImage(case.image, str(src))
    mask = tmp_path / "lungs.nii.gz"
    sitk.WriteImage(case.lungs, str(mask))
    out = insert_nodules(src, tmp_path / "out", n=3, seed=4, lung_mask_path=mask)
    rows = _read_annotations(out)
    assert len(rows) >= 1 and rows[0]["seriesuid"] == "scan_ins_s4"
    lab_path = out / "labels/scan_ins_s4.nii.gz"
    img = sitk.ReadImage(str(out / "images/scan_ins_s4.nii.gz"))
    assert img.GetDirection() == case.image.GetDirection() and img.GetSize() == case.image.GetSize()
    for nid, row in enumerate(rows, start=1):
        world = np.array([float(row[c]) for c in ("coordX", "coordY", "coordZ")])
        assert np.linalg.norm(_centroid_sitk(lab_path, nid) - world) < 0.5


@pytest.mark.slow
def test_full_size_case():
    """A full-size case has the advertised grid (generation speed is a benchmark matter, not a test's)."""
    c = generate_case(seed=3, size="full")
    size = c.image.GetSize()
    assert 512 in size and size[0] * size[1] * size[2] >= 512 * 512 * 100
    assert max(c.image.GetSpacing()) <= 2.5 and min(c.image.GetSpacing()) >= 0.5


def _ball_lung(radius: float = 40.0):
    def sdf(p: np.ndarray) -> np.ndarray:
        return np.linalg.norm(np.asarray(p, float), axis=-1) - radius

    return sdf


def test_visible_fraction_of_a_nodule_in_air_in_a_vessel_and_half_in_a_wall():
    from pipelines.phantom.nodules import Nodule, visible_fraction
    from pipelines.phantom.shapes import Grid

    grid = Grid((40, 40, 40), (1.0, 1.0, 1.0), (-20.0, -20.0, -20.0))
    hu = np.full(grid.shape_zyx, -850.0, np.float32)
    solid = Nodule(center=np.zeros(3), radius=5.0, type="solid", location="parenchymal", side=1, hu=30.0)
    assert visible_fraction(solid, hu, grid) == 1.0
    hu[:] = 40.0  # inside a vessel (or the chest wall): nothing shows
    assert visible_fraction(solid, hu, grid) == 0.0
    hu[:, :, :20] = -850.0  # x < 0 lung, x >= 0 wall: half shows
    assert 0.35 < visible_fraction(solid, hu, grid) < 0.65
    # a ground-glass nodule (-600 HU) does not show against -700 HU (dense parenchyma), a solid one does
    hu[:] = -700.0
    ggo = Nodule(
        center=np.zeros(3), radius=5.0, type="ground-glass", location="parenchymal", side=1, hu=-600.0
    )
    assert visible_fraction(ggo, hu, grid) == 0.0 and visible_fraction(solid, hu, grid) == 1.0
    off = Nodule(center=np.full(3, 30.0), radius=5.0, type="solid", location="parenchymal", side=1)
    assert visible_fraction(off, hu, grid) == 0.0  # off the grid counts as hidden


def test_placement_keeps_nodules_out_of_dense_structures_given_the_scan():
    from pipelines.phantom.nodules import MIN_VISIBLE, design_nodule, place_nodules, visible_fraction
    from pipelines.phantom.shapes import Grid

    grid = Grid((100, 100, 100), (1.0, 1.0, 1.0), (-50.0, -50.0, -50.0))
    hu = np.full(grid.shape_zyx, -850.0, np.float32)
    hu[:, :, 50:] = 40.0  # the lung's half with x >= 0 is a dense block (a big vessel, say)
    lung = _ball_lung(40.0)
    pts = np.random.default_rng(1).uniform(-35, 35, size=(3000, 3))
    pts = pts[lung(pts) < -5]
    empty = np.zeros((0, 3))

    def place(scan):
        rng = np.random.default_rng(3)
        specs = [design_nodule(rng, d_min=4.0) for _ in range(12)]
        for n in specs:  # denser than ground glass, so that the dense block hides them all alike
            n.hu = 30.0
        return place_nodules(
            specs,
            lungs={1: lung, 2: lung},
            candidates={1: pts, 2: pts},
            vessels=(empty, empty, np.zeros(0)),
            rng=rng,
            scan=scan,
        )

    blind = place(None)
    assert min(visible_fraction(n, hu, grid) for n in blind) < 0.3  # without the scan some hide in the block
    seen = place((hu, grid))
    assert len(seen) >= 6
    assert all(visible_fraction(n, hu, grid) >= MIN_VISIBLE for n in seen)


def test_inserted_nodules_stay_inside_the_field_of_view():
    """Lungs that run into every edge of the image (a cropped scan): no generated nodule is cut by the edge."""
    from pipelines.phantom.insert import insert_into_array
    from pipelines.phantom.shapes import Grid

    grid = Grid((16, 40, 40), (1.5, 1.0, 1.0), (0.0, 0.0, 0.0))
    hu = np.full(grid.shape_zyx, -850.0, np.float32)
    lungs = np.ones(grid.shape_zyx, np.uint8)
    lungs[:, :, 20:] = 2
    placed = 0
    for seed in range(20):  # without the edge as the lung's border, 4 of 46 nodules touched it
        _, labels, nodules = insert_into_array(hu, lungs, grid, n=3, seed=seed)
        placed += len(nodules)
        for k in range(1, int(labels.max()) + 1):
            idx = np.argwhere(labels == k)
            assert idx.min() > 0 and (idx.max(axis=0) < np.asarray(labels.shape) - 1).all()
    assert placed >= 20
