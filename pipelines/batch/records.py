"""Per-case records of a batch run, and the tables rebuilt from them: the truth of resumed and sharded runs.

``OUT/cases/<case_id>/result.json`` (written last: a case is complete when it exists) and
``OUT/.state/failed/<case_id>.json`` are the records; ``summary.csv``, ``failures.csv`` and ``failures.log`` are
rebuilt from them. A record carries a fingerprint of the run (settings, bundle version, weight files' bytes)
and of the case's input files, so a rerun skips a case only when the same input, settings and weights made it.

Every CSV cell of text that a spreadsheet would read as a formula (starting with ``=``, ``+``, ``-``, ``@``, a
tab or a carriage return) is written with a leading ``'`` (OWASP's rule; :func:`csv_safe`); numbers stay
numbers.
"""

from __future__ import annotations

import csv
import hashlib
import io as _io
import json
import logging
import os
from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.imaging import filesys
from pipelines.imaging.filesys import csv_safe

FAILURE_COLUMNS = ("case_id", "input", "reason")


log = logging.getLogger("lungscreen")


def case_dir(output_dir: Path, case_id: str) -> Path:
    return Path(output_dir) / "cases" / case_id


def failure_path(output_dir: Path, case_id: str) -> Path:
    return Path(output_dir) / ".state" / "failed" / f"{case_id}.json"


def is_done(output_dir: Path, case_id: str, fingerprint: str | None = None) -> bool:
    """The case has a complete ``result.json`` (and, given ``fingerprint``, one written by that same run setup).

    A result from other settings, weights or bundle version (or from a version that recorded no fingerprint)
    is not done: a rerun into the same folder after an upgrade screens the case again instead of keeping it.
    """
    if fingerprint is None:
        return (case_dir(output_dir, case_id) / "result.json").is_file()
    return done_state(output_dir, case_id, fingerprint) == "done"


def done_state(output_dir: Path, case_id: str, fingerprint: str) -> str:
    """Where a case stands against ``fingerprint`` (:func:`case_fingerprint`): ``"done"``, ``"absent"`` (no
    ``result.json``), ``"unreadable"``, ``"other_input"`` (same run setup, another input) or ``"other_setup"``
    (other settings, weights or bundle version, or no fingerprint recorded)."""
    path = case_dir(output_dir, case_id) / "result.json"
    if not path.is_file():
        return "absent"
    record = read_record(path)
    if record is None:
        return "unreadable"
    recorded = record.get("fingerprint")
    if recorded == fingerprint:
        return "done"
    same_setup = (  # an earlier version recorded the run's part alone: count that as another setup
        isinstance(recorded, str) and ":" in recorded and recorded.split(":")[0] == fingerprint.split(":")[0]
    )
    return "other_input" if same_setup else "other_setup"


def case_fingerprint(run_fingerprint: str, input_fingerprints: Sequence[str]) -> str:
    """A case's fingerprint: the run's (:func:`run_fingerprint`) ``:`` its input's (one per channel)."""
    return ":".join([run_fingerprint, *input_fingerprints])


def read_record(path: Path) -> dict[str, Any] | None:
    """A JSON record as a dict, or None when it is missing, empty, cut short or not an object."""
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def run_fingerprint(
    settings_sha256: str, bundle_version: str, files: Sequence[str | os.PathLike[str] | None]
) -> str:
    """What makes two screenings of a case interchangeable: settings, bundle version and the weight files' bytes.

    ``files`` are checkpoints (missing or None entries count as absent). Returns a short hex digest.
    """
    h = hashlib.sha256(f"{settings_sha256}|{bundle_version}".encode())
    for f in files:
        path = Path(f) if f else None
        if path is not None and path.is_file():
            h.update(b"|file")
            with path.open("rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
        else:
            h.update(b"|absent")
    return h.hexdigest()[:16]


def remove_stale_temporaries(folder: Path, *, recursive: bool = False) -> list[Path]:
    """Delete ``.tmp-*`` files and folders (from :func:`pipelines.imaging.filesys.atomic_write`) in ``folder`` (and, with
    ``recursive``, in its sub-folders such as ``report_files/``).

    Only for a folder this process alone writes to (a case folder it is about to rewrite, or the run folder on
    rank 0 after every rank finished): there they can only be leftovers of an interrupted run.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = folder.rglob(".tmp-*") if recursive else folder.glob(".tmp-*")
    removed = []
    for p in sorted(found, key=lambda q: len(q.parts), reverse=True):
        if p.is_dir() and not p.is_symlink():
            for child in p.iterdir():
                child.unlink()
            p.rmdir()
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def to_csv(rows: Iterable[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """CSV text of ``rows`` (header ``columns``; missing keys empty, extra keys ignored); floats rounded for
    reading (:func:`_fmt`), text that a spreadsheet would evaluate neutralised (:func:`csv_safe`)."""
    buf = _io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: csv_safe(_fmt(row.get(k))) for k in columns})
    return buf.getvalue()


def _fmt(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float | np.floating):
        v = float(value)
        if abs(v) < 1.0:  # probabilities: enough digits that near-1 scores keep their order (0.99999994)
            return f"{v:.8g}"
        return f"{v:.6g}" if abs(v) < 1e5 else f"{v:.2f}"
    return value


def write_json(path: Path, obj: Any) -> Path:
    return filesys.atomic_write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def record_failure(output_dir: Path, case_id: str, source: str, reason: str, *, trace: str = "") -> None:
    """Write ``.state/failed/<case_id>.json``: the input, a one-line ``reason`` (``failures.csv``) and the
    ``trace`` (traceback text, ``failures.log``)."""
    one_line = " ".join(str(reason).split())[:500]
    record = {"case_id": case_id, "input": source, "reason": one_line, "traceback": trace}
    write_json(failure_path(output_dir, case_id), record)


def clear_failure(output_dir: Path, case_id: str) -> None:
    p = failure_path(output_dir, case_id)
    if p.exists():
        p.unlink()


def load_run_records(
    output_dir: Path, case_ids: Collection[str] | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """Read the per-case records once: (results, failures still unresolved, summary rows sorted by case).

    Args:
        output_dir: OUT.
        case_ids: the cases of the current run; records of other case ids (inputs removed or renamed since an
            earlier run) are left out. None: every record.

    A record that cannot be read (empty, cut short) is left out with a warning, never fatal; a failure of a case
    that has a result since is not listed. Each row carries the case's ``input`` path.
    """
    out = Path(output_dir)
    results = _read_records(sorted((out / "cases").glob("*/result.json")), lambda p: p.parent.name, case_ids)
    failures = _read_records(sorted((out / ".state" / "failed").glob("*.json")), lambda p: p.stem, case_ids)
    done_ids = {r["case_id"] for r in results}
    failures = [f for f in failures if f["case_id"] not in done_ids]
    rows = [{**r.get("summary", {}), "case_id": r["case_id"], "input": _input_of(r)} for r in results] + [
        {
            "case_id": f["case_id"],
            "input": f.get("input", ""),
            "status": "failed",
            "warnings": f.get("reason", ""),
            "reason": f.get("reason", ""),
        }
        for f in failures
    ]
    rows.sort(key=lambda r: r["case_id"])
    return results, failures, rows


def _read_records(
    paths: Iterable[Path], case_id_of: Any, case_ids: Collection[str] | None
) -> list[dict[str, Any]]:
    records = []
    for p in paths:
        case_id = case_id_of(p)
        if p.name.startswith(".") or (case_ids is not None and case_id not in case_ids):
            continue  # a temporary of a killed run, or a case no longer in the run
        record = read_record(p)
        if record is None:
            log.warning(
                "case %s: record %s is unreadable (empty or cut short): left out of the run tables",
                case_id,
                p,
            )
            continue
        records.append({**record, "case_id": case_id})
    return records


def _input_of(result: dict[str, Any]) -> str:
    info = result.get("info")
    return str(result.get("input") or (info.get("input", "") if isinstance(info, dict) else ""))


def write_failure_tables(output_dir: Path, failures: Sequence[dict[str, Any]]) -> None:
    """``failures.csv`` (case, input, one-line reason) and ``failures.log`` (each one's traceback; removed when
    nothing failed) from the failure records of :func:`load_run_records`."""
    out = Path(output_dir)
    filesys.atomic_write_text(out / "failures.csv", to_csv(failures, FAILURE_COLUMNS))
    if not failures:
        (out / "failures.log").unlink(missing_ok=True)
        return
    parts = []
    for f in failures:
        trace = str(f.get("traceback") or "(no traceback recorded)\n")
        parts.append(
            f"=== {f['case_id']} ({f.get('input', '')})\n{f.get('reason', '')}\n\n{trace.rstrip()}\n\n"
        )
    filesys.atomic_write_text(out / "failures.log", "".join(parts))
