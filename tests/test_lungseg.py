"""Tests for the classical lung segmentation (pipelines.lungs.lungseg).

Synthetic tests build an analytic chest on the canonical [z, y, x] LPS grid (x toward patient Left, so the
right lung is at smaller x). Real-scan tests use ../shared/data/ct and skip when it is absent.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage as ndi

from pipelines.lungs.lungseg import lung_side_at, lung_volumes_ml, segment_lungs


@dataclass
class Phantom:
    hu: np.ndarray
    spacing: tuple[float, float, float]
    right: np.ndarray
    left: np.ndarray
    trachea: np.ndarray
    gas: np.ndarray
    nodule: np.ndarray
    nodule_centre: tuple[int, int, int]


def make_chest(
    spacing: tuple[float, float, float] = (4.0, 2.5, 2.5),
    extent_mm: tuple[float, float, float] = (200.0, 250.0, 320.0),
    *,
    left_lung: bool = True,
    noise_hu: float = 40.0,
    seed: int = 0,
) -> Phantom:
    """Analytic chest: body ellipse in air, table below, two -850 HU lungs touching at an anterior junction,
    trachea and main bronchi, a gas bubble below the diaphragm, a +40 HU juxta-pleural nodule, vessels."""
    shape = tuple(int(round(e / s)) for e, s in zip(extent_mm, spacing))
    z, y, x = (np.arange(n, dtype=np.float32) * s for n, s in zip(shape, spacing))
    z, y, x = z[:, None, None], y[None, :, None], x[None, None, :]
    xm, ym, z0 = extent_mm[2] / 2, 110.0, 110.0  # body centre x, lung centre y, lung centre z (mm)
    hu = np.full(shape, -1000.0, dtype=np.float32)
    body = np.broadcast_to(((x - xm) / 140) ** 2 + ((y - 115) / 100) ** 2 <= 1, shape)
    hu[body] = 40.0
    hu[np.broadcast_to((y >= 225) & (y <= 235) & (np.abs(x - xm) < 150), shape)] = 300.0  # table
    lungs = {}
    for name, sign in (("right", -1), ("left", 1)):
        ell = ((x - (xm + sign * 62)) / 50) ** 2 + ((y - ym) / 70) ** 2 + ((z - z0) / 70) ** 2 <= 1
        lungs[name] = np.broadcast_to(ell, shape).copy()
    bridge = (np.abs(x - xm) < 14) & (y > ym - 70) & (y < ym - 58) & (np.abs(z - z0) < 35)
    lungs["right"] |= np.broadcast_to(bridge & (x < xm), shape)
    lungs["left"] |= np.broadcast_to(bridge & (x >= xm), shape)
    if not left_lung:
        lungs["left"][:] = False
    for mask in lungs.values():
        hu[mask] = -850.0
    rng = np.random.default_rng(seed)
    for _ in range(40):  # vessels: small soft-tissue balls inside the lungs
        cz, cy, cx = (
            rng.uniform(z0 - 40, z0 + 40),
            rng.uniform(ym - 40, ym + 40),
            xm + rng.choice([-1, 1]) * 62,
        )
        hu[((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2 <= 9) & (lungs["right"] | lungs["left"])] = 40.0
    zc = z0 + 25  # carina
    trachea = np.broadcast_to(((x - xm) ** 2 + (y - ym) ** 2 <= 64) & (z >= zc), shape).copy()
    for sign in (-1, 1):  # main bronchi from the carina into each lung
        for t in np.linspace(0, 1, 30):
            px, pz = xm + sign * 40 * t, zc - 25 * t
            trachea |= (x - px) ** 2 + (y - ym) ** 2 + (z - pz) ** 2 <= 25
    trachea &= ~(lungs["right"] | lungs["left"])
    hu[trachea] = -1000.0
    gas = ((x - xm - 50) ** 2 + (y - ym + 20) ** 2 + (z - 22) ** 2 <= 13**2) & body
    hu[gas] = -1000.0
    nc_mm = (z0, ym, xm - 112 + 4)  # right lung's lateral pleura, 4 mm inside the lung
    nodule = (x - nc_mm[2]) ** 2 + (y - nc_mm[1]) ** 2 + (z - nc_mm[0]) ** 2 <= 36
    hu[nodule] = 40.0
    hu += rng.normal(0, noise_hu, shape).astype(np.float32)
    centre = tuple(int(round(c / s)) for c, s in zip(nc_mm, spacing))
    return Phantom(
        hu.astype(np.int16),
        spacing,
        lungs["right"],
        lungs["left"],
        trachea,
        gas,
        nodule,
        centre,  # type: ignore[arg-type]
    )


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))


@pytest.fixture(scope="module")
def chest() -> Phantom:
    return make_chest()


@pytest.fixture(scope="module")
def chest_labels(chest: Phantom) -> np.ndarray:
    return segment_lungs(chest.hu, chest.spacing)


def test_synthetic_dice_and_sides(chest: Phantom, chest_labels: np.ndarray) -> None:
    assert chest_labels.dtype == np.uint8 and chest_labels.shape == chest.hu.shape
    assert dice(chest_labels == 1, chest.right) > 0.95
    assert dice(chest_labels == 2, chest.left) > 0.95
    xs = np.arange(chest.hu.shape[2])
    cx = [(xs * (chest_labels == k).sum(axis=(0, 1))).sum() / (chest_labels == k).sum() for k in (1, 2)]
    assert cx[0] < chest.hu.shape[2] / 2 < cx[1]  # right lung at smaller x (patient right)


def test_synthetic_excludes_trachea_gas_table_and_outside(chest: Phantom, chest_labels: np.ndarray) -> None:
    assert (chest_labels[chest.trachea] > 0).mean() < 0.05
    assert not (chest_labels[chest.gas] > 0).any()
    assert not (chest_labels[chest.hu < -980] > 0).any() or (chest_labels[chest.hu < -980] > 0).mean() < 0.01
    assert not chest_labels[:, -8:, :].any()  # table and the air gap


def test_synthetic_juxta_pleural_nodule_inside(chest: Phantom, chest_labels: np.ndarray) -> None:
    inner = chest.nodule & ndi.binary_erosion(chest.right)  # nodule voxels at least one voxel inside the lung
    assert inner.sum() > 10
    assert (chest_labels[inner] == 1).mean() > 0.9
    without_closing = segment_lungs(chest.hu, chest.spacing, close_radius_mm=0.0)
    assert (without_closing[inner] == 1).mean() < 0.2  # the closing is what keeps it
    assert chest_labels[chest.nodule_centre] == 1
    assert lung_side_at(chest_labels, chest.nodule_centre, spacing_zyx=chest.spacing) == "right"


def _axes(ph: Phantom) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    z, y, x = (np.arange(n, dtype=np.float32) * s for n, s in zip(ph.hu.shape, ph.spacing))
    return z[:, None, None], y[None, :, None], x[None, None, :]


def test_couch_foam_core_is_not_lung() -> None:
    """A carbon-fibre couch wider than the field of view: dense shells around a lung-dense (-870 HU) foam
    core 10 mm thick that runs from one image border to the other (so it is not outside air)."""
    ph = make_chest(noise_hu=20.0)
    _, y, _ = _axes(ph)
    hu = ph.hu.copy()
    hu[np.broadcast_to((y >= 221) & (y <= 239), hu.shape)] = 300
    core = np.broadcast_to((y >= 224) & (y <= 234), hu.shape)
    hu[core] = -870
    labels = segment_lungs(hu, ph.spacing)
    assert not labels[core].any()
    assert dice(labels == 1, ph.right) > 0.95 and dice(labels == 2, ph.left) > 0.95


def test_small_lungs_crowded_with_vessels_are_still_lungs() -> None:
    """Vessels every 12 mm leave no 10 mm ball of air between them (a small patient, a dense phantom): the
    thin-sheet rule (couch foam) must measure the lung with its vessels filled, not reject both lungs.
    A validation phantom lost its whole lung mask, and with it every nodule, this way."""
    ph = make_chest(noise_hu=10.0)
    _, y, x = _axes(ph)
    hu = ph.hu.copy()
    grid = ((np.abs((x % 12.0) - 6.0) < 2.5) & (np.abs((y % 12.0) - 6.0) < 2.5)).astype(bool)
    vessels = np.broadcast_to(grid, hu.shape) & (ph.right | ph.left)
    hu[vessels] = 40.0
    air = (ph.right | ph.left) & ~vessels
    assert ndi.distance_transform_edt(air, sampling=ph.spacing).max() < 10.0  # the situation described
    labels = segment_lungs(hu, ph.spacing)
    assert dice(labels == 1, ph.right) > 0.9 and dice(labels == 2, ph.left) > 0.9


def test_diaphragm_dome_is_not_filled_but_a_nodule_is() -> None:
    """The liver dome rising into the lung base shows as a hole in axial slices; it is not lung. A solid
    nodule in the middle of the lung is also a hole, and is lung."""
    ph = make_chest(noise_hu=20.0)
    z, y, x = _axes(ph)
    xm = ph.hu.shape[2] * ph.spacing[2] / 2
    hu = ph.hu.copy()
    dome = np.broadcast_to((x - (xm - 62)) ** 2 + (y - 110) ** 2 + (z - 10) ** 2 <= 55**2, hu.shape)
    hu[dome & ph.right] = 40
    nodule = np.broadcast_to((x - (xm + 62)) ** 2 + (y - 110) ** 2 + (z - 110) ** 2 <= 8**2, hu.shape)
    hu[nodule] = 40
    labels = segment_lungs(hu, ph.spacing)
    enclosed = dome & ph.right & (np.broadcast_to(z, hu.shape) > 56)
    assert enclosed.sum() > 20
    assert (labels[enclosed] > 0).mean() < 0.2
    assert (labels[nodule] == 2).mean() > 0.95
    assert dice(labels == 1, ph.right & ~dome) > 0.95


def test_mirrored_input_swaps_sides(chest: Phantom, chest_labels: np.ndarray) -> None:
    mirrored = segment_lungs(chest.hu[:, :, ::-1], chest.spacing)[:, :, ::-1]
    swapped = np.choose(chest_labels, [0, 2, 1]).astype(np.uint8)
    assert (mirrored != swapped).mean() < 1e-3


@pytest.mark.parametrize("orient", ["RAS", "LPI", "PIR"])
def test_reoriented_input_gives_same_labels(chest: Phantom, chest_labels: np.ndarray, orient: str) -> None:
    img = sitk.GetImageFromArray(chest.hu)
    img.SetSpacing(chest.spacing[::-1])
    stored = sitk.DICOMOrient(img, orient)  # as another scanner would have written it
    canon = sitk.DICOMOrient(stored, "LPS")
    arr = sitk.GetArrayFromImage(canon)
    assert not np.array_equal(sitk.GetArrayFromImage(stored).shape + (0,), arr.shape + (1,))
    labels = segment_lungs(arr, canon.GetSpacing()[::-1])
    np.testing.assert_array_equal(labels, chest_labels)


def test_single_lung_pneumonectomy() -> None:
    ph = make_chest(left_lung=False)
    labels = segment_lungs(ph.hu, ph.spacing)
    assert (labels == 2).sum() == 0
    assert dice(labels == 1, ph.right) > 0.95


def test_thin_slab_two_slices(chest: Phantom) -> None:
    k = int(round(110.0 / chest.spacing[0]))
    labels = segment_lungs(chest.hu[k : k + 2], chest.spacing)
    assert labels.shape == (2,) + chest.hu.shape[1:]
    assert dice(labels == 1, chest.right[k : k + 2]) > 0.93
    assert dice(labels == 2, chest.left[k : k + 2]) > 0.93


def test_lung_bases_only_with_gas(chest: Phantom) -> None:
    top = int(round(70.0 / chest.spacing[0]))  # abdominal scan: the bottom of the lungs and the gas bubble
    labels = segment_lungs(chest.hu[:top], chest.spacing)
    assert dice(labels == 1, chest.right[:top]) > 0.9
    assert dice(labels == 2, chest.left[:top]) > 0.9
    assert not labels[chest.gas[:top]].any()


def test_crop_without_outside_air(chest: Phantom) -> None:
    sp = chest.spacing  # lungs cut by the in-plane border and no air outside the body (a cropped scan)
    crop = (slice(None), slice(int(50 / sp[1]), int(170 / sp[1])), slice(int(40 / sp[2]), int(280 / sp[2])))
    cropped = segment_lungs(chest.hu[crop], sp)
    assert dice(cropped == 1, chest.right[crop]) > 0.93 and dice(cropped == 2, chest.left[crop]) > 0.93


@pytest.mark.slow
def test_fine_anisotropic_spacing() -> None:
    ph = make_chest(spacing=(5.0, 0.8, 0.8), extent_mm=(200.0, 250.0, 320.0), seed=1)
    labels = segment_lungs(ph.hu, ph.spacing)
    assert dice(labels == 1, ph.right) > 0.95 and dice(labels == 2, ph.left) > 0.95


def test_no_lungs_in_air_or_soft_tissue() -> None:
    assert not segment_lungs(np.full((3, 40, 40), -1000, np.int16), (5.0, 5.0, 5.0)).any()
    assert not segment_lungs(np.full((3, 40, 40), 40, np.int16), (5.0, 5.0, 5.0)).any()


def test_lung_side_at_and_volumes() -> None:
    labels = np.zeros((5, 20, 20), np.uint8)
    labels[:, 5:15, 2:8] = 1
    labels[:, 5:15, 12:18] = 2
    assert lung_side_at(labels, (2, 10, 4)) == "right"
    assert lung_side_at(labels, (2.2, 9.6, 13.4)) == "left"
    assert lung_side_at(labels, (2, 10, 9), spacing_zyx=(1, 1, 1), max_distance_mm=2.5) == "right"
    assert lung_side_at(labels, (2, 10, 10), spacing_zyx=(1, 1, 1), max_distance_mm=2.5) == "left"
    assert lung_side_at(labels, (2, 10, 10), spacing_zyx=(1, 2, 2), max_distance_mm=3.0) == "outside"
    assert lung_side_at(labels, (2, 0, 10)) == "outside"
    assert lung_side_at(labels, (9, 10, 4)) == "outside"
    vols = lung_volumes_ml(labels, (2.0, 1.0, 1.0))
    assert vols == {"right_lung_ml": 0.6, "left_lung_ml": 0.6, "total_lung_ml": 1.2}


def test_invalid_inputs() -> None:
    with pytest.raises(ValueError, match="3D"):
        segment_lungs(np.zeros((4, 4)), (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="strictly positive"):
        segment_lungs(np.zeros((2, 4, 4)), (1.0, 0.0, 1.0))


@pytest.mark.slow
def test_full_size_512x512x300() -> None:
    """A full-size fine-grid volume (speed is measured by ``make bench``, not here)."""
    ph = make_chest(spacing=(1.0, 0.625, 0.625), extent_mm=(300.0, 320.0, 320.0), noise_hu=60.0)
    assert ph.hu.shape == (300, 512, 512)
    labels = segment_lungs(ph.hu, ph.spacing)
    assert labels.shape == ph.hu.shape
    assert dice(labels == 1, ph.right) > 0.95 and dice(labels == 2, ph.left) > 0.95


# ---------------------------------------------------------------------------------------------- real scans


def _read_canonical(path: Path) -> tuple[np.ndarray, tuple[float, float, float], sitk.Image]:
    if path.is_dir():
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(path)))
        img = reader.Execute()
    else:
        img = sitk.ReadImage(str(path))
    img = sitk.DICOMOrient(img, "LPS")
    sp = img.GetSpacing()[::-1]
    return sitk.GetArrayFromImage(img), (sp[0], sp[1], sp[2]), img


def test_real_lidc_two_slices_matches_lungmask_counts(shared_data: Path) -> None:
    hu, sp, _ = _read_canonical(shared_data / "ct" / "lidc_two_slices_dicom")
    counts = np.bincount(segment_lungs(hu, sp).ravel(), minlength=3)
    assert abs(counts[1] / 64752 - 1) < 0.05  # lungmask R231: 64,752 right
    assert abs(counts[2] / 36536 - 1) < 0.05  # and 36,536 left lung voxels


def test_real_abdomen_lung_bases_dice(shared_data: Path) -> None:
    hu, sp, img = _read_canonical(shared_data / "ct" / "totalseg_abdomen_ct_3mm.nii.gz")
    ref_img = sitk.DICOMOrient(
        sitk.ReadImage(str(shared_data / "ct" / "totalseg_abdomen_ct_3mm_reference_seg.nii.gz")), "LPS"
    )
    ref = sitk.GetArrayFromImage(ref_img)
    right_ref, left_ref = np.isin(ref, [12, 13, 14]), np.isin(ref, [10, 11])
    xs = np.nonzero(right_ref)[2].mean(), np.nonzero(left_ref)[2].mean()
    assert xs[0] < xs[1]  # TotalSegmentator v2: 10/11 left lobes, 12-14 right lobes
    labels = segment_lungs(hu, sp)
    assert dice(labels == 1, right_ref) > 0.93
    assert dice(labels == 2, left_ref) > 0.92


def test_real_upper_abdomen_dicom_has_no_lung(shared_data: Path) -> None:
    folder = shared_data / "ct" / "totalseg_abdomen_ct_dicom"
    hu, sp, _ = _read_canonical(folder)
    ref = sitk.GetArrayFromImage(
        sitk.ReadImage(str(folder.parent / "totalseg_abdomen_ct_dicom_reference_seg.nii.gz"))
    )
    assert not np.isin(ref, [10, 11, 12, 13, 14]).any()
    vols = lung_volumes_ml(segment_lungs(hu, sp), sp)
    assert vols["total_lung_ml"] < 2.0  # stomach and bowel gas are not lung


def test_real_chest_crop_both_lungs_heart_and_trachea(shared_data: Path) -> None:
    hu, sp, img = _read_canonical(shared_data / "ct" / "totalseg_chest_ct_crop_1p5mm.nii.gz")
    labels = segment_lungs(hu, sp)
    vols = lung_volumes_ml(labels, sp)
    assert vols["right_lung_ml"] > 600 and vols["left_lung_ml"] > 600
    xs = np.arange(hu.shape[2])
    cx = [(xs * (labels == k).sum(axis=(0, 1))).sum() / (labels == k).sum() for k in (1, 2)]
    assert cx[0] < cx[1]
    heart_img = sitk.ReadImage(str(shared_data / "ct" / "totalseg_chest_ct_crop_1p5mm_heart.nii.gz"))
    heart = (
        sitk.GetArrayFromImage(sitk.Resample(heart_img, img, sitk.Transform(), sitk.sitkNearestNeighbor)) > 0
    )
    assert heart.sum() > 1000 and (labels[heart] > 0).mean() < 0.01  # closing does not swallow the heart
    # the trachea: in the top slice, the largest pure-air blob whose centre lies in the middle third in x
    blobs, n = ndi.label(hu[-1] < -950)
    centres = np.array(ndi.center_of_mass(np.ones_like(blobs), blobs, range(1, n + 1)))
    sizes = np.bincount(blobs.ravel())[1:]
    sizes[np.abs(centres[:, 1] - hu.shape[2] / 2) > hu.shape[2] / 6] = 0
    lumen = blobs == int(np.argmax(sizes)) + 1
    assert lumen.sum() > 50 and (labels[-1][lumen] > 0).mean() < 0.1
