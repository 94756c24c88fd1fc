"""Pose change and planned nodule histories of follow-up pairs (pure functions, tiny volumes)."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.followup.pair_truth import (
    MIN_GROWTH_MM,
    PoseChange,
    describe,
    plan_nodules,
    sample_pose,
    truth_row,
)
from pipelines.followup.pairs import pair_seed, resample_to_prior
from pipelines.phantom.shapes import Grid
from pipelines.phantom.write import case_seed

POSE = PoseChange(
    rotation_deg=(2.0, -1.5, 3.0),
    translation_mm=(4.0, -7.0, 10.0),
    scale_xyz=(0.98, 0.98, 0.94),
    centre_xyz=(5.0, -3.0, 20.0),
)


def test_pose_maps_round_trip_and_fix_the_centre():
    pts = np.random.default_rng(0).uniform(-100, 100, (20, 3))
    np.testing.assert_allclose(POSE.to_current(POSE.to_prior(pts)), pts, atol=1e-9)
    moved = POSE.to_prior(np.asarray(POSE.centre_xyz))
    np.testing.assert_allclose(moved, np.asarray(POSE.centre_xyz) + POSE.translation_mm, atol=1e-9)
    r = POSE.rotation
    np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-12)
    m = np.asarray(POSE.as_dict()["current_to_prior"])
    np.testing.assert_allclose(m @ np.asarray(POSE.as_dict()["prior_to_current"]), np.eye(4), atol=1e-6)


def test_sample_pose_stays_within_its_ranges():
    for s in range(20):
        p = sample_pose(np.random.default_rng(s), centre_xyz=(0.0, 0.0, 0.0))
        assert np.all(np.abs(p.rotation_deg) <= (2.0, 2.0, 3.0))
        assert np.all(np.abs(p.translation_mm) <= (8.0, 12.0, 15.0))
        assert 0.93 <= p.scale_xyz[2] <= 1.0 and 0.98 <= p.scale_xyz[0] == p.scale_xyz[1] <= 1.0


def test_resampled_point_lands_where_the_pose_sends_it():
    """The prior volume shows a current-scan feature at ``to_prior`` of its position (SimpleITK's direction)."""
    grid = Grid((40, 44, 48), (2.0, 1.5, 1.25), (-30.0, -33.0, -40.0))
    prior_grid = Grid((36, 50, 40), (2.2, 1.3, 1.5), (-30.0, -33.0, -40.0))
    p = np.array([2.0, -1.0, 1.0])
    x, y, z = grid.axes()
    blob = np.exp(-((x - p[0]) ** 2 + (y - p[1]) ** 2 + (z - p[2]) ** 2) / (2 * 3.0**2)).astype(np.float32)
    out = resample_to_prior(blob, grid, prior_grid, POSE, fill=0.0)
    idx = np.argwhere(out > 0.05)
    w = out[out > 0.05]
    centroid = prior_grid.index_to_world((idx * w[:, None]).sum(0) / w.sum())
    assert np.linalg.norm(centroid - POSE.to_prior(p)) < 0.2
    assert np.linalg.norm(centroid - p) > 5.0  # the pose really moved it


def test_planned_histories_follow_their_status():
    seen = {"grown": 0, "stable": 0, "new": 0, "resolved": 0, "solid": 0}
    for s in range(8):
        rng = np.random.default_rng(s)
        for p in plan_nodules(rng, d_min=5.0):
            p.body.center = np.zeros(3)
            row = truth_row("x", p, POSE, interval_days=365)
            if p.status == "new":
                assert row["cur_volume_mm3"] > 0 and "prior_volume_mm3" not in row
            elif p.status == "resolved":
                assert row["prior_volume_mm3"] > 0 and "cur_volume_mm3" not in row
            elif p.status == "stable":
                assert row["volume_ratio"] == 1.0 and row["diameter_change_mm"] == 0.0
                assert "doubling_days" not in row
            elif p.change == "volume":
                assert 1.3 - 1e-3 <= row["volume_ratio"] <= 3.0 + 2e-2
                assert row["diameter_change_mm"] >= MIN_GROWTH_MM - 1e-3
                expected = 365 * np.log(2) / np.log(row["volume_ratio"])
                assert row["doubling_days"] == pytest.approx(expected, rel=1e-3)
            else:  # part-solid: the body kept its size, the solid part grew
                assert row["type"] == "part-solid" and row["volume_ratio"] == 1.0
                assert row["solid_change_mm"] >= MIN_GROWTH_MM - 1e-6
                assert row["prior_type"] == ("ground-glass" if row["prior_solid_mm"] == 0 else "part-solid")
                seen["solid"] += 1
            seen[p.status] += 1
    assert all(v > 0 for v in seen.values()), seen


def test_prior_centre_is_the_mapped_current_centre():
    p = plan_nodules(np.random.default_rng(3), d_min=5.0, counts={"stable": 1})[0]
    p.body.center = np.array([10.0, -20.0, 30.0])
    cur, prior = describe(p, "current", POSE), describe(p, "prior", POSE)
    back = POSE.to_current(np.array([prior["x"], prior["y"], prior["z"]]))
    assert np.linalg.norm(back - [cur["x"], cur["y"], cur["z"]]) < 0.1
    assert cur["volume_mm3"] == prior["volume_mm3"]


def test_pair_seeds_are_their_own():
    seeds = {pair_seed(s, i) for s in (7, 1000, 7000, 7700, 9000) for i in range(50)}
    cases = {case_seed(s, i) for s in (7, 1000, 7000, 7700, 9000) for i in range(50)}
    assert len(seeds) == 250 and not seeds & cases
    assert pair_seed(7700, 3) == pair_seed(7700, 3)


def test_covered_prior_grid_has_no_fill_and_stays_on_the_lattice():
    from pipelines.followup.pairs import covered_prior_grid

    grid = Grid((40, 36, 44), (2.0, 1.5, 1.5), (-30.0, -25.0, 100.0))
    centre = tuple(float(v) for v in grid.index_to_world(np.asarray([20.0, 18.0, 22.0])[None])[0])
    assert (
        covered_prior_grid(grid, PoseChange((0.0, 0.0, 0.0), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), centre))
        == grid
    )
    pose = PoseChange((1.5, -2.0, 2.0), (3.0, -5.0, 6.0), (0.99, 0.99, 0.96), centre)
    ones = np.ones(grid.shape_zyx, np.float32)
    whole = resample_to_prior(ones, grid, grid, pose, fill=0.0)
    assert (whole < 1.0 - 1e-4).any()  # the whole grid would carry fill bands
    covered = covered_prior_grid(grid, pose)
    assert covered.spacing_zyx == grid.spacing_zyx
    assert (resample_to_prior(ones, grid, covered, pose, fill=0.0) >= 1.0 - 1e-4).all()
    lo = grid.world_to_index_zyx(np.asarray(covered.origin_xyz))
    np.testing.assert_allclose(lo, np.round(lo), atol=1e-9)  # a sub-box of the same voxel lattice
    assert np.all(np.round(lo) >= 0) and np.all(np.round(lo) + covered.shape_zyx <= grid.shape_zyx)
    assert np.prod(covered.shape_zyx) > 0.6 * np.prod(grid.shape_zyx)  # peeled, not collapsed
