"""Inserting synthetic nodules into an existing (real, unlabelled) CT, the standard CAD evaluation trick.

The scan is read and put on the canonical LPS grid (arrays ``[z, y, x]``, HU); nodules are placed inside
the lungs (given mask, the project's lung segmenter, or a simple air threshold), rendered onto a smoothed
copy of the scan, and only the *difference* is blurred and added back, so the scan's own noise and
texture stay inside the nodule. The result is written in the scan's original orientation, in the layout of
:func:`pipelines.phantom.write.make_dataset`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from pipelines.imaging.filesys import strip_image_suffix
from pipelines.imaging.io import orientation_code, read_image, to_canonical
from pipelines.phantom.nodules import Nodule, design_nodule, place_nodules, render_nodules
from pipelines.phantom.shapes import Array, Grid


def threshold_lungs(hu: Array) -> Array:
    """Crude lung labels (uint8, 1 right = smaller x, 2 left) from HU ``[z, y, x]``: inner air, two largest parts."""
    air = hu < -400
    lab, n = ndimage.label(air)
    border = np.unique(
        np.concatenate([lab[:, 0].ravel(), lab[:, -1].ravel(), lab[:, :, 0].ravel(), lab[:, :, -1].ravel()])
    )
    sizes = ndimage.sum_labels(air, lab, index=np.arange(1, n + 1))
    sizes[border[border > 0] - 1] = 0
    keep = [i + 1 for i in np.argsort(sizes)[::-1][:2] if sizes[i] > 0.002 * air.size]
    out = np.zeros(hu.shape, dtype=np.uint8)
    if len(keep) == 1:  # the two lungs touch: split at the median x of the component
        xs = np.nonzero(lab == keep[0])[2]
        mid = int(np.median(xs))
        comp = lab == keep[0]
        out[comp] = 2
        out[:, :, :mid][comp[:, :, :mid]] = 1
        return out
    cx = [np.nonzero(lab == k)[2].mean() for k in keep]
    for k, c in zip(keep, cx):
        out[lab == k] = 1 if c == min(cx) else 2
    return out


def _lungs_for(ct: sitk.Image, hu: Array, lung_mask_path: str | Path | None) -> Array:
    if lung_mask_path is not None:
        mask = to_canonical(read_image(lung_mask_path))
        mask = sitk.Resample(mask, ct, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
        return sitk.GetArrayFromImage(mask).astype(np.uint8)
    try:
        from pipelines.lungs.lungseg import segment_lungs
    except ImportError:
        return threshold_lungs(hu)
    return np.asarray(segment_lungs(hu, tuple(ct.GetSpacing()[::-1])), dtype=np.uint8)


def host_scan(
    ct_path: str | os.PathLike[str], lung_mask_path: str | Path | None
) -> tuple[sitk.Image, str, sitk.Image, Array, Array]:
    """A scan to insert nodules into: the image as read, its orientation code, the canonical (LPS) image, its HU
    array ``[z, y, x]`` (float32) and its lung mask (given, or segmented); oblique scans are refused."""
    original = read_image(ct_path)
    code = orientation_code(original)
    ct = to_canonical(original)
    if not np.allclose(np.asarray(ct.GetDirection()), np.eye(3).ravel(), atol=1e-4):
        raise ValueError(f"{ct_path}: oblique scans are not supported for nodule insertion")
    hu = sitk.GetArrayFromImage(ct).astype(np.float32)
    return original, code, ct, hu, _lungs_for(ct, hu, lung_mask_path)


def _sdf_fns(lungs: Array, grid: Grid) -> tuple[dict[int, object], dict[int, Array]]:
    fns: dict[int, object] = {}
    cands: dict[int, Array] = {}
    for side in (1, 2):
        inside = ndimage.distance_transform_edt(lungs == side, sampling=grid.spacing_zyx)

        def fn(p: Array, inside: Array = inside) -> Array:
            d, ok = grid.sample_nearest(inside, p)
            return np.where(ok & (d > 0), -d, 5.0)

        fns[side] = fn
        deep = np.argwhere(inside > 4.0)
        cands[side] = (
            grid.index_to_world(deep[:: max(1, len(deep) // 4000)]) if len(deep) else np.zeros((0, 3))
        )
    return fns, cands


def insert_into_array(
    hu: Array, lungs: Array, grid: Grid, *, n: int, seed: int
) -> tuple[Array, Array, list[Nodule]]:
    """Insert up to ``n`` nodules into HU ``[z, y, x]`` on the canonical ``grid``.

    Returns:
        ``(new_hu float32, labels, nodules)``; nodules that do not fit in the lungs are dropped.
    """
    rng = np.random.default_rng(seed)
    fns, cands = _sdf_fns(lungs, grid)
    sides = [s for s in (1, 2) if len(cands[s])]
    if not sides:
        return hu.astype(np.float32), np.zeros(hu.shape, np.uint8), []
    specs = [design_nodule(rng, d_min=max(3.0, 1.5 * min(grid.spacing_zyx))) for _ in range(n)]
    for s in (1, 2):
        if s not in sides:
            fns[s], cands[s] = fns[sides[0]], cands[sides[0]]
    empty = np.zeros((0, 3))
    smooth = ndimage.gaussian_filter(np.asarray(hu, np.float32), 1.0)
    placed = place_nodules(
        specs,
        lungs=fns,  # type: ignore[arg-type]
        candidates=cands,
        vessels=(empty, empty, np.zeros(0)),
        rng=rng,
        scan=(smooth, grid),
    )
    new_hu, labels = blend_nodules(hu, grid, placed, rng, smooth=smooth)
    return new_hu, labels, placed


def blend_nodules(
    hu: Array, grid: Grid, nodules: list[Nodule], rng: np.random.Generator, *, smooth: Array | None = None
) -> tuple[Array, Array]:
    """Insert ``nodules`` into HU ``[z, y, x]`` so that the scan keeps its own noise and texture inside them.

    They are rendered onto a smoothed copy (``smooth``, Gaussian sigma 1 voxel of ``hu``, computed when not
    given) and only the (slightly blurred) difference is added back.

    Returns:
        ``(new_hu float32, instance labels)``; ``hu`` and ``smooth`` are not modified.
    """
    hu = np.asarray(hu, dtype=np.float32)
    smooth = ndimage.gaussian_filter(hu, 1.0) if smooth is None else np.array(smooth, np.float32)
    before = smooth.copy()
    labels = render_nodules(smooth, grid, nodules, rng)
    delta = ndimage.gaussian_filter(smooth - before, [0.5 / s for s in grid.spacing_zyx])
    return hu + delta, labels


def insert_nodules(
    ct_path: str | Path, out_dir: str | Path, *, n: int, seed: int, lung_mask_path: str | Path | None = None
) -> Path:
    """Insert ``n`` nodules into the CT at ``ct_path`` and write ``out_dir`` in the make_dataset layout.

    The case id is the file name without extension plus ``_ins_s{seed}``; the image keeps the scan's
    own orientation, spacing and origin.
    """
    from pipelines.phantom.nodules import measure_nodules
    from pipelines.phantom.write import write_case, write_tables

    original, code, ct, hu, lungs = host_scan(ct_path, lung_mask_path)
    grid = Grid(hu.shape, tuple(ct.GetSpacing()[::-1]), tuple(ct.GetOrigin()))  # type: ignore[arg-type]
    new, labels, placed = insert_into_array(hu, lungs, grid, n=n, seed=seed)
    out_hu = np.clip(np.round(new), -32768, 32767).astype(np.int16)
    labels, rows = measure_nodules(labels, out_hu, grid, placed)
    for r in rows:
        lungs[labels == r["nodule_id"]] = r["side"]
    case_id = f"{strip_image_suffix(Path(ct_path).name)}_ins_s{seed}"
    out = Path(out_dir)
    imgs = []
    for a in (out_hu, lungs, labels):
        img = grid.to_image(a)
        imgs.append(sitk.DICOMOrient(img, code) if code != "LPS" else img)
    entry = write_case(out, case_id, imgs[0], imgs[1], imgs[2], fmt="nii")
    write_tables(out, [case_id], {case_id: rows}, {case_id: entry}, seed=seed, splits=(1.0, 0.0, 0.0))
    return out
