"""The 0.7 mm grid with and without mirroring (setting ``fine_mirror``), ``screen()`` end to end, in ONE process.

Usage (from the repository root)::

    PYTHONPATH=$PWD python benchmarks/fine_mirror.py SCAN --weights monai_bundle/models/model.pt \
        --out results.json [--screen 3]

Runs ``screen()`` of SCAN with ``fine_mirror`` true and false, alternated ``--screen`` times after a warm-up
(:func:`openvino_backend.paired_screens`): wall and CPU seconds, stage seconds, the ratio (mirrored over
unmirrored: > 1 means the unmirrored finer grid is faster) and whether the last rounds' ``nodules.csv`` and
``candidates.csv`` agree. The quality of the choice is a validation question, not this benchmark's
(``benchmarks/results/``). Read ratios from one run only; on a busy machine the CPU-second ratio is the steadier.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from openvino_backend import _write, machine_header, paired_arguments, paired_screens  # noqa: E402


def measure_screen(scan: Path, weights: Path | None, work: Path, *, rounds: int) -> dict[str, Any]:
    """``screen()`` end to end with the finer grid mirrored and unmirrored, alternated."""
    from pipelines.screening.api import screen

    extra: dict[str, Any] = {"weights": str(weights)} if weights else {}
    kw: dict[str, Any] = {"device": "cpu", "progress": False, "report": False, **extra}
    screen(scan, work / "warm", **kw)  # imports, bundle parse and first-call allocations outside the timing
    variants = {"mirrored": {"fine_mirror": True}, "unmirrored": {"fine_mirror": False}}
    return paired_screens(scan, work, variants, rounds=rounds, **kw)


def main(argv: list[str] | None = None) -> int:
    ap = paired_arguments(__doc__)
    args = ap.parse_args(argv)
    result: dict[str, Any] = {"scan": str(args.scan), "machine": machine_header()}
    with tempfile.TemporaryDirectory() as work:
        result["screen"] = measure_screen(args.scan, args.weights, Path(work), rounds=max(args.screen, 1))
    print(json.dumps({"screen": result["screen"]["ratio_mirrored_over_unmirrored"]}), flush=True)
    return _write(args.out, result)


if __name__ == "__main__":
    raise SystemExit(main())
