"""Patch sampling: every nodule weighs the same whatever its size, and lands anywhere in the window."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipelines.bundle import load_workflow
from pipelines.train_data import SampleIndicesd, crop_context_size


def test_every_nodule_is_sampled_equally_often():
    label = np.zeros((1, 48, 48, 48), np.float32)
    label[0, 2:26, 2:26, 2:26] = 1  # a 24-voxel cube: 13824 voxels
    label[0, 40:43, 40:43, 40:43] = 1  # a 3-voxel cube: 27 voxels
    lungs = np.ones_like(label)
    d = SampleIndicesd(max_fg_per_nodule=20, max_bg=100)({"label": label, "lungs": lungs})
    z = np.unravel_index(d["fg_indices"], (48, 48, 48))[0]
    assert (z < 30).sum() == 20 and (z >= 30).sum() == 20
    assert len(d["bg_indices"]) == 100
    assert not np.isin(d["bg_indices"], np.flatnonzero(label.reshape(-1))).any()


def test_no_nodule_gives_no_foreground():
    label = np.zeros((1, 8, 8, 8), np.float32)
    d = SampleIndicesd()({"label": label})
    assert len(d["fg_indices"]) == 0 and len(d["bg_indices"]) == 512


def test_context_size_is_window_plus_stride():
    assert crop_context_size([64, 64, 64], 0.25) == [112, 112, 112]
    assert crop_context_size([32, 48, 64], 0.5) == [48, 72, 96]
    with pytest.raises(ValueError, match="overlap"):
        crop_context_size([64, 64, 64], 1.0)


def test_bundle_patches_show_a_nodule_off_centre_as_the_sliding_window_does():
    """The bundle's crop chain (train.json ``train#random``: positive-centred context crop, then a random
    window inside it) must put a small nodule anywhere within half a stride of the patch centre, not always
    in the middle (the centre prior made v0.2.0 miss nodules that sat off-centre in every window)."""
    wf = load_workflow(
        ["inference.json", "train.json"], workflow_type="train", overrides={"dataset_dir": "x"}
    )
    crop, window = wf.parser.get_parsed_content("train#random")[:2]
    patch = np.asarray(wf.parser.get_parsed_content("train#patch_size"))
    shape = (160, 160, 160)
    label = np.zeros((1, *shape), np.float32)
    label[0, 78:81, 78:81, 78:81] = 1  # one 3-voxel nodule at the volume centre
    image = torch.rand((1, *shape))
    d = SampleIndicesd(max_bg=1000)(
        {"image": image, "label": torch.as_tensor(label), "lungs": torch.ones_like(image)}
    )
    crop.cropper.pos_ratio = 1.0  # positive patches only (negatives near the nodule may show it anywhere)
    crop.set_random_state(0)
    window.set_random_state(0)
    offsets = []
    for _ in range(12):
        for sample in crop(d):
            out = window(sample)
            assert tuple(out["image"].shape[1:]) == tuple(patch)
            where = np.argwhere(np.asarray(out["label"][0]) > 0)
            offsets.append(where.mean(axis=0) - (patch - 1) / 2)
    offsets_arr = np.abs(np.asarray(offsets))
    assert len(offsets_arr) >= 20
    half_stride = patch * (1 - wf.parser.get_parsed_content("settings#overlap")) / 2
    assert (
        offsets_arr <= half_stride + 1.5
    ).all()  # no further off than a sliding window shows it (+1 voxel jitter)
    assert offsets_arr.max() > 0.6 * half_stride.max()  # and not pinned to the centre
    assert np.median(offsets_arr) > 4.0
