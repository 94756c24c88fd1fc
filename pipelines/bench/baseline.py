"""The plain MONAI tutorial chain with the bundle's network: the baseline that :mod:`pipelines.bench.run` measures.

``LoadImaged -> EnsureChannelFirstd -> Orientationd(RAS) -> Spacingd(1 mm) -> ScaleIntensityRanged(-1000..500
-> 0..1)``, then a :class:`monai.inferers.SlidingWindowInferer` with its default settings (``sw_batch_size=1``,
``overlap=0.25``, ``mode="constant"``) over the whole volume, ``Invertd`` back to the file's grid, a threshold at
``candidate_threshold`` (on ``sigmoid(logit / logit_temperature)``, our score) and ``SaveImaged``. Detections
are the connected components of that mask whose equivalent diameter reaches ``min_diameter_mm``, with centres in
world LPS mm (as LUNA16).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch


def build_chain(*, spacing_mm: float, hu_min: float, hu_max: float) -> Any:
    """The tutorial preprocessing ``Compose`` (dict key ``image``)."""
    from monai.transforms import (
        Compose,
        EnsureChannelFirstd,
        LoadImaged,
        Orientationd,
        ScaleIntensityRanged,
        Spacingd,
    )

    return Compose(
        [
            LoadImaged(keys="image"),
            EnsureChannelFirstd(keys="image"),
            Orientationd(keys="image", axcodes="RAS"),
            Spacingd(keys="image", pixdim=(spacing_mm,) * 3, mode="bilinear"),
            ScaleIntensityRanged(keys="image", a_min=hu_min, a_max=hu_max, b_min=0.0, b_max=1.0, clip=True),
        ]
    )


_STAGE = {
    "LoadImaged": "read",
    "EnsureChannelFirstd": "read",
    "Orientationd": "reorient",
    "Spacingd": "resample",
    "ScaleIntensityRanged": "resample",
}


def run_baseline(spec: dict[str, Any]) -> dict[str, Any]:
    """Run the baseline on ``spec["case"]`` (a scan file); stage wall seconds and detections (world LPS mm)."""
    from monai.inferers import SlidingWindowInferer
    from monai.transforms import AsDiscreted, Invertd, SaveImaged

    from pipelines.bench.clock import StageClock
    from pipelines.bench.spec import screener

    scr = screener({**spec, "classifier_weights": ""})
    settings, device, net = scr.settings, scr.device, scr.network
    chain = build_chain(spacing_mm=settings.target_spacing_mm, hu_min=settings.hu_min, hu_max=settings.hu_max)
    clock = StageClock(device)
    data: dict[Any, Any] = {"image": str(_scan_file(spec["case"]))}
    for t in chain.transforms:
        with clock(_STAGE[type(t).__name__]):
            data = t(data)
    inferer = SlidingWindowInferer(
        roi_size=settings.roi_size
    )  # defaults: sw_batch_size=1, overlap=0.25, constant
    with clock("sliding_window"), torch.no_grad():
        # the same score as ours (sigmoid of the tempered logit), so that candidate_threshold means the same
        temperature = float(settings.logit_temperature)
        logits = inferer(data["image"][None].to(device), net)
        assert isinstance(logits, torch.Tensor)
        data["pred"] = torch.sigmoid(logits / temperature)[0].cpu()
    with clock("postprocess"):
        data = Invertd(keys="pred", transform=chain, orig_keys="image", nearest_interp=False)(data)
        data = AsDiscreted(keys="pred", threshold=settings.candidate_threshold)(data)
        pred: Any = data["pred"]
        detections = mask_detections(
            pred[0].numpy() > 0, pred.affine.numpy(), min_diameter_mm=settings.min_diameter_mm
        )
    out = Path(spec["work"]) / "baseline"
    with clock("write"):
        SaveImaged(
            keys="pred",
            output_dir=str(out),
            output_postfix="seg",
            separate_folder=False,
            output_dtype=np.uint8,
            resample=False,
            print_log=False,
        )(data)
    return {
        "stages": clock.wall,
        "stages_cpu": clock.cpu,
        "network_shape_zyx": list(data["image"].shape[1:][::-1]),
        "detections": detections,
    }


def _scan_file(case: str | Path) -> Path:
    p = Path(case)
    if p.is_file():
        return p
    from pipelines.imaging import discovery

    return Path(discovery.discover_cases(p)[0].path)


def mask_detections(
    mask_ijk: np.ndarray, affine_ras: np.ndarray, *, min_diameter_mm: float
) -> list[dict[str, float]]:
    """Connected components (26-connected) of a binary mask on a file grid ``[i, j, k]`` with a RAS affine.

    Returns one row per component with an equivalent diameter >= ``min_diameter_mm``: centre in world LPS mm
    (``center_lps_{x,y,z}_mm``), ``volume_mm3`` and ``diameter_mm``.
    """
    from scipy import ndimage

    labels, n = ndimage.label(mask_ijk, structure=np.ones((3, 3, 3), bool))
    if n == 0:
        return []
    index = np.arange(1, n + 1)
    counts = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    centres = np.asarray(ndimage.center_of_mass(mask_ijk, labels, index), float).reshape(n, 3)
    voxel_mm3 = abs(float(np.linalg.det(affine_ras[:3, :3])))
    rows = []
    for count, ijk in zip(counts, centres):
        volume = float(count) * voxel_mm3
        diameter = (6.0 * volume / np.pi) ** (1.0 / 3.0)
        if diameter < min_diameter_mm:
            continue
        ras = affine_ras[:3, :3] @ ijk + affine_ras[:3, 3]
        rows.append(
            {
                "center_lps_x_mm": float(-ras[0]),
                "center_lps_y_mm": float(-ras[1]),
                "center_lps_z_mm": float(ras[2]),
                "volume_mm3": round(volume, 2),
                "diameter_mm": round(diameter, 2),
            }
        )
    return rows
