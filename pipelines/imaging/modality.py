"""Modality registry and modality-aware intensity normalisation (CT and MRI), light to import.

One explicit registry, :data:`MODALITIES`, is the single source of truth for the modalities that the generic
segmentation recipe (``lungscreen train-seg`` / ``lungscreen segment``) accepts; :func:`get_modality` raises
an :class:`UnknownModalityError` listing the valid choices. Only numpy is imported at module level
(SimpleITK is imported inside :func:`n4_bias_correct`), so the CLI can read :func:`modality_names` instantly.

- **CT** (Hounsfield units): clip to the 0.5 / 99.5 percentiles of the *dataset's* foreground (labelled)
  voxels, then z-score with the dataset's foreground mean and standard deviation, as nnU-Net does. The
  statistics come from :func:`intensity_statistics` over all training cases and live in the plan.
- **MRI** (arbitrary units): optional N4 bias-field correction (:func:`n4_bias_correct`), then per image: clip
  to the 0.5 / 99.5 percentiles of the image's own foreground (body, found by Otsu) and z-score with that
  foreground's mean and standard deviation.

All array functions take and return ``[z, y, x]`` arrays on the canonical grid (see :mod:`pipelines.imaging.io`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import SimpleITK as sitk

PERCENTILES = (0.5, 99.5)
MAX_STAT_SAMPLES = 200_000


class UnknownModalityError(ValueError):
    """An unknown modality name; the message lists the valid choices."""


@dataclass(frozen=True)
class Modality:
    """How one modality is normalised.

    Attributes:
        name: registry key (``ct``, ``mri``).
        description: one line for help texts.
        normalization: ``dataset_zscore`` (clip and z-score with dataset statistics, CT) or ``image_zscore``
            (clip and z-score with each image's own foreground statistics, MRI).
        units: intensity units on disk.
        supports_n4: whether N4 bias-field correction applies (MRI only).
        n4_default: whether planning switches N4 on by default.
    """

    name: str
    description: str
    normalization: str
    units: str
    supports_n4: bool
    n4_default: bool


MODALITIES: dict[str, Modality] = {
    "ct": Modality(
        name="ct",
        description="CT in Hounsfield units: dataset percentile clip (0.5/99.5) and dataset z-score",
        normalization="dataset_zscore",
        units="HU",
        supports_n4=False,
        n4_default=False,
    ),
    "mri": Modality(
        name="mri",
        description="MRI, arbitrary units: optional N4 bias correction, per-image foreground clip and z-score",
        normalization="image_zscore",
        units="a.u.",
        supports_n4=True,
        n4_default=True,
    ),
}


def modality_names() -> tuple[str, ...]:
    """The valid modality names, in registry order (for ``argparse`` ``choices=``)."""
    return tuple(MODALITIES)


def get_modality(name: str) -> Modality:
    """Look a modality up by name (case-insensitive).

    Raises:
        UnknownModalityError: listing the valid choices.
    """
    key = str(name).strip().lower()
    if key not in MODALITIES:
        raise UnknownModalityError(f"unknown modality {name!r}; valid choices are {list(MODALITIES)}")
    return MODALITIES[key]


# ------------------------------------------------------------------------------------------- statistics
def intensity_statistics(values: np.ndarray) -> dict[str, float]:
    """Statistics of a 1D sample of intensities: mean, std, median, min, max and the 0.5 / 99.5 percentiles.

    Used for the dataset fingerprint (CT: foreground voxels of every training case pooled together).
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        raise ValueError("no voxels to compute intensity statistics from (is every label map empty?)")
    lo, hi = np.percentile(v, PERCENTILES)
    return {
        "mean": float(v.mean()),
        "std": float(v.std()),
        "median": float(np.median(v)),
        "min": float(v.min()),
        "max": float(v.max()),
        "percentile_00_5": float(lo),
        "percentile_99_5": float(hi),
    }


def sample_values(values: np.ndarray, *, n: int = MAX_STAT_SAMPLES, seed: int = 0) -> np.ndarray:
    """At most ``n`` values of a 1D array, drawn without replacement (deterministic for a ``seed``)."""
    v = np.asarray(values).ravel()
    if v.size <= n:
        return v
    return np.random.default_rng(seed).choice(v, size=n, replace=False)


def otsu_threshold(array: np.ndarray, *, bins: int = 256) -> float:
    """Otsu's threshold of an intensity array (any shape), computed on a histogram of ``bins`` bins."""
    v = np.asarray(array, dtype=np.float64).ravel()
    lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        return lo
    hist, edges = np.histogram(v, bins=bins, range=(lo, hi))
    centres = 0.5 * (edges[:-1] + edges[1:])
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mu0 = m0 / np.maximum(w0, 1)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(edges[int(np.argmax(between[:-1])) + 1])


def foreground_mask(array_zyx: np.ndarray) -> np.ndarray:
    """Body/foreground of an MRI ``[z, y, x]`` array: voxels above Otsu's threshold (all voxels if that is
    fewer than 1 % of the image, e.g. a constant image)."""
    mask = array_zyx > otsu_threshold(array_zyx)
    if mask.sum() < 0.01 * mask.size:
        return np.ones(array_zyx.shape, dtype=bool)
    return mask


# ------------------------------------------------------------------------------------------- normalisation
def normalize_ct(array_zyx: np.ndarray, *, stats: dict[str, float]) -> np.ndarray:
    """Clip HU to the dataset's foreground percentiles and z-score with its foreground mean/std.

    Args:
        array_zyx: HU array ``[z, y, x]``.
        stats: from :func:`intensity_statistics` (keys ``percentile_00_5``, ``percentile_99_5``, ``mean``,
            ``std``).

    Returns:
        float32 array, same shape.
    """
    lo, hi = stats["percentile_00_5"], stats["percentile_99_5"]
    std = max(float(stats["std"]), 1e-8)
    out = np.clip(np.asarray(array_zyx, dtype=np.float32), lo, hi)
    return ((out - np.float32(stats["mean"])) / np.float32(std)).astype(np.float32)


def normalize_mri(array_zyx: np.ndarray, *, mask: np.ndarray | None = None) -> np.ndarray:
    """Per-image foreground z-score after clipping to the foreground's 0.5 / 99.5 percentiles.

    Args:
        array_zyx: MRI array ``[z, y, x]`` (arbitrary units).
        mask: foreground voxels; :func:`foreground_mask` when None.

    Returns:
        float32 array, same shape; foreground has mean 0 and standard deviation 1 (before clipping effects).
    """
    a = np.asarray(array_zyx, dtype=np.float32)
    fg = foreground_mask(a) if mask is None else np.asarray(mask, dtype=bool)
    values = sample_values(a[fg]) if fg.any() else a.ravel()
    lo, hi = np.percentile(values, PERCENTILES)
    clipped = np.clip(a, lo, hi)
    fg_values = np.clip(values, lo, hi)
    mean, std = float(fg_values.mean()), max(float(fg_values.std()), 1e-8)
    return ((clipped - np.float32(mean)) / np.float32(std)).astype(np.float32)


def normalize(array_zyx: np.ndarray, *, modality: str, stats: dict[str, float] | None = None) -> np.ndarray:
    """Normalise one channel the way its modality's registry entry says.

    Args:
        array_zyx: ``[z, y, x]`` intensities (HU for CT, a.u. for MRI).
        modality: a name of :data:`MODALITIES`.
        stats: dataset statistics (required for CT).

    Raises:
        UnknownModalityError: for an unknown modality; ValueError when CT statistics are missing.
    """
    mod = get_modality(modality)
    if mod.normalization == "dataset_zscore":
        if stats is None:
            raise ValueError(f"modality {mod.name!r} needs dataset intensity statistics (from the plan)")
        return normalize_ct(array_zyx, stats=stats)
    return normalize_mri(array_zyx)


# ------------------------------------------------------------------------------------------- N4
def n4_bias_correct(
    image: sitk.Image,
    *,
    shrink_mm: float = 8.0,
    iterations: tuple[int, ...] = (50, 50),
    mask: sitk.Image | None = None,
) -> sitk.Image:
    """N4 bias-field correction of an MRI volume (SimpleITK ``N4BiasFieldCorrectionImageFilter``).

    The field is smooth, so it is estimated on a shrunk copy (voxels of about ``shrink_mm``, at most 16x per
    axis, at least 8 voxels per axis left) inside an Otsu body mask, then evaluated on the full grid and
    divided out: about 1 s on a 256x256x25 brain MRI on one CPU core (N4 at full resolution takes ~40 s).

    Args:
        image: 3D scalar image in its own geometry (any orientation); intensities must be >= 0 (shifted if not).
        shrink_mm: target voxel size of the shrunk copy.
        iterations: N4 iterations per fitting level.
        mask: body mask (uint8, same grid); Otsu when None.

    Returns:
        float32 image with the same geometry, intensities divided by the estimated bias field.
    """
    import SimpleITK as sitk

    img = sitk.Cast(image, sitk.sitkFloat32)
    arr = sitk.GetArrayViewFromImage(img)
    low = float(arr.min())
    if low < 0:  # N4 fits log intensities: shift to positive values
        img = img - low
    if mask is None:
        mask = sitk.OtsuThreshold(img, 0, 1, 200)
        if int(sitk.GetArrayViewFromImage(mask).sum()) < 0.01 * arr.size:
            mask = sitk.Image(img.GetSize(), sitk.sitkUInt8) + 1
            mask.CopyInformation(img)
    shrink = [
        int(max(1, min(16, round(shrink_mm / sp), n // 8))) for sp, n in zip(img.GetSpacing(), img.GetSize())
    ]
    small = sitk.Shrink(img, shrink)
    small_mask = sitk.Shrink(sitk.Cast(mask, sitk.sitkUInt8), shrink)
    n4 = sitk.N4BiasFieldCorrectionImageFilter()
    n4.SetMaximumNumberOfIterations(list(iterations))
    n4.Execute(small, small_mask)
    log_field = n4.GetLogBiasFieldAsImage(img)
    corrected = img / sitk.Exp(log_field)
    if low < 0:
        corrected = corrected + low
    return sitk.Cast(corrected, sitk.sitkFloat32)


def describe() -> list[dict[str, Any]]:
    """The registry as plain dicts (for ``plan.json`` and help texts)."""
    return [dict(m.__dict__) for m in MODALITIES.values()]
