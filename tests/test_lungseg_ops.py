"""The lung-segmentation array helpers: box-restricted fast paths equal the plain whole-volume operations."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from pipelines.lungs.ops import (
    SLICE_STRUCTURE,
    block_mean_hu,
    component_stats,
    dilate_mm,
    fill_holes_per_slice,
    upsample_labels,
)


def _blobs(shape: tuple[int, int, int], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    field = ndi.gaussian_filter(rng.standard_normal(shape), 2.0)
    return field > 0.08


@pytest.mark.parametrize("radius", [1.0, 3.5, 8.0])
def test_dilate_mm_equals_whole_volume_edt(radius: float) -> None:
    spacing = (2.5, 0.8, 1.2)
    mask = np.zeros((30, 60, 50), dtype=bool)
    mask[10:14, 20:30, 5:9] = True  # compact object near the x border
    mask[25, 50, 40] = True
    full = ndi.distance_transform_edt(~mask, sampling=spacing) <= radius
    assert np.array_equal(dilate_mm(mask, radius, spacing), full)
    assert not dilate_mm(np.zeros_like(mask), radius, spacing).any()


def test_fill_holes_per_slice_equals_plain_fill() -> None:
    mask = _blobs((12, 80, 70), seed=1)
    ring = np.zeros((80, 70), dtype=bool)
    ring[20:40, 30:50] = True
    ring[25:35, 35:45] = False  # a hole in every slice of the ring
    mask[3:6] |= ring
    expected = ndi.binary_fill_holes(mask, structure=SLICE_STRUCTURE)
    got = fill_holes_per_slice(mask)
    assert np.array_equal(got, expected)
    assert got[4, 30, 40] and not mask[4, 30, 40]
    # a hole open toward the array border is not a hole
    edge = np.zeros((2, 10, 10), dtype=bool)
    edge[:, 0:5, 2:8] = True
    edge[:, 0:3, 4:6] = False
    assert np.array_equal(fill_holes_per_slice(edge), edge)


def test_component_stats_without_centroids() -> None:
    lab, n = ndi.label(_blobs((20, 40, 40), seed=2))
    values = (lab % 3).astype(np.float32)
    counts, means, cents = component_stats(lab, n, values)
    c2, m2, nan = component_stats(lab, n, values, centroids=False)
    assert np.array_equal(counts, c2) and np.array_equal(means, m2)
    assert np.isnan(nan).all()
    ref = ndi.center_of_mass(np.ones_like(lab), lab, index=np.arange(1, n + 1))
    assert np.allclose(cents, np.asarray(ref))


def test_block_mean_hu_matches_reference_mean() -> None:
    rng = np.random.default_rng(3)
    hu = rng.integers(-3000, 2000, size=(7, 11, 13)).astype(np.int16)
    got = block_mean_hu(hu, (3, 2, 4))
    clipped = np.clip(hu.astype(np.float64), -1024.0, 600.0)
    padded = np.pad(clipped, ((0, 2), (0, 1), (0, 3)), mode="edge")
    for kz in range(got.shape[0]):
        z0, z1 = 3 * kz, min(3 * kz + 3, 7)  # the last z block averages the slices it has
        ref = padded[z0:z1].reshape(z1 - z0, 6, 2, 4, 4).mean(axis=(0, 2, 4))
        assert np.allclose(got[kz], ref, atol=1e-3)
    assert got.dtype == np.float32 and got.shape == (3, 6, 4)


def test_block_mean_hu_integer_path_equals_the_float_path() -> None:
    """Integer HU are summed in int32 and float HU in float32: the same means, bit for bit."""
    rng = np.random.default_rng(4)
    hu = rng.integers(-3000, 3000, size=(9, 14, 17)).astype(np.int16)
    for factors in [(2, 3, 3), (3, 2, 4), (1, 1, 1), (4, 5, 2)]:
        from_int = block_mean_hu(hu, factors)
        from_float = block_mean_hu(hu.astype(np.float32), factors)
        assert np.array_equal(from_int, from_float), factors
    stored = (hu.astype(np.int32) + 3000).astype(np.uint16)  # unsigned storage (HU + 3000), other widths
    for data in (stored, stored.astype(np.int64), (hu // 20).astype(np.int8)):
        assert np.array_equal(
            block_mean_hu(data, (2, 3, 3)), block_mean_hu(data.astype(np.float32), (2, 3, 3))
        )
    # non-integer clip bounds take the float path on integer input too
    odd = block_mean_hu(hu[:8, :14, :16], (2, 2, 2), clip_hu=(-1000.5, 500.5))
    ref = (
        np.clip(hu[:8, :14, :16].astype(np.float64), -1000.5, 500.5)
        .reshape(4, 2, 7, 2, 8, 2)
        .mean(axis=(1, 3, 5))
    )
    assert np.allclose(odd, ref, atol=1e-3)


@pytest.mark.parametrize("factors", [(2, 3, 3), (1, 1, 1), (3, 1, 2)])
def test_upsample_labels_equals_repeat_and_crop(factors: tuple[int, int, int]) -> None:
    rng = np.random.default_rng(5)
    shape = (11, 16, 13)
    coarse = rng.integers(0, 3, size=tuple(-(-n // f) for n, f in zip(shape, factors))).astype(np.uint8)
    ref = coarse
    for axis, f in enumerate(factors):
        ref = np.repeat(ref, f, axis=axis)
    got = upsample_labels(coarse, factors, shape)
    assert got.shape == shape and got.flags.c_contiguous and got.dtype == np.uint8
    assert np.array_equal(got, ref[: shape[0], : shape[1], : shape[2]])
