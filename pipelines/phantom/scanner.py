"""Scanner model of the synthetic chest CT: acquisition geometry, couch, blur, noise and on-disk orientation.

Per case we draw a voxel grid (``small``: 128x128 at 2.3-3.0 mm, slices 2.5-3.5 mm; ``full``: 512x512 at
0.55-0.95 mm, slices 0.6-2.5 mm), a reconstruction kernel (point-spread blur, edge enhancement for sharp lung
kernels), a dose (noise level) and the axis order/direction the file is stored in. Volumes are ``[z, y, x]``
on the canonical LPS grid until :func:`to_disk_orientation` reorients the SimpleITK image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from pipelines.phantom.shapes import Array, Grid, coverage

# On-disk orientations (SimpleITK DICOMOrient codes: the direction each array axis i, j, k points *from*).
# LPS is what DICOM/ITK store, RAS what most NIfTI tools write; the others flip or permute axes.
ORIENTATIONS = ("LPS", "RAS", "LPI", "RAI", "LAS", "RPI", "LSP", "PLS", "SRA")


@dataclass(frozen=True)
class ScanSpec:
    """Acquisition and storage settings of one synthetic scan (mm, HU)."""

    grid: Grid
    orientation: str
    blur_xy_mm: float
    blur_z_mm: float
    sharpen: float
    noise_hu: float
    noise_corr_mm: float
    fov_pad: float | None  # value outside the reconstruction circle, or None

    @property
    def fov_mm(self) -> float:
        return self.grid.shape_zyx[2] * self.grid.spacing_zyx[2]


def sample_scan(
    rng: np.random.Generator, *, size: str, modality: str = "ct", lung_span_mm: float = 300.0
) -> ScanSpec:
    """Draw a scan geometry and reconstruction for ``size`` in {"small", "full"}."""
    if size not in ("small", "full"):
        raise ValueError(f"size must be 'small' or 'full', not {size!r}")
    if size == "small":
        n_xy, dxy = 128, float(rng.uniform(2.3, 3.0))
        dz = float(rng.uniform(2.5, 3.5)) if modality == "ct" else float(rng.uniform(3.0, 5.0))
        max_nz = 140
    else:
        n_xy = 512 if modality == "ct" else 256
        dxy = float(rng.uniform(0.55, 0.95)) * (512 / n_xy)
        dz = float(rng.choice([0.625, 0.8, 1.0, 1.25, 1.5, 2.0, 2.5, rng.uniform(0.6, 2.5)]))
        dz = dz if modality == "ct" else float(rng.uniform(3.0, 6.0))
        max_nz = 320
    nz = int(min(np.ceil(lung_span_mm / dz), max_nz))
    fov = n_xy * dxy
    origin = (
        -fov / 2 + float(rng.uniform(-20, 20)),
        -fov / 2 + float(rng.uniform(-30, 15)),
        float(rng.uniform(-400, 100)),
    )
    grid = Grid((nz, n_xy, n_xy), (dz, dxy, dxy), origin)
    sharp = bool(rng.random() < 0.5)
    noise = float(rng.uniform(25, 110) if sharp else rng.uniform(8, 35))
    return ScanSpec(
        grid=grid,
        orientation=str(rng.choice(ORIENTATIONS)),
        blur_xy_mm=float(rng.uniform(0.3, 0.5) if sharp else rng.uniform(0.5, 0.9)),
        blur_z_mm=0.42 * dz,
        sharpen=float(rng.uniform(0.4, 1.2)) if sharp else 0.0,
        noise_hu=noise,
        noise_corr_mm=float(rng.uniform(0.25, 0.45) if sharp else rng.uniform(0.5, 1.0)),
        fov_pad=float(rng.choice([-1024.0, -2048.0, -3024.0])) if rng.random() < 0.3 else None,
    )


def paint_table(hu: Array, grid: Grid, *, top_y: float, center_x: float, rng: np.random.Generator) -> None:
    """Paint a curved carbon-fibre couch (dense shells around a foam core) below ``top_y`` (LPS mm), in place."""
    x, y, _ = grid.axes()
    radius = float(rng.uniform(350, 700))
    thick = float(rng.uniform(8, 18))
    half_w = float(rng.uniform(190, 260))
    sag = (x[0] - center_x) ** 2 / (2 * radius)
    depth = y[0] - (top_y - sag)  # mm below the upper surface
    inside = (np.abs(x[0] - center_x) < half_w).astype(np.float32)
    h = grid.h
    outer = coverage(-depth, h) * coverage(depth - thick, h) * inside
    core = coverage(-(depth - 1.5), h) * coverage(depth - thick + 1.5, h) * inside
    slab = outer * float(rng.uniform(150, 450)) + core * (
        float(rng.uniform(-950, -700)) - float(rng.uniform(150, 450))
    )
    slab = np.where(outer > 0, -1000.0 + outer * 1000.0 + slab, 0.0).astype(np.float32)
    mask = outer > 0
    for k in range(hu.shape[0]):
        sl = hu[k]
        sl[mask] = np.where(sl[mask] < -900, slab[mask], sl[mask])
    if rng.random() < 0.6:  # a thin pad on the couch
        pad = coverage(-(depth + 6.0), h) * coverage(depth, h) * inside
        val = float(rng.uniform(-900, -500))
        for k in range(hu.shape[0]):
            sl = hu[k]
            sel = (pad > 0) & (sl < -950)
            sl[sel] = -1000.0 + pad[sel] * (val + 1000.0)


def apply_scanner(hu: Array, spec: ScanSpec, rng: np.random.Generator) -> Array:
    """Blur with the kernel's point-spread function, add correlated noise, quantise to int16 HU.

    Args:
        hu: float32 ``[z, y, x]`` noiseless HU on ``spec.grid`` (consumed).

    Returns:
        int16 ``[z, y, x]`` HU clipped to [-1024, 3071] (or the FOV padding value outside the circle).
    """
    from scipy import ndimage

    g = spec.grid
    sig = np.asarray([spec.blur_z_mm, spec.blur_xy_mm, spec.blur_xy_mm]) / np.asarray(g.spacing_zyx)
    out = ndimage.gaussian_filter(hu, sig, truncate=3.0)
    del hu
    if spec.sharpen > 0:
        wide = np.asarray([max(spec.blur_z_mm, 0.6), 1.2, 1.2]) / np.asarray(g.spacing_zyx)
        out += spec.sharpen * (out - ndimage.gaussian_filter(out, wide, truncate=2.5))
    noise = rng.standard_normal(g.shape_zyx, dtype=np.float32)
    corr = np.asarray(
        [min(spec.noise_corr_mm, 0.3 * g.spacing_zyx[0]), spec.noise_corr_mm, spec.noise_corr_mm]
    )
    noise = ndimage.gaussian_filter(noise, corr / np.asarray(g.spacing_zyx), truncate=3.0)
    noise *= spec.noise_hu / max(float(noise[:: max(1, noise.shape[0] // 8)].std()), 1e-6)
    # photon starvation: more noise in the dense middle of the body than in air
    out += noise * np.clip((out + 1000.0) / 1000.0, 0.35, 1.3)
    np.clip(out, -1024, 3071, out=out)
    if spec.fov_pad is not None:
        x, y, _ = g.axes()
        cx = g.origin_xyz[0] + g.spacing_zyx[2] * (g.shape_zyx[2] - 1) / 2
        cy = g.origin_xyz[1] + g.spacing_zyx[1] * (g.shape_zyx[1] - 1) / 2
        outside = (x[0] - cx) ** 2 + (y[0] - cy) ** 2 > (spec.fov_mm / 2) ** 2
        out[:, outside] = spec.fov_pad
    return np.round(out).astype(np.int16)


def to_disk_orientation(image: sitk.Image, code: str) -> sitk.Image:
    """Reorient a canonical (LPS) image to the stored orientation ``code`` (a DICOMOrient code, no resampling)."""
    return sitk.DICOMOrient(image, code) if code != "LPS" else image
