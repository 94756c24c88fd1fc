"""PyTorch's own layers against ``cpu_layers`` (pipelines.screening.cpu_layers) on one scan, in ONE process.

Usage (from the repository root)::

    PYTHONPATH=$PWD python benchmarks/cpu_layers.py SCAN --weights monai_bundle/models/model.pt \
        --out results.json [--batches 12] [--sw-repeats 3] [--fine] [--screen 2]

Both networks hold the same weights; one has its single-channel layers switched (``use_cpu_layers``). Measures
wall seconds and the process's CPU seconds, each pair alternated after a warm-up:

- ``batch``: one batch of ``sw_batch_size`` real windows (the first that hold lung), ``--batches`` rounds, at
  PyTorch's thread count and with one thread (``*_1thread``); medians, ratios (plain / switched: > 1 is faster),
  the largest logit and probability differences;
- ``sliding_window``: the bundle's whole sliding window on the 1 mm grid (and the 0.7 mm grid with ``--fine``);
  medians, ratios, the largest probability difference and the voxels whose side of 0.5 and of the candidate
  threshold differs;
- ``screen`` (``--screen N``): ``screen()`` end to end with ``cpu_layers`` false and true, alternated N times,
  and whether ``nodules.csv`` and ``candidates.csv`` agree (ids, centres within 0.01 mm, scores within 1e-3).

Read ratios from one run only (both sides under the same load); on a busy machine the CPU-second ratio is the
steadier one (see ``benchmarks/openvino_backend.py`` on OpenMP spinning when the main thread runs the network).
"""

from __future__ import annotations

import copy
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from openvino_backend import (  # noqa: E402
    _OneThread,
    components,
    lung_windows,
    machine_header,
    measure_batch,
    measure_sliding_window,
    paired_arguments,
    paired_screens,
)

PLAIN, FAST = "plain", "cpu_layers"


def measure_screen(scan: Path, weights: Path | None, work: Path, *, rounds: int) -> dict[str, Any]:
    """``screen()`` end to end with ``cpu_layers`` off and on, alternated; stage seconds from ``result.json``."""
    extra: dict[str, Any] = {"weights": str(weights)} if weights else {}
    kw: dict[str, Any] = {"device": "cpu", "progress": False, "report": False, "backend": "torch", **extra}
    variants = {PLAIN: {"cpu_layers": False}, FAST: {"cpu_layers": True}}
    return paired_screens(scan, work, variants, rounds=rounds, **kw)


def main(argv: list[str] | None = None) -> int:
    from pipelines.screening.cpu_layers import use_cpu_layers
    from pipelines.screening.multiscale import fine_case

    ap = paired_arguments(__doc__)
    args = ap.parse_args(argv)
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": {
            **machine_header(),
            "processor": platform.processor(),
            "torch_threads": torch.get_num_threads(),
        },
        "scan": str(args.scan),
        "weights": str(args.weights),
    }
    with tempfile.TemporaryDirectory() as work:
        comp = components(args.scan, args.weights, Path(work))
    settings, plain = comp["settings"], comp["network"]
    fast = copy.deepcopy(plain)
    result["switched_layers"] = use_cpu_layers(fast)
    x = lung_windows(comp["data"], tuple(settings.roi_size), settings.sw_batch_size)
    runners = {
        PLAIN: plain,
        FAST: fast,
        PLAIN + "_1thread": _OneThread(plain),
        FAST + "_1thread": _OneThread(fast),
    }
    result["batch"] = measure_batch(
        runners, x, rounds=args.batches, temperature=settings.logit_temperature, pair=(PLAIN, FAST)
    )
    print(json.dumps({"batch": result["batch"]["ratio_plain_over_cpu_layers"]}), flush=True)
    grids = {"1mm": comp["data"]}
    if args.fine and comp["fine"] is not None:
        grids["fine"] = fine_case(comp["data"], comp["fine"])
    result["sliding_window"] = {}
    for name, data in grids.items():
        sw = measure_sliding_window({PLAIN: plain, FAST: fast}, comp, data, repeats=args.sw_repeats)
        result["sliding_window"][name] = sw
        print(json.dumps({name: sw["ratio_plain_over_cpu_layers"]}), flush=True)
    if args.screen:
        with tempfile.TemporaryDirectory() as work:
            result["screen"] = measure_screen(args.scan, args.weights, Path(work), rounds=args.screen)
        print(json.dumps({"screen": result["screen"]["ratio_plain_over_cpu_layers"]}), flush=True)
    result["machine"]["loadavg_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
