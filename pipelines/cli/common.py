"""What every ``lungscreen`` command shares: one-line usage errors (exit 2), option types, ``--set`` values.

Light to import: nothing here loads torch, MONAI or SimpleITK, so ``lungscreen --help`` stays instant.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

USAGE_EXIT = 2
DEVICE_HELP = "auto (CUDA when available), cpu, cuda or cuda:N; a GPU this machine lacks is an error"

Handler = Callable[[argparse.Namespace], int]


@dataclass(frozen=True)
class Command:
    """One subcommand: ``add(subparsers)`` declares its options, ``run(namespace)`` calls the API (exit code)."""

    add: Callable[[Any], None]
    run: Handler


class UsageError(ValueError):
    """A command line that cannot be run as given (exit 2, one line)."""


class Parser(argparse.ArgumentParser):
    """``argparse`` with one-line usage errors (``lungscreen screen: error: ...``), exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE_EXIT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def device_arg(text: str) -> str:
    """``--device`` value: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (whether that GPU exists is checked by
    the command, before any work)."""
    from pipelines.screening.settings import RULES, SettingsError, validate_setting

    try:
        return str(validate_setting("device", text))
    except SettingsError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {RULES['device'].allowed()}") from None


def version_text() -> str:
    from pipelines import __version__
    from pipelines.bundle import bundle_root

    try:
        bundle = json.loads((bundle_root() / "configs" / "metadata.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        bundle = "not found"
    return f"lungscreen {__version__} (bundle {bundle}; python {sys.version.split()[0]})"


def parse_value(text: str) -> Any:
    """A ``--set`` value: JSON (numbers, true/false, null, lists, quoted strings), else the text itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def key_values(pairs: list[str]) -> dict[str, Any]:
    """``["a=1", "b#c=x"]`` -> ``{"a": 1, "b#c": "x"}``; a pair without ``=`` is a usage error."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--set expects KEY=VALUE, got {pair!r}")
        out[key.strip()] = parse_value(value)
    return out


def warn_if_stale(dataset: Path | str | None) -> None:
    """Print a warning when ``dataset`` was made by an older phantom generator (its figures are not comparable)."""
    from pipelines.phantom.write import stale_dataset_warning

    msg = stale_dataset_warning(dataset) if dataset is not None and Path(dataset).is_dir() else None
    if msg:
        print(msg, file=sys.stderr)
