"""Pure preprocessing functions on canonical ``[z, y, x]`` arrays, each with its exact inverse.

The chain is: canonical grid (see :mod:`pipelines.imaging.io`) -> crop to the lungs plus a margin -> resample to an
isotropic network grid -> HU window scaled to [0, 1]. :class:`CaseGeometry` records every step so that
network outputs go back to the canonical grid (:func:`restore_to_canonical`) and then to the file's own grid
(:func:`pipelines.imaging.io.from_canonical`).

Resampling follows the voxel-edge convention (``align_corners=False``): a resampled grid covers exactly the
same physical box as its source, so going there and back is a pure interpolation with no shift.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from pipelines.imaging.filesys import ImageReadError
from pipelines.imaging.header import format_count
from pipelines.imaging.io import ImageHeader

Box = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]


@dataclass
class CaseGeometry:
    """Everything needed to map network-grid outputs back to the input file's grid.

    Attributes:
        original: header of the image as stored on disk.
        canonical: header of the canonical (LPS) grid; ``canonical.size`` is ``(x, y, z)``.
        crop_box: ``((z0, z1), (y0, y1), (x0, x1))`` on the canonical grid.
        network_shape: ``(z, y, x)`` shape of the resampled crop.
        network_spacing_zyx: its voxel size in mm (close to the target, exact for the physical box).
    """

    original: ImageHeader
    canonical: ImageHeader
    crop_box: Box
    network_shape: tuple[int, int, int]
    network_spacing_zyx: tuple[float, float, float]

    @property
    def canonical_shape(self) -> tuple[int, int, int]:
        x, y, z = self.canonical.size[:3]
        return (int(z), int(y), int(x))

    @property
    def crop_shape(self) -> tuple[int, int, int]:
        (z0, z1), (y0, y1), (x0, x1) = self.crop_box
        return (z1 - z0, y1 - y0, x1 - x0)

    @property
    def crop_slices(self) -> tuple[slice, slice, slice]:
        return tuple(slice(a, b) for a, b in self.crop_box)  # type: ignore[return-value]

    def network_to_canonical_index(self, index_zyx: np.ndarray) -> np.ndarray:
        """Map continuous ``[z, y, x]`` indices on the network grid to the canonical grid (voxel centres)."""
        idx = np.asarray(index_zyx, dtype=float)
        scale = np.asarray(self.crop_shape, float) / np.asarray(self.network_shape, float)
        start = np.asarray([b[0] for b in self.crop_box], float)
        return start + (idx + 0.5) * scale - 0.5

    def canonical_to_network_index(self, index_zyx: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`network_to_canonical_index`."""
        idx = np.asarray(index_zyx, dtype=float)
        scale = np.asarray(self.crop_shape, float) / np.asarray(self.network_shape, float)
        start = np.asarray([b[0] for b in self.crop_box], float)
        return (idx - start + 0.5) / scale - 0.5

    def network_to_world(self, index_zyx: np.ndarray) -> np.ndarray:
        """Continuous network-grid indices ``[N, 3]`` (z, y, x) -> world LPS mm ``[N, 3]`` (x, y, z)."""
        from pipelines.imaging.io import header_image

        img = header_image(self.canonical)
        out = []
        for idx in np.asarray(index_zyx, float).reshape(-1, 3):
            c = self.network_to_canonical_index(idx)
            out.append(img.TransformContinuousIndexToPhysicalPoint([float(v) for v in c[::-1]]))
        return np.asarray(out, float).reshape(-1, 3)

    def world_to_network(self, world_lps: np.ndarray) -> np.ndarray:
        """World LPS mm ``[N, 3]`` -> continuous network-grid indices ``[N, 3]`` (z, y, x)."""
        from pipelines.imaging.io import header_image

        img = header_image(self.canonical)
        out = []
        for w in np.asarray(world_lps, float).reshape(-1, 3):
            xyz = img.TransformPhysicalPointToContinuousIndex([float(v) for v in w])
            out.append(self.canonical_to_network_index(np.asarray(xyz[::-1], float)))
        return np.asarray(out, float).reshape(-1, 3)


def check_ct_units(hu_zyx: np.ndarray, *, path: str = "<memory>") -> None:
    """Refuse CT intensities that are not Hounsfield units (e.g. raw 0..4095 stored values).

    A chest CT always holds air (about -1000 HU) in the lungs or around the body. If the darkest percentile is
    at or above -200, the scan is not in HU (raw CT numbers without the rescale intercept, or not a CT).

    Raises:
        ImageReadError: naming the file and the measured intensity range.
    """
    sample = hu_zyx[:: max(1, hu_zyx.shape[0] // 16), ::4, ::4]
    lo, hi = np.percentile(sample, [0.5, 99.5])
    if lo >= -200:
        raise ImageReadError(
            path,
            f"intensities {lo:.0f}..{hi:.0f} are not Hounsfield units (no air near -1000 HU): raw CT numbers "
            "need their rescale intercept (usually -1024), and MRI belongs to `lungscreen segment`",
        )


def lung_crop_box(
    lungs_zyx: np.ndarray, spacing_zyx: tuple[float, float, float], *, margin_mm: float
) -> Box | None:
    """Bounding box of the lung labels plus ``margin_mm`` on every side, clipped to the array; None if empty."""
    if not lungs_zyx.any():
        return None
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        present = np.flatnonzero(lungs_zyx.any(axis=other))
        margin = int(np.ceil(margin_mm / spacing_zyx[axis]))
        box.append(
            (max(0, int(present[0]) - margin), min(lungs_zyx.shape[axis], int(present[-1]) + 1 + margin))
        )
    return (box[0], box[1], box[2])


def network_shape_for(
    crop_shape: tuple[int, int, int], spacing_zyx: tuple[float, float, float], target_mm: float
) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    """Shape of the isotropic grid covering the same box, and its exact spacing ``(z, y, x)`` in mm."""
    shape = tuple(max(1, int(round(n * s / target_mm))) for n, s in zip(crop_shape, spacing_zyx))
    spacing = tuple(n * s / m for n, s, m in zip(crop_shape, spacing_zyx, shape))
    return shape, spacing  # type: ignore[return-value]


def check_grid_size(
    shape_zyx: tuple[int, ...],
    *,
    crop_spacing_zyx: tuple[float, ...],
    target_spacing_zyx: tuple[float, ...],
    max_voxels: int,
    name: str = "<memory>",
) -> None:
    """Refuse a resampled grid of more than ``max_voxels`` voxels before anything is allocated.

    The network grid's size is the physical extent divided by the target spacing: a coarse scan (large
    voxels) or a very fine target spacing would ask the allocator for hundreds of GB.

    Args:
        shape_zyx: ``(z, y, x)`` voxels of the region to resample (the lung crop).
        crop_spacing_zyx: its voxel size in mm.
        target_spacing_zyx: the grid's voxel size in mm.
        max_voxels: the limit (the screening setting ``max_input_voxels``).
        name: the input named in the error.

    Raises:
        ImageReadError: naming the input, the grid and the limit.
    """
    extent = [n * s for n, s in zip(shape_zyx, crop_spacing_zyx)]
    grid = [max(1, round(e / t)) for e, t in zip(extent, target_spacing_zyx)]
    voxels = int(np.prod(grid, dtype=object))  # Python integers: no overflow
    if voxels > max_voxels:
        raise ImageReadError(
            name,
            f"resampling the {'x'.join(f'{e:.0f}' for e in extent)} mm region (z, y, x) to "
            f"{'/'.join(f'{t:g}' for t in dict.fromkeys(target_spacing_zyx))} mm voxels would make a "
            f"{'x'.join(str(g) for g in grid)} grid of {format_count(voxels)} voxels, above the limit of "
            f"{format_count(max_voxels)} (setting max_input_voxels): refused before allocating it",
        )


def resample(
    array_zyx: np.ndarray | torch.Tensor,
    shape: tuple[int, int, int],
    *,
    mode: str = "trilinear",
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Resample a ``[z, y, x]`` (or ``[C, z, y, x]``) array to ``shape`` covering the same physical box.

    ``mode`` is ``trilinear`` for images and probabilities, ``nearest`` for labels (``nearest-exact`` is used
    so label voxels map to the nearest centre symmetrically). Returns a float32 tensor with the input's
    channel layout.
    """
    t = torch.as_tensor(array_zyx)
    if device is not None:
        t = t.to(device)
    squeeze = t.ndim == 3
    t = t[None, None] if squeeze else t[None]
    t = t.float()
    if tuple(t.shape[2:]) == tuple(shape):
        out = t
    elif mode != "nearest" and t.shape[2] == shape[0]:
        # z unchanged: trilinear weights along z are exactly 1 and 0, so slice-by-slice bilinear gives the
        # same values (to float32 rounding: bit for bit on the bench phantom) at half the reads (a 1 mm
        # slice scan on its 1 mm network grid)
        per_slice = t[0].transpose(0, 1)  # [z, C, y, x]
        out = F.interpolate(per_slice, size=tuple(shape[1:]), mode="bilinear", align_corners=False)
        out = out.transpose(0, 1)[None]
        if out.shape[1] > 1:
            out = out.contiguous()
    elif mode == "nearest":
        out = F.interpolate(t, size=shape, mode="nearest-exact")
    else:
        out = F.interpolate(t, size=shape, mode="trilinear", align_corners=False)
    return out[0, 0] if squeeze else out[0]


def scale_hu(array: torch.Tensor, *, hu_min: float, hu_max: float) -> torch.Tensor:
    """Clip HU to ``[hu_min, hu_max]`` and scale linearly to [0, 1] (float32)."""
    return ((array.clamp(hu_min, hu_max) - hu_min) / (hu_max - hu_min)).float()


def unscale_hu(array: np.ndarray, *, hu_min: float, hu_max: float) -> np.ndarray:
    """HU back from :func:`scale_hu`'s [0, 1] values (clipped HU stay clipped)."""
    out = np.multiply(array, hu_max - hu_min)  # one new array, shifted in place
    out += hu_min
    return out


def restore_to_canonical(
    network_array: torch.Tensor | np.ndarray, geometry: CaseGeometry, *, mode: str = "trilinear"
) -> np.ndarray:
    """Resample a network-grid ``[z, y, x]`` map back to the crop and paste it into the canonical grid.

    Outside the crop the result is 0. Returns float32 (``trilinear``) or the input dtype semantics (``nearest``).
    """
    crop = resample(network_array, geometry.crop_shape, mode=mode).cpu().numpy()
    full = np.zeros(geometry.canonical_shape, dtype=np.float32)
    full[geometry.crop_slices] = crop
    return full
