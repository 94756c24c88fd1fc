"""Second-look candidates: the Hessian dot filter and how its spots join the network's candidates."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from pipelines.imaging.io import ImageHeader
from pipelines.imaging.preprocess import CaseGeometry
from pipelines.nodules.second_look import SIGMAS_MM, blobness, dot_response, find_spots
from pipelines.screening.scoring import analyse_case, shape_adjusted
from pipelines.screening.settings import ScreeningSettings

BG, TISSUE = -850.0, 30.0


def _volume(shape: tuple[int, int, int] = (40, 48, 48)) -> np.ndarray:
    return np.full(shape, BG, np.float32)


def _ball(
    vol: np.ndarray, centre: tuple[int, int, int], diameter: float, value: float = TISSUE
) -> np.ndarray:
    z, y, x = np.indices(vol.shape)
    inside = (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 <= (diameter / 2) ** 2
    vol[inside] = value
    return inside


def _reference_response(hu: np.ndarray, sigmas: tuple[float, ...]) -> np.ndarray:
    """The dot filter the slow, obvious way: smooth, central differences twice, ``np.linalg.eigvalsh``."""
    best = np.zeros(hu.shape)
    for s in sigmas:
        g = ndi.gaussian_filter(hu.astype(np.float64), s, mode="nearest")
        grads = np.gradient(g)
        h = np.stack([np.stack(np.gradient(grads[a]), -1) for a in range(3)], -2)
        h = (h + np.swapaxes(h, -1, -2)) / 2
        ev = np.linalg.eigvalsh(h)
        l1, l3 = ev[..., 0], ev[..., 2]
        r = np.where(l3 < 0, l3**2 / np.maximum(-l1, 1e-6), 0.0) * s * s
        best = np.maximum(best, r)
    return best


def test_dot_response_matches_a_finite_difference_reference() -> None:
    hu = _volume((32, 32, 32))
    _ball(hu, (16, 14, 17), 5.0)
    hu += np.random.default_rng(0).normal(0, 5, hu.shape).astype(np.float32)
    ours, _ = dot_response(hu, 1.0, sigmas_mm=(1.5, 2.0))
    ref = _reference_response(hu, (1.5, 2.0))
    inner = (slice(8, 24),) * 3  # away from the edges, where the two pad differently
    assert (
        np.unravel_index(np.argmax(ours), ours.shape)
        == np.unravel_index(np.argmax(ref), ref.shape)
        == (16, 14, 17)
    )
    # central differences of a smoothed image vs exact Gaussian derivatives: close, not equal (they
    # under-estimate second derivatives at small scales by ~15 %)
    assert np.corrcoef(ours[inner].ravel(), ref[inner].ravel())[0, 1] > 0.99
    assert ours[16, 14, 17] == pytest.approx(ref[16, 14, 17], rel=0.2) and ref[16, 14, 17] > 100


def test_dot_response_answers_blobs_not_vessels_or_walls() -> None:
    hu = _volume()
    _ball(hu, (20, 12, 12), 5.0)
    z, y, x = np.indices(hu.shape)
    hu[(y - 34) ** 2 + (x - 34) ** 2 <= 2.5**2] = TISSUE  # a 5 mm vessel along z
    hu[:, :, 44:] = TISSUE  # chest wall
    resp, sigma = dot_response(hu, 1.0)
    assert resp[20, 12, 12] > 200
    assert 1.0 <= float(sigma[20, 12, 12]) <= 2.0  # d = 5 mm answers at s = d / (2 sqrt 3) ~ 1.4
    assert resp[5:35, 30:39, 30:39].max() < 0.01 * resp[20, 12, 12]  # along the vessel
    assert resp[:, 5:40, 40:].max() < 0.01 * resp[20, 12, 12]  # along the wall


def test_scale_follows_size() -> None:
    hu = _volume((48, 48, 48))
    _ball(hu, (24, 14, 14), 4.0)
    _ball(hu, (24, 32, 32), 10.0)
    _, sigma = dot_response(hu, 1.0)
    assert float(sigma[24, 14, 14]) < float(sigma[24, 32, 32]) == max(SIGMAS_MM)


def test_inner_box_equals_the_cropped_full_response() -> None:
    """Cropping each separable pass to the wanted box changes nothing where the input reaches far enough."""
    hu = _volume((44, 46, 48))
    _ball(hu, (22, 20, 25), 4.0)
    _ball(hu, (25, 26, 22), 6.0)
    hu += np.random.default_rng(1).normal(0, 10, hu.shape).astype(np.float32)
    full, full_sigma = dot_response(hu, 1.0)
    inner = (
        slice(12, 32),
        slice(11, 35),
        slice(10, 37),
    )  # >= 8 voxels (4 x the largest sigma) from each edge
    part, part_sigma = dot_response(hu, 1.0, inner=inner)
    assert part.shape == (20, 24, 27)
    np.testing.assert_allclose(part, full[inner], rtol=1e-5, atol=1e-3)
    assert np.array_equal(part_sigma, full_sigma[inner]) and part.max() > 100


def test_find_spots_keeps_faint_blobs_and_drops_the_rest() -> None:
    hu = _volume()
    _ball(hu, (20, 12, 12), 5.0)  # faint for the network: p 0.2
    _ball(hu, (20, 12, 34), 5.0)  # p 0.1, below min_probability
    _ball(hu, (20, 34, 12), 5.0)  # a network candidate already
    z, y, x = np.indices(hu.shape)
    hu[(y - 36) ** 2 + (x - 36) ** 2 <= 2.5**2] = TISSUE  # vessel with p 0.3 along it
    prob = np.full(hu.shape, 0.01, np.float32)
    prob[18:23, 10:15, 10:15] = 0.2
    prob[18:23, 10:15, 32:37] = 0.1
    prob[18:23, 32:37, 10:15] = 0.9
    prob[5:35, 34:39, 34:39] = 0.3
    kwargs = dict(min_probability=0.15, min_response_hu=80.0, max_probability=0.366)
    spots = find_spots(hu, prob, None, 1.0, avoid_zyx=[((20, 34, 12), 2.5)], **kwargs)
    assert [s.index_zyx for s in spots] == [(20, 12, 12)]
    assert spots[0].probability == pytest.approx(0.2) and spots[0].diameter_mm == pytest.approx(5.2, abs=1.8)
    # without the avoided centre, the network's blob is a spot too, its score capped below the threshold
    spots = find_spots(hu, prob, None, 1.0, **kwargs)
    assert [s.index_zyx for s in spots] == [(20, 34, 12), (20, 12, 12)]
    assert spots[0].probability < 0.366 and np.float32(spots[0].probability) < np.float32(0.366)
    # outside the lungs: nothing
    lungs = np.ones(hu.shape, np.uint8)
    lungs[:, :24, :24] = 0
    spots = find_spots(hu, prob, lungs, 1.0, **kwargs)
    assert (20, 12, 12) not in [s.index_zyx for s in spots]


def test_clusters_inside_an_avoided_ball_are_skipped_unfiltered(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipelines.nodules import second_look

    hu = _volume()
    _ball(hu, (20, 12, 12), 5.0)  # a network candidate with a faint halo
    _ball(hu, (20, 34, 34), 5.0)  # a faint blob elsewhere
    prob = np.full(hu.shape, 0.01, np.float32)
    prob[19:22, 11:14, 11:14] = 0.3
    prob[19:22, 33:36, 33:36] = 0.3
    calls = []
    real = second_look.dot_response
    monkeypatch.setattr(second_look, "dot_response", lambda *a, **k: calls.append(1) or real(*a, **k))
    kwargs = dict(min_probability=0.2, min_response_hu=80.0, max_probability=0.366)
    spots = find_spots(hu, prob, None, 1.0, avoid_zyx=[((20, 12, 12), 6.0)], **kwargs)
    assert [s.index_zyx for s in spots] == [(20, 34, 34)] and len(calls) == 1  # the halo was never filtered
    monkeypatch.setattr(second_look, "_covered", lambda *a, **k: False)  # filtering it gives the same spots
    assert (
        find_spots(hu, prob, None, 1.0, avoid_zyx=[((20, 12, 12), 6.0)], **kwargs) == spots
        and len(calls) == 3
    )
    # a ball that does not hold every spot the cluster could give: filtered
    calls.clear()
    monkeypatch.undo()
    monkeypatch.setattr(second_look, "dot_response", lambda *a, **k: calls.append(1) or real(*a, **k))
    find_spots(hu, prob, None, 1.0, avoid_zyx=[((20, 12, 12), 1.0)], **kwargs)
    assert len(calls) == 2


def _case(hu: np.ndarray, prob: np.ndarray) -> tuple[dict, torch.Tensor]:
    """A case whose canonical, crop and network grids coincide (1 mm, identity direction)."""
    shape = hu.shape
    hdr = ImageHeader(
        (shape[2], shape[1], shape[0]), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1)
    )
    geometry = CaseGeometry(hdr, hdr, tuple((0, n) for n in shape), shape, (1.0, 1.0, 1.0))  # type: ignore[arg-type]
    lungs = np.ones(shape, np.uint8)
    lungs[:, :, shape[2] // 2 :] = 2
    image = torch.tensor(np.clip((hu + 1000.0) / 1500.0, 0, 1))[None]
    data = {
        "hu": hu,
        "lungs_canonical": lungs,
        "image": image,
        "lungs": torch.tensor(lungs)[None],
        "geometry": geometry,
    }
    return data, torch.tensor(prob)


@pytest.mark.parametrize("second_look", [True, False])
def test_second_look_candidates_join_the_list_but_are_never_reported(second_look: bool) -> None:
    hu = _volume()
    big = _ball(hu, (20, 24, 12), 9.0)
    _ball(hu, (20, 24, 36), 4.5)
    prob = np.full(hu.shape, 0.01, np.float32)
    prob[big] = 0.99
    prob[18:23, 22:27, 34:39] = 0.25
    settings = ScreeningSettings(second_look=second_look, report=False)
    data, p = _case(hu, prob)
    result = analyse_case(data, p, settings=settings, classifier=None, device=torch.device("cpu"))
    assert [n["source"] for n in result.nodules] == ["network"]
    assert len(result.nodules) == 1 and int(result.nodule_mask.max()) == 1
    if not second_look:
        assert [c["source"] for c in result.candidates] == ["network"]
        return
    assert [c["source"] for c in result.candidates] == ["network", "second_look"]
    spot = result.candidates[1]
    assert np.allclose(spot["canonical_index_zyx"], (20, 24, 36), atol=1.0)
    # the network's score, capped below the candidate threshold, then the shape term of every candidate
    assert spot["segmentation_probability"] == pytest.approx(0.25)
    assert spot["segmentation_probability"] < settings.candidate_threshold
    shaped = shape_adjusted(np.asarray([0.25]), np.asarray([spot["blobness"]]), settings.blobness_weight)[0]
    assert spot["blobness"] > 0.8 and spot["probability"] == pytest.approx(shaped)
    assert spot["lung_side"] == "left" and spot["type"] == "solid" and spot["mean_hu"] > -500  # lung is -850
    assert spot["candidate_id"] == 2 and "nodule_id" not in spot
    assert spot["center_lps_x_mm"] == pytest.approx(36.0, abs=1.0)  # identity geometry: world = index (x)
    assert 3.0 <= spot["diameter_mm"] <= 7.0


def test_blobness_is_one_for_a_ball_and_zero_for_vessels_and_walls() -> None:
    ball = _volume()
    _ball(ball, (20, 24, 24), 8.0)
    assert blobness(ball, (20, 24, 24), 4.0, 1.0) > 0.95
    assert blobness(ball, (20.4, 23.6, 24.3), 4.0, 1.0) > 0.9  # continuous centres round to a voxel
    z, y, x = np.indices(ball.shape)
    vessel = _volume()
    vessel[(y - 24) ** 2 + (x - 24) ** 2 <= 9] = TISSUE  # a 6 mm vessel along z
    assert blobness(vessel, (20, 24, 24), 3.0, 1.0) < 0.05
    assert blobness(vessel, (20, 24, 24), 8.0, 1.0) < 0.05  # whatever the candidate's size
    wall = _volume()
    wall[:, :, 24:] = TISSUE
    assert blobness(wall, (20, 24, 23), 4.0, 1.0) == 0.0
    # a nodule touching a vessel is still mostly a ball; a ball at 2 mm spacing gives what it gives at 1 mm
    both = vessel.copy()
    _ball(both, (20, 24, 30), 10.0)
    assert 0.3 < blobness(both, (20, 24, 30), 5.0, 1.0) < 0.95
    coarse = _volume((20, 24, 24))
    _ball(coarse, (10, 12, 12), 5.0)  # 10 mm at 2 mm voxels
    fine = _volume()
    _ball(fine, (20, 24, 24), 10.0)
    assert blobness(coarse, (10, 12, 12), 5.0, 2.0) == pytest.approx(
        blobness(fine, (20, 24, 24), 5.0, 1.0), abs=0.1
    )
    assert blobness(ball, (0, 0, 0), 4.0, 1.0) == 0.0  # lung corner: nothing bright, no blob


def test_shape_adjusted_scores_move_balls_up_and_vessels_down() -> None:
    p = np.asarray([0.9, 0.9, 0.5, 0.3])
    blob = np.asarray([1.0, 0.0, 0.5, 0.8])
    assert np.array_equal(shape_adjusted(p, blob, 0.0), p)
    out = shape_adjusted(p, blob, 4.0)
    logit = np.log(out / (1 - out)) - np.log(p / (1 - p))
    assert np.allclose(logit, 4.0 * (blob - 0.5))
    assert out[0] > 0.9 > out[1] and out[2] == pytest.approx(0.5)
    assert len(shape_adjusted(np.zeros(0), np.zeros(0), 4.0)) == 0


def test_candidates_carry_their_blobness_and_the_weight_reorders_them() -> None:
    hu = _volume()
    ball = _ball(hu, (20, 24, 12), 8.0)
    z, y, x = np.indices(hu.shape)
    vessel = ((y - 24) ** 2 + (z - 20) ** 2 <= 9) & (x >= 28)  # along x, in the left lung
    hu[vessel] = TISSUE
    prob = np.full(hu.shape, 0.01, np.float32)
    prob[ball] = 0.95
    prob[18:23, 22:27, 33:41] = 0.97  # the network likes a stretch of the vessel a little more
    data, p = _case(hu, prob)
    rows = {}
    for w in (0.0, 6.0):
        s = ScreeningSettings(report=False, second_look=False, blobness_weight=w)
        res = analyse_case(data, p, settings=s, classifier=None, device=torch.device("cpu"))
        rows[w] = sorted(res.candidates, key=lambda c: -c["probability"])
    assert [c["lung_side"] for c in rows[0.0]] == ["left", "right"]  # vessel first on the network's score
    assert [c["lung_side"] for c in rows[6.0]] == ["right", "left"]  # the ball first with the shape term
    ball_row = rows[6.0][0]
    assert ball_row["blobness"] > 0.8 and rows[6.0][1]["blobness"] < 0.2


def _busy_case(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Noisy lung with blobs of 3-8 mm, a vessel and faint network probability around most of them."""
    rng = np.random.default_rng(seed)
    hu = _volume((44, 52, 56)) + rng.normal(0, 25, (44, 52, 56)).astype(np.float32)
    prob = (rng.random(hu.shape) * 0.1).astype(np.float32)
    z, y, x = np.indices(hu.shape)
    hu[(y - 40) ** 2 + (z - 30) ** 2 <= 6] = TISSUE  # a vessel along x
    prob[28:33, 38:43, 5:50] = 0.25
    for _ in range(9):
        c = tuple(int(v) for v in rng.integers(4, np.asarray(hu.shape) - 4))
        inside = _ball(hu, c, float(rng.uniform(3, 8)), float(rng.uniform(-300, 80)))
        prob[inside] = np.maximum(prob[inside], float(rng.uniform(0.15, 0.4)))
    return hu, prob


@pytest.mark.parametrize("seed", range(3))
def test_dot_response_with_a_floor_is_exact_from_the_floor_up(seed: int) -> None:
    hu, _ = _busy_case(seed)
    full, full_sigma = dot_response(hu, 1.0)
    floored, floored_sigma = dot_response(hu, 1.0, floor_hu=80.0)
    top = full >= 80.0
    assert top.sum() > 20  # the case has responses above the floor
    np.testing.assert_array_equal(floored[top], full[top])
    np.testing.assert_array_equal(floored_sigma[top], full_sigma[top])
    # below the floor: the scales that could not reach it are skipped, the rest exact
    assert (floored[~top] <= full[~top]).all() and (floored[~top] >= 0).all()
    assert (floored[~top] < full[~top]).any() and (floored[~top] == full[~top]).any()


def test_may_reach_bounds_the_response() -> None:
    from pipelines.nodules.second_look import _may_reach

    rng = np.random.default_rng(2)
    a = rng.normal(scale=10.0, size=(50000, 3, 3))
    h = -(a @ np.swapaxes(a, 1, 2)).astype(np.float32)
    ev = np.linalg.eigvalsh(h)
    response = ev[:, 2] ** 2 / -ev[:, 0]
    entries = {(i, j): h[:, i, j] for i, j in ((0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2))}
    for level in (1.0, 10.0, 50.0):
        assert _may_reach(entries, level)[response >= level].all()
        assert not _may_reach(entries, level).all()  # and it does rule voxels out


@pytest.mark.parametrize("seed", range(4))
def test_spots_do_not_depend_on_skipping_slabs_or_threads(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The batched and the one-by-one screens, slabs of the cluster box and the thread count change nothing."""
    from pipelines.nodules import second_look

    hu, prob = _busy_case(seed)
    kwargs = dict(min_probability=0.2, min_response_hu=80.0, max_probability=0.366, min_separation_mm=3.0)
    lungs = np.ones(hu.shape, np.uint8)
    lungs[:, :, 50:] = 0
    spots = find_spots(hu, prob, lungs, 1.0, workers=2, **kwargs)
    assert len(spots) >= 2
    assert find_spots(hu, prob, lungs, 1.0, workers=1, **kwargs) == spots
    monkeypatch.setattr(second_look, "BATCH_SIZES", ())  # every cluster screened on its own
    assert find_spots(hu, prob, lungs, 1.0, **kwargs) == spots
    monkeypatch.setattr(second_look, "_may_peak", lambda *a, **k: True)  # every cluster filtered in full
    assert find_spots(hu, prob, lungs, 1.0, **kwargs) == spots
    monkeypatch.setattr(second_look, "SLAB_VOXELS", 3000)  # a few z planes at a time
    assert find_spots(hu, prob, lungs, 1.0, **kwargs) == spots


def test_batched_screen_keeps_every_box_that_reaches_the_floor() -> None:
    """:func:`_screen_boxes` (float32 products) answers True wherever the exact filter reaches the floor."""
    from pipelines.nodules.second_look import _screen_boxes

    hu, _ = _busy_case(5)
    full, _ = dot_response(hu, 1.0)
    rng = np.random.default_rng(5)
    corners = np.concatenate(
        [rng.integers(-3, np.asarray(hu.shape) - 5, (400, 3)), [[-2, -2, -2], [38, 46, 50]]]
    )
    where = rng.random((len(corners), 8, 8, 8)) < 0.3
    exact = np.zeros(len(corners), bool)
    for i, (c, w) in enumerate(zip(corners, where)):
        at = np.argwhere(w) + c
        inside = ((at >= 0) & (at < hu.shape)).all(1)
        w[tuple((at[~inside] - c).T)] = False  # peak voxels lie in the volume
        exact[i] = bool((full[tuple(at[inside].T)] >= 80.0).any())
    screened = _screen_boxes(hu, 1.0, corners, where, 80.0)
    assert exact.sum() >= 10 and screened[exact].all()
    assert (~screened).sum() >= 50  # and it does screen boxes out
