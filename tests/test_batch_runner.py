"""The shared batch runner on fake stages: pipelined and sequential runs agree, failures stay per case, resume."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from pipelines.batch import records
from pipelines.batch.runner import run_cases


class _Case:
    def __init__(self, case_id: str, path: Path) -> None:
        self.case_id, self.path, self.dicom_files, self.is_dicom = case_id, path, [], False


class _Stages:
    """Doubles a number read from each case's file; the case holding 'bad' fails in compute."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.threads: dict[str, set[str]] = {"prepare": set(), "compute": set(), "write": set()}

    def prepare(self, case: _Case) -> str:
        self.threads["prepare"].add(threading.current_thread().name)
        return case.path.read_text()

    def compute(self, case: _Case, prepared: str) -> int:
        self.threads["compute"].add(threading.current_thread().name)
        if prepared == "bad":
            raise ValueError(f"{case.path}: not a number")
        return 2 * int(prepared)

    def write(self, case: _Case, computed: int, *, fingerprint: str) -> None:
        self.threads["write"].add(threading.current_thread().name)
        folder = records.case_dir(self.out, case.case_id)
        records.write_json(folder / "result.json", {"fingerprint": fingerprint, "value": computed})

    def write_run_files(self, case_ids: set[str]) -> dict[str, int]:
        results, failures, _ = records.load_run_records(self.out, case_ids)
        return {"succeeded": len(results), "failed": len(failures)}


def _cases(folder: Path, values: list[str]) -> list[_Case]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, v in enumerate(values):
        p = folder / f"c{i}.txt"
        p.write_text(v)
        out.append(_Case(f"c{i}", p))
    return out


@pytest.mark.parametrize("pipelined", [True, False])
def test_pipelined_and_sequential_runs_write_the_same_and_isolate_a_failure(
    tmp_path: Path, pipelined: bool
) -> None:
    cases = _cases(tmp_path / "in", ["1", "bad", "3"])
    out = tmp_path / "out"
    stages = _Stages(out)
    kw: dict[str, Any] = {"stages": stages, "output_dir": out, "fingerprint": "fp", "progress": False}
    counts = run_cases(cases, pipelined=pipelined, **kw)
    assert counts == {"succeeded": 2, "failed": 1, "skipped": 0, "total": 3}
    assert records.read_record(out / "cases" / "c2" / "result.json")["value"] == 6  # type: ignore[index]
    failure = records.read_record(records.failure_path(out, "c1"))
    assert failure is not None and "not a number" in failure["reason"] and "Traceback" in failure["traceback"]
    # threads: the pipelined run prepares and writes beside the computing thread; the sequential one does not
    assert (stages.threads["prepare"] != stages.threads["compute"]) is pipelined
    assert (stages.threads["write"] != stages.threads["compute"]) is pipelined
    again = run_cases(cases, pipelined=pipelined, **kw)  # resume: done cases are skipped, the bad one retried
    assert again == {"succeeded": 0, "failed": 1, "skipped": 2, "total": 3}
