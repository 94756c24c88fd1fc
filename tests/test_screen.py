"""Batch screening (issue 6): resume without recomputation, overwrite, a kill -9 mid-run, no temp files, nothing
written inside the input, torchrun sharding with a merged summary."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from helpers import (
    FAST,
    ROOT,
    chest_image,
    read_failures,
    read_result,
    read_summary,
    run_screen,
    tree,
    write_case,
)


def _cases(folder: Path, n: int, *, shape: tuple[int, int, int] = (24, 48, 56)) -> list[str]:
    ids = []
    for i in range(n):
        write_case(chest_image(shape_zyx=shape, noise_hu=10.0, seed=i), folder / f"case{i}.nii.gz")
        ids.append(f"case{i}")
    return ids


def _temp_files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.name.startswith(".tmp-"))


def _cli(inp: Path, out: Path, weights: str, *extra: str) -> list[str]:
    return [
        "--device", "cpu", "--roi-size", "32", "32", "32", "--no-report", "--quiet", "--weights", weights,
        "--set", f"target_spacing_mm={FAST['target_spacing_mm']}", f"lung_margin_mm={FAST['lung_margin_mm']}",
        *extra,
    ]  # fmt: skip


def test_rerun_skips_completed_cases_and_overwrite_recomputes(tmp_path: Path, weights: str) -> None:
    inp, out = tmp_path / "in", tmp_path / "out"
    ids = _cases(inp, 3)
    before_input = tree(inp)
    first = run_screen(inp, out, weights=weights)
    assert (first.succeeded, first.skipped, first.exit_code) == (3, 0, 0)
    cases_before = tree(out / "cases")
    # lungs, nodules, nodules.csv/json/mrk.json, candidates.csv, result.json
    assert len(cases_before) == 3 * 7

    second = run_screen(inp, out, weights=weights)
    assert (second.succeeded, second.skipped, second.failed, second.exit_code) == (0, 3, 0, 0)
    assert tree(out / "cases") == cases_before  # nothing recomputed or rewritten
    assert set(read_summary(out)) == set(ids)

    third = run_screen(inp, out, weights=weights, overwrite=True)
    assert (third.succeeded, third.skipped) == (3, 0)
    after = tree(out / "cases")
    assert set(after) == set(cases_before)
    assert all(after[k] > cases_before[k] for k in after)  # every output rewritten
    assert tree(inp) == before_input  # the input folder was never written to
    assert _temp_files(out) == [] and _temp_files(inp) == []


def test_rerun_screens_again_cases_done_with_other_settings_or_weights(tmp_path: Path, weights: str) -> None:
    inp, out = tmp_path / "in", tmp_path / "out"
    _cases(inp, 2)
    assert run_screen(inp, out, weights=weights).succeeded == 2
    # other settings: the earlier results are not this run's, so both cases are screened again
    other = run_screen(inp, out, weights=weights, prob_threshold=0.9)
    assert (other.succeeded, other.skipped) == (2, 0)
    assert run_screen(inp, out, weights=weights, prob_threshold=0.9).skipped == 2  # now they are
    # other weights (same architecture, other bytes)
    changed = tmp_path / "other.pt"
    state = torch.load(weights, weights_only=True)
    torch.save({k: v + 0.01 if v.is_floating_point() else v for k, v in state.items()}, changed)
    again = run_screen(inp, out, weights=str(changed), prob_threshold=0.9)
    assert (again.succeeded, again.skipped) == (2, 0)
    # a result written before fingerprints existed is not trusted either
    record = out / "cases" / "case0" / "result.json"
    old = json.loads(record.read_text())
    old.pop("fingerprint")
    record.write_text(json.dumps(old))
    last = run_screen(inp, out, weights=str(changed), prob_threshold=0.9)
    assert (last.succeeded, last.skipped) == (1, 1)


def test_failed_case_is_retried_and_cleared_once_fixed(tmp_path: Path, weights: str) -> None:
    inp, out = tmp_path / "in", tmp_path / "out"
    _cases(inp, 1)
    (inp / "late.nii.gz").write_bytes(b"")  # still being copied
    res = run_screen(inp, out, weights=weights)
    assert (res.succeeded, res.failed, res.exit_code) == (1, 1, 1)
    assert list(read_failures(out)) == ["late"]

    write_case(chest_image(), inp / "late.nii.gz")
    res = run_screen(inp, out, weights=weights)
    assert (res.succeeded, res.skipped, res.failed, res.exit_code) == (1, 1, 0, 0)
    assert read_failures(out) == {}
    assert {k: v["status"] for k, v in read_summary(out).items()} == {"case0": "ok", "late": "ok"}


def test_output_inside_input_is_refused(tmp_path: Path, weights: str) -> None:
    inp = tmp_path / "in"
    _cases(inp, 1)
    before = tree(inp)
    with pytest.raises(ValueError, match="inside the input folder"):
        run_screen(inp, inp / "results", weights=weights)
    with pytest.raises(ValueError, match="inside the input folder"):
        run_screen(inp, inp, weights=weights)
    assert tree(inp) == before
    assert sorted(p.name for p in inp.iterdir()) == ["case0.nii.gz"]


def test_dicom_output_inside_series_folder_is_refused(tmp_path: Path, weights: str) -> None:
    from helpers import write_dicom_series

    series = tmp_path / "exam"
    write_dicom_series(chest_image(), series)
    with pytest.raises(ValueError, match="inside the input folder"):
        run_screen(series / "slice_000.dcm", series / "out", weights=weights)


@pytest.mark.slow
def test_cli_exit_codes(tmp_path: Path, weights: str) -> None:
    inp = tmp_path / "in"
    _cases(inp, 1)
    (inp / "bad.nii.gz").write_text("not an image")
    cmd = [
        sys.executable,
        "-m",
        "pipelines.cli",
        "screen",
        str(inp),
        str(tmp_path / "out"),
        *_cli(inp, tmp_path, weights),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "1 succeeded, 1 failed" in proc.stdout
    bad_only = tmp_path / "bad_only"
    bad_only.mkdir()
    (bad_only / "bad.nii.gz").write_text("not an image")
    cmd[3:5] = [str(bad_only), str(tmp_path / "out2")]
    assert subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=120).returncode == 2


@pytest.mark.slow
def test_kill_9_mid_run_then_rerun_completes(tmp_path: Path, weights: str) -> None:
    inp, out = tmp_path / "in", tmp_path / "out"
    ids = _cases(inp, 8, shape=(40, 96, 112))
    cmd = [sys.executable, "-m", "pipelines.cli", "screen", str(inp), str(out), *_cli(inp, out, weights)]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 120
        while not list(out.glob("cases/*/result.json")):
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "no case finished within 120 s"
            time.sleep(0.01)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    done = [p.parent.name for p in out.glob("cases/*/result.json")]
    assert 1 <= len(done) < len(ids), "kill came too late to test an interrupted run"
    for case_id in done:  # whatever claims to be done is complete and readable
        record = read_result(out, case_id)
        assert record["summary"]["status"] == "ok"
        folder = out / "cases" / case_id
        for name in ("lungs.nii.gz", "nodules.nii.gz", "nodules.csv", "nodules.json", "candidates.csv"):
            assert (folder / name).is_file(), name
        assert sitk.ReadImage(str(folder / "lungs.nii.gz")).GetSize() == (112, 96, 40)
        json.loads((folder / "nodules.json").read_text())

    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    summary = read_summary(out)
    assert set(summary) == set(ids) and all(r["status"] == "ok" for r in summary.values())
    assert f"{len(ids) - len(done)} succeeded, 0 failed, {len(done)} skipped" in res.stdout
    assert _temp_files(out) == [], "stale temp files of the killed run are left behind"


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("torchrun") is None and not (Path(sys.executable).parent / "torchrun").exists(),
                    reason="torchrun not installed")  # fmt: skip
def test_torchrun_two_ranks_share_the_cases_and_rank0_merges(tmp_path: Path, weights: str) -> None:
    inp, out = tmp_path / "in", tmp_path / "out"
    ids = _cases(inp, 4)
    torchrun = Path(sys.executable).parent / "torchrun"
    with socket.socket() as sock:  # torchrun's --master_port 0 hangs at rendezvous: pick a free port
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [str(torchrun if torchrun.exists() else "torchrun"), "--nproc_per_node", "2", "--master_port", str(port),
           "-m", "pipelines.cli", "screen", str(inp), str(out), *_cli(inp, out, weights)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    summary = read_summary(out)
    assert sorted(summary) == ids and all(r["status"] == "ok" for r in summary.values())
    ranks = {case_id: read_result(out, case_id)["info"]["rank"] for case_id in ids}
    assert ranks == {"case0": 0, "case1": 1, "case2": 0, "case3": 1}  # each case done once, by its rank
    assert all(read_result(out, c)["info"]["world_size"] == 2 for c in ids)
    run = json.loads((out / "run.json").read_text())
    assert (run["succeeded"], run["failed"]) == (4, 0)
    assert _temp_files(out) == []


def test_stale_temporaries_of_a_killed_run_are_removed(tmp_path: Path, weights: str) -> None:
    """A kill -9 during a write leaves ``.tmp-*`` files; the rerun of that case and the run tables clear them,
    and a half-written case (masks but no result.json) is recomputed, not taken for done."""
    inp, out = tmp_path / "in", tmp_path / "out"
    _cases(inp, 1)
    folder = out / "cases" / "case0"
    folder.mkdir(parents=True)
    (folder / "lungs.nii.gz").write_bytes(b"half")  # masks written, result.json not yet
    (folder / ".tmp-nodules.nii.gz-x1y2.nii.gz").write_bytes(b"partial")
    (folder / ".tmp-case-abc").mkdir()
    (folder / ".tmp-case-abc" / "case.raw").write_bytes(b"partial")
    (out / ".tmp-summary.csv-q9.csv").write_text("case_id\n")
    res = run_screen(inp, out, weights=weights)
    assert (res.succeeded, res.skipped) == (1, 0)
    assert _temp_files(out) == []
    assert sitk.ReadImage(str(folder / "lungs.nii.gz")).GetSize() == (56, 48, 24)


def test_each_rank_takes_its_own_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from pipelines.screening.stages import rank_device

    monkeypatch.setenv("LOCAL_RANK", "3")
    assert rank_device(torch.device("cuda")) == torch.device("cuda", 3)
    assert rank_device(torch.device("cuda", 1)) == torch.device("cuda", 1)  # an explicit index is kept
    assert rank_device(torch.device("cpu")) == torch.device("cpu")
    monkeypatch.delenv("LOCAL_RANK")
    assert rank_device(torch.device("cuda")) == torch.device("cuda")


def test_outputs_carry_no_patient_identifiers(tmp_path: Path, weights: str) -> None:
    from helpers import write_dicom_series

    identity = {
        "0010|0010": "DOE^JANE",  # PatientName
        "0010|0020": "PID8675309",  # PatientID
        "0010|0030": "19610203",  # PatientBirthDate
        "0008|0080": "ST ELSEWHERE HOSPITAL",  # InstitutionName
        "0008|0050": "ACC5551234",  # AccessionNumber
    }
    inp, out = tmp_path / "in", tmp_path / "out"
    write_dicom_series(chest_image(), inp / "exam", series_uid="1.2.840.99999.4242", extra_tags=identity)
    res = run_screen(inp, out, weights=weights, report=True)
    assert res.exit_code == 0 and (out / "cases" / "exam" / "report.html").is_file()
    blobs = [p.read_bytes() for p in out.rglob("*") if p.is_file()]
    blobs += [gzip.decompress(p.read_bytes()) for p in out.rglob("*.nii.gz")]  # NIfTI headers too
    for secret in [*identity.values(), "1.2.840.99999.4242"]:
        assert not any(secret.encode() in b for b in blobs), secret


def test_realistic_phantom_lungs_overlay_the_reference(tmp_path: Path, weights: str) -> None:
    phantom = pytest.importorskip("pipelines.phantom.generate")
    case = phantom.generate_case(seed=3, size="small", with_tissue=False)
    inp, out = tmp_path / "in", tmp_path / "out"
    write_case(case.image, inp / "phantom.nii.gz")
    res = run_screen(inp, out, weights=weights)
    assert res.exit_code == 0
    lungs = sitk.ReadImage(str(out / "cases" / "phantom" / "lungs.nii.gz"))
    assert lungs.GetSize() == case.image.GetSize()
    assert lungs.GetDirection() == pytest.approx(case.image.GetDirection())
    assert lungs.GetOrigin() == pytest.approx(case.image.GetOrigin(), abs=1e-3)
    ours, ref = sitk.GetArrayFromImage(lungs), sitk.GetArrayFromImage(case.lungs)
    for label in (1, 2):  # right, left: a flip would swap them and sink the Dice
        a, b = ours == label, ref == label
        dice = 2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))
        assert dice > 0.85, (label, dice)


def test_screen_leaves_autograd_enabled(tmp_path: Path, weights: str) -> None:
    """screen() in-process must not switch off gradients for the rest of the process (training after it)."""
    import torch

    _cases(tmp_path / "in", 1)
    with torch.enable_grad():  # whatever earlier tests in this process left behind
        run_screen(tmp_path / "in", tmp_path / "out", weights=weights)
        assert torch.is_grad_enabled()


def test_tables_keep_probabilities_distinguishable() -> None:
    """FROC ranks candidates by probability: near-1 scores must not collapse to one value in the CSV files."""
    from pipelines.batch.records import to_csv
    from pipelines.screening.outputs import SUBMISSION_COLUMNS

    rows = [
        {"seriesuid": "a", "coordX": -209.0951234, "coordY": 1.5, "coordZ": 2.0, "probability": p}
        for p in (0.99999994, 0.9999871, 0.99995)
    ]
    lines = to_csv(rows, SUBMISSION_COLUMNS).splitlines()[1:]
    probs = [float(line.split(",")[-1]) for line in lines]
    assert probs == sorted(probs, reverse=True) and len(set(probs)) == 3
    assert lines[0].split(",")[1] == "-209.095"  # coordinates keep their 6 significant digits
