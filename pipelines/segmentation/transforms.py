"""MONAI dictionary transforms of the generic segmentation bundle (``configs/seg_inference.json``).

The maths lives in :mod:`pipelines.segmentation.data` (loading, geometry checks), :mod:`pipelines.imaging.modality`
(normalisation, N4) and :mod:`pipelines.imaging.preprocess` (resampling); these classes only move dictionary entries.

Data dictionaries carry:

- ``image``: a :class:`pipelines.segmentation.data.SegCase` before :class:`LoadSegCased`; then the canonical
  ``[C, z, y, x]`` float32 array; after :class:`ResampleToPland` a float32 tensor ``[C, z, y, x]`` on the
  network grid (the plan's target spacing).
- ``label`` (training only): label values ``[z, y, x]`` on the same grid as ``image``; after
  :class:`ResampleToPland` ``[1, z, y, x]``; after :class:`LabelsToClassesd` network class indices.
- ``geometry``: a :class:`pipelines.imaging.preprocess.CaseGeometry` that inverts every step.
- ``case_id``: the case name.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.transforms import MapTransform

from pipelines.imaging import io, modality, preprocess
from pipelines.imaging.preprocess import CaseGeometry
from pipelines.screening.settings import ScreeningSettings
from pipelines.segmentation.data import SegCase, load_case
from pipelines.segmentation.plan import SegPlan


def network_shape(
    shape_zyx: Sequence[int], spacing_zyx: Sequence[float], target_zyx: Sequence[float]
) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    """Shape of the grid at ``target_zyx`` mm covering the same physical box, and its exact spacing (mm)."""
    shape = tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape_zyx, spacing_zyx, target_zyx))
    exact = tuple(n * s / m for n, s, m in zip(shape_zyx, spacing_zyx, shape))
    return shape, exact  # type: ignore[return-value]


def labels_to_classes(label: np.ndarray | torch.Tensor, plan: SegPlan) -> torch.Tensor:
    """Map label values to class indices ``0..K-1`` (``plan.label_values[k]`` -> ``k``); unknown values -> 0."""
    t = torch.as_tensor(label).long()
    lut = torch.zeros(max(plan.label_values) + 1, dtype=torch.long)
    lut[torch.as_tensor(plan.label_values)] = torch.arange(plan.num_classes)
    t = t.clamp(0, len(lut) - 1) * (t < len(lut))
    return lut[t]


def classes_to_labels(classes: np.ndarray, plan: SegPlan) -> np.ndarray:
    """Map class indices back to the label values on disk (uint8 when they fit, else uint16)."""
    values = np.asarray(plan.label_values)
    dtype = np.uint8 if values.max() <= 255 else np.uint16
    return values.astype(dtype)[np.asarray(classes, dtype=np.int64)]


class LoadSegCased(MapTransform):
    """Read a case's channels (and its label map when it has one) onto the canonical grid.

    Args:
        keys: the image key (holding a :class:`SegCase`).
        label_key: where the label map goes (read only when ``case.label`` is set).
        n4: N4 bias-field correction of every channel (MRI; from the plan).
    """

    def __init__(
        self, keys: str | Sequence[str] = "image", *, label_key: str = "label", n4: bool = False
    ) -> None:
        super().__init__(keys)
        self.label_key = label_key
        self.n4 = bool(n4)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        key = self.first_key(d)
        case: SegCase = d[key]
        loaded = load_case(case, n4=self.n4, with_label=case.label is not None)
        d[key] = loaded.image
        if loaded.label is not None:
            d[self.label_key] = loaded.label
        d["geometry"] = loaded.geometry
        d["case_id"] = case.case_id
        return d


class NormalizeIntensityd(MapTransform):
    """Normalise every channel of ``[C, z, y, x]`` as the plan's modality says (:func:`modality.normalize`)."""

    def __init__(self, keys: str | Sequence[str] = "image", *, plan: SegPlan) -> None:
        super().__init__(keys)
        self.plan = plan

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            arr = np.asarray(d[key])
            stats: list[dict[str, float] | None] = list(self.plan.intensity) or [None] * arr.shape[0]
            d[key] = np.stack(
                [
                    modality.normalize(
                        ch, modality=self.plan.modality, stats=stats[c] if c < len(stats) else None
                    )
                    for c, ch in enumerate(arr)
                ]
            )
        return d


class ResampleToPland(MapTransform):
    """Resample ``[C, z, y, x]`` arrays to the plan's target spacing (trilinear; nearest for ``label_keys``).

    Sets ``geometry.network_shape`` and ``geometry.network_spacing_zyx``; label maps become ``[1, z, y, x]``
    int64 tensors. A grid of more than ``max_voxels`` voxels is refused before it is allocated
    (:func:`pipelines.imaging.preprocess.check_grid_size`).
    """

    def __init__(
        self,
        keys: Sequence[str],
        *,
        plan: SegPlan,
        label_keys: Sequence[str] = ("label",),
        device: str | None = None,
        max_voxels: int = ScreeningSettings.max_input_voxels,
    ) -> None:
        super().__init__(keys, allow_missing_keys=True)
        self.plan = plan
        self.label_keys = set(label_keys)
        self.device = device
        self.max_voxels = int(max_voxels)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        geometry: CaseGeometry = d["geometry"]
        preprocess.check_grid_size(
            geometry.crop_shape,
            crop_spacing_zyx=io.spacing_zyx(geometry.canonical),
            target_spacing_zyx=tuple(self.plan.target_spacing_zyx),
            max_voxels=self.max_voxels,
            name=str(d.get("case_id", "<memory>")),
        )
        shape, spacing = network_shape(
            geometry.crop_shape, io.spacing_zyx(geometry.canonical), self.plan.target_spacing_zyx
        )
        for key in self.key_iterator(d):
            arr = torch.as_tensor(np.asarray(d[key]))
            if key in self.label_keys:
                arr = arr.reshape((1, *arr.shape[-3:]))
                d[key] = preprocess.resample(arr, shape, mode="nearest", device=self.device).round().long()
            else:
                d[key] = preprocess.resample(arr, shape, mode="trilinear", device=self.device)
        geometry.network_shape, geometry.network_spacing_zyx = shape, spacing
        return d


class LabelsToClassesd(MapTransform):
    """Map label values to network class indices (:func:`labels_to_classes`); absent keys are skipped."""

    def __init__(self, keys: str | Sequence[str] = "label", *, plan: SegPlan) -> None:
        super().__init__(keys, allow_missing_keys=True)
        self.plan = plan

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = labels_to_classes(d[key], self.plan)
        return d
