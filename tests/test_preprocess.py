"""Preprocessing maths: crop box, resampling to the network grid and its exact inverse."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from pipelines.imaging import filesys, io, preprocess
from pipelines.imaging.preprocess import CaseGeometry


def _geometry(shape_zyx, spacing_zyx, box, target):
    img = sitk.Image([shape_zyx[2], shape_zyx[1], shape_zyx[0]], sitk.sitkInt16)
    img.SetSpacing(spacing_zyx[::-1])
    hdr = io.ImageHeader.of(img)
    crop_shape = tuple(b - a for a, b in box)
    net_shape, net_spacing = preprocess.network_shape_for(crop_shape, spacing_zyx, target)
    return CaseGeometry(hdr, hdr, box, net_shape, net_spacing)


def test_lung_crop_box_adds_margin_in_mm_and_clips():
    lungs = np.zeros((40, 50, 60), np.uint8)
    lungs[10:20, 5:45, 30:59] = 1
    box = preprocess.lung_crop_box(lungs, (2.0, 1.0, 0.5), margin_mm=4.0)
    assert box == ((8, 22), (1, 49), (22, 60))
    assert preprocess.lung_crop_box(np.zeros((4, 4, 4), np.uint8), (1, 1, 1), margin_mm=3) is None


def test_network_shape_covers_the_same_physical_box():
    shape, spacing = preprocess.network_shape_for((100, 200, 300), (2.5, 0.7, 0.7), 1.0)
    assert shape == (250, 140, 210)
    np.testing.assert_allclose(np.multiply(shape, spacing), (250.0, 140.0, 210.0))


def test_resample_round_trip_keeps_a_sphere_in_place():
    z, y, x = np.mgrid[:30, :64, :64]
    sphere = ((z - 15) ** 2 * 2.5**2 + ((y - 30) ** 2 + (x - 34) ** 2) * 0.7**2 < 8**2).astype(np.float32)
    geo = _geometry(sphere.shape, (2.5, 0.7, 0.7), ((0, 30), (0, 64), (0, 64)), 1.0)
    net = preprocess.resample(sphere, geo.network_shape)
    back = preprocess.restore_to_canonical(net, geo)
    c0 = np.array(np.nonzero(sphere > 0.5)).mean(axis=1)
    c1 = np.array(np.nonzero(back > 0.5)).mean(axis=1)
    np.testing.assert_allclose(c0, c1, atol=0.15)
    # the centre maps between grids consistently
    cn = np.array(np.nonzero(net.numpy() > 0.5)).mean(axis=1)
    np.testing.assert_allclose(geo.network_to_canonical_index(cn), c0, atol=0.3)
    np.testing.assert_allclose(
        geo.canonical_to_network_index(geo.network_to_canonical_index(cn)), cn, atol=1e-9
    )


def test_restore_pastes_into_the_crop_only():
    geo = _geometry((20, 20, 20), (1.0, 1.0, 1.0), ((5, 15), (2, 12), (0, 10)), 2.0)
    assert geo.network_shape == (5, 5, 5)
    full = preprocess.restore_to_canonical(torch.ones(geo.network_shape), geo)
    assert full.shape == (20, 20, 20)
    assert full[5:15, 2:12, 0:10].min() == 1.0 and full.sum() == 1000


def test_scale_hu_clips_and_scales():
    t = torch.tensor([-2000.0, -1000.0, -250.0, 500.0, 3000.0])
    np.testing.assert_allclose(preprocess.scale_hu(t, hu_min=-1000, hu_max=500), [0, 0, 0.5, 1, 1])


def test_check_ct_units_refuses_raw_stored_values():
    raw = np.random.default_rng(0).integers(0, 4096, (16, 32, 32)).astype(np.float32)
    with pytest.raises(filesys.ImageReadError, match="scan.nii.gz.*not Hounsfield"):
        preprocess.check_ct_units(raw, path="scan.nii.gz")
    preprocess.check_ct_units(raw - 1024, path="ok")


@pytest.mark.parametrize(
    ("pixel", "dtype"),
    [(sitk.sitkInt16, np.int16), (sitk.sitkUInt8, np.int16), (sitk.sitkFloat32, np.float32)],
)
def test_load_scan_keeps_integer_ct_as_int16(pixel: int, dtype: type) -> None:
    """The full-resolution ``hu`` copy is int16 for integer scans (half the memory), float32 otherwise."""
    from pipelines.imaging.transforms import LoadScand

    arr = np.full((6, 7, 8), -1000, dtype=np.int16)
    arr[2:4, 2:5, 2:6] = 40
    img = sitk.Cast(sitk.GetImageFromArray(arr), pixel) if pixel != sitk.sitkUInt8 else None
    if img is None:  # uint8 cannot hold HU: a tiny positive image only checks the dtype choice
        img = sitk.GetImageFromArray(np.zeros((6, 7, 8), dtype=np.uint8))
    img.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))  # RAS on disk: the canonical copy is flipped
    out = LoadScand(modality="mri")({"image": img})
    assert out["hu"].dtype == dtype and out["image"] is out["hu"]
    expected = sitk.GetArrayFromImage(sitk.DICOMOrient(img, "LPS"))
    np.testing.assert_array_equal(out["hu"], expected.astype(dtype))


def test_network_world_mapping_round_trips_and_lands_on_the_canonical_voxel() -> None:
    """CaseGeometry's world <-> network-grid maps (hard negatives, classifier mining) agree with SimpleITK."""
    img = sitk.Image([60, 50, 40], sitk.sitkInt16)
    img.SetSpacing((0.7, 0.9, 2.5))
    img.SetOrigin((-120.0, 35.0, -310.0))
    hdr = io.ImageHeader.of(img)
    box = ((4, 36), (3, 47), (10, 58))
    net_shape, net_spacing = preprocess.network_shape_for((32, 44, 48), (2.5, 0.9, 0.7), 1.0)
    geom = CaseGeometry(hdr, hdr, box, net_shape, net_spacing)
    net = np.array([[0.0, 0.0, 0.0], [10.3, 7.5, 20.0], [net_shape[0] - 1.0, net_shape[1] - 1.0, 3.0]])
    world = geom.network_to_world(net)
    assert np.allclose(geom.world_to_network(world), net, atol=1e-6)
    canon = geom.network_to_canonical_index(net[1])
    expected = img.TransformContinuousIndexToPhysicalPoint([float(v) for v in canon[::-1]])
    assert np.allclose(world[1], expected, atol=1e-6)


@pytest.mark.parametrize("channels", [None, 3])
def test_resample_with_z_unchanged_equals_trilinear(channels):
    """The slice-by-slice bilinear shortcut (z size unchanged) gives torch's trilinear values to float32
    rounding (the two kernels may add in another order: at most one unit in the last place here)."""
    gen = torch.Generator().manual_seed(7)
    shape = (6, 13, 17) if channels is None else (channels, 6, 13, 17)
    x = torch.rand(shape, generator=gen)
    got = preprocess.resample(x, (6, 20, 9))
    ref = torch.nn.functional.interpolate(
        x[None, None] if channels is None else x[None], size=(6, 20, 9), mode="trilinear", align_corners=False
    )
    ref = ref[0, 0] if channels is None else ref[0]
    assert got.shape == ref.shape and got.is_contiguous()
    assert float((got - ref).abs().max()) <= 2.5e-7
    # a z change still interpolates along z
    assert preprocess.resample(x, (9, 20, 9)).shape[-3] == 9
