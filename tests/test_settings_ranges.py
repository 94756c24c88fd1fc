"""Every screening setting is finite, of its type and within its documented range (issue 23).

The errors name the setting, the value and what is allowed; on the command line they are one-line usage
errors (exit 2) raised before any scan is read.
"""

from __future__ import annotations

import json
import math
from dataclasses import fields
from pathlib import Path

import pytest
from helpers import BUNDLE

from pipelines.cli.main import main
from pipelines.screening.settings import (
    RULES,
    ScreeningSettings,
    SettingsError,
    allowed_values,
    settings_overrides,
    validate_setting,
)

NUMERIC = sorted(n for n, r in RULES.items() if r.kind in ("float", "int"))


def test_every_field_has_a_rule_documented_in_the_docstring() -> None:
    doc = ScreeningSettings.__doc__ or ""
    assert {f.name for f in fields(ScreeningSettings)} == set(RULES)
    for name in RULES:
        assert f"        {name}: {allowed_values(name)}\n" in doc, name


def test_bundle_defaults_and_documented_examples_are_valid() -> None:
    bundle = json.loads((BUNDLE / "configs" / "inference.json").read_text())["settings"]
    ScreeningSettings(**{k: v for k, v in bundle.items() if not k.startswith("_")})
    ScreeningSettings(
        device="cuda:1", fine_spacing_mm=None, overlap=0.9, roi_size=[96, 96, 96], max_input_voxels=1e8
    )


@pytest.mark.parametrize("name", NUMERIC)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, "0.5", "abc", True, None, [1.0], 1e12, -1e12])
def test_numeric_settings_refuse_non_finite_wrong_type_and_out_of_range(name: str, bad: object) -> None:
    if bad is None and RULES[name].optional:
        return
    with pytest.raises(SettingsError) as info:
        validate_setting(name, bad)
    msg = str(info.value)
    assert msg.startswith(f"setting {name} must be {allowed_values(name)}, not {bad!r}"), msg


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("prob_threshold", "abc", "setting prob_threshold must be a number in [0, 1], not 'abc' (a str)"),
        ("prob_threshold", "0.5", "not '0.5' (a str)"),
        ("prob_threshold", 1.5, "a number in [0, 1], not 1.5"),
        ("roi_size", 64, "setting roi_size must be three integers (z, y, x), multiples of 8 in [16, 256] voxels, not 64 (an int)"),
        ("roi_size", "64", "not '64' (a str)"),
        ("roi_size", [64, 64, 60], "not [64, 64, 60]"),
        ("roi_size", [64, 64], "not [64, 64]"),
        ("roi_size", [64, 64, 64.5], "not [64, 64, 64.5]"),
        ("roi_size", [512, 64, 64], "not [512, 64, 64]"),
        ("sw_batch_size", True, "an integer in [1, 256], not True (a bool)"),
        ("sw_batch_size", 2.5, "not 2.5"),
        ("max_candidates", 0, "an integer in [1, 100000], not 0"),
        ("max_input_voxels", -1, "an integer in [1, 4e9] voxels, not -1"),
        ("overlap", 0.95, "a number in [0, 0.95), not 0.95"),
        ("overlap", 0.99, "not 0.99"),
        ("target_spacing_mm", 0.05, "a number in [0.3, 3] mm, not 0.05"),
        ("target_spacing_mm", 50, "not 50"),
        ("fine_spacing_mm", 0.1, "null or a number in [0.3, 3] mm, not 0.1"),
        ("hu_min", -math.inf, "a number in [-1100, 3100] HU, not -inf"),
        ("hu_max", 5000, "not 5000"),
        ("lung_margin_mm", math.inf, "a number in [0, 100] mm, not inf"),
        ("logit_temperature", 0, "a number in (0, 100], not 0"),
        ("mirror_threshold", 1.0, "a number in (0, 1), not 1.0"),
        ("device", "tpu", "one of auto, cpu, cuda or cuda:N (N = GPU index), not 'tpu'"),
        ("device", "cuda:x", "not 'cuda:x'"),
        ("device", 0, "not 0 (an int)"),
        ("amp", "bf16", "one of auto, float32, bfloat16, float16, not 'bf16'"),
        ("mirror_axes", "xx", 'distinct letters of "zyx" ("" for none), not \'xx\''),
        ("mirror_axes", "q", "not 'q'"),
        ("report", "maybe", "true or false, not 'maybe'"),
        ("report", 2, "true or false, not 2"),
        ("compress", 0.5, "not 0.5 (a float)"),
    ],
)  # fmt: skip
def test_errors_name_the_setting_the_value_and_what_is_allowed(
    name: str, value: object, message: str
) -> None:
    with pytest.raises(SettingsError) as info:
        validate_setting(name, value)
    assert message in str(info.value) and f"setting {name} must be" in str(info.value)


def test_values_are_canonical_python_values() -> None:
    assert validate_setting("roi_size", [32, 32.0, 48]) == (32, 32, 48)
    assert validate_setting("max_input_voxels", 1e8) == 100_000_000
    assert validate_setting("prob_threshold", 1) == 1.0 and isinstance(
        validate_setting("hu_min", -1000), float
    )
    assert validate_setting("report", "off") is False and validate_setting("compile", 1) is True
    assert (
        validate_setting("fine_spacing_mm", None) is None and validate_setting("device", "cuda:3") == "cuda:3"
    )


def test_cross_setting_rules() -> None:
    with pytest.raises(SettingsError, match=r"hu_max must be greater than hu_min \(500.0\)"):
        ScreeningSettings(hu_min=500, hu_max=-500)
    with pytest.raises(SettingsError, match="fine_spacing_mm must be null or a spacing in mm below"):
        ScreeningSettings(target_spacing_mm=1.0, fine_spacing_mm=1.5)


def test_unknown_setting_lists_the_valid_ones() -> None:
    with pytest.raises(
        SettingsError, match=r"unknown setting 'treshold'; valid settings are \[.*'prob_threshold'"
    ):
        settings_overrides({"treshold": 0.5})


def test_overrides_carry_validated_values_only() -> None:
    assert settings_overrides({"roi_size": (32, 32, 32), "report": "false", "max_input_voxels": 1e6}) == {
        "settings#roi_size": [32, 32, 32],
        "settings#report": False,
        "settings#max_input_voxels": 1_000_000,
    }


# ------------------------------------------------------------------------------------------------ CLI
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "prob_threshold"], "--set expects KEY=VALUE, got 'prob_threshold'"),
        (["--set", "=0.5"], "--set expects KEY=VALUE, got '=0.5'"),
        (["--set", "treshold=0.5"], "unknown setting 'treshold'"),
        (["--set", "prob_threshold=abc"], "setting prob_threshold must be a number in [0, 1], not 'abc' (a str)"),
        (["--set", 'prob_threshold="0.5"'], "not '0.5' (a str)"),
        (["--set", "roi_size=64"], "setting roi_size must be three integers"),
        (["--set", "hu_min=-Infinity"], "setting hu_min must be a number in [-1100, 3100] HU, not -inf"),
        (["--set", "overlap=0.99"], "setting overlap must be a number in [0, 0.95), not 0.99"),
        (["--overlap", "NaN"], "setting overlap must be a number in [0, 0.95), not nan"),
        (["--set", "max_input_voxels=-1"], "setting max_input_voxels must be an integer in [1, 4e9] voxels"),
        (["--set", "lung_margin_mm=Infinity"], "setting lung_margin_mm must be a number in [0, 100] mm, not inf"),
        (["--set", "sw_batch_size=true"], "not True (a bool)"),
        (["--device", "tpu"], "argument --device: 'tpu' is not one of auto, cpu, cuda or cuda:N"),
        (["--roi-size", "64"], "argument --roi-size: expected 3 arguments"),
        (["--threshold", "abc"], "argument --threshold: invalid float value: 'abc'"),
    ],
)  # fmt: skip
def test_cli_usage_errors_exit_2_with_one_line(tmp_path: Path, capsys, args: list[str], message: str) -> None:
    scan = tmp_path / "scan.nii.gz"
    scan.write_bytes(b"")  # never read: the error comes first
    try:
        code = main(["screen", str(scan), str(tmp_path / "out"), *args])
    except SystemExit as stop:  # argparse's own errors
        code = int(stop.code or 0)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("lungscreen screen: error: ") and message in err[0], err[0]
    assert "--debug" not in err[0] and not (tmp_path / "out").exists()
