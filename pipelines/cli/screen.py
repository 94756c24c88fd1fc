"""``lungscreen screen``: its parser and its handler (:func:`pipelines.screening.api.screen`)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from pipelines.cli.common import DEVICE_HELP, Command, UsageError, device_arg, key_values


def add_screen(sub: Any) -> None:
    s = sub.add_parser("screen", help="screen a folder/file/DICOM series for lung nodules")
    s.add_argument(
        "inputs", nargs="+", type=Path, help="folders, files or DICOM folders; the last argument is OUT"
    )
    s.add_argument(
        "--weights",
        type=Path,
        action="append",
        default=None,
        help="segmentation checkpoint; repeat it to screen with the mean logit of several (e.g. fold models)",
    )
    s.add_argument(
        "--classifier-weights", type=Path, default=None, help="false-positive classifier checkpoint"
    )
    s.add_argument("--device", type=device_arg, default=None, help=DEVICE_HELP)
    s.add_argument(
        "--sw-batch-size",
        dest="sw_batch_size",
        type=int,
        default=None,
        help="sliding windows per network call",
    )
    s.add_argument(
        "--overlap", type=float, default=None, help="sliding-window overlap fraction, in [0, 0.95)"
    )
    s.add_argument(
        "--roi-size",
        dest="roi_size",
        type=int,
        nargs=3,
        default=None,
        metavar=("Z", "Y", "X"),
        help="sliding-window size in voxels (multiples of 8)",
    )
    s.add_argument(
        "--threshold",
        dest="prob_threshold",
        type=float,
        default=None,
        help="reporting probability, in [0, 1]",
    )
    s.add_argument("--write-probability", action="store_true", help="also write probability.nii.gz per case")
    s.add_argument(
        "--dicom-out",
        action="store_true",
        help="DICOM input only: also write a DICOM SEG and SR per case (they carry the patient's identifiers)",
    )
    s.add_argument("--no-report", action="store_true", help="no HTML report per case and no index.html")
    s.add_argument("--no-compress", action="store_true", help="write .nii instead of .nii.gz")
    s.add_argument("--overwrite", action="store_true", help="recompute cases that are already complete")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.add_argument("--bundle-root", type=Path, default=None, help="another bundle folder (configs/, models/)")
    s.add_argument(
        "--set",
        nargs="+",
        action="extend",
        metavar="KEY=VALUE",
        help="any screening setting, e.g. lung_margin_mm=15 (JSON values; repeatable)",
    )
    add_followup_options(s)


def add_followup_options(s: Any) -> None:
    """``--prior``, ``--interval-days`` and ``--pairs``: follow-up screening (:mod:`pipelines.followup.run`)."""
    s.add_argument(
        "--prior",
        type=Path,
        default=None,
        help="compare with this prior: a scan (file or DICOM folder) or an earlier case folder (cases/<id>/)",
    )
    s.add_argument(
        "--interval-days",
        dest="interval_days",
        type=float,
        default=None,
        help="days from the prior to the current scan (default: from the DICOM StudyDates)",
    )
    s.add_argument(
        "--pairs",
        type=Path,
        default=None,
        help="CSV table of follow-up pairs (current, prior, interval_days optional); then give OUT alone",
    )


def cmd_screen(a: argparse.Namespace) -> int:
    from pipelines.screening.api import screen
    from pipelines.screening.process import settle_imports

    settle_imports()

    if a.pairs is not None:  # follow-up pairs from a table: OUT alone
        a.inputs, a.out = None, pairs_out(a.inputs)
    else:
        a.inputs, a.out = split_out(a.inputs)
    settings: dict[str, Any] = key_values(a.set or [])
    for name in ("device", "sw_batch_size", "overlap", "prob_threshold"):
        value = getattr(a, name)
        if value is not None:
            settings[name] = value
    if a.roi_size:
        settings["roi_size"] = a.roi_size
    if a.no_report:
        settings["report"] = False
    if a.write_probability:
        settings["write_probability"] = True
    if a.no_compress:
        settings["compress"] = False
    if a.dicom_out:
        settings["dicom_out"] = True
    options: dict[str, Any] = {
        "weights": a.weights,
        "classifier_weights": a.classifier_weights,
        "overwrite": a.overwrite,
        "progress": not a.quiet,
        "bundle_root": a.bundle_root,
        **settings,
    }
    if a.prior is not None or a.pairs is not None or a.interval_days is not None:
        return cmd_followup(a, options)
    res = screen(a.inputs, a.out, **options)
    return report(
        res,
        f"{res.succeeded} succeeded, {res.failed} failed, {res.skipped} skipped (already done) of {res.total}; "
        f"summary: {res.output_dir / 'summary.csv'}",
    )


def cmd_followup(a: argparse.Namespace, options: dict[str, Any]) -> int:
    """``screen --prior`` / ``screen --pairs``: :func:`pipelines.followup.run.screen_followup`."""
    from pipelines.followup.run import screen_followup

    usage = "lungscreen screen CURRENT OUT --prior PRIOR [--interval-days N], or lungscreen screen --pairs TABLE OUT"
    if a.pairs is not None and (a.prior is not None or a.interval_days is not None):
        raise UsageError(f"--pairs takes the priors and intervals from its table: {usage}")
    if a.pairs is None and a.prior is None:
        raise UsageError(f"--interval-days goes with --prior: {usage}")
    if a.prior is not None and isinstance(a.inputs, list):
        raise UsageError(f"--prior takes one current scan: {usage}")
    pairs: Any = a.pairs if a.pairs is not None else [(a.inputs, a.prior, a.interval_days)]
    res = screen_followup(pairs, a.out, **options)
    return report(
        res,
        f"{res.succeeded} compared with their prior, {res.failed} failed, of {res.total} pair(s); "
        f"follow-up table: {res.output_dir / 'followup.csv'}",
    )


def report(res: Any, headline: str) -> int:
    """Print a run's outcome (the headline, where failures and the report are) and return its exit code."""
    print(headline)
    if res.failed:
        print(f"failures: {res.output_dir / 'failures.csv'}")
    if res.index_html.exists():
        print(f"report: {res.index_html.resolve()}")
    return int(res.exit_code)


def pairs_out(inputs: list[Path]) -> Path:
    """OUT of ``screen --pairs TABLE OUT`` (the scans come from the table)."""
    if len(inputs) != 1:
        raise UsageError("with --pairs give OUT alone: lungscreen screen --pairs TABLE OUT")
    out = inputs[0]
    if out.exists() and not out.is_dir():
        raise UsageError(f"OUT {out} is an existing file, not a folder: lungscreen screen --pairs TABLE OUT")
    return out


def split_out(inputs: list[Path]) -> tuple[list[Path] | Path, Path]:
    """Split ``screen``'s positionals into inputs and OUT, refusing a forgotten OUT before any work."""
    usage = "lungscreen screen IN [IN ...] OUT"
    if len(inputs) < 2:
        raise UsageError(f"screen needs at least one input and an output folder: {usage}")
    out = inputs[-1]
    if out.exists() and not out.is_dir():
        raise UsageError(
            f"OUT {out} is an existing file, not a folder; the last argument is the output folder: {usage}"
        )
    if holds_dicom(out):
        raise UsageError(
            f"OUT {out} holds DICOM files, so it looks like an input; the last argument is the output folder: {usage}"
        )
    return (inputs[:-1] if len(inputs) > 2 else inputs[0]), out


def holds_dicom(folder: Path, *, limit: int = 32) -> bool:
    """Whether ``folder`` directly holds a DICOM file (``DICM`` at byte 128), among its first ``limit`` files."""
    if not folder.is_dir():
        return False
    try:
        with os.scandir(folder) as entries:
            files = [e for e in entries if e.is_file(follow_symlinks=False)][:limit]
        for entry in files:
            with open(entry.path, "rb") as fh:
                if fh.read(132)[128:] == b"DICM":
                    return True
    except OSError:
        return False
    return False


COMMANDS = {
    "screen": Command(add_screen, cmd_screen),
}
