"""LUNA16 ingest: nodule instance masks from world annotations and a 10-fold MONAI datalist.

LUNA16 (https://luna16.grand-challenge.org) ships 888 MetaImage scans in ``subset0`` .. ``subset9`` and
``annotations.csv`` with nodule centres in world LPS millimetres (``coordX, coordY, coordZ``) and
diameters in mm. :func:`prepare_luna16` turns that into a segmentation dataset:

* ``OUT/labels/<seriesuid>.nii.gz``: nodule instance mask (0 background, 1..N in annotation order),
  same size, spacing, origin and direction as the scan. Each nodule is the ball of its annotated diameter,
  rasterised on the scan's own grid through its direction, origin and spacing (any orientation): a voxel
  belongs to it when the world distance from its centre to the annotation is ``<=`` the radius. A ball too
  small to contain a voxel centre keeps the voxel nearest to the annotation.
* ``OUT/datalist.json``: MONAI datalist (``monai.data.load_decathlon_datalist(path, data_list_key=...,
  base_dir=OUT)``) with the usual 10-fold split by subset (fold k = ``subset<k>``); ``training`` holds the
  other folds and ``validation`` the chosen fold; ``folds`` lists every item. ``image`` is the scan's
  **absolute** path (scans are referenced in place, never copied), ``label`` is relative to ``OUT``.
* ``OUT/nodules.csv``: one row per nodule with its label value, subset and whether it lies in the scan;
  ``OUT/annotations_excluded.csv``: the excluded findings of the ingested scans (when given), for samplers
  that must not draw negatives on them.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from pipelines.evaluation.froc import Finding, read_findings_csv
from pipelines.imaging.filesys import atomic_write, atomic_write_text, csv_safe
from pipelines.imaging.io import write_image

PathLike = str | os.PathLike[str]
SUBSET_RE = re.compile(r"^subset(\d+)$")


def find_luna16_scans(root: PathLike, *, subsets: Sequence[int] | None = None) -> dict[str, tuple[int, Path]]:
    """Map each ``seriesuid`` to ``(subset number, .mhd path)`` for ``root/subset<k>/<seriesuid>.mhd``.

    Raises:
        FileNotFoundError: when ``root`` holds no ``subset*/*.mhd`` (naming the folder).
        ValueError: when a seriesuid appears in two subsets.
    """
    base = Path(root)
    scans: dict[str, tuple[int, Path]] = {}
    for sub in sorted(p for p in base.iterdir() if p.is_dir()) if base.is_dir() else []:
        m = SUBSET_RE.match(sub.name)
        if not m or (subsets is not None and int(m.group(1)) not in subsets):
            continue
        for mhd in sorted(sub.glob("*.mhd")):
            uid = mhd.name[: -len(".mhd")]
            if uid in scans:
                raise ValueError(f"{uid} is in both {scans[uid][1].parent} and {sub}")
            scans[uid] = (int(m.group(1)), mhd.resolve())
    if not scans:
        raise FileNotFoundError(
            f"no subset*/<seriesuid>.mhd scans under {base}"
            + (f" for subsets {list(subsets)}" if subsets is not None else "")
        )
    return scans


def read_geometry(path: PathLike) -> sitk.Image:
    """An empty ``uint8`` image with the size, spacing, origin and direction of the scan at ``path``.

    Only the header is read (no voxel data).
    """
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as err:
        raise ValueError(f"cannot read the header of {path}: {str(err).strip().splitlines()[-1]}") from None
    if reader.GetDimension() != 3:
        raise ValueError(f"{path}: expected a 3D scan, got {reader.GetDimension()}D")
    geom = sitk.Image(reader.GetSize(), sitk.sitkUInt8)
    geom.SetSpacing(reader.GetSpacing())
    geom.SetOrigin(reader.GetOrigin())
    geom.SetDirection(reader.GetDirection())
    return geom


def ball_voxels(geometry: sitk.Image, center_lps_mm: Sequence[float], radius_mm: float) -> np.ndarray | None:
    """Voxels of a world-space ball on an image grid.

    Args:
        geometry: image defining the grid (its size, spacing, origin and direction; LPS world mm).
        center_lps_mm: ball centre ``(x, y, z)`` in LPS world millimetres.
        radius_mm: ball radius in mm.

    Returns:
        Integer array ``(K, 3)`` of ``(z, y, x)`` array indices whose voxel centres are within ``radius_mm``
        of the centre (the single nearest voxel when none is), or ``None`` when the ball misses the grid.
    """
    size = np.asarray(geometry.GetSize())  # (x, y, z)
    spacing = np.asarray(geometry.GetSpacing())
    origin = np.asarray(geometry.GetOrigin())
    direction = np.asarray(geometry.GetDirection()).reshape(3, 3)
    c = np.asarray(center_lps_mm, dtype=float)
    to_index = np.diag(1.0 / spacing) @ np.linalg.inv(direction)  # world offset -> continuous index
    center_idx = to_index @ (c - origin)
    extent = radius_mm * np.linalg.norm(to_index, axis=1)
    lo = np.maximum(np.floor(center_idx - extent).astype(int), 0)
    hi = np.minimum(np.ceil(center_idx + extent).astype(int), size - 1)
    if np.any(lo > hi):
        return None
    ii, jj, kk = np.meshgrid(*(np.arange(a, b + 1) for a, b in zip(lo, hi)), indexing="ij")
    idx = np.stack([ii.ravel(), jj.ravel(), kk.ravel()], axis=1)  # (i, j, k) = (x, y, z) index
    world = origin + (idx * spacing) @ direction.T
    inside = np.sum((world - c) ** 2, axis=1) <= radius_mm**2
    if not inside.any():
        nearest = np.rint(center_idx).astype(int)
        if np.any(nearest < 0) or np.any(nearest >= size):
            return None
        return nearest[None, ::-1]
    return idx[inside][:, ::-1]


def nodule_mask(geometry: sitk.Image, nodules: Sequence[Finding]) -> tuple[sitk.Image, list[bool]]:
    """Instance mask (labels 1..N in ``nodules`` order) of annotation balls on ``geometry``'s grid.

    Returns:
        The mask (``uint8``, or ``uint16`` beyond 255 nodules; geometry copied) and, per nodule, whether any
        voxel of it lies in the scan. Overlapping balls keep the earlier label.
    """
    size_xyz = geometry.GetSize()
    arr = np.zeros(size_xyz[::-1], dtype=np.uint8 if len(nodules) < 256 else np.uint16)
    inside = []
    for label, nod in enumerate(nodules, start=1):
        vox = ball_voxels(geometry, nod.center_lps_mm, nod.hit_radius_mm)
        inside.append(vox is not None)
        if vox is None:
            continue
        z, y, x = vox.T
        free = arr[z, y, x] == 0
        arr[z[free], y[free], x[free]] = label
    mask = sitk.GetImageFromArray(arr)
    mask.CopyInformation(geometry)
    return mask, inside


def prepare_luna16(
    *,
    root: PathLike,
    annotations: PathLike,
    out: PathLike,
    excluded: PathLike | None = None,
    subsets: Sequence[int] | None = None,
    validation_fold: int = 0,
) -> Path:
    """Build nodule masks and a 10-fold MONAI datalist for a LUNA16-shaped folder.

    Args:
        root: folder holding ``subset0`` .. ``subset9`` with ``<seriesuid>.mhd`` (+ ``.raw``) scans.
        annotations: ``annotations.csv`` (``seriesuid,coordX,coordY,coordZ,diameter_mm``, LPS mm).
        out: dataset folder to write (``labels/``, ``datalist.json``, ``nodules.csv``).
        excluded: optional ``annotations_excluded.csv``, copied (restricted to ingested scans) to ``out``.
        subsets: subset numbers to ingest (default: all found).
        validation_fold: fold (= subset number) put under ``validation``; the others go under ``training``.

    Returns:
        Path of ``out/datalist.json``.
    """
    scans = find_luna16_scans(root, subsets=subsets)
    out_dir = Path(out).resolve()
    by_uid: dict[str, list[Finding]] = {}
    for f in read_findings_csv(annotations):
        by_uid.setdefault(f.seriesuid, []).append(f)
    items: list[dict[str, Any]] = []
    nodule_rows: list[list[Any]] = []
    for uid, (fold, mhd) in sorted(scans.items(), key=lambda kv: (kv[1][0], kv[0])):
        item, rows = _ingest_scan(uid, mhd, fold=fold, nodules=by_uid.get(uid, []), out_dir=out_dir)
        items.append(item)
        nodule_rows += rows
    _write_csv(
        out_dir / "nodules.csv",
        ["seriesuid", "label", "coordX", "coordY", "coordZ", "diameter_mm", "fold", "in_image"],
        nodule_rows,
    )
    if excluded is not None:
        rows = [
            [e.seriesuid, *e.center_lps_mm, e.diameter_mm]
            for e in read_findings_csv(excluded)
            if e.seriesuid in scans
        ]
        _write_csv(
            out_dir / "annotations_excluded.csv",
            ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"],
            rows,
        )
    return write_datalist(
        items,
        out_dir / "datalist.json",
        validation_fold=validation_fold,
        n_annotated_elsewhere=len(set(by_uid) - set(scans)),
    )


def _ingest_scan(
    uid: str, mhd: Path, *, fold: int, nodules: list[Finding], out_dir: Path
) -> tuple[dict[str, Any], list[list[Any]]]:
    """Write ``labels/<uid>.nii.gz`` for one scan; return its datalist item and its ``nodules.csv`` rows."""
    mask, inside = nodule_mask(read_geometry(mhd), nodules)
    write_image(mask, out_dir / "labels" / f"{uid}.nii.gz")
    item = {
        "image": str(mhd),
        "label": f"labels/{uid}.nii.gz",
        "seriesuid": uid,
        "fold": fold,
        "n_nodules": len(nodules),
    }
    rows = [
        [uid, label, *n.center_lps_mm, n.diameter_mm, fold, int(ok)]
        for label, (n, ok) in enumerate(zip(nodules, inside), start=1)
    ]
    return item, rows


def write_datalist(
    items: list[dict[str, Any]], path: PathLike, *, validation_fold: int = 0, n_annotated_elsewhere: int = 0
) -> Path:
    """Write a MONAI datalist: ``training`` (folds != ``validation_fold``), ``validation``, and all ``folds``."""
    datalist = {
        "description": "LUNA16 nodule segmentation, 10-fold split by subset (fold k = subset k); "
        "image paths absolute, label paths relative to this file's folder",
        "validation_fold": validation_fold,
        "numTraining": sum(1 for it in items if it["fold"] != validation_fold),
        "numValidation": sum(1 for it in items if it["fold"] == validation_fold),
        "annotated_scans_not_found": n_annotated_elsewhere,
        "training": [it for it in items if it["fold"] != validation_fold],
        "validation": [it for it in items if it["fold"] == validation_fold],
        "folds": items,
    }
    atomic_write_text(path, json.dumps(datalist, indent=1))
    return Path(path)


def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    with atomic_write(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows([csv_safe(v) for v in row] for row in rows)
