"""``lungscreen insert-nodules --bank``: real nodules from a nodule bank inserted into whole scans (validation sets).

The scan is read and put on the canonical LPS grid; real nodules of one split of the bank are pasted into its
lungs (:func:`pipelines.realnodules.paste.insert_real_into_array`) and the case is written in the layout of
:func:`pipelines.phantom.write.make_dataset` (``images/``, ``labels/``, ``lungs/``, ``annotations.csv``, ``cases.csv``,
``datalist.json`` with the case under ``training``, as ``insert-nodules`` does). A host that already has
labelled nodules (a phantom, ``labels_path``) keeps them, typed ``generator``. ``cases.csv`` types a real
nodule by the readers' rating (:func:`~pipelines.realnodules.paste.reader_category`: ``calcified`` or the LIDC
texture) with location ``real-parenchymal`` / ``real-juxta-pleural``, so the evaluation's per-type table is
per LIDC texture; ``real_nodules.csv`` lists each inserted nodule's bank file, patient and ratings.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from pipelines.imaging.filesys import atomic_write_text, csv_rows_text, strip_image_suffix
from pipelines.imaging.io import read_image, to_canonical
from pipelines.realnodules.bank import NoduleBank, PathLike, load_bank
from pipelines.realnodules.paste import RealNodule, insert_real_into_array, reader_category

REAL_COLUMNS = ("seriesuid", "nodule_id", "file", "patient_id", "texture", "calcification", "diameter_mm")


def _same_grid(path: PathLike, ct: sitk.Image) -> np.ndarray:
    img = sitk.Resample(to_canonical(read_image(path)), ct, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    return sitk.GetArrayFromImage(img)


def _rows(
    labels: np.ndarray,
    hu: np.ndarray,
    ct: sitk.Image,
    lungs: np.ndarray,
    placed: dict[int, RealNodule],
    bank: NoduleBank,
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Renumber the labels 1..N and describe each nodule (generator ones from their masks)."""
    sp = np.asarray(ct.GetSpacing()[::-1], float)
    out = np.zeros_like(labels)
    rows: list[dict[str, Any]] = []
    for old in [int(v) for v in np.unique(labels) if v > 0]:
        idx = np.argwhere(labels == old)
        new = len(rows) + 1
        out[labels == old] = new
        centre = ct.TransformContinuousIndexToPhysicalPoint([float(v) for v in idx.mean(axis=0)[::-1]])
        sides = lungs[labels == old]
        side = int(np.bincount(sides[sides > 0]).argmax()) if (sides > 0).any() else 0
        row: dict[str, Any] = {
            "nodule_id": new,
            "center_lps_mm": tuple(float(c) for c in centre),
            "mean_hu": round(float(hu[labels == old].mean()), 1),
            "n_voxels": len(idx),
            "side": side,
            "solid_component_mm": 0.0,
        }
        nod = placed.get(old)
        if nod is None:
            row.update(type="generator", location="generator")
            row["diameter_mm"] = round(float((6 * len(idx) * np.prod(sp) / np.pi) ** (1 / 3)), 2)
        else:
            r = bank.row(nod.index)
            row.update(type=reader_category(str(r.get("texture", "")), str(r.get("calcification", ""))))
            row.update(location=f"real-{nod.location}", real=r)
            d = float(r.get("diameter_mm", np.nan))
            row["diameter_mm"] = round(d if np.isfinite(d) else float(r.get("mask_diameter_mm", 0.0)), 2)
        rows.append(row)
    return out, rows


def insert_real_nodules(
    ct_path: PathLike,
    out_dir: PathLike,
    bank: NoduleBank | PathLike,
    *,
    n: int,
    seed: int,
    split: str = "validation",
    lung_mask_path: PathLike | None = None,
    labels_path: PathLike | None = None,
    exclude_patients: Collection[str] = (),
) -> Path:
    """Insert ``n`` real nodules of the bank's ``split`` into the scan at ``ct_path``; write ``out_dir``.

    The case id is the file name without extension plus ``_real_s{seed}``; the image keeps the scan's own
    orientation, spacing and origin. ``exclude_patients``: no nodule of these patients is drawn (a check set
    that shares no patient with the sets a setting was chosen on).

    Raises:
        ValueError: an oblique scan, or a bank split without nodules (after the exclusion).
    """
    from pipelines.phantom.insert import host_scan
    from pipelines.phantom.write import write_case, write_tables

    bank = bank if isinstance(bank, NoduleBank) else load_bank(bank)
    indices = bank.indices(split)
    if len(exclude_patients):
        excluded = set(exclude_patients)
        indices = indices[
            np.asarray([str(bank.table["patient_id"][i]) not in excluded for i in indices], bool)
        ]
    if not len(indices):
        left = f" outside the {len(set(exclude_patients))} excluded patients" if len(exclude_patients) else ""
        raise ValueError(f"the nodule bank has no nodules in split {split!r}{left}")
    original, code, ct, hu, lungs = host_scan(
        ct_path, None if lung_mask_path is None else Path(lung_mask_path)
    )
    lungs = lungs.astype(np.uint8)
    old = (
        _same_grid(labels_path, ct).astype(np.int32)
        if labels_path is not None
        else np.zeros(hu.shape, np.int32)
    )
    rng = np.random.default_rng(seed)
    new_hu, labels, placed = insert_real_into_array(
        hu, lungs, old, tuple(ct.GetSpacing()[::-1]), bank, indices, rng, n=n
    )
    first_new = int(old.max()) + 1
    out_hu = np.clip(np.round(new_hu), -32768, 32767).astype(np.int16)
    labels, rows = _rows(labels, out_hu, ct, lungs, {first_new + i: p for i, p in enumerate(placed)}, bank)
    case_id = f"{strip_image_suffix(Path(ct_path).name)}_real_s{seed}"
    out = Path(out_dir)
    imgs = []
    for a in (out_hu, lungs, labels.astype(np.uint16)):
        img = sitk.GetImageFromArray(a)
        img.CopyInformation(ct)
        imgs.append(sitk.DICOMOrient(img, code) if code != "LPS" else img)
    entry = write_case(out, case_id, imgs[0], imgs[1], imgs[2], fmt="nii")
    write_tables(out, [case_id], {case_id: rows}, {case_id: entry}, seed=seed, splits=(1.0, 0.0, 0.0))
    table = [
        [case_id, r["nodule_id"], r["real"]["file"], r["real"]["patient_id"], r["real"]["texture"]]
        + [r["real"]["calcification"], f"{r['diameter_mm']:.2f}"]
        for r in rows
        if "real" in r
    ]
    atomic_write_text(out / "real_nodules.csv", csv_rows_text(table, REAL_COLUMNS))
    return out
