"""Follow-up pairs written to disk: truth positions, growth and orientations checked against the images."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from pipelines.followup.pair_truth import TRUTH_COLUMNS, PoseChange
from pipelines.followup.pairs import PAIRS_COLUMNS, make_followup_pairs

CT = "ct/totalseg_chest_ct_crop_1p5mm.nii.gz"


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _read(root: Path, pair: dict[str, str]) -> dict[str, sitk.Image]:
    return {
        k: sitk.ReadImage(str(root / pair[k])) for k in ("current", "prior", "current_labels", "prior_labels")
    }


def _world(img: sitk.Image, kji: np.ndarray) -> np.ndarray:
    """LPS world point of a continuous array index ``(k, j, i)`` of an image as stored (any orientation)."""
    return np.asarray(img.TransformContinuousIndexToPhysicalPoint([float(v) for v in kji[::-1]]))


def _hu_centroid(img: sitk.Image, labels: sitk.Image, tid: int) -> np.ndarray:
    """Centroid (LPS mm) of the density above lung parenchyma over the nodule's mask grown by one voxel."""
    hu = sitk.GetArrayFromImage(img).astype(np.float32)
    near = ndimage.binary_dilation(sitk.GetArrayFromImage(labels) == tid)
    idx = np.argwhere(near)
    w = np.clip(hu[near] + 850.0, 0.0, None)
    return _world(img, (idx * w[:, None]).sum(0) / w.sum())


def _mask_centroid(labels: sitk.Image, tid: int) -> np.ndarray:
    return _world(labels, np.argwhere(sitk.GetArrayFromImage(labels) == tid).mean(0))


def _code(img: sitk.Image) -> str:
    return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(img.GetDirection())


def _pose(meta: dict) -> PoseChange:
    p = meta["pose"]
    return PoseChange(
        tuple(p["rotation_deg"]), tuple(p["translation_mm"]), tuple(p["scale_xyz"]), tuple(p["centre_xyz"])
    )


def _centre(row: dict[str, str], key: str) -> np.ndarray:
    return np.array([float(row[f"{key}_{a}"]) for a in "xyz"])


@pytest.fixture(scope="module")
def phantom_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_followup_pairs(tmp_path_factory.mktemp("pairs"), n_pairs=1, seed=7700, size="small")


def _check_pair(root: Path, pair: dict[str, str], meta: dict, truth: list[dict[str, str]]) -> None:
    """Every truth claim of one pair, checked against its images as read back from disk."""
    imgs = _read(root, pair)
    pose = _pose(meta)
    assert _code(imgs["current"]) == meta["current"]["orientation"] != meta["prior"]["orientation"]
    assert _code(imgs["prior"]) == meta["prior"]["orientation"]
    cur_ids = set(np.unique(sitk.GetArrayFromImage(imgs["current_labels"]))) - {0}
    prior_ids = set(np.unique(sitk.GetArrayFromImage(imgs["prior_labels"]))) - {0}
    assert cur_ids == {int(r["truth_id"]) for r in truth if r["status"] != "resolved"}
    assert prior_ids == {int(r["truth_id"]) for r in truth if r["status"] != "new"}
    for r in truth:
        tid = int(r["truth_id"])
        for scan, key in (("current", "cur"), ("prior", "prior")):
            if r[f"{key}_x"]:  # the label's centroid sits on the truth centre (to half a voxel)
                lab = imgs[f"{scan}_labels"]
                assert np.linalg.norm(_mask_centroid(lab, tid) - _centre(r, key)) < 0.5 * max(
                    lab.GetSpacing()
                )
        if r["status"] in ("new", "resolved"):
            continue
        # truth: the prior centre is the mapped current centre
        assert np.linalg.norm(pose.to_current(_centre(r, "prior")) - _centre(r, "cur")) < 0.5
        # images: the nodule's density centroid in the prior is where the pose sends the current one, to 0.5 mm
        # where the centroid measures the nodule alone; the chest wall inside the grown mask of a juxta-pleural
        # nodule, or a nodule of a few voxels, moves it by up to ~1 mm on 2.3-3.5 mm voxels
        c = _hu_centroid(imgs["current"], imgs["current_labels"], tid)
        p = _hu_centroid(imgs["prior"], imgs["prior_labels"], tid)
        clean = r["location"] != "juxta-pleural" and float(r["prior_diameter_mm"]) >= 7.0
        tol = 0.5 if clean else 0.5 * max(imgs["prior"].GetSpacing())
        assert np.linalg.norm(pose.to_prior(c) - p) < tol, (r["status"], r["type"], r["cur_diameter_mm"])
        ratio = float(r["volume_ratio"])
        mask_ratio = float(r["cur_mask_mm3"]) / float(r["prior_mask_mm3"])
        voxel = float(np.prod(imgs["prior_labels"].GetSpacing()))
        if float(r["prior_volume_mm3"]) > 15 * voxel:  # enough voxels that the mask measures the volume
            assert mask_ratio == pytest.approx(ratio, rel=0.15)


def test_phantom_pair_truth_matches_its_images(phantom_set: Path):
    pairs = _rows(phantom_set / "pairs.csv")
    truth = _rows(phantom_set / "truth.csv")
    meta = json.loads((phantom_set / "pairs.json").read_text())
    assert list(pairs[0]) == list(PAIRS_COLUMNS) and list(truth[0]) == list(TRUTH_COLUMNS)
    assert meta["seed"] == 7700 and meta["pairs"][0]["pair_id"] == pairs[0]["pair_id"]
    statuses = {r["status"] for r in truth}
    assert {"grown", "stable", "new"} <= statuses
    assert all(int(r["interval_days"]) == int(pairs[0]["interval_days"]) for r in truth)
    _check_pair(phantom_set, pairs[0], meta["pairs"][0], truth)


def test_phantom_pair_scans_differ_in_pose_and_noise(phantom_set: Path):
    pair = _rows(phantom_set / "pairs.csv")[0]
    meta = json.loads((phantom_set / "pairs.json").read_text())["pairs"][0]
    imgs = _read(phantom_set, pair)
    assert imgs["current"].GetSpacing() != imgs["prior"].GetSpacing()
    assert meta["current"]["noise_hu"] != meta["prior"]["noise_hu"]
    pose = meta["pose"]
    assert max(abs(v) for v in pose["rotation_deg"]) > 0.1 and pose["scale_xyz"][2] < 1.0
    for key in ("current", "prior"):
        hu = sitk.GetArrayFromImage(imgs[key])
        assert hu.dtype == np.int16 and hu.min() <= -900 and hu.max() > 100


def test_make_followup_pairs_refuses_bad_counts(tmp_path: Path):
    with pytest.raises(ValueError, match="n_pairs"):
        make_followup_pairs(tmp_path, n_pairs=0)
    with pytest.raises(ValueError, match="size"):
        make_followup_pairs(tmp_path, n_pairs=1, size="huge")


def test_real_ct_pair_truth_matches_its_images(shared_data: Path, tmp_path: Path):
    host = shared_data / CT
    if not host.is_file():
        pytest.skip(f"{host} is not present")
    root = make_followup_pairs(tmp_path, n_pairs=1, seed=7700, host=host)
    pairs = _rows(root / "pairs.csv")
    meta = json.loads((root / "pairs.json").read_text())
    assert meta["host"] == str(host) and meta["pairs"][0]["current"]["orientation"] == "LPS"
    truth = _rows(root / "truth.csv")
    assert {"grown", "new"} <= {r["status"] for r in truth}
    _check_pair(root, pairs[0], meta["pairs"][0], truth)
    # the prior's field of view is what the moved CT covers: no band of fill air at any face (before: up to whole
    # face planes at -1024 HU, where the detector marked bone beside them as calcified nodules)
    prior = sitk.GetArrayFromImage(sitk.DICOMOrient(sitk.ReadImage(str(root / pairs[0]["prior"])), "LPS"))
    for axis in range(3):
        for plane in (0, -1):
            assert np.mean(np.take(prior, plane, axis=axis) <= -1020) < 0.25, (axis, plane)
    assert meta["pairs"][0]["prior"]["shape_zyx"] != meta["pairs"][0]["current"]["shape_zyx"]


@pytest.mark.slow
def test_phantom_pair_patient_is_the_generators():
    """The pair's thorax is generate_case's for the same seed (the lungs agree outside its nodules)."""
    from pipelines.followup.pairs import phantom_anatomy
    from pipelines.phantom.generate import generate_case

    case = generate_case(seed=11, size="small", with_tissue=False)
    lungs = sitk.GetArrayFromImage(sitk.DICOMOrient(case.lungs, "LPS"))
    nodules = sitk.GetArrayFromImage(sitk.DICOMOrient(case.nodules, "LPS")) > 0
    spec, _, _, mine, _ = phantom_anatomy(np.random.default_rng(11), size="small")
    assert spec.grid == case.spec.grid
    assert np.all((lungs == mine) | nodules)


def test_is_current_tells_a_set_of_another_generator_version(tmp_path: Path):
    from pipelines.followup.pairs import PAIRS_VERSION, is_current

    assert not is_current(tmp_path / "missing")
    (tmp_path / "truth.csv").write_text("pair_id\n")
    (tmp_path / "pairs.json").write_text(json.dumps({"pair_generator": PAIRS_VERSION}))
    assert is_current(tmp_path)
    (tmp_path / "pairs.json").write_text(json.dumps({"pair_generator": PAIRS_VERSION - 1}))
    assert not is_current(tmp_path)
    (tmp_path / "pairs.json").write_text("{")
    assert not is_current(tmp_path)
