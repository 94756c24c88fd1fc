"""Density type and diameter against the readers' ratings (``lungscreen calibrate-density``).

On annotated nodule crops (the layout of :mod:`pipelines.realnodules.bank`: LIDC-IDRI crops, or a user's own), each
nodule is typed by :func:`pipelines.nodules.density.classify_density` on its native grid with the readers' mask,
exactly as the screening types a detected nodule on the scan's canonical grid, and the result is tabulated
against the readers' rating: LIDC texture (Solid, Solid/Mixed, Part Solid/Mixed, Non-Solid/Mixed,
Non-Solid/GGO), with every nodule whose calcification is rated other than Absent in a ``calcified`` row. The
diameter is the mask's equivalent-sphere diameter against the table's ``diameter_mm`` (LUNA16).

The agreement figures are those of the project's targets: LIDC Solid (not calcified) called solid, calcified
called calcified, Non-Solid (GGO or Mixed) called ground-glass or part-solid. :func:`fit_thresholds` chooses
the density thresholds on the ``train`` split (the worst of the three agreements is maximised, then their
mean); the figures to report are those of the ``validation`` split (:func:`pipelines.realnodules.bank.split_of`).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.nodules.density import (
    NODULE_TYPES,
    DensityThresholds,
    classify_density,
    equivalent_diameter_mm,
)
from pipelines.realnodules.bank import PathLike, is_subsolid, read_crops, read_table, split_of
from pipelines.realnodules.paste import reader_category

#: Rows of the confusion matrix (readers' rating), columns are :data:`~pipelines.nodules.density.NODULE_TYPES`.
READER_CLASSES = ("Solid", "Solid/Mixed", "Part Solid/Mixed", "Non-Solid/Mixed", "Non-Solid/GGO", "calcified")
#: Grid searched by :func:`fit_thresholds` (calcification first, then the solid component).
CALCIFIED_GRID = {"calcified_hu": (150.0, 200.0, 250.0), "calcified_fraction": (0.02, 0.03, 0.05, 0.1)}
SOLID_GRID = {
    "solid_hu": (-400.0, -350.0, -300.0, -250.0),
    "solid_ratio": (0.5, 0.6, 0.7, 0.8),
    "min_solid_component_mm": (1.5, 2.0, 3.0),
}


@dataclass(frozen=True)
class RatedNodule:
    """One annotated crop: HU and the readers' mask ``[z, y, x]`` on its native grid, with its ratings."""

    name: str
    split: str
    reader: str
    diameter_mm: float
    hu: np.ndarray
    mask: np.ndarray
    spacing_zyx: tuple[float, float, float]


def rated_nodules(src: PathLike) -> tuple[list[RatedNodule], list[tuple[str, str]]]:
    """The usable crops of ``src`` with their reader class and split, and the refused ``(file, reason)``."""
    table = read_table(Path(src) / "nodules.csv") if (Path(src) / "nodules.csv").is_file() else {}
    subsolid = {r.get("patient_id", "").strip() for r in table.values() if is_subsolid(r.get("Texture", ""))}
    out, refused = [], []
    for name, crop, reason in read_crops(src):
        if crop is None:
            refused.append((name, str(reason)))
            continue
        pid = crop.row["patient_id"].strip()
        try:
            d = float(crop.row.get("diameter_mm") or "nan")
        except ValueError:
            d = float("nan")
        reader = reader_category(crop.row.get("Texture", ""), crop.row.get("Calcification", ""))
        split = split_of(pid, subsolid=pid in subsolid)
        out.append(RatedNodule(name, split, reader, d, crop.hu, crop.mask, crop.spacing_zyx))
    return out, refused


def measure(nodules: Sequence[RatedNodule], thresholds: DensityThresholds) -> list[tuple[str, float]]:
    """``(type, mask diameter mm)`` of each nodule with ``thresholds``."""
    out = []
    for n in nodules:
        kind, _ = classify_density(n.hu, n.mask, n.spacing_zyx, thresholds=thresholds)
        out.append((kind, equivalent_diameter_mm(float(n.mask.sum()) * float(np.prod(n.spacing_zyx)))))
    return out


def confusion(readers: Sequence[str], types: Sequence[str]) -> dict[str, dict[str, int]]:
    """Counts ``{reader class: {our type: n}}`` over :data:`READER_CLASSES` x :data:`NODULE_TYPES`."""
    table = {r: dict.fromkeys(NODULE_TYPES, 0) for r in READER_CLASSES}
    for r, t in zip(readers, types):
        if r in table and t in table[r]:
            table[r][t] += 1
    return table


def agreement(table: dict[str, dict[str, int]]) -> dict[str, dict[str, float]]:
    """The target agreements with their counts: ``{"solid"|"calcified"|"non_solid": {"rate", "n", "agree"}}``."""

    def rate(rows: Sequence[str], ok: Sequence[str]) -> dict[str, float]:
        n = sum(sum(table[r].values()) for r in rows)
        agree = sum(table[r][t] for r in rows for t in ok)
        return {"rate": round(agree / n, 3) if n else float("nan"), "n": n, "agree": agree}

    return {
        "solid": rate(["Solid"], ["solid"]),
        "calcified": rate(["calcified"], ["calcified"]),
        "non_solid": rate(["Non-Solid/Mixed", "Non-Solid/GGO"], ["ground-glass", "part-solid"]),
    }


def _score(nodules: Sequence[RatedNodule], th: DensityThresholds) -> tuple[float, float]:
    types = [t for t, _ in measure(nodules, th)]
    ag = agreement(confusion([n.reader for n in nodules], types))
    rates = [v["rate"] for v in ag.values() if v["n"]]
    return (min(rates), float(np.mean(rates))) if rates else (0.0, 0.0)


def fit_thresholds(
    nodules: Sequence[RatedNodule], base: DensityThresholds | None = None
) -> DensityThresholds:
    """Thresholds chosen on ``nodules`` (the train split) over :data:`CALCIFIED_GRID` then :data:`SOLID_GRID`."""
    best = base or DensityThresholds()
    for grid in (CALCIFIED_GRID, SOLID_GRID):
        keys = list(grid)
        scored = []
        for values in itertools.product(*(grid[k] for k in keys)):
            try:
                th = replace(best, **dict(zip(keys, values)))  # type: ignore[arg-type]
            except ValueError:
                continue
            scored.append((_score(nodules, th), th))
        best = max(scored, key=lambda s: s[0])[1]
    return best


def report(nodules: Sequence[RatedNodule], thresholds: DensityThresholds) -> dict[str, Any]:
    """Confusion matrix, agreements and diameter MAE (mm) of ``nodules`` with ``thresholds``."""
    measured = measure(nodules, thresholds)
    table = confusion([n.reader for n in nodules], [t for t, _ in measured])
    errors = [abs(d - n.diameter_mm) for (_, d), n in zip(measured, nodules) if np.isfinite(n.diameter_mm)]
    return {
        "nodules": len(nodules),
        "confusion": table,
        "agreement": agreement(table),
        "diameter_mae_mm": round(float(np.mean(errors)), 2) if errors else None,
    }


def format_table(title: str, rep: dict[str, Any]) -> str:
    """A plain-text confusion matrix with the agreement lines."""
    width = max(len(c) for c in READER_CLASSES) + 2
    lines = [f"{title} ({rep['nodules']} nodules)", " " * width + "".join(f"{t:>14s}" for t in NODULE_TYPES)]
    for r in READER_CLASSES:
        lines.append(f"{r:<{width}s}" + "".join(f"{rep['confusion'][r][t]:>14d}" for t in NODULE_TYPES))
    for k, v in rep["agreement"].items():
        lines.append(f"  {k}: {v['agree']}/{v['n']} = {v['rate']}")
    lines.append(f"  diameter MAE (mask equivalent diameter vs diameter_mm): {rep['diameter_mae_mm']} mm")
    return "\n".join(lines)


def calibrate(
    src: PathLike, *, split: str = "validation", fit: bool = False, out: PathLike | None = None
) -> str:
    """The text report of ``lungscreen calibrate-density`` (optionally writing its JSON to ``out``).

    Prints the shipped thresholds' table on ``split``; with ``fit`` also the thresholds chosen on the train
    split and their table on ``split``.
    """
    nodules, refused = rated_nodules(src)
    chosen = [n for n in nodules if split == "all" or n.split == split]
    shipped = DensityThresholds()
    result: dict[str, Any] = {"split": split, "refused": refused, "shipped": report(chosen, shipped)}
    text = [format_table(f"shipped thresholds, {split} split", result["shipped"])]
    if fit:
        fitted = fit_thresholds([n for n in nodules if n.split == "train"], shipped)
        result["fitted_thresholds"] = asdict(fitted)
        result["fitted"] = report(chosen, fitted)
        text += [f"thresholds chosen on the train split: {asdict(fitted)}"]
        text += [format_table(f"fitted thresholds, {split} split", result["fitted"])]
    text += [f"refused {name}: {reason}" for name, reason in refused]
    if out is not None:
        from pipelines.imaging.filesys import atomic_write_text

        atomic_write_text(out, json.dumps(result, indent=1) + "\n")
    return "\n".join(text)
