"""Synthetic chest CT (and MRI) with labelled lung nodules: the public API of the phantom generator.

Example:
    >>> from pipelines.phantom import generate_case, make_dataset
    >>> case = generate_case(seed=3)                      # one small CT, in memory
    >>> case.nodules_table[0]["center_lps_mm"]            # doctest: +SKIP
    >>> make_dataset("sample_data/phantoms", n=4, seed=0)  # images/, labels/, lungs/, annotations.csv, ...

A case is rendered on the canonical LPS grid (arrays ``[z, y, x]``, HU), then stored in a per-case
orientation (:data:`pipelines.phantom_scanner.ORIENTATIONS`). Nodule centres are LPS world millimetres,
computed from the rendered instance mask, so they agree with any reader's centroid of the label file.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from pipelines.phantom_anatomy import Thorax, lung_sdf, sample_thorax
from pipelines.phantom_nodules import Nodule, design_nodule, place_nodules, render_nodules
from pipelines.phantom_render import render_thorax
from pipelines.phantom_scanner import ScanSpec, apply_scanner, paint_table, sample_scan, to_disk_orientation
from pipelines.phantom_shapes import Array, Grid, upsampled_noise
from pipelines.phantom_vessels import build_vessels, paint_trees, sample_lung_points

SIZES = ("small", "full")
MODALITIES = ("ct", "mri")
FORMATS = ("nii", "mhd")


@dataclass
class PhantomCase:
    """One synthetic scan.

    Attributes:
        image: CT (int16 HU) or MRI (float32, arbitrary units) in its on-disk orientation.
        lungs: uint8 lung labels (0 background, 1 right, 2 left) on the same grid.
        nodules: nodule instance labels (1..N) on the same grid.
        nodules_table: one dict per nodule: ``nodule_id``, ``center_lps_mm`` (x, y, z), ``diameter_mm``,
            ``type`` (solid, part-solid, ground-glass, calcified), ``location`` (parenchymal, juxta-pleural,
            juxta-vascular), ``solid_component_mm``, ``mean_hu``, ``n_voxels``.
        spec: the scanner settings used.
        tissue: uint8 tissue classes (:data:`pipelines.phantom_render.TISSUES`) on the same grid.
    """

    image: sitk.Image
    lungs: sitk.Image
    nodules: sitk.Image
    nodules_table: list[dict[str, Any]]
    spec: ScanSpec
    tissue: sitk.Image | None = field(default=None, repr=False)


def _fit_grid(spec: ScanSpec, t: Thorax, rng: np.random.Generator, *, max_nz: int) -> tuple[ScanSpec, Thorax]:
    """Choose the slice count and place the patient along z so the lungs are covered (or cut if too long)."""
    g = spec.grid
    dz = g.spacing_zyx[0]
    below, above = float(rng.uniform(8, 45)), float(rng.uniform(8, 40))
    span = t.recess + t.lung_top + below + above
    nz = int(min(np.ceil(span / dz), max_nz))
    slack = nz * dz - span
    shift = (
        float(rng.uniform(min(slack, 0.0), max(slack, 0.0))) if slack < 0 else float(rng.uniform(0, slack))
    )
    t = dataclasses.replace(t, cz=g.origin_xyz[2] + below + t.recess + shift)
    grid = Grid((nz, *g.shape_zyx[1:]), g.spacing_zyx, g.origin_xyz)  # type: ignore[arg-type]
    return dataclasses.replace(spec, grid=grid), t


def _nodule_fns(t: Thorax, grid: Grid) -> dict[int, Any]:
    lo = np.asarray(grid.origin_xyz)
    hi = lo + (np.asarray(grid.shape_zyx[::-1]) - 1) * np.asarray(grid.spacing_zyx[::-1])

    def make(side: int):
        def fn(p: Array) -> Array:
            inside_box = np.max(np.maximum(lo + 2 - p, p - hi + 2), axis=-1)
            return np.maximum(lung_sdf(t, p[:, 0], p[:, 1], p[:, 2], side), inside_box)

        return fn

    return {1: make(1), 2: make(2)}


def _measure(
    labels: Array, image: Array, grid: Grid, nodules: list[Nodule]
) -> tuple[Array, list[dict[str, Any]]]:
    """Renumber labels 1..N over the nodules that have voxels and describe each from its mask."""
    out = np.zeros_like(labels)
    rows: list[dict[str, Any]] = []
    for old, n in enumerate(nodules, start=1):
        idx = np.argwhere(labels == old)
        if len(idx) == 0:
            continue
        new = len(rows) + 1
        out[labels == old] = new
        center = grid.index_to_world(idx.mean(axis=0))
        solid = {"solid": n.diameter_mm, "calcified": n.diameter_mm, "part-solid": 2 * n.solid_radius}.get(
            n.type, 0.0
        )
        rows.append(
            {
                "nodule_id": new,
                "center_lps_mm": tuple(float(c) for c in center),
                "diameter_mm": round(n.diameter_mm, 2),
                "type": n.type,
                "location": n.location,
                "solid_component_mm": round(solid, 2),
                "mean_hu": round(float(image[labels == old].mean()), 1),
                "n_voxels": len(idx),
                "side": n.side,
            }
        )
    return out, rows


def generate_case(
    *, seed: int, size: str = "small", modality: str = "ct", with_tissue: bool = True
) -> PhantomCase:
    """Generate one synthetic chest scan with labelled nodules.

    Args:
        seed: random seed; the same seed always gives the same case.
        size: "small" (128x128, ~2.5 mm voxels, about a second) or "full" (512x512, 0.55-0.95 mm).
        modality: "ct" (int16 HU) or "mri" (float32 arbitrary units; nodules become lesions).
        with_tissue: also return the tissue-class image (costs a reorientation of one more volume).

    Returns:
        A :class:`PhantomCase` whose images share one geometry, in the case's on-disk orientation.
    """
    if size not in SIZES or modality not in MODALITIES:
        raise ValueError(
            f"size must be one of {SIZES} and modality one of {MODALITIES}, not {size!r}, {modality!r}"
        )
    rng = np.random.default_rng(seed)
    spec = sample_scan(rng, size=size, modality=modality)
    t = sample_thorax(rng, fov_mm=spec.fov_mm, z_center=0.0)
    spec, t = _fit_grid(spec, t, rng, max_nz=140 if size == "small" else 320)
    grid = spec.grid
    hu, lungs, tissue = render_thorax(
        t, grid, upsampled_noise(grid, sigma_mm=float(rng.uniform(4, 9)), rng=rng)
    )
    arteries, veins, bronchi = build_vessels(t, rng, n_points=3200 if size == "full" else 700)
    vessels, _ = paint_trees(hu, grid, t, arteries, veins, bronchi)
    n_nod = 0 if rng.random() < 0.15 else int(rng.integers(1, 7 if size == "full" else 5))
    specs = [design_nodule(rng, d_min=3.0 if size == "full" else 5.0) for _ in range(n_nod)]
    fns = _nodule_fns(t, grid)
    cands = {s: sample_lung_points(t, s, 1500, rng, margin=2.0) for s in (1, 2)}
    tree = (
        np.concatenate([arteries.starts, veins.starts]),
        np.concatenate([arteries.ends, veins.ends]),
        np.concatenate([arteries.r0, veins.r0]),
    )
    placed = place_nodules(specs, lungs=fns, candidates=cands, vessels=tree, rng=rng, scan=(hu, grid))
    labels = render_nodules(hu, grid, placed, rng)
    for i, n in enumerate(placed, start=1):
        lungs[labels == i] = n.side
    paint_table(
        hu, grid, top_y=t.cy + t.body_b_post - 8.0 + float(rng.uniform(0, 25)), center_x=t.cx, rng=rng
    )
    if modality == "ct":
        image = apply_scanner(hu, spec, rng)
    else:
        from pipelines.phantom_mri import to_mri

        image = to_mri(tissue, labels, vessels, grid, rng)
    del hu, vessels
    labels, rows = _measure(labels, image, grid, placed)
    arrays = (image, lungs, labels, tissue) if with_tissue else (image, lungs, labels)
    imgs = [to_disk_orientation(grid.to_image(a), spec.orientation) for a in arrays]
    return PhantomCase(
        image=imgs[0],
        lungs=imgs[1],
        nodules=imgs[2],
        nodules_table=rows,
        spec=spec,
        tissue=imgs[3] if with_tissue else None,
    )


def make_dataset(
    out_dir: str | Path,
    *,
    n: int,
    seed: int,
    size: str = "small",
    modality: str = "ct",
    fmt: str = "nii",
    preview: bool = False,
    splits: tuple[float, float, float] = (0.6, 0.2, 0.2),
    workers: int = 1,
    first: int = 0,
) -> Path:
    """Write ``n`` synthetic cases in the LUNA16-like layout described in :mod:`pipelines.phantom_write`.

    ``workers`` > 1 generates cases in parallel processes (same bytes as serial); ``first`` skips to case
    ``first`` of the dataset of ``seed``.

    Returns:
        ``out_dir`` as a Path.
    """
    from pipelines.phantom_write import write_dataset

    return write_dataset(
        out_dir,
        n=n,
        seed=seed,
        size=size,
        modality=modality,
        fmt=fmt,
        preview=preview,
        splits=splits,
        workers=workers,
        first=first,
    )


def insert_nodules(
    ct_path: str | Path, out_dir: str | Path, *, n: int, seed: int, lung_mask_path: str | Path | None = None
) -> Path:
    """Insert ``n`` synthetic nodules into a real CT and write it in the :func:`make_dataset` layout."""
    from pipelines.phantom_insert import insert_nodules as _insert

    return _insert(ct_path, out_dir, n=n, seed=seed, lung_mask_path=lung_mask_path)


def save_preview(dataset_dir: str | Path, png_path: str | Path, *, max_panels: int = 12) -> Path:
    """Montage of axial slices through nodules of a dataset, with each nodule's contour, type and size."""
    from pipelines.phantom_write import save_preview as _save

    return _save(dataset_dir, png_path, max_panels=max_panels)
