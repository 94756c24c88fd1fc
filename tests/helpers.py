"""Shared test utilities: tiny synthetic chest CT, on-disk variants (orientations, formats, DICOM series),
deterministic fake networks and a wrapper that runs :func:`pipelines.screening.api.screen` with tiny settings.

Frames and layouts follow CONTRIBUTING.md: arrays are ``[z, y, x]`` on the canonical LPS grid (x toward the
patient's left, y posterior, z superior), world coordinates are LPS millimetres, spacing given to SimpleITK is
``(x, y, z)``.
"""

from __future__ import annotations

import contextlib
import json
import locale
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "monai_bundle"

# Fast screening settings for tests: 3 mm network grid, 32^3 windows, no HTML report.
FAST: dict[str, Any] = {
    "roi_size": [32, 32, 32],
    "target_spacing_mm": 3.0,
    "report": False,
    "device": "cpu",
    "sw_batch_size": 2,
    "lung_margin_mm": 6.0,
    "fine_spacing_mm": None,  # the finer second grid is tested on its own (tests/test_multiscale.py)
}
BODY_HU, LUNG_HU, AIR_HU = 0, -850, -1000


# --------------------------------------------------------------------------------------------- volumes
def chest_hu(
    shape_zyx: tuple[int, int, int] = (24, 48, 56),
    *,
    spacing_zyx: tuple[float, float, float] = (4.0, 4.0, 4.0),
    sphere: tuple[tuple[float, float, float], float, float] | None = None,
    noise_hu: float = 0.0,
    seed: int = 0,
) -> np.ndarray:
    """A tiny chest CT in HU on the canonical grid, ``[z, y, x]`` int16.

    Air (-1000) around a body ellipse (0 HU) over the middle 80% of slices, holding a right (smaller x) and a
    left lung ellipsoid (-850 HU). ``sphere = (centre_zyx_index, radius_mm, hu)`` plants a ball (e.g. a nodule
    inside a lung). ``spacing_zyx`` (mm) only scales the ball's radius into voxels.
    """
    nz, ny, nx = shape_zyx
    z, y, x = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    hu = np.full(shape_zyx, AIR_HU, dtype=np.float32)
    cy, cx = (ny - 1) / 2, (nx - 1) / 2
    z_in = (z >= nz * 0.1) & (z <= nz * 0.9)
    body = (((y - cy) / (ny * 0.42)) ** 2 + ((x - cx) / (nx * 0.46)) ** 2 <= 1) & z_in
    hu[body] = BODY_HU
    zc, zr = (nz - 1) / 2, nz * 0.32
    for side in (-1, 1):
        lx = cx + side * nx * 0.2
        lung = ((z - zc) / zr) ** 2 + ((y - cy) / (ny * 0.3)) ** 2 + ((x - lx) / (nx * 0.15)) ** 2 <= 1
        hu[lung] = LUNG_HU
    if sphere is not None:
        centre, radius_mm, value = sphere
        d2 = sum(((g - c) * s) ** 2 for g, c, s in zip((z, y, x), centre, spacing_zyx))
        hu[d2 <= radius_mm**2] = value
    if noise_hu:
        hu += np.random.default_rng(seed).normal(0, noise_hu, hu.shape).astype(np.float32)
    return np.clip(np.round(hu), -1024, 3071).astype(np.int16)


def lung_centre_zyx(shape_zyx: tuple[int, int, int], *, side: str = "right") -> tuple[float, float, float]:
    """Index ``[z, y, x]`` of the centre of a lung ellipsoid of :func:`chest_hu`."""
    nz, ny, nx = shape_zyx
    sign = -1 if side == "right" else 1
    return ((nz - 1) / 2, (ny - 1) / 2, (nx - 1) / 2 + sign * nx * 0.2)


def to_image(
    array_zyx: np.ndarray,
    *,
    spacing_xyz: Sequence[float] = (4.0, 4.0, 4.0),
    origin: Sequence[float] = (0.0, 0.0, 0.0),
) -> sitk.Image:
    """A canonical (identity direction, LPS) SimpleITK image from a ``[z, y, x]`` array."""
    img = sitk.GetImageFromArray(array_zyx)
    img.SetSpacing(tuple(float(s) for s in spacing_xyz))
    img.SetOrigin(tuple(float(o) for o in origin))
    return img


def chest_image(**kwargs: Any) -> sitk.Image:
    """:func:`chest_hu` as a canonical image with 4 mm isotropic voxels."""
    return to_image(chest_hu(**kwargs))


def write_case(image: sitk.Image, path: Path) -> Path:
    """Write an image (NIfTI/MHD/NRRD chosen by the extension) and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), useCompression=True)
    return path


# --------------------------------------------------------------------------------------------- DICOM
_DICOM_COUNTER = [0]


def write_dicom_series(
    image: sitk.Image,
    folder: Path,
    *,
    series_uid: str | None = None,
    modality: str = "CT",
    image_type: str = "ORIGINAL\\PRIMARY\\AXIAL",
    orientation_override: dict[int, str] | None = None,
    z_offsets_mm: dict[int, float] | None = None,
    extra_tags: dict[str, str] | None = None,
) -> list[Path]:
    """Write a 3D int16 image as one DICOM file per axial slice with geometry tags (0020|0032, 0020|0037).

    ``orientation_override`` maps a slice index to another ImageOrientationPatient string (mixed orientations);
    ``z_offsets_mm`` shifts a slice's ImagePositionPatient along the slice normal (uneven gaps).
    Returns the slice files in slice order.
    """
    folder.mkdir(parents=True, exist_ok=True)
    _DICOM_COUNTER[0] += 1
    uid = series_uid or f"1.2.826.0.1.3680043.2.1125.{os.getpid()}.{_DICOM_COUNTER[0]}"
    img = sitk.Cast(image, sitk.sitkInt16)
    d = img.GetDirection()
    iop = "\\".join(f"{v:.6f}" for v in (d[0], d[3], d[6], d[1], d[4], d[7]))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    files: list[Path] = []
    # GDCM's DICOM writer switches the process to the C locale, which makes Python's default text encoding
    # ASCII for every later test in the process: restore it.
    saved_locale = locale.setlocale(locale.LC_ALL)
    try:
        _write_slices(img, folder, writer, files, uid=uid, iop=iop, image_type=image_type, modality=modality,
                      orientation_override=orientation_override, z_offsets_mm=z_offsets_mm,
                      extra_tags=extra_tags)  # fmt: skip
    finally:
        locale.setlocale(locale.LC_ALL, saved_locale)
    return files


def _write_slices(
    img: sitk.Image,
    folder: Path,
    writer: sitk.ImageFileWriter,
    files: list[Path],
    *,
    uid: str,
    iop: str,
    image_type: str,
    modality: str,
    orientation_override: dict[int, str] | None,
    z_offsets_mm: dict[int, float] | None,
    extra_tags: dict[str, str] | None,
) -> None:
    d = img.GetDirection()
    for k in range(img.GetDepth()):
        sl = img[:, :, k]
        shift = (z_offsets_mm or {}).get(k, 0.0)
        pos = np.asarray(img.TransformIndexToPhysicalPoint((0, 0, k))) + shift * np.asarray(d[2::3])
        tags = {
            "0008|0060": modality,
            "0008|0008": image_type,
            "0020|000e": uid,
            "0020|000d": uid + ".1",
            "0008|0018": f"{uid}.{k + 100}",
            "0020|0037": (orientation_override or {}).get(k, iop),
            "0020|0032": "\\".join(f"{v:.4f}" for v in pos),
            "0020|0013": str(k + 1),
            "0018|0050": f"{img.GetSpacing()[2]:.4f}",
            "0028|1052": "0",
            "0028|1053": "1",
        }
        for key, value in {**tags, **(extra_tags or {})}.items():
            sl.SetMetaData(key, value)
        f = folder / f"slice_{k:03d}.dcm"
        writer.SetFileName(str(f))
        writer.Execute(sl)
        files.append(f)


# --------------------------------------------------------------------------------------------- networks
def network_def() -> torch.nn.Module:
    """The bundle's ``network_def`` built from ``inference.json`` (never re-declared here)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "inference.json"))
    net = parser.get_parsed_content("network_def")
    assert isinstance(net, torch.nn.Module)
    return net


def silent_weights(path: Path, *, bias: float = -10.0) -> Path:
    """Save weights of the bundle's network whose output is the constant logit ``bias`` (nothing detected).

    Every parameter is zeroed and the bias of the last convolution is set to ``bias``.
    """
    net = network_def()
    state = {k: torch.zeros_like(v) for k, v in net.state_dict().items()}
    last_bias = [k for k, v in state.items() if k.endswith(".bias") and v.ndim == 1][-1]
    state[last_bias].fill_(bias)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


class ThresholdNet(torch.nn.Module):
    """Fake nodule network: logit ``gain * (x - threshold)`` on the scaled image ``[B, 1, z, y, x]``.

    With the HU window [-1000, 500] scaled to [0, 1], ``threshold=0.75`` fires above ~125 HU: a bright planted
    ball fires, lung (-850), body (0 HU) and air do not.
    """

    def __init__(self, threshold: float = 0.75, gain: float = 200.0) -> None:
        super().__init__()
        self.threshold, self.gain = threshold, gain
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.threshold) * self.gain + self.dummy


@contextlib.contextmanager
def patched_network(monkeypatch: Any, target: str = "helpers.ThresholdNet", **kwargs: Any) -> Iterator[None]:
    """Make :func:`pipelines.screening.api.screen` build ``target`` as the bundle's ``network_def``."""
    import pipelines.bundle as bundle

    original = bundle.load_workflow

    def load(*args: Any, overrides: dict[str, Any] | None = None, **kw: Any) -> Any:
        extra = {"network_def": {"_target_": target, **kwargs}}
        return original(*args, overrides={**(overrides or {}), **extra}, **kw)

    monkeypatch.setattr(bundle, "load_workflow", load)
    yield


# --------------------------------------------------------------------------------------------- running
def run_screen(inputs: Any, out: Path, **settings: Any) -> Any:
    """:func:`pipelines.screening.api.screen` with :data:`FAST` settings, no progress bar, random weights."""
    from pipelines.screening.api import screen

    kw: dict[str, Any] = {"weights": "", "progress": False, **FAST, **settings}
    return screen(inputs, out, **kw)


def read_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV file with a header, as dicts of text."""
    import csv

    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def read_failures(out: Path) -> dict[str, dict[str, str]]:
    """``failures.csv`` as ``{case_id: row}``."""
    return {r["case_id"]: r for r in read_rows(out / "failures.csv")}


def read_summary(out: Path) -> dict[str, dict[str, str]]:
    """``summary.csv`` as ``{case_id: row}``."""
    return {r["case_id"]: r for r in read_rows(out / "summary.csv")}


def read_result(out: Path, case_id: str) -> dict[str, Any]:
    result = json.loads((out / "cases" / case_id / "result.json").read_text())
    assert isinstance(result, dict)
    return result


def tree(folder: Path) -> dict[str, float]:
    """Relative path -> mtime of every file under ``folder`` (to prove nothing was written or recomputed)."""
    return {
        str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()
    }


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def sitk_affine_ras(image: sitk.Image) -> np.ndarray:
    """The 4x4 voxel -> RAS affine nibabel would report for ``image``'s geometry."""
    d = np.asarray(image.GetDirection(), float).reshape(3, 3)
    a = np.eye(4)
    a[:3, :3] = np.diag([-1.0, -1.0, 1.0]) @ d @ np.diag(image.GetSpacing())
    a[:3, 3] = np.diag([-1.0, -1.0, 1.0]) @ np.asarray(image.GetOrigin(), float)
    return a
