"""Gaussian-derivative Hessians by entry: the same values as the all-at-once passes, and sound bounds."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from pipelines.nodules.gaussian_derivatives import HessianPasses, hessian, kernels, weakest_curvature_bound


def _all_at_once(x: np.ndarray, sigma: float, inner: tuple[slice, slice, slice]) -> dict:
    """The second look's Hessian until v0.8.0: all 15 passes, x then y then z, each cropped to ``inner``."""
    g, g1, g2 = kernels(sigma)
    k = (g, g1, g2)
    zs, ys, xs = inner

    def along(v: np.ndarray, order: int, axis: int) -> np.ndarray:
        return ndi.correlate1d(v, k[order], axis=axis, mode="nearest")

    ax = {o: along(x, o, 2)[:, :, xs] for o in range(3)}
    axy = {
        (oy, ox): along(ax[ox], oy, 1)[:, ys, :]
        for oy, ox in ((0, 0), (1, 0), (2, 0), (0, 1), (1, 1), (0, 2))
    }
    return {
        (0, 0): along(axy[0, 0], 2, 0)[zs],
        (1, 1): along(axy[2, 0], 0, 0)[zs],
        (2, 2): along(axy[0, 2], 0, 0)[zs],
        (0, 1): along(axy[1, 0], 1, 0)[zs],
        (0, 2): along(axy[0, 1], 1, 0)[zs],
        (1, 2): along(axy[1, 1], 0, 0)[zs],
    }


@pytest.mark.parametrize(
    ("sigma", "inner"),
    [
        (1.5, (slice(8, 20), slice(9, 21), slice(7, 22))),
        (2.86, (slice(0, 5), slice(12, 30), slice(20, 31))),  # at the volume's edges
        (1.0, (slice(None), slice(None), slice(None))),
    ],
)
def test_entries_equal_the_all_at_once_passes_in_any_order(sigma: float, inner: tuple) -> None:
    x = (np.random.default_rng(0).normal(-600, 300, (26, 30, 31))).astype(np.float32)
    box = tuple(slice(*b.indices(n)[:2]) for b, n in zip(inner, x.shape))
    ref = _all_at_once(x, sigma, box)  # type: ignore[arg-type]
    passes = HessianPasses(x, sigma, inner)
    for ab in [(1, 2), (0, 0), (2, 2), (0, 1), (1, 1), (0, 2)]:  # off-diagonal first: shared passes kept
        np.testing.assert_array_equal(passes.entry(*ab), ref[ab])
    got = hessian(x, sigma, inner)
    assert got.keys() == ref.keys() and all(np.array_equal(got[k], ref[k]) for k in ref)


def test_weakest_curvature_bound_holds_and_is_exact_for_a_ball() -> None:
    rng = np.random.default_rng(1)
    a = rng.normal(size=(20000, 3, 3))
    h = -(a @ np.swapaxes(a, 1, 2)) - 1e-3 * np.eye(3)  # negative definite
    h[:5000] += rng.normal(scale=2.0, size=(5000, 3, 3))  # some indefinite
    h = (h + np.swapaxes(h, 1, 2)) / 2
    ev = np.linalg.eigvalsh(h)
    l1, l3 = ev[:, 0], ev[:, 2]
    response = np.where(l3 < 0, l3**2 / -l1, 0.0)
    bound = weakest_curvature_bound([h[:, 0, 0], h[:, 1, 1], h[:, 2, 2]])
    assert (bound >= response * (1 - 1e-9)).all()
    assert (bound[l3 >= 0] >= 0).all() and (bound > 0).any()
    ball = -2.5 * np.eye(3)[None]
    assert weakest_curvature_bound([ball[:, i, i] for i in range(3)])[0] == pytest.approx(2.5)


@pytest.mark.parametrize(("sigma", "size"), [(1.43, 8), (2.86, 8), (2.14, 16)])
def test_box_batch_agrees_with_the_passes_to_float32_rounding(sigma: float, size: int) -> None:
    from pipelines.nodules.gaussian_derivatives import BoxBatch, kernel_radius

    r = kernel_radius(sigma)
    x = (
        np.random.default_rng(2)
        .normal(-600, 300, (4, size + 2 * r, size + 2 * r, size + 2 * r))
        .astype(np.float32)
    )
    batch = BoxBatch(x, sigma, size)
    part = batch.take(np.asarray([3, 1]))
    for ab in [(0, 0), (1, 2), (0, 1), (1, 1), (0, 2), (2, 2)]:
        ref = np.stack([HessianPasses(b, sigma, (slice(r, r + size),) * 3).entry(*ab) for b in x])
        np.testing.assert_allclose(batch.entry(*ab), ref, atol=1e-5 * np.abs(ref).max())
        np.testing.assert_allclose(part.entry(*ab), ref[[3, 1]], atol=1e-5 * np.abs(ref).max())
    with pytest.raises(ValueError, match="boxes of"):
        BoxBatch(x[:, 1:], sigma, size)
