"""Command-line edges (issues 19, 21, 23): every parsed option reaches the API, help on every option,
``--version``, a forgotten OUT, devices that are not there, errors of our components as one line, MONAI's
logging notice silenced."""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import ROOT, chest_image, silent_weights, write_case, write_dicom_series

from pipelines import __version__
from pipelines.batch.runner import RunResult
from pipelines.cli.main import build_parser, main
from pipelines.screening.api import ScreenResult


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


# ------------------------------------------------------------------------------------------------ options
#: command -> (module, API function it calls, the required arguments, what the fake API returns)
API: dict[str, tuple[str, str, list[str], Any]] = {
    "screen": ("pipelines.screening.api", "screen", ["in.nii.gz", "out"], ScreenResult(Path("out"), 1, 0, 0, 1)),
    "train-seg": (
        "pipelines.segmentation.train",
        "train_segmentation",
        ["--images", "i", "--labels", "l", "--modality", "ct", "--out", "m"],
        Path("m"),
    ),
    "train": ("pipelines.training.train", "train", ["--dataset", "ds"], {}),
    "segment": ("pipelines.segmentation.engine", "segment", ["m", "in", "out"], RunResult(Path("out"), 1, 0, 0, 1)),
    "evaluate": (
        "pipelines.evaluation.evaluate",
        "evaluate",
        ["--annotations", "a.csv", "--predictions", "p.csv", "--out", "o"],
        {"detection": {"cpm": 0.5}},
    ),
    "bench": ("pipelines.bench.run", "run_bench", [], {"markdown": ""}),
    "sample-data": ("pipelines.phantom.write", "make_dataset", ["ds"], Path("ds")),
    "insert-nodules": ("pipelines.phantom.insert", "insert_nodules", ["ct.nii.gz", "o"], Path("o")),
    "calibrate-density": ("pipelines.realnodules.calibration", "calibrate", ["src"], "table"),
    "prepare-luna16": ("pipelines.evaluation.luna16", "prepare_luna16", ["--root", "r", "--annotations", "a", "--out", "o"], Path("o")),
    "followup-pairs": ("pipelines.followup.pairs", "make_followup_pairs", ["o"], Path("o")),
}  # fmt: skip
#: commands whose options are checked elsewhere: held-out-set has none; nodule-bank's --split-file is checked by
#: tests/test_nodule_bank.py::test_cli_builds_a_bank_and_names_refusals (it calls three functions)
CHECKED_ELSEWHERE = {"held-out-set", "nodule-bank"}
#: options that send the command to another API function (tested on their own below)
ROUTED = {
    "insert-nodules": ("bank", "split", "labels", "exclude_patients"),
    "screen": ("prior", "pairs", "interval_days"),
}
#: values for options whose type alone does not say what to give
SPECIAL = {
    "--set": {
        "screen": ["lung_margin_mm=15"],
        "train": ["train#lr=0.1"],
        "train-seg": ["optimizer#lr=0.1"],
        "segment": ["inferer#overlap=0.5"],
    },
    "--device": "cpu",
    "--roi-size": ["16", "24", "32"],
}


def _value(action: argparse.Action, command: str, tmp_path: Path) -> list[str]:
    """Command-line words that give ``action`` a value other than its default."""
    flag = action.option_strings[-1]
    if isinstance(action, argparse._StoreTrueAction):
        return [flag]
    if flag == "--scan":
        scan = tmp_path / "scan.nii.gz"
        scan.write_bytes(b"")
        return [flag, f"tiny={scan}"]
    if flag in ("--bank", "--real-share"):  # a bank file must exist; a share needs its bank
        bank = tmp_path / "bank.npz"
        bank.write_bytes(b"")
        return [flag, str(bank)] if flag == "--bank" else [flag, "0.3", "--bank", str(bank)]
    if flag in SPECIAL:
        special = SPECIAL[flag]
        words = special[command] if isinstance(special, dict) else special
        return [flag, *([words] if isinstance(words, str) else words)]
    if action.choices and isinstance(action.default, list):  # nargs="+": one choice differs from the list
        return [flag, str(next(iter(action.choices)))]
    if action.choices:
        return [flag, next(str(c) for c in action.choices if c != action.default)]
    if action.type in (int, float):
        return [flag, "7"]
    return [flag, "x.pt"]


@pytest.mark.parametrize("command", sorted(API))
def test_every_parsed_option_reaches_the_api_call(
    command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run each option alone against a recording fake of the API: the call must differ from the baseline."""
    import importlib

    module, function, required, returned = API[command]
    calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def fake(*args: Any, **kwargs: Any) -> Any:
        calls.append((args, kwargs))
        return returned

    monkeypatch.setattr(importlib.import_module(module), function, fake)
    monkeypatch.chdir(tmp_path)
    assert main([command, *required]) == 0
    baseline = calls.pop()
    options = [a for a in _subparsers()[command]._actions if a.option_strings and a.dest != "help"]
    required_flags = set(required)
    for action in options:
        if required_flags & set(action.option_strings) or action.dest in ROUTED.get(command, ()):
            continue
        words = _value(action, command, tmp_path)
        assert main([command, *required, *words]) == 0, words
        assert calls.pop() != baseline, f"{command} {' '.join(words)} never reaches {module}.{function}()"


def test_every_command_is_in_the_option_check() -> None:
    assert set(_subparsers()) == set(API) | CHECKED_ELSEWHERE


def test_insert_nodules_bank_options_reach_the_real_nodule_insertion(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[dict[str, Any]] = []

    def fake(*args: Any, **kwargs: Any) -> Path:
        calls.append({"args": args, **kwargs})
        return Path("o")

    monkeypatch.setattr("pipelines.realnodules.insert.insert_real_nodules", fake)
    monkeypatch.chdir(tmp_path)
    required = ["ct.nii.gz", "o", "--bank", "b.npz"]
    assert main(["insert-nodules", *required]) == 0
    assert calls[-1]["args"][2] == Path("b.npz") and calls[-1]["split"] == "validation"
    assert main(["insert-nodules", *required, "--split", "train", "--labels", "l.nii.gz"]) == 0
    assert (calls[-1]["split"], calls[-1]["labels_path"]) == ("train", Path("l.nii.gz"))
    assert main(["insert-nodules", "ct.nii.gz", "o", "--labels", "l.nii.gz"]) == 2  # labels need a bank
    assert calls[-1]["exclude_patients"] == set()
    (tmp_path / "a.csv").write_text("seriesuid,patient_id\ns1,LIDC-IDRI-0001\ns1,LIDC-IDRI-0002\n")
    (tmp_path / "b.csv").write_text("patient_id,file\nLIDC-IDRI-0002,x.nii.gz\nLIDC-IDRI-0007,y.nii.gz\n")
    assert main(["insert-nodules", *required, "--exclude-patients", "a.csv", "b.csv"]) == 0
    assert calls[-1]["exclude_patients"] == {"LIDC-IDRI-0001", "LIDC-IDRI-0002", "LIDC-IDRI-0007"}
    (tmp_path / "c.csv").write_text("file\nx.nii.gz\n")
    assert main(["insert-nodules", *required, "--exclude-patients", "c.csv"]) == 2  # names the table
    assert main(["insert-nodules", *required, "--exclude-patients", "missing.csv"]) == 2
    assert main(["insert-nodules", "ct.nii.gz", "o", "--exclude-patients", "a.csv"]) == 2  # needs a bank


def test_screen_follow_up_options_reach_the_follow_up_screening(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--prior``/``--interval-days``/``--pairs`` send ``screen`` to :func:`pipelines.followup.run.screen_followup`
    with every other screening option; without them ``screen()`` is called as before."""
    calls: list[dict[str, Any]] = []

    def fake(*args: Any, **kwargs: Any) -> ScreenResult:
        calls.append({"args": args, **kwargs})
        return ScreenResult(Path("out"), 1, 0, 0, 1)

    monkeypatch.setattr("pipelines.followup.run.screen_followup", fake)
    monkeypatch.chdir(tmp_path)
    common = ["--device", "cpu", "--overlap", "0.5", "--weights", "w.pt", "--quiet"]
    assert main(["screen", "cur.nii.gz", "out", "--prior", "old.nii.gz", *common]) == 0
    assert calls[-1]["args"] == ([(Path("cur.nii.gz"), Path("old.nii.gz"), None)], Path("out"))
    assert (calls[-1]["device"], calls[-1]["overlap"], calls[-1]["weights"]) == ("cpu", 0.5, [Path("w.pt")])
    assert calls[-1]["progress"] is False
    assert main(["screen", "cur.nii.gz", "out", "--prior", "cases/old", "--interval-days", "90"]) == 0
    assert calls[-1]["args"][0] == [(Path("cur.nii.gz"), Path("cases/old"), 90.0)]
    assert main(["screen", "--pairs", "pairs.csv", "out", "--no-report"]) == 0
    assert calls[-1]["args"] == (Path("pairs.csv"), Path("out")) and calls[-1]["report"] is False
    assert len(calls) == 3


def test_every_command_has_a_handler() -> None:
    from pipelines.cli.main import COMMANDS

    assert set(COMMANDS) == set(_subparsers())


def test_every_option_of_every_command_has_help() -> None:
    parsers = {"lungscreen": build_parser(), **_subparsers()}
    for name, parser in parsers.items():
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            assert action.help and action.help != argparse.SUPPRESS, f"{name} {action.dest} has no help"


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.startswith(f"lungscreen {__version__} (bundle ")


# ------------------------------------------------------------------------------------------------ OUT
def _no_screen(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("screen() was called: the usage error must come before any work")

    monkeypatch.setattr("pipelines.screening.api.screen", fail)


def test_forgotten_out_is_a_usage_error_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _no_screen(monkeypatch)
    a, b = write_case(chest_image(), tmp_path / "a.nii.gz"), write_case(chest_image(), tmp_path / "b.nii.gz")
    series = tmp_path / "series"
    write_dicom_series(chest_image(), series)
    for argv, message in (
        ([str(a)], "screen needs at least one input and an output folder"),
        ([str(a), str(b)], f"OUT {b} is an existing file, not a folder"),
        ([str(a), str(series)], f"OUT {series} holds DICOM files, so it looks like an input"),
    ):
        assert main(["screen", *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0] and "lungscreen screen IN [IN ...] OUT" in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.nii.gz", "b.nii.gz", "series"]


# ------------------------------------------------------------------------------------------------ devices
@pytest.mark.parametrize("device", ["cuda", "cuda:1", "cuda:7"])
def test_missing_gpu_is_our_own_one_line_message(
    device: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: device != "cuda")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    scan = write_case(chest_image(), tmp_path / "a.nii.gz")
    assert main(["screen", str(scan), str(tmp_path / "out"), "--device", device]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    expected = (
        "no CUDA GPU is available" if device == "cuda" else "this machine has 1 CUDA GPU(s): cuda:0 to cuda:0"
    )
    assert len(err) == 1 and f"device {device} was requested but {expected}" in err[0], err
    assert "Failed to instantiate" not in err[0] and not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------ weights
@pytest.fixture(scope="module")
def bad_weights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import pickle

    root = tmp_path_factory.mktemp("weights")
    good = silent_weights(root / "good.pt")
    truncated = root / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    other = root / "other.pt"
    torch.save(torch.nn.Conv3d(1, 1, 3).state_dict(), other)
    (root / "folder.pt").mkdir()
    evil = root / "evil.pt"
    torch.save({"model": _Evil()}, evil)
    plain_pickle = root / "plain.pkl"
    plain_pickle.write_bytes(pickle.dumps(_Evil()))
    return {
        "good": good,
        "truncated": truncated,
        "other": other,
        "folder": root / "folder.pt",
        "evil": evil,
        "pickle": plain_pickle,
    }


class _Evil:
    """Unpickling this would create a marker file; a weights-only load must refuse it."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (Path("PWNED_PICKLE"),))


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("truncated", "not a readable checkpoint, truncated or corrupt (PytorchStreamReader"),
        ("other", "weights do not fit the UNet architecture (49 missing, e.g. model.0.conv"),
        ("folder", "is a folder, not a checkpoint file"),
        ("evil", "refused: a pickle of Python objects, not plain weights; nothing was executed"),
        ("pickle", "not a weights file, torch cannot read it as a state dict"),
    ],
)
def test_bad_weights_name_the_file_and_the_reason(
    bad_weights: dict[str, Path], kind: str, reason: str
) -> None:
    from helpers import network_def

    from pipelines.screening.inference import CheckpointError, load_weights

    with pytest.raises(CheckpointError) as info:
        load_weights(network_def(), bad_weights[kind])
    text = str(info.value)
    assert text.startswith(f"{bad_weights[kind]}: ") and reason in text and "\n" not in text, text


@pytest.mark.parametrize("kind", ["truncated", "ensemble"])
def test_bad_weights_on_the_command_line_give_one_line(
    bad_weights: dict[str, Path],
    kind: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Raised inside MONAI's instantiation of the engine, shown as our CheckpointError; --debug re-raises it."""
    from pipelines.screening.inference import CheckpointError

    monkeypatch.chdir(tmp_path)
    scan = write_case(chest_image(), tmp_path / "a.nii.gz")
    missing = tmp_path / "fold2.pt"
    weights = (
        [str(bad_weights["truncated"])] if kind == "truncated" else [str(bad_weights["good"]), str(missing)]
    )
    argv = ["screen", str(scan), "out", "--device", "cpu", *[w for p in weights for w in ("--weights", p)]]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    name = bad_weights["truncated"] if kind == "truncated" else missing
    assert len(err) == 1 and err[0].startswith(f"lungscreen screen: error: {name}: "), err
    assert "Failed to instantiate" not in err[0] and "--debug" in err[0]
    with pytest.raises(CheckpointError, match=str(name)):
        main(["--debug", *argv])
    assert not list(tmp_path.rglob("PWNED*"))


# ------------------------------------------------------------------------------------------------ logging
def test_monai_logging_file_notice_is_silenced_but_other_records_pass() -> None:
    from pipelines.bundle import load_workflow

    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    logger = logging.getLogger("monai.bundle.workflows")
    handler = Keep()
    logger.addHandler(handler)
    try:
        load_workflow("inference.json")
        logger.warning("another MONAI warning")
    finally:
        logger.removeHandler(handler)
    assert not [r for r in records if "Logging file is set to False" in r]
    assert "another MONAI warning" in records


@pytest.mark.slow
def test_console_run_prints_no_monai_logging_notice(tmp_path: Path) -> None:
    code = "from pipelines.bundle import load_workflow; load_workflow('inference.json')"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "Logging file is set to False" not in proc.stdout + proc.stderr
