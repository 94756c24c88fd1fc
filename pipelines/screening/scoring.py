"""From the network's probability map to scored, measured nodules on the canonical grid.

Steps: probability back to the crop (exact inverse of the resampling) -> connected candidates with
measurements (:func:`pipelines.nodules.extract.extract_nodules`) -> second-look candidates
(:func:`second_look_candidates`) -> false-positive classifier re-scores each candidate on the network grid ->
shape term (:func:`shape_adjusted`: the Hessian blobness of the HU at each candidate) -> world LPS/RAS centres
and the input file's voxel indices -> reported nodules are the network's candidates whose combined
probability reaches ``settings.prob_threshold``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from pipelines.imaging import preprocess
from pipelines.imaging.io import header_image, spacing_zyx
from pipelines.imaging.preprocess import CaseGeometry
from pipelines.imaging.volumes import CroppedVolume
from pipelines.nodules.record import Candidate
from pipelines.nodules.sparse_labels import labelled_voxels
from pipelines.screening.settings import ScreeningSettings

CLASSIFIER_PATCH = (48, 48, 48)


@dataclass
class CaseResult:
    """Per-case outcome on the canonical grid (arrays ``[z, y, x]``)."""

    nodules: list[Candidate]
    candidates: list[Candidate]
    nodule_mask: np.ndarray
    lung_mask: np.ndarray
    probability: CroppedVolume | None  # zero outside the lung crop; ``.full()`` for the whole grid
    warnings: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


def classify_candidates(
    candidates: list[Candidate],
    network_image: torch.Tensor,
    geometry: CaseGeometry,
    *,
    classifier: torch.nn.Module | None,
    device: torch.device,
    batch_size: int = 32,
) -> np.ndarray:
    """False-positive classifier probability per candidate (``nan`` when there is no classifier).

    ``network_image`` is the scaled ``[1, z, y, x]`` network-grid volume; patches of :data:`CLASSIFIER_PATCH`
    voxels are centred on each candidate (mapped from the canonical to the network grid).
    """
    if classifier is None or not candidates:
        return np.full(len(candidates), np.nan)
    from pipelines.training.patches import extract_patch

    vol = network_image[0].cpu().numpy()
    patches = []
    for c in candidates:
        center = geometry.canonical_to_network_index(np.asarray(c["canonical_index_zyx"], float))
        patches.append(extract_patch(vol, center, size=CLASSIFIER_PATCH, pad_value=0.0))
    batch = torch.as_tensor(np.stack(patches)[:, None]).float()
    scores = []
    with torch.inference_mode():
        for i in range(0, len(batch), batch_size):
            scores.append(torch.sigmoid(classifier(batch[i : i + batch_size].to(device)).float()).cpu())
    return torch.cat(scores)[:, 0].numpy().astype(float)


def combine_scores(seg: np.ndarray, cls: np.ndarray, weight: float) -> np.ndarray:
    """Weighted geometric mean ``seg^(1-w) * cls^w``; the segmentation score alone where ``cls`` is nan."""
    seg = np.clip(np.asarray(seg, float), 1e-6, 1.0)
    cls = np.asarray(cls, float)
    out = seg.copy()
    ok = np.isfinite(cls)
    out[ok] = seg[ok] ** (1 - weight) * np.clip(cls[ok], 1e-6, 1.0) ** weight
    return out


def shape_adjusted(scores: np.ndarray, blob: np.ndarray, weight: float) -> np.ndarray:
    """``sigmoid(logit(score) + weight * (blobness - 0.5))``: a ball gains, a vessel or a wall loses.

    ``weight`` 0 returns the scores unchanged. The term is centred on 0.5 so that a typical nodule (median
    blobness of the validation nodules about 0.6) keeps its score and the reporting threshold its meaning.
    """
    scores = np.asarray(scores, float)
    if weight == 0 or not len(scores):
        return scores
    p = np.clip(scores, 1e-7, 1 - 1e-7)
    z = np.log(p / (1 - p)) + float(weight) * (np.asarray(blob, float) - 0.5)
    return np.asarray(1.0 / (1.0 + np.exp(-z)), float)


class NetworkHU:
    """HU on the network grid ``[z, y, x]``, mapped back from the scaled image box by box when indexed.

    The second look and the shape term read HU only in small boxes around candidates and seed clusters; this
    saves a float32 copy of the whole grid (0.1 GB on the finer grid) and the time to fill it. HU outside the
    window come back clipped.
    """

    def __init__(self, data: dict[str, Any], settings: ScreeningSettings) -> None:
        self._image = torch.as_tensor(data["image"])[0].float().cpu().numpy()
        self._range = (float(settings.hu_min), float(settings.hu_max))

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._image.shape)

    def __getitem__(self, box: Any) -> np.ndarray:
        return preprocess.unscale_hu(self._image[box], hu_min=self._range[0], hu_max=self._range[1])


def network_hu(data: dict[str, Any], settings: ScreeningSettings) -> np.ndarray:
    """HU on the network grid (the scaled image mapped back; HU outside the window come back clipped)."""
    return NetworkHU(data, settings)[...]


def candidate_blobness(
    cands: list[Candidate], hu_network: np.ndarray | NetworkHU, geometry: CaseGeometry
) -> np.ndarray:
    """:func:`pipelines.nodules.second_look.blobness` at every candidate (canonical indices), on the network grid."""
    from pipelines.nodules.second_look import blobness

    spacing = float(np.mean(geometry.network_spacing_zyx))
    return np.asarray(
        [
            blobness(
                hu_network,
                geometry.canonical_to_network_index(np.asarray(c["canonical_index_zyx"], float)),
                float(c["diameter_mm"]) / 2,
                spacing,
            )
            for c in cands
        ],
        float,
    )


def _scale_candidates(
    data: dict[str, Any],
    probability_network: torch.Tensor,
    settings: ScreeningSettings,
    hu_network: np.ndarray | NetworkHU | None = None,
    *,
    scale_mm: float,
    second_look: bool,
) -> tuple[list[Candidate], np.ndarray, np.ndarray]:
    """Network and (with ``second_look``) second-look candidates of one grid: ``(candidates, mask_crop, prob_crop)``.

    Candidates carry canonical ``canonical_index_zyx``, their network score as ``probability`` and the grid's
    nominal spacing as ``scale_mm``; ``hu_network`` is the HU of ``data`` (:class:`NetworkHU`) when the caller has
    it.
    """
    from pipelines.nodules.extract import extract_nodules

    geometry: CaseGeometry = data["geometry"]
    sl = geometry.crop_slices
    prob_crop = preprocess.resample(probability_network, geometry.crop_shape).numpy()
    mask_crop, cands = extract_nodules(
        prob_crop,
        data["hu"][sl],
        spacing_zyx(geometry.canonical),
        threshold=settings.candidate_threshold,
        min_diameter_mm=settings.min_diameter_mm,
        max_candidates=settings.max_candidates,
        lung_labels_zyx=data["lungs_canonical"][sl],
    )
    start = np.asarray([b[0] for b in geometry.crop_box], float)
    for c in cands:
        c["canonical_index_zyx"] = [round(float(v), 3) for v in np.asarray(c["canonical_index_zyx"]) + start]
        c["segmentation_probability"] = float(c["probability"])
        c["source"] = "network"
    if second_look:
        cands += second_look_candidates(
            cands, data, probability_network, prob_crop, settings=settings, hu_network=hu_network
        )
    for c in cands:
        c["scale_mm"] = scale_mm
    return cands, mask_crop, prob_crop


def analyse_case(
    data: dict[str, Any],
    probability_network: torch.Tensor,
    *,
    settings: ScreeningSettings,
    classifier: torch.nn.Module | None,
    device: torch.device,
    fine: tuple[dict[str, Any], torch.Tensor] | None = None,
) -> CaseResult:
    """Turn the network-grid probability into reported nodules and candidates for one case.

    Args:
        data: the preprocessed case dictionary (``hu``, ``lungs_canonical``, ``image``, ``geometry``).
        probability_network: ``[z, y, x]`` probabilities on the network grid.
        fine: the case on the finer grid (:func:`pipelines.screening.multiscale.fine_case`) and the probabilities
            there; its candidates are merged in by :func:`pipelines.screening.multiscale.merge_scales`.
    """
    from pipelines.nodules.extract import add_original_indices, add_world_coordinates

    geometry: CaseGeometry = data["geometry"]
    hu_network = NetworkHU(data, settings)
    first_look = settings.second_look and (fine is None or settings.second_look_scope == "all")
    cands, mask_crop, prob_crop = _scale_candidates(
        data,
        probability_network,
        settings,
        hu_network,
        scale_mm=settings.target_spacing_mm,
        second_look=first_look,
    )
    if fine is not None:
        from pipelines.screening.multiscale import merge_scales

        fine_data, fine_probability = fine
        fine_mm = float(settings.fine_spacing_mm or np.mean(fine_data["geometry"].network_spacing_zyx))
        cands, mask_crop, prob_crop = merge_scales(
            (cands, mask_crop, prob_crop),
            _scale_candidates(
                fine_data, fine_probability, settings, scale_mm=fine_mm, second_look=settings.second_look
            ),
            spacing_zyx(geometry.canonical),
            max_diameter_mm=settings.fine_max_diameter_mm,
            logit_offset=settings.fine_logit_offset,
        )
        cands = sorted(cands, key=lambda c: -float(c["probability"]))[: settings.max_candidates]
    cls = classify_candidates(cands, data["image"], geometry, classifier=classifier, device=device)
    final = combine_scores(np.asarray([c["probability"] for c in cands]), cls, settings.classifier_weight)
    blob = candidate_blobness(cands, hu_network, geometry)
    final = shape_adjusted(final, blob, settings.blobness_weight)
    for c, pc, pb, pf in zip(cands, cls, blob, final):
        c["classifier_probability"] = None if not np.isfinite(pc) else round(float(pc), 4)
        c["blobness"] = round(float(pb), 4)
        c["probability"] = float(pf)  # unrounded: FROC ranks candidates by it (4 decimals tied 43 of 371)
    add_world_coordinates(cands, header_image(geometry.canonical))
    add_original_indices(cands, header_image(geometry.original))
    return _select_reported(cands, mask_crop, data, geometry, settings, prob_crop)


def second_look_candidates(
    cands: list[Candidate],
    data: dict[str, Any],
    probability_network: torch.Tensor,
    prob_crop: np.ndarray,
    *,
    settings: ScreeningSettings,
    hu_network: np.ndarray | NetworkHU | None = None,
) -> list[Candidate]:
    """Point candidates of :mod:`pipelines.nodules.second_look` beside the network's ``cands`` (canonical indices).

    They fill the room ``settings.max_candidates`` leaves, carry ``source`` ``second_look`` and the
    measurements of a sphere of the filter's scale (:func:`pipelines.nodules.extract.measure_sphere`).
    """
    from pipelines.nodules.extract import measure_sphere
    from pipelines.nodules.second_look import find_spots

    room = settings.max_candidates - len(cands)
    if room <= 0:
        return []
    geometry: CaseGeometry = data["geometry"]
    sl = geometry.crop_slices
    start = np.asarray([b.start for b in sl], float)
    hu = NetworkHU(data, settings) if hu_network is None else hu_network
    lungs = data.get("lungs")
    spots = find_spots(
        hu,
        probability_network.detach().float().cpu().numpy(),
        None if lungs is None else torch.as_tensor(lungs).cpu().numpy(),
        float(np.mean(geometry.network_spacing_zyx)),
        min_probability=settings.second_look_min_probability,
        min_response_hu=settings.second_look_min_response_hu,
        max_probability=settings.candidate_threshold,
        workers=torch.get_num_threads(),
        avoid_zyx=[
            (
                geometry.canonical_to_network_index(np.asarray(c["canonical_index_zyx"], float)).tolist(),
                float(c["diameter_mm"]) / 2,
            )
            for c in cands
        ],
    )[:room]
    out = []
    for i, spot in enumerate(spots, start=len(cands) + 1):
        centre = geometry.network_to_canonical_index(np.asarray(spot.index_zyx, float))
        row = measure_sphere(
            centre - start,
            spot.diameter_mm,
            prob_crop,
            data["hu"][sl],
            spacing_zyx(geometry.canonical),
            lung_labels_zyx=data["lungs_canonical"][sl],
        )
        row.update(
            {
                "nodule_id": i,  # candidate id: beyond the network's labels, no mask
                "canonical_index_zyx": [round(float(v), 3) for v in centre],
                "probability": spot.probability,
                "segmentation_probability": spot.probability,
                "source": "second_look",
            }
        )
        out.append(row)
    return out


def _select_reported(
    cands: list[Candidate],
    mask_crop: np.ndarray,
    data: dict[str, Any],
    geometry: CaseGeometry,
    settings: ScreeningSettings,
    prob_crop: np.ndarray,
) -> CaseResult:
    order = sorted(range(len(cands)), key=lambda i: -cands[i]["probability"])
    cands = [cands[i] for i in order]
    reported: list[Candidate] = []
    for c in cands:
        c["candidate_id"] = int(c.pop("nodule_id"))
        if c["probability"] >= settings.prob_threshold and c.get("source") != "second_look":
            c["nodule_id"] = len(reported) + 1
            reported.append(c)
    # uint8 whenever it can hold every label: the mask is written as is, without a full-size conversion
    lut = np.zeros(int(mask_crop.max(initial=0)) + 1, dtype=np.uint8 if len(reported) <= 255 else np.uint16)
    for c in reported:
        lut[c["candidate_id"]] = c["nodule_id"]
    nodule_mask = np.zeros(geometry.canonical_shape, dtype=lut.dtype)
    # only the labelled voxels are mapped and written (a few thousand of the crop's millions)
    at, labels = labelled_voxels(mask_crop)
    values = lut[labels]
    keep = values > 0
    start = [b.start for b in geometry.crop_slices]
    crop_zyx = np.unravel_index(at[keep], mask_crop.shape)
    nodule_mask[tuple(c + s for c, s in zip(crop_zyx, start, strict=True))] = values[keep]
    probability = None
    if settings.write_probability or settings.report:
        probability = CroppedVolume.from_slices(prob_crop, geometry.crop_slices, geometry.canonical_shape)
    return CaseResult(
        nodules=reported,
        candidates=cands,
        nodule_mask=nodule_mask,
        lung_mask=np.asarray(data["lungs_canonical"], dtype=np.uint8),
        probability=probability,
    )
