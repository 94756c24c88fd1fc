"""PyTorch against the OpenVINO backend (pipelines.screening.backend) on one scan, in ONE process.

Usage (from the repository root; the optional extra installed: ``pip install 'lungscreen[cpu-fast]'``)::

    PYTHONPATH=$PWD python benchmarks/openvino_backend.py SCAN --weights monai_bundle/models/model.pt \
        --out results.json [--batches 12] [--sw-repeats 3] [--fine] [--screen 2] [--only-screen]

Measures wall seconds (``time.perf_counter``) and CPU seconds of the process (``time.process_time``: every
thread of both runtimes):

- ``export``: cold export (trace, convert, save to an empty cache), a read from the cache, and the compilation
  of each window batch size 1-4;
- ``batch``: one batch of ``sw_batch_size`` real windows (the first that hold lung on the scan's 1 mm grid),
  alternated ``--batches`` times after a warm-up: PyTorch and OpenVINO at PyTorch's thread count, and both with
  one thread (``*_1thread``: the runtimes' own work, no barriers or spinning); medians, ratios, the largest logit
  and probability differences;
- ``sliding_window``: whole sliding-window runs (the bundle's settings: lung gating, candidate mirroring) on
  the 1 mm grid (and the 0.7 mm grid with ``--fine``), alternated ``--sw-repeats`` times; medians, ratios, the
  largest probability difference and the voxels whose side of 0.5 and of the candidate threshold differs;
- ``screen`` (``--screen N``): ``screen()`` end to end, alternated N times, stage seconds, and whether
  ``nodules.csv`` and ``candidates.csv`` agree (ids, centres within 0.01 mm, scores within 1e-3).

Caution, measured 2026-12-07 (``benchmarks/results/2026-12-07-openvino-backend.md``): in this script the
network runs on the main thread, whose OpenMP team is the only one in the process, and libgomp then spin-waits
at full count. On a busy machine that multiplies PyTorch's time by 2-3 (wall and CPU) and makes OpenVINO look
1.5-1.9x faster; with ``OMP_WAIT_POLICY=PASSIVE``, with one thread each, on a quiet machine, and inside the
screening engine (whose prefetch thread owns a second team, which throttles the spinning) PyTorch was faster.
Read the ``*_1thread`` ratio and the ``screen`` ratio, or run with ``OMP_WAIT_POLICY=PASSIVE``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def _clock(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, float, float]:
    """``fn(*args, **kwargs)``, its wall seconds and the process's CPU seconds (all threads)."""
    w, c = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - w, time.process_time() - c


def _summary(walls: list[float], cpus: list[float]) -> dict[str, Any]:
    return {
        "wall_median_s": statistics.median(walls),
        "cpu_median_s": statistics.median(cpus),
        "wall_s": walls,
        "cpu_s": cpus,
    }


def _ratios(torch_side: dict[str, Any], ov_side: dict[str, Any]) -> dict[str, float]:
    return {
        "wall": torch_side["wall_median_s"] / ov_side["wall_median_s"],
        "cpu": torch_side["cpu_median_s"] / ov_side["cpu_median_s"],
    }


def components(scan: Path, weights: Path | None, work: Path) -> dict[str, Any]:
    """The bundle's preprocessing, network (weights loaded, CPU), inferer and settings, and the scan's case."""
    from pipelines.bundle import load_workflow
    from pipelines.imaging import discovery
    from pipelines.screening.inference import load_weights
    from pipelines.screening.settings import settings_overrides

    overrides = {
        "output_dir": str(work / "out"),
        "dataset_dir": str(scan),
        **settings_overrides({"device": "cpu"}),
    }
    wf = load_workflow("inference.json", overrides=overrides)
    get = wf.parser.get_parsed_content
    network = get("network_def").eval()
    if weights is not None:
        load_weights(network, weights)
    case = discovery.discover_cases(scan)[0]
    data = get("preprocessing")({"image": case, "case_id": case.case_id})
    fine = get("fine_preprocessing") if get("settings").fine_spacing_mm else None
    return {
        "settings": get("settings"),
        "network": network,
        "inferer": get("inferer"),
        "data": data,
        "fine": fine,
    }


def measure_export(network: torch.nn.Module, roi: tuple[int, ...]) -> dict[str, Any]:
    from pipelines.screening import backend as ib

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as cache:
        (model, entry), out["cold_wall_s"], out["cold_cpu_s"] = _clock(
            lambda: ib.load_or_export(network, example_shape=(2, 1, *roi), cache_root=Path(cache))
        )
        _, out["cached_wall_s"], out["cached_cpu_s"] = _clock(
            lambda: ib.load_or_export(network, example_shape=(2, 1, *roi), cache_root=Path(cache))
        )
        out["ir_bytes"] = sum(p.stat().st_size for p in Path(entry).iterdir())
    for b in (1, 2, 3, 4):
        _, w, c = _clock(ib.compile_for_shape, model, (b, 1, *roi))
        out[f"compile_b{b}_wall_s"], out[f"compile_b{b}_cpu_s"] = w, c
    return out


def lung_windows(data: dict[str, Any], roi: tuple[int, ...], n: int) -> torch.Tensor:
    """``[n, 1, *roi]``: the first ``n`` non-overlapping windows of the scan's grid that hold lung."""
    image, lungs = data["image"][0].float(), torch.as_tensor(data["lungs"]).reshape(data["image"].shape[1:])
    found = []
    rz, ry, rx = roi
    for z in range(0, image.shape[0] - rz + 1, rz):
        for y in range(0, image.shape[1] - ry + 1, ry):
            for x in range(0, image.shape[2] - rx + 1, rx):
                if lungs[z : z + rz, y : y + ry, x : x + rx].float().mean() > 0.2:
                    found.append(image[z : z + rz, y : y + ry, x : x + rx])
                if len(found) == n:
                    return torch.stack(found)[:, None].contiguous()
    raise ValueError(f"the scan has fewer than {n} windows with lung")


class _OneThread(torch.nn.Module):
    """``network`` with PyTorch limited to one thread for the call (its pure work: no barrier, no spinning)."""

    def __init__(self, network: torch.nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return self.network(x)
        finally:
            torch.set_num_threads(threads)


def measure_batch(
    runners: dict[str, torch.nn.Module],
    x: torch.Tensor,
    *,
    rounds: int,
    temperature: float,
    pair: tuple[str, str] = ("torch", "openvino"),
) -> dict[str, Any]:
    """Each runner on ``x``, all alternated ``rounds`` times after a warm-up. The two runners named in ``pair``
    are compared (``ratio_A_over_B``, the largest logit and probability differences); runners may hold
    ``*_1thread`` twins of both, whose ratio is reported too."""
    a, b = pair
    runs: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in runners}
    outs: dict[str, torch.Tensor] = {}
    with torch.inference_mode():
        for name, runner in runners.items():  # warm-up (and OpenVINO's compile)
            outs[name] = runner(x)
        for _ in range(rounds):
            for name, runner in runners.items():
                _, w, c = _clock(runner, x)
                runs[name][0].append(w)
                runs[name][1].append(c)
    result: dict[str, Any] = {name: _summary(*runs[name]) for name in runs}
    result[f"ratio_{a}_over_{b}"] = _ratios(result[a], result[b])
    if f"{a}_1thread" in result and f"{b}_1thread" in result:
        result[f"ratio_{a}_over_{b}_1thread"] = _ratios(result[f"{a}_1thread"], result[f"{b}_1thread"])
    result["max_abs_logit_diff"] = float((outs[a] - outs[b]).abs().max())
    p = [torch.sigmoid(outs[k] / temperature) for k in pair]
    result["max_abs_prob_diff"] = float((p[0] - p[1]).abs().max())
    result["shape"] = list(x.shape)
    return result


def measure_sliding_window(
    nets: dict[str, torch.nn.Module], comp: dict[str, Any], data: dict[str, Any], *, repeats: int
) -> dict[str, Any]:
    """Whole sliding-window runs of the two networks of ``nets`` (first over second), alternated ``repeats`` times."""
    from pipelines.screening.inference import sliding_window_probability

    settings = comp["settings"]
    a, b = list(nets)
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
    result[f"ratio_{a}_over_{b}"] = _ratios(result[a], result[b])
    pa, pb = probs[a], probs[b]
    result["max_abs_prob_diff"] = float((pa - pb).abs().max())
    for cut in (0.5, settings.candidate_threshold):
        result[f"voxels_flipped_at_{cut}"] = int(((pa > cut) != (pb > cut)).sum())
    result["grid_zyx"] = list(pa.shape)
    result["info"] = infos
    return result


def paired_screens(
    scan: Path, work: Path, variants: dict[str, dict[str, Any]], *, rounds: int, **kw: Any
) -> dict[str, Any]:
    """``screen()`` of ``scan`` under each of two ``variants`` (name -> extra ``screen()`` arguments), alternated
    ``rounds`` times; stage seconds from ``result.json``, the first-over-second ratio, and whether the last
    rounds' ``nodules.csv`` and ``candidates.csv`` agree (ids, centres within 0.01 mm, scores within 1e-3)."""
    from pipelines.screening.api import screen

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from compare_outputs import compare_table

    a, b = list(variants)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    for r in range(rounds):
        for name, extra in variants.items():
            out = work / f"{name}{r}"
            _, w, c = _clock(screen, scan, out, overwrite=True, **kw, **extra)
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
    result[f"ratio_{a}_over_{b}"] = _ratios(result[a], result[b])
    last = rounds - 1
    for table in ("nodules.csv", "candidates.csv"):
        ta = next((work / f"{a}{last}" / "cases").glob(f"*/{table}"))
        tb = next((work / f"{b}{last}" / "cases").glob(f"*/{table}"))
        ok, line = compare_table(ta, tb, centre_mm=0.01, score=1e-3)
        result[f"same_{table}"] = {"ok": ok, "detail": line}
    return result


def measure_screen(scan: Path, weights: Path | None, work: Path, *, rounds: int) -> dict[str, Any]:
    """``screen()`` of the scan end to end, the backends alternated; stage seconds from ``result.json``.

    The OpenVINO export is cached (in ``work``) before the first timed run, as after a first use.
    """
    from pipelines.screening import backend as ib
    from pipelines.screening.api import screen

    os.environ[ib.CACHE_ENV] = str(work / "ovcache")
    extra: dict[str, Any] = {"weights": str(weights)} if weights else {}
    kw: dict[str, Any] = {"device": "cpu", "progress": False, "report": False, **extra}
    screen(scan, work / "warm", backend="openvino", **kw)  # exports into the cache
    variants = {"torch": {"backend": "torch"}, "openvino": {"backend": "openvino"}}
    return paired_screens(scan, work, variants, rounds=rounds, **kw)


def machine_header() -> dict[str, Any]:
    """CPU count, load average, platform and PyTorch version at the start of a benchmark."""
    return {
        "cpus": os.cpu_count(),
        "loadavg_start": os.getloadavg(),
        "platform": platform.platform(),
        "torch": torch.__version__,
    }


def paired_arguments(doc: str | None) -> argparse.ArgumentParser:
    """The command line both paired benchmarks share: the scan, weights, output and how many rounds of each part."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scan", type=Path)
    ap.add_argument("--weights", type=Path, default=None)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--batches", type=int, default=12)
    ap.add_argument("--sw-repeats", type=int, default=3)
    ap.add_argument("--fine", action="store_true", help="also the 0.7 mm grid")
    ap.add_argument("--screen", type=int, default=0, help="also this many end-to-end screen() rounds")
    return ap


def main(argv: list[str] | None = None) -> int:
    from pipelines.screening import backend as ib
    from pipelines.screening.multiscale import fine_case

    ap = paired_arguments(__doc__)
    ap.add_argument("--only-screen", action="store_true", help="skip the export, batch and window parts")
    args = ap.parse_args(argv)
    ov = ib.import_openvino()
    if ov is None:
        print("openvino is not installed: pip install 'lungscreen[cpu-fast]'", file=sys.stderr)
        return 2
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": {
            **machine_header(),
            "openvino": ov.__version__,
            "torch_threads": torch.get_num_threads(),
            "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "(unset)"),
        },
        "scan": str(args.scan),
        "weights": str(args.weights),
    }
    if args.screen:
        with tempfile.TemporaryDirectory() as work:
            result["screen"] = measure_screen(args.scan, args.weights, Path(work), rounds=args.screen)
        print(json.dumps({"screen": result["screen"]["ratio_torch_over_openvino"]}), flush=True)
    if args.only_screen:
        return _write(args.out, result)
    with tempfile.TemporaryDirectory() as work:
        comp = components(args.scan, args.weights, Path(work))
    settings, net = comp["settings"], comp["network"]
    roi = tuple(settings.roi_size)
    result["export"] = measure_export(net, roi)
    with tempfile.TemporaryDirectory() as cache:
        ov_net = ib.OpenVinoNetwork(net, example_shape=(2, 1, *roi), cache_root=cache)
        ov_1 = ib.OpenVinoNetwork(net, example_shape=(2, 1, *roi), cache_root=cache, threads=1)
        x = lung_windows(comp["data"], roi, settings.sw_batch_size)
        runners = {
            "torch": net,
            "openvino": ov_net,
            "torch_1thread": _OneThread(net),
            "openvino_1thread": ov_1,
        }
        result["batch"] = measure_batch(
            runners, x, rounds=args.batches, temperature=settings.logit_temperature
        )
        ratios = {k: v for k, v in result["batch"].items() if k.startswith("ratio")}
        print(json.dumps({"batch": ratios}), flush=True)
        grids = {"1mm": comp["data"]}
        if args.fine and comp["fine"] is not None:
            grids["fine"] = fine_case(comp["data"], comp["fine"])
        result["sliding_window"] = {}
        for name, data in grids.items():
            result["sliding_window"][name] = measure_sliding_window(
                {"torch": net, "openvino": ov_net}, comp, data, repeats=args.sw_repeats
            )
            print(json.dumps({name: result["sliding_window"][name]["ratio_torch_over_openvino"]}), flush=True)
        result["compile_s"] = {str(k): v for k, v in ov_net.compile_seconds.items()}
    return _write(args.out, result)


def _write(out: Path, result: dict[str, Any]) -> int:
    result["machine"]["loadavg_end"] = os.getloadavg()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(json.dumps({k: v for k, v in result.items() if k in ("export", "machine")}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
