"""Single-operation comparisons behind the fast paths: readers, resamplers and NIfTI writers on one scan.

Each row is ``{"op", "impl", "seconds", ...}`` (wall seconds of one call, after a warm-up for torch). Used by
the ``io_ops`` task of :mod:`pipelines.bench.worker`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def compare_readers(path: Path) -> list[dict[str, Any]]:
    """SimpleITK ``ReadImage`` vs MONAI ``LoadImage`` (its default reader for the suffix)."""
    from monai.transforms import LoadImage

    _, t_sitk = _timed(lambda: sitk.GetArrayFromImage(sitk.ReadImage(str(path))))
    _, t_monai = _timed(lambda: LoadImage(image_only=True)(str(path)))
    return [
        {"op": "read", "impl": "SimpleITK ReadImage + GetArrayFromImage", "seconds": t_sitk},
        {"op": "read", "impl": "MONAI LoadImage (default reader)", "seconds": t_monai},
    ]


def compare_resamplers(image: sitk.Image, *, spacing_mm: float = 1.0) -> list[dict[str, Any]]:
    """The whole canonical volume to isotropic ``spacing_mm``: torch ``interpolate``, SimpleITK, MONAI ``Spacing``."""
    from monai.data import MetaTensor
    from monai.transforms import Spacing

    from pipelines.imaging import io, preprocess

    canon = io.to_canonical(image)
    arr = sitk.GetArrayFromImage(canon).astype(np.float32)
    spacing = io.spacing_zyx(canon)
    shape, _ = preprocess.network_shape_for(arr.shape, spacing, spacing_mm)  # type: ignore[arg-type]
    preprocess.resample(arr[:8, :64, :64], (4, 32, 32))  # warm-up
    _, t_torch = _timed(lambda: preprocess.resample(arr, shape))
    _, t_sitk = _timed(lambda: _sitk_resample(canon, spacing_mm))
    affine = torch.diag(torch.tensor([*spacing[::-1], 1.0], dtype=torch.float64))
    mt = MetaTensor(torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 1, 0)))[None], affine=affine)
    _, t_monai = _timed(lambda: Spacing(pixdim=(spacing_mm,) * 3, mode="bilinear")(mt))
    rows = [
        ("torch interpolate (ours)", t_torch),
        ("SimpleITK Resample (linear)", t_sitk),
        ("MONAI Spacing (bilinear)", t_monai),
    ]
    return [
        {"op": f"resample to {spacing_mm} mm", "impl": n, "seconds": t, "shape_zyx": list(shape)}
        for n, t in rows
    ]


def _sitk_resample(image: sitk.Image, spacing_mm: float) -> sitk.Image:
    size = [max(1, round(n * s / spacing_mm)) for n, s in zip(image.GetSize(), image.GetSpacing())]
    return sitk.Resample(
        sitk.Cast(image, sitk.sitkFloat32),
        size,
        sitk.Transform(),
        sitk.sitkLinear,
        image.GetOrigin(),
        (spacing_mm,) * 3,
        image.GetDirection(),
        0.0,
        sitk.sitkFloat32,
    )


WRITERS = (
    ("SimpleITK .nii (no gzip)", ".nii", None),
    ("SimpleITK gzip level 1", ".nii.gz", 1),
    ("SimpleITK gzip default", ".nii.gz", -1),
)


def compare_writers(image: sitk.Image, out: Path) -> list[dict[str, Any]]:
    """Write a lung-like uint8 mask and the int16 CT with several writers; seconds and bytes."""
    arr = sitk.GetArrayViewFromImage(image)
    mask = sitk.GetImageFromArray(((arr > -950) & (arr < -500)).astype(np.uint8))
    mask.CopyInformation(image)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for what, img in (("uint8 mask", mask), ("int16 CT", image)):
        stem = what.split()[0]
        for name, ext, level in WRITERS:
            path = out / f"{stem}{ext}"
            w = sitk.ImageFileWriter()
            w.SetFileName(str(path))
            w.SetUseCompression(level is not None)
            if level is not None and level > 0:
                w.SetCompressionLevel(level)
            t0 = time.perf_counter()
            w.Execute(img)
            t = time.perf_counter() - t0
            rows.append({"op": f"write {what}", "impl": name, "seconds": t, "bytes": path.stat().st_size})
        rows.append(_nibabel_write(img, out / f"{stem}_nib.nii.gz", what))
    return rows


def _nibabel_write(img: sitk.Image, path: Path, what: str) -> dict[str, Any]:
    """What MONAI's ``SaveImage`` does by default: nibabel ``.nii.gz``."""
    import nibabel as nib

    arr = np.transpose(sitk.GetArrayFromImage(img), (2, 1, 0))
    affine = np.diag([*(-s for s in img.GetSpacing()[:2]), img.GetSpacing()[2], 1.0])
    _, t = _timed(lambda: nib.save(nib.Nifti1Image(arr, affine), str(path)))
    return {
        "op": f"write {what}",
        "impl": "nibabel gzip (MONAI SaveImage)",
        "seconds": t,
        "bytes": path.stat().st_size,
    }


def run_io_ops(path: Path, work: Path) -> dict[str, Any]:
    """All comparisons on one scan."""
    rows = compare_readers(path)
    image = sitk.ReadImage(str(path))
    rows += compare_resamplers(image)
    rows += compare_writers(image, work / "writers")
    return {"runs": rows}
