"""``lungscreen bench``: its parser and its handler (:func:`pipelines.bench.run.run_bench`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pipelines.cli.common import DEVICE_HELP, Command, UsageError, device_arg


def add_bench(sub: Any) -> None:
    s = sub.add_parser("bench", help="benchmark every stage against the plain MONAI chain")
    s.add_argument(
        "--out", type=Path, default=Path("benchmarks/results"), help="results folder (JSON and Markdown)"
    )
    s.add_argument(
        "--sizes",
        nargs="+",
        choices=("small", "full"),
        default=["small", "full"],
        help="phantom sizes to bench",
    )
    s.add_argument("--device", type=device_arg, default="auto", help=DEVICE_HELP)
    s.add_argument("--repeats", type=int, default=3, help="timed repeats per measurement (median reported)")
    s.add_argument("--no-baseline", action="store_true", help="skip the plain MONAI chain")
    s.add_argument(
        "--quick",
        action="store_true",
        help="stages, end-to-end screens and the baseline only (no setting variants, no sw_batch_size sweep)",
    )
    s.add_argument(
        "--memory-slices", type=int, nargs="*", default=None, help="also measure scans stacked to N slices"
    )
    s.add_argument(
        "--scan",
        action="append",
        metavar="NAME=PATH",
        help="bench this scan (repeatable) instead of generating one per --sizes; an annotations.csv in its "
        "folder or the one above gives the reference nodules",
    )


def cmd_bench(a: argparse.Namespace) -> int:
    from pipelines.bench.run import run_bench

    result = run_bench(
        out_dir=a.out,
        sizes=a.sizes,
        device=a.device,
        repeats=a.repeats,
        baseline=not a.no_baseline,
        memory_slices=tuple(a.memory_slices or ()),
        inputs=bench_scans(a.scan),
        sweeps=not a.quick,
        variants=not a.quick,
    )
    print(result["markdown"])
    return 0


def bench_scans(pairs: list[str] | None) -> dict[str, str] | None:
    """``--scan SIZE=PATH`` pairs as ``{size: path}`` (None when none were given)."""
    if not pairs:
        return None
    out = {}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            raise UsageError(f"--scan wants NAME=PATH, got {pair!r}")
        if not Path(path).exists():
            raise UsageError(f"--scan {name}: {path} does not exist")
        out[name] = path
    return out


COMMANDS = {
    "bench": Command(add_bench, cmd_bench),
}
