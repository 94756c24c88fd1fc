"""Prior-to-current registration on an analytic phantom under a known rotation, translation and scaling."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from pipelines.followup.register import AffineMap, RegistrationError, register_prior
from tests.followup_phantom import grid, render, rotation

# prior anatomy point y sits at current point A @ y + b (a few degrees, ~1 cm, 2 % deeper breath in z)
A = rotation(3.0, -2.0, 4.0) @ np.diag([1.0, 1.0, 1.02])
B = np.array([7.0, -5.0, 4.0])
TRUE_CURRENT_TO_PRIOR = AffineMap(matrix=A, offset=B).inverse()


def _pair(prior_direction=(1, 0, 0, 0, 1, 0, 0, 0, 1), *, coarse=1.0):
    size = np.round(np.array([80, 66, 70]) / coarse).astype(int)
    current, current_lungs = render(grid(size, (2.0 * coarse,) * 3), lambda p: p, seed=1)
    to_anatomy = AffineMap(matrix=A, offset=B).apply  # a prior point's anatomy = current frame point
    prior_size = np.round(np.array([74, 62, 58]) / coarse).astype(int)
    spacing = np.array([2.2, 2.1, 2.5]) * coarse
    prior_grid = grid(prior_size, spacing, direction=prior_direction, center=(5.0, -3.0, 2.0))
    prior, prior_lungs = render(prior_grid, to_anatomy, seed=2)
    return current, current_lungs, prior, prior_lungs


def _lung_points(n=60, seed=0):
    rng = np.random.default_rng(seed)
    pts = []
    for cx in (-38.0, 38.0):
        pts.append(np.asarray([cx, 0, 0]) + rng.uniform(-1, 1, (n // 2, 3)) * np.array([18, 28, 32]))
    return np.concatenate(pts)


@pytest.mark.slow
@pytest.mark.parametrize("direction", [(1, 0, 0, 0, 1, 0, 0, 0, 1), (-1, 0, 0, 0, -1, 0, 0, 0, 1)])
def test_recovers_known_map_inside_lungs(tmp_path, direction):
    current, current_lungs, prior, prior_lungs = _pair(direction)
    path = tmp_path / "prior.nii.gz"  # through the disk: the prior's orientation as written (RAS-flipped too)
    sitk.WriteImage(prior, str(path))
    prior = sitk.ReadImage(str(path))
    points = _lung_points()
    reg = register_prior(
        current, current_lungs, prior, prior_lungs, nodule_centers_lps_mm=points[:3], threads=2
    )
    error = np.linalg.norm(reg.current_to_prior(points) - TRUE_CURRENT_TO_PRIOR.apply(points), axis=1)
    assert error.max() < 1.5, (error.max(), error.mean())
    for index in range(3):
        local = reg.current_to_prior(points[index], nodule_index=index)
        assert np.linalg.norm(local - TRUE_CURRENT_TO_PRIOR.apply(points[index])) < 1.5, reg.notes
    back = reg.prior_to_current(reg.current_to_prior(points))
    assert np.allclose(back, points, atol=1e-6)


def test_recovers_known_map_coarse_flipped():
    """The fast version: 3 mm grids, the prior RAS-oriented."""
    current, current_lungs, prior, prior_lungs = _pair((-1, 0, 0, 0, -1, 0, 0, 0, 1), coarse=1.5)
    points = _lung_points()
    reg = register_prior(current, current_lungs, prior, prior_lungs, global_spacing_mm=3.0, threads=2)
    error = np.linalg.norm(reg.current_to_prior(points) - TRUE_CURRENT_TO_PRIOR.apply(points), axis=1)
    assert error.max() < 1.5, (error.max(), error.mean())


def test_affine_map_algebra():
    m = AffineMap(matrix=rotation(10, 0, 5), offset=np.array([1.0, 2.0, 3.0]))
    p = np.array([[4.0, -5.0, 6.0], [0.0, 0.0, 0.0]])
    assert np.allclose(m.inverse().apply(m.apply(p)), p)
    shifted = m.then_shift_first(np.array([1.0, 0.0, 0.0]))
    assert np.allclose(shifted.apply(p), m.apply(p + [1.0, 0.0, 0.0]))
    t = m.to_sitk()
    assert np.allclose(t.TransformPoint([4.0, -5.0, 6.0]), m.apply(p[0]))
    assert np.allclose(AffineMap.from_sitk(t).apply(p), m.apply(p))


def test_empty_lung_mask_is_refused():
    current, current_lungs, prior, prior_lungs = _pair(coarse=2.0)
    empty = sitk.Image(prior_lungs.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(prior_lungs)
    with pytest.raises(RegistrationError, match="prior lung mask is empty"):
        register_prior(current, current_lungs, prior, empty)
