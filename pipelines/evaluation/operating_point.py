"""The operating point of a screened set: figures at a reporting threshold, and a sweep of the shape term's weight.

:func:`threshold_summary` gives what a reader of the reports sees at one threshold: sensitivity overall, for
nodules of at least 4 mm, per ``cases.csv`` type and size, false reported nodules per scan, and the CPM, over the
counted nodules (every annotated nodule whose type is not ``generator``: in a set of real nodules inserted into
phantoms the phantoms' own nodules are matched, so hitting one is no false mark, but they are not counted).

:func:`sweep` re-scores a screened set without screening it again. The final score of a candidate is
``sigmoid(logit(score) + w * (blobness - 0.5))`` (:func:`pipelines.screening.scoring.shape_adjusted`, setting
``blobness_weight``); the run's ``run.json`` records the ``w`` it used and each case's ``candidates.csv`` the
candidate's blobness and final score, so the score under another weight is
``sigmoid(logit(final) + (w_new - w_used) * (blobness - 0.5))``. Nothing else depends on the weight (candidates
are chosen and capped before it), so the sweep gives the figures a new screening would give, up to the tables'
rounding (scores to 8 decimals, blobness to 4). Choose the weight and threshold on validation sets, then report
on a set that took no part in the choice.

Run as ``python -m pipelines.evaluation.operating_point DATA SCREEN_OUT [--blobness-weights 2,3,4]
[--thresholds 0.8,0.88] [--series-containing TEXT]``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.evaluation import froc

PathLike = froc.PathLike
SIZE_BINS = ((0.0, 4.0), (4.0, 6.0), (6.0, 10.0), (10.0, 100.0))


def _types(cases_csv: Path) -> dict[tuple[str, int], dict[str, str]]:
    if not cases_csv.is_file():
        return {}
    with cases_csv.open(newline="") as f:
        return {(r["seriesuid"], int(r["nodule_id"])): r for r in csv.DictReader(f)}


def _series(data: Path, scans: Collection[str] | None) -> list[str]:
    return [u for u in froc.read_seriesuids(data / "seriesuids.csv") if scans is None or u in scans]


def threshold_summary(
    data: PathLike,
    screen_out: PathLike,
    *,
    threshold: float,
    scans: Collection[str] | None = None,
    marks: Sequence[froc.Mark] | None = None,
) -> dict[str, Any]:
    """Figures at ``threshold`` for dataset ``data`` (annotations/cases/seriesuids) screened into ``screen_out``.

    ``scans``: only these series (their nodules, marks and number as the false-positive divisor). ``marks``:
    these instead of ``screen_out/submission.csv``'s (e.g. :func:`rescored_marks`). Every mark ranks in the
    FROC/CPM; only reportable ones (``Mark.reportable``: not second-look spots, which are never reported whatever
    their score) count at ``threshold`` (sensitivity, false nodules per scan). ``submission.csv`` does not say
    which marks are second-look spots, so without ``marks`` the run's ``candidates.csv`` tells, when it has one.

    Returns:
        ``{"threshold", "scans", "real_nodules", "cpm", "false_nodules_per_scan", "sensitivity",
        "sensitivity_ge4mm", "by_type": {type: {"n", "found"}}, "by_size": {...}}`` over the counted nodules
        (type not ``generator``; ``real_nodules`` is their number).
    """
    root, out = Path(data), Path(screen_out)
    uids = _series(root, scans)
    kept = set(uids)
    nodules = [n for n in froc.read_findings_csv(root / "annotations.csv") if n.seriesuid in kept]
    from_submission = marks is None
    if marks is None:
        marks = froc.read_marks_csv(out / "submission.csv")
    match = froc.match_marks(
        nodules=nodules, marks=[m for m in marks if m.seriesuid in kept], seriesuids=uids
    )
    counted = marks
    if from_submission and any(out.glob("cases/*/candidates.csv")):
        counted = _marks(_candidate_rows(out, kept), 0.0)  # the same candidates, with their source
    at_threshold = froc.match_marks(
        nodules=nodules, marks=[m for m in counted if m.seriesuid in kept and m.reportable], seriesuids=uids
    )
    kinds = _types(root / "cases.csv")
    per_scan: dict[str, int] = {}
    types = []
    for n in match.nodules:  # annotation order = cases.csv order within each scan
        per_scan[n.seriesuid] = per_scan.get(n.seriesuid, 0) + 1
        types.append(kinds.get((n.seriesuid, per_scan[n.seriesuid]), {}).get("type", "unknown"))
    real = np.asarray([t != "generator" for t in types], bool)
    score = np.where(np.isnan(at_threshold.nodule_score), -np.inf, at_threshold.nodule_score)
    found = score >= threshold
    diam = np.asarray([n.diameter_mm for n in match.nodules], float)
    n_real = int(real.sum())

    def group(mask: np.ndarray) -> dict[str, Any]:
        m = mask & real
        return {"n": int(m.sum()), "found": int((found & m).sum())}

    by_type = {t: group(np.asarray([x == t for x in types])) for t in sorted(set(types)) if t != "generator"}
    by_size = {f"{lo:g}-{hi:g} mm": group((diam >= lo) & (diam < hi)) for lo, hi in SIZE_BINS}
    return {
        "threshold": threshold,
        "scans": match.n_scans,
        "real_nodules": n_real,
        "cpm": round(float(froc.cpm(froc.curve_for(match, real))), 4) if n_real else None,
        "false_nodules_per_scan": round(
            float((at_threshold.fp_score >= threshold).sum()) / max(match.n_scans, 1), 3
        ),
        "sensitivity": round(float((found & real).sum()) / n_real, 4) if n_real else None,
        "sensitivity_ge4mm": _rate(found & real & (diam >= 4.0), real & (diam >= 4.0)),
        "by_type": by_type,
        "by_size": by_size,
    }


def _rate(hit: np.ndarray, of: np.ndarray) -> float | None:
    return round(float(hit.sum()) / float(of.sum()), 4) if of.sum() else None


def used_blobness_weight(screen_out: PathLike) -> float:
    """The ``blobness_weight`` the screening into ``screen_out`` ran with (its ``run.json`` settings)."""
    path = Path(screen_out) / "run.json"
    try:
        return float(json.loads(path.read_text())["settings"]["blobness_weight"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: no settings.blobness_weight recorded ({type(e).__name__}: {e})") from e


def reweighted(score: float, blobness: float, delta: float) -> float:
    """``sigmoid(logit(score) + delta * (blobness - 0.5))`` (scores clipped to [1e-7, 1 - 1e-7] as the engine's)."""
    p = min(max(float(score), 1e-7), 1.0 - 1e-7)
    z = math.log(p / (1.0 - p)) + float(delta) * (float(blobness) - 0.5)
    return 1.0 / (1.0 + math.exp(-z))


#: series, centre (LPS mm), final score, blobness, reportable (not a second-look spot)
_Row = tuple[str, tuple[float, float, float], float, float, bool]


def _candidate_rows(out: Path, scans: Collection[str] | None) -> list[_Row]:
    """Every candidate of ``out/cases/*/candidates.csv`` (of ``scans``)."""
    rows: list[_Row] = []
    for table in sorted(out.glob("cases/*/candidates.csv")):
        uid = table.parent.name
        if scans is not None and uid not in scans:
            continue
        with table.open(newline="") as f:
            for r in csv.DictReader(f):
                centre = (
                    float(r["center_lps_x_mm"]),
                    float(r["center_lps_y_mm"]),
                    float(r["center_lps_z_mm"]),
                )
                reportable = r.get("source") != "second_look"
                rows.append((uid, centre, float(r["probability"]), float(r["blobness"]), reportable))
    return rows


def _marks(rows: Sequence[_Row], delta: float) -> list[froc.Mark]:
    return [
        froc.Mark(uid, centre, reweighted(p, blob, delta) if delta else p, i, reportable)
        for i, (uid, centre, p, blob, reportable) in enumerate(rows)
    ]


def rescored_marks(
    screen_out: PathLike, *, blobness_weight: float, scans: Collection[str] | None = None
) -> list[froc.Mark]:
    """Every candidate of ``screen_out/cases/*/candidates.csv`` as a mark scored under ``blobness_weight``."""
    out = Path(screen_out)
    delta = float(blobness_weight) - used_blobness_weight(out)
    return _marks(_candidate_rows(out, scans), delta)


def sweep(
    data: PathLike,
    screen_out: PathLike,
    *,
    blobness_weights: Sequence[float],
    thresholds: Sequence[float],
    scans: Collection[str] | None = None,
) -> list[dict[str, Any]]:
    """:func:`threshold_summary` for every (weight, threshold) pair; rows carry ``blobness_weight`` too."""
    used = used_blobness_weight(screen_out)
    candidates = _candidate_rows(Path(screen_out), scans)  # read once, re-scored per weight
    rows = []
    for w in blobness_weights:
        marks = _marks(candidates, float(w) - used)
        for t in thresholds:
            s = threshold_summary(data, screen_out, threshold=t, scans=scans, marks=marks)
            rows.append({"blobness_weight": float(w), **s})
    return rows


def format_sweep(rows: Sequence[dict[str, Any]]) -> str:
    """A Markdown table of :func:`sweep` rows."""
    lines = [
        "| blobness weight | threshold | CPM | sensitivity | sensitivity >= 4 mm | false per scan |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        cells = [r["blobness_weight"], r["threshold"], r["cpm"], r["sensitivity"], r["sensitivity_ge4mm"]]
        text = ["-" if v is None else f"{v:g}" for v in cells]
        lines.append(f"| {' | '.join(text)} | {r['false_nodules_per_scan']:g} |")
    return "\n".join(lines)


def _numbers(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, not {text!r}") from e


def main(argv: list[str] | None = None) -> int:
    """Print the sweep's table (and its JSON with ``--json``)."""
    from pipelines.screening.settings import ScreeningSettings

    p = argparse.ArgumentParser(prog="python -m pipelines.evaluation.operating_point", description=__doc__)
    p.add_argument("data", type=Path, help="the dataset (seriesuids.csv, annotations.csv, cases.csv)")
    p.add_argument("screen_out", type=Path, help="where it was screened (run.json, cases/*/candidates.csv)")
    p.add_argument("--blobness-weights", type=_numbers, default=None, help="default: the run's own")
    p.add_argument("--thresholds", type=_numbers, default=None, help="default: the bundle's prob_threshold")
    p.add_argument("--series-containing", default="", help="only series whose id contains this text")
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = p.parse_args(argv)
    try:
        weights = args.blobness_weights or [used_blobness_weight(args.screen_out)]
        thresholds = args.thresholds or [ScreeningSettings().prob_threshold]
        scans = {u for u in froc.read_seriesuids(args.data / "seriesuids.csv") if args.series_containing in u}
        rows = sweep(args.data, args.screen_out, blobness_weights=weights, thresholds=thresholds, scans=scans)
    except (OSError, ValueError) as e:
        print(f"operating_point: {e}", file=sys.stderr)
        return 2
    print(format_sweep(rows))
    if args.json:
        from pipelines.imaging.filesys import atomic_write_text

        atomic_write_text(args.json, json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
