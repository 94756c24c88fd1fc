"""``lungscreen`` command line: a thin argparse adapter over the keyword-only Python API.

Each command lives in its own module with its parser beside its handler (:mod:`pipelines.cli.data`,
:mod:`~pipelines.cli.screen`, :mod:`~pipelines.cli.evaluate`, :mod:`~pipelines.cli.train`,
:mod:`~pipelines.cli.bench`, :mod:`~pipelines.cli.segment`); this module assembles them and turns errors into one
line and an exit status. Heavy modules (torch, MONAI, SimpleITK) are imported inside the handlers, so
``lungscreen --help`` is instant.
"""

from __future__ import annotations

import argparse
import sys

from pipelines.cli import bench, data, evaluate, screen, segment, train
from pipelines.cli.common import USAGE_EXIT, Command, Parser, UsageError, version_text

#: Every subcommand, in the order ``lungscreen --help`` lists them.
COMMANDS: dict[str, Command] = {
    **data.COMMANDS,
    **screen.COMMANDS,
    **evaluate.COMMANDS,
    **train.COMMANDS,
    **bench.COMMANDS,
    **segment.COMMANDS,
}


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="lungscreen",
        description="Screen 3D chest CT for lung nodules; segment 3D CT and MRI. Not a medical device.",
    )
    p.add_argument("--version", action="version", version=version_text(), help="print the version and exit")
    p.add_argument(
        "--debug", action="store_true", help="show the full traceback of an error instead of one line"
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS.values():
        command.add(sub)
    return p


def one_line(err: BaseException) -> str:
    """The root cause of ``err`` (out of MONAI's wrappers) as one line."""
    from pipelines.bundle import unwrap_config_error

    cause = unwrap_config_error(err)
    text = " ".join(str(cause).split())
    if isinstance(cause, ValueError | OSError | RuntimeError) and text:
        return text
    return f"{type(cause).__name__}: {text}" if text else type(cause).__name__


def is_usage_error(err: BaseException) -> bool:
    """A bad setting, override or device: the message says it all, a traceback adds nothing."""
    from pipelines.bundle import OverrideError, unwrap_config_error

    try:  # these modules read the bundle when imported: without a bundle the error is that, not a usage error
        from pipelines.export.dicom_source import DicomExportError
        from pipelines.screening.inference import DeviceError
        from pipelines.screening.settings import SettingsError
    except Exception:
        return False

    return isinstance(
        unwrap_config_error(err), SettingsError | OverrideError | DeviceError | DicomExportError
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(COMMANDS[args.command].run(args))
    except KeyboardInterrupt as err:  # Ctrl-C: one line (the engines write the run tables first), exit 130
        print(f"lungscreen {args.command}: {err or 'interrupted'}", file=sys.stderr)
        return 130
    except UsageError as err:
        print(f"lungscreen {args.command}: error: {err}", file=sys.stderr)
        return USAGE_EXIT
    except Exception as err:
        if args.debug:
            raise
        hint = "" if is_usage_error(err) else " (rerun with --debug for the traceback)"
        print(f"lungscreen {args.command}: error: {one_line(err)}{hint}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
