"""MRI-like phantoms for the generic segmentation tests (``test_segtrain``, ``test_segment``, ``test_plan``).

:func:`make_mri_phantoms` writes tiny cases: a body ellipsoid, an organ (label 1) holding a lesion (label 2), a
smooth multiplicative bias field and Rician noise, in the nnU-Net layout ``images/case_0000.nii.gz`` (+
``_0001`` for a second contrast), ``labels/case.nii.gz``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from pipelines.imaging import io

TINY = {"max_patch_voxels": 16**3, "base_features": 4, "max_features": 16}
# organ / lesion / body intensities per channel (channel 1 has another contrast, as T2 vs T1)
CONTRASTS = ((260.0, 420.0, 120.0), (150.0, 60.0, 90.0))


def phantom_arrays(
    rng: np.random.Generator,
    *,
    shape_zyx: tuple[int, int, int],
    spacing_zyx: tuple[float, float, float],
    channels: int,
) -> tuple[list[np.ndarray], np.ndarray]:
    """Canonical ``[z, y, x]`` channel arrays (a.u.) and labels (0 background, 1 organ, 2 lesion)."""
    zz, yy, xx = np.meshgrid(
        *[(np.arange(n) - n / 2 + 0.5) * s for n, s in zip(shape_zyx, spacing_zyx)], indexing="ij"
    )
    ext = np.asarray(shape_zyx) * np.asarray(spacing_zyx) / 2
    body = (zz / (0.95 * ext[0])) ** 2 + (yy / (0.8 * ext[1])) ** 2 + (xx / (0.85 * ext[2])) ** 2 < 1
    c = rng.uniform(-0.15, 0.15, 3) * ext
    r = rng.uniform(0.35, 0.5, 3) * ext
    organ = ((zz - c[0]) / r[0]) ** 2 + ((yy - c[1]) / r[1]) ** 2 + ((xx - c[2]) / r[2]) ** 2 < 1
    lc = c + rng.uniform(-0.3, 0.3, 3) * r
    lesion = ((zz - lc[0]) ** 2 + (yy - lc[1]) ** 2 + (xx - lc[2]) ** 2) < (
        rng.uniform(0.3, 0.45) * r.min()
    ) ** 2
    labels = np.zeros(shape_zyx, np.uint8)
    labels[organ & body] = 1
    labels[lesion & organ & body] = 2
    g = rng.normal(size=3)
    bias = np.exp(0.35 * (g[0] * zz / ext[0] + g[1] * yy / ext[1] + g[2] * xx / ext[2]) / np.linalg.norm(g))
    images = []
    for ch in range(channels):
        organ_v, lesion_v, body_v = CONTRASTS[ch % 2]
        s = (
            np.where(body, body_v, 0.0)
            + np.where(labels == 1, organ_v - body_v, 0)
            + np.where(labels == 2, lesion_v - body_v, 0)
        )
        s = s * bias
        n1, n2 = rng.normal(0, 12, shape_zyx), rng.normal(0, 12, shape_zyx)
        images.append(np.sqrt((s + n1) ** 2 + n2**2).astype(np.float32))  # Rician magnitude noise
    return images, labels


def make_mri_phantoms(
    root: Path,
    *,
    n: int,
    seed: int,
    channels: int = 1,
    shape_zyx: tuple[int, int, int] = (12, 24, 24),
    spacing_zyx: tuple[float, float, float] = (4.0, 2.0, 2.0),
    with_labels: bool = True,
    prefix: str = "case",
) -> Path:
    """Write ``n`` phantom cases under ``root/images`` (+ ``root/labels``); odd cases are stored RAS-oriented
    with a non-zero origin, so outputs must be mapped back to a non-canonical grid."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    if with_labels:
        (root / "labels").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        images, labels = phantom_arrays(rng, shape_zyx=shape_zyx, spacing_zyx=spacing_zyx, channels=channels)
        name = f"{prefix}{i:03d}"
        for ch, arr in enumerate(images):
            io.write_image(_orient(arr, spacing_zyx, i), root / "images" / f"{name}_{ch:04d}.nii.gz")
        if with_labels:
            io.write_image(_orient(labels, spacing_zyx, i), root / "labels" / f"{name}.nii.gz")
    return root


def _orient(arr: np.ndarray, spacing_zyx: tuple[float, float, float], index: int) -> sitk.Image:
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(tuple(float(s) for s in spacing_zyx[::-1]))
    img.SetOrigin((-20.0 + index, 15.0, 30.0 * index))
    return sitk.DICOMOrient(img, "RAS") if index % 2 else img
