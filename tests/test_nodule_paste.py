"""On-the-fly nodule pasting for training: where the nodules go, what they look like, what stays untouched."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from pipelines.phantom.nodules import Nodule, design_nodule
from pipelines.training.paste import RandPasteNodulesd, paste_nodules


def _patch(seed: int = 0, shape: tuple[int, int, int] = (64, 64, 64)) -> tuple[np.ndarray, np.ndarray]:
    """A lung block (-850 HU, noise 30) with a chest wall at the x=0 side and a vessel along z."""
    rng = np.random.default_rng(seed)
    hu = np.full(shape, -850.0, dtype=np.float32)
    lungs = np.ones(shape, dtype=np.uint8)
    hu[:, :, :10] = 40.0  # chest wall
    lungs[:, :, :10] = 0
    zz, yy, xx = np.indices(shape)
    vessel = (yy - 40) ** 2 + (xx - 40) ** 2 <= 9
    hu[vessel] = 40.0
    hu += rng.normal(0, 30, shape).astype(np.float32)
    return hu, lungs


def test_pasted_nodules_are_labelled_dense_in_lung_and_keep_the_noise() -> None:
    hu, lungs = _patch()
    label = np.zeros(hu.shape, np.uint8)
    rng = np.random.default_rng(3)
    new_hu, new_label, placed = paste_nodules(hu, label, lungs, rng, count=3)
    assert len(placed) >= 2 and new_label.any()
    assert hu.max() < 300 and not label.any()  # inputs untouched
    lab, n = ndi.label(new_label)
    assert n == len(placed)
    inside = new_label > 0
    assert (lungs[inside] > 0).mean() > 0.7  # in the lung (juxta-pleural ones may reach the wall)
    assert new_hu[inside].mean() > hu[inside].mean() + 100  # denser than what was there
    outside = ndi.distance_transform_edt(~inside) > 6
    np.testing.assert_allclose(new_hu[outside], hu[outside], atol=5.0)  # far away nothing changes
    # the patch's own noise survives inside the nodule (it is not painted flat)
    core = ndi.binary_erosion(inside, iterations=2)
    if core.sum() > 50:
        assert new_hu[core].std() > 10


def test_location_classes_touch_what_they_should() -> None:
    hu, lungs = _patch(seed=1)
    depth = ndi.distance_transform_edt(lungs > 0)
    for location, seed in (("juxta-pleural", 0), ("juxta-vascular", 1), ("parenchymal", 2)):
        rng = np.random.default_rng(seed)
        p = {
            "parenchymal": (1.0, 0.0, 0.0),
            "juxta-pleural": (0.0, 1.0, 0.0),
            "juxta-vascular": (0.0, 0.0, 1.0),
        }
        _, lab, placed = paste_nodules(
            hu, np.zeros(hu.shape, np.uint8), lungs, rng, count=1, location_p=p[location]
        )
        assert len(placed) == 1 and placed[0].location == location
        n: Nodule = placed[0]
        c = np.round(n.center[::-1]).astype(int)  # world (x, y, z) on a unit grid at the origin -> (z, y, x)
        if location == "juxta-pleural":
            assert depth[tuple(c)] <= n.r_max + 1.5  # reaches the lung border
        elif location == "parenchymal":
            assert depth[tuple(c)] >= n.r_max + 1.0
        else:
            dist_to_vessel = np.hypot(c[1] - 40, c[2] - 40) - 3
            assert dist_to_vessel <= 0.85 * n.radius + 2.5


def test_never_over_an_existing_nodule_and_skips_lungless_patches() -> None:
    hu, lungs = _patch(seed=2)
    label = np.zeros(hu.shape, np.uint8)
    label[20:44, 20:44, 20:44] = 1  # a big labelled nodule in the middle
    rng = np.random.default_rng(5)
    _, new_label, placed = paste_nodules(hu, label, lungs, rng, count=3)
    lab, n = ndi.label(new_label)
    assert n == 1 + len(placed)  # pasted ones are separate components
    assert paste_nodules(hu, label, np.zeros_like(lungs), rng, count=2)[2] == []


def test_transform_keeps_types_and_is_seeded() -> None:
    hu, lungs = _patch(seed=4)
    image = torch.as_tensor(np.clip((hu + 1000) / 1500, 0, 1)[None])
    data = {"image": image, "label": torch.zeros((1, *hu.shape)), "lungs": torch.as_tensor(lungs[None])}
    t = RandPasteNodulesd(prob=1.0, max_count=2).set_random_state(seed=7)
    a = t(data)
    t.set_random_state(seed=7)
    b = t(data)
    assert isinstance(a["image"], torch.Tensor) and a["image"].shape == image.shape
    assert (
        a["label"].sum() > 0 and torch.equal(a["label"], b["label"]) and torch.equal(a["image"], b["image"])
    )
    assert 0.0 <= float(a["image"].min()) and float(a["image"].max()) <= 1.0
    off = RandPasteNodulesd(prob=0.0)(data)
    assert off["image"] is image
    with pytest.raises(ValueError, match="keys"):
        RandPasteNodulesd(keys=("image", "label"))


def test_design_is_the_generators() -> None:
    """Sizes and types follow the phantom generator, so pasted and generated nodules share one distribution."""
    rng = np.random.default_rng(0)
    kinds = {design_nodule(rng, d_min=3.0).type for _ in range(200)}
    assert kinds == {"solid", "part-solid", "ground-glass", "calcified"}


def test_paste_mix_follows_type_and_location_probabilities() -> None:
    """``type_p`` / ``location_p`` choose what is pasted (the training key that shows a model the kinds it misses)."""
    hu, lungs = _patch(seed=1)
    t = RandPasteNodulesd(prob=1.0, max_count=1, type_p=[0, 0, 1, 0], location_p=[0, 0, 1])
    kinds = set()
    for seed in range(6):
        rng = np.random.default_rng(seed)
        _, _, placed = paste_nodules(
            hu, np.zeros(hu.shape, np.uint8), lungs, rng, count=1, type_p=t.type_p, location_p=t.location_p
        )
        kinds |= {(n.type, n.location) for n in placed}
    assert kinds == {("ground-glass", "juxta-vascular")}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"type_p": [0.5, 0.5]},
        {"location_p": [0.5, 0.6, -0.1]},
        {"location_p": [0.2, 0.2, 0.2]},
        {"type_p": "abcd"},
    ],
)
def test_paste_probabilities_are_checked(kwargs: dict) -> None:
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=name):
        RandPasteNodulesd(**kwargs)


def test_pasted_nodules_do_not_hide_inside_a_large_vessel() -> None:
    from pipelines.phantom.nodules import MIN_VISIBLE, visible_fraction
    from pipelines.phantom.shapes import Grid

    hu, lungs = _patch(seed=4)
    zz, yy, xx = np.indices(hu.shape)
    hilar = (yy - 32) ** 2 + (xx - 36) ** 2 <= 14**2  # a 28 mm vessel inside the lung mask, a third of it
    hu[hilar] = 40.0
    grid = Grid(hu.shape, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    shown = []
    for seed in range(6):
        _, _, placed = paste_nodules(
            hu, np.zeros(hu.shape, np.uint8), lungs, np.random.default_rng(seed), count=3, d_min=6.0
        )
        shown += [visible_fraction(n, hu, grid) for n in placed]
    assert len(shown) >= 8
    assert min(shown) >= MIN_VISIBLE
