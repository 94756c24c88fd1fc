"""MRI mode of the phantom: T1/T2-like intensities (arbitrary units) with lesions, bias field and Rician noise.

The CT phantom's tissue classes are mapped to relaxation-weighted intensities, lesions (the nodules) get
their own contrast, then a smooth multiplicative bias field and Rician noise are applied. Arrays are
float32 ``[z, y, x]`` on the canonical LPS grid.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from pipelines.phantom.render import TISSUES
from pipelines.phantom.shapes import Array, Grid, upsampled_noise

# Mean intensity per tissue class for each weighting (air, fat, soft, bone, lung, blood, abdomen).
_WEIGHTS = {
    "T1": {"air": 0.0, "fat": 1.0, "soft": 0.42, "bone": 0.5, "lung": 0.05, "blood": 0.3, "abdomen": 0.55},
    "T2": {"air": 0.0, "fat": 0.8, "soft": 0.25, "bone": 0.35, "lung": 0.06, "blood": 0.65, "abdomen": 0.32},
}


def to_mri(tissue: Array, labels: Array, vessels: Array, grid: Grid, rng: np.random.Generator) -> Array:
    """Synthesise one MRI volume.

    Args:
        tissue: uint8 ``[z, y, x]`` tissue classes of :data:`pipelines.phantom.render.TISSUES`.
        labels: lesion instance labels on the same grid.
        vessels: float32 vessel occupancy (0..1).
        grid: the canonical grid.
        rng: random generator.

    Returns:
        float32 ``[z, y, x]`` intensities in arbitrary units (roughly 0..1000), never negative.
    """
    weighting = "T1" if rng.random() < 0.5 else "T2"
    lut = np.zeros(max(TISSUES.values()) + 1, dtype=np.float32)
    for name, idx in TISSUES.items():
        lut[idx] = _WEIGHTS[weighting][name] * float(rng.uniform(0.85, 1.15))
    img = lut[tissue]
    img += vessels * (lut[TISSUES["blood"]] - img)
    n_les = int(labels.max())
    for i in range(1, n_les + 1):
        contrast = rng.uniform(0.6, 1.0) if weighting == "T2" else rng.uniform(0.25, 0.6)
        img[labels == i] = contrast
    img *= 1.0 + 0.06 * upsampled_noise(grid, sigma_mm=4.0, rng=rng)
    sm = sitk.SmoothingRecursiveGaussian(grid.to_image(img), [0.6 * s for s in grid.spacing_zyx[::-1]])
    img = sitk.GetArrayFromImage(sm)
    bias = np.exp(0.25 * upsampled_noise(grid, sigma_mm=90.0, rng=rng))
    img *= bias * 1000.0
    sigma = float(rng.uniform(0.01, 0.05)) * 1000.0
    n1 = rng.standard_normal(img.shape, dtype=np.float32) * sigma
    n2 = rng.standard_normal(img.shape, dtype=np.float32) * sigma
    return np.sqrt((img + n1) ** 2 + n2**2).astype(np.float32)
