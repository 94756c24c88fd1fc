"""FIFOs, sockets and devices are never opened (issue 23): opening a FIFO blocks until someone writes to it,
and a device such as /dev/zero never ends. Discovery skips them with a note; given directly, they fail at once
with a one-line reason. A watchdog writes to the FIFO if anything did block on it, so a regression fails the
test instead of hanging the suite."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import chest_image, read_failures, read_summary, run_screen, write_case

from pipelines.imaging import discovery, filesys, io

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX FIFOs")


@contextlib.contextmanager
def unblocker(fifo: Path, *, after_s: float = 60.0) -> Iterator[dict[str, bool]]:
    """If anything still blocks on ``fifo`` after ``after_s``, open it for writing and close it (the reader gets
    end-of-file) and record that it had to: the test then fails on ``fired`` rather than hanging."""
    state = {"fired": False}
    stop = threading.Event()

    def watch() -> None:
        if stop.wait(after_s):
            return
        while not stop.is_set():
            try:
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # succeeds only while a reader waits
            except OSError as err:
                if err.errno not in (errno.ENXIO, errno.ENOENT):
                    return
                stop.wait(0.2)
                continue
            state["fired"] = True
            os.close(fd)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        stop.set()
        thread.join(5)


def test_kinds(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.nii.gz"
    os.mkfifo(fifo)
    assert filesys.special_file_kind(fifo) == "a FIFO (named pipe)"
    (tmp_path / "link.nii.gz").symlink_to(fifo)
    assert filesys.is_special_file(tmp_path / "link.nii.gz")  # links are followed
    assert filesys.special_file_kind("/dev/null") == "a character device"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(tmp_path / "s.nii.gz"))
        assert filesys.special_file_kind(tmp_path / "s.nii.gz") == "a socket"
    regular = write_case(chest_image(), tmp_path / "ok.nii.gz")
    assert not filesys.is_special_file(regular) and not filesys.is_special_file(tmp_path)
    assert not filesys.is_special_file(tmp_path / "missing.nii.gz")


def test_fifo_is_refused_without_opening(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.nii.gz"
    os.mkfifo(fifo)
    with unblocker(fifo) as state:
        with pytest.raises(
            filesys.ImageReadError, match=r"pipe\.nii\.gz: a FIFO \(named pipe\), not a regular file"
        ):
            io.read_image(fifo)
        with pytest.raises(filesys.ImageReadError, match="FIFO"):
            discovery.check_size(discovery.CaseInput("pipe", fifo), max_voxels=10**9)
        with pytest.raises(filesys.ImageReadError, match="FIFO"):
            discovery.peek_size(discovery.CaseInput("pipe", fifo))
    assert not state["fired"]
    with pytest.raises(filesys.ImageReadError, match=r"/dev/zero: a character device"):
        io.read_image("/dev/zero")


def test_discovery_skips_special_files_with_a_note(tmp_path: Path) -> None:
    write_case(chest_image(), tmp_path / "good.nii.gz")
    os.mkfifo(tmp_path / "pipe.nii.gz")
    os.mkfifo(tmp_path / "noext")  # no suffix: discovery would open it to look for a DICOM preamble
    with unblocker(tmp_path / "noext") as s1, unblocker(tmp_path / "pipe.nii.gz") as s2:
        cases = discovery.discover_cases(tmp_path)
    assert not s1["fired"] and not s2["fired"]
    assert [c.case_id for c in cases] == ["good"]
    notes = " ".join(cases[0].notes)
    assert "pipe.nii.gz: a FIFO (named pipe), not a regular file" in notes, notes
    assert "noext: a FIFO" in notes, notes


def test_fifo_beside_good_scan_run_finishes(tmp_path: Path, weights: str) -> None:
    """The issue's case: ``pipe.nii.gz`` in the input folder hung the run forever with no message."""
    inp = tmp_path / "in"
    write_case(chest_image(), inp / "good.nii.gz")
    fifo = inp / "pipe.nii.gz"
    os.mkfifo(fifo)
    out = tmp_path / "out"
    with unblocker(fifo) as state:
        res = run_screen(inp, out, weights=weights)
        # given directly, next to the good scan: the FIFO is a failed case with its reason
        res_direct = run_screen([inp / "good.nii.gz", fifo], tmp_path / "out2", weights=weights)
    assert not state["fired"], "something opened the FIFO"
    assert (res.succeeded, res.failed, res.exit_code) == (1, 0, 0)
    summary = read_summary(out)
    assert list(summary) == ["good"]
    assert "pipe.nii.gz: a FIFO (named pipe), not a regular file" in summary["good"]["warnings"]
    assert (res_direct.succeeded, res_direct.failed) == (1, 1)
    reason = read_failures(tmp_path / "out2")["pipe"]["reason"]
    assert reason.endswith("pipe.nii.gz: a FIFO (named pipe), not a regular file: refused without opening it")
    assert not list(out.rglob(".tmp-*")) and not list((tmp_path / "out2").rglob(".tmp-*"))
