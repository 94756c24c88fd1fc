"""The CLI is light to import, and every command the README shows exists as written."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _bash_blocks(text: str) -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    lines: list[str] = []
    for block in blocks:
        joined = block.replace("\\\n", " ")
        lines += [ln.split("#")[0].strip() for ln in joined.splitlines() if ln.split("#")[0].strip()]
    return lines


def test_help_does_not_import_torch():
    code = "import sys, pipelines.cli.main as c; c.build_parser(); assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_every_readme_lungscreen_command_parses():
    parser = build_parser()
    subcommands = set(parser._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    commands = [ln for ln in _bash_blocks(README) if "lungscreen " in ln]
    assert commands, "README shows no lungscreen command"
    for line in commands:
        argv = shlex.split(line[line.index("lungscreen ") + len("lungscreen ") :])
        if argv == ["--help"]:
            continue
        assert argv[0] in subcommands, line
        parser.parse_args(argv)  # raises SystemExit on a bad option


def test_every_readme_make_target_exists():
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][a-z-]*):", makefile, flags=re.M))
    used = [shlex.split(ln)[1] for ln in _bash_blocks(README) if ln.startswith("make ")]
    assert {"demo", "test"} <= set(used)
    assert set(used) <= targets, set(used) - targets


def test_readme_bundle_commands_name_existing_configs():
    for line in _bash_blocks(README):
        for cfg in re.findall(r"monai_bundle/configs/[a-z_]+\.json", line):
            assert (ROOT / cfg).is_file(), cfg


def test_ci_runs_the_readme_test_command():
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    assert "make test" in README.split("## Usage")[0]


@pytest.mark.slow
def test_make_demo_runs_end_to_end(tmp_path):
    """`make demo` on a clean copy of the working tree prints the report path."""
    res = subprocess.run(
        ["make", "demo", f"DEMO_DATA={tmp_path}/demo", f"DEMO_OUT={tmp_path}/out"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "index.html" in res.stdout
    assert (tmp_path / "out" / "index.html").is_file()


def test_errors_are_one_line_unless_debug(tmp_path, capsys):
    from pipelines.cli.main import main

    missing = tmp_path / "nowhere.csv"
    argv = [
        "evaluate",
        "--annotations",
        str(missing),
        "--predictions",
        str(missing),
        "--out",
        str(tmp_path / "o"),
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nowhere.csv" in err[0] and "--debug" in err[0]
    with pytest.raises((FileNotFoundError, ValueError)):
        main(["--debug", *argv])


def test_readme_python_api_import_gives_the_function():
    """`from pipelines import screen` (README) must give the function, not the submodule of the same name."""
    code = "from pipelines import screen; import inspect; assert inspect.isfunction(screen), screen"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


def test_package_exports_screen_followup():
    code = (
        "import sys, inspect; from pipelines import screen_followup; assert inspect.isfunction(screen_followup);"
        "from pipelines.followup.run import screen_followup as f; assert f is screen_followup"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


def test_a_missing_bundle_is_one_line_naming_it(tmp_path):
    """No bundle where LUNGSCREEN_BUNDLE points: the settings module cannot even be imported; the CLI still says
    so in one line (exit 2) instead of a traceback from its own error handler."""
    import os

    env = {
        **os.environ,
        "LUNGSCREEN_BUNDLE": str(tmp_path / "nowhere"),
        "PYTHONPATH": str(Path(__file__).parents[1]),
    }
    run = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "screen", str(tmp_path / "in"), str(tmp_path / "out")],
        capture_output=True, text=True, env=env, cwd=tmp_path,
    )  # fmt: skip
    err = run.stderr.strip().splitlines()
    assert run.returncode == 2 and len(err) == 1, run.stderr
    assert "nowhere is not a lungscreen bundle" in err[0] and "Traceback" not in run.stderr
