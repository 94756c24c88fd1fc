"""Tests for pipelines.training.patches."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.training.patches import candidate_patches, extract_patch, label_candidates, normalize_hu


def _volume() -> np.ndarray:
    """int16 volume [z, y, x] whose value encodes its own index (z*1200 + y*40 + x): unique, never -1000."""
    z, y, x = np.meshgrid(np.arange(20), np.arange(30), np.arange(40), indexing="ij")
    return (z * 1200 + y * 40 + x).astype(np.int16)


def test_interior_patch_is_the_exact_block_around_the_centre() -> None:
    vol = _volume()
    patch = extract_patch(vol, (10.4, 15.6, 20.0), size=(8, 6, 4))
    assert patch.shape == (8, 6, 4) and patch.dtype == vol.dtype
    np.testing.assert_array_equal(patch, vol[6:14, 13:19, 18:22])
    assert patch[4, 3, 2] == vol[10, 16, 20]  # the rounded centre sits at index size // 2


def test_border_patch_is_padded_with_air() -> None:
    vol = _volume()
    patch = extract_patch(vol, (0, 29, 2), size=(8, 8, 8))
    assert patch.shape == (8, 8, 8)
    np.testing.assert_array_equal(patch[4:, :5, 2:], vol[0:4, 25:30, 0:6])
    assert np.all(patch[:4] == -1000) and np.all(patch[:, 5:] == -1000) and np.all(patch[:, :, :2] == -1000)
    assert int((patch != -1000).sum()) == 4 * 5 * 6


def test_patch_entirely_outside_is_all_padding() -> None:
    patch = extract_patch(_volume(), (-50, 5, 5), size=(4, 4, 4), pad_value=-1024)
    assert np.all(patch == -1024)


def test_extract_patch_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="3-D"):
        extract_patch(np.zeros((4, 4)), (1, 1, 1))
    with pytest.raises(ValueError, match="three finite"):
        extract_patch(np.zeros((4, 4, 4)), (1, np.nan, 1))
    with pytest.raises(ValueError, match="size"):
        extract_patch(np.zeros((4, 4, 4)), (1, 1, 1), size=(4, 0, 4))


def test_normalize_hu_maps_the_window_to_unit_range() -> None:
    hu = np.array([-2000, -1000, -300, 400, 3000], dtype=np.int16)
    out = normalize_hu(hu)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [0.0, 0.0, 0.5, 1.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(normalize_hu(hu, window=(-1000, 0)), [0, 0, 0.7, 1, 1], atol=1e-6)
    with pytest.raises(ValueError, match="low < high"):
        normalize_hu(hu, window=(400, -1000))


def test_candidate_patches_batch_layout_and_values() -> None:
    vol = np.full((20, 20, 20), -800, np.int16)
    vol[10, 10, 10] = 400
    nodules = [{"canonical_index_zyx": (10.2, 9.8, 10.0)}, {"canonical_index_zyx": (0.0, 0.0, 0.0)}]
    batch = candidate_patches(vol, nodules, size=(6, 6, 6))
    assert batch.shape == (2, 1, 6, 6, 6) and batch.dtype == np.float32
    assert batch[0, 0, 3, 3, 3] == pytest.approx(1.0)
    assert batch[0, 0, 0, 0, 0] == pytest.approx(200 / 1400)
    assert batch[1, 0, 0, 0, 0] == pytest.approx(0.0)  # padded corner is air
    raw = candidate_patches(vol, np.array([[10, 10, 10]]), size=(6, 6, 6), window=None)
    assert raw.shape == (1, 1, 6, 6, 6) and raw[0, 0, 3, 3, 3] == 400
    assert candidate_patches(vol, [], size=(6, 6, 6)).shape == (0, 1, 6, 6, 6)


def test_label_candidates_luna16_hit_rule() -> None:
    annotations = np.array([[10.0, 20.0, 30.0], [-50.0, 0.0, 100.0]])
    diameters = np.array([10.0, 4.0])
    candidates = np.array(
        [
            [14.99, 20.0, 30.0],  # 4.99 mm from the first centre: inside its 5 mm radius
            [15.01, 20.0, 30.0],  # 5.01 mm: outside
            [10.0, 25.0, 30.0],  # exactly on the sphere: not a hit (strictly inside)
            [-50.0, 1.99, 100.0],  # inside the second, small nodule
            [-50.0, 2.01, 100.0],  # just outside it
            [0.0, 0.0, 0.0],
        ]
    )
    hits = label_candidates(candidates, annotations, diameters)
    assert hits.dtype == bool
    np.testing.assert_array_equal(hits, [True, False, False, True, False, False])
    assert not label_candidates(candidates, np.zeros((0, 3)), np.zeros(0)).any()
    assert label_candidates(np.zeros((0, 3)), annotations, diameters).shape == (0,)
    with pytest.raises(ValueError, match="diameters"):
        label_candidates(candidates, annotations, np.array([10.0]))
