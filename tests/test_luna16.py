"""LUNA16 ingest: real annotation files at full scale and a LUNA16-shaped folder built here."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from monai.data import load_decathlon_datalist

from pipelines.evaluation import luna16
from pipelines.evaluation.froc import read_findings_csv, read_seriesuids


def test_parses_official_annotation_files(shared_data: Path):
    d = shared_data / "luna16"
    if not (d / "annotations_full.csv").is_file():
        pytest.skip("LUNA16 annotation files absent")
    nodules = read_findings_csv(d / "annotations_full.csv")
    uids = read_seriesuids(d / "seriesuids_full.csv")
    excluded = read_findings_csv(d / "annotations_excluded_full.csv")
    # LUNA16 (Setio et al. 2017): 1186 nodules >= 3 mm in 888 scans, 601 scans with at least one nodule
    assert len(nodules) == 1186 and len(uids) == 888
    assert len({n.seriesuid for n in nodules}) == 601
    assert {n.seriesuid for n in nodules} <= set(uids)
    diam = np.array([n.diameter_mm for n in nodules])
    assert 3.0 <= diam.min() and diam.max() <= 33.0
    assert len(excluded) == 35192 and {e.seriesuid for e in excluded} <= set(uids)
    assert sum(e.diameter_mm < 0 for e in excluded) > 0  # -1 = unknown size, hit radius 5 mm
    assert min(e.hit_radius_mm for e in excluded) > 0


def _rotation(deg_z: float, deg_x: float) -> np.ndarray:
    a, b = math.radians(deg_z), math.radians(deg_x)
    rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]])
    return rz @ rx


SCANS = {
    # uid: (subset, direction, spacing (x, y, z) mm, nodules as (continuous index (i, j, k), diameter mm))
    "1.2.3.10": (0, np.eye(3), (0.8, 0.8, 1.5), [((20.3, 18.7, 14.2), 8.0), ((8.0, 30.5, 20.0), 5.0)]),
    "1.2.3.11": (0, np.diag([-1.0, -1.0, 1.0]), (0.9, 0.9, 2.0), []),
    "1.2.3.20": (
        1,
        _rotation(30, 12) @ np.diag([1.0, -1.0, 1.0]),
        (0.7, 0.75, 1.25),
        [((22.6, 19.1, 15.5), 10.0), ((5.2, 6.7, 9.1), 0.5)],
    ),
}


def _build_luna_folder(tmp: Path) -> tuple[Path, Path, dict[str, list[tuple[np.ndarray, float]]]]:
    root = tmp / "LUNA16"
    lines = ["seriesuid,coordX,coordY,coordZ,diameter_mm"]
    truth: dict[str, list[tuple[np.ndarray, float]]] = {}
    for uid, (subset, direction, spacing, nods) in SCANS.items():
        img = sitk.GetImageFromArray(np.full((30, 40, 40), -1000, np.int16))
        img.SetSpacing(spacing)
        img.SetDirection(direction.ravel().tolist())
        img.SetOrigin((-40.0, 25.0, -180.0))
        (root / f"subset{subset}").mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(img, str(root / f"subset{subset}" / f"{uid}.mhd"))
        truth[uid] = []
        for idx, diam in nods:
            world = np.asarray(img.TransformContinuousIndexToPhysicalPoint(idx))
            truth[uid].append((world, diam))
            lines.append(f"{uid},{world[0]:.6f},{world[1]:.6f},{world[2]:.6f},{diam}")
    lines.append("1.2.3.99,0,0,0,6.0")  # scan not in the folder
    ann = tmp / "annotations.csv"
    ann.write_text("\n".join(lines) + "\n")
    return root, ann, truth


def test_prepare_luna16_masks_and_datalist(tmp_path: Path):
    root, ann, truth = _build_luna_folder(tmp_path)
    excl = tmp_path / "excluded.csv"
    excl.write_text("seriesuid,coordX,coordY,coordZ,diameter_mm\n1.2.3.10,0,0,0,-1\n1.2.3.99,0,0,0,-1\n")
    out = tmp_path / "dataset"
    path = luna16.prepare_luna16(root=root, annotations=ann, out=out, excluded=excl, validation_fold=1)
    dl = json.loads(path.read_text())
    assert [it["seriesuid"] for it in dl["training"]] == ["1.2.3.10", "1.2.3.11"]
    assert [it["seriesuid"] for it in dl["validation"]] == ["1.2.3.20"]
    assert [it["fold"] for it in dl["folds"]] == [0, 0, 1] and dl["annotated_scans_not_found"] == 1
    items = load_decathlon_datalist(path, data_list_key="training", base_dir=out)
    assert Path(items[0]["image"]).is_absolute() and Path(items[0]["image"]).is_file()
    assert Path(items[0]["label"]) == out / "labels" / "1.2.3.10.nii.gz"
    for uid, nods in truth.items():
        image = sitk.ReadImage(str(root / f"subset{SCANS[uid][0]}" / f"{uid}.mhd"))
        label = sitk.ReadImage(str(out / "labels" / f"{uid}.nii.gz"))
        assert label.GetSize() == image.GetSize()
        np.testing.assert_allclose(label.GetSpacing(), image.GetSpacing(), atol=1e-5)
        np.testing.assert_allclose(label.GetOrigin(), image.GetOrigin(), atol=1e-4)
        np.testing.assert_allclose(label.GetDirection(), image.GetDirection(), atol=1e-5)
        arr = sitk.GetArrayFromImage(label)
        assert arr.max() == len(nods)
        for k, (world, diam) in enumerate(nods, start=1):
            zyx = np.argwhere(arr == k)
            centroid = np.asarray(
                label.TransformContinuousIndexToPhysicalPoint(zyx.mean(axis=0)[::-1].tolist())
            )
            if diam >= 2.0:
                assert np.linalg.norm(centroid - world) < 0.5, (uid, k)
                volume = len(zyx) * np.prod(label.GetSpacing())
                assert volume == pytest.approx(math.pi / 6 * diam**3, rel=0.15)
            else:  # smaller than a voxel: the nearest voxel
                assert len(zyx) == 1 and np.linalg.norm(centroid - world) < 1.0
    nodules_csv = (out / "nodules.csv").read_text().splitlines()
    assert len(nodules_csv) == 1 + 4 and nodules_csv[0].startswith("seriesuid,label,coordX")
    assert (out / "annotations_excluded.csv").read_text().count("1.2.3.") == 1


def test_ball_outside_grid_and_subset_filter(tmp_path: Path):
    root, ann, _ = _build_luna_folder(tmp_path)
    geom = luna16.read_geometry(root / "subset0" / "1.2.3.10.mhd")
    assert luna16.ball_voxels(geom, (500.0, 500.0, 500.0), 5.0) is None
    scans = luna16.find_luna16_scans(root, subsets=[1])
    assert list(scans) == ["1.2.3.20"] and scans["1.2.3.20"][0] == 1
    with pytest.raises(FileNotFoundError, match="subset"):
        luna16.find_luna16_scans(root, subsets=[7])
