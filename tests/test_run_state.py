"""Run state (issue 23): leftovers of a killed run removed at the start, unreadable records rebuilt or redone
with a warning (never fatal), a kill at each rename point recovered by a rerun, Ctrl-C writes the tables of the
finished cases and exits 130, tracebacks in ``failures.log``, and exit codes when nothing was found or nothing
succeeded (also through ``python -m monai.bundle run``)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import (
    BUNDLE,
    ROOT,
    chest_image,
    read_failures,
    read_summary,
    run_screen,
    write_case,
)

from pipelines.batch import runstate


def _inputs(folder: Path, *, good: int = 1, bad: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(good):
        write_case(chest_image(noise_hu=10.0, seed=i), folder / f"case{i}.nii.gz")
    for i in range(bad):
        (folder / f"bad{i}.nii.gz").write_text("not an image")


def _leftovers(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".tmp-*"))


# --------------------------------------------------------------------------------------------- recovery
def test_leftovers_and_unreadable_records_of_a_killed_run_are_recovered(
    tmp_path: Path, weights: str, caplog: pytest.LogCaptureFixture
) -> None:
    inp, out = tmp_path / "in", tmp_path / "out"
    _inputs(inp, good=2, bad=1)
    assert run_screen(inp, out, weights=weights).exit_code == 1
    failed = out / ".state" / "failed"
    # killed at the rename of a failure record (the full temporary left), and just after creating one (empty)
    (failed / ".tmp-bad0.json-k1ll3d_x.json").write_text((failed / "bad0.json").read_text())
    (failed / ".tmp-case1.json-0000abcd.json").write_text("")
    (failed / "case0.json").write_text("")  # an empty record beside a finished case
    (out / "cases" / "case1" / "result.json").write_text('{"case_id": "ca')  # cut short
    (out / "cases" / "case0" / "report_files").mkdir()
    (out / "cases" / "case0" / "report_files" / ".tmp-mip.png-1234abcd.png").write_bytes(b"half")
    (out / ".tmp-summary.csv-q9zz0000.csv").write_text("case_id\n")
    with caplog.at_level(logging.WARNING, logger="lungscreen"):
        res = run_screen(inp, out, weights=weights)
    assert (res.succeeded, res.skipped, res.failed, res.exit_code) == (1, 1, 1, 1)  # case1 redone
    assert _leftovers(out) == []
    summary = (out / "summary.csv").read_text().splitlines()
    assert len(summary) == 4 and sorted(read_summary(out)) == ["bad0", "case0", "case1"]  # nobody twice
    assert list(read_failures(out)) == ["bad0"]
    assert any("case1: its result.json is unreadable" in r.getMessage() for r in caplog.records)
    assert any("case0: its failure record" in r.getMessage() for r in caplog.records)


def test_unreadable_record_of_a_case_no_longer_in_the_run_is_not_fatal(tmp_path: Path, weights: str) -> None:
    inp, out = tmp_path / "in", tmp_path / "out"
    _inputs(inp)
    (out / ".state" / "failed").mkdir(parents=True)
    (out / ".state" / "failed" / "gone.json").write_text("")
    (out / "cases" / "old").mkdir(parents=True)
    (out / "cases" / "old" / "result.json").write_text("")
    res = run_screen(inp, out, weights=weights)
    assert res.exit_code == 0 and list(read_summary(out)) == ["case0"]


_KILL_AT = """
import os, sys
sys.path.insert(0, {tests!r})
from pipelines.imaging import io
from pipelines.imaging import filesys
from helpers import run_screen
target, parent = {target!r}, {parent!r}
def kill(tmp, final):
    if final.name == target and (not parent or final.parent.name == parent):
        os._exit(137)  # as kill -9: no cleanup, the temporary stays
filesys.before_replace = kill
run_screen({inp!r}, {out!r}, weights={weights!r})
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    ("target", "parent"),
    [("bad0.json", "failed"), ("result.json", "case0"), ("summary.csv", ""), ("failures.csv", "")],
)
def test_kill_at_each_rename_point_then_rerun_recovers(
    tmp_path: Path, weights: str, target: str, parent: str
) -> None:
    inp, out = tmp_path / "in", tmp_path / "out"
    _inputs(inp, good=2, bad=1)
    code = _KILL_AT.format(
        tests=str(ROOT / "tests"), target=target, parent=parent, inp=str(inp), out=str(out), weights=weights
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 137, proc.stderr[-2000:]
    assert _leftovers(out), "the kill left no temporary: the rename point was not reached"
    res = run_screen(inp, out, weights=weights)
    assert (res.succeeded + res.skipped, res.failed, res.exit_code) == (2, 1, 1)
    assert _leftovers(out) == []
    summary = read_summary(out)
    assert len((out / "summary.csv").read_text().splitlines()) == 4
    assert {k: v["status"] for k, v in summary.items()} == {"bad0": "failed", "case0": "ok", "case1": "ok"}
    assert list(read_failures(out)) == ["bad0"]


# --------------------------------------------------------------------------------------------- Ctrl-C
def _interrupt_second_case(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipelines.screening.engine import ScreeningEngine

    original = ScreeningEngine.compute
    seen: list[str] = []

    def compute(self: ScreeningEngine, case: object, prepared: tuple) -> tuple:
        seen.append(prepared[0]["case_id"])
        if len(seen) == 2:
            raise KeyboardInterrupt
        return original(self, case, prepared)  # type: ignore[arg-type]

    monkeypatch.setattr(ScreeningEngine, "compute", compute)


def test_ctrl_c_writes_the_finished_cases_and_a_rerun_resumes(
    tmp_path: Path, weights: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    inp, out = tmp_path / "in", tmp_path / "out"
    _inputs(inp, good=3)
    with monkeypatch.context() as m:
        _interrupt_second_case(m)
        with pytest.raises(KeyboardInterrupt, match="interrupted: 1 case"):
            run_screen(inp, out, weights=weights)
    assert list(read_summary(out)) == ["case0"]  # the finished case is in the tables
    assert json.loads((out / "run.json").read_text())["succeeded"] == 1
    res = run_screen(inp, out, weights=weights)
    assert (res.succeeded, res.skipped, res.exit_code) == (2, 1, 0)


def test_cli_ctrl_c_is_one_line_and_exit_130(
    tmp_path: Path, weights: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from pipelines.cli.main import main

    inp, out = tmp_path / "in", tmp_path / "out"
    _inputs(inp, good=2)
    _interrupt_second_case(monkeypatch)
    args = ["screen", str(inp), str(out), "--device", "cpu", "--roi-size", "32", "32", "32", "--no-report",
            "--quiet", "--weights", weights, "--set", "target_spacing_mm=3.0", "fine_spacing_mm=null"]  # fmt: skip
    assert main(args) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("lungscreen screen: interrupted: 1 case(s) finished") and "Traceback" not in err
    assert list(read_summary(out)) == ["case0"]


# --------------------------------------------------------------------------------------------- failures
def test_tracebacks_go_to_failures_log_and_the_log_follows_the_failures(tmp_path: Path, weights: str) -> None:
    inp, out = tmp_path / "in", tmp_path / "out"
    _inputs(inp, good=1, bad=1)
    run_screen(inp, out, weights=weights)
    reason = read_failures(out)["bad0"]["reason"]
    assert "bad0.nii.gz" in reason and "\n" not in reason
    log_text = (out / "failures.log").read_text()
    assert log_text.startswith(f"=== bad0 ({inp / 'bad0.nii.gz'})\n{reason}\n")
    assert "Traceback (most recent call last)" in log_text and "ImageReadError" in log_text
    write_case(chest_image(), inp / "bad0.nii.gz")  # fixed: the failure and its log entry go
    assert run_screen(inp, out, weights=weights).exit_code == 0
    assert read_failures(out) == {} and not (out / "failures.log").exists()


def test_a_failure_replaces_an_older_result_of_that_case(tmp_path: Path, weights: str) -> None:
    """A case done before whose input is now broken is listed as failed, not with the old scan's result."""
    inp, out = tmp_path / "in", tmp_path / "out"
    _inputs(inp, good=2)
    run_screen(inp, out, weights=weights)
    (inp / "case1.nii.gz").write_text("now broken")
    res = run_screen(inp, out, weights=weights)
    assert (res.skipped, res.failed) == (1, 1)
    assert read_summary(out)["case1"]["status"] == "failed"
    assert not (out / "cases" / "case1" / "result.json").exists()


def test_disk_full_while_writing_the_run_tables_is_one_line(
    tmp_path: Path, weights: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import errno

    from pipelines.cli.main import main
    from pipelines.imaging import filesys

    inp, out = tmp_path / "in", tmp_path / "out"
    _inputs(inp)
    original = filesys.atomic_write_text

    def full(path: str | os.PathLike[str], text: str) -> Path:
        if Path(path).name == "summary.csv":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return original(path, text)

    monkeypatch.setattr(filesys, "atomic_write_text", full)
    with pytest.raises(
        runstate.TablesNotWritten, match="cannot write the run tables .* No space left on device"
    ):
        run_screen(inp, out, weights=weights)
    args = ["screen", str(inp), str(out), "--device", "cpu", "--roi-size", "32", "32", "32", "--no-report",
            "--quiet", "--weights", weights, "--set", "target_spacing_mm=3.0", "fine_spacing_mm=null"]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No space left on device" in err[0] and "rerun the same command" in err[0]
    monkeypatch.setattr(filesys, "atomic_write_text", original)  # space freed: the rerun writes the tables
    res = run_screen(inp, out, weights=weights)
    assert res.exit_code == 0 and list(read_summary(out)) == ["case0"]


def test_a_failure_that_cannot_be_recorded_does_not_stop_the_batch(
    tmp_path: Path, weights: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    from pipelines.batch import records

    inp, out = tmp_path / "in", tmp_path / "out"
    _inputs(inp, good=1, bad=1)

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(records, "record_failure", full)
    res = run_screen(inp, out, weights=weights)
    assert (res.succeeded, res.failed) == (1, 1)


# --------------------------------------------------------------------------------------------- exit codes
def test_empty_folder_exit_2_with_a_message(
    tmp_path: Path, weights: str, caplog: pytest.LogCaptureFixture
) -> None:
    from pipelines.cli.main import main

    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no scans here")
    res = run_screen(tmp_path / "empty", tmp_path / "out", weights=weights)
    assert (res.total, res.exit_code) == (0, 2)
    args = ["screen", str(tmp_path / "empty"), str(tmp_path / "out"), "--device", "cpu", "--quiet", "--weights",
            weights]  # fmt: skip
    with caplog.at_level(logging.ERROR, logger="lungscreen"):
        assert main(args) == 2
    assert any("no scan found in" in r.getMessage() for r in caplog.records)
    assert (tmp_path / "out" / "summary.csv").read_text().startswith("case_id,input,status")


def _bundle_run(inp: Path, out: Path, weights: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(BUNDLE / "configs" / "inference.json"),
           "--bundle_root", str(BUNDLE), "--dataset_dir", str(inp), "--output_dir", str(out), "--progress", "False",
           "--weights", weights, "--settings#roi_size", "[32,32,32]", "--settings#target_spacing_mm", "3.0",
           "--settings#report", "False", "--settings#fine_spacing_mm", "None", "--settings#device", "cpu"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(cmd, cwd=out.parent, capture_output=True, text=True, timeout=300, env=env)


@pytest.mark.slow
def test_monai_bundle_run_exits_non_zero_when_nothing_found_or_nothing_succeeded(
    tmp_path: Path, weights: str
) -> None:
    (tmp_path / "empty").mkdir()
    proc = _bundle_run(tmp_path / "empty", tmp_path / "out_empty", weights)
    assert proc.returncode != 0 and "no scan found in" in proc.stderr, proc.stderr[-2000:]
    _inputs(tmp_path / "bad", good=0, bad=1)
    proc = _bundle_run(tmp_path / "bad", tmp_path / "out_bad", weights)
    assert proc.returncode != 0 and "no case succeeded: 1 failed" in proc.stderr, proc.stderr[-2000:]
    assert list(read_failures(tmp_path / "out_bad")) == ["bad0"]  # the tables are written first
    _inputs(tmp_path / "good")
    proc = _bundle_run(tmp_path / "good", tmp_path / "out_good", weights)
    assert proc.returncode == 0, proc.stderr[-2000:]
