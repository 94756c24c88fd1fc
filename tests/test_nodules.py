"""Tests for pipelines.nodules.extract, pipelines.nodules.density and pipelines.nodules.coordinates."""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from pipelines.nodules.density import DensityThresholds, classify_density
from pipelines.nodules.extract import (
    add_original_indices,
    add_world_coordinates,
    extract_nodules,
    peak_centre,
    probability_score,
)

LUNG_HU = -850.0


def _ellipsoid(shape, centre_zyx, semi_axes_mm_zyx, spacing_zyx) -> np.ndarray:
    """Boolean ellipsoid [z, y, x] with semi-axes in mm, centred on a continuous voxel index."""
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    r2 = sum(
        ((g - c) * s / a) ** 2
        for g, c, a, s in zip(grids, centre_zyx, semi_axes_mm_zyx, spacing_zyx, strict=True)
    )
    return np.asarray(r2 <= 1.0)


def _sphere(shape, centre_zyx, radius_mm, spacing_zyx) -> np.ndarray:
    return _ellipsoid(shape, centre_zyx, (radius_mm,) * 3, spacing_zyx)


def _lung(shape) -> np.ndarray:
    return np.full(shape, LUNG_HU, dtype=np.float32)


# ---------------------------------------------------------------------------------------------- geometry


def test_sphere_diameter_and_volume_within_10_percent() -> None:
    spacing = (1.0, 0.6, 0.6)
    shape = (30, 50, 50)
    blob = _sphere(shape, (14.7, 24.2, 25.5), 5.0, spacing)
    prob = blob * 0.9
    mask, nodules = extract_nodules(prob, _lung(shape) + blob * 890, spacing)
    assert len(nodules) == 1
    nod = nodules[0]
    analytic_volume = 4.0 / 3.0 * math.pi * 5.0**3
    assert nod["volume_mm3"] == pytest.approx(analytic_volume, rel=0.10)
    assert nod["diameter_mm"] == pytest.approx(10.0, rel=0.10)
    assert nod["long_axis_mm"] == pytest.approx(10.0, rel=0.10)
    assert nod["short_axis_mm"] == pytest.approx(10.0, rel=0.10)
    np.testing.assert_allclose(nod["canonical_index_zyx"], (14.7, 24.2, 25.5), atol=0.25)
    assert mask.dtype == np.uint16 and mask.shape == shape
    assert int((mask == 1).sum()) == int(blob.sum()) == nod["voxel_count"]
    assert nod["mean_hu"] == pytest.approx(40.0) and nod["max_hu"] == pytest.approx(40.0)
    assert nod["std_hu"] == pytest.approx(0.0, abs=1e-6)
    assert nod["probability"] == pytest.approx(0.9)


def test_ellipsoid_axes_are_measured_on_the_axial_plane_with_anisotropic_spacing() -> None:
    spacing = (1.25, 0.5, 0.7)
    shape = (24, 50, 60)
    # mm along z, y, x: axial long axis 18 mm (x), short 10 mm (y); the 6 mm in z is not used
    semi = (3.0, 5.0, 9.0)
    blob = _ellipsoid(shape, (12.0, 25.3, 30.2), semi, spacing)
    _, nodules = extract_nodules(blob.astype(np.float32), _lung(shape) + blob * 890, spacing)
    nod = nodules[0]
    assert abs(nod["long_axis_mm"] - 18.0) <= 0.5 * 0.7  # within half a voxel
    assert abs(nod["short_axis_mm"] - 10.0) <= 0.5 * 0.7
    assert nod["mean_diameter_mm"] == pytest.approx(
        (nod["long_axis_mm"] + nod["short_axis_mm"]) / 2, abs=0.051
    )
    assert nod["volume_mm3"] == pytest.approx(4.0 / 3.0 * math.pi * 3 * 5 * 9, rel=0.10)
    assert nod["equivalent_diameter_mm"] == nod["diameter_mm"]
    assert nod["equivalent_diameter_mm"] == pytest.approx(2.0 * (3 * 5 * 9) ** (1 / 3), rel=0.10)


def test_two_blobs_ordered_by_probability_and_small_blob_dropped() -> None:
    spacing = (1.0, 1.0, 1.0)
    shape = (40, 40, 40)
    first_in_scan = _sphere(shape, (10, 10, 10), 4.0, spacing)
    second_in_scan = _sphere(shape, (28, 28, 28), 4.0, spacing)
    tiny = _sphere(shape, (10, 30, 30), 1.0, spacing)  # 7 voxels: 2.4 mm equivalent diameter
    prob = np.zeros(shape, np.float32)
    prob[first_in_scan], prob[second_in_scan], prob[tiny] = 0.7, 0.95, 0.99
    mask, nodules = extract_nodules(prob, _lung(shape), spacing, min_diameter_mm=3.0)
    assert [n["nodule_id"] for n in nodules] == [1, 2]
    assert [n["probability"] for n in nodules] == pytest.approx([0.95, 0.7])
    np.testing.assert_allclose(nodules[0]["canonical_index_zyx"], (28, 28, 28), atol=1e-6)
    assert np.all(mask[second_in_scan] == 1) and np.all(mask[first_in_scan] == 2)
    assert np.all(mask[tiny] == 0)
    # A 2 mm floor keeps the tiny blob, and it is the most probable one.
    _, with_tiny = extract_nodules(prob, _lung(shape), spacing, min_diameter_mm=2.0)
    assert len(with_tiny) == 3 and with_tiny[0]["probability"] == pytest.approx(0.99)
    _, best_one = extract_nodules(prob, _lung(shape), spacing, max_candidates=1)
    assert len(best_one) == 1 and best_one[0]["probability"] == pytest.approx(0.95)


def test_seed_threshold_keeps_only_components_with_a_confident_voxel() -> None:
    spacing = (1.0, 1.0, 1.0)
    shape = (30, 30, 30)
    weak, strong = _sphere(shape, (8, 8, 8), 4.0, spacing), _sphere(shape, (20, 20, 20), 4.0, spacing)
    prob = np.zeros(shape, np.float32)
    prob[weak] = 0.6
    prob[strong] = 0.6
    prob[20, 20, 20] = 0.95
    assert len(extract_nodules(prob, _lung(shape), spacing)[1]) == 2
    _, seeded = extract_nodules(prob, _lung(shape), spacing, seed_threshold=0.9)
    assert len(seeded) == 1
    assert seeded[0]["canonical_index_zyx"][0] == pytest.approx(20, abs=0.1)
    with pytest.raises(ValueError, match="seed_threshold"):
        extract_nodules(prob, _lung(shape), spacing, threshold=0.5, seed_threshold=0.3)


def test_centroid_is_probability_weighted_within_the_peak() -> None:
    prob = np.zeros((5, 5, 12), np.float32)
    prob[1:4, 1:4, 1:6] = 0.8
    prob[1:4, 1:4, 6:10] = 0.9
    prob[1:4, 1:4, 10] = 0.99  # the peak level is (0.8 + 0.99) / 2: the peak is x = 6..10
    _, nodules = extract_nodules(prob, _lung(prob.shape), (1.0, 1.0, 1.0), min_diameter_mm=0)
    expected_x = (0.9 * 9 * (6 + 7 + 8 + 9) + 0.99 * 9 * 10) / (0.9 * 36 + 0.99 * 9)  # 8.04; unweighted 8.0
    assert nodules[0]["canonical_index_zyx"][2] == pytest.approx(expected_x)
    assert nodules[0]["canonical_index_zyx"][:2] == pytest.approx([2.0, 2.0])


def test_centre_stays_on_the_nodule_when_a_vessel_tail_joins_it() -> None:
    spacing = (1.0, 0.7, 0.7)
    shape = (30, 40, 60)
    centre = (15.0, 20.0, 20.0)
    ball = _sphere(shape, centre, 3.75, spacing)  # a 7.5 mm nodule
    z, y, x = np.indices(shape)
    tail = (np.hypot((z - 15) * spacing[0], (y - 20) * spacing[1]) <= 2.0) & (x >= 20) & (x < 55)
    prob = np.zeros(shape, np.float32)
    prob[tail] = 0.55
    dist = np.sqrt(sum(((g - c) * sp) ** 2 for g, c, sp in zip((z, y, x), centre, spacing, strict=True)))
    prob[ball] = np.maximum(prob[ball], 0.98 - 0.1 * dist[ball])
    mask, nodules = extract_nodules(prob, _lung(shape), spacing, threshold=0.366)
    assert len(nodules) == 1 and int((mask > 0).sum()) == int((ball | tail).sum())
    whole = np.nonzero(ball | tail)
    weights = prob[ball | tail] / prob[ball | tail].sum()
    whole_x = float(np.dot(whole[2], weights))
    assert (whole_x - centre[2]) * spacing[2] > 3.75  # the whole component's centroid misses the nodule
    got = np.asarray(nodules[0]["canonical_index_zyx"])
    assert np.linalg.norm((got - centre) * spacing) < 0.5


def test_peak_centre_of_a_uniform_component_is_its_centroid() -> None:
    component = np.zeros((6, 7, 8), bool)
    component[1:4, 2:7, 3:5] = True
    got = peak_centre(np.where(component, 0.7, 0.0), component, (slice(10, 16), slice(0, 7), slice(5, 13)))
    assert got == pytest.approx((12.0, 4.0, 8.5))


def test_probability_score_is_mean_of_top_tenth() -> None:
    values = np.concatenate([np.full(90, 0.55), np.full(10, 0.95)])
    assert probability_score(values) == pytest.approx(0.95)
    assert probability_score(np.array([0.7])) == pytest.approx(0.7)


def test_empty_map_returns_empty_mask_and_no_rows() -> None:
    shape = (20, 30, 30)
    mask, nodules = extract_nodules(np.zeros(shape, np.float32), _lung(shape), (1.0, 1.0, 1.0))
    assert nodules == [] and mask.dtype == np.uint16 and mask.shape == shape and not mask.any()


def test_invalid_inputs_raise_clear_errors() -> None:
    prob = np.zeros((4, 4, 4), np.float32)
    with pytest.raises(ValueError, match="same shape|shape of probability"):
        extract_nodules(prob, np.zeros((4, 4, 5)), (1, 1, 1))
    with pytest.raises(ValueError, match="strictly positive"):
        extract_nodules(prob, prob, (1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="3-D"):
        extract_nodules(prob[0], prob[0], (1, 1, 1))


def test_lung_side_from_lung_labels() -> None:
    spacing = (1.0, 1.0, 1.0)
    shape = (20, 20, 40)
    lungs = np.zeros(shape, np.uint8)
    lungs[:, :, 2:18] = 1  # patient right = small x on the canonical LPS grid
    lungs[:, :, 22:38] = 2
    prob = np.zeros(shape, np.float32)
    prob[_sphere(shape, (10, 10, 9), 3.0, spacing)] = 0.9
    prob[_sphere(shape, (10, 10, 30), 3.0, spacing)] = 0.8
    prob[8:12, 8:12, 18:22] = 0.7  # between the lungs, outside both masks: falls back to a tie
    _, nodules = extract_nodules(prob, _lung(shape), spacing, lung_labels_zyx=lungs, min_diameter_mm=0)
    assert [n["lung_side"] for n in nodules] == ["right", "left", "unknown"]
    _, no_labels = extract_nodules(prob, _lung(shape), spacing)
    assert {n["lung_side"] for n in no_labels} == {"unknown"}


# ---------------------------------------------------------------------------------------------- density


def _ct_with_blob(core_hu: float, rim_hu: float | None, *, seed: int = 0):
    """Synthetic CT around one nodule of radius 6 mm (core radius 2.5 mm when a rim is given).

    The HU image is blurred (partial volume, sigma 0.6 mm) and noisy (sigma 20 HU), like a thin-slice CT.
    """
    spacing = (0.8, 0.7, 0.7)
    shape = (30, 36, 36)
    centre = (15.0, 18.0, 18.0)
    outer = _sphere(shape, centre, 6.0, spacing)
    hu = _lung(shape)
    if rim_hu is None:
        hu[outer] = core_hu
    else:
        hu[outer] = rim_hu
        hu[_sphere(shape, centre, 2.5, spacing)] = core_hu
    hu = ndimage.gaussian_filter(hu, sigma=[0.6 / s for s in spacing])
    hu += np.random.default_rng(seed).normal(0.0, 20.0, shape).astype(np.float32)
    return outer.astype(np.float32), hu, spacing


@pytest.mark.parametrize(
    ("core_hu", "rim_hu", "expected"),
    [
        (40.0, None, "solid"),
        (-600.0, None, "ground-glass"),
        (20.0, -600.0, "part-solid"),
        (600.0, None, "calcified"),
    ],
)
def test_density_type_of_each_kind(core_hu: float, rim_hu: float | None, expected: str) -> None:
    prob, hu, spacing = _ct_with_blob(core_hu, rim_hu)
    _, nodules = extract_nodules(prob, hu, spacing)
    assert len(nodules) == 1
    nod = nodules[0]
    assert nod["type"] == expected
    if expected == "ground-glass":
        assert nod["solid_component_mm"] == 0.0
    elif expected == "part-solid":
        assert nod["solid_component_mm"] == pytest.approx(5.0, rel=0.25)
        assert nod["solid_component_mm"] < 0.6 * nod["mean_diameter_mm"]
    else:
        assert nod["solid_component_mm"] == nod["mean_diameter_mm"]


def test_solid_nodule_stays_solid_with_a_generous_mask() -> None:
    prob, hu, spacing = _ct_with_blob(40.0, None, seed=1)
    generous = ndimage.binary_dilation(prob > 0.5, structure=np.ones((3, 3, 3), bool))
    assert classify_density(hu, generous, spacing)[0] == "solid"
    # ...while a mask two voxels too generous on a 12 mm nodule reads as a thin GGO halo.
    halo = ndimage.binary_dilation(generous, structure=np.ones((3, 3, 3), bool), iterations=2)
    hu_halo = np.where(halo & ~generous, -600.0, hu)
    assert classify_density(hu_halo, halo, spacing)[0] == "part-solid"


def test_density_thresholds_are_validated_and_used() -> None:
    with pytest.raises(ValueError, match="solid_hu"):
        DensityThresholds(solid_hu=300.0)
    prob, hu, spacing = _ct_with_blob(-600.0, None)
    # Calling -650 HU "solid" turns the GGO into a solid nodule.
    assert (
        classify_density(hu, prob > 0.5, spacing, thresholds=DensityThresholds(solid_hu=-650.0))[0] == "solid"
    )


# ---------------------------------------------------------------------------------------------- coordinates


@pytest.mark.parametrize("orientation", ["RAS", "RPI", "ASL"])
def test_world_and_original_index_round_trip(orientation: str) -> None:
    base = sitk.Image([30, 24, 18], sitk.sitkInt16)
    base.SetSpacing((0.7, 0.9, 1.6))
    original = sitk.DICOMOrient(base, orientation)
    original.SetOrigin((-123.4, 56.7, -289.1))
    assert (
        sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(original.GetDirection()) == orientation
    )
    size = original.GetSize()
    ijk = (size[0] // 2 - 3, size[1] // 2 + 2, size[2] // 2 - 1)
    array = np.zeros(size[::-1], np.float32)
    array[ijk[2] - 1 : ijk[2] + 2, ijk[1] - 1 : ijk[1] + 2, ijk[0] - 1 : ijk[0] + 2] = 0.9
    prob_image = sitk.GetImageFromArray(array)
    prob_image.CopyInformation(original)

    canonical = sitk.DICOMOrient(prob_image, "LPS")
    prob_zyx = sitk.GetArrayFromImage(canonical)
    _, nodules = extract_nodules(
        prob_zyx, np.zeros_like(prob_zyx), canonical.GetSpacing()[::-1], min_diameter_mm=0
    )
    assert len(nodules) == 1
    rows = add_original_indices(add_world_coordinates(nodules, canonical), original)
    row = rows[0]
    expected = original.TransformIndexToPhysicalPoint(ijk)
    lps = (row["center_lps_x_mm"], row["center_lps_y_mm"], row["center_lps_z_mm"])
    np.testing.assert_allclose(lps, expected, atol=0.01)
    ras = (row["center_ras_x_mm"], row["center_ras_y_mm"], row["center_ras_z_mm"])
    np.testing.assert_allclose(ras, (-expected[0], -expected[1], expected[2]), atol=0.01)
    np.testing.assert_allclose((row["voxel_i"], row["voxel_j"], row["voxel_k"]), ijk, atol=0.01)
    assert rows[0] is nodules[0]  # rows are updated in place (and returned)


def test_world_coordinates_refuse_a_non_canonical_image_and_missing_centres() -> None:
    ras = sitk.DICOMOrient(sitk.Image([4, 4, 4], sitk.sitkUInt8), "RAS")
    rows = [{"canonical_index_zyx": (1.0, 1.0, 1.0)}]
    with pytest.raises(ValueError, match="LPS"):
        add_world_coordinates(rows, ras)
    with pytest.raises(KeyError, match="add_world_coordinates"):
        add_original_indices(rows, ras)


# ---------------------------------------------------------------------------------------------- speed


@pytest.mark.slow
def test_400_cubed_map_with_200_blobs() -> None:
    """A large map with many blobs: every blob becomes one labelled candidate (speed is `make bench`'s job)."""
    rng = np.random.default_rng(0)
    shape = (400, 400, 400)
    prob = np.zeros(shape, np.float32)
    hu = np.full(shape, -850, np.int16)
    for centre in rng.integers(10, 390, size=(200, 3)):
        box = tuple(slice(c - 8, c + 9) for c in centre)
        zz, yy, xx = np.ogrid[box]
        dist = np.sqrt((zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2)
        prob[box] = np.maximum(
            prob[box], rng.uniform(0.6, 1.0) / (1 + np.exp(2 * (dist - rng.uniform(1.5, 6))))
        )
        hu[box] = np.where(dist < 4, 40, hu[box])
    mask, nodules = extract_nodules(prob, hu, (0.8, 0.8, 0.8), max_candidates=300)
    assert 100 < len(nodules) <= 200 and int(mask.max()) == len(nodules)


# ---------------------------------------------------------------------------------------------- splitting


def test_touching_spheres_split_only_when_asked() -> None:
    spacing = (0.8, 0.7, 0.7)
    shape = (30, 40, 50)
    left = _sphere(shape, (15.0, 20.0, 18.0), 5.0, spacing)
    right = _sphere(shape, (15.0, 20.0, 18.0 + 9.0 / 0.7), 5.0, spacing)  # centres 9 mm apart: neck 2.2 mm
    assert ndimage.label(left | right, structure=np.ones((3, 3, 3)))[1] == 1
    prob = np.zeros(shape, np.float32)
    prob[left] = 0.8
    prob[right] = 0.9
    hu = _lung(shape) + (left | right) * 890
    assert len(extract_nodules(prob, hu, spacing)[1]) == 1
    mask, nodules = extract_nodules(prob, hu, spacing, split_touching=True)
    assert len(nodules) == 2
    assert [n["probability"] for n in nodules] == pytest.approx([0.9, 0.8], abs=0.02)
    for nod, centre_x in zip(nodules, (18.0 + 9.0 / 0.7, 18.0), strict=True):
        assert nod["canonical_index_zyx"][2] == pytest.approx(centre_x, abs=1.0)
        assert 8.5 < nod["diameter_mm"] < 10.5
    assert int((mask > 0).sum()) == int((left | right).sum())


def test_lobulated_nodule_is_not_split() -> None:
    spacing = (0.8, 0.7, 0.7)
    shape = (30, 40, 40)
    body = _sphere(shape, (15.0, 20.0, 20.0), 5.0, spacing)
    lobe = _sphere(shape, (15.0, 20.0, 20.0 + 5.0 / 0.7), 2.5, spacing)
    elongated = _ellipsoid(shape, (15.0, 20.0, 20.0), (2.5, 2.5, 9.0), spacing)
    for blob in (body | lobe, elongated):
        _, nodules = extract_nodules(blob.astype(np.float32), _lung(shape), spacing, split_touching=True)
        assert len(nodules) == 1


def test_lung_zones_of_several_nodules_equal_one_at_a_time() -> None:
    from pipelines.nodules.extract import lung_z_extent, lung_zone, lung_zones

    lungs = np.zeros((30, 8, 8), np.uint8)
    lungs[3:28, :, :4] = 1  # right lung: slices 3..27
    lungs[10:22, :, 4:] = 2  # left lung: slices 10..21
    assert lung_z_extent(lungs, (1,)) == (3, 27) and lung_z_extent(lungs, (2,)) == (10, 21)
    assert lung_z_extent(lungs, (3,)) is None
    nodules = [
        {"canonical_index_zyx": [25.0, 4, 2], "lung_side": "right"},  # (25-3)/24 = 0.92 -> upper
        {"canonical_index_zyx": [12.0, 4, 6], "lung_side": "left"},  # (12-10)/11 = 0.18 -> lower
        {"canonical_index_zyx": [15.5, 4, 4], "lung_side": "unknown"},  # both lungs: (15.5-3)/24 -> middle
        {"canonical_index_zyx": [18.0, 4, 6], "lung_side": "left"},  # 8/11 = 0.73 -> upper
    ]
    zones = lung_zones(lungs, nodules)
    assert zones == ["upper", "lower", "middle", "upper"]
    assert zones == [lung_zone(lungs, n["canonical_index_zyx"], n["lung_side"]) for n in nodules]
    assert lung_zones(np.zeros_like(lungs), nodules[:1]) == [""]
