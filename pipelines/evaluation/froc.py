"""LUNA16 detection metrics: matching, FROC curve, CPM, bootstrap confidence intervals.

The matching and the FROC curve follow the rules of the official LUNA16 evaluation script
(``noduleCADEvaluationLUNA16.py``, Setio et al., Med. Image Anal. 42, 2017), re-implemented from its
documented behaviour (see ``../shared/data/luna16/README.md``), not copied:

* all coordinates are world millimetres in the LPS frame (``coordX, coordY, coordZ`` as LUNA16);
* a mark hits a finding when its squared distance to the centre is ``< (diameter / 2) ** 2``;
  a diameter ``< 0`` (``-1`` in ``annotations_excluded.csv``) counts as 10 mm;
* per scan, when there are more than ``max_marks_per_scan`` (100) marks, only the marks whose
  probability is strictly greater than the 101st-highest are kept;
* included nodules are processed first: every mark within a nodule is a hit (each nodule tests all
  marks of its scan); a hit nodule is one true positive scored with the **maximum** probability of its
  hits, and the other hits are "double detections", ignored;
* remaining marks inside any excluded finding are ignored; all other marks are false positives;
* the FROC curve is the ROC curve of (detected nodules, false positives) with the points that are
  collinear in counts dropped, ``fps = #FP above threshold / #scans`` (scans without marks or
  nodules count) and ``sensitivity = #TP above threshold / #nodules`` (missed nodules count);
* the CPM is the mean sensitivity at 1/8, 1/4, 1/2, 1, 2, 4 and 8 false positives per scan.

The official script does not print a CPM. :func:`sensitivities_at` offers the two conventions used with
it: ``"interp"`` (``np.interp`` on the official curve, the interpolation the official script uses for its
own FROC plot; our default, "the" CPM) and ``"nearest"`` (the curve point with the nearest fps, as the
organisers' later ``unicorn_eval.getCPM``).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

FP_RATES: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
DEFAULT_DIAMETER_MM = 10.0
MAX_MARKS_PER_SCAN = 100
SIZE_BUCKETS_MM: tuple[tuple[str, float, float], ...] = (
    ("3-6", 0.0, 6.0),
    ("6-10", 6.0, 10.0),
    ("10-20", 10.0, 20.0),
    ("20-30+", 20.0, float("inf")),
)
CPM_CONVENTIONS = ("interp", "nearest")

PathLike = str | os.PathLike[str]


# ------------------------------------------------------------------------------------------ records
@dataclass(frozen=True)
class Finding:
    """One annotated finding (nodule or excluded finding), world LPS mm.

    Attributes:
        seriesuid: scan id.
        center_lps_mm: ``(x, y, z)`` centre in LPS world millimetres.
        diameter_mm: annotated diameter in mm as written (``-1`` means unknown).
        row: 0-based data row in its CSV file.
    """

    seriesuid: str
    center_lps_mm: tuple[float, float, float]
    diameter_mm: float
    row: int = 0

    @property
    def hit_radius_mm(self) -> float:
        """Radius used for hits: half the diameter, 5 mm for an unknown (negative) diameter."""
        d = self.diameter_mm if self.diameter_mm >= 0 else DEFAULT_DIAMETER_MM
        return d / 2.0


@dataclass(frozen=True)
class Mark:
    """One CAD mark (candidate) of a submission, world LPS mm, with its probability; ``reportable`` False for a
    mark that ranks in the FROC but never becomes a reported nodule (a second-look spot)."""

    seriesuid: str
    center_lps_mm: tuple[float, float, float]
    probability: float
    row: int = 0
    reportable: bool = True


def read_findings_csv(path: PathLike) -> list[Finding]:
    """Read a LUNA16 ``annotations.csv``-style file (``seriesuid,coordX,coordY,coordZ,diameter_mm``)."""
    rows = _read_csv(path, ("seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"))
    return [
        Finding(
            r["seriesuid"],
            (float(r["coordX"]), float(r["coordY"]), float(r["coordZ"])),
            float(r["diameter_mm"]),
            i,
        )
        for i, r in enumerate(rows)
    ]


def read_marks_csv(path: PathLike) -> list[Mark]:
    """Read a LUNA16 submission (``seriesuid,coordX,coordY,coordZ,probability``), world LPS mm."""
    rows = _read_csv(path, ("seriesuid", "coordX", "coordY", "coordZ", "probability"))
    return [
        Mark(
            r["seriesuid"],
            (float(r["coordX"]), float(r["coordY"]), float(r["coordZ"])),
            float(r["probability"]),
            i,
        )
        for i, r in enumerate(rows)
    ]


def read_seriesuids(path: PathLike) -> list[str]:
    """Read a ``seriesuids.csv`` (one uid per line, no header; a ``seriesuid`` header is skipped)."""
    uids: list[str] = []
    with open(path, newline="", encoding="utf-8") as fh:
        for row in csv.reader(fh):
            if not row or not row[0].strip():
                continue
            uid = row[0].strip()
            if not uids and uid.lower() == "seriesuid":
                continue
            if uid not in uids:
                uids.append(uid)
    return uids


def _read_csv(path: PathLike, required: Sequence[str]) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; found {reader.fieldnames}")
        return [{k: (v or "").strip() for k, v in r.items() if k} for r in reader]


# ------------------------------------------------------------------------------------------ matching
@dataclass
class MatchResult:
    """Outcome of matching marks to findings over the evaluated scans.

    Attributes:
        seriesuids: evaluated scans (the FP/scan divisor is their number).
        nodules: included nodules of the evaluated scans, in annotation order.
        nodule_scan: scan index of each nodule, shape ``(N,)``.
        nodule_score: max probability of each nodule's hits, ``nan`` when missed, shape ``(N,)``.
        nodule_hits: number of marks hitting each nodule, shape ``(N,)``.
        fp_score: probability of each false positive, shape ``(F,)``.
        fp_scan: scan index of each false positive, shape ``(F,)``.
        mark_class: class of every submission row (``TP``, ``double``, ``ignored_excluded``, ``FP``,
            ``capped``, ``outside_subset``), in row order.
        counts: the official counts (TP, FP, FN, candidates, nodules, ignored_on_excluded,
            double_detections, capped, outside_subset).
    """

    seriesuids: list[str]
    nodules: list[Finding]
    nodule_scan: np.ndarray
    nodule_score: np.ndarray
    nodule_hits: np.ndarray
    fp_score: np.ndarray
    fp_scan: np.ndarray
    mark_class: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def n_scans(self) -> int:
        return len(self.seriesuids)

    @property
    def detected(self) -> np.ndarray:
        """Boolean ``(N,)``: nodule hit by at least one (kept) mark."""
        return ~np.isnan(self.nodule_score)


def cap_marks(probabilities: np.ndarray, *, max_marks: int = MAX_MARKS_PER_SCAN) -> np.ndarray:
    """Official per-scan cap: boolean keep-mask of the marks of one scan.

    With more than ``max_marks`` marks only those with probability strictly greater than the
    ``(max_marks + 1)``-th highest are kept (so marks tied at the cut are all dropped).
    """
    p = np.asarray(probabilities, dtype=float)
    if max_marks <= 0 or p.size <= max_marks:
        return np.ones(p.size, dtype=bool)
    cut = np.sort(p)[::-1][max_marks]
    return p > cut


def _hits(points: np.ndarray, finding: Finding) -> np.ndarray:
    d2 = np.sum((points - np.asarray(finding.center_lps_mm)) ** 2, axis=1)
    return d2 < finding.hit_radius_mm**2


def _match_scan(marks: np.ndarray, probs: np.ndarray, nodules: list[Finding], excluded: list[Finding]):
    """Classify the (kept) marks of one scan; returns (classes, nodule scores, nodule hit counts)."""
    cls = np.full(len(probs), "FP", dtype=object)
    scores = np.full(len(nodules), np.nan)
    nhits = np.zeros(len(nodules), dtype=int)
    free = np.ones(len(probs), dtype=bool)
    for k, nod in enumerate(nodules):
        hit = _hits(marks, nod) if len(probs) else np.zeros(0, dtype=bool)
        idx = np.flatnonzero(hit)
        if idx.size == 0:
            continue
        nhits[k] = idx.size
        best = idx[np.argmax(probs[idx])]  # the max-probability hit is the TP, others are doubles
        scores[k] = probs[best]
        cls[idx] = np.where(cls[idx] == "TP", "TP", "double")
        cls[best] = "TP"
        free[idx] = False
    for exc in excluded:
        if len(probs) == 0:
            break
        hit = _hits(marks, exc) & free
        cls[hit] = "ignored_excluded"
        free[hit] = False
    return cls, scores, nhits


def match_marks(
    *,
    nodules: Sequence[Finding],
    marks: Sequence[Mark],
    seriesuids: Sequence[str],
    excluded: Sequence[Finding] = (),
    max_marks_per_scan: int = MAX_MARKS_PER_SCAN,
) -> MatchResult:
    """Match marks to findings scan by scan with the official LUNA16 rules (module docstring).

    Args:
        nodules: included nodules (``annotations.csv``), world LPS mm.
        marks: CAD marks (submission rows), world LPS mm; rows of scans not in ``seriesuids`` are ignored.
        seriesuids: evaluated scans; their number divides the false positives.
        excluded: excluded findings (``annotations_excluded.csv``); marks on them are ignored.
        max_marks_per_scan: official cap (100); ``0`` disables it.

    Returns:
        The :class:`MatchResult` with per-nodule scores, false positives and per-row classes.
    """
    uids = list(dict.fromkeys(seriesuids))
    index = {u: i for i, u in enumerate(uids)}
    by_scan_n = _group(nodules, index)
    by_scan_e = _group(excluded, index)
    by_scan_m: dict[int, list[int]] = {}
    mark_class = ["outside_subset"] * len(marks)
    for j, m in enumerate(marks):
        if m.seriesuid in index:
            by_scan_m.setdefault(index[m.seriesuid], []).append(j)
    all_nod: list[Finding] = []
    nod_scan, nod_score, nod_hits, fp_score, fp_scan = [], [], [], [], []
    for s in range(len(uids)):
        rows = np.asarray(by_scan_m.get(s, []), dtype=int)
        probs = np.asarray([marks[j].probability for j in rows], dtype=float)
        keep = cap_marks(probs, max_marks=max_marks_per_scan)
        for j in rows[~keep]:
            mark_class[j] = "capped"
        rows, probs = rows[keep], probs[keep]
        pts = np.asarray([marks[j].center_lps_mm for j in rows], dtype=float).reshape(-1, 3)
        nods = by_scan_n.get(s, [])
        cls, scores, nhits = _match_scan(pts, probs, nods, by_scan_e.get(s, []))
        for j, c in zip(rows, cls):
            mark_class[j] = str(c)
        all_nod += nods
        nod_scan += [s] * len(nods)
        nod_score += list(scores)
        nod_hits += list(nhits)
        fp_score += list(probs[cls == "FP"])
        fp_scan += [s] * int(np.sum(cls == "FP"))
    result = MatchResult(
        uids,
        all_nod,
        np.asarray(nod_scan, dtype=int),
        np.asarray(nod_score, dtype=float),
        np.asarray(nod_hits, dtype=int),
        np.asarray(fp_score, dtype=float),
        np.asarray(fp_scan, dtype=int),
        mark_class,
    )
    result.counts = _counts(result)
    return result


def _group(findings: Sequence[Finding], index: dict[str, int]) -> dict[int, list[Finding]]:
    out: dict[int, list[Finding]] = {}
    for f in findings:
        if f.seriesuid in index:
            out.setdefault(index[f.seriesuid], []).append(f)
    return out


def _counts(r: MatchResult) -> dict[str, int]:
    n_tp = int(np.sum(r.detected))
    c = {
        k: r.mark_class.count(k)
        for k in ("TP", "double", "ignored_excluded", "FP", "capped", "outside_subset")
    }
    return {
        "TP": n_tp,
        "FP": int(r.fp_score.size),
        "FN": len(r.nodules) - n_tp,
        "total_nodules": len(r.nodules),
        "total_candidates": c["TP"] + c["double"] + c["ignored_excluded"] + c["FP"],
        "ignored_on_excluded": c["ignored_excluded"],
        "double_detections": int(np.sum(np.maximum(r.nodule_hits - 1, 0))),
        "capped": c["capped"],
        "outside_subset": c["outside_subset"],
        "n_scans": r.n_scans,
    }


# ------------------------------------------------------------------------------------------ FROC
@dataclass(frozen=True)
class FROCCurve:
    """FROC curve points (ascending fps), as the official script's ``computeFROC`` returns them.

    Attributes:
        fps: mean false positives per scan at each threshold, shape ``(P,)``.
        sensitivity: fraction of all nodules detected at each threshold, shape ``(P,)``.
        thresholds: probability threshold of each point (``inf`` for the first), shape ``(P,)``.
    """

    fps: np.ndarray
    sensitivity: np.ndarray
    thresholds: np.ndarray


def froc_curve(
    *,
    tp_scores: np.ndarray,
    fp_scores: np.ndarray,
    n_nodules: int,
    n_scans: int,
    drop_intermediate: bool = True,
) -> FROCCurve:
    """FROC curve from the scores of detected nodules and of false positives.

    Same points as ``sklearn.metrics.roc_curve(drop_intermediate=True)`` rescaled the official way:
    one point per distinct score (descending), points collinear in (FP, TP) counts dropped, a first point
    ``(0, 0)`` at threshold ``inf``; ``fps = FP / n_scans``, ``sensitivity = TP / n_nodules``.

    Args:
        tp_scores: score of each detected nodule (missed nodules excluded), shape ``(T,)``.
        fp_scores: score of each false positive, shape ``(F,)``.
        n_nodules: all nodules, detected or not (sensitivity denominator).
        n_scans: evaluated scans (fps denominator).
        drop_intermediate: drop collinear points, as the official script (no effect on interpolation).
    """
    tp = np.asarray(tp_scores, dtype=float)
    fp = np.asarray(fp_scores, dtype=float)
    scores = np.concatenate([tp, fp])
    labels = np.concatenate([np.ones(tp.size), np.zeros(fp.size)])
    order = np.argsort(-scores, kind="mergesort")
    scores, labels = scores[order], labels[order]
    ends = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1] if scores.size else np.zeros(0, int)
    tps = np.cumsum(labels)[ends]
    fpc = (1 + ends) - tps
    thr = scores[ends]
    if drop_intermediate and tps.size > 2:
        keep = np.r_[True, np.logical_or(np.diff(fpc, 2), np.diff(tps, 2)), True]
        tps, fpc, thr = tps[keep], fpc[keep], thr[keep]
    tps, fpc, thr = np.r_[0.0, tps], np.r_[0.0, fpc], np.r_[np.inf, thr]
    # official scaling: fpr * (#candidates - #detected) / #scans and tpr * #detected / #nodules
    fpr = fpc / fpc[-1] if fpc[-1] > 0 else np.zeros_like(fpc)
    tpr = tps / tps[-1] if tps[-1] > 0 else np.zeros_like(tps)
    fps = fpr * fp.size / max(n_scans, 1)
    sens = tpr * tp.size / n_nodules if n_nodules > 0 else np.zeros_like(tpr)
    return FROCCurve(fps, sens, thr)


def sensitivities_at(
    curve: FROCCurve, *, rates: Sequence[float] = FP_RATES, convention: str = "interp"
) -> np.ndarray:
    """Sensitivity of a FROC curve at the given false-positive rates (per scan).

    Args:
        curve: the FROC curve.
        rates: FP/scan rates (default the seven LUNA16 rates).
        convention: ``"interp"``: ``np.interp(rate, fps, sens)`` on the curve (flat beyond its ends; what the
            official script plots). ``"nearest"``: the point whose fps is nearest to the rate, first one on
            ties, starting from a distance of ``max(fps)`` (``unicorn_eval.getCPM``).
    """
    if convention == "interp":
        return np.interp(np.asarray(rates, dtype=float), curve.fps, curve.sensitivity)
    if convention == "nearest":
        out = []
        for r in rates:
            best, prior = 0.0, float(np.max(curve.fps))
            for x, y in zip(curve.fps, curve.sensitivity):
                if abs(x - r) < prior:
                    best, prior = float(y), abs(x - r)
            out.append(best)
        return np.asarray(out)
    raise ValueError(f"convention must be one of {CPM_CONVENTIONS}, not {convention!r}")


def cpm(curve: FROCCurve, *, convention: str = "interp") -> float:
    """Competition performance metric: mean sensitivity at the seven LUNA16 FP/scan rates."""
    return float(np.mean(sensitivities_at(curve, convention=convention)))


def threshold_at(curve: FROCCurve, rate: float) -> float:
    """Lowest threshold whose operating point has at most ``rate`` false positives per scan."""
    ok = curve.fps <= rate
    return float(np.min(curve.thresholds[ok])) if np.any(ok) else float("inf")


def curve_for(match: MatchResult, nodule_mask: np.ndarray | None = None) -> FROCCurve:
    """FROC curve of a match result, optionally restricted to a subset of nodules.

    Marks hitting nodules outside ``nodule_mask`` are ignored (neither TP nor FP), so false positives
    are those of the full evaluation.
    """
    sel = np.ones(len(match.nodules), bool) if nodule_mask is None else np.asarray(nodule_mask, bool)
    det = sel & match.detected
    return froc_curve(
        tp_scores=match.nodule_score[det],
        fp_scores=match.fp_score,
        n_nodules=int(sel.sum()),
        n_scans=match.n_scans,
    )


# ------------------------------------------------------------------------------------------ bootstrap
@dataclass(frozen=True)
class BootstrapResult:
    """Scan-level bootstrap of the FROC (resampling scans with replacement, seeded).

    Attributes:
        sensitivities: ``(B, 7)`` sensitivity at the LUNA16 rates per replicate (``interp`` convention).
        cpm: ``(B,)`` CPM per replicate.
        grid_fps: FP/scan grid of the band, shape ``(G,)``.
        grid_sensitivity: ``(B, G)`` interpolated curves.
    """

    sensitivities: np.ndarray
    cpm: np.ndarray
    grid_fps: np.ndarray
    grid_sensitivity: np.ndarray

    def interval(self, values: np.ndarray, *, level: float = 0.95) -> tuple[float, float]:
        """Percentile interval (nan-aware) of bootstrap ``values`` along the replicate axis."""
        lo, hi = np.nanpercentile(values, [50 * (1 - level), 50 * (1 + level)], axis=0)
        return float(lo), float(hi)


def bootstrap_froc(
    match: MatchResult,
    *,
    n_bootstrap: int = 1000,
    seed: int = 0,
    nodule_mask: np.ndarray | None = None,
    grid_fps: np.ndarray | None = None,
) -> BootstrapResult:
    """Bootstrap the FROC by resampling the evaluated scans with replacement (seeded ``numpy`` RNG).

    Each replicate draws ``n_scans`` scans; a scan drawn k times contributes its nodules and false
    positives k times. Sensitivities use the ``interp`` convention (collinear points do not matter).
    """
    grid = np.geomspace(FP_RATES[0], FP_RATES[-1], 129) if grid_fps is None else np.asarray(grid_fps, float)
    sel = np.ones(len(match.nodules), bool) if nodule_mask is None else np.asarray(nodule_mask, bool)
    det = sel & match.detected
    scores = np.r_[match.nodule_score[det], match.fp_score]
    is_tp = np.r_[np.ones(int(det.sum())), np.zeros(match.fp_score.size)]
    scan = np.r_[match.nodule_scan[det], match.fp_scan]
    order = np.argsort(-scores, kind="mergesort")
    scores, is_tp, scan = scores[order], is_tp[order], scan[order]
    ends = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1] if scores.size else np.zeros(0, int)
    nod_scan = match.nodule_scan[sel]
    rng = np.random.default_rng(seed)
    n = match.n_scans
    sens = np.full((n_bootstrap, len(FP_RATES)), np.nan)
    band = np.full((n_bootstrap, grid.size), np.nan)
    for b in range(n_bootstrap):
        w = np.bincount(rng.integers(0, n, size=n), minlength=n).astype(float)
        n_nod = w[nod_scan].sum()
        if n_nod == 0:
            continue
        ws = w[scan]
        tps = np.r_[0.0, np.cumsum(ws * is_tp)[ends]]
        fpc = np.r_[0.0, np.cumsum(ws * (1 - is_tp))[ends]]
        x, y = fpc / n, tps / n_nod
        sens[b] = np.interp(FP_RATES, x, y)
        band[b] = np.interp(grid, x, y)
    return BootstrapResult(sens, np.mean(sens, axis=1), grid, band)


# ------------------------------------------------------------------------------------------ groups
def size_bucket(diameter_mm: float) -> str:
    """Name of the size bucket (``3-6``, ``6-10``, ``10-20``, ``20-30+`` mm; below 3 mm goes to ``3-6``)."""
    for name, lo, hi in SIZE_BUCKETS_MM:
        if lo <= diameter_mm < hi:
            return name
    return SIZE_BUCKETS_MM[0][0]


def attach_case_attributes(
    nodules: Sequence[Finding],
    cases_table: PathLike,
    *,
    columns: Sequence[str] = ("type", "location"),
    tolerance_mm: float = 2.0,
) -> list[dict[str, str]]:
    """Look up each nodule in a generator ``cases.csv`` (``seriesuid, coordX, coordY, coordZ, type, ...``).

    A nodule matches the row of its scan with the nearest centre (world LPS mm) within ``tolerance_mm``
    (or within its radius, whichever is larger). Unmatched nodules get ``"unknown"``.

    Returns:
        One dict per nodule with the requested ``columns`` present in the table.
    """
    rows = _read_csv(cases_table, ("seriesuid", "coordX", "coordY", "coordZ"))
    cols = [c for c in columns if rows and c in rows[0]]
    by_uid: dict[str, list[dict[str, str]]] = {}
    for r in rows:
        by_uid.setdefault(r["seriesuid"], []).append(r)
    out = []
    for nod in nodules:
        cands = by_uid.get(nod.seriesuid, [])
        attrs = {c: "unknown" for c in cols}
        if cands:
            pts = np.asarray([[float(r["coordX"]), float(r["coordY"]), float(r["coordZ"])] for r in cands])
            d = np.linalg.norm(pts - np.asarray(nod.center_lps_mm), axis=1)
            k = int(np.argmin(d))
            if d[k] <= max(tolerance_mm, nod.hit_radius_mm):
                attrs = {c: cands[k][c] or "unknown" for c in cols}
        out.append(attrs)
    return out
