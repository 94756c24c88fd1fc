"""MONAI dictionary transforms that the bundle configs name; the maths lives in :mod:`pipelines.imaging.preprocess`.

Data dictionaries carry:

- ``image``: a path, a :class:`pipelines.imaging.discovery.CaseInput` or an in-memory ``SimpleITK.Image`` before
  :class:`LoadScand`; afterwards the canonical ``[z, y, x]`` array, and after :class:`ScaleHUd` a float32
  tensor ``[1, z, y, x]`` on the network grid in [0, 1].
- ``hu``: the canonical HU array (``[z, y, x]``; int16 for integer scans, else float32) kept for measurements.
- ``lungs``: lung labels (1 right, 2 left) on the same grid as ``image``.
- ``geometry``: a :class:`pipelines.imaging.preprocess.CaseGeometry` that inverts every step.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
from monai.transforms import MapTransform

from pipelines.imaging import discovery, filesys, io, preprocess
from pipelines.imaging.preprocess import CaseGeometry
from pipelines.screening.settings import ScreeningSettings


def load_canonical(source: Any) -> tuple[np.ndarray, io.ImageHeader, io.ImageHeader, str]:
    """Read a path / CaseInput / SimpleITK image; return (canonical array, canonical header, original header,
    name for messages). The array is int16 for integer scans up to 16 bits, float32 otherwise."""
    if isinstance(source, sitk.Image):
        io.validate_image(source)
        image, name = io.to_3d(source), "<memory>"
    elif isinstance(source, discovery.CaseInput) and source.image is not None:
        io.validate_image(source.image)
        image, name = source.image, source.case_id
    elif isinstance(source, discovery.CaseInput):
        image, name = io.read_image(source.path, dicom_files=source.dicom_files or None), str(source.path)
    else:
        image, name = io.read_image(Path(source)), str(source)
    image = io.to_3d(image)
    original = io.ImageHeader.of(image)
    array, canon = io.canonical_array(image, dtype=_array_dtype(image))
    return array, canon, original, name


#: Pixel types kept as int16 on the canonical grid (every CT stored as integers); float images stay float32.
_INT16_SAFE = {sitk.sitkInt8, sitk.sitkUInt8, sitk.sitkInt16}


def _array_dtype(image: sitk.Image) -> type:
    """int16 for integer CT (half the memory of float32 for the full-resolution ``hu`` copy), else float32."""
    return np.int16 if image.GetPixelID() in _INT16_SAFE else np.float32


class LoadScand(MapTransform):
    """Read the scan (any format/orientation) onto the canonical LPS grid, plus label maps on the same grid.

    Args:
        keys: the image key (one).
        label_keys: label maps (paths) that must share the image's geometry (nodule masks, lung masks).
        modality: ``ct`` checks that intensities are Hounsfield units; ``mri`` does not.
    """

    def __init__(
        self, keys: str | Sequence[str] = "image", *, label_keys: Sequence[str] = (), modality: str = "ct"
    ) -> None:
        super().__init__(keys)
        self.label_keys = list(label_keys)
        self.modality = modality

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        key = self.first_key(d)
        source = d[key]
        dicom_modality = getattr(source, "modality", "") if isinstance(source, discovery.CaseInput) else ""
        if self.modality == "ct" and dicom_modality and dicom_modality != "CT":
            raise filesys.ImageReadError(
                str(source.path),
                f"DICOM modality {dicom_modality}, not CT: screening takes chest CT; "
                "MRI belongs to `lungscreen segment`",
            )
        array, canon, original, name = load_canonical(source)
        if self.modality == "ct":
            preprocess.check_ct_units(array, path=name)
        d[key] = array
        d["hu"] = array
        d["source_name"] = name
        d["geometry"] = CaseGeometry(
            original=original,
            canonical=canon,
            crop_box=((0, array.shape[0]), (0, array.shape[1]), (0, array.shape[2])),
            network_shape=array.shape,  # type: ignore[arg-type]
            network_spacing_zyx=io.spacing_zyx(canon),
        )
        for lk in self.label_keys:
            if lk in d and d[lk] is not None:
                d[lk] = self._load_label(d[lk], original)
        return d

    @staticmethod
    def _load_label(path: Any, original: io.ImageHeader) -> np.ndarray:
        label = io.to_3d(io.read_image(path) if not isinstance(path, sitk.Image) else path)
        hdr = io.ImageHeader.of(label)
        if tuple(hdr.size) != tuple(original.size) or not np.allclose(
            hdr.spacing, original.spacing, atol=1e-3
        ):
            raise filesys.ImageReadError(
                path, f"label grid {hdr.size} does not match its image grid {original.size}"
            )
        return io.canonical_array(label, dtype=np.uint8)[0]


class LungMaskd(MapTransform):
    """Segment the lungs (labels 1 right, 2 left) with :func:`pipelines.lungs.lungseg.segment_lungs`.

    If ``lung_key`` already holds a mask (training data with reference lungs), it is kept.
    """

    def __init__(self, keys: str | Sequence[str] = "image", *, lung_key: str = "lungs") -> None:
        super().__init__(keys)
        self.lung_key = lung_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        from pipelines.lungs.lungseg import segment_lungs

        d = dict(data)
        if d.get(self.lung_key) is None:
            geometry: CaseGeometry = d["geometry"]
            d[self.lung_key] = segment_lungs(d["hu"], geometry.network_spacing_zyx)
        d[f"{self.lung_key}_canonical"] = d[self.lung_key]
        return d


class CropToLungsd(MapTransform):
    """Crop ``keys`` (and ``hu`` is kept whole) to the lung bounding box plus ``margin_mm``.

    When no lung is found the whole volume is kept and ``no_lung`` is set, so the engine can report it.
    """

    def __init__(self, keys: Sequence[str], *, lung_key: str = "lungs", margin_mm: float = 12.0) -> None:
        super().__init__(keys, allow_missing_keys=True)
        self.lung_key = lung_key
        self.margin_mm = margin_mm

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        geometry: CaseGeometry = d["geometry"]
        spacing = geometry.network_spacing_zyx
        box = preprocess.lung_crop_box(np.asarray(d[self.lung_key]), spacing, margin_mm=self.margin_mm)
        d["no_lung"] = box is None
        if box is None:
            return d
        geometry.crop_box = box
        sl = geometry.crop_slices
        for key in self.key_iterator(d):
            d[key] = np.ascontiguousarray(d[key][sl])
        geometry.network_shape = geometry.crop_shape
        return d


class ResampleToSpacingd(MapTransform):
    """Resample the cropped arrays to isotropic ``spacing_mm`` (trilinear images, nearest-exact labels).

    A grid of more than ``max_voxels`` voxels (the setting ``max_input_voxels``) is refused before it is
    allocated (:func:`pipelines.imaging.preprocess.check_grid_size`).
    """

    def __init__(
        self,
        keys: Sequence[str],
        *,
        spacing_mm: float | None,
        label_keys: Sequence[str] = (),
        device: str | None = None,
        max_voxels: int = ScreeningSettings.max_input_voxels,
    ) -> None:
        super().__init__(keys, allow_missing_keys=True)
        # None builds (a bundle's optional fine pass with its spacing switched off) but never runs
        self.spacing_mm = None if spacing_mm is None else float(spacing_mm)
        self.label_keys = set(label_keys)
        self.device = device
        self.max_voxels = int(max_voxels)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        if self.spacing_mm is None:
            raise ValueError("ResampleToSpacingd: spacing_mm is None (no grid to resample to)")
        d = dict(data)
        geometry: CaseGeometry = d["geometry"]
        crop_spacing = io.spacing_zyx(geometry.canonical)
        preprocess.check_grid_size(
            geometry.crop_shape,
            crop_spacing_zyx=crop_spacing,
            target_spacing_zyx=(self.spacing_mm,) * 3,
            max_voxels=self.max_voxels,
            name=str(d.get("source_name", "<memory>")),
        )
        shape, spacing = preprocess.network_shape_for(geometry.crop_shape, crop_spacing, self.spacing_mm)
        geometry.network_shape, geometry.network_spacing_zyx = shape, spacing
        for key in self.key_iterator(d):
            mode = "nearest" if key in self.label_keys else "trilinear"
            out = preprocess.resample(d[key], shape, mode=mode, device=self.device)
            d[key] = out.to(torch.uint8) if key in self.label_keys else out
        return d


class ScaleHUd(MapTransform):
    """Clip HU to ``[hu_min, hu_max]``, scale to [0, 1] and add the channel axis: ``[1, z, y, x]`` float32."""

    def __init__(self, keys: str | Sequence[str] = "image", *, hu_min: float, hu_max: float) -> None:
        super().__init__(keys)
        self.hu_min, self.hu_max = hu_min, hu_max

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            t = torch.as_tensor(d[key]).float()
            d[key] = preprocess.scale_hu(t, hu_min=self.hu_min, hu_max=self.hu_max)[None]
        return d


class AddChanneld(MapTransform):
    """Add a leading channel axis to label tensors ``[z, y, x]`` -> ``[1, z, y, x]``."""

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = torch.as_tensor(d[key])[None]
        return d
