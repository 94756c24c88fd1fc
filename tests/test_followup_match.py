"""One-to-one nodule matching with distance and size gates."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.followup.match import match_nodules


def _match(cur, pri, d_cur, d_pri, **kw):
    return match_nodules(
        np.asarray(cur, float),
        np.asarray(pri, float),
        current_diameters_mm=d_cur,
        prior_diameters_mm=d_pri,
        **kw,
    )


def test_one_to_one_with_new_and_resolved():
    cur = [[0, 0, 0], [50, 0, 0], [0, 80, 0]]
    pri = [[48, 2, 0], [1, 1, 1], [-90, 0, 0]]
    m = _match(cur, pri, [6, 8, 5], [6, 6, 5])
    assert [(i, j) for i, j, _ in m.pairs] == [(0, 1), (1, 0)]
    assert m.new == [2] and m.resolved == [2]
    assert m.prior_of(1) == 0 and m.prior_of(2) is None
    assert m.pairs[0][2] == pytest.approx(np.sqrt(3))


def test_distance_gate_floor_and_diameter():
    assert _match([[0, 0, 0]], [[10.0, 0, 0]], [5], [5]).pairs  # at the 10 mm floor
    assert not _match([[0, 0, 0]], [[10.1, 0, 0]], [5], [5]).pairs
    assert _match([[0, 0, 0]], [[14.0, 0, 0]], [14], [10]).pairs  # gate = larger diameter, 14 mm
    assert not _match([[0, 0, 0]], [[14.1, 0, 0]], [14], [10]).pairs


def test_size_gate():
    assert _match([[0, 0, 0]], [[1, 0, 0]], [9.0], [3.0]).pairs  # ratio 3
    assert not _match([[0, 0, 0]], [[1, 0, 0]], [9.1], [3.0]).pairs
    assert not _match([[0, 0, 0]], [[1, 0, 0]], [2.9], [9.0]).pairs
    assert not _match([[0, 0, 0]], [[1, 0, 0]], [5.0], [0.0]).pairs


def test_global_assignment_beats_greedy():
    # greedy nearest-first would pair current 0 with prior 0 (1 mm) and leave current 1 unmatched
    cur = [[0, 0, 0], [-9, 0, 0]]
    pri = [[-1, 0, 0], [9, 0, 0]]
    m = _match(cur, pri, [5, 5], [5, 5])
    assert [(i, j) for i, j, _ in m.pairs] == [(0, 1), (1, 0)]


def test_empty_and_bad_input():
    m = _match(np.zeros((0, 3)), [[0, 0, 0]], [], [5])
    assert m.pairs == [] and m.new == [] and m.resolved == [0]
    m = _match([[0, 0, 0]], np.zeros((0, 3)), [5], [])
    assert m.new == [0] and m.resolved == []
    with pytest.raises(ValueError):
        _match([[0, 0, np.nan]], [[0, 0, 0]], [5], [5])
    with pytest.raises(ValueError):
        _match([[0, 0, 0]], [[0, 0, 0]], [5, 6], [5])
