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

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from openvino_backend import _clock, _OneThread, _ratios, _summary, components, lung_windows  # noqa: E402

PLAIN, FAST = "plain", "cpu_layers"


def _ratio(result: dict[str, Any]) -> dict[str, float]:
    return _ratios(result[PLAIN], result[FAST])


def measure_batch(
    runners: dict[str, torch.nn.Module], x: torch.Tensor, *, rounds: int, temperature: float
) -> dict[str, Any]:
    runs: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in runners}
    outs: dict[str, torch.Tensor] = {}
    with torch.inference_mode():
        for name, runner in runners.items():
            outs[name] = runner(x)
        for _ in range(rounds):
            for name, runner in runners.items():
                _, w, c = _clock(runner, x)
                runs[name][0].append(w)
                runs[name][1].append(c)
    result: dict[str, Any] = {name: _summary(*runs[name]) for name in runs}
    result["ratio_plain_over_cpu_layers"] = _ratio(result)
    result["ratio_plain_over_cpu_layers_1thread"] = _ratios(
        result[PLAIN + "_1thread"], result[FAST + "_1thread"]
    )
    result["max_abs_logit_diff"] = float((outs[PLAIN] - outs[FAST]).abs().max())
    p = [torch.sigmoid(outs[k] / temperature) for k in (PLAIN, FAST)]
    result["max_abs_prob_diff"] = float((p[0] - p[1]).abs().max())
    result["shape"] = list(x.shape)
    return result


def measure_sliding_window(
    nets: dict[str, torch.nn.Module], comp: dict[str, Any], data: dict[str, Any], *, repeats: int
) -> dict[str, Any]:
    from pipelines.screening.inference import sliding_window_probability

    settings = comp["settings"]
    runs: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in nets}
    probs: dict[str, torch.Tensor] = {}
    infos: dict[str, Any] = {}
    for _ in range(repeats):
        for name, runner in nets.items():
            (prob, info), w, c = _clock(
                sliding_window_probability,
                data["image"],
                data.get("lungs"),
                network=runner,
                inferer=comp["inferer"],
                settings=settings,
                device=torch.device("cpu"),
            )
            runs[name][0].append(w)
            runs[name][1].append(c)
            probs[name], infos[name] = prob, info
    result: dict[str, Any] = {name: _summary(*runs[name]) for name in runs}
    result["ratio_plain_over_cpu_layers"] = _ratio(result)
    a, b = probs[PLAIN], probs[FAST]
    result["max_abs_prob_diff"] = float((a - b).abs().max())
    for cut in (0.5, settings.candidate_threshold):
        result[f"voxels_flipped_at_{cut}"] = int(((a > cut) != (b > cut)).sum())
    result["grid_zyx"] = list(a.shape)
    result["info"] = infos
    return result


def measure_screen(scan: Path, weights: Path | None, work: Path, *, rounds: int) -> dict[str, Any]:
    """``screen()`` end to end with ``cpu_layers`` off and on, alternated; stage seconds from ``result.json``."""
    from compare_outputs import compare_table

    from pipelines.screening.api import screen

    extra: dict[str, Any] = {"weights": str(weights)} if weights else {}
    kw: dict[str, Any] = {"device": "cpu", "progress": False, "report": False, "backend": "torch", **extra}
    runs: dict[str, list[dict[str, Any]]] = {PLAIN: [], FAST: []}
    for r in range(rounds):
        for name in runs:
            out = work / f"{name}{r}"
            _, w, c = _clock(screen, scan, out, cpu_layers=name == FAST, overwrite=True, **kw)
            case = next(p for p in (out / "cases").iterdir() if (p / "result.json").is_file())
            summary = json.loads((case / "result.json").read_text())["summary"]
            stages = {k: v for k, v in summary.items() if k.startswith("seconds_")}
            runs[name].append({"wall_s": w, "cpu_s": c, **stages, "nodule_count": summary["nodule_count"]})
    result: dict[str, Any] = {"runs": runs}
    for name, rows in runs.items():
        result[name] = _summary([r["wall_s"] for r in rows], [r["cpu_s"] for r in rows])
        for key in rows[0]:
            if key.startswith("seconds_"):
                result[name][key + "_median"] = statistics.median(r[key] for r in rows)
    result["ratio_plain_over_cpu_layers"] = _ratio(result)
    last = rounds - 1
    for table in ("nodules.csv", "candidates.csv"):
        a = next((work / f"{PLAIN}{last}" / "cases").glob(f"*/{table}"))
        b = next((work / f"{FAST}{last}" / "cases").glob(f"*/{table}"))
        ok, line = compare_table(a, b, centre_mm=0.01, score=1e-3)
        result[f"same_{table}"] = {"ok": ok, "detail": line}
    return result


def main(argv: list[str] | None = None) -> int:
    from pipelines.screening.cpu_layers import use_cpu_layers
    from pipelines.screening.multiscale import fine_case

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scan", type=Path)
    ap.add_argument("--weights", type=Path, default=None)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--batches", type=int, default=12)
    ap.add_argument("--sw-repeats", type=int, default=3)
    ap.add_argument("--fine", action="store_true", help="also the 0.7 mm grid")
    ap.add_argument("--screen", type=int, default=0, help="also this many end-to-end screen() rounds")
    args = ap.parse_args(argv)
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_start": os.getloadavg(),
            "platform": platform.platform(),
            "processor": platform.processor(),
            "torch": torch.__version__,
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
    result["batch"] = measure_batch(runners, x, rounds=args.batches, temperature=settings.logit_temperature)
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
