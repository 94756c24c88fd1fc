"""Batch throughput: the pipelined engine (next case read and resampled, previous one written, in threads while a
case is on the network) against the same engine run case after case, on the same scans, in one process.

Usage::

    python benchmarks/batch_throughput.py SCANS_DIR WORK_DIR [--repeats 2] [--device cpu] [--json OUT.json]

``SCANS_DIR`` holds the scans (e.g. ``lungscreen sample-data DIR --n 8 --seed 4242 --size full``, then
``DIR/images``). Each run screens every scan into a fresh folder with the shipped bundle and settings
(``evaluator#pipelined`` True or False, nothing else differs); runs alternate (sequential, pipelined, ...).
Reported: wall seconds, process CPU seconds, scans per minute, and the ratio pipelined/sequential of the
medians. The reported nodules of both modes are compared (``benchmarks/compare_outputs.py`` rules: same ids,
centres within 0.01 mm).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any


def run_once(scans: Path, out: Path, *, pipelined: bool, device: str) -> dict[str, Any]:
    """Screen ``scans`` into ``out`` (removed first) with the bundle's engine; wall and CPU seconds."""
    from pipelines.bundle import load_workflow, unwrapped_errors
    from pipelines.screening.api import screen_overrides

    shutil.rmtree(out, ignore_errors=True)
    overrides = screen_overrides(scans, out, progress=False, settings={"device": device})
    overrides["evaluator#pipelined"] = pipelined
    workflow = load_workflow("inference.json", overrides=overrides)
    wall, cpu = time.perf_counter(), time.process_time()
    with unwrapped_errors():
        workflow.initialize()
        workflow.run()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    counts = workflow.parser.get_parsed_content("evaluator").stats
    return {"pipelined": pipelined, "wall_s": wall, "cpu_s": cpu, "scans": counts["succeeded"], **counts}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("scans", type=Path)
    ap.add_argument("work", type=Path)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)
    import torch

    runs = []
    for r in range(a.repeats):
        for pipelined in (False, True):
            row = run_once(a.scans, a.work / f"{'pipelined' if pipelined else 'sequential'}", pipelined=pipelined,
                           device=a.device)  # fmt: skip
            row["repeat"] = r
            runs.append(row)
            print(json.dumps(row), flush=True)
    summary: dict[str, Any] = {"torch_threads": torch.get_num_threads(), "runs": runs}
    for mode in (False, True):
        rows = [x for x in runs if x["pipelined"] is mode]
        name = "pipelined" if mode else "sequential"
        wall = statistics.median(x["wall_s"] for x in rows)
        summary[name] = {
            "median_wall_s": round(wall, 2),
            "median_cpu_s": round(statistics.median(x["cpu_s"] for x in rows), 2),
            "scans_per_minute": round(60 * rows[0]["scans"] / wall, 3),
        }
    summary["throughput_ratio"] = round(
        summary["pipelined"]["scans_per_minute"] / summary["sequential"]["scans_per_minute"], 3
    )
    print(json.dumps({k: v for k, v in summary.items() if k != "runs"}, indent=1))
    if a.json:
        a.json.write_text(json.dumps(summary, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
