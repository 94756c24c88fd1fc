"""What a reader of the report sees on a real-nodule validation set: detection at the reporting threshold.

``make validate-real-nodules`` screens scans with real nodules inserted (:mod:`pipelines.realnodules.insert`) and runs
``lungscreen evaluate`` (FROC, CPM, per-type sensitivities). This module adds the figures at the reporting
threshold (``settings#prob_threshold``): sensitivity overall, for nodules of at least 4 mm and per readers'
rating (``cases.csv`` type: LIDC texture or ``calcified``) and size, and false nodules per scan, over the
real nodules only (the phantom hosts' own generator nodules are matched, so hitting one is no false positive,
but they are not counted). The same figures per host (``by_host``: the real chest CT apart from the phantoms, whose
false marks would otherwise hide the real CT's) follow. Run as
``python -m pipelines.realnodules.validation DATA SCREEN_OUT``.
"""

from __future__ import annotations

import csv
import json
import re
import sys
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.evaluation import froc
from pipelines.realnodules.bank import PathLike

SIZE_BINS = ((0.0, 4.0), (4.0, 6.0), (6.0, 10.0), (10.0, 100.0))


def _types(cases_csv: Path) -> dict[tuple[str, int], dict[str, str]]:
    with cases_csv.open(newline="") as f:
        return {(r["seriesuid"], int(r["nodule_id"])): r for r in csv.DictReader(f)}


def host_group(seriesuid: str) -> str:
    """The host a case of ``insert-nodules`` was made from: its scan id before ``_real_s<seed>``, a phantom's case
    number dropped (``phantom_s7000_0003_real_s10003`` -> ``phantom_s7000``; ``ct_real_s301`` -> ``ct``)."""
    stem = seriesuid.rsplit("_real_s", 1)[0]
    return re.sub(r"^(phantom_s\d+)_\d+$", r"\1", stem)


def threshold_summary(
    data: PathLike, screen_out: PathLike, *, threshold: float, scans: Collection[str] | None = None
) -> dict[str, Any]:
    """Figures at ``threshold`` for dataset ``data`` (annotations/cases/seriesuids) screened into ``screen_out``.

    ``scans``: only these series (their nodules, marks and number as the false-positive divisor).

    Returns:
        ``{"threshold", "scans", "cpm", "false_nodules_per_scan", "sensitivity", "sensitivity_ge4mm",
        "by_type": {type: {"n", "found"}}, "by_size": {...}}`` over the nodules whose type is not ``generator``.
    """
    root, out = Path(data), Path(screen_out)
    uids = [u for u in froc.read_seriesuids(root / "seriesuids.csv") if scans is None or u in scans]
    kept = set(uids)
    nodules = [n for n in froc.read_findings_csv(root / "annotations.csv") if n.seriesuid in kept]
    marks = [m for m in froc.read_marks_csv(out / "submission.csv") if m.seriesuid in kept]
    match = froc.match_marks(nodules=nodules, marks=marks, seriesuids=uids)
    kinds = _types(root / "cases.csv")
    per_scan: dict[str, int] = {}
    types = []
    for n in match.nodules:  # annotation order = cases.csv order within each scan
        per_scan[n.seriesuid] = per_scan.get(n.seriesuid, 0) + 1
        types.append(kinds.get((n.seriesuid, per_scan[n.seriesuid]), {}).get("type", "unknown"))
    real = np.asarray([t != "generator" for t in types])
    score = np.where(np.isnan(match.nodule_score), -np.inf, match.nodule_score)
    found = score >= threshold
    diam = np.asarray([n.diameter_mm for n in match.nodules], float)
    curve = froc.curve_for(match, real)

    def group(mask: np.ndarray) -> dict[str, Any]:
        m = mask & real
        return {"n": int(m.sum()), "found": int((found & m).sum())}

    by_type = {t: group(np.asarray([x == t for x in types])) for t in sorted(set(types)) if t != "generator"}
    by_size = {f"{lo:g}-{hi:g} mm": group((diam >= lo) & (diam < hi)) for lo, hi in SIZE_BINS}
    n_real = int(real.sum())
    return {
        "threshold": threshold,
        "scans": match.n_scans,
        "real_nodules": n_real,
        "cpm": round(float(froc.cpm(curve)), 4) if n_real else None,
        "false_nodules_per_scan": round(
            float((match.fp_score >= threshold).sum()) / max(match.n_scans, 1), 3
        ),
        "sensitivity": round(float((found & real).sum()) / n_real, 4) if n_real else None,
        "sensitivity_ge4mm": _rate(found & real & (diam >= 4.0), real & (diam >= 4.0)),
        "by_type": by_type,
        "by_size": by_size,
    }


def _rate(hit: np.ndarray, of: np.ndarray) -> float | None:
    return round(float(hit.sum()) / float(of.sum()), 4) if of.sum() else None


def main(argv: list[str] | None = None) -> int:
    """``python -m pipelines.realnodules.validation DATA SCREEN_OUT``: print and write ``SCREEN_OUT/real_nodules.json``."""
    from pipelines.imaging.filesys import atomic_write_text
    from pipelines.screening.settings import ScreeningSettings

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m pipelines.realnodules.validation DATA SCREEN_OUT", file=sys.stderr)
        return 2
    threshold = ScreeningSettings().prob_threshold
    summary = threshold_summary(args[0], args[1], threshold=threshold)
    hosts: dict[str, list[str]] = {}
    for uid in froc.read_seriesuids(Path(args[0]) / "seriesuids.csv"):
        hosts.setdefault(host_group(uid), []).append(uid)
    summary["by_host"] = {
        host: threshold_summary(args[0], args[1], threshold=threshold, scans=set(uids))
        for host, uids in sorted(hosts.items())
    }
    text = json.dumps(summary, indent=1)
    atomic_write_text(Path(args[1]) / "real_nodules.json", text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
