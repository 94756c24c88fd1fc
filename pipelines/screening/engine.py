"""The screening engine: the bundle's ``evaluator``; runs a folder of scans resumably and fault-tolerantly.

It is built from the components that ``monai_bundle/configs/inference.json`` declares (preprocessing,
network, inferer, classifier, settings) and is what both ``python -m monai.bundle run`` and
``lungscreen screen`` execute. Per case it runs the public stages of :class:`pipelines.screening.stages.Screener`
(preprocess -> predict -> analyse -> write); the batch around them (OUT checks, resume by fingerprint, prefetch
and background writing, failures with a one-line reason, sharding under ``torchrun``, Ctrl-C and exit status) is
:func:`pipelines.batch.runner.run_cases`, shared with the segmentation engine.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from pipelines.batch import records
from pipelines.batch.runner import run_cases
from pipelines.imaging import discovery, filesys
from pipelines.screening.scoring import CaseResult
from pipelines.screening.settings import ScreeningSettings
from pipelines.screening.stages import Prediction, Screener

log = logging.getLogger("lungscreen")


class ScreeningEngine:
    """Screen a list of cases into ``output_dir`` (see :mod:`pipelines.screening.outputs` for the layout).

    Args:
        dataset: cases from :func:`pipelines.imaging.discovery.discover_cases` (or paths / in-memory images).
        output_dir: where results go; never inside an input folder.
        preprocessing, network, inferer, settings, weights, classifier, classifier_weights, fine_preprocessing:
            the components of :class:`pipelines.screening.stages.Screener`.
        overwrite: recompute completed cases.
        bundle_version: recorded with every output.
        progress: show a progress bar.
        input_roots: the folders the cases came from; the output may not lie inside any of them.
        pipelined: read the next case and write the previous one in threads (:func:`pipelines.batch.runner.run_cases`).
    """

    def __init__(
        self,
        *,
        dataset: Sequence[Any],
        output_dir: str | os.PathLike[str],
        preprocessing: Callable[[dict[str, Any]], dict[str, Any]],
        network: torch.nn.Module,
        inferer: Any,
        settings: ScreeningSettings,
        weights: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
        classifier: torch.nn.Module | None = None,
        classifier_weights: str | os.PathLike[str] | None = None,
        overwrite: bool = False,
        bundle_version: str = "",
        progress: bool = True,
        input_roots: Sequence[str | os.PathLike[str]] = (),
        fine_preprocessing: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        pipelined: bool = True,
    ) -> None:
        self.input_roots = [Path(r) for r in input_roots]
        cases = [c if isinstance(c, discovery.CaseInput) else _as_case(c, i) for i, c in enumerate(dataset)]
        for c in cases:  # ids given in a dataset list name folders in OUT too
            c.case_id = discovery.safe_case_id(str(c.case_id))
        self.cases = cases if _unique(cases) else discovery.unique_case_ids(cases)
        self.output_dir = Path(output_dir)
        self.screener = Screener(
            preprocessing=preprocessing,
            network=network,
            inferer=inferer,
            settings=settings,
            weights=weights,
            classifier=classifier,
            classifier_weights=classifier_weights,
            fine_preprocessing=fine_preprocessing,
        )
        self.settings = settings
        self.overwrite = overwrite
        self.bundle_version = bundle_version
        self.progress = progress
        self.pipelined = pipelined
        self.stats: dict[str, int] = {}
        # a done case is skipped only if it was screened with these settings, weights and bundle version
        self.fingerprint = records.run_fingerprint(
            settings.sha256(), bundle_version, self.screener.weight_files
        )
        self._shard: dict[str, int] = {}

    def run(self) -> dict[str, int]:
        """Process every case of this rank's shard; return counts (succeeded, failed, skipped, total).

        Raises:
            pipelines.batch.runstate.OutputDirError: OUT unusable (before any work).
            pipelines.batch.runstate.NoScanFound, NoCaseSucceeded, TablesNotWritten, RunInterrupted: after the run
                tables are written (see :func:`pipelines.batch.runstate.finish`).
        """
        from pipelines.batch.runner import shard_info

        rank, world = shard_info()
        self._shard = {"rank": rank, "world_size": world}
        counts: dict[str, int] = {}
        try:
            counts = run_cases(
                self.cases,
                stages=self,
                output_dir=self.output_dir,
                fingerprint=self.fingerprint,
                input_roots=self.input_roots,
                overwrite=self.overwrite,
                progress=self.progress,
                pipelined=self.pipelined,
            )
        finally:
            self.stats = counts
        return counts

    # ------------------------------------------------------------------ the batch runner's per-case stages
    def prepare(self, case: discovery.CaseInput) -> tuple[dict[str, Any], float]:
        t = time.perf_counter()
        data = self.screener.preprocess(case)
        return data, time.perf_counter() - t

    def compute(
        self, case: discovery.CaseInput, prepared: tuple[dict[str, Any], float]
    ) -> tuple[dict[str, Any], CaseResult, dict[str, float]]:
        data, t_pre = prepared
        with torch.no_grad():  # scoped: a global set_grad_enabled(False) leaked into later training
            prediction: Prediction = self.screener.predict(data)
            t = time.perf_counter()
            result = self.screener.analyse(data, prediction, info=self._shard)
        timings = {**prediction.timings, "postprocess": time.perf_counter() - t, "preprocess": t_pre}
        return data, result, timings

    def write(
        self,
        case: discovery.CaseInput,
        computed: tuple[dict[str, Any], CaseResult, dict[str, float]],
        *,
        fingerprint: str,
    ) -> None:
        data, result, timings = computed
        self.screener.write(
            self.output_dir,
            case,
            data,
            result,
            timings=timings,
            bundle_version=self.bundle_version,
            fingerprint=fingerprint,
        )

    def write_run_files(self, case_ids: set[str]) -> dict[str, int]:
        from pipelines.screening.case_writer import write_run_files

        return write_run_files(self.output_dir, self.settings, self.bundle_version, case_ids=case_ids)


def _as_case(item: Any, index: int) -> discovery.CaseInput:
    if isinstance(item, dict):
        src = item.get("image")
        case_id = item.get("case_id") or item.get("seriesuid")
        cases = discovery.discover_cases(src) if src is not None and not hasattr(src, "GetSize") else []
        if cases:
            c = cases[0]
            c.case_id = case_id or c.case_id
            return c
        return discovery.CaseInput(case_id or f"image_{index:04d}", Path("<memory>"), image=src)
    if hasattr(item, "GetSize"):
        return discovery.CaseInput(f"image_{index:04d}", Path("<memory>"), image=item)
    found = discovery.discover_cases(item)
    return found[0] if found else discovery.CaseInput(filesys.strip_image_suffix(Path(item).name), Path(item))


def _unique(cases: Sequence[discovery.CaseInput]) -> bool:
    return len({c.case_id for c in cases}) == len(cases)
