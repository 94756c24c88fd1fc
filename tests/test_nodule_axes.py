"""Lung-RADS size of a nodule: long and short axis on the largest axial slice, their mean, and the category
based on it (synthetic ellipsoids of known axes on anisotropic grids)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipelines.nodules.axes import axial_diameters_mm, slice_diameters_mm
from pipelines.nodules.extract import extract_nodules
from pipelines.nodules.lungrads import categorize_scan

LUNG_HU = -850.0


def _ellipsoid(shape, centre_zyx, semi_mm_zyx, spacing_zyx, *, angle_deg: float = 0.0) -> np.ndarray:
    """Boolean ellipsoid ``[z, y, x]``: semi-axes (mm) along z and, in-plane, rotated by ``angle_deg`` from x/y."""
    z, y, x = (
        (g - c) * s
        for g, c, s in zip(np.ogrid[tuple(slice(0, n) for n in shape)], centre_zyx, spacing_zyx, strict=True)
    )
    a = math.radians(angle_deg)
    u = x * math.cos(a) + y * math.sin(a)  # along the in-plane axis of semi_mm_zyx[2]
    v = -x * math.sin(a) + y * math.cos(a)
    return np.asarray(
        (z / semi_mm_zyx[0]) ** 2 + (v / semi_mm_zyx[1]) ** 2 + (u / semi_mm_zyx[2]) ** 2 <= 1.0
    )


@pytest.mark.parametrize(
    ("spacing", "semi", "angle", "centre"),
    [
        ((1.25, 0.7, 0.7), (4.0, 3.0, 7.0), 0.0, (8.0, 30.0, 30.6)),  # long axis along x
        ((1.0, 0.6, 0.9), (3.0, 2.5, 5.5), 90.0, (8.0, 30.2, 20.4)),  # long axis along y, pixels not square
        ((2.5, 0.8, 0.8), (5.0, 4.0, 9.0), 30.0, (6.0, 30.4, 30.1)),  # oblique in-plane, thick slices
        ((0.8, 0.55, 0.55), (2.0, 1.6, 2.4), 55.0, (8.0, 30.7, 30.3)),  # a 4.8 x 3.2 mm nodule
    ],
)
def test_known_ellipsoid_axes_within_half_a_voxel(spacing, semi, angle, centre) -> None:
    """A binary mask places each end of an axis to about half a pixel, so a single unlucky placement can be off
    by up to a pixel (e.g. a 6.0 mm axis whose ends fall just short of two rows of pixel centres: 5.6 mm at
    0.7 mm); the random-ellipse test below bounds the typical error."""
    shape = (17, 60, 60)
    mask = _ellipsoid(shape, centre, semi, spacing, angle_deg=angle)
    result = axial_diameters_mm(mask, spacing)
    half_voxel = 0.5 * max(spacing[1], spacing[2])
    assert abs(result["long_axis_mm"] - 2 * semi[2]) <= half_voxel
    assert abs(result["short_axis_mm"] - 2 * semi[1]) <= half_voxel
    assert result["axial_slice"] == round(centre[0])  # the largest cross-section is the equator
    assert result["mean_diameter_mm"] == pytest.approx(
        (result["long_axis_mm"] + result["short_axis_mm"]) / 2, abs=0.051
    )


def test_random_ellipses_are_unbiased_to_a_fraction_of_a_pixel() -> None:
    rng = np.random.default_rng(3)
    errors = []
    for _ in range(40):
        px = (rng.uniform(0.5, 1.0), rng.uniform(0.5, 1.0))
        b, a = sorted(rng.uniform(2.0, 10.0, 2))
        yy, xx = np.mgrid[:70, :70]
        angle = rng.uniform(0, math.pi)
        y = (yy - 35 - rng.uniform(-0.5, 0.5)) * px[0]
        x = (xx - 35 - rng.uniform(-0.5, 0.5)) * px[1]
        u, v = x * math.cos(angle) + y * math.sin(angle), -x * math.sin(angle) + y * math.cos(angle)
        long_mm, short_mm = slice_diameters_mm((u / a) ** 2 + (v / b) ** 2 <= 1, px)
        errors.append(((long_mm - 2 * a) / max(px), (short_mm - 2 * b) / max(px)))
    err = np.abs(np.asarray(errors))
    assert err.mean() < 0.3  # pixels
    assert err.max() < 1.0
    assert (err <= 0.5).all(axis=1).mean() >= 0.8


def test_largest_slice_is_measured_and_holes_do_not_shrink_it() -> None:
    spacing = (1.0, 0.5, 0.5)
    mask = np.zeros((10, 40, 40), bool)
    mask[1:4] = _ellipsoid((1, 40, 40), (0, 20, 20), (1, 2.0, 2.0), spacing)[0]  # small top part
    big = _ellipsoid((1, 40, 40), (0, 20, 20), (1, 4.0, 6.0), spacing)[0]
    mask[6:8] = big
    mask[7, 18:22, 18:22] = False  # a cavity on one of the two largest slices: filled for the outline
    result = axial_diameters_mm(mask, spacing)
    assert result["axial_slice"] == 6  # the largest cross-section (slice 7 lost its cavity's pixels)
    assert abs(result["long_axis_mm"] - 12.0) <= 0.25 and abs(result["short_axis_mm"] - 8.0) <= 0.25


def test_empty_and_tiny_masks() -> None:
    assert axial_diameters_mm(np.zeros((3, 4, 4), bool), (1.0, 1.0, 1.0))["mean_diameter_mm"] == 0.0
    assert slice_diameters_mm(np.ones((1, 1), bool), (0.7, 0.7)) == pytest.approx((0.7, 0.7), abs=0.01)
    long_mm, short_mm = slice_diameters_mm(np.ones((1, 2), bool), (1.0, 1.0))
    assert long_mm == pytest.approx(2.0, abs=0.01) and short_mm == pytest.approx(1.0, abs=0.01)


def test_rounding_follows_the_lexicon() -> None:
    # long and short axes are rounded to 0.1 mm, their mean to 0.1 mm half-up
    mask = _ellipsoid((9, 60, 60), (4, 30.2, 30.4), (3.0, 3.37, 5.93), (1.0, 0.5, 0.5))
    result = axial_diameters_mm(mask, (1.0, 0.5, 0.5))
    for key in ("long_axis_mm", "short_axis_mm", "mean_diameter_mm"):
        assert result[key] == round(result[key], 1)


def _ct(mask: np.ndarray, hu_inside: float) -> np.ndarray:
    return np.where(mask, hu_inside, LUNG_HU).astype(np.float32)


def test_elongated_solid_nodule_is_categorised_on_its_mean_diameter_not_its_volume() -> None:
    spacing = (1.0, 0.6, 0.6)
    shape = (16, 50, 50)
    mask = _ellipsoid(shape, (8.0, 25.2, 25.4), (2.0, 2.6, 4.0), spacing)  # 8.0 x 5.2 mm axial, 4 mm deep
    _, nodules = extract_nodules(mask.astype(np.float32), _ct(mask, 40.0), spacing)
    nodule = nodules[0]
    assert nodule["type"] == "solid"
    assert nodule["equivalent_diameter_mm"] < 6.0 <= nodule["mean_diameter_mm"]  # 5.5 mm vs 6.6 mm
    result = categorize_scan(nodules)
    assert result["category"] == "3"  # the equivalent-sphere size alone would give 2


def test_part_solid_component_is_measured_like_the_nodule() -> None:
    spacing = (0.8, 0.5, 0.5)
    shape = (24, 60, 60)
    centre = (12.0, 30.2, 30.3)
    outer = _ellipsoid(shape, centre, (6.0, 8.0, 9.0), spacing)
    core = _ellipsoid(shape, centre, (3.0, 2.5, 4.0), spacing)  # solid part 8.0 x 5.0 mm: mean 6.5 mm
    hu = np.where(outer, -600.0, LUNG_HU)
    hu[core] = 30.0
    _, nodules = extract_nodules(outer.astype(np.float32), hu.astype(np.float32), spacing)
    nodule = nodules[0]
    assert nodule["type"] == "part-solid"
    assert abs(nodule["long_axis_mm"] - 18.0) <= 0.25 and abs(nodule["short_axis_mm"] - 16.0) <= 0.25
    assert nodule["solid_component_mm"] == pytest.approx(6.5, abs=0.5)
    assert categorize_scan(nodules)["category"] == "4A"  # solid component in [6, 8) mm


def test_point_candidates_carry_every_size_column() -> None:
    from pipelines.nodules.extract import measure_sphere

    hu = np.full((20, 20, 20), LUNG_HU, np.float32)
    row = measure_sphere((10.0, 10.0, 10.0), 6.0, np.zeros_like(hu), hu, (1.0, 1.0, 1.0))
    for key in ("mean_diameter_mm", "long_axis_mm", "short_axis_mm", "equivalent_diameter_mm", "diameter_mm"):
        assert row[key] == 6.0
