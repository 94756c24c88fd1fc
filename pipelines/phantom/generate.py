"""Synthetic chest CT (and MRI) with labelled lung nodules: one case in memory.

Datasets on disk are written by :mod:`pipelines.phantom.write`, nodules inserted into a real CT by
:mod:`pipelines.phantom.insert`.

Example:
    >>> from pipelines.phantom.generate import generate_case
    >>> from pipelines.phantom.write import make_dataset
    >>> case = generate_case(seed=3)                      # one small CT, in memory
    >>> case.nodules_table[0]["center_lps_mm"]            # doctest: +SKIP
    >>> make_dataset("sample_data/phantoms", n=4, seed=0)  # images/, labels/, lungs/, annotations.csv, ...

A case is rendered on the canonical LPS grid (arrays ``[z, y, x]``, HU), then stored in a per-case
orientation (:data:`pipelines.phantom.scanner.ORIENTATIONS`). Nodule centres are LPS world millimetres,
computed from the rendered instance mask, so they agree with any reader's centroid of the label file.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import SimpleITK as sitk

from pipelines.phantom.anatomy import Thorax, lung_sdf, sample_thorax
from pipelines.phantom.nodules import design_nodule, measure_nodules, place_nodules, render_nodules
from pipelines.phantom.render import render_thorax
from pipelines.phantom.scanner import ScanSpec, apply_scanner, paint_table, sample_scan, to_disk_orientation
from pipelines.phantom.shapes import Array, Grid, upsampled_noise
from pipelines.phantom.vessels import build_vessels, paint_trees, sample_lung_points

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
        tissue: uint8 tissue classes (:data:`pipelines.phantom.render.TISSUES`) on the same grid.
    """

    image: sitk.Image
    lungs: sitk.Image
    nodules: sitk.Image
    nodules_table: list[dict[str, Any]]
    spec: ScanSpec
    tissue: sitk.Image | None = field(default=None, repr=False)


def fit_grid(spec: ScanSpec, t: Thorax, rng: np.random.Generator, *, max_nz: int) -> tuple[ScanSpec, Thorax]:
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
    spec, t = fit_grid(spec, t, rng, max_nz=140 if size == "small" else 320)
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
        from pipelines.phantom.mri import to_mri

        image = to_mri(tissue, labels, vessels, grid, rng)
    del hu, vessels
    labels, rows = measure_nodules(labels, image, grid, placed)
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
