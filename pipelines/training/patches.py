"""Candidate patches and labels for the false-positive classifier (a MONAI 3-D ResNet).

Volumes are numpy arrays ``[z, y, x]`` on the grid the segmentation network ran on (canonical LPS,
resampled); centres are continuous voxel indices ``[z, y, x]`` on that grid. Intensities are HU.
Patches are channel-first batches ``[N, 1, D, H, W]`` with ``D, H, W`` along ``z, y, x``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

DEFAULT_PATCH_SIZE = (32, 32, 32)
#: HU window mapped to [0, 1]: air (-1000) to dense soft tissue and calcification onset (+400).
DEFAULT_WINDOW = (-1000.0, 400.0)


def _size3(size: Sequence[int]) -> tuple[int, int, int]:
    values = tuple(int(s) for s in size)
    if len(values) != 3 or min(values) < 1:
        raise ValueError(f"size must be three positive voxel counts (D, H, W), not {tuple(size)}")
    return values[0], values[1], values[2]


def extract_patch(
    volume_zyx: np.ndarray,
    center_index_zyx: Sequence[float] | np.ndarray,
    *,
    size: Sequence[int] = DEFAULT_PATCH_SIZE,
    pad_value: float = -1000,
) -> np.ndarray:
    """Patch of ``size`` voxels centred on a voxel, padded where it leaves the volume.

    The centre is rounded to the nearest voxel ``c``; along each axis the patch covers voxels
    ``c - size // 2`` to ``c - size // 2 + size - 1`` (for even sizes the centre is voxel ``size // 2``).

    Args:
        volume_zyx: 3-D array ``[z, y, x]`` (HU for CT).
        center_index_zyx: continuous voxel index ``[z, y, x]`` of the centre; it may lie outside.
        size: patch shape ``(D, H, W)`` in voxels.
        pad_value: value outside the volume (-1000 HU = air).

    Returns:
        Array of shape ``size`` and the volume's dtype.

    Raises:
        ValueError: if the volume is not 3-D, the centre is not 3 finite numbers or the size is invalid.
    """
    if volume_zyx.ndim != 3:
        raise ValueError(f"volume_zyx must be 3-D [z, y, x], not shape {volume_zyx.shape}")
    centre = np.asarray(center_index_zyx, dtype=np.float64)
    if centre.shape != (3,) or not np.all(np.isfinite(centre)):
        raise ValueError(f"center_index_zyx must be three finite numbers [z, y, x], not {center_index_zyx}")
    shape = _size3(size)
    patch = np.full(shape, pad_value, dtype=volume_zyx.dtype)
    start = np.floor(centre + 0.5).astype(np.int64) - np.asarray(shape) // 2
    src, dst = [], []
    for lo, n, dim in zip(start.tolist(), shape, volume_zyx.shape, strict=True):
        a, b = max(lo, 0), min(lo + n, dim)
        if a >= b:
            return patch
        src.append(slice(a, b))
        dst.append(slice(a - lo, b - lo))
    patch[tuple(dst)] = volume_zyx[tuple(src)]
    return patch


def normalize_hu(patch: np.ndarray, *, window: tuple[float, float] = DEFAULT_WINDOW) -> np.ndarray:
    """Map HU linearly from ``window = (low, high)`` to [0, 1], clipping outside.

    Returns:
        float32 array of the same shape, values in [0, 1].

    Raises:
        ValueError: if ``low >= high``.
    """
    low, high = float(window[0]), float(window[1])
    if not low < high:
        raise ValueError(f"window must be (low, high) with low < high, not {window}")
    scaled = (np.asarray(patch, dtype=np.float32) - np.float32(low)) / np.float32(high - low)
    return np.clip(scaled, 0.0, 1.0).astype(np.float32, copy=False)


def candidate_patches(
    volume_zyx: np.ndarray,
    nodules: Sequence[Mapping[str, Any]] | np.ndarray,
    *,
    size: Sequence[int] = DEFAULT_PATCH_SIZE,
    pad_value: float = -1000,
    window: tuple[float, float] | None = DEFAULT_WINDOW,
) -> np.ndarray:
    """Batch of patches centred on the candidates, ready for the classifier.

    Args:
        volume_zyx: HU volume ``[z, y, x]`` on the grid the candidates were found on.
        nodules: rows with ``canonical_index_zyx`` (as :func:`pipelines.nodules.extract.extract_nodules` returns)
            or an ``[N, 3]`` array of ``[z, y, x]`` indices.
        size: patch shape ``(D, H, W)`` in voxels.
        pad_value: HU outside the volume.
        window: HU window for :func:`normalize_hu`; ``None`` keeps raw HU (float32).

    Returns:
        float32 array ``[N, 1, D, H, W]`` (``[0, 1, D, H, W]`` when there are no candidates).
    """
    shape = _size3(size)
    if isinstance(nodules, np.ndarray):
        centres = nodules.reshape(-1, 3) if nodules.size else np.zeros((0, 3))
    else:
        centres = np.asarray([row["canonical_index_zyx"] for row in nodules], dtype=np.float64).reshape(-1, 3)
    out = np.empty((len(centres), 1, *shape), dtype=np.float32)
    for n, centre in enumerate(centres):
        patch = extract_patch(volume_zyx, centre, size=shape, pad_value=pad_value)
        out[n, 0] = normalize_hu(patch, window=window) if window is not None else patch
    return out


def label_candidates(
    candidates_world_lps: np.ndarray, annotations_world_lps: np.ndarray, diameters_mm: np.ndarray
) -> np.ndarray:
    """Which candidates hit an annotated nodule (LUNA16 rule: distance to its centre < its radius).

    Candidates that hit nothing are the false positives to mine as hard negatives.

    Args:
        candidates_world_lps: ``[N, 3]`` candidate centres, world LPS mm.
        annotations_world_lps: ``[M, 3]`` annotated nodule centres, world LPS mm.
        diameters_mm: ``[M]`` annotated diameters, mm.

    Returns:
        bool ``[N]``: True where the candidate lies strictly inside some annotation's sphere.

    Raises:
        ValueError: on shapes other than ``[N, 3]``, ``[M, 3]`` and ``[M]``.
    """
    cand = np.asarray(candidates_world_lps, dtype=np.float64)
    ann = np.asarray(annotations_world_lps, dtype=np.float64)
    diam = np.asarray(diameters_mm, dtype=np.float64)
    cand = cand.reshape(0, 3) if cand.size == 0 else cand
    ann = ann.reshape(0, 3) if ann.size == 0 else ann
    if cand.ndim != 2 or cand.shape[1] != 3:
        raise ValueError(f"candidates_world_lps must be [N, 3], not {cand.shape}")
    if ann.ndim != 2 or ann.shape[1] != 3 or diam.shape != (ann.shape[0],):
        raise ValueError(f"annotations must be [M, 3] with diameters [M], not {ann.shape} and {diam.shape}")
    if ann.shape[0] == 0 or cand.shape[0] == 0:
        return np.zeros(cand.shape[0], dtype=bool)
    distance = np.linalg.norm(cand[:, None, :] - ann[None, :, :], axis=-1)
    return np.asarray(np.any(distance < diam[None, :] / 2.0, axis=1))
