"""One benchmark measurement, run in its own process so its peak memory is its own.

``python -m pipelines.bench_worker TASK SPEC.json RESULT.json`` runs one task of :data:`TASKS` on the scan
named in ``SPEC.json`` and writes timings (wall seconds), the process's CPU seconds, its peak resident memory
(``getrusage(RUSAGE_SELF).ru_maxrss``, bytes) and, on CUDA, the peak GPU memory to ``RESULT.json``.
:mod:`pipelines.bench` builds the specs and reads the results; nothing here knows about other processes.

Spec keys: ``case`` (scan path), ``device``, ``weights``, ``classifier_weights`` (paths or null), ``settings``
(:class:`pipelines.settings.ScreeningSettings` overrides), ``work`` (scratch folder for outputs) and
task-specific keys (``sw_batch_sizes``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

Spec = dict[str, Any]


class StageClock:
    """Wall and CPU seconds per named stage; ``with clock("read"): ...`` adds to ``read``."""

    def __init__(self, device: torch.device | None = None) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self.peak_rss_after: dict[str, float] = {}
        self.device = device

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        self._sync()
        w, c = time.perf_counter(), time.process_time()
        yield
        self._sync()
        self.wall[name] = self.wall.get(name, 0.0) + time.perf_counter() - w
        self.cpu[name] = self.cpu.get(name, 0.0) + time.process_time() - c
        self.peak_rss_after[name] = float(peak_memory()["peak_rss_bytes"] or 0.0)

    def _sync(self) -> None:
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def peak_memory(device: torch.device | None = None) -> dict[str, float | None]:
    """Peak resident memory of this process (bytes; Linux reports KiB) and peak CUDA memory (bytes or None)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_bytes = float(rss if sys.platform == "darwin" else rss * 1024)
    gpu = None
    if device is not None and device.type == "cuda":
        gpu = float(torch.cuda.max_memory_allocated(device))
    return {"peak_rss_bytes": rss_bytes, "peak_gpu_bytes": gpu}


# --------------------------------------------------------------------------------------------- our path
def _components(spec: Spec) -> dict[str, Any]:
    """The bundle's own components (preprocessing, network, inferer, classifier, settings) for ``spec``."""
    from pipelines.bundle import load_workflow, settings_overrides
    from pipelines.inference import load_weights, select_device

    overrides = {
        "output_dir": Path(spec["work"]) / "out",
        "dataset_dir": Path(spec["case"]),  # a Path: the config parser never reads it as an expression
        **settings_overrides({**spec.get("settings", {}), "device": spec["device"]}),
    }
    wf = load_workflow("inference.json", overrides=overrides)
    get = wf.parser.get_parsed_content
    settings = get("settings")
    device = select_device(settings.device)
    network = get("network_def").to(device).eval()
    if spec.get("weights"):
        load_weights(network, spec["weights"])
    classifier = None
    if spec.get("classifier_weights"):
        classifier = load_weights(get("classifier_def"), spec["classifier_weights"]).to(device).eval()
    return {
        "settings": settings,
        "device": device,
        "preprocessing": get("preprocessing"),
        "network": network,
        "inferer": get("inferer"),
        "classifier": classifier,
        "fine_preprocessing": get("fine_preprocessing") if settings.fine_spacing_mm else None,
    }


_STAGE_OF_TRANSFORM = {"LoadScand": "reorient", "LungMaskd": "lung_mask"}


@torch.no_grad()
def task_stages(spec: Spec) -> dict[str, Any]:
    """Our path stage by stage, with the bundle's own transforms and functions, in the engine's order."""
    from pipelines import io
    from pipelines.inference import sliding_window_probability
    from pipelines.multiscale import fine_case
    from pipelines.postprocess import analyse_case, classify_candidates

    comp = _components(spec)
    settings, device = comp["settings"], comp["device"]
    clock = StageClock(device)
    case = io.discover_cases(spec["case"])[0]
    with clock("read"):
        image = io.read_image(case.path)
    data: dict[str, Any] = {
        "image": io.CaseInput(case.case_id, case.path, image=image),
        "case_id": case.case_id,
    }
    for t in comp["preprocessing"].transforms:
        with clock(_STAGE_OF_TRANSFORM.get(type(t).__name__, "resample")):
            data = t(data)

    def probability(d: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        return sliding_window_probability(
            d["image"],
            d.get("lungs"),
            network=comp["network"],
            inferer=comp["inferer"],
            settings=settings,
            device=device,
        )

    with clock("sliding_window"):
        prob, info = probability(data)
    fine = None
    if comp["fine_preprocessing"] is not None:
        with clock("sliding_window_fine"):
            fine_data = fine_case(data, comp["fine_preprocessing"])
            fine = (fine_data, probability(fine_data)[0])
    with clock("postprocess"):
        result = analyse_case(data, prob, settings=settings, classifier=None, device=device, fine=fine)
    with clock("classifier"):
        classify_candidates(
            result.candidates, data["image"], data["geometry"], classifier=comp["classifier"], device=device
        )
    _time_writes(clock, Path(spec["work"]), case, data, result, settings)
    return {
        "stages": clock.wall,
        "stages_cpu": clock.cpu,
        "peak_rss_after_stage": clock.peak_rss_after,
        "windows_run": info["windows_run"],
        "windows_skipped": info["windows_skipped"],
        "windows_mirrored": info.get("windows_mirrored", 0),
        "mirror": {"axes": settings.mirror_axes, "scope": settings.mirror_scope},
        "network_shape_zyx": list(data["image"].shape[1:]),
        "candidates": len(result.candidates),
    }


def _time_writes(
    clock: StageClock, out: Path, case: Any, data: dict[str, Any], result: Any, settings: Any
) -> None:
    """Masks and tables as ``write_case`` writes them (report off), then the HTML report on its own."""
    from pipelines.case_writer import _write_report, write_case

    no_report = dataclasses.replace(settings, report=False)
    with clock("write"):
        write_case(
            output_dir=out / "stages",
            case=case,
            data=data,
            result=result,
            settings=no_report,
            timings={},
            bundle_version="bench",
            write_start=time.perf_counter(),
        )
    if settings.report:
        folder = out / "stages" / "cases" / case.case_id
        meta = json.loads((folder / "nodules.json").read_text())
        with clock("report"):
            _write_report(folder, case, data, result, meta["lung_rads"], meta)  # as write_case assigned it


def task_screen(spec: Spec) -> dict[str, Any]:
    """The whole screening through :func:`pipelines.screen.screen` (read to report written), timed once.

    The Python imports ``screen()`` needs are done (and timed as ``import_seconds``) before the clock starts, as
    the baseline imports MONAI before its clock: both clocks start at the scan, neither at the interpreter.
    Parsing the bundle, building the networks and loading the weights stay inside ours (the baseline's network
    is built before its clock), so the comparison leans against us, not for us.
    """
    t = time.perf_counter()
    import pipelines.bundle
    import pipelines.case_writer
    import pipelines.engine
    import pipelines.postprocess
    import pipelines.report  # noqa: F401  (imports only: their cost is not screening)
    from pipelines.screen import screen

    import_seconds = time.perf_counter() - t
    out = Path(spec["work"]) / "screen"
    t = time.perf_counter()
    c = time.process_time()
    res = screen(
        str(spec["case"]),
        out,
        weights=spec.get("weights") or "",
        classifier_weights=spec.get("classifier_weights") or "",
        overwrite=True,
        progress=False,
        device=spec["device"],
        **spec.get("settings", {}),
    )
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    if res.succeeded != 1:
        raise RuntimeError(f"screen() did not succeed on {spec['case']}: {res}")
    record = json.loads(next((out / "cases").glob("*/result.json")).read_text())
    return {
        "seconds": wall,
        "cpu_seconds": cpu,
        "import_seconds": import_seconds,
        "engine_timings": {k: v for k, v in record["summary"].items() if k.startswith("seconds_")},
        "detections": record["candidates"],
        "info": record.get("info", {}),
    }


def task_sw_sweep(spec: Spec) -> dict[str, Any]:
    """Sliding-window seconds for each ``sw_batch_size`` (gated), and once without lung gating."""
    from pipelines import io
    from pipelines.inference import sliding_window_probability

    comp = _components(spec)
    device = comp["device"]
    case = io.discover_cases(spec["case"])[0]
    data = comp["preprocessing"]({"image": case, "case_id": case.case_id})
    runs: list[dict[str, Any]] = []
    configs = [(b, True) for b in spec.get("sw_batch_sizes", (2, 4, 8))] + [
        (comp["settings"].sw_batch_size, False)
    ]
    for batch, gated in configs:
        settings = dataclasses.replace(comp["settings"], sw_batch_size=batch, skip_empty_windows=gated)
        comp["inferer"].sw_batch_size = batch
        clock = StageClock(device)
        with torch.no_grad(), clock("sw"):
            _, info = sliding_window_probability(
                data["image"],
                data["lungs"],
                network=comp["network"],
                inferer=comp["inferer"],
                settings=settings,
                device=device,
            )
        runs.append(
            {"sw_batch_size": batch, "skip_empty_windows": gated, "seconds": clock.wall["sw"], **info}
        )
    return {"runs": runs, "network_shape_zyx": list(data["image"].shape[1:])}


def task_io_ops(spec: Spec) -> dict[str, Any]:
    """Readers, resamplers and writers compared on the scan (:mod:`pipelines.bench_ops`)."""
    from pipelines import io
    from pipelines.bench_ops import run_io_ops

    return run_io_ops(Path(io.discover_cases(spec["case"])[0].path), Path(spec["work"]))


def task_baseline(spec: Spec) -> dict[str, Any]:
    t = time.perf_counter()
    # what run_baseline imports before its clock, timed here as ours are
    import monai.inferers  # noqa: F401
    import monai.transforms  # noqa: F401

    import pipelines.bundle  # noqa: F401
    from pipelines.bench_baseline import run_baseline

    import_seconds = time.perf_counter() - t
    return {**run_baseline(spec), "import_seconds": import_seconds}


TASKS: dict[str, Callable[[Spec], dict[str, Any]]] = {
    "stages": task_stages,
    "screen": task_screen,
    "sw_sweep": task_sw_sweep,
    "io_ops": task_io_ops,
    "baseline": task_baseline,
}


def run_task(task: str, spec: Spec) -> dict[str, Any]:
    """Run ``task`` on ``spec`` in this process; adds peak memory and the load average around it."""
    device = torch.device(
        spec["device"] if spec["device"] != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    load_before = os.getloadavg()[0]
    out = TASKS[task](spec)
    out.update(peak_memory(device))
    out["loadavg_1min"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    out["torch_threads"] = torch.get_num_threads()
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    task, spec_path, result_path = args
    spec = json.loads(Path(spec_path).read_text())
    result = run_task(task, spec)
    Path(result_path).write_text(json.dumps(result, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
