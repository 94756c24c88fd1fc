"""GPU benchmark helpers: the sliding-window memory-bandwidth floor and sliding-window variants.

Memory-bandwidth floor of the sliding window (what ``benchmarks/gpu_bench.sh`` reports)::

    bytes_per_window = sum over leaf modules m of (numel(input_m) + numel(output_m)) * bytes_per_element
                       + parameter bytes
    floor_seconds    = windows_run * bytes_per_window / bandwidth          (H200: 4.8e12 B/s)

Leaf modules are the convolutions, normalisations, activations and dropouts that eager PyTorch runs one kernel
each for: every one reads its input from and writes its output to GPU memory at least once. Element counts are
measured with forward hooks on one ``roi_size`` window (batch 1); ``bytes_per_element`` is 2 under bf16 autocast
(InstanceNorm runs in fp32 under autocast, so the true traffic is higher: the floor is a lower bound).
The residual additions and the stitching buffer (``2 x 4 B`` per output voxel per window, read-modify-write)
are added too. A fully fused network would move less; this is the floor for the eager network we run.

Usage::

    python -m pipelines.bench.gpu floor --bench-json RESULT.json --out floor.json
    python -m pipelines.bench.gpu variants --case SCAN --out variants.json --device cuda
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

H200_BYTES_PER_S = 4.8e12


def window_traffic(
    network: torch.nn.Module, roi_size: tuple[int, int, int], *, bytes_per_element: int = 2
) -> dict[str, float]:
    """Bytes one eager forward pass of ``network`` on one window moves at least (see the module docstring)."""
    elems = {"in": 0, "out": 0}

    def hook(_m: torch.nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        elems["in"] += sum(t.numel() for t in inputs if isinstance(t, torch.Tensor))
        elems["out"] += output.numel() if isinstance(output, torch.Tensor) else 0

    leaves = [m for m in network.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        with torch.inference_mode():
            network.eval()(torch.zeros(1, 1, *roi_size))
    finally:
        for h in handles:
            h.remove()
    params = sum(p.numel() for p in network.parameters())
    voxels = roi_size[0] * roi_size[1] * roi_size[2]
    activation_bytes = (elems["in"] + elems["out"]) * bytes_per_element
    stitch_bytes = voxels * 4 * 2 * 2  # output and weight-map buffers, fp32, read + write
    return {
        "leaf_modules": len(leaves),
        "activation_elements": float(elems["in"] + elems["out"]),
        "activation_bytes": float(activation_bytes),
        "parameter_bytes": float(params * bytes_per_element),
        "stitch_bytes": float(stitch_bytes),
        "bytes_per_window": float(activation_bytes + params * bytes_per_element + stitch_bytes),
        "bytes_per_element": float(bytes_per_element),
    }


def bandwidth_floor(
    bench: dict[str, Any],
    network: torch.nn.Module,
    *,
    roi_size: tuple[int, int, int] = (96, 96, 96),
    bandwidth: float = H200_BYTES_PER_S,
) -> dict[str, Any]:
    """Floor vs measured sliding-window seconds for every scan of a :func:`pipelines.bench.run.run_bench` result."""
    out: dict[str, Any] = {
        "bandwidth_bytes_per_s": bandwidth,
        "formula": __doc__.split("::")[1].split("Leaf")[0].strip(),
        "scans": {},
    }
    for name, entry in bench["scans"].items():
        st = entry.get("stages", {})
        if "windows_run" not in st:
            continue
        roi = tuple(int(v) for v in bench.get("settings_overrides", {}).get("roi_size", roi_size))
        traffic = window_traffic(network, roi)  # type: ignore[arg-type]
        floor = st["windows_run"] * traffic["bytes_per_window"] / bandwidth
        measured = st["stages"]["sliding_window"]
        out["scans"][name] = {
            **traffic,
            "windows_run": st["windows_run"],
            "floor_seconds": floor,
            "measured_seconds": measured,
            "measured_over_floor": measured / floor if floor > 0 else None,
        }
    return out


def _network() -> tuple[torch.nn.Module, tuple[int, int, int]]:
    """The bundle's network (random weights: traffic does not depend on them) and its ``roi_size``."""
    from pipelines.bundle import load_workflow

    parsed = load_workflow("inference.json", overrides={"settings#device": "cpu"}).parser
    roi = parsed.get_parsed_content("settings").roi_size
    return parsed.get_parsed_content("network_def", instantiate=True), roi


def run_variants(case: str, *, device: str, weights: str | None) -> list[dict[str, Any]]:
    """Sliding window on one scan under precision / memory-format / compile / batch-size variants."""
    import dataclasses

    from pipelines.bench.spec import screener
    from pipelines.imaging import discovery
    from pipelines.screening.inference import sliding_window_probability

    scr = screener({"case": case, "device": device, "weights": weights, "settings": {}, "work": "."})
    data = scr.preprocessing({"image": discovery.discover_cases(case)[0], "case_id": "x"})
    # (amp, sw_batch_size, channels_last, compile)
    variants = [("bfloat16", b, False, False) for b in (2, 4, 8, 16, 32)]
    variants += [
        ("float32", 8, False, False),
        ("float16", 8, False, False),
        ("bfloat16", 8, True, False),
        ("bfloat16", 8, False, True),
    ]
    rows = []
    for amp, batch, channels_last, compile_network in variants:
        v = {"amp": amp, "sw_batch_size": batch, "channels_last": channels_last, "compile": compile_network}
        settings = dataclasses.replace(scr.settings, amp=amp, sw_batch_size=batch)
        scr.inferer.sw_batch_size = batch
        times = []
        for _ in range(3):  # the first run of a variant includes cuDNN autotuning / compilation
            _sync()
            t = time.perf_counter()
            prob, info = sliding_window_probability(
                data["image"],
                data["lungs"],
                network=scr.network,
                inferer=scr.inferer,
                settings=settings,
                device=scr.device,
                channels_last=channels_last,
                compile_network=compile_network,
            )
            _sync()
            times.append(time.perf_counter() - t)
        if channels_last:
            scr.network.to(memory_format=torch.contiguous_format)
        rows.append(
            {
                **v,
                "first_seconds": times[0],
                "best_seconds": min(times[1:]),
                "windows_run": info["windows_run"],
            }
        )
    return rows


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipelines.bench.gpu")
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("floor")
    f.add_argument("--bench-json", type=Path, required=True)
    f.add_argument("--out", type=Path, required=True)
    f.add_argument("--bandwidth", type=float, default=H200_BYTES_PER_S)
    v = sub.add_parser("variants")
    v.add_argument("--case", required=True)
    v.add_argument("--out", type=Path, required=True)
    v.add_argument("--device", default="cuda")
    v.add_argument("--weights", default=None)
    a = p.parse_args(sys.argv[1:] if argv is None else argv)
    if a.cmd == "floor":
        net, roi = _network()
        result: Any = bandwidth_floor(
            json.loads(a.bench_json.read_text()), net, roi_size=roi, bandwidth=a.bandwidth
        )
    else:
        result = run_variants(a.case, device=a.device, weights=a.weights)
    a.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
