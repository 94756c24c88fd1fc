"""A bank of real, annotated lung nodules (LIDC-IDRI crops) on a 1 mm grid, for training, validation and calibration.

Source layout (that of ``../shared/data/lidc_vois``; build one from an own LIDC download or in-house annotations)::

    SRC/image/<name>.nii.gz        HU crop around one nodule (int16; any spacing; axis-aligned, any axis order)
    SRC/nodule_mask/<name>.nii.gz  the readers' consensus mask on the same grid (> 0 = nodule)
    SRC/nodules.csv                one row per crop: file, patient_id, diameter_mm, Texture, Calcification, ...

Each accepted crop is padded and resampled to an isotropic 1 mm grid (HU kept, int16; mask by linear
interpolation at 0.5) and cut to the mask's bounding box plus :data:`MARGIN_MM`. The crops hold only the
readers' slices in z (the mask usually touches the first and the last slice): they are padded in every axis
with the crop's own lung background HU before resampling, so the nodule ends half a slice beyond its last
slice, as in the scan, and a paste fades into its host instead of stopping at a hard step.

Bad crops are refused with a one-line reason (:func:`check_crop`): unreadable, empty mask, mask touching the
crop's in-plane border (cut by the crop), data that is not HU, a shape or spacing mismatch, no ratings row.

The split into ``train`` and ``validation`` is by patient and fixed: :func:`split_of` hashes the patient id
(SHA-256), so a patient's nodules are always on one side; the split of the
shared LIDC crops is recorded in ``monai_bundle/docs/real_nodule_split.csv``.

The bank is cached as one ``.npz`` (no pickled objects: :func:`load_bank` reads it with
``allow_pickle=False``). Arrays are ``[z, y, x]``; HU; mm.
"""

from __future__ import annotations

import csv
import hashlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

PathLike = str | os.PathLike[str]

#: Share of patients in the validation split (by hash, see :func:`split_of`); patients with a subsolid nodule
#: (LIDC texture Part Solid or Non-Solid: about one in eight nodules) go to validation more often, so that
#: the type agreement on ground-glass and part-solid nodules is measured on some thirty of them, not four.
VALIDATION_SHARE = 0.2
SUBSOLID_VALIDATION_SHARE = 0.4
#: Bank grid spacing (mm, isotropic).
BANK_SPACING_MM = 1.0
#: Context kept around the mask's bounding box in the bank (mm).
MARGIN_MM = 4.0
#: A crop counts as HU when it holds lung air (some voxel below this) and values within :data:`HU_RANGE`.
AIR_HU = -500.0
HU_RANGE = (-2048.0, 4095.0)
#: Columns read from the ratings table (missing ones become empty strings).
RATING_COLUMNS = ("Texture", "Calcification", "Malignancy", "Subtlety", "InternalStructure")
#: LIDC texture ratings, from solid to ground-glass.
TEXTURES = ("Solid", "Solid/Mixed", "Part Solid/Mixed", "Non-Solid/Mixed", "Non-Solid/GGO")


def split_of(patient_id: str, *, subsolid: bool = False) -> str:
    """``"validation"`` or ``"train"`` for a patient: a fixed hash of the id, never a random draw.

    Args:
        patient_id: e.g. ``LIDC-IDRI-0003``.
        subsolid: the patient has a nodule rated Part Solid or Non-Solid (:func:`is_subsolid`); such patients
            are drawn with :data:`SUBSOLID_VALIDATION_SHARE` instead of :data:`VALIDATION_SHARE`.
    """
    share = SUBSOLID_VALIDATION_SHARE if subsolid else VALIDATION_SHARE
    h = int(hashlib.sha256(patient_id.strip().encode("utf-8")).hexdigest()[:8], 16)
    return "validation" if h % 10000 < round(share * 10000) else "train"


def is_subsolid(texture: str) -> bool:
    """LIDC texture rated Part Solid or Non-Solid (ground-glass content)."""
    return texture.strip().startswith(("Part Solid", "Non-Solid"))


@dataclass(frozen=True)
class Crop:
    """One nodule crop as read from the source folder (native grid).

    Attributes:
        name: file name of the crop.
        hu: HU ``[z, y, x]`` float32.
        mask: bool ``[z, y, x]``.
        spacing_zyx: voxel size (mm).
        origin_xyz: LPS world position of voxel ``[0, 0, 0]`` (mm).
        row: the crop's row of the ratings table (strings).
    """

    name: str
    hu: np.ndarray
    mask: np.ndarray
    spacing_zyx: tuple[float, float, float]
    origin_xyz: tuple[float, float, float]
    row: dict[str, str]


def check_crop(hu: np.ndarray, mask: np.ndarray, spacing_zyx: Sequence[float]) -> str | None:
    """Why a crop cannot be used (one line), or None when it is fine.

    Refused: shapes differ, bad spacing, an empty mask, a mask touching the in-plane border (the crop cut the
    nodule), no voxel below :data:`AIR_HU` or values outside :data:`HU_RANGE` (not HU). A mask touching the
    first or last slice is expected (the crops span the readers' slices only) and accepted.
    """
    if hu.shape != mask.shape or hu.ndim != 3:
        return f"image {hu.shape} and mask {mask.shape} differ in shape (or are not 3-D)"
    if len(spacing_zyx) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing_zyx):
        return f"bad voxel spacing {tuple(spacing_zyx)}"
    m = mask > 0
    if not m.any():
        return "empty nodule mask"
    if m[:, 0, :].any() or m[:, -1, :].any() or m[:, :, 0].any() or m[:, :, -1].any():
        return "mask touches the crop's in-plane border (the nodule is cut by the crop)"
    lo, hi = float(hu.min()), float(hu.max())
    if lo < HU_RANGE[0] or hi > HU_RANGE[1]:
        return f"values {lo:.0f}..{hi:.0f} outside {HU_RANGE[0]:.0f}..{HU_RANGE[1]:.0f}: not HU"
    if lo >= AIR_HU:
        return f"no voxel below {AIR_HU:.0f} HU (minimum {lo:.0f}): not HU, or no lung around the nodule"
    return None


def read_table(path: Path) -> dict[str, dict[str, str]]:
    with path.open(newline="") as f:
        return {r["file"]: r for r in csv.DictReader(f) if r.get("file")}


def read_crops(src: PathLike) -> Iterator[tuple[str, Crop | None, str | None]]:
    """Yield ``(name, crop, None)`` for each usable crop of ``src`` and ``(name, None, reason)`` for each refused.

    Raises:
        FileNotFoundError: ``src`` has no ``nodules.csv`` or no ``image/`` folder.
    """
    import SimpleITK as sitk

    from pipelines.imaging.io import to_canonical

    root = Path(src)
    table_path = root / "nodules.csv"
    if not table_path.is_file() or not (root / "image").is_dir():
        raise FileNotFoundError(f"{root}: not a nodule folder (needs image/, nodule_mask/ and nodules.csv)")
    table = read_table(table_path)
    names = sorted(p.name for p in (root / "image").iterdir() if p.name.endswith((".nii.gz", ".nii", ".mha")))
    for name in names:
        row = table.get(name)
        if row is None:
            yield name, None, "no row in nodules.csv"
            continue
        if not row.get("patient_id", "").strip():
            yield name, None, "no patient_id in nodules.csv"
            continue
        try:
            img = sitk.ReadImage(str(root / "image" / name))
            msk = sitk.ReadImage(str(root / "nodule_mask" / name))
        except (RuntimeError, OSError) as e:
            yield name, None, f"unreadable ({str(e).strip().splitlines()[0] if str(e).strip() else e})"
            continue
        if img.GetDimension() != 3 or msk.GetDimension() != 3:
            yield name, None, "not a 3-D image"
            continue
        img, msk = to_canonical(img), to_canonical(msk)  # flipped axes (RAS crops) made LPS, exactly
        if not np.allclose(img.GetDirection(), np.eye(3).ravel(), atol=1e-4):
            yield name, None, "oblique direction (axis-aligned crops expected)"
            continue
        hu = sitk.GetArrayFromImage(img).astype(np.float32)
        mask = sitk.GetArrayFromImage(msk) > 0
        spacing = tuple(float(s) for s in img.GetSpacing()[::-1])
        if not np.allclose(msk.GetSpacing(), img.GetSpacing(), rtol=1e-3):
            yield name, None, "mask and image spacings differ"
            continue
        reason = check_crop(hu, mask, spacing)
        if reason is not None:
            yield name, None, reason
            continue
        origin = tuple(float(v) for v in img.GetOrigin())
        yield name, Crop(name, hu, mask, spacing, origin, dict(row)), None  # type: ignore[arg-type]


def background_hu(hu: np.ndarray, mask: np.ndarray) -> float:
    """Median HU of the lung around the nodule (outside the mask, below :data:`AIR_HU`); -850 if none."""
    around = hu[(~mask) & (hu < AIR_HU)]
    return float(np.median(around)) if around.size else -850.0


def resample_crop(crop: Crop, *, spacing_mm: float = BANK_SPACING_MM) -> tuple[np.ndarray, np.ndarray]:
    """The crop on an isotropic ``spacing_mm`` grid, cut to the mask's box plus :data:`MARGIN_MM`.

    The native crop is padded by ``MARGIN_MM`` + 1 voxel in every axis with :func:`background_hu` (the mask
    with 0), smoothed in-plane where it is finer than the target (anti-aliasing), then sampled linearly.

    Returns:
        ``(hu int16, mask bool)``, both ``[z, y, x]``.
    """
    sp = np.asarray(crop.spacing_zyx, float)
    pad = [int(np.ceil(MARGIN_MM / s)) + 1 for s in sp]
    hu = np.pad(crop.hu, [(p, p) for p in pad], constant_values=background_hu(crop.hu, crop.mask))
    mask = np.pad(crop.mask.astype(np.float32), [(p, p) for p in pad])
    sigma = [np.sqrt(max(spacing_mm**2 - s**2, 0.0)) / 2.355 / s for s in sp]
    if any(s > 0.05 for s in sigma):
        hu = ndimage.gaussian_filter(hu, sigma)
    # the mask's box (padded native indices) in bank voxels, plus the margin
    idx = np.argwhere(mask > 0.5)
    lo_mm = (idx.min(axis=0) - 0.5) * sp - MARGIN_MM
    hi_mm = (idx.max(axis=0) + 0.5) * sp + MARGIN_MM
    n = np.maximum(np.ceil((hi_mm - lo_mm) / spacing_mm).astype(int), 1)
    coords = [(lo_mm[a] + spacing_mm * (np.arange(n[a]) + 0.5)) / sp[a] for a in range(3)]
    grid = np.meshgrid(*coords, indexing="ij")
    out_hu = ndimage.map_coordinates(hu, grid, order=1, mode="nearest")
    out_mask = ndimage.map_coordinates(mask, grid, order=1, mode="constant", cval=0.0) >= 0.5
    if not out_mask.any():  # a nodule thinner than half a bank voxel: keep its centre voxel
        out_mask[tuple(np.asarray(out_mask.shape) // 2)] = True
    return np.clip(np.round(out_hu), -32768, 32767).astype(np.int16), out_mask


@dataclass
class NoduleBank:
    """Real nodules on a 1 mm grid with their ratings (see the module doc).

    Attributes:
        hu: one int16 HU array ``[z, y, x]`` per nodule.
        mask: one bool array per nodule, same shape.
        table: columns (one entry per nodule): ``file``, ``patient_id``, ``split``, ``texture``,
            ``calcification``, ``diameter_mm`` (LUNA16), ``mask_diameter_mm`` (equivalent sphere of the mask),
            ``source_spacing_z`` (mm), and the other :data:`RATING_COLUMNS` in lower case.
        refused: ``(file, reason)`` of the crops that were not taken.
    """

    hu: list[np.ndarray]
    mask: list[np.ndarray]
    table: dict[str, np.ndarray]
    refused: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.hu)

    def indices(self, split: str | None = None) -> np.ndarray:
        """Indices of the nodules of ``split`` (``train``, ``validation``; None or ``all`` for every one)."""
        if split in (None, "all"):
            return np.arange(len(self))
        if split not in ("train", "validation"):
            raise ValueError(f"split must be train, validation or all, not {split!r}")
        return np.flatnonzero(self.table["split"] == split)

    def row(self, i: int) -> dict[str, Any]:
        """The table entries of nodule ``i`` as plain Python values."""
        return {k: v[i].item() for k, v in self.table.items()}

    def summary(self) -> dict[str, Any]:
        """Counts: nodules and patients per split, refusals by reason."""
        out: dict[str, Any] = {"nodules": len(self), "refused": len(self.refused)}
        for s in ("train", "validation"):
            idx = self.indices(s)
            out[s] = {"nodules": len(idx), "patients": len(set(self.table["patient_id"][idx].tolist()))}
        reasons: dict[str, int] = {}
        for _, r in self.refused:
            reasons[r] = reasons.get(r, 0) + 1
        out["refused_by_reason"] = reasons
        return out


def _equivalent_diameter(voxels: int, spacing: Sequence[float]) -> float:
    return float((6.0 * voxels * float(np.prod(spacing)) / np.pi) ** (1.0 / 3.0))


def build_bank(src: PathLike) -> NoduleBank:
    """Read every crop of ``src`` (layout in the module doc) into a :class:`NoduleBank`; refusals recorded."""
    hus, masks, rows, refused = [], [], [], []
    table = read_table(Path(src) / "nodules.csv") if (Path(src) / "nodules.csv").is_file() else {}
    subsolid = {r.get("patient_id", "").strip() for r in table.values() if is_subsolid(r.get("Texture", ""))}
    for name, crop, reason in read_crops(src):
        if crop is None:
            refused.append((name, str(reason)))
            continue
        hu, mask = resample_crop(crop)
        pid = crop.row["patient_id"].strip()
        try:
            luna_d = float(crop.row.get("diameter_mm") or "nan")
        except ValueError:
            luna_d = float("nan")
        row = {
            "file": name,
            "patient_id": pid,
            "split": split_of(pid, subsolid=pid in subsolid),
            "diameter_mm": luna_d,
            "mask_diameter_mm": round(_equivalent_diameter(int(crop.mask.sum()), crop.spacing_zyx), 3),
            "source_spacing_z": crop.spacing_zyx[0],
            "source_spacing_xy": crop.spacing_zyx[2],
        }
        row.update({c.lower(): (crop.row.get(c) or "").strip() for c in RATING_COLUMNS})
        hus.append(hu)
        masks.append(mask)
        rows.append(row)
    keys = list(rows[0]) if rows else ["file", "patient_id", "split", "diameter_mm"]
    columns = {k: np.asarray([r[k] for r in rows]) for k in keys}
    return NoduleBank(hus, masks, columns, refused)


def save_bank(bank: NoduleBank, path: PathLike) -> Path:
    """Write ``bank`` to one ``.npz`` (atomically; plain arrays only)."""
    from pipelines.imaging.filesys import atomic_write

    shapes = np.asarray([h.shape for h in bank.hu], dtype=np.int64).reshape(-1, 3)
    arrays: dict[str, np.ndarray] = {
        "shapes": shapes,
        "hu_flat": np.concatenate([h.ravel() for h in bank.hu]) if bank.hu else np.zeros(0, np.int16),
        "mask_flat": np.concatenate([m.ravel() for m in bank.mask]) if bank.mask else np.zeros(0, bool),
        "refused_file": np.asarray([f for f, _ in bank.refused], dtype=str),
        "refused_reason": np.asarray([r for _, r in bank.refused], dtype=str),
    }
    arrays.update({f"col_{k}": v for k, v in bank.table.items()})
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out, suffix=".npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)  # type: ignore[arg-type]
    return out


def load_bank(path: PathLike) -> NoduleBank:
    """A bank from its ``.npz`` cache or, for a folder, built from the crops (see :func:`build_bank`).

    Raises:
        ValueError: naming the file, when it is not a bank.
    """
    p = Path(path)
    if p.is_dir():
        return build_bank(p)
    try:
        with np.load(p, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise ValueError(f"{p}: not a nodule bank ({e})") from e
    if "shapes" not in data or "hu_flat" not in data:
        raise ValueError(f"{p}: not a nodule bank (no shapes/hu_flat arrays)")
    sizes = np.prod(data["shapes"], axis=1)
    ends = np.cumsum(sizes)
    hus = [data["hu_flat"][e - s : e].reshape(sh) for s, e, sh in zip(sizes, ends, data["shapes"])]
    masks = [data["mask_flat"][e - s : e].reshape(sh) for s, e, sh in zip(sizes, ends, data["shapes"])]
    table = {k[4:]: v for k, v in data.items() if k.startswith("col_")}
    refused = list(zip(data["refused_file"].tolist(), data["refused_reason"].tolist()))
    return NoduleBank(hus, masks, table, refused)


def write_split_file(bank: NoduleBank, path: PathLike) -> Path:
    """Record the split as ``patient_id,split,subsolid,nodules`` rows (sorted by patient), atomically.

    ``subsolid`` (0/1) is the :func:`split_of` argument, so the file can be checked against the hash.
    """
    from pipelines.imaging.filesys import atomic_write_text

    t = bank.table
    counts: dict[tuple[str, str], int] = {}
    sub: set[str] = set()
    for pid, s, tex in zip(t["patient_id"].tolist(), t["split"].tolist(), t["texture"].tolist()):
        counts[(pid, s)] = counts.get((pid, s), 0) + 1
        if is_subsolid(tex):
            sub.add(pid)
    rows = [f"{p},{s},{int(p in sub)},{n}" for (p, s), n in sorted(counts.items())]
    return atomic_write_text(path, "\n".join(["patient_id,split,subsolid,nodules", *rows]) + "\n")
