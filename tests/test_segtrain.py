"""Generic segmentation training: channel grouping, label pairing, patch sampling, train-seg end to end.

The MRI-like cases come from :mod:`mri_phantoms`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from mri_phantoms import TINY, make_mri_phantoms

from pipelines.imaging import discovery, filesys
from pipelines.imaging.modality import UnknownModalityError
from pipelines.screening.inference import load_weights
from pipelines.segmentation.data import find_cases, find_labelled_cases, group_channels, load_case
from pipelines.segmentation.plan import load_plan
from pipelines.segmentation.train import PatchSampler, crop_or_pad, train_segmentation


# ------------------------------------------------------------------------------------------- grouping
def _inputs(*names: str) -> list[discovery.CaseInput]:
    return [discovery.CaseInput(n, Path(f"/x/{n}.nii.gz")) for n in names]


def test_group_channels_follows_nnunet_names():
    cases = group_channels(_inputs("a_0000", "a_0001", "b_0000", "plain", "scan_2024", "c_0000", "c_0002"))
    by_id = {c.case_id: c for c in cases}
    assert sorted(by_id) == ["a", "b", "c", "plain", "scan_2024"]
    assert [Path(c.path).name for c in by_id["a"].channels] == ["a_0000.nii.gz", "a_0001.nii.gz"]
    assert len(by_id["b"].channels) == 1 and by_id["b"].problem is None
    assert by_id["c"].problem and "_0000, _0002" in by_id["c"].problem
    assert by_id["scan_2024"].problem is None
    # a single-channel model reads every file as its own scan
    single = group_channels(_inputs("s_0000", "s_0001"), num_channels=1)
    assert [c.case_id for c in single] == ["s_0000", "s_0001"]


def test_labelled_cases_pairing_and_missing_labels(tmp_path):
    make_mri_phantoms(tmp_path, n=2, seed=0, channels=2)
    cases = find_labelled_cases(tmp_path / "images", tmp_path / "labels")
    assert [(c.case_id, len(c.channels), c.label.name) for c in cases] == [
        ("case000", 2, "case000.nii.gz"),
        ("case001", 2, "case001.nii.gz"),
    ]
    (tmp_path / "labels" / "case001.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match="case001"):
        find_labelled_cases(tmp_path / "images", tmp_path / "labels")


def test_files_named_like_channels_with_own_labels_are_single_channel_cases(tmp_path):
    make_mri_phantoms(tmp_path, n=2, seed=1)
    for p in (tmp_path / "labels").iterdir():  # labels named like the image files: scan_0000 <-> scan_0000
        p.rename(p.with_name(p.name.replace(".nii.gz", "_0000.nii.gz")))
    cases = find_labelled_cases(tmp_path / "images", tmp_path / "labels")
    assert [c.case_id for c in cases] == ["case000_0000", "case001_0000"]


def test_channel_geometry_mismatch_is_a_clear_error(tmp_path):
    make_mri_phantoms(tmp_path, n=1, seed=2, channels=2)
    second = tmp_path / "images" / "case000_0001.nii.gz"
    img = sitk.ReadImage(str(second))
    img.SetSpacing((2.0, 2.0, 5.0))
    sitk.WriteImage(img, str(second))
    (case,) = find_cases(tmp_path / "images")
    with pytest.raises(filesys.ImageReadError, match=r"case000_0001.*channel 0001 spacing"):
        load_case(case, with_label=False)


def test_load_case_is_canonical_and_keeps_original_header(tmp_path):
    make_mri_phantoms(tmp_path, n=2, seed=3)
    cases = find_labelled_cases(tmp_path / "images", tmp_path / "labels")
    a, b = (load_case(c) for c in cases)
    assert a.image.shape == (1, 12, 24, 24) and a.label.shape == (12, 24, 24)
    assert b.geometry.original.orientation == "RAS" and b.geometry.canonical.orientation == "LPS"
    assert set(np.unique(b.label)) == {0, 1, 2}
    # the lesion (label 2) is the brightest tissue of channel 0 on the canonical grid too
    assert b.image[0][b.label == 2].mean() > b.image[0][b.label == 1].mean()


# ------------------------------------------------------------------------------------------- sampling
def test_crop_or_pad_places_the_window_and_pads_with_zero():
    a = torch.arange(2 * 4 * 4 * 4, dtype=torch.float32).reshape(2, 4, 4, 4) + 1
    out = crop_or_pad(a, (-1, 2, 0), (3, 3, 4))
    assert out.shape == (2, 3, 3, 4)
    assert torch.equal(out[:, 1:, :2, :], a[:, :2, 2:4, :])
    assert float(out[:, 0].abs().sum()) == 0 and float(out[:, :, 2].abs().sum()) == 0


def test_patch_sampler_oversamples_foreground():
    label = torch.zeros(1, 40, 40, 40, dtype=torch.long)
    label[0, 30:33, 5:8, 20:23] = 2
    item = {"image": torch.randn(1, 40, 40, 40), "label": label}
    sampler = PatchSampler(patch_size_zyx=(8, 8, 8), batch_size=3, foreground_fraction=0.33, seed=0)
    item["fg_coords"] = sampler.index(label)
    hits, where = [], []
    for _ in range(40):
        x, y = sampler([item])
        assert x.shape == (3, 1, 8, 8, 8) and y.shape == (3, 1, 8, 8, 8)
        hits.append([bool((y[b] == 2).any()) for b in range(3)])
        where.append(np.argwhere(y[-1, 0].numpy() == 2).mean(axis=0))
    assert all(h[-1] for h in hits)  # the last patch of every batch holds a label voxel
    # ... anywhere in the patch, not always in its middle (no centre prior); y is clipped at the border
    spread = np.ptp(np.asarray(where), axis=0)
    assert spread[0] >= 4 and spread[2] >= 4


# ------------------------------------------------------------------------------------------- training
def test_train_seg_writes_a_loadable_model(tmp_path):
    data = make_mri_phantoms(tmp_path / "data", n=2, seed=4, channels=2)
    model = train_segmentation(
        images=data / "images", labels=data / "labels", modality="mri", out=tmp_path / "model",
        iterations=3, seed=0, device="cpu", planning=TINY,
    )  # fmt: skip
    plan = load_plan(model)
    assert plan.num_channels == 2 and plan.label_values == (0, 1, 2) and plan.n4
    assert np.prod(plan.patch_size_zyx) <= 16**3
    from monai.networks.nets import UNet

    net = UNet(3, 2, 3, channels=plan.features, strides=plan.strides, num_res_units=2, norm="instance")
    load_weights(net, model / "model.pt")  # weights_only, strict: the plan rebuilds the architecture
    log = json.loads((model / "train_log.json").read_text())
    assert log["iterations"] == 3 and np.isfinite(log["loss_last10"])
    config = json.loads((model / "config.json").read_text())
    assert config["overrides"]["modality"] == "mri" and "network_def" in config["config"]


def test_train_seg_refuses_unknown_modality(tmp_path):
    with pytest.raises(UnknownModalityError, match=r"\['ct', 'mri'\]"):
        train_segmentation(images=tmp_path, labels=tmp_path, modality="pet", out=tmp_path / "m", iterations=1)


def test_train_seg_reports_the_real_cause_of_a_bad_file(tmp_path):
    data = make_mri_phantoms(tmp_path, n=2, seed=6)
    (data / "labels" / "case001.nii.gz").write_bytes(b"garbage")
    with pytest.raises(filesys.ImageReadError, match=r"case001\.nii\.gz"):
        train_segmentation(
            images=data / "images", labels=data / "labels", modality="mri", out=tmp_path / "m", iterations=1
        )
