"""Block-sparse labelling equals the whole-volume methods it replaces, on random and edge cases."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from pipelines.nodules.sparse_labels import block_any, components, labelled_voxels, seed_clusters


def _pairwise_clusters(seeds: np.ndarray, *, reach: int) -> list[np.ndarray]:
    """The second look's clustering until v0.8.0: a KD-tree pairs every two seeds within ``reach`` (Chebyshev).

    Memory grows with the linked pairs (18 GB on a scan with a large high-probability region).
    """
    if len(seeds) == 0:
        return []
    pairs = cKDTree(seeds).query_pairs(reach, p=np.inf, output_type="ndarray")
    graph = coo_matrix((np.ones(len(pairs), bool), (pairs[:, 0], pairs[:, 1])), shape=(len(seeds),) * 2)
    _, cluster = connected_components(graph, directed=False)
    order = np.argsort(cluster, kind="stable")
    bounds = np.flatnonzero(np.diff(cluster[order])) + 1
    return np.split(seeds[order], bounds)


def _random_mask(rng: np.random.Generator, shape: tuple[int, int, int], density: float) -> np.ndarray:
    """Scattered voxels plus a few blobs (some touching the volume's faces)."""
    mask = rng.random(shape) < density
    for _ in range(rng.integers(0, 4)):
        c = rng.integers(0, shape)
        r = rng.integers(1, 5)
        z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
        mask |= (z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 <= r * r
    return mask


CASES = [(seed, density) for seed in range(6) for density in (0.0005, 0.003, 0.02, 0.15)]


@pytest.mark.parametrize(("seed", "density"), CASES)
@pytest.mark.parametrize("reach", [1, 2, 4, 5])
def test_seed_clusters_equal_the_pairwise_clusters(seed: int, density: float, reach: int) -> None:
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(9, 30)), int(rng.integers(9, 30)), int(rng.integers(9, 30)))
    mask = _random_mask(rng, shape, density)
    old = _pairwise_clusters(np.argwhere(mask), reach=reach)
    new = seed_clusters(mask, reach=reach)
    assert len(new) == len(old)
    for a, c in zip(old, new, strict=True):  # same seeds, same cluster order (by first seed in C order)
        np.testing.assert_array_equal(a, np.argwhere(c.seeds) + c.lo)
        assert np.array_equal(c.lo, a.min(0)) and np.array_equal(
            c.hi, a.max(0) + 1
        )  # box = the seeds' bounds


def test_seed_clusters_link_at_exactly_the_reach() -> None:
    mask = np.zeros((20, 20, 30), bool)
    mask[5, 5, 2] = mask[10, 0, 7] = True  # Chebyshev 5: linked
    mask[10, 19, 13] = True  # 6 from both: alone
    mask[19, 19, 29] = mask[14, 14, 24] = True  # corner pair, 5 apart on every axis: linked
    clusters = seed_clusters(mask, reach=5)
    assert [len(np.argwhere(c.seeds)) for c in clusters] == [2, 1, 2]
    assert (
        seed_clusters(np.zeros((4, 5, 6), bool), reach=5)
        == []
        == seed_clusters(np.zeros((0, 5, 6), bool), reach=5)
    )
    with pytest.raises(ValueError, match="3-D"):
        seed_clusters(np.zeros((4, 5)), reach=5)
    with pytest.raises(ValueError, match="reach"):
        seed_clusters(mask, reach=0)


@pytest.mark.parametrize(("seed", "density"), CASES + [(7, 0.45), (8, 0.7)])
def test_components_equal_ndimage_label(seed: int, density: float) -> None:
    rng = np.random.default_rng(100 + seed)
    shape = (int(rng.integers(5, 40)), int(rng.integers(5, 40)), int(rng.integers(5, 40)))
    mask = _random_mask(rng, shape, density)
    labels, n = ndi.label(mask, structure=np.ones((3, 3, 3)))
    boxes = ndi.find_objects(labels)
    found = components(mask)
    assert len(found) == n
    for lab, ((box, comp), ref) in enumerate(zip(found, boxes, strict=True), start=1):
        assert box == ref
        np.testing.assert_array_equal(comp, labels[ref] == lab)


def test_block_any_marks_every_block_with_a_voxel() -> None:
    rng = np.random.default_rng(3)
    mask = rng.random((23, 17, 30)) < 0.002
    blocks = block_any(mask, 6)
    assert blocks.shape == (4, 3, 5)
    expected = np.zeros_like(blocks)
    for z, y, x in np.argwhere(mask):
        expected[z // 6, y // 6, x // 6] = True
    np.testing.assert_array_equal(blocks, expected)


def test_labelled_voxels_lists_every_non_zero_voxel_with_its_label() -> None:
    labels = np.zeros((4, 5, 6), np.uint16)
    labels[1, 2, 3] = 7
    labels[3, 0, 5] = 2
    at, values = labelled_voxels(labels)
    assert at.tolist() == [
        np.ravel_multi_index((1, 2, 3), labels.shape),
        np.ravel_multi_index((3, 0, 5), labels.shape),
    ]
    assert values.tolist() == [7, 2]
    assert labelled_voxels(np.zeros((2, 2, 2), np.uint8))[0].size == 0
