"""Case identity (issues 19, 23): readable case ids from the path under the input folder, never shared, never a
path; outputs bound to their input by a fingerprint, so a rerun never keeps another scan's results; rows of
cases no longer in the run dropped."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import SimpleITK as sitk
from helpers import (
    chest_image,
    read_result,
    read_summary,
    run_screen,
    write_case,
    write_dicom_series,
)

from pipelines.batch.runstate import input_fingerprint
from pipelines.imaging import discovery, io

SHAPES = {
    "A": (24, 48, 56),
    "B": (24, 52, 60),
    "C": (28, 48, 56),
}  # [z, y, x]: tells each scan's outputs apart


def _scan(path: Path, shape: str) -> Path:
    return write_case(chest_image(shape_zyx=SHAPES[shape]), path)


def _size_xyz(shape: str) -> tuple[int, int, int]:
    z, y, x = SHAPES[shape]
    return (x, y, z)


def _lungs_size(out: Path, case_id: str) -> tuple[int, ...]:
    return tuple(sitk.ReadImage(str(out / "cases" / case_id / "lungs.nii.gz")).GetSize())


# --------------------------------------------------------------------------------------------- ids
def test_ids_come_from_the_path_under_the_input_folder_and_do_not_depend_on_other_scans(
    tmp_path: Path,
) -> None:
    for name in ("patA/ct.nii.gz", "patB/ct.nii.gz", "patB/followup/ct.mhd", "top.nii.gz"):
        _scan(tmp_path / name, "A")
    write_dicom_series(chest_image(), tmp_path / "patC" / "series1")
    ids = [c.case_id for c in discovery.discover_cases(tmp_path)]
    assert ids == ["patA_ct", "patB_ct", "patB_followup_ct", "patC_series1", "top"]
    (tmp_path / "patA" / "ct.nii.gz").unlink()
    assert [c.case_id for c in discovery.discover_cases(tmp_path)] == [
        "patB_ct",
        "patB_followup_ct",
        "patC_series1",
        "top",
    ]
    # a file or DICOM folder given directly is its own name
    assert [c.case_id for c in discovery.discover_cases(tmp_path / "patB" / "ct.nii.gz")] == ["ct"]
    assert [c.case_id for c in discovery.discover_cases(tmp_path / "patC" / "series1")] == ["series1"]


def test_two_scans_never_share_an_id(tmp_path: Path) -> None:
    for name in ("s1/a.nii.gz", "s2/a.nii.gz", "a_2.nii.gz", "x.nii.gz", "x.mhd", "s1_a.nrrd"):
        _scan(tmp_path / name, "A")
    cases = discovery.discover_cases(tmp_path)
    ids = [c.case_id for c in cases]
    assert len(set(ids)) == len(ids) == 6
    by_path = {c.path.relative_to(tmp_path).as_posix(): c.case_id for c in cases}
    assert by_path["s2/a.nii.gz"] == "s2_a" and by_path["a_2.nii.gz"] == "a_2"
    # names that meet get the hash of their own path: the same id whatever else is in the run
    for clash in ("x.nii.gz", "x.mhd", "s1/a.nii.gz", "s1_a.nrrd"):
        assert by_path[clash].startswith(("x_", "s1_a_")) and len(by_path[clash].rsplit("_", 1)[1]) == 8
    again = {c.path.relative_to(tmp_path).as_posix(): c.case_id for c in discovery.discover_cases(tmp_path)}
    assert again == by_path
    # the same scan given twice (and inside a folder given) is one case
    twice = discovery.discover_cases([tmp_path / "a_2.nii.gz", tmp_path / "a_2.nii.gz"])
    assert [c.case_id for c in twice] == ["a_2"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("..", "__"),
        (".", "_"),
        ("", "_"),
        (".hidden", "_hidden"),
        ("a/b", "a_b"),
        ("a\\b", "a_b"),
        ("line\nbreak\r", "line_break_"),
        ("=HYPERLINK(1)", "=HYPERLINK(1)"),  # kept: the tables neutralise it, links encode it
        ("a#1 %20", "a#1 %20"),
    ],
)
def test_safe_case_id(text: str, expected: str) -> None:
    assert discovery.safe_case_id(text) == expected


def test_long_ids_are_cut_with_a_hash() -> None:
    a, b = discovery.safe_case_id("é" * 300), discovery.safe_case_id("é" * 299 + "e")
    assert (
        a != b
        and len(a.encode()) <= discovery.MAX_CASE_ID_BYTES
        and len(b.encode()) <= discovery.MAX_CASE_ID_BYTES
    )


def test_hostile_file_names_give_ids_inside_out(tmp_path: Path) -> None:
    for name in ("...nii.gz", "..nii.gz", "a\\b.nii.gz"):
        (tmp_path / name).write_bytes(b"x")
    assert [c.case_id for c in discovery.discover_cases(tmp_path)] == [
        "a_b"
    ]  # names starting with a dot are hidden
    given = discovery.discover_cases([tmp_path / "...nii.gz", tmp_path / "..nii.gz"])  # e.g. by a shell glob
    assert sorted(c.case_id for c in given) == ["_", "__"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_fifo_is_skipped_with_a_note_and_never_opened(tmp_path: Path) -> None:
    _scan(tmp_path / "good.nii.gz", "A")
    os.mkfifo(tmp_path / "pipe.nii.gz")
    os.mkfifo(tmp_path / "pipe_without_suffix")
    cases = discovery.discover_cases(tmp_path)  # opening a FIFO would block this test forever
    assert [c.case_id for c in cases] == ["good"]
    assert any("pipe.nii.gz" in n and "FIFO" in n for n in cases[0].notes), cases[0].notes
    # named directly, it is a case of its own that fails with its reason (tests/test_special_files.py)
    assert [c.case_id for c in discovery.discover_cases(tmp_path / "pipe.nii.gz")] == ["pipe"]


# --------------------------------------------------------------------------------------------- fingerprint
def test_input_fingerprint_follows_path_size_time_and_content(tmp_path: Path) -> None:
    path = tmp_path / "a.nii"
    write_case(chest_image(), path)
    case = discovery.CaseInput("a", path)
    first = input_fingerprint(case)
    assert input_fingerprint(case) == first
    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[400] ^= 0xFF  # same size, same modification time, other voxels
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert input_fingerprint(case) != first
    moved = tmp_path / "b.nii"
    path.rename(moved)
    assert input_fingerprint(discovery.CaseInput("a", moved)) != input_fingerprint(case)


def test_input_fingerprint_covers_metaimage_data_and_every_dicom_slice(tmp_path: Path) -> None:
    io.write_image(chest_image(), tmp_path / "m.mhd", compress=False)
    mhd = discovery.CaseInput("m", tmp_path / "m.mhd")
    before = input_fingerprint(mhd)
    raw = tmp_path / "m.raw"
    stat = raw.stat()
    data = bytearray(raw.read_bytes())
    data[10] ^= 0xFF
    raw.write_bytes(bytes(data))
    os.utime(raw, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert input_fingerprint(mhd) != before
    files = [str(f) for f in write_dicom_series(chest_image(), tmp_path / "d")]
    series = discovery.CaseInput("d", tmp_path / "d", dicom_files=files)
    before = input_fingerprint(series)
    os.utime(files[-1], ns=(1, 1))
    assert input_fingerprint(series) != before
    memory = discovery.CaseInput("image_0000", Path("<memory>"), image=chest_image())
    other = discovery.CaseInput("image_0000", Path("<memory>"), image=chest_image(noise_hu=5.0))
    assert input_fingerprint(memory) != input_fingerprint(other)


# --------------------------------------------------------------------------------------------- end to end
def test_colliding_names_each_keep_their_own_scan(tmp_path: Path, weights: str) -> None:
    """``s1/a``, ``s2/a`` and a real ``a_2`` (and ``...nii.gz``) in one run: four cases, each from its own scan."""
    inp, out = tmp_path / "in", tmp_path / "out"
    scans = {"s1/a.nii.gz": "A", "s2/a.nii.gz": "B", "a_2.nii.gz": "C", "...nii.gz": "A"}
    for name, shape in scans.items():
        _scan(inp / name, shape)
    res = run_screen([inp, inp / "...nii.gz"], out, weights=weights)  # a hidden file is screened when named
    assert (res.succeeded, res.failed, res.total) == (4, 0, 4)
    summary = read_summary(out)
    assert set(summary) == {"s1_a", "s2_a", "a_2", "__"}
    for case_id, name in (
        ("s1_a", "s1/a.nii.gz"),
        ("s2_a", "s2/a.nii.gz"),
        ("a_2", "a_2.nii.gz"),
        ("__", "...nii.gz"),
    ):
        assert summary[case_id]["input"] == str(inp / name)
        assert _lungs_size(out, case_id) == _size_xyz(scans[name]), case_id
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == [
        "failures.csv", "run.json", "submission.csv", "summary.csv"
    ]  # fmt: skip


def test_renamed_input_rerun_never_keeps_another_scans_results(tmp_path: Path, weights: str) -> None:
    """patA/ct + patB/ct; remove patA and rerun: patB's results are its own and patA's row is gone; then
    patB's file is replaced by another scan: the rerun screens it again."""
    inp, out = tmp_path / "in", tmp_path / "out"
    _scan(inp / "patA" / "ct.nii.gz", "A")
    _scan(inp / "patB" / "ct.nii.gz", "B")
    assert run_screen(inp, out, weights=weights).succeeded == 2
    assert _lungs_size(out, "patA_ct") == _size_xyz("A") and _lungs_size(out, "patB_ct") == _size_xyz("B")

    (inp / "patA" / "ct.nii.gz").unlink()
    res = run_screen(inp, out, weights=weights)
    assert (res.succeeded, res.skipped, res.total) == (0, 1, 1)
    assert list(read_summary(out)) == ["patB_ct"]  # the removed scan's row is dropped
    assert _lungs_size(out, "patB_ct") == _size_xyz("B")

    (inp / "patB" / "ct.nii.gz").unlink()
    _scan(inp / "patB" / "ct.nii.gz", "C")  # another scan under the same name
    res = run_screen(inp, out, weights=weights)
    assert (res.succeeded, res.skipped) == (1, 0)
    assert _lungs_size(out, "patB_ct") == _size_xyz("C")
    assert read_result(out, "patB_ct")["info"]["input"] == str(inp / "patB" / "ct.nii.gz")


def test_done_state_tells_why_a_case_is_done_again(tmp_path: Path) -> None:
    import json

    from pipelines.batch import records

    fp = records.case_fingerprint("run1", ["in1"])
    assert records.done_state(tmp_path, "c", fp) == "absent"
    record = tmp_path / "cases" / "c" / "result.json"
    record.parent.mkdir(parents=True)
    for recorded, state in [
        (fp, "done"),
        (records.case_fingerprint("run1", ["in2"]), "other_input"),
        (records.case_fingerprint("run2", ["in1"]), "other_setup"),
        ("run1", "other_setup"),  # written by a version that did not fingerprint inputs
        (None, "other_setup"),
    ]:
        record.write_text(json.dumps({"fingerprint": recorded}))
        assert records.done_state(tmp_path, "c", fp) == state, recorded
    record.write_text("")
    assert records.done_state(tmp_path, "c", fp) == "unreadable"
