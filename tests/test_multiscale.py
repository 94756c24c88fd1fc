"""The finer second network grid (pipelines.screening.multiscale): its case, the merge of its candidates, the settings and
a screening run that goes through it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import chest_image, read_result, run_screen, silent_weights, write_case
from monai.transforms import Compose

from pipelines.imaging.io import ImageHeader
from pipelines.imaging.preprocess import CaseGeometry
from pipelines.imaging.transforms import ResampleToSpacingd, ScaleHUd
from pipelines.screening.multiscale import fine_case, merge_scales, offset_probability
from pipelines.screening.scoring import analyse_case
from pipelines.screening.settings import ScreeningSettings, SettingsError

BG, TISSUE = -850.0, 30.0


def _cand(cid: int, centre: tuple[float, float, float], diameter: float, p: float, **kw: object) -> dict:
    return {
        "nodule_id": cid,
        "canonical_index_zyx": list(centre),
        "diameter_mm": diameter,
        "probability": p,
        "segmentation_probability": p,
        "source": "network",
        "scale_mm": 1.0,
        **kw,
    }


def _ball_mask(shape: tuple[int, int, int], centre: tuple[float, float, float], radius: float) -> np.ndarray:
    z, y, x = np.indices(shape)
    return (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 <= radius**2


def test_offset_probability_moves_the_logit() -> None:
    assert offset_probability(0.5, -1.0) == pytest.approx(1 / (1 + np.e))
    assert offset_probability(0.9, 0.0) == pytest.approx(0.9)
    assert 0 < offset_probability(0.0, -1.0) < 1e-6 and offset_probability(1.0, 0.0) > 1 - 1e-6


def test_merge_raises_adds_and_ignores_by_the_rules() -> None:
    shape = (30, 30, 30)
    coarse_mask = np.zeros(shape, np.uint16)
    coarse_mask[_ball_mask(shape, (8, 8, 8), 4)] = 1
    coarse_mask[_ball_mask(shape, (20, 8, 8), 2)] = 2
    coarse = [
        _cand(1, (8, 8, 8), 8.0, 0.95),
        _cand(2, (20, 8, 8), 4.0, 0.40),
        _cand(3, (25, 25, 25), 4.0, 0.30, source="second_look"),  # a point candidate: no mask label
    ]
    fine_mask = np.zeros(shape, np.uint16)
    new_ball = _ball_mask(shape, (8, 22, 22), 2.5)
    fine_mask[new_ball] = 4
    fine_mask[_ball_mask(shape, (20, 9, 8), 2)] = 2
    fine = [
        _cand(1, (8.5, 8, 8), 7.0, 0.97, scale_mm=0.7),  # near candidate 1, lower after the offset: no change
        _cand(2, (20, 9, 8), 4.0, 0.95, scale_mm=0.7),  # 1 mm from candidate 2: lends it its higher score
        _cand(3, (8, 8, 20), 14.0, 0.99, scale_mm=0.7),  # above fine_max_diameter_mm: ignored
        _cand(4, (8, 22, 22), 5.0, 0.90, scale_mm=0.7),  # near nothing: added, with its voxels
        _cand(5, (15, 25, 5), 4.0, 0.30, source="second_look", scale_mm=0.7),  # added, no voxels
    ]
    coarse_prob, fine_prob = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
    coarse_prob[0, 0, 0], fine_prob[0, 0, 1] = 0.7, 0.6
    before = json.dumps(coarse), coarse_mask.copy()
    cands, mask, prob = merge_scales(
        (coarse, coarse_mask, coarse_prob),
        (fine, fine_mask, fine_prob),
        (1.0, 1.0, 1.0),
        max_diameter_mm=10.0,
        logit_offset=-1.0,
    )
    assert json.dumps(coarse) == before[0] and np.array_equal(coarse_mask, before[1])  # inputs untouched
    assert [c["nodule_id"] for c in cands] == [1, 2, 3, 4, 5]
    assert cands[0]["probability"] == 0.95 and cands[0]["scale_mm"] == 1.0
    raised = offset_probability(0.95, -1.0)
    assert cands[1]["probability"] == pytest.approx(raised) and cands[1]["scale_mm"] == 0.7
    assert cands[1]["segmentation_probability"] == pytest.approx(raised)
    assert cands[3]["probability"] == pytest.approx(offset_probability(0.90, -1.0))
    assert cands[3]["canonical_index_zyx"] == [8, 22, 22] and cands[3]["source"] == "network"
    assert cands[4]["source"] == "second_look" and not (mask == 5).any()
    # the added network candidate's voxels carry its new label; the first pass's labels are kept
    assert np.array_equal(mask == 4, new_ball) and np.array_equal(mask[mask < 4], coarse_mask[mask < 4])
    assert prob[0, 0, 0] == pytest.approx(0.7) and prob[0, 0, 1] == pytest.approx(0.6)


def test_a_fine_network_candidate_replaces_a_first_pass_second_look_spot() -> None:
    shape = (30, 30, 30)
    coarse_mask = np.zeros(shape, np.uint16)
    coarse_mask[_ball_mask(shape, (8, 8, 8), 4)] = 1
    coarse = [
        _cand(1, (8, 8, 8), 8.0, 0.95),
        _cand(2, (20, 20, 20), 4.0, 0.30, source="second_look"),  # a point spot: no voxels, never reported
        _cand(3, (5, 25, 5), 4.0, 0.30, source="second_look"),
    ]
    fine_mask = np.zeros(shape, np.uint16)
    ball = _ball_mask(shape, (20, 20, 21), 2.5)
    fine_mask[ball] = 1
    fine = [
        _cand(1, (20, 20, 21), 5.0, 0.99, scale_mm=0.7),  # a network candidate on spot 2: it stands for it
        _cand(
            2, (20, 21, 20), 4.0, 0.35, source="second_look", scale_mm=0.7
        ),  # near the replaced spot: added
        _cand(3, (5, 25, 6), 4.0, 0.32, source="second_look", scale_mm=0.7),  # a spot on a spot: raises it
    ]
    zeros = np.zeros(shape, np.float32)
    cands, mask, _ = merge_scales(
        (coarse, coarse_mask, zeros),
        (fine, fine_mask, zeros),
        (1.0, 1.0, 1.0),
        max_diameter_mm=10.0,
        logit_offset=0.0,
    )
    assert [c["nodule_id"] for c in cands] == [1, 3, 4, 5]
    assert [c["source"] for c in cands] == ["network", "second_look", "network", "second_look"]
    assert cands[1]["probability"] == pytest.approx(0.32) and cands[1]["scale_mm"] == 0.7
    stand_in = cands[2]
    assert stand_in["canonical_index_zyx"] == [20, 20, 21] and stand_in["probability"] == pytest.approx(0.99)
    assert np.array_equal(mask == 4, ball)  # its voxels: a reportable nodule with a mask
    settings = ScreeningSettings(prob_threshold=0.9)
    assert stand_in["probability"] >= settings.prob_threshold


def test_merge_with_no_first_pass_candidate_adds_the_fine_ones() -> None:
    shape = (10, 10, 10)
    empty = np.zeros(shape, np.uint16)
    fine_mask = empty.copy()
    fine_mask[4:6, 4:6, 4:6] = 1
    cands, mask, _ = merge_scales(
        ([], empty, np.zeros(shape, np.float32)),
        ([_cand(1, (4.5, 4.5, 4.5), 3.0, 0.8, scale_mm=0.7)], fine_mask, np.zeros(shape, np.float32)),
        (1.0, 1.0, 1.0),
        max_diameter_mm=10.0,
        logit_offset=0.0,
    )
    assert len(cands) == 1 and cands[0]["probability"] == pytest.approx(0.8)
    assert np.array_equal(mask > 0, fine_mask > 0) and int(mask.max()) == cands[0]["nodule_id"] == 1


def _fine_preprocessing(spacing_mm: float) -> Compose:
    return Compose(
        [
            ResampleToSpacingd(["image", "lungs"], label_keys=["lungs"], spacing_mm=spacing_mm),
            ScaleHUd("image", hu_min=-1000.0, hu_max=500.0),
        ]
    )


def _case(hu: np.ndarray, crop: tuple[tuple[int, int], ...]) -> dict:
    """A 1 mm identity-direction case cropped to ``crop``, on a 1 mm network grid (the crop itself)."""
    shape = hu.shape
    hdr = ImageHeader(
        (shape[2], shape[1], shape[0]), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1)
    )
    crop_shape = tuple(b - a for a, b in crop)
    geometry = CaseGeometry(hdr, hdr, crop, crop_shape, (1.0, 1.0, 1.0))  # type: ignore[arg-type]
    sl = tuple(slice(a, b) for a, b in crop)
    lungs = np.ones(shape, np.uint8)
    lungs[:, :, shape[2] // 2 :] = 2
    return {
        "case_id": "c",
        "hu": hu,
        "lungs_canonical": lungs,
        "image": torch.tensor(np.clip((hu[sl] + 1000.0) / 1500.0, 0, 1))[None],
        "lungs": torch.tensor(lungs[sl])[None],
        "geometry": geometry,
    }


def _fine_ball(fine: dict, centre: tuple[float, float, float], radius_mm: float, p: float) -> torch.Tensor:
    """A probability of 0.01 on the finer grid of ``fine`` (0.5 mm), ``p`` in a ball (canonical 1 mm indices)."""
    fz, fy, fx = np.indices(fine["geometry"].network_shape)
    prob = np.full(fine["geometry"].network_shape, 0.01, np.float32)
    prob[
        (fz / 2 - centre[0]) ** 2 + (fy / 2 - centre[1]) ** 2 + (fx / 2 - centre[2]) ** 2 <= radius_mm**2
    ] = p
    return torch.tensor(prob)


def _analyse(data: dict, prob: np.ndarray, settings: ScreeningSettings, fine: tuple | None = None):
    return analyse_case(
        data, torch.tensor(prob), settings=settings, classifier=None, device=torch.device("cpu"), fine=fine
    )


def test_fine_case_resamples_the_crop_and_leaves_the_first_grid_alone() -> None:
    hu = np.full((30, 40, 50), BG, np.float32)
    data = _case(hu, ((2, 28), (4, 36), (5, 45)))
    fine = fine_case(data, _fine_preprocessing(0.5))
    g, fg = data["geometry"], fine["geometry"]
    assert g.network_shape == (26, 32, 40) and g.network_spacing_zyx == (1.0, 1.0, 1.0)
    assert fg.crop_box == g.crop_box and fg.network_shape == (52, 64, 80)
    assert np.allclose(fg.network_spacing_zyx, 0.5)
    assert tuple(fine["image"].shape) == (1, 52, 64, 80) and tuple(fine["lungs"].shape[-3:]) == (52, 64, 80)
    assert float(fine["image"].max()) == pytest.approx((BG + 1000) / 1500)
    assert fine["hu"] is data["hu"]


def test_a_nodule_seen_only_on_the_fine_grid_is_reported_with_its_mask() -> None:
    hu = np.full((40, 48, 48), BG, np.float32)
    big = _ball_mask(hu.shape, (20, 24, 12), 4.5)
    small = _ball_mask(hu.shape, (20, 24, 36), 2.5)
    hu[big | small] = TISSUE
    data = _case(hu, ((0, 40), (0, 48), (0, 48)))
    prob = np.full(hu.shape, 0.01, np.float32)
    prob[big] = 0.99  # the first grid sees the big nodule only
    fine = fine_case(data, _fine_preprocessing(0.5))
    settings = ScreeningSettings(report=False, second_look=False, fine_spacing_mm=0.5)
    alone = _analyse(data, prob, settings)
    assert len(alone.nodules) == 1
    both = _analyse(data, prob, settings, fine=(fine, _fine_ball(fine, (20, 24, 36), 2.5, 0.99)))
    assert len(both.nodules) == 2
    added = next(n for n in both.nodules if n["scale_mm"] == 0.5)
    assert np.allclose(added["canonical_index_zyx"], (20, 24, 36), atol=0.5)
    assert 4.0 <= added["diameter_mm"] <= 6.0 and added["blobness"] > 0.5
    own = both.nodule_mask == added["nodule_id"]
    assert (own & small).sum() >= 0.8 * small.sum() and not (own & big).any()
    first = next(n for n in both.nodules if n["scale_mm"] == 1.0)
    assert np.array_equal(both.nodule_mask == first["nodule_id"], big)


def test_reported_masks_land_in_the_canonical_grid_of_a_cropped_case() -> None:
    """The nodule mask is written voxel by voxel from the crop: reported labels at their canonical place
    (crop offset added), candidates below the reporting threshold left out."""
    hu = np.full((40, 48, 48), BG, np.float32)
    big = _ball_mask(hu.shape, (20, 24, 14), 4.5)
    weak = _ball_mask(hu.shape, (20, 24, 34), 3.5)
    hu[big | weak] = TISSUE
    crop = ((2, 38), (3, 45), (4, 44))
    data = _case(hu, crop)
    sl = tuple(slice(a, b) for a, b in crop)
    prob = np.full(data["geometry"].network_shape, 0.01, np.float32)
    prob[big[sl]] = 0.99
    prob[weak[sl]] = 0.6  # a candidate, not reported (no shape term to lift it)
    settings = ScreeningSettings(report=False, second_look=False, blobness_weight=0.0)
    out = _analyse(data, prob, settings)
    assert [c["source"] for c in out.candidates] == ["network", "network"] and len(out.nodules) == 1
    assert out.nodule_mask.shape == hu.shape
    assert np.array_equal(out.nodule_mask == out.nodules[0]["nodule_id"], big)
    assert not out.nodule_mask[weak].any() and set(np.unique(out.nodule_mask)) == {0, 1}


def test_fine_spacing_must_be_finer_than_the_network_grid() -> None:
    assert ScreeningSettings(fine_spacing_mm=None).fine_spacing_mm is None
    assert ScreeningSettings(fine_spacing_mm=0.7).fine_spacing_mm == 0.7
    for bad in (1.0, 1.5, 0.0, -0.7):
        with pytest.raises(SettingsError, match="fine_spacing_mm"):
            ScreeningSettings(fine_spacing_mm=bad)
    with pytest.raises(SettingsError, match="fine_max_diameter_mm"):
        ScreeningSettings(fine_max_diameter_mm=0)


def test_the_bundle_runs_the_fine_pass_and_null_switches_it_off(tmp_path: Path) -> None:
    write_case(chest_image(), tmp_path / "in" / "chest.nii.gz")
    weights = str(silent_weights(tmp_path / "silent.pt"))
    run_screen(tmp_path / "in", tmp_path / "on", weights=weights, fine_spacing_mm=2.0)
    run_screen(tmp_path / "in", tmp_path / "off", weights=weights)  # FAST: fine_spacing_mm None
    on, off = (
        read_result(tmp_path / "on", "chest")["summary"],
        read_result(tmp_path / "off", "chest")["summary"],
    )
    assert on["status"] == off["status"] == "ok"
    assert on["seconds_network_fine"] > 0 and "seconds_network_fine" not in off
    header = (tmp_path / "on" / "cases" / "chest" / "candidates.csv").read_text().splitlines()[0]
    assert header.endswith(",source,scale_mm")


@pytest.mark.parametrize("scope", ["all", "finest"])
def test_second_look_scope_finest_runs_it_on_the_finer_grid_only(scope: str) -> None:
    hu = np.full((40, 48, 48), BG, np.float32)
    a = _ball_mask(hu.shape, (20, 24, 12), 2.5)  # faint on the first grid only
    b = _ball_mask(hu.shape, (20, 24, 36), 2.5)  # faint on the finer grid only
    hu[a | b] = TISSUE
    data = _case(hu, ((0, 40), (0, 48), (0, 48)))
    prob = np.full(hu.shape, 0.01, np.float32)
    prob[a] = 0.25  # below the candidate threshold, above second_look_min_probability
    fine = fine_case(data, _fine_preprocessing(0.5))
    settings = ScreeningSettings(
        report=False,
        second_look=True,
        second_look_scope=scope,
        second_look_min_response_hu=40.0,  # the resampled 0.5 mm ball answers ~60 HU, the 1 mm one more
        fine_spacing_mm=0.5,
    )
    both = _analyse(data, prob, settings, fine=(fine, _fine_ball(fine, (20, 24, 36), 2.5, 0.25)))
    spots = {c["scale_mm"]: c for c in both.candidates if c["source"] == "second_look"}
    assert not both.nodules
    assert 0.5 in spots and np.allclose(spots[0.5]["canonical_index_zyx"], (20, 24, 36), atol=1.0)
    if scope == "all":
        assert 1.0 in spots and np.allclose(spots[1.0]["canonical_index_zyx"], (20, 24, 12), atol=1.0)
    else:
        assert set(spots) == {0.5}  # the first grid's spot is not looked for
    alone = _analyse(data, prob, settings)
    assert [c["scale_mm"] for c in alone.candidates if c["source"] == "second_look"] == [
        1.0
    ]  # finest = first


def test_second_look_scope_is_validated() -> None:
    assert ScreeningSettings().second_look_scope in ("all", "finest")
    with pytest.raises(SettingsError, match="second_look_scope"):
        ScreeningSettings(second_look_scope="fine")
