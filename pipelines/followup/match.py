"""One-to-one matching of current nodules to prior nodules mapped into the current scan.

Both point sets are LPS world mm in the **current** scan's frame (the prior centres mapped by
:mod:`pipelines.followup.register`). A pair is allowed when its centres are within the distance gate,
``max(distance_floor_mm, distance_factor * larger mean diameter)``, and the ratio of the mean diameters (current /
prior) lies in ``size_ratio``; among allowed pairs the assignment minimises the summed centre distance
(:func:`scipy.optimize.linear_sum_assignment`, the Hungarian method), so one prior nodule never explains two
current ones. Unmatched current nodules are new, unmatched prior nodules resolved.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

__all__ = [
    "DISTANCE_FACTOR",
    "DISTANCE_FLOOR_MM",
    "SIZE_RATIO",
    "Matching",
    "allowed_pairs",
    "match_distances",
    "match_nodules",
]

DISTANCE_FLOOR_MM = 10.0
DISTANCE_FACTOR = 1.0
SIZE_RATIO = (1.0 / 3.0, 3.0)
_FORBIDDEN = 1e12


@dataclass(frozen=True)
class Matching:
    """Result of :func:`match_nodules` (indices into the input arrays).

    Attributes:
        pairs: ``(current_index, prior_index, distance_mm)``, sorted by current index.
        new: current indices without a prior match.
        resolved: prior indices without a current match.
    """

    pairs: list[tuple[int, int, float]] = field(default_factory=list)
    new: list[int] = field(default_factory=list)
    resolved: list[int] = field(default_factory=list)

    def prior_of(self, current_index: int) -> int | None:
        """The prior index matched to ``current_index``, or ``None``."""
        return next((j for i, j, _ in self.pairs if i == current_index), None)


def _points(name: str, points: np.ndarray) -> np.ndarray:
    array = np.asarray(points, dtype=float).reshape(-1, 3) if np.size(points) else np.zeros((0, 3))
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be finite LPS coordinates in mm")
    return array


def allowed_pairs(
    distances_mm: np.ndarray,
    current_diameters_mm: np.ndarray,
    prior_diameters_mm: np.ndarray,
    *,
    distance_floor_mm: float = DISTANCE_FLOOR_MM,
    distance_factor: float = DISTANCE_FACTOR,
    size_ratio: tuple[float, float] = SIZE_RATIO,
) -> np.ndarray:
    """Boolean ``[n_current, n_prior]``: which pairs pass the distance and size gates."""
    cur = np.asarray(current_diameters_mm, float)[:, None]
    pri = np.asarray(prior_diameters_mm, float)[None, :]
    gate = np.maximum(distance_floor_mm, distance_factor * np.maximum(cur, pri))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(pri > 0, cur / np.where(pri > 0, pri, 1.0), np.inf)
    return (distances_mm <= gate) & (ratio >= size_ratio[0]) & (ratio <= size_ratio[1])


def match_nodules(
    current_lps_mm: np.ndarray,
    prior_in_current_lps_mm: np.ndarray,
    *,
    current_diameters_mm: np.ndarray,
    prior_diameters_mm: np.ndarray,
    distance_floor_mm: float = DISTANCE_FLOOR_MM,
    distance_factor: float = DISTANCE_FACTOR,
    size_ratio: tuple[float, float] = SIZE_RATIO,
) -> Matching:
    """Match current nodules one-to-one to prior nodules (gates and cost: module docstring).

    Args:
        current_lps_mm: ``[n, 3]`` current nodule centres, LPS world mm.
        prior_in_current_lps_mm: ``[m, 3]`` prior nodule centres mapped into the current scan, LPS world mm.
        current_diameters_mm: ``[n]`` mean diameters now, mm.
        prior_diameters_mm: ``[m]`` mean diameters on the prior, mm.
        distance_floor_mm: smallest distance gate, mm.
        distance_factor: the gate grows with the larger of the two diameters times this.
        size_ratio: allowed (low, high) range of current / prior diameter.

    Returns:
        a :class:`Matching`.

    Raises:
        ValueError: non-finite coordinates or arrays whose lengths disagree.
    """
    cur = _points("current_lps_mm", current_lps_mm)
    pri = _points("prior_in_current_lps_mm", prior_in_current_lps_mm)
    d_cur = np.asarray(current_diameters_mm, float).reshape(-1)
    d_pri = np.asarray(prior_diameters_mm, float).reshape(-1)
    if len(d_cur) != len(cur) or len(d_pri) != len(pri):
        raise ValueError("one diameter per nodule is needed (current and prior)")
    if len(cur) == 0 or len(pri) == 0:
        return Matching(new=list(range(len(cur))), resolved=list(range(len(pri))))
    distances = np.linalg.norm(cur[:, None, :] - pri[None, :, :], axis=-1)
    return match_distances(
        distances,
        current_diameters_mm=d_cur,
        prior_diameters_mm=d_pri,
        distance_floor_mm=distance_floor_mm,
        distance_factor=distance_factor,
        size_ratio=size_ratio,
    )


def match_distances(
    distances_mm: np.ndarray,
    *,
    current_diameters_mm: np.ndarray,
    prior_diameters_mm: np.ndarray,
    distance_floor_mm: float = DISTANCE_FLOOR_MM,
    distance_factor: float = DISTANCE_FACTOR,
    size_ratio: tuple[float, float] = SIZE_RATIO,
) -> Matching:
    """:func:`match_nodules` from a precomputed ``[n_current, n_prior]`` distance matrix (mm), e.g. one whose
    row ``i`` maps the prior centres with current nodule ``i``'s local registration."""
    distances = np.asarray(distances_mm, float).reshape(len(current_diameters_mm), len(prior_diameters_mm))
    if distances.size == 0:
        return Matching(new=list(range(distances.shape[0])), resolved=list(range(distances.shape[1])))
    if not np.all(np.isfinite(distances)):
        raise ValueError("distances must be finite (mm)")
    ok = allowed_pairs(
        distances,
        np.asarray(current_diameters_mm, float),
        np.asarray(prior_diameters_mm, float),
        distance_floor_mm=distance_floor_mm,
        distance_factor=distance_factor,
        size_ratio=size_ratio,
    )
    rows, cols = linear_sum_assignment(np.where(ok, distances, _FORBIDDEN))
    pairs = sorted((int(i), int(j), float(distances[i, j])) for i, j in zip(rows, cols) if ok[i, j])
    matched_cur = {i for i, _, _ in pairs}
    matched_pri = {j for _, j, _ in pairs}
    n_cur, n_pri = distances.shape
    return Matching(
        pairs=pairs,
        new=[i for i in range(n_cur) if i not in matched_cur],
        resolved=[j for j in range(n_pri) if j not in matched_pri],
    )
