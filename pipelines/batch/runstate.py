"""Run state shared by the screening and the segmentation engine: where outputs may go, which input a case's
outputs belong to, failure records, recovery after a killed run, and how a run ends.

The per-case records are the truth: ``OUT/cases/<case_id>/result.json`` (written last) for a finished case,
``OUT/.state/failed/<case_id>.json`` (one-line reason + traceback) for a failed one; the run tables are rebuilt
from them (:mod:`pipelines.screening.outputs`). A case counts as done only when its ``result.json`` carries this run's
fingerprint: settings, weights, bundle version *and* its input (:func:`input_fingerprint`), so a rerun never
keeps results of another scan that now has the same case id, nor of a scan that changed since.

A run ends in one of four ways (:func:`finish`): normally; :class:`NoScanFound` or :class:`NoCaseSucceeded`
(after the run tables are written, so ``python -m monai.bundle run`` exits non-zero); :class:`TablesNotWritten`
(disk full, OUT removed); :class:`RunInterrupted` (Ctrl-C: the tables list the cases finished so far).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import stat
import tempfile
import traceback
from collections.abc import Callable, Collection, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from pipelines.batch import records
from pipelines.imaging import discovery, filesys

log = logging.getLogger("lungscreen")


class OutputDirError(ValueError):
    """The output folder cannot be used (a file, not writable, cannot be created, inside an input)."""


class RunError(RuntimeError):
    """A run that produced no usable result; ``counts`` are the run's (succeeded, failed, skipped, total)."""

    def __init__(self, message: str, counts: dict[str, int]):
        super().__init__(message)
        self.counts = dict(counts)


class NoScanFound(RunError):
    """The inputs hold no scan (empty folder, only non-scan files)."""


class NoCaseSucceeded(RunError):
    """Every case of the run failed."""


class TablesNotWritten(RunError):
    """The run tables could not be written (disk full, OUT not writable any more)."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C: the run stopped after writing the run tables of the cases finished so far."""


# ------------------------------------------------------------------------------------------ output folder
def input_folders(cases: Iterable[discovery.CaseInput], roots: Iterable[str | os.PathLike[str]]) -> set[Path]:
    """The folders an output folder may not lie in: the given input folders and every DICOM series folder."""
    folders = {Path(r).resolve() for r in roots if Path(r).is_dir()}
    folders |= {Path(c.path).resolve() for c in cases if c.is_dicom}
    return folders


def check_output_dir(output_dir: str | os.PathLike[str], *, inputs: Collection[Path] = ()) -> Path:
    """Make sure ``output_dir`` can take a run's outputs before any work; create it if needed.

    Args:
        output_dir: the run's OUT.
        inputs: resolved input folders (:func:`input_folders`); OUT may be none of them nor lie inside one.

    Raises:
        OutputDirError: one line saying what is wrong with OUT.
    """
    out = Path(output_dir)
    resolved = out.resolve()
    for folder in sorted(inputs):
        if resolved == folder or folder in resolved.parents:
            raise OutputDirError(
                f"output folder {resolved} lies inside the input folder {folder}: choose another OUT"
            )
    if out.exists() and not out.is_dir():
        raise OutputDirError(f"output folder {out} is an existing file, not a folder: is the last path OUT?")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputDirError(f"output folder {out} cannot be created: {err.strerror or err}") from None
    try:
        fd, probe = tempfile.mkstemp(prefix=".tmp-write-check-", dir=out)
        os.close(fd)
    except OSError as err:
        raise OutputDirError(f"output folder {out} is not writable: {err.strerror or err}") from None
    Path(probe).unlink(missing_ok=True)  # another rank's clean_start may have removed it already
    return out


# ------------------------------------------------------------------------------------------ identity
#: Bytes of each file hashed into :func:`input_fingerprint` (a header and the first voxels); each DICOM
#: slice hashes its first :data:`DICOM_HEAD_BYTES` (its header).
HEAD_BYTES = 1 << 16
DICOM_HEAD_BYTES = 1 << 12
_DATA_FILE = re.compile(
    rb"^[ \t]*(?:ElementDataFile[ \t]*=|data ?file[ \t]*:)[ \t]*(\S[^\r\n]*)", re.I | re.M
)


def case_inputs(case: Any) -> list[discovery.CaseInput]:
    """The scans a case reads: itself (:class:`pipelines.imaging.discovery.CaseInput`) or its channels (a ``SegCase``)."""
    return [case] if isinstance(case, discovery.CaseInput) else list(getattr(case, "channels", []))


def input_fingerprint(case: discovery.CaseInput) -> str:
    """What binds a case's outputs to its input: a short hex digest of the resolved path, size, modification
    time and first bytes of every file of the scan (a MetaImage/NRRD header's data file too; every slice of a
    DICOM series); of the voxels and geometry for an in-memory image. Special files are never opened.
    """
    h = hashlib.sha256()
    if case.image is not None:
        img = case.image
        h.update(repr((img.GetSize(), img.GetSpacing(), img.GetOrigin(), img.GetDirection())).encode())
        h.update(f"|{img.GetPixelIDValue()}|".encode())
        voxels = sitk.GetArrayViewFromImage(img)  # hashed in place: no copy of a large scan
        h.update(np.ascontiguousarray(voxels).data)  # a view already contiguous is not copied
    elif case.dicom_files:
        for f in case.dicom_files:
            _hash_file(h, Path(f), DICOM_HEAD_BYTES)
    else:
        path = Path(case.path)
        head = _hash_file(h, path, HEAD_BYTES)
        match = _DATA_FILE.search(head) if path.name.lower().endswith((".mhd", ".nhdr")) else None
        if match:
            data = path.parent / match.group(1).decode("utf-8", "replace").strip()
            if data.is_file():
                _hash_file(h, data, HEAD_BYTES)
    return h.hexdigest()[:16]


def _hash_file(h: Any, path: Path, head_bytes: int) -> bytes:
    """Add ``path``'s identity to ``h``; return the bytes read (none for a missing or special file)."""
    h.update(b"\0" + str(path.resolve()).encode("utf-8", "surrogateescape"))
    try:
        st = os.stat(path)
    except OSError:
        h.update(b"|missing")
        return b""
    h.update(f"|{st.st_size}|{st.st_mtime_ns}".encode())
    if not stat.S_ISREG(st.st_mode):
        h.update(b"|special")
        return b""
    try:
        with open(path, "rb") as fh:
            head = fh.read(head_bytes)
    except OSError:
        h.update(b"|unreadable")
        return b""
    h.update(head)
    return head


def case_fingerprints(cases: Iterable[Any], run_fingerprint: str) -> dict[str, str]:
    """``{case_id: fingerprint}``: the run's fingerprint joined with the case's input fingerprint(s)."""
    return {
        c.case_id: records.case_fingerprint(run_fingerprint, [input_fingerprint(i) for i in case_inputs(c)])
        for c in cases
    }


def split_done(
    output_dir: Path, cases: Sequence[Any], fingerprints: dict[str, str], *, overwrite: bool
) -> tuple[list[Any], list[Any]]:
    """``(to do, already done)``: a case is done when its ``result.json`` carries its fingerprint.

    Says (one log line each) which cases are done again because their settings/weights/version or their input
    differ from the earlier run's, and warns about unreadable records (those cases are done again).
    """
    if overwrite:
        return list(cases), []
    todo: list[Any] = []
    done: list[Any] = []
    redo: dict[str, list[str]] = {"other_setup": [], "other_input": []}
    for c in cases:
        state = records.done_state(output_dir, c.case_id, fingerprints[c.case_id])
        (done if state == "done" else todo).append(c)
        if state in redo:
            redo[state].append(c.case_id)
        elif state == "unreadable":
            log.warning("case %s: its result.json is unreadable; doing the case again", c.case_id)
    why = {
        "other_setup": "were done before with other settings, weights or bundle version",
        "other_input": "were done before from another input file (changed, moved or another scan now has "
        "that case id)",
    }
    for state, ids in redo.items():
        if ids:
            shown = ", ".join(ids[:5]) + (" ..." if len(ids) > 5 else "")
            log.info("%d case(s) %s; doing them again: %s", len(ids), why[state], shown)
    return todo, done


# ------------------------------------------------------------------------------------------ recovery
_FAILURE_TMP = re.compile(r"^\.tmp-(?P<case>.+)\.json-[A-Za-z0-9_]+\.json$")


def clean_start(output_dir: Path, mine: Collection[str], everyone: Collection[str], *, rank0: bool) -> None:
    """Remove what a killed run left behind, before this run writes anything.

    ``.tmp-*`` files in the case folders of this rank's cases (``mine``), their failure records' temporaries
    in ``.state/failed`` (rank 0 also those of cases of no rank, and the run folder's own), and unreadable
    failure records (empty or cut short by a kill): the case is then taken from its ``result.json`` or done
    again, with a warning. Other ranks' files are never touched.
    """
    out = Path(output_dir)
    if rank0:
        records.remove_stale_temporaries(out)
    for case_id in mine:
        records.remove_stale_temporaries(records.case_dir(out, case_id), recursive=True)
    failed = out / ".state" / "failed"
    for p in sorted(failed.iterdir()) if failed.is_dir() else []:
        m = _FAILURE_TMP.match(p.name)
        if p.name.startswith(".tmp-"):
            owner = m["case"] if m else None
            if owner in mine or (rank0 and owner not in everyone):
                p.unlink(missing_ok=True)
        elif p.suffix == ".json" and p.stem in mine and records.read_record(p) is None:
            log.warning(
                "case %s: its failure record %s is unreadable (empty or cut short by a kill): removed; the case "
                "is taken from its result.json or done again",
                p.stem,
                p,
            )
            p.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------ failures
def root_cause(err: BaseException) -> BaseException:
    """The exception that started it all: MONAI's ``Compose`` wraps a transform's error in
    ``RuntimeError("applying transform ...")``; the useful message is in the ``__cause__`` chain."""
    seen = {id(err)}
    while True:
        if isinstance(err, filesys.ImageReadError):
            return err
        nxt = err.__cause__ or (None if err.__suppress_context__ else err.__context__)
        if nxt is None or id(nxt) in seen:
            return err
        seen.add(id(nxt))
        err = nxt


def failure_reason(path: str | os.PathLike[str], err: BaseException) -> str:
    """One line naming the input file and what went wrong with it."""
    cause = root_cause(err)
    if isinstance(cause, filesys.ImageReadError):
        return str(cause)
    return f"{path}: {type(cause).__name__}: {cause}"


def fail_case(output_dir: Path, case_id: str, source: str | os.PathLike[str], err: BaseException) -> str:
    """Record a failed case: its one-line reason and traceback (``failures.csv`` / ``failures.log``); drop an
    older ``result.json`` of that case id (it is not this input's result). Returns the reason.

    A failure that cannot be recorded (disk full) is logged, never raised: the batch goes on.
    """
    reason = failure_reason(source, err)
    log.warning("case %s failed: %s", case_id, reason)
    trace = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    try:
        (records.case_dir(output_dir, case_id) / "result.json").unlink(missing_ok=True)
        records.record_failure(output_dir, case_id, str(source), reason, trace=trace)
    except OSError as write_err:
        log.error("case %s: its failure could not be recorded in %s: %s", case_id, output_dir, write_err)
    return reason


# ------------------------------------------------------------------------------------------ the end
def finish(
    output_dir: Path,
    *,
    counts: dict[str, int],
    write_tables: Callable[[], dict[str, int]],
    rank0: bool,
    interrupted: bool,
    inputs: str,
) -> None:
    """End a run: rank 0 writes the run tables, then the run's outcome is raised if it is not a success.

    Args:
        output_dir: OUT.
        counts: this rank's ``succeeded``, ``failed``, ``skipped`` and ``total`` (cases of the whole run).
        write_tables: rebuilds the run tables; returns the tables' ``succeeded`` and ``failed`` counts.
        rank0: whether this process writes the run tables.
        interrupted: Ctrl-C stopped the run.
        inputs: what was searched, for the "no scan found" message.

    Raises:
        RunInterrupted, TablesNotWritten, NoScanFound, NoCaseSucceeded: with a one-line message.
    """
    finished = counts["succeeded"] + counts["skipped"]
    tables: dict[str, int] = {}
    if rank0:
        try:
            tables = write_tables()
        except OSError as err:
            message = (
                f"cannot write the run tables in {output_dir}: {err.strerror or err}; {finished} case(s) are "
                "finished in OUT/cases: free space (or fix OUT) and rerun the same command to write them"
            )
            if not interrupted:
                raise TablesNotWritten(message, counts) from None
            log.error("%s", message)
    if interrupted:
        raise RunInterrupted(
            f"interrupted: {finished} case(s) finished and listed in {Path(output_dir) / 'summary.csv'}; "
            "rerun the same command to resume"
        )
    if not rank0:
        return
    if counts["total"] == 0:
        message = (
            f"no scan found in {inputs}: nothing done (NIfTI, MetaImage, NRRD files and DICOM series count)"
        )
        log.error("%s", message)
        raise NoScanFound(message, counts)
    if tables.get("succeeded", 0) == 0:
        message = (
            f"no case succeeded: {max(tables.get('failed', 0), counts['failed'])} failed; the reasons are in "
            f"{Path(output_dir) / 'failures.csv'}, tracebacks in {Path(output_dir) / 'failures.log'}"
        )
        log.error("%s", message)
        raise NoCaseSucceeded(message, counts)
