"""Tiny synthetic training sets for the training tests (a chest box, two lungs, a few spherical nodules)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk


def _write(
    array: np.ndarray, path: Path, spacing: tuple[float, float, float], origin: tuple[float, ...]
) -> None:
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    sitk.WriteImage(img, str(path))


def make_scan(rng: np.random.Generator, shape: tuple[int, int, int] = (48, 64, 72)) -> tuple:
    """One scan ``[z, y, x]`` (HU), its lungs (1 right = low x in LPS, 2 left), nodule instances, centres (idx)."""
    z, y, x = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    hu = np.full(shape, -1000.0, np.float32)
    body = ((y - shape[1] / 2) / (shape[1] * 0.46)) ** 2 + ((x - shape[2] / 2) / (shape[2] * 0.47)) ** 2 < 1
    hu[body] = 40.0
    lungs = np.zeros(shape, np.uint8)
    for side, cx in ((1, shape[2] * 0.3), (2, shape[2] * 0.7)):
        ell = (
            ((z - shape[0] / 2) / (shape[0] * 0.42)) ** 2
            + ((y - shape[1] / 2) / (shape[1] * 0.33)) ** 2
            + ((x - cx) / (shape[2] * 0.17)) ** 2
        ) < 1
        lungs[ell] = side
    hu[lungs > 0] = -850.0
    labels = np.zeros(shape, np.uint8)
    centres = []
    inside = np.argwhere(lungs > 0)
    for k in range(2):
        c = inside[rng.integers(len(inside))].astype(float)
        r = float(rng.uniform(2.5, 4.0))
        ball = (z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 <= r * r
        hu[ball] = 20.0
        labels[ball] = k + 1
        centres.append((c, 2 * r))
    hu += rng.normal(0, 15, shape).astype(np.float32)
    return hu, lungs, labels, centres


def make_dataset(root: Path, *, n: int = 3, seed: int = 0, spacing: float = 1.2) -> Path:
    """Write ``n`` scans in the ``sample-data`` layout (images/labels/lungs, annotations.csv, datalist.json)."""
    rng = np.random.default_rng(seed)
    for sub in ("images", "labels", "lungs"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    items, rows = [], []
    sp = (spacing, spacing, spacing)
    origin = (-40.0, -30.0, -100.0)
    for i in range(n):
        uid = f"1.2.3.{seed}.{i}"
        hu, lungs, labels, centres = make_scan(rng)
        _write(hu.astype(np.int16), root / "images" / f"{uid}.nii.gz", sp, origin)
        _write(labels, root / "labels" / f"{uid}.nii.gz", sp, origin)
        _write(lungs, root / "lungs" / f"{uid}.nii.gz", sp, origin)
        for c, d in centres:
            world = [origin[a] + c[2 - a] * spacing for a in range(3)]
            rows.append([uid, *world, d * spacing])
        items.append(
            {
                "image": f"images/{uid}.nii.gz",
                "label": f"labels/{uid}.nii.gz",
                "lung": f"lungs/{uid}.nii.gz",
                "seriesuid": uid,
            }
        )
    with (root / "annotations.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"])
        w.writerows(rows)
    datalist = {"training": items[: max(1, n - 1)], "validation": items[max(1, n - 1) :] or items[:1]}
    (root / "datalist.json").write_text(json.dumps(datalist, indent=1))
    return root
