"""Patch sampling: every nodule weighs the same whatever its size, and lands anywhere in the window."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines.bundle import load_workflow
from pipelines.training.data import (
    HardNegativeIndicesd,
    SampleIndicesd,
    TimeCosineLR,
    crop_context_size,
    make_lr_scheduler,
    write_hard_negatives,
)


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


def _geometry(shape: tuple[int, int, int], origin: tuple[float, float, float] = (10.0, -20.0, 5.0)):
    """Canonical = crop = network grid: 2 mm voxels, identity direction, ``origin`` in world LPS mm."""
    from pipelines.imaging.io import ImageHeader
    from pipelines.imaging.preprocess import CaseGeometry

    hdr = ImageHeader((shape[2], shape[1], shape[0]), (2.0, 2.0, 2.0), origin, (1, 0, 0, 0, 1, 0, 0, 0, 1))
    return CaseGeometry(hdr, hdr, tuple((0, n) for n in shape), shape, (2.0, 2.0, 2.0))  # type: ignore[arg-type]


def test_mined_false_positives_become_the_wanted_share_of_negative_centres():
    shape = (20, 24, 28)
    label = np.zeros((1, *shape), np.float32)
    label[0, 2:5, 2:5, 2:5] = 1
    d = SampleIndicesd(max_bg=300)({"label": label, "lungs": np.ones_like(label)})
    geometry = _geometry(shape)
    # world (x, y, z) = origin + 2 mm * (x, y, z) index: spots at zyx (10, 12, 14) and (3, 3, 3) (a nodule
    # voxel: dropped) and one outside the grid (dropped)
    spots = [[10 + 2 * 14, -20 + 2 * 12, 5 + 2 * 10], [10 + 6, -20 + 6, 5 + 6], [500.0, 0.0, 0.0]]
    table = {"cases": {"case1": spots}}
    out = HardNegativeIndicesd(table=table, fraction=0.25)({**d, "seriesuid": "case1", "geometry": geometry})
    bg = out["bg_indices"]
    wanted = np.ravel_multi_index((10, 12, 14), shape)
    assert np.isin(d["bg_indices"], bg).all()  # the uniform negatives are kept
    assert (bg == wanted).sum() == 100  # 100 of 400 = the 0.25 share
    assert len(bg) == 400 and not np.isin(bg, np.flatnonzero(label.reshape(-1))).any()
    # another case, or no table, leaves the indices alone
    other = HardNegativeIndicesd(table=table)({**d, "seriesuid": "case2", "geometry": geometry})
    assert np.array_equal(other["bg_indices"], d["bg_indices"])
    assert np.array_equal(HardNegativeIndicesd(table=None)(d)["bg_indices"], d["bg_indices"])


def test_hard_negatives_file_round_trip_and_bad_file(tmp_path):
    patches = tmp_path / "patches.npz"
    np.savez(
        patches,
        labels=np.asarray([0, 1, 0, 0], np.uint8),
        kinds=np.asarray(["candidate", "candidate", "random", "candidate"]),
        seriesuids=np.asarray(["a", "a", "a", "b"]),
        world_lps_mm=np.arange(12, dtype=float).reshape(4, 3),
    )
    out = tmp_path / "hard_negatives.json"
    assert write_hard_negatives(patches, out) == {"cases": 2, "spots": 2}
    t = HardNegativeIndicesd(table=out)
    assert sorted(t.cases) == ["a", "b"]
    assert t.cases["a"].tolist() == [[0.0, 1.0, 2.0]] and t.cases["b"].tolist() == [[9.0, 10.0, 11.0]]
    bad = tmp_path / "broken.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="broken.json"):
        HardNegativeIndicesd(table=bad)
    with pytest.raises(ValueError, match="fraction"):
        HardNegativeIndicesd(table=None, fraction=1.0)


class _FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_time_cosine_lr_anneals_over_wall_clock_not_steps() -> None:
    clock = _FakeClock()
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    sched = TimeCosineLR(opt, seconds=100, eta_min=1e-5, clock=clock)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3)  # construction does not start the clock
    clock.now += 500  # caching time before the first iteration does not count
    sched.step()  # first step starts the clock
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3)
    clock.now += 50
    for _ in range(7):  # however many steps: the rate depends on the time alone
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-5 + (1e-3 - 1e-5) / 2)
    clock.now += 49
    sched.step()
    assert 1e-5 < opt.param_groups[0]["lr"] < 1.1e-5
    clock.now += 1000
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-5)


def test_time_cosine_lr_state_saves_with_weights_only(tmp_path) -> None:
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=2e-3)
    sched = TimeCosineLR(opt, seconds=10)
    sched.step()
    path = tmp_path / "sched.pt"
    torch.save(sched.state_dict(), path)
    state = torch.load(path, weights_only=True)
    assert "clock" not in state and state["seconds"] == 10.0
    with pytest.raises(ValueError, match="seconds > 0"):
        TimeCosineLR(opt, seconds=0)


def test_time_cosine_lr_wires_into_train_json_by_override() -> None:
    """``--set train#lr_schedule=time_cosine`` (scripts/gpu_session.sh) gives the wall-clock cosine, stepped per
    iteration; the default stays the epoch cosine, stepped per epoch."""
    overrides = {"dataset_dir": Path("x"), "train#time_limit_s": 120, "train#lr_schedule": "time_cosine"}
    wf = load_workflow(["inference.json", "train.json"], workflow_type="train", overrides=overrides)
    sched = wf.parser.get_parsed_content("train#lr_scheduler")
    assert isinstance(sched, TimeCosineLR) and sched.seconds == 120.0 and sched.eta_min == 1e-5
    handler = wf.parser.get_parsed_content("train#handlers#0")
    assert handler.lr_scheduler is sched and handler.epoch_level is False
    wf = load_workflow(
        ["inference.json", "train.json"], workflow_type="train", overrides={"dataset_dir": Path("x")}
    )
    sched = wf.parser.get_parsed_content("train#lr_scheduler")
    assert isinstance(sched, torch.optim.lr_scheduler.CosineAnnealingLR) and sched.T_max == 10
    assert wf.parser.get_parsed_content("train#handlers#0").epoch_level is True
    with pytest.raises(ValueError, match="lr_schedule must be one of"):
        make_lr_scheduler(kind="linear", optimizer=sched.optimizer, T_max=1)


def test_classifier_mining_records_each_patch_at_its_world_centre():
    from types import SimpleNamespace

    from pipelines.screening.scoring import CLASSIFIER_PATCH
    from pipelines.training.classifier import _case_patches

    shape = (30, 32, 34)
    geometry = _geometry(shape)
    vol = np.zeros((1, *shape), np.float32)
    prob = torch.zeros(shape)
    prob[8:13, 8:13, 8:13] = 0.9  # a network candidate at zyx (10, 10, 10): world (30, 0, 25)
    ann_w = np.asarray([[10 + 2 * 22, -20 + 2 * 20, 5 + 2 * 18]], float)  # a nodule at zyx (18, 20, 22)
    mining = {
        "candidate_threshold": 0.5,
        "max_candidates": 10,
        "jitter_mm": 2.0,
        "jitter_per_positive": 3,
        "random_negatives": 4,
    }
    settings = SimpleNamespace(hu_min=-1000.0, hu_max=500.0, min_diameter_mm=0.0)
    data = {"image": torch.as_tensor(vol), "lungs": np.ones(shape, np.uint8), "geometry": geometry}
    recs = _case_patches(
        data, prob, (ann_w, np.asarray([6.0])), settings=settings, mining=mining, rng=np.random.default_rng(0)
    )
    kinds = [k for _, _, k, _ in recs]
    assert kinds.count("candidate") == 1 and kinds.count("annotation") == 1 and kinds.count("jitter") == 3
    assert 1 <= kinds.count("random") <= 4
    for patch, y, kind, world in recs:
        assert patch.shape[-3:] == CLASSIFIER_PATCH
        back = geometry.world_to_network(np.asarray(world)[None])[0]  # network-grid centre of the record
        if kind == "candidate":
            assert y == 0 and np.allclose(world, [30.0, 0.0, 25.0], atol=1e-6)
        elif kind == "annotation":
            assert y == 1 and np.allclose(world, ann_w[0])
        elif kind == "jitter":  # within jitter_mm of the nodule, per axis, and a positive
            assert y == 1 and np.all(np.abs(np.asarray(world) - ann_w[0]) <= 2.0 + 1e-6)
        else:  # random negatives sit on voxel centres, more than radius + 10 mm from the nodule
            assert y == 0 and np.allclose(back, np.rint(back), atol=1e-6)
            assert np.linalg.norm(np.asarray(world) - ann_w[0]) > 3.0 + 10.0 - 1e-6


def test_every_training_profile_has_classifier_settings():
    from pipelines.training.classifier import CLASSIFIER_PROFILES
    from pipelines.training.profiles import PROFILES

    assert set(CLASSIFIER_PROFILES) == set(PROFILES)
