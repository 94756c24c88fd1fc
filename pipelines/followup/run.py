"""Follow-up screening: screen each current scan, compare it with its prior, write the comparison into its case.

:func:`screen_followup` takes pairs (current scan, prior, interval in days or ``None``) where the prior is a
scan (file or DICOM folder) or a case folder of an earlier lungscreen run (``cases/<id>/`` with ``result.json``):

1. the current scans are screened with :func:`pipelines.screening.api.screen` into ``OUT`` (as without a prior);
2. the prior scans (not the case folders) are screened the same way into ``OUT/priors``;
3. per pair, :func:`pipelines.followup.compare.compare_cases` and :func:`~pipelines.followup.compare.write_followup`
   write ``followup.csv``/``followup.json`` into ``OUT/cases/<id>/``; the case's ``nodules.json``/``nodules.csv``
   ``lung_rads`` become the follow-up categories (``size_category`` kept), ``nodules.json``/``result.json``
   carry the case category with the prior applied (the baseline one kept as ``baseline_lung_rads``), so a later
   follow-up that takes this case folder as its prior reads them; ``report.html`` gets a follow-up section;
4. the run tables (``summary.csv``, ``failures.csv``, ``index.html``) are rebuilt and ``OUT/followup.csv``
   lists every pair (:data:`RUN_COLUMNS`).

A pair whose current scan could not be screened stays the screening's failure. A pair whose prior could not be
screened or compared is a case failure with a one-line reason: the current case's ``result.json`` is moved to
``screening_result.json`` (so the case is not complete and shows no category: a baseline category read without
the prior asked for could be falsely reassuring) and the batch goes on. Paths reach the bundle only as ``Path``
objects. The interval is the one given, else the DICOM StudyDates' difference, else unknown (a warning).
"""

from __future__ import annotations

import csv
import logging
import math
import os
import traceback
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.batch import records
from pipelines.batch.runner import RunResult
from pipelines.followup.compare import FollowupError, FollowupResult, compare_cases, write_followup
from pipelines.imaging import discovery, filesys

__all__ = [
    "RUN_COLUMNS",
    "PairInput",
    "apply_followup",
    "is_case_folder",
    "read_pairs_table",
    "screen_followup",
]

log = logging.getLogger("lungscreen")

#: ``OUT/followup.csv``: one row per pair.
RUN_COLUMNS = (
    "case_id",
    "status",
    "current",
    "prior",
    "prior_case",
    "interval_days",
    "lung_rads",
    "baseline_lung_rads",
    "new",
    "growing",
    "stable",
    "resolved",
    "reason",
)
PRIORS_DIR = "priors"


@dataclass(frozen=True)
class PairInput:
    """One follow-up pair: the current scan, its prior (scan or case folder) and the days between them."""

    current: Path
    prior: Path
    interval_days: float | None = None


def is_case_folder(path: Path) -> bool:
    """A lungscreen case folder (``cases/<id>/`` holding ``result.json``), not a scan."""
    return path.is_dir() and (path / "result.json").is_file()


def _interval(value: Any, where: str) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        days = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: interval_days must be a number of days, not {value!r}") from None
    if not math.isfinite(days) or days < 0:
        raise ValueError(f"{where}: interval_days must be a number of days >= 0, not {value!r}")
    return days


def read_pairs_table(path: str | os.PathLike[str]) -> list[PairInput]:
    """The pairs of a CSV table with columns ``current``, ``prior`` and optionally ``interval_days`` (empty:
    from the DICOM StudyDates); relative paths are resolved against the table's folder.

    Raises:
        ValueError: naming the table (and line) for a missing column, an empty path or a bad interval.
    """
    table = Path(path)
    try:
        with open(table, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.DictReader(fh))
            columns = set(rows[0]) if rows else set()
    except OSError as err:
        raise ValueError(f"{table}: cannot read the pairs table ({err.strerror or err})") from None
    except (UnicodeDecodeError, csv.Error) as err:
        raise ValueError(f"{table}: not a CSV table ({err})") from None
    if not rows:
        raise ValueError(f"{table}: no pairs (a CSV table with columns current, prior[, interval_days])")
    if not {"current", "prior"} <= columns:
        raise ValueError(f"{table}: needs the columns current and prior (has {', '.join(sorted(columns))})")
    pairs = []
    for line, row in enumerate(rows, start=2):
        where = f"{table} line {line}"
        current, prior = (str(row.get(k) or "").strip() for k in ("current", "prior"))
        if not current or not prior:
            raise ValueError(f"{where}: empty current or prior path")
        pairs.append(
            PairInput(
                table.parent / current,  # an absolute path stays itself
                table.parent / prior,
                _interval(row.get("interval_days"), where),
            )
        )
    return pairs


def _as_pairs(pairs: Any) -> list[PairInput]:
    from pipelines.screening.inputs import describe, is_path

    if is_path(pairs):
        return read_pairs_table(pairs)
    out = []
    for item in pairs:
        if isinstance(item, PairInput):
            item = (item.current, item.prior, item.interval_days)
        if not isinstance(item, Sequence) or isinstance(item, str) or len(item) not in (2, 3):
            raise TypeError(f"a pair is (current, prior[, interval_days]), not {describe(item)}")
        for p in item[:2]:
            if not is_path(p):
                raise TypeError(f"pair paths must be str or os.PathLike, not {describe(p)}")
        days = _interval(item[2] if len(item) == 3 else None, f"pair {item[0]}")
        out.append(PairInput(Path(item[0]), Path(item[1]), days))
    if not out:
        raise ValueError("no pairs given")
    seen: set[Path] = set()
    for pair in out:
        if pair.current in seen:
            raise ValueError(f"{pair.current} is the current scan of two pairs: one prior per current scan")
        seen.add(pair.current)
    return out


def _unique(paths: Iterable[Path]) -> list[Path]:
    return list(dict.fromkeys(paths))


def _cases_of(paths: list[Path]) -> dict[Path, list[discovery.CaseInput]]:
    """The cases discovery finds for each input (the ids the screening gave them)."""
    found = discovery.discover_cases(paths) if paths else []
    out: dict[Path, list[discovery.CaseInput]] = {p: [] for p in paths}
    for case in found:
        for p in paths:
            if case.path == p or p in case.path.parents or str(p) in case.dicom_files:
                out[p].append(case)
                break
    return out


def screen_followup(
    pairs: Any,
    output_dir: str | os.PathLike[str],
    *,
    weights: Any = None,
    classifier_weights: Any = None,
    overwrite: bool = False,
    progress: bool = True,
    bundle_root: str | os.PathLike[str] | None = None,
    threads: int | None = None,
    **settings: Any,
) -> RunResult:
    """Screen current scans and compare each with its prior (module docstring).

    Args:
        pairs: a CSV table (path; :func:`read_pairs_table`) or a sequence of :class:`PairInput` or
            ``(current, prior[, interval_days])`` tuples of paths (str or ``os.PathLike``).
        output_dir: OUT (layout of :mod:`pipelines.screening.outputs`; the screened priors go to ``OUT/priors``).
        weights, classifier_weights, overwrite, progress, bundle_root, **settings: as
            :func:`pipelines.screening.api.screen`, for both screenings.
        threads: SimpleITK threads of the registrations (``None``: SimpleITK's default).

    Returns:
        a :class:`~pipelines.batch.runner.RunResult` counting pairs: ``succeeded`` compared, ``failed`` not
        (current or prior not screened, comparison refused); ``OUT/followup.csv`` lists them.

    Raises:
        TypeError, ValueError: a malformed pair or table (before any work); and what
            :func:`pipelines.screening.api.screen` raises for bad settings, weights or devices.
    """
    from pipelines.screening.api import screen
    from pipelines.screening.inputs import describe, is_path

    if not is_path(output_dir):
        raise TypeError(f"output_dir must be a path (str or os.PathLike), not {describe(output_dir)}")
    items = _as_pairs(pairs)
    out = Path(output_dir)
    kw: dict[str, Any] = {
        "weights": weights,
        "classifier_weights": classifier_weights,
        "overwrite": overwrite,
        "progress": progress,
        "bundle_root": bundle_root,
        **settings,
    }
    currents = _unique(p.current for p in items)
    raw_priors = _unique(p.prior for p in items if not is_case_folder(p.prior))
    screen(currents, out, **kw)
    if raw_priors:
        screen(raw_priors, out / PRIORS_DIR, **kw)
    current_cases, prior_cases = _cases_of(currents), _cases_of(raw_priors)
    rows = [
        _followup_one(out, p, current_cases[p.current], prior_cases.get(p.prior, []), threads=threads)
        for p in items
    ]
    _rebuild(out, {c.case_id for cases in current_cases.values() for c in cases}, rows)
    ok = sum(r["status"] == "ok" for r in rows)
    return RunResult(out, ok, len(rows) - ok, 0, len(rows))


def _followup_one(
    out: Path,
    pair: PairInput,
    current_cases: list[discovery.CaseInput],
    prior_cases: list[discovery.CaseInput],
    *,
    threads: int | None,
) -> dict[str, Any]:
    """Compare one pair and write the comparison into its case; its ``followup.csv`` row (:data:`RUN_COLUMNS`)."""
    row: dict[str, Any] = {"current": str(pair.current), "prior": str(pair.prior)}
    row["interval_days"] = pair.interval_days
    if len(current_cases) != 1:
        reason = f"follow-up: {pair.current} holds {len(current_cases)} scans; a pair takes one current scan"
        for case in current_cases:
            _fail(out, case.case_id, str(pair.current), reason, trace="")
        return {
            **row,
            "case_id": ";".join(c.case_id for c in current_cases),
            "status": "failed",
            "reason": reason,
        }
    case = current_cases[0]
    row["case_id"] = case.case_id
    current_dir = records.case_dir(out, case.case_id)
    if not (current_dir / "result.json").is_file():
        failure = records.read_record(records.failure_path(out, case.case_id)) or {}
        reason = f"current scan not screened: {failure.get('reason', 'no result')}"
        return {**row, "status": "failed", "reason": reason}
    trace = ""
    try:
        prior_dir, prior_scan = _prior_of(out, pair, prior_cases, current_dir)
        row["prior_case"] = str(prior_dir)
        result = compare_cases(
            current_dir,
            prior_dir,
            current_scan=case.path,
            prior_scan=prior_scan,
            interval_days=pair.interval_days,
            threads=threads,
        )
        write_followup(result, current_dir)
        baseline = apply_followup(current_dir, result, current_scan=case.path, prior_scan=prior_scan)
    except FollowupError as err:
        reason = str(err)
    except Exception as err:  # a fault in one pair never ends the batch
        reason, trace = f"follow-up: {type(err).__name__}: {err}", traceback.format_exc()
    else:
        (current_dir / "screening_result.json").unlink(missing_ok=True)
        statuses = [r["followup_status"] for r in result.rows]
        counts = {s: statuses.count(s) for s in ("new", "growing", "stable", "resolved")}
        row.update(status="ok", lung_rads=result.category, baseline_lung_rads=baseline, **counts)
        row["interval_days"] = result.interval_days
        row["reason"] = "; ".join(result.warnings)
        return row
    _fail(out, case.case_id, str(pair.current), reason, trace=trace)
    return {**row, "status": "failed", "reason": " ".join(reason.split())}


def _prior_of(
    out: Path, pair: PairInput, prior_cases: list[discovery.CaseInput], current_dir: Path
) -> tuple[Path, Path]:
    """The prior's case folder and the scan it was screened from."""
    if is_case_folder(pair.prior):
        if pair.prior.resolve() == current_dir.resolve():
            raise FollowupError(f"{pair.prior}: the prior case folder is the current case itself")
        record = records.read_record(pair.prior / "result.json") or {}
        info = record.get("info") if isinstance(record.get("info"), dict) else {}
        scan = str(record.get("input") or (info or {}).get("input") or "")
        if not scan or scan == "<memory>":
            raise FollowupError(f"{pair.prior}: its result.json names no scan file to compare with")
        if not Path(scan).exists():
            raise FollowupError(f"{pair.prior}: the scan it was screened from, {scan}, is not there any more")
        return pair.prior, Path(scan)
    if len(prior_cases) != 1:
        raise FollowupError(f"prior {pair.prior} holds {len(prior_cases)} scans; a pair takes one prior scan")
    prior = prior_cases[0]
    folder = records.case_dir(out / PRIORS_DIR, prior.case_id)
    if not (folder / "result.json").is_file():
        failure = records.read_record(records.failure_path(out / PRIORS_DIR, prior.case_id)) or {}
        raise FollowupError(f"prior {pair.prior} could not be screened: {failure.get('reason', 'no result')}")
    return folder, prior.path


def _fail(out: Path, case_id: str, source: str, reason: str, *, trace: str) -> None:
    """Record a case failure; a screened current case loses its completeness (``result.json`` moved aside)."""
    folder = records.case_dir(out, case_id)
    done = folder / "result.json"
    if done.is_file():
        os.replace(done, folder / "screening_result.json")
    for name in ("followup.csv", "followup.json"):
        (folder / name).unlink(missing_ok=True)
    records.record_failure(out, case_id, source, reason, trace=trace)
    log.warning("case %s: %s", case_id, " ".join(reason.split()))


def _followup_meta(result: FollowupResult) -> dict[str, Any]:
    return {
        "prior_case": result.prior_case,
        "interval_days": result.interval_days,
        "category": result.category,
        "warnings": list(result.warnings),
        "table": "followup.csv",
    }


def apply_followup(
    case_dir: str | os.PathLike[str],
    result: FollowupResult,
    *,
    current_scan: Path | None = None,
    prior_scan: Path | None = None,
) -> str:
    """Write the follow-up categories into a case folder (module docstring, step 3); ``result.json`` last.

    With both scans given, the report (when the case has one) gets its follow-up section. Returns the case's
    baseline category (as first screened).
    """
    folder = Path(case_dir)
    by_id = {str(r["nodule_id"]): r for r in result.rows if r.get("nodule_id") not in (None, "")}
    meta_path = folder / "nodules.json"
    if meta_path.is_file():
        meta = records.read_record(meta_path) or {}
        meta["baseline_lung_rads"] = meta.get("baseline_lung_rads") or meta.get("lung_rads") or {}
        meta["lung_rads"] = result.lung_rads
        meta["followup"] = _followup_meta(result)
        for n in meta.get("nodules") or []:
            r = by_id.get(str(n.get("nodule_id")))
            if r is not None:
                n.update(lung_rads=r["lung_rads"], followup_status=r["followup_status"])
                n["prior_nodule_id"] = r.get("prior_nodule_id")
        records.write_json(meta_path, meta)
    _update_csv(folder / "nodules.csv", by_id)
    if current_scan is not None and prior_scan is not None:
        from pipelines.report.followup import add_followup_section

        add_followup_section(
            folder,
            result.to_dict(),
            current_scan=current_scan,
            prior_scan=prior_scan,
            prior_case_dir=Path(result.prior_case),
        )
    record = records.read_record(folder / "result.json")
    if record is None:
        raise FollowupError(f"{folder / 'result.json'}: unreadable case record")
    summary = record.setdefault("summary", {})
    summary.setdefault("baseline_lung_rads", summary.get("lung_rads", ""))
    summary["lung_rads"] = result.category
    if result.warnings:
        note = "follow-up: " + "; ".join(result.warnings)
        kept = [
            w for w in str(summary.get("warnings") or "").split("; ") if w and not w.startswith("follow-up: ")
        ]
        summary["warnings"] = "; ".join([*kept, note])
    record["followup"] = _followup_meta(result)
    records.write_json(folder / "result.json", record)
    return str(summary["baseline_lung_rads"])


def _update_csv(path: Path, by_id: dict[str, dict[str, Any]]) -> None:
    """``nodules.csv`` with each nodule's ``lung_rads`` replaced by its follow-up category; cells otherwise as read."""
    if not path.is_file():
        return
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        columns, rows = list(reader.fieldnames or []), list(reader)
    for row in rows:
        r = by_id.get(str(row.get("nodule_id")))
        if r is not None and "lung_rads" in row:
            row["lung_rads"] = r["lung_rads"]
    filesys.atomic_write_text(path, records.to_csv(rows, columns))


def _rebuild(out: Path, case_ids: set[str], rows: Sequence[dict[str, Any]]) -> None:
    """The run tables and index of OUT for the current cases, and ``OUT/followup.csv``."""
    from pipelines.screening import outputs

    loaded = records.load_run_records(out, case_ids)
    outputs.rebuild_run_tables(out, loaded)
    if (out / "index.html").is_file():
        from pipelines.report.html import write_index

        write_index(run_dir=out, rows=loaded[2])
    filesys.atomic_write_text(out / "followup.csv", records.to_csv(rows, RUN_COLUMNS))
