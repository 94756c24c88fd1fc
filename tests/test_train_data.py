"""Patch-centre sampling gives every nodule the same weight, whatever its size."""

from __future__ import annotations

import numpy as np

from pipelines.train_data import SampleIndicesd


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
