"""Measure follow-up screening against known truth: a pairs folder of :func:`pipelines.followup.pairs.make_followup_pairs`
screened with ``lungscreen screen --pairs PAIRS/pairs.csv OUT``.

Each truth nodule (``truth.csv``, LPS mm centres in each scan's own frame) is matched to our nodule of the same
scan: nearest first, one to one, within its radius (at least :data:`GATE_FLOOR_MM`). Detection misses and
comparison errors are counted apart:

* **matching accuracy**: of the truth nodules present in both scans whose both ends we detected, the fraction
  our comparison paired with each other (``prior_nodule_id`` of the current nodule's ``followup.csv`` row); a
  truth pair paired with another prior nodule is a *wrong match*, one left unpaired (reported new) a *missed
  match*; every pair our comparison made is also checked (both ends the same truth nodule, or not);
* **volume-change error**: over the correctly paired truth nodules, ``|our ratio - truth ratio| / truth ratio``
  with our ratio ``volume_now_mm3 / volume_then_mm3`` and the truth's ``volume_ratio`` (median, p90);
* **new-nodule recall**: truth ``new`` nodules detected and reported ``new`` over all truth ``new`` nodules (also
  given over the detected ones); **growth detection**: truth ``grown`` reported ``growing`` (over all, and over
  those detected in both scans); stable and resolved likewise;
* the Lung-RADS prior rules our comparison applied (counts), detection sensitivity per scan and false nodules.

``python -m pipelines.followup.evaluate PAIRS OUT --json J --md M`` writes the JSON and the markdown.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.batch import records
from pipelines.imaging import filesys

__all__ = ["GATE_FLOOR_MM", "TARGETS", "evaluate_followup", "main", "match_points", "to_markdown"]

GATE_FLOOR_MM = 5.0
#: Issue 22's targets: (metric key, comparison, value).
TARGETS = (
    ("matching_accuracy", ">=", 0.95),
    ("volume_change_error_median", "<=", 0.15),
    ("new_nodule_recall", ">=", 0.90),
)
_XYZ = ("x", "y", "z")
_CENTER = ("center_lps_x_mm", "center_lps_y_mm", "center_lps_z_mm")


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return [
            {k: (v[1:] if v.startswith("'") else v) for k, v in row.items()} for row in csv.DictReader(fh)
        ]


def _float(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if np.isfinite(out) else None


def match_points(truth_lps_mm: np.ndarray, gates_mm: np.ndarray, ours_lps_mm: np.ndarray) -> dict[int, int]:
    """One-to-one matching, nearest pair first, of truth points ``[n, 3]`` to ours ``[m, 3]`` (LPS mm) within
    each truth point's gate (mm). Returns ``{truth index: our index}``."""
    if not len(truth_lps_mm) or not len(ours_lps_mm):
        return {}
    d = np.linalg.norm(truth_lps_mm[:, None, :] - ours_lps_mm[None, :, :], axis=2)
    out: dict[int, int] = {}
    used: set[int] = set()
    for flat in np.argsort(d, axis=None):
        i, j = divmod(int(flat), d.shape[1])
        if i in out or j in used or d[i, j] > gates_mm[i]:
            continue
        out[i] = j
        used.add(j)
    return out


def _our_nodules(case_dir: Path) -> list[dict[str, Any]] | None:
    """Our nodules of a case (``nodules.json``, else ``nodules.csv``), ``None`` when the case has no table."""
    if (case_dir / "nodules.json").is_file():
        return list((records.read_record(case_dir / "nodules.json") or {}).get("nodules") or [])
    if (case_dir / "nodules.csv").is_file():
        return _csv(case_dir / "nodules.csv")
    return None


def _points(nodules: Sequence[Mapping[str, Any]]) -> np.ndarray:
    return np.array([[float(n[k]) for k in _CENTER] for n in nodules]).reshape(-1, 3)


def _side(truth: Sequence[Mapping[str, str]], key: str, ours: Sequence[Mapping[str, Any]]) -> dict[int, Any]:
    """``{truth_id: our nodule_id}`` for the truth nodules present in scan ``key`` (``cur``/``prior``)."""
    present = [t for t in truth if _float(t.get(f"{key}_diameter_mm"))]
    pts = np.array([[float(t[f"{key}_{a}"]) for a in _XYZ] for t in present]).reshape(-1, 3)
    gates = np.array([max(GATE_FLOOR_MM, float(t[f"{key}_diameter_mm"]) / 2.0) for t in present])
    found = match_points(pts, gates, _points(ours))
    return {int(present[i]["truth_id"]): str(ours[j]["nodule_id"]) for i, j in found.items()}


def _case_dirs(out: Path, pair: Mapping[str, str]) -> tuple[Path, Path | None]:
    """Our current case folder and the prior case it was compared with (``followup.json``), else the screened prior."""
    case_id = Path(pair["current"]).name.split(".")[0]
    for row in _csv(out / "followup.csv") if (out / "followup.csv").is_file() else []:
        if Path(row["current"]).name == Path(pair["current"]).name and row.get("case_id"):
            case_id = row["case_id"]
    current = out / "cases" / case_id
    record = records.read_record(current / "followup.json") or {}
    if record.get("prior_case"):
        return current, Path(record["prior_case"])
    prior = out / "priors" / "cases" / Path(pair["prior"]).name.split(".")[0]
    return current, prior if prior.is_dir() else None


def _pair_outcomes(out: Path, pair: Mapping[str, str], truth: list[dict[str, str]]) -> dict[str, Any]:
    current_dir, prior_dir = _case_dirs(out, pair)
    compared = (current_dir / "followup.csv").is_file() and (current_dir / "result.json").is_file()
    cur = _our_nodules(current_dir) if (current_dir / "result.json").is_file() else None
    pri = _our_nodules(prior_dir) if prior_dir is not None else None
    rows = _csv(current_dir / "followup.csv") if compared else []
    by_current = {r["nodule_id"]: r for r in rows if r.get("nodule_id")}
    resolved = {r["prior_nodule_id"] for r in rows if r.get("followup_status") == "resolved"}
    cur_of = _side(truth, "cur", cur or [])
    pri_of = _side(truth, "prior", pri or [])
    outcomes = []
    for t in truth:
        tid = int(t["truth_id"])
        c, p = cur_of.get(tid), pri_of.get(tid)
        row = by_current.get(c) if c is not None else None
        outcomes.append(
            {
                "truth": t,
                "current": c,
                "prior": p,
                "status": (row or {}).get("followup_status") or ("resolved" if p in resolved else None),
                "paired_with": (row or {}).get("prior_nodule_id") or None,
                "row": row,
            }
        )
    truth_of_cur = {v: k for k, v in cur_of.items()}
    truth_of_pri = {v: k for k, v in pri_of.items()}
    made = [
        (r["nodule_id"], r["prior_nodule_id"])
        for r in rows
        if r.get("nodule_id") and r.get("prior_nodule_id")
    ]
    return {
        "pair_id": pair["pair_id"],
        "screened": cur is not None and pri is not None,
        "compared": compared,
        "outcomes": outcomes,
        "n_current": len(cur or []),
        "n_prior": len(pri or []),
        "false_current": len(cur or []) - len(cur_of),
        "false_prior": len(pri or []) - len(pri_of),
        "made_pairs": [(truth_of_cur.get(c), truth_of_pri.get(p)) for c, p in made],
        "rules": Counter(r.get("prior_rule") or "" for r in rows if r.get("nodule_id")),
        "statuses": Counter(r.get("followup_status") or "" for r in rows),
    }


def _rate(num: int, den: int) -> float | None:
    return round(num / den, 4) if den else None


def _volume_errors(outcomes: Sequence[Mapping[str, Any]]) -> list[float]:
    errors = []
    for o in outcomes:
        row, t = o["row"], o["truth"]
        truth_ratio = _float(t.get("volume_ratio"))
        now, then = (_float((row or {}).get(k)) for k in ("volume_now_mm3", "volume_then_mm3"))
        if truth_ratio and now is not None and then:
            errors.append(abs(now / then - truth_ratio) / truth_ratio)
    return errors


def _summary(pairs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    outs = [o for p in pairs for o in p["outcomes"]]
    both = [o for o in outs if o["truth"]["status"] in ("grown", "stable")]
    both_found = [o for o in both if o["current"] is not None and o["prior"] is not None]
    correct = [o for o in both_found if o["paired_with"] == o["prior"]]
    wrong = [o for o in both_found if o["paired_with"] not in (None, o["prior"])]
    new = [o for o in outs if o["truth"]["status"] == "new"]
    new_found = [o for o in new if o["current"] is not None]
    grown = [o for o in outs if o["truth"]["status"] == "grown"]
    stable = [o for o in outs if o["truth"]["status"] == "stable"]
    gone = [o for o in outs if o["truth"]["status"] == "resolved"]
    made = [m for p in pairs for m in p["made_pairs"]]
    errors = _volume_errors(correct)

    def detected(key: str) -> dict[str, Any]:
        present = [
            o for o in outs if _float(o["truth"].get(f"{'cur' if key == 'current' else 'prior'}_diameter_mm"))
        ]
        hit = sum(o[key] is not None for o in present)
        return {"truth": len(present), "detected": hit, "sensitivity": _rate(hit, len(present))}

    return {
        "pairs": len(pairs),
        "pairs_compared": sum(p["compared"] for p in pairs),
        "truth_nodules": len(outs),
        "truth_by_status": dict(Counter(o["truth"]["status"] for o in outs)),
        "detection": {
            "current": detected("current"),
            "prior": detected("prior"),
            "false_nodules_current": sum(p["false_current"] for p in pairs),
            "false_nodules_prior": sum(p["false_prior"] for p in pairs),
        },
        "matching": {
            "truth_pairs": len(both),
            "both_ends_detected": len(both_found),
            "correct": len(correct),
            "wrong_match": len(wrong),
            "missed_match": len(both_found) - len(correct) - len(wrong),
            "our_pairs": len(made),
            "our_pairs_same_truth": sum(a is not None and a == b for a, b in made),
            "our_pairs_different_truth": sum(a is not None and b is not None and a != b for a, b in made),
            "our_pairs_with_a_false_nodule": sum(a is None or b is None for a, b in made),
        },
        "matching_accuracy": _rate(len(correct), len(both_found)),
        "volume_change_error_median": round(float(np.median(errors)), 4) if errors else None,
        "volume_change_error_p90": round(float(np.percentile(errors, 90)), 4) if errors else None,
        "volume_change_error_n": len(errors),
        "new_nodule_recall": _rate(sum(o["status"] == "new" for o in new), len(new)),
        "new_labelled_new_of_detected": _rate(sum(o["status"] == "new" for o in new_found), len(new_found)),
        "new": {
            "truth": len(new),
            "detected": len(new_found),
            "labelled_new": sum(o["status"] == "new" for o in new),
        },
        "growth": _status_rates(grown, "growing"),
        "stable": _status_rates(stable, "stable"),
        "resolved": {
            "truth": len(gone),
            "prior_detected": sum(o["prior"] is not None for o in gone),
            "labelled_resolved": sum(o["status"] == "resolved" for o in gone),
        },
        "prior_rules": dict(sum((p["rules"] for p in pairs), Counter())),
        "followup_statuses": dict(sum((p["statuses"] for p in pairs), Counter())),
    }


def _status_rates(group: Sequence[Mapping[str, Any]], label: str) -> dict[str, Any]:
    found = [o for o in group if o["current"] is not None and o["prior"] is not None]
    hit = [o for o in found if o["status"] == label]
    return {
        "truth": len(group),
        "both_ends_detected": len(found),
        f"labelled_{label}": len(hit),
        "rate_of_all": _rate(len(hit), len(group)),
        "rate_of_detected": _rate(len(hit), len(found)),
    }


def evaluate_followup(pairs_dir: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """The figures of the module docstring for one pairs folder screened into ``out_dir``."""
    folder, out = Path(pairs_dir), Path(out_dir)
    truth: dict[str, list[dict[str, str]]] = {}
    for t in _csv(folder / "truth.csv"):
        truth.setdefault(t["pair_id"], []).append(t)
    pairs = [_pair_outcomes(out, p, truth.get(p["pair_id"], [])) for p in _csv(folder / "pairs.csv")]
    report: dict[str, Any] = {
        "pairs_dir": str(folder),
        "out_dir": str(out),
        "gate": f"truth radius, at least {GATE_FLOOR_MM} mm",
    }
    report.update(_summary(pairs))
    report["targets"] = {k: _target(report.get(k), op, v) for k, op, v in TARGETS}
    report["per_pair"] = [
        {
            k: p[k]
            for k in (
                "pair_id",
                "screened",
                "compared",
                "n_current",
                "n_prior",
                "false_current",
                "false_prior",
            )
        }
        for p in pairs
    ]
    return report


def _target(value: Any, op: str, goal: float) -> dict[str, Any]:
    met = None if value is None else (value >= goal if op == ">=" else value <= goal)
    return {"value": value, "target": f"{op} {goal}", "met": met}


def to_markdown(report: Mapping[str, Any], *, title: str = "Follow-up evaluation") -> str:
    """A short markdown summary of :func:`evaluate_followup`'s report."""
    m, d = report["matching"], report["detection"]
    lines = [
        f"### {title}",
        "",
        f"Pairs: {report['pairs']} ({report['pairs_compared']} compared); truth nodules: {report['truth_nodules']} "
        f"{report['truth_by_status']}.",
        "",
        "| metric | value | target | met |",
        "|---|---|---|---|",
    ]
    for key, t in report["targets"].items():
        lines.append(f"| {key} | {t['value']} | {t['target']} | {t['met']} |")
    lines += [
        f"| volume_change_error_p90 | {report['volume_change_error_p90']} (n={report['volume_change_error_n']}) | | |",
        "",
        f"- Detection (not comparison): current {d['current']}, prior {d['prior']}; false nodules current "
        f"{d['false_nodules_current']}, prior {d['false_nodules_prior']}.",
        f"- Matching: {m}.",
        f"- New: {report['new']} (labelled new of detected: {report['new_labelled_new_of_detected']}).",
        f"- Growth: {report['growth']}.",
        f"- Stable: {report['stable']}.",
        f"- Resolved: {report['resolved']}.",
        f"- Lung-RADS prior rules applied: {report['prior_rules']}.",
        f"- Follow-up statuses: {report['followup_statuses']}.",
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m pipelines.followup.evaluate", description=__doc__.split("\n")[0]
    )
    p.add_argument("pairs", type=Path, help="pairs folder (pairs.csv, truth.csv)")
    p.add_argument(
        "out", type=Path, help="the screening OUT of `lungscreen screen --pairs PAIRS/pairs.csv OUT`"
    )
    p.add_argument("--json", type=Path, default=None, help="write the report here (JSON)")
    p.add_argument("--md", type=Path, default=None, help="write the markdown summary here")
    p.add_argument("--title", default="Follow-up evaluation", help="markdown heading")
    a = p.parse_args(argv)
    report = evaluate_followup(a.pairs, a.out)
    text = to_markdown(report, title=a.title)
    if a.json is not None:
        records.write_json(a.json, report)
    if a.md is not None:
        filesys.atomic_write_text(a.md, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
