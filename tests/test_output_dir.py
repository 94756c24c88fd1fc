"""The output location (issues 19, 23): OUT is checked before any work (a folder or creatable, writable, not
inside an input, not a file) with one line; links in ``index.html`` are URL-encoded."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote

import pytest
from helpers import chest_image, run_screen, write_case

from pipelines.batch import runstate


@pytest.fixture
def no_work(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records every case the engine starts to read (there must be none when OUT is refused)."""
    from pipelines.screening.engine import ScreeningEngine

    started: list[str] = []
    original = ScreeningEngine.prepare

    def prepare(self: ScreeningEngine, case: object) -> object:
        started.append(str(case))
        return original(self, case)  # type: ignore[arg-type]

    monkeypatch.setattr(ScreeningEngine, "prepare", prepare)
    return started


def _scan(folder: Path) -> Path:
    return write_case(chest_image(), folder / "chest.nii.gz")


def test_out_that_is_a_file_is_refused_before_any_work(
    tmp_path: Path, weights: str, no_work: list[str]
) -> None:
    scan = _scan(tmp_path / "in")
    other = write_case(chest_image(), tmp_path / "second.nii.gz")
    before = other.read_bytes()
    with pytest.raises(runstate.OutputDirError, match="is an existing file, not a folder"):
        run_screen(scan, other, weights=weights)
    assert no_work == [] and other.read_bytes() == before


def test_cli_forgetting_out_is_one_line_exit_2(
    tmp_path: Path, weights: str, capsys: pytest.CaptureFixture
) -> None:
    from pipelines.cli.main import main

    a, b = _scan(tmp_path / "a"), _scan(tmp_path / "b")
    before = b.read_bytes()
    assert main(["screen", str(a), str(b), "--device", "cpu", "--quiet", "--weights", weights]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is an existing file, not a folder" in err[0] and str(b) in err[0]
    assert b.read_bytes() == before


def test_out_that_cannot_be_created_is_refused(tmp_path: Path, weights: str, no_work: list[str]) -> None:
    scan = _scan(tmp_path / "in")
    (tmp_path / "file").write_text("x")
    with pytest.raises(runstate.OutputDirError, match="cannot be created: Not a directory"):
        run_screen(scan, tmp_path / "file" / "out", weights=weights)
    assert no_work == []


def test_out_that_is_not_writable_is_refused(
    tmp_path: Path, weights: str, no_work: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno
    import tempfile

    scan = _scan(tmp_path / "in")
    out = tmp_path / "out"
    out.mkdir()

    def refuse(*args: object, **kwargs: object) -> tuple[int, str]:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(tempfile, "mkstemp", refuse)  # as a read-only folder does for a user other than root
    with pytest.raises(runstate.OutputDirError, match="is not writable: Permission denied"):
        run_screen(scan, out, weights=weights)
    assert no_work == [] and list(out.iterdir()) == []


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_out_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o555)
    try:
        with pytest.raises(runstate.OutputDirError, match="not writable"):
            runstate.check_output_dir(out)
    finally:
        out.chmod(0o755)


def test_out_inside_an_input_is_refused_even_before_it_exists(tmp_path: Path) -> None:
    inp = tmp_path / "in"
    inp.mkdir()
    with pytest.raises(runstate.OutputDirError, match="inside the input folder"):
        runstate.check_output_dir(inp / "new" / "out", inputs={inp.resolve()})
    assert list(inp.iterdir()) == []
    assert runstate.check_output_dir(tmp_path / "new" / "out", inputs={inp.resolve()}).is_dir()


def test_index_links_are_url_encoded(tmp_path: Path) -> None:
    from pipelines.report.index import write_index

    ids = ["a#1", "b%20c", "sp ace", "q?x=1", "é"]
    for case_id in ids:
        (tmp_path / "cases" / case_id).mkdir(parents=True)
        (tmp_path / "cases" / case_id / "report.html").write_text("<html></html>")
    rows = [{"case_id": c, "status": "ok", "report": f"cases/{c}/report.html"} for c in ids]
    page = write_index(run_dir=tmp_path, rows=rows).read_text()
    hrefs = [part.split('"', 1)[0] for part in page.split('<a href="')[1:]]
    assert hrefs == ["cases/a%231/report.html", "cases/b%2520c/report.html", "cases/sp%20ace/report.html",
                     "cases/q%3Fx%3D1/report.html", "cases/%C3%A9/report.html"]  # fmt: skip
    for href in hrefs:  # a browser resolves each link to the case's own report
        assert (tmp_path / unquote(href)).is_file()
