"""The finer grid only where the first pass marks something (settings ``fine_scope`` / ``fine_floor``):
window marks in the sliding window, the marks from a first-pass probability, and the screener's fine pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.inferers import SlidingWindowInferer
from monai.transforms import Compose

from pipelines.imaging.io import ImageHeader
from pipelines.imaging.preprocess import CaseGeometry
from pipelines.imaging.transforms import ResampleToSpacingd, ScaleHUd
from pipelines.screening.inference import sliding_window_probability, window_count
from pipelines.screening.multiscale import MARK_MARGIN_MM, fine_window_marks
from pipelines.screening.settings import ScreeningSettings, SettingsError
from pipelines.screening.stages import Screener

BG, TISSUE = -850.0, 30.0


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one thread (two threads spin against each other on a busy machine, 10x slower here)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class _BlobNet(torch.nn.Module):
    """Logit ``12 * image - 6`` plus a ramp along x: windows at different places disagree, so the blend of a
    voxel depends on which windows ran."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 12.0 * x - 6.0 + torch.linspace(-1.0, 1.0, x.shape[-1])


def _ball(shape: tuple[int, ...], centre: tuple[float, ...], radius: float) -> np.ndarray:
    z, y, x = np.indices(shape)
    return (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 <= radius**2


def _settings(**kw: object) -> ScreeningSettings:
    base: dict[str, object] = {
        "logit_temperature": 1.0,
        "roi_size": (16, 16, 16),
        "overlap": 0.25,
        "sw_batch_size": 2,
        "device": "cpu",
        "report": False,
        "fine_spacing_mm": 0.7,
    }
    return ScreeningSettings(**{**base, **kw})  # type: ignore[arg-type]


def _probability(image: torch.Tensor, marks: torch.Tensor | None, **kw: object) -> tuple[torch.Tensor, dict]:
    settings = _settings(**kw)
    inferer = SlidingWindowInferer(roi_size=settings.roi_size, sw_batch_size=2, overlap=settings.overlap)
    return sliding_window_probability(
        image,
        torch.ones(image.shape[1:]),
        network=_BlobNet(),
        inferer=inferer,
        settings=settings,
        device=torch.device("cpu"),
        window_marks=marks,
    )


@pytest.mark.parametrize("mirror", [("", "all"), ("x", "all"), ("x", "candidates")])
def test_marked_windows_run_alone_and_give_the_all_windows_probability_inside_the_marks(mirror):
    axes, scope = mirror
    image = torch.zeros(1, 30, 34, 70)
    image[0, 10:18, 12:20, 20:28] = 1.0  # a bright cube: a candidate of every pass
    marks = torch.zeros(30, 34, 70, dtype=torch.bool)
    marks[8:20, 10:22, 18:30] = True
    every, info_all = _probability(image, None, mirror_axes=axes, mirror_scope=scope)
    some, info = _probability(image, marks, mirror_axes=axes, mirror_scope=scope)
    total = window_count((30, 34, 70), (16, 16, 16), 0.25)
    assert info_all["windows_run"] == total and info_all["windows_unmarked"] == 0
    assert 0 < info["windows_run"] < total
    assert (
        info["windows_run"] + info["windows_skipped"]
        == total
        == info["windows_run"] + info["windows_unmarked"]
    )
    assert info["windows_mirrored"] <= info_all["windows_mirrored"]
    # exact where it runs: every window covering a marked voxel holds that mark
    np.testing.assert_allclose(some[marks].numpy(), every[marks].numpy(), atol=1e-6)
    far = np.s_[:, :, 50:]
    assert float(some[far].max()) < 1e-6 < float(every[far].min())  # background logit (-20) where none ran


def test_no_marks_run_no_window():
    image = torch.rand(1, 20, 20, 40)
    prob, info = _probability(image, torch.zeros(20, 20, 40, dtype=torch.bool))
    assert info["windows_run"] == 0 and info["windows_skipped"] == info["windows_unmarked"] > 0
    assert float(prob.max()) < 1e-6


def test_marks_cover_each_component_above_the_floor_on_the_finer_grid():
    prob = np.full((30, 40, 50), 0.01, np.float32)
    prob[10:13, 20:23, 5:8] = 0.3  # above the floor 0.25
    prob[20:22, 5:7, 40:42] = 0.2  # below it
    prob[2:4, 30:32, 30:32] = 0.9  # above it, but 8 voxels: smaller than a 3 mm ball (14), no candidate
    hu = np.full(prob.shape, BG, np.float32)
    settings = _settings(fine_floor=0.25, second_look=False)
    fine_shape = (43, 57, 71)
    marks = fine_window_marks(prob, fine_shape, settings, hu=hu)
    assert marks.shape == fine_shape
    ratio = np.asarray(fine_shape) / np.asarray(prob.shape)
    grow = int(np.ceil(MARK_MARGIN_MM / 0.7))
    zs, ys, xs = (np.flatnonzero(marks.any(axis=a)) for a in ((1, 2), (0, 2), (0, 1)))
    for got, (a, b), r in zip((zs, ys, xs), ((10, 13), (20, 23), (5, 8)), ratio, strict=True):
        assert (
            got.min() == max(0, int(np.floor(a * r)) - grow) and got.max() == int(np.ceil(b * r)) + grow - 1
        )
    assert not fine_window_marks(np.full(prob.shape, 0.01, np.float32), fine_shape, settings, hu=hu).any()
    every_size = fine_window_marks(prob, fine_shape, settings, hu=hu, min_voxels=1)
    assert (
        every_size[int(3 * ratio[0]), int(31 * ratio[1]), int(31 * ratio[2])]
        and every_size.sum() > marks.sum()
    )


def test_a_second_look_spot_below_the_floor_is_marked_when_the_second_look_is_on():
    shape = (30, 40, 50)
    blob = _ball(shape, (15, 20, 25), 2.5)
    hu = np.full(shape, BG, np.float32)
    hu[blob] = TISSUE
    prob = np.full(shape, 0.01, np.float32)
    prob[blob] = 0.3  # the network sees it faintly: below the floor, above second_look_min_probability
    fine_shape = (43, 57, 71)
    kw = {"fine_floor": 0.5, "second_look_min_probability": 0.2, "second_look_min_response_hu": 80.0}
    off = fine_window_marks(prob, fine_shape, _settings(second_look=False, **kw), hu=hu)
    on = fine_window_marks(prob, fine_shape, _settings(second_look=True, **kw), hu=hu)
    assert not off.any()
    centre = tuple(
        int(round(c * r)) for c, r in zip((15, 20, 25), np.asarray(fine_shape) / shape, strict=True)
    )
    assert on[centre] and on.sum() < on.size / 4


def test_fine_scope_and_floor_are_validated():
    assert ScreeningSettings().fine_scope in ("all", "candidates")
    assert _settings(fine_scope="candidates", fine_floor=0.1).fine_floor == 0.1
    for bad in ("some", "", 1):
        with pytest.raises(SettingsError, match="fine_scope"):
            ScreeningSettings(fine_scope=bad)  # type: ignore[arg-type]
    for bad_floor in (0.0, 1.0, -0.1, "0.2"):
        with pytest.raises(SettingsError, match="fine_floor"):
            ScreeningSettings(fine_floor=bad_floor)  # type: ignore[arg-type]
    a, b = _settings(fine_scope="all"), _settings(fine_scope="candidates")
    assert a.sha256() != b.sha256()  # in the run fingerprint


def _case(hu: np.ndarray) -> dict:
    """A 1 mm identity-direction case, all lung, whose network grid is the whole volume."""
    shape = hu.shape
    hdr = ImageHeader(
        (shape[2], shape[1], shape[0]), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1)
    )
    crop = tuple((0, n) for n in shape)
    geometry = CaseGeometry(hdr, hdr, crop, shape, (1.0, 1.0, 1.0))  # type: ignore[arg-type]
    lungs = np.ones(shape, np.uint8)
    return {
        "case_id": "c",
        "hu": hu,
        "lungs_canonical": lungs,
        "image": torch.tensor(np.clip((hu + 1000.0) / 1500.0, 0, 1), dtype=torch.float32)[None],
        "lungs": torch.tensor(lungs)[None],
        "geometry": geometry,
    }


def _screener(**kw: object) -> Screener:
    settings = _settings(**{"second_look": False, "mirror_axes": "x", "mirror_scope": "candidates", **kw})
    return Screener(
        preprocessing=Compose([]),
        network=_BlobNet(),
        inferer=SlidingWindowInferer(roi_size=settings.roi_size, sw_batch_size=2, overlap=settings.overlap),
        settings=settings,
        fine_preprocessing=Compose(
            [
                ResampleToSpacingd(["image", "lungs"], label_keys=["lungs"], spacing_mm=0.7),
                ScaleHUd("image", hu_min=-1000.0, hu_max=500.0),
            ]
        ),
    )


def test_the_screener_runs_fewer_fine_windows_with_the_same_fine_probability_where_it_runs():
    hu = np.full((32, 32, 64), BG, np.float32)
    hu[_ball(hu.shape, (16, 16, 14), 3.5)] = TISSUE  # first pass: 12 * 0.687 - 6 > 0, a candidate
    data = _case(hu)
    every = _screener(fine_scope="all").predict(data)
    some = _screener(fine_scope="candidates", fine_floor=0.5).predict(data)
    assert torch.equal(every.probability, some.probability)  # the first pass is the same
    assert every.fine is not None and some.fine is not None
    total = window_count(tuple(every.fine[1].shape), (16, 16, 16), 0.25)
    assert every.info["fine_windows_run"] == total and every.info["fine_scope"] == "all"
    assert 0 < some.info["fine_windows_run"] < total
    assert some.info["fine_windows_unmarked"] == total - some.info["fine_windows_run"]
    settings = _screener().settings
    marks = fine_window_marks(
        every.probability.numpy(), tuple(every.fine[1].shape), _settings(fine_floor=0.5), hu=hu
    )
    assert marks.any() and not marks.all()
    np.testing.assert_allclose(some.fine[1].numpy()[marks], every.fine[1].numpy()[marks], atol=1e-6)
    assert settings.fine_scope == ScreeningSettings().fine_scope


def test_the_screener_runs_no_fine_window_without_a_mark():
    data = _case(np.full((32, 32, 64), BG, np.float32))  # nothing bright: the first pass stays near 0.008
    pred = _screener(fine_scope="candidates", fine_floor=0.5).predict(data)
    assert pred.fine is not None
    assert pred.info["fine_windows_run"] == 0
    assert pred.info["fine_windows_skipped"] == window_count(tuple(pred.fine[1].shape), (16, 16, 16), 0.25)
    assert float(pred.fine[1].max()) < 0.01


def test_fine_mirror_off_runs_the_finer_grid_unmirrored_and_leaves_the_first_pass_as_it_was():
    hu = np.full((32, 32, 64), BG, np.float32)
    hu[_ball(hu.shape, (16, 16, 14), 3.5)] = TISSUE  # a first-pass candidate: its windows are mirrored
    data = _case(hu)
    mirrored = _screener(fine_mirror=True).predict(data)
    plain = _screener(fine_mirror=False).predict(data)
    nowhere = _screener(mirror_axes="").predict(data)  # mirroring off on both grids
    assert mirrored.fine is not None and plain.fine is not None and nowhere.fine is not None
    assert mirrored.info["windows_mirrored"] == plain.info["windows_mirrored"] > 0
    assert torch.equal(mirrored.probability, plain.probability)  # the first grid keeps its mirroring
    assert mirrored.info["fine_windows_mirrored"] > 0 and plain.info["fine_windows_mirrored"] == 0
    assert torch.equal(plain.fine[1], nowhere.fine[1])  # the finer grid as without any mirroring
    assert not torch.allclose(plain.fine[1], mirrored.fine[1])  # the ramp makes mirrored windows differ
    assert ScreeningSettings().fine_mirror in (True, False)
    with pytest.raises(SettingsError, match="fine_mirror"):
        ScreeningSettings(fine_mirror=2)  # type: ignore[arg-type]
    assert _settings(fine_mirror=True).sha256() != _settings(fine_mirror=False).sha256()
