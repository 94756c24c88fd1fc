"""One benchmark measurement, run in its own process so its peak memory is its own.

``python -m pipelines.bench.worker TASK SPEC.json RESULT.json`` runs one task of :data:`TASKS` on the scan
named in ``SPEC.json`` and writes timings (wall seconds), the process's CPU seconds, its peak resident memory
(``getrusage(RUSAGE_SELF).ru_maxrss``, bytes) and, on CUDA, the peak GPU memory to ``RESULT.json``.
:mod:`pipelines.bench.run` builds the specs and reads the results; nothing here knows about other processes.

Spec keys: ``case`` (scan path), ``device``, ``weights``, ``classifier_weights`` (paths or null), ``settings``
(:class:`pipelines.screening.settings.ScreeningSettings` overrides), ``work`` (scratch folder for outputs) and
task-specific keys (``sw_batch_sizes``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from pipelines.bench.clock import StageClock, peak_memory
from pipelines.bench.spec import Spec, screener

_STAGE_OF_TRANSFORM = {"LoadScand": "reorient", "LungMaskd": "lung_mask"}


@torch.no_grad()
def task_stages(spec: Spec) -> dict[str, Any]:
    """Our path stage by stage: the public stages of the screening engine, each timed."""
    from pipelines.imaging import discovery, io
    from pipelines.screening.process import settle_imports
    from pipelines.screening.scoring import classify_candidates

    scr = screener(spec)
    settle_imports()  # as the command line does
    settings, device = scr.settings, scr.device
    clock = StageClock(device)
    case = discovery.discover_cases(spec["case"])[0]
    with clock("read"):
        image = io.read_image(case.path)
    case = discovery.CaseInput(case.case_id, case.path, image=image)
    data = scr.preprocess(case, timer=lambda name: clock(_STAGE_OF_TRANSFORM.get(name, "resample")))
    prediction = scr.predict(data, timer=clock)
    with clock("postprocess"):
        result = scr.analyse(data, prediction, classify=False)
    with clock("classifier"):
        classify_candidates(
            result.candidates, data["image"], data["geometry"], classifier=scr.classifier, device=device
        )
    _time_writes(clock, Path(spec["work"]), case, data, result, scr)
    info = prediction.info
    return {
        "stages": clock.wall,
        "stages_cpu": clock.cpu,
        "peak_rss_after_stage": clock.peak_rss_after,
        "windows_run": info["windows_run"],
        "windows_skipped": info["windows_skipped"],
        "windows_mirrored": info.get("windows_mirrored", 0),
        "mirror": {"axes": settings.mirror_axes, "scope": settings.mirror_scope},
        "fine": _fine_counts(info, settings),
        "network_shape_zyx": list(data["image"].shape[1:]),
        "candidates": len(result.candidates),
    }


def _fine_counts(info: dict[str, Any], settings: Any) -> dict[str, Any]:
    """The second grid's spacing, scope and window counts (empty when it is off)."""
    if not settings.fine_spacing_mm:
        return {}
    keys = ("windows_run", "windows_skipped", "windows_unmarked", "windows_mirrored")
    return {
        "spacing_mm": settings.fine_spacing_mm,
        "scope": info.get("fine_scope", settings.fine_scope),
        **{key: info.get(f"fine_{key}", 0) for key in keys},
    }


def _time_writes(
    clock: StageClock, out: Path, case: Any, data: dict[str, Any], result: Any, scr: Any
) -> None:
    """Masks and tables as the engine's write stage writes them (report off), then the HTML report on its own."""
    from pipelines.screening.case_writer import write_report

    no_report = dataclasses.replace(scr.settings, report=False)
    with clock("write"):
        scr.write(out / "stages", case, data, result, bundle_version="bench", settings=no_report)
    if scr.settings.report:
        folder = out / "stages" / "cases" / case.case_id
        meta = json.loads((folder / "nodules.json").read_text())
        with clock("report"):
            write_report(folder, case, data, result, meta["lung_rads"], meta)  # as write_case assigned it


def task_screen(spec: Spec) -> dict[str, Any]:
    """The whole screening through :func:`pipelines.screening.api.screen` (read to report written), timed once.

    The Python imports ``screen()`` needs are done (and timed as ``import_seconds``) before the clock starts, as
    the baseline imports MONAI before its clock: both clocks start at the scan, neither at the interpreter.
    Parsing the bundle, building the networks and loading the weights stay inside ours (the baseline's network
    is built before its clock), so the comparison leans against us, not for us.
    """
    t = time.perf_counter()
    import pipelines.bundle
    import pipelines.report.html  # noqa: F401  (imports only: their cost is not screening)
    from pipelines.screening.api import screen
    from pipelines.screening.process import settle_imports

    settle_imports()  # as the command line does
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
    from pipelines.imaging import discovery
    from pipelines.screening.inference import sliding_window_probability

    scr = screener(spec)
    device = scr.device
    case = discovery.discover_cases(spec["case"])[0]
    data = scr.preprocessing({"image": case, "case_id": case.case_id})
    runs: list[dict[str, Any]] = []
    configs = [(b, True) for b in spec.get("sw_batch_sizes", (2, 4, 8))] + [
        (scr.settings.sw_batch_size, False)
    ]
    for batch, gated in configs:
        settings = dataclasses.replace(scr.settings, sw_batch_size=batch, skip_empty_windows=gated)
        scr.inferer.sw_batch_size = batch
        clock = StageClock(device)
        with torch.no_grad(), clock("sw"):
            _, info = sliding_window_probability(
                data["image"],
                data["lungs"],
                network=scr.network,
                inferer=scr.inferer,
                settings=settings,
                device=device,
            )
        runs.append(
            {"sw_batch_size": batch, "skip_empty_windows": gated, "seconds": clock.wall["sw"], **info}
        )
    return {"runs": runs, "network_shape_zyx": list(data["image"].shape[1:])}


def task_io_ops(spec: Spec) -> dict[str, Any]:
    """Readers, resamplers and writers compared on the scan (:mod:`pipelines.bench.ops`)."""
    from pipelines.bench.ops import run_io_ops
    from pipelines.imaging import discovery

    return run_io_ops(Path(discovery.discover_cases(spec["case"])[0].path), Path(spec["work"]))


def task_baseline(spec: Spec) -> dict[str, Any]:
    t = time.perf_counter()
    # what run_baseline imports before its clock, timed here as ours are
    import monai.inferers  # noqa: F401
    import monai.transforms  # noqa: F401

    import pipelines.bundle  # noqa: F401
    from pipelines.bench.baseline import run_baseline

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
