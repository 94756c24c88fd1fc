"""A second, finer network grid for small nodules, and the merge of its candidates with the first grid's.

The network screens the lung crop on a 1 mm grid, where a 3-5 mm nodule spans 3-5 voxels; against a vessel it
often gets no candidate at all (on the validation phantoms the network's probability inside such nodules stayed
under 0.1). The same crop resampled to 0.7 mm shows it 1.4 times larger, a size the network has learned, and
there it often stands out (0.9 and more). The finer pass finds fewer large nodules (its 64-voxel window holds
less context) and its own false positives, so it only adds to the first pass:

- a fine candidate of at most ``fine_max_diameter_mm`` that lies within the larger radius of the two (at least
  2 mm) of a first-pass candidate lends that candidate its score when higher; but a fine *network* candidate
  scoring above a first-pass *second-look* spot replaces the spot (a point candidate without voxels, never
  reported): it stands as itself, with its mask, and may be reported;
- one that lies near none is added as a candidate of its own, with its mask voxels where the first pass has
  none;
- fine scores enter with ``fine_logit_offset`` added to their logit (below zero: a fine-only finding needs more
  evidence than a first-pass one).

Every score still gets the shape term and the classifier afterwards, measured on the first grid. The geometry,
the transforms and the network are the bundle's own: ``fine_preprocessing`` is the bundle's resampling and
HU scaling with ``settings#fine_spacing_mm`` (``configs/inference.json``).

With ``fine_scope="candidates"`` the finer grid runs only its windows that hold a mark of the first pass
(:func:`fine_window_marks`): where a small nodule could be.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
from scipy import ndimage

from pipelines.imaging.io import spacing_zyx
from pipelines.imaging.preprocess import CaseGeometry
from pipelines.nodules.record import Candidate
from pipelines.nodules.second_look import Volume, find_spots
from pipelines.nodules.sparse_labels import labelled_voxels
from pipelines.screening.settings import ScreeningSettings

#: Each first-pass mark is grown by this much (mm) on the finer grid: a fine candidate a little larger than the
#: first pass's component, or around a second-look spot's centre, stays inside the windows that run.
MARK_MARGIN_MM = 4.0


def fine_case(data: dict[str, Any], fine_preprocessing: Any) -> dict[str, Any]:
    """The case on the finer grid: the first pass's lung crop resampled by ``fine_preprocessing``.

    Args:
        data: the preprocessed case (``hu`` and ``lungs_canonical`` on the canonical grid, ``geometry``).
        fine_preprocessing: the bundle's resampling + HU scaling at ``fine_spacing_mm`` (a MONAI ``Compose``).

    Returns:
        A case dictionary like ``data`` whose ``image``/``lungs``/``geometry`` describe the finer grid (the
        canonical arrays are shared, not copied).
    """
    geometry: CaseGeometry = copy.copy(data["geometry"])
    sl = geometry.crop_slices
    fine = {
        "case_id": data.get("case_id"),
        "source_name": data.get("source_name", "<memory>"),
        "geometry": geometry,
        "hu": data["hu"],
        "lungs_canonical": data["lungs_canonical"],
        "image": np.ascontiguousarray(data["hu"][sl]),
        "lungs": np.ascontiguousarray(np.asarray(data["lungs_canonical"])[sl]),
    }
    geometry.network_shape = geometry.crop_shape
    geometry.network_spacing_zyx = spacing_zyx(geometry.canonical)
    return dict(fine_preprocessing(fine))


def _logit(p: float) -> float:
    p = min(max(float(p), 1e-7), 1 - 1e-7)
    return math.log(p / (1 - p))


def offset_probability(p: float, offset: float) -> float:
    """``sigmoid(logit(p) + offset)``."""
    return 1.0 / (1.0 + math.exp(-(_logit(p) + float(offset))))


def merge_scales(
    coarse: tuple[list[Candidate], np.ndarray, np.ndarray],
    fine: tuple[list[Candidate], np.ndarray, np.ndarray],
    spacing_zyx_mm: tuple[float, float, float] | np.ndarray,
    *,
    max_diameter_mm: float,
    logit_offset: float,
) -> tuple[list[Candidate], np.ndarray, np.ndarray]:
    """Merge the fine pass's candidates into the first pass's (rules in the module docstring).

    Args:
        coarse: ``(candidates, mask_crop, prob_crop)`` of the first pass: candidates with canonical
            ``canonical_index_zyx``, ``diameter_mm``, ``probability`` (network score), ``nodule_id`` (its label
            in ``mask_crop`` for network candidates), ``source`` and ``scale_mm`` (the grid that scored it);
            mask and probability on the lung crop.
        fine: the same for the fine pass, on the same crop.
        spacing_zyx_mm: canonical voxel size, mm.
        max_diameter_mm: fine candidates above this diameter are ignored.
        logit_offset: added to the logit of fine scores.

    Returns:
        ``(candidates, mask_crop, prob_crop)``: the first pass's candidates (scores possibly raised, second-look
        spots replaced by a fine network candidate left out) followed by the added fine ones (new ``nodule_id``
        labels, their voxels written where ``mask_crop`` was 0); the probability is the voxel-wise maximum of the two passes. The inputs are not modified.
    """
    cands: list[Candidate] = [c.copy() for c in coarse[0]]
    mask = coarse[1].copy()
    prob = np.maximum(coarse[2], fine[2])
    spacing = np.asarray(spacing_zyx_mm, float)
    centres = np.asarray([c["canonical_index_zyx"] for c in cands], float).reshape(-1, 3) * spacing
    radii = np.asarray([float(c["diameter_mm"]) / 2 for c in cands], float)
    next_id = max([int(c["nodule_id"]) for c in cands] + [int(mask.max(initial=0))]) + 1
    fine_mask = fine[1]
    fine_voxels: tuple[np.ndarray, np.ndarray] | None = None  # (flat index, label), found once when needed
    flat_mask = mask.reshape(-1)  # a view of the contiguous copy: writes go to ``mask``
    replaced: set[int] = set()  # first-pass second-look spots that a fine network candidate stands in for
    for f in fine[0]:
        radius = float(f["diameter_mm"]) / 2
        if 2 * radius > max_diameter_mm:
            continue
        score = offset_probability(float(f["probability"]), logit_offset)
        if len(cands):
            dist = np.linalg.norm(centres - np.asarray(f["canonical_index_zyx"], float) * spacing, axis=1)
            near = dist <= np.maximum(np.maximum(radii, radius), 2.0)
            if near.any():
                j = int(np.flatnonzero(near)[np.argmin(dist[near])])
                replaces = (
                    cands[j].get("source") == "second_look"
                    and f.get("source") == "network"
                    and score > float(cands[j]["probability"])
                )
                if not replaces:
                    if score > float(cands[j]["probability"]):
                        cands[j].update(
                            {
                                "probability": score,
                                "segmentation_probability": score,
                                "scale_mm": f["scale_mm"],
                            }
                        )
                    continue
                replaced.add(j)
                centres[j] = np.inf  # no later fine candidate is near the spot it replaced
        row = f.copy()
        row.update({"probability": score, "segmentation_probability": score})
        fid = int(f["nodule_id"])
        if f.get("source") == "network":
            if fine_voxels is None:  # one pass over the fine mask
                fine_voxels = labelled_voxels(fine_mask)
            mine = fine_voxels[0][fine_voxels[1] == fid]
            flat_mask[mine[flat_mask[mine] == 0]] = next_id
        row["nodule_id"] = next_id
        next_id += 1
        cands.append(row)
    return [c for i, c in enumerate(cands) if i not in replaced], mask, prob


def fine_window_marks(
    probability: np.ndarray,
    fine_shape_zyx: tuple[int, ...],
    settings: ScreeningSettings,
    *,
    hu: Volume,
    lungs: np.ndarray | None = None,
    min_voxels: int | None = None,
) -> np.ndarray:
    """Where the finer grid runs with ``fine_scope="candidates"``: ``[z, y, x]`` bool on the finer grid.

    Marks the box of every 26-connected component of ``probability >= settings.fine_floor`` as big as a
    candidate (the volume of a ball of ``settings.min_diameter_mm``, as candidates and candidate-scoped mirroring
    count it) and, when
    ``settings.second_look`` is on and the floor lies above ``second_look_min_probability``, the ball box of
    every second-look spot (:func:`pipelines.nodules.second_look.find_spots`; below that probability the spots lie
    within 2 voxels of a component already), each grown by :data:`MARK_MARGIN_MM`. Both grids cover the same
    lung crop, so a first-pass voxel box ``[a, b)`` maps to ``[a * r, b * r)`` with ``r`` the ratio of the
    grids' shapes per axis.

    Args:
        probability: first-pass ``[z, y, x]`` probability on the network grid (isotropic,
            ``settings.target_spacing_mm`` nominal).
        fine_shape_zyx: shape of the finer grid over the same crop.
        settings: ``fine_floor``, ``fine_spacing_mm`` and the second look's settings.
        hu: HU on the network grid (for the second look), read box by box.
        lungs: lung labels on the network grid (second-look spots inside the lungs only), or None.
        min_voxels: the smallest component marked, in first-pass voxels (None: a ``min_diameter_mm`` ball's).
    """
    prob = np.asarray(probability, dtype=np.float32)
    coarse = np.asarray(prob.shape, float)
    fine_shape = tuple(int(n) for n in fine_shape_zyx)
    ratio = np.asarray(fine_shape, float) / coarse
    spacing = float(settings.target_spacing_mm)
    boxes: list[tuple[np.ndarray, np.ndarray]] = []
    if min_voxels is None:
        min_voxels = int(4 / 3 * math.pi * (settings.min_diameter_mm / 2 / spacing) ** 3)
    hot = prob >= settings.fine_floor
    if hot.any():
        labels, n = ndimage.label(hot, structure=np.ones((3, 3, 3), bool))
        sizes = np.bincount(labels[hot], minlength=n + 1)
        for box, size in zip(ndimage.find_objects(labels), sizes[1:], strict=True):
            if box is not None and size >= max(1, min_voxels):
                boxes.append((np.asarray([b.start for b in box]), np.asarray([b.stop for b in box])))
    if settings.second_look and settings.fine_floor > settings.second_look_min_probability:
        for spot in find_spots(
            hu,
            prob,
            lungs,
            spacing,
            min_probability=settings.second_look_min_probability,
            min_response_hu=settings.second_look_min_response_hu,
            max_probability=settings.fine_floor,
        ):
            at = np.asarray(spot.index_zyx, int)
            reach = math.ceil(spot.diameter_mm / 2 / spacing)
            boxes.append((at - reach, at + reach + 1))
    marks = np.zeros(fine_shape, dtype=bool)
    grow = math.ceil(MARK_MARGIN_MM / float(settings.fine_spacing_mm or spacing))
    upper = np.asarray(fine_shape)
    for lo, hi in boxes:
        start = np.clip(np.floor(lo * ratio).astype(int) - grow, 0, upper)
        stop = np.clip(np.ceil(hi * ratio).astype(int) + grow, 0, upper)
        marks[tuple(slice(int(a), int(b)) for a, b in zip(start, stop, strict=True))] = True
    return marks
