"""Density type against the readers' ratings: the calibration table on a tiny fixture, and the thick-slice fix."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from pipelines.nodules.density import DensityThresholds, classify_density, median_window
from pipelines.realnodules.calibration import (
    READER_CLASSES,
    agreement,
    calibrate,
    confusion,
    rated_nodules,
    report,
)

SP = (2.5, 0.7, 0.7)  # z, y, x


def _ball(hu_in: float, *, nz: int, r_mm: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A nodule seen on ``nz`` 2.5 mm slices in -850 HU lung, the last one partly (partial volume).

    A slice of lung lies above and below; the mask (an in-plane disc) covers the nodule's slices.
    """
    rng = np.random.default_rng(seed)
    share = np.asarray([0.0] + [1.0] * (nz - 1) + [0.4, 0.0])
    y, x = np.meshgrid((np.arange(30) - 14.5) * SP[1], (np.arange(30) - 14.5) * SP[2], indexing="ij")
    disc = y**2 + x**2 <= r_mm**2
    mask = (share[:, None, None] > 0) & disc[None]
    hu = np.where(mask, share[:, None, None] * hu_in + (1 - share[:, None, None]) * -850.0, -850.0)
    hu = hu + rng.normal(0, 15, mask.shape)
    return np.round(hu).astype(np.int16), mask.astype(np.uint8)


def _write_folder(root: Path, nodules: dict[str, tuple[str, np.ndarray, np.ndarray, str, str]]) -> Path:
    rows = []
    for name, (pid, hu, mask, texture, calc) in nodules.items():
        for sub, arr in (("image", hu), ("nodule_mask", mask)):
            img = sitk.GetImageFromArray(arr)
            img.SetSpacing(SP[::-1])
            (root / sub).mkdir(parents=True, exist_ok=True)
            sitk.WriteImage(img, str(root / sub / name))
        d = 2 * math.sqrt(mask.max(axis=0).sum() * SP[1] * SP[2] / math.pi)
        rows.append({"file": name, "patient_id": pid, "diameter_mm": f"{d:.2f}", "Texture": texture,
                     "Calcification": calc})  # fmt: skip
    with (root / "nodules.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return root


@pytest.fixture()
def rated(tmp_path: Path) -> Path:
    return _write_folder(
        tmp_path,
        {
            "A_1.nii.gz": ("A", *_ball(30, nz=2, r_mm=2.6, seed=1), "Solid", "Absent"),
            "B_1.nii.gz": ("B", *_ball(20, nz=4, r_mm=5.0, seed=2), "Solid", "Absent"),
            "C_1.nii.gz": ("C", *_ball(-620, nz=3, r_mm=4.0, seed=3), "Non-Solid/GGO", "Absent"),
            "D_1.nii.gz": ("D", *_ball(600, nz=3, r_mm=3.0, seed=4), "Solid", "Central"),
            "E_1.nii.gz": ("E", *_ball(30, nz=3, r_mm=3.0, seed=5), "Solid", "Absent"),
        },
    )


def test_thick_slices_are_not_median_filtered_across() -> None:
    th = DensityThresholds()
    assert median_window((2.5, 0.7, 0.7), th) == (1, 3, 3)
    assert median_window((1.0, 0.7, 0.7), th) == (3, 3, 3)
    hu, mask = _ball(30, nz=2, r_mm=2.6, seed=1)
    old = DensityThresholds(median_max_spacing_mm=math.inf)
    assert classify_density(hu.astype(np.float32), mask > 0, SP, thresholds=old)[0] == "ground-glass"
    assert classify_density(hu.astype(np.float32), mask > 0, SP, thresholds=th)[0] == "solid"


def test_calibration_table_counts_the_readers_against_our_types(rated: Path, tmp_path: Path) -> None:
    nodules, refused = rated_nodules(rated)
    assert len(nodules) == 5 and refused == []
    assert {n.reader for n in nodules} == {"Solid", "Non-Solid/GGO", "calcified"}
    rep = report(nodules, DensityThresholds())
    table = rep["confusion"]
    assert list(table) == list(READER_CLASSES)
    assert table["Solid"] == {"solid": 3, "part-solid": 0, "ground-glass": 0, "calcified": 0}
    assert table["Non-Solid/GGO"]["ground-glass"] == 1
    assert table["calcified"]["calcified"] == 1
    ag = rep["agreement"]
    assert ag["solid"] == {"rate": 1.0, "n": 3, "agree": 3}
    assert ag["non_solid"]["rate"] == 1.0 and ag["calcified"]["rate"] == 1.0
    assert rep["diameter_mae_mm"] is not None and rep["diameter_mae_mm"] < 3.0
    old = report(nodules, DensityThresholds(median_max_spacing_mm=math.inf))
    assert old["confusion"]["Solid"]["ground-glass"] >= 1  # the two-slice nodule, before the fix
    text = calibrate(rated, split="all", out=tmp_path / "cal.json")
    assert "Non-Solid/GGO" in text and "solid: 3/3 = 1.0" in text
    assert (tmp_path / "cal.json").is_file()


def test_agreement_of_an_empty_group_is_nan_not_a_pass() -> None:
    ag = agreement(confusion(["Solid"], ["solid"]))
    assert ag["solid"]["rate"] == 1.0
    assert ag["calcified"]["n"] == 0 and math.isnan(ag["calcified"]["rate"])
