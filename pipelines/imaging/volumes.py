"""A volume that is zero outside one box, kept as that box: the network's probability on the canonical grid.

The network only sees the lung crop, so the canonical-grid probability is zero outside it. Embedding the crop
in a full-size float32 array costs a copy of the whole scan (~260 MB and ~0.3 s on a 512x512x251 CT) that
the report, which only reads small boxes, does not need; writing ``probability.nii.gz`` asks for
:meth:`CroppedVolume.full`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class CroppedVolume:
    """``data`` placed at ``start`` (voxel index ``[z, y, x]``) in a zero volume of ``shape``."""

    data: np.ndarray
    start: tuple[int, int, int]
    shape: tuple[int, int, int]

    def __post_init__(self) -> None:
        if self.data.ndim != 3 or len(self.start) != 3 or len(self.shape) != 3:
            raise ValueError("CroppedVolume needs a 3D array, a 3D start and a 3D shape")
        if any(s < 0 or s + n > m for s, n, m in zip(self.start, self.data.shape, self.shape, strict=True)):
            raise ValueError(f"box at {self.start} of size {self.data.shape} does not fit in {self.shape}")

    @classmethod
    def from_slices(cls, data: np.ndarray, slices: Sequence[slice], shape: Sequence[int]) -> CroppedVolume:
        start = tuple(int(s.start or 0) for s in slices)
        return cls(data, (start[0], start[1], start[2]), (int(shape[0]), int(shape[1]), int(shape[2])))

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    def full(self) -> np.ndarray:
        """The whole volume as one array (zeros outside the box)."""
        out = np.zeros(self.shape, dtype=self.data.dtype)
        out[tuple(slice(s, s + n) for s, n in zip(self.start, self.data.shape, strict=True))] = self.data
        return out
