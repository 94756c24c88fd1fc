"""No user string reaches MONAI's config parser as text (issue 23).

MONAI's parser evaluates strings starting with ``$``, resolves a whole-string ``@id``, loads ``%file#id`` macros
and rewrites ``#``/``::``/relative ids inside strings. Paths must go in as ``Path`` objects and settings as
validated Python values. Each test uses *relative* hostile names (an absolute path starts with ``/`` and would
hide the old bug) and asserts that the marker file that the payload would create does not exist.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import FAST, ROOT, chest_image, run_screen, write_case

from pipelines.bundle import (
    OverrideError,
    check_override_values,
    check_user_overrides,
    load_workflow,
)
from pipelines.cli.main import main
from pipelines.screening.settings import RULES, SettingsError, settings_overrides


def payload(marker: str) -> str:
    """A string MONAI's parser would run: it creates the file ``marker`` in the working folder."""
    return f"$__import__('os').system('touch {marker}')"


#: Scan file names, each a way into the parser's syntax, plus the characters it rewrites.
HOSTILE_NAMES = [
    payload("PWNED_IN") + ".nii.gz",
    "@ref.nii.gz",
    "@#rel.nii.gz",
    "%macro.nii.gz",
    "%inference.json#settings.nii.gz",
    "a#b.nii.gz",
    "c::d.nii.gz",
    "ok.nii.gz",
]


def _fast_flags(weights: str) -> list[str]:
    return [
        "--device", "cpu", "--roi-size", "32", "32", "32", "--no-report", "--quiet", "--weights", weights,
        "--set", f"target_spacing_mm={FAST['target_spacing_mm']}", f"lung_margin_mm={FAST['lung_margin_mm']}",
        "fine_spacing_mm=null",
    ]  # fmt: skip


def _summary_ids(out: Path) -> dict[str, str]:
    with open(out / "summary.csv", newline="") as fh:
        return {r["case_id"]: r["status"] for r in csv.DictReader(fh)}


def _markers(*folders: Path) -> list[str]:
    return sorted(str(p) for f in folders for p in f.rglob("PWNED*"))


# ------------------------------------------------------------------------------------------------ guards
@pytest.mark.parametrize(
    "value",
    [payload("X"), "@settings", "%inference.json#settings", ["ok", payload("X")], {"k": "@x"}, ("a", ["%y"])],
)
def test_override_guard_refuses_parser_syntax_at_any_depth(value: object) -> None:
    with pytest.raises(OverrideError, match=r"config override output_dir: the value ['\"][$@%]"):
        check_override_values({"output_dir": value})


def test_override_guard_accepts_paths_and_plain_values() -> None:
    check_override_values(
        {
            "output_dir": Path(payload("X")),
            "a": 1.5,
            "b": [Path("@x"), None, True],
            "c": "cpu",
            "d": "/abs/$x",
        }
    )


def test_load_workflow_refuses_a_string_payload_before_the_parser(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(OverrideError, match="output_dir"):
        load_workflow("inference.json", overrides={"output_dir": payload("PWNED")})
    assert _markers(tmp_path) == []


def test_path_objects_pass_through_the_parser_unchanged(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    names = [payload("PWNED"), "@settings", "%inference.json#settings", "a#b", "c::d", "e@#f", "g%#h"]
    paths = [Path(n) for n in names]
    wf = load_workflow("inference.json", overrides={"output_dir": paths[0], "dataset_dir": paths})
    wf.initialize()
    assert wf.parser.get_parsed_content("output_dir") == paths[0]
    assert wf.parser.get_parsed_content("dataset_dir") == paths
    assert _markers(tmp_path) == []


def test_workflow_keywords_cannot_be_smuggled_in_as_overrides() -> None:
    """``tracking``/``run_id`` are ConfigWorkflow arguments; as override keys they only set config items."""
    wf = load_workflow("inference.json", overrides={"run_id": "finalize", "tracking": "mlflow"})
    assert wf.run_id == "run" and wf.parser["run_id"] == "finalize"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"train#lr": payload("X")}, r"--set train#lr: the value .* not allowed"),
        ({"train#lr": ["ok", "@settings"]}, r"--set train#lr: the value"),
        ({"train#lr": {"_target_": "os.system"}}, r"--set train#lr: the value"),
        ({"network_def#_target_": "os.system"}, r"_target_ is MONAI's reserved key"),
        ({"train#handlers#0#_disabled_": True}, r"_disabled_ is MONAI's reserved key"),
        ({"$x": 1}, r"--set '\$x': a key is a config ID path"),
        ({"a##b": 1}, r"a key is a config ID path"),
        ({"train#lr": float("nan")}, r"--set train#lr: the value nan"),
    ],
)
def test_user_overrides_accept_only_plain_values_and_keys(overrides: dict, message: str) -> None:
    with pytest.raises(OverrideError, match=message):
        check_user_overrides(overrides)


def test_user_overrides_keep_plain_values() -> None:
    ok = {"train#lr": 0.01, "train#handlers#0#interval": 2, "x": None, "y": [1, 2.5, True], "z": "adam"}
    assert check_user_overrides(ok) == ok


@pytest.mark.parametrize("name", sorted(RULES))
def test_every_setting_refuses_a_payload_string(name: str) -> None:
    with pytest.raises(SettingsError, match=f"setting {name} must be"):
        settings_overrides({name: payload("PWNED")})


# ------------------------------------------------------------------------------------------------ screen
def test_screen_api_hostile_folders_and_output_execute_nothing(
    tmp_path: Path, monkeypatch, weights: str
) -> None:
    """Folders ``@scans`` and ``%x`` screen by their relative names into an OUT that is a payload."""
    monkeypatch.chdir(tmp_path)
    write_case(chest_image(), Path("@scans") / "s1.nii.gz")
    write_case(chest_image(), Path("%x") / "s2.nii.gz")
    out = payload("PWNED_OUT") + "#out"
    res = run_screen(["@scans", "%x"], out, weights=weights)  # plain str paths, as a caller would pass them
    assert (res.succeeded, res.failed) == (2, 0)
    assert Path(out, "summary.csv").is_file()  # written under the literal name, '#' kept
    assert _summary_ids(Path(out)) == {"s1": "ok", "s2": "ok"}
    assert _markers(tmp_path) == []


def test_screen_api_payload_settings_are_refused_before_any_work(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    write_case(chest_image(), Path("in.nii.gz"))
    for settings in ({"stitch": payload("PWNED")}, {"device": "@settings#device"}, {"mirror_axes": "%x"}):
        with pytest.raises(SettingsError, match="must be"):
            run_screen("in.nii.gz", "out", **settings)
    with pytest.raises(TypeError, match="overwrite must be True or False"):
        run_screen("in.nii.gz", "out", overwrite=payload("PWNED"))
    assert _markers(tmp_path) == [] and not Path("out").exists()


def test_cd_in_and_screen_star_over_hostile_names(tmp_path: Path, monkeypatch, weights: str, capsys) -> None:
    """``cd IN; lungscreen screen * ../out``: every hostile file name is screened under its own name."""
    inp = tmp_path / "IN"
    for name in HOSTILE_NAMES:
        write_case(chest_image(), inp / name)
    monkeypatch.chdir(inp)
    argv = ["screen", *sorted(os.listdir(".")), "../out", *_fast_flags(weights)]
    assert main(argv) == 0, capsys.readouterr().err
    assert f"{len(HOSTILE_NAMES)} succeeded, 0 failed" in capsys.readouterr().out
    ids = _summary_ids(tmp_path / "out")
    assert len(ids) == len(HOSTILE_NAMES) and set(ids.values()) == {"ok"}
    for (
        name
    ) in HOSTILE_NAMES:  # each case keeps its literal name (a table may prefix a quote to neutralise it)
        assert any(name.removesuffix(".nii.gz") in case_id for case_id in ids), name
    assert _markers(tmp_path) == []


def test_cli_set_payload_is_a_one_line_usage_error(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    write_case(chest_image(), Path("in.nii.gz"))
    assert main(["screen", "in.nii.gz", "out", "--set", "stitch=" + payload("PWNED")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "setting stitch must be one of auto, device, cpu" in err[0]
    assert _markers(tmp_path) == [] and not Path("out").exists()


@pytest.mark.parametrize(
    ("command", "key"),
    [
        (["train", "--dataset", "ds", "--device", "cpu"], "train#lr"),
        (["train-seg", "--images", "i", "--labels", "l", "--modality", "ct", "--out", "m", "--device", "cpu"], "optimizer#lr"),
        (["segment", "model", "in", "out", "--device", "cpu"], "inferer#overlap"),
    ],
)  # fmt: skip
def test_train_and_segment_set_payload_is_refused_naming_the_key(
    tmp_path: Path, monkeypatch, capsys, command: list[str], key: str
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main([*command, "--set", f"{key}={payload('PWNED')}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and key in err[0] and "not allowed" in err[0], err
    assert _markers(tmp_path) == [] and sorted(os.listdir(tmp_path)) == []  # refused before any work


def test_train_paths_reach_the_config_as_absolute_path_objects(tmp_path: Path, monkeypatch) -> None:
    from pipelines.training.train import segmentation_overrides

    monkeypatch.chdir(tmp_path)
    pairs = segmentation_overrides(
        dataset=payload("PWNED"), run_dir=Path("@runs"), profile="cpu", seed=0, device="cpu", resume=False
    )
    check_override_values(pairs)
    assert pairs["dataset_dir"] == tmp_path / payload("PWNED") and pairs["run_dir"] == tmp_path / "@runs"


@pytest.mark.slow
def test_shell_cd_in_and_screen_star(tmp_path: Path, weights: str) -> None:
    """The same through a shell and the console entry point, as a user types it."""
    inp = tmp_path / "IN"
    for name in HOSTILE_NAMES:
        write_case(chest_image(), inp / name)
    flags = " ".join(f"'{f}'" for f in _fast_flags(weights))
    cmd = f"cd IN && '{sys.executable}' -m pipelines.cli screen * ../out {flags}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"{len(HOSTILE_NAMES)} succeeded, 0 failed" in proc.stdout
    assert _markers(tmp_path) == []


@pytest.mark.slow
def test_train_seg_and_segment_with_hostile_folder_names(tmp_path: Path, monkeypatch) -> None:
    """train-seg and segment read and write folders whose relative names are parser syntax."""
    from mri_phantoms import TINY, make_mri_phantoms

    from pipelines.segmentation.engine import segment
    from pipelines.segmentation.train import train_segmentation

    monkeypatch.chdir(tmp_path)
    data = make_mri_phantoms(tmp_path / "data", n=2, seed=10)
    (data / "images").rename("@images")
    (data / "labels").rename("%labels#x")
    model = train_segmentation(
        images="@images", labels="%labels#x", modality="mri", out=payload("PWNED_MODEL"),
        iterations=2, seed=0, device="cpu", planning=TINY,
    )  # fmt: skip
    assert Path(payload("PWNED_MODEL"), "model.pt").is_file() and model == Path(payload("PWNED_MODEL"))
    counts = segment(str(model), "@images", payload("PWNED_SEG") + "::out", device="cpu", progress=False)
    assert counts.succeeded == 2 and counts.failed == 0
    assert Path(payload("PWNED_SEG") + "::out", "summary.csv").is_file()
    assert _markers(tmp_path) == []
