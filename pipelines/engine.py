"""The screening engine: the bundle's ``evaluator``; runs a folder of scans resumably and fault-tolerantly.

It is built from the components that ``monai_bundle/configs/inference.json`` declares (preprocessing,
network, inferer, classifier, settings) and is what both ``python -m monai.bundle run`` and
``lungscreen screen`` execute. Per case: preprocess (prefetched in a thread while the previous case is on the
network) -> sliding window -> postprocess -> write (in a background thread). A failing case is recorded with a
one-line reason (its traceback in ``failures.log``) and the batch goes on. Cases already complete (a
``result.json`` of the same settings, weights, bundle version and input file) are skipped unless ``overwrite``.
Under ``torchrun`` the cases are sharded over ranks and rank 0 merges the run tables. OUT is checked before any
work; leftovers of a killed run are cleared at the start; Ctrl-C, an empty input and a run where no case
succeeded end as :mod:`pipelines.runstate` describes.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch

from pipelines import io, outputs, runstate
from pipelines.assessability import screenable
from pipelines.ensemble import load_network_weights, weight_files
from pipelines.inference import load_weights, select_device, sliding_window_probability
from pipelines.inference_backend import active_backend, network_backend
from pipelines.postprocess import CaseResult, analyse_case
from pipelines.runstate import failure_reason, root_cause  # noqa: F401 - re-exported (pipelines.screen uses it)
from pipelines.settings import ScreeningSettings

log = logging.getLogger("lungscreen")


# Rank 0 waits at the final barrier for the slowest rank: shards of large scans can differ by hours, far
# beyond torch's default 30-minute collective timeout.
BARRIER_TIMEOUT = timedelta(days=7)


def shard_info() -> tuple[int, int]:
    """(rank, world_size) from torchrun's environment; (0, 1) otherwise."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def rank_device(device: torch.device) -> torch.device:
    """Under torchrun each process takes its own GPU: an unindexed ``cuda`` becomes ``cuda:$LOCAL_RANK``."""
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device


class ScreeningEngine:
    """Screen a list of cases into ``output_dir`` (see :mod:`pipelines.outputs` for the layout).

    Args:
        dataset: cases from :func:`pipelines.io.discover_cases` (or paths / in-memory images).
        output_dir: where results go; never inside an input folder.
        preprocessing: the bundle's preprocessing ``Compose`` (dict in, dict out).
        network: nodule segmentation network (logits ``[B, 1, z, y, x]``).
        inferer: MONAI ``SlidingWindowInferer``.
        settings: validated :class:`ScreeningSettings`.
        weights: checkpoint for ``network`` (loaded with ``weights_only=True``), or several: their networks'
            mean logit (:mod:`pipelines.ensemble`); None keeps its weights.
        classifier, classifier_weights: the false-positive classifier and its checkpoint (optional).
        overwrite: recompute completed cases.
        bundle_version: recorded with every output.
        progress: show a progress bar.
        input_roots: the folders the cases came from; the output may not lie inside any of them.
        fine_preprocessing: the bundle's resampling + HU scaling at ``settings.fine_spacing_mm``; with it
            (and that setting) every case gets a second network pass on the finer grid
            (:mod:`pipelines.multiscale`).
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
    ) -> None:
        self.input_roots = [Path(r) for r in input_roots]
        self.fine_preprocessing = fine_preprocessing if settings.fine_spacing_mm else None
        cases = [c if isinstance(c, io.CaseInput) else _as_case(c, i) for i, c in enumerate(dataset)]
        for c in cases:  # ids given in a dataset list name folders in OUT too
            c.case_id = io.safe_case_id(str(c.case_id))
        self.cases = cases if _unique(cases) else io.unique_case_ids(cases)
        self.output_dir = Path(output_dir)
        self.preprocessing = preprocessing
        self.settings = settings
        self.device = rank_device(select_device(settings.device))
        self.network, self.backend = network_backend(
            load_network_weights(network.to(self.device), weights).eval(),
            settings=settings,
            device=self.device,
        )
        self.classifier = None
        if classifier is not None and classifier_weights and Path(classifier_weights).is_file():
            self.classifier = load_weights(classifier, Path(classifier_weights)).to(self.device).eval()
        elif classifier is not None and classifier_weights:
            log.warning(
                "classifier weights %s not found: scoring with the segmentation network only",
                classifier_weights,
            )
        self.inferer = inferer
        self.overwrite = overwrite
        self.bundle_version = bundle_version
        self.progress = progress
        self.stats: dict[str, int] = {}
        # a done case is skipped only if it was screened with these settings, weights and bundle version
        used_classifier = classifier_weights if self.classifier is not None else None
        files: list[str | os.PathLike[str] | None] = [*weight_files(weights)] or [None]
        self.fingerprint = outputs.run_fingerprint(
            settings.sha256(), bundle_version, [*files, used_classifier]
        )
        self._shard: dict[str, int] = {}
        self._case_fp: dict[str, str] = {}  # case id -> run + input fingerprint, recorded in result.json

    # ----------------------------------------------------------------------------------------- run
    def run(self) -> dict[str, int]:
        """Process every case of this rank's shard; return counts (succeeded, failed, skipped, total).

        Raises:
            pipelines.runstate.OutputDirError: OUT unusable (before any work).
            pipelines.runstate.NoScanFound, NoCaseSucceeded, TablesNotWritten, RunInterrupted: after the run
                tables are written (see :func:`pipelines.runstate.finish`).
        """
        runstate.check_output_dir(
            self.output_dir, inputs=runstate.input_folders(self.cases, self.input_roots)
        )
        rank, world = shard_info()
        self._shard = {"rank": rank, "world_size": world}
        mine = [c for i, c in enumerate(self.cases) if i % world == rank]
        runstate.clean_start(
            self.output_dir, {c.case_id for c in mine}, {c.case_id for c in self.cases}, rank0=rank == 0
        )
        self._case_fp = runstate.case_fingerprints(mine, self.fingerprint)
        todo, skipped = runstate.split_done(self.output_dir, mine, self._case_fp, overwrite=self.overwrite)
        counts = {"succeeded": 0, "failed": 0, "skipped": len(skipped), "total": len(self.cases)}
        interrupted = False
        try:
            self._screen(todo, counts)
        except KeyboardInterrupt:
            interrupted = True
        self.stats = counts
        self._finish(rank, world, counts, interrupted=interrupted)
        return counts

    def _screen(self, todo: list[io.CaseInput], counts: dict[str, int]) -> None:
        """Screen ``todo``: preprocessing prefetched in one thread, writing in another. On Ctrl-C the cases
        already computed are still written before the interrupt goes on."""
        reader = ThreadPoolExecutor(1, thread_name_prefix="prefetch")
        writer = ThreadPoolExecutor(1, thread_name_prefix="writer")
        bar = _progress(len(todo), enabled=self.progress)
        pending: list[tuple[io.CaseInput, Future[Any]]] = []
        try:
            with torch.no_grad():  # scoped: a global set_grad_enabled(False) leaked into later training
                nxt = reader.submit(self._preprocess, todo[0]) if todo else None
                for i, case in enumerate(todo):
                    assert nxt is not None
                    fut = nxt
                    nxt = reader.submit(self._preprocess, todo[i + 1]) if i + 1 < len(todo) else None
                    t0 = time.perf_counter()
                    try:
                        data, t_pre = fut.result()
                        result, timings = self._compute(data)
                        timings["preprocess"] = t_pre
                        pending.append((case, writer.submit(self._write, case, data, result, timings)))
                    except Exception as err:  # noqa: BLE001 - one bad case must never stop the batch
                        self._fail(case, err, counts)
                    self._collect(pending, counts, block=False)
                    bar.update(1)
                    bar.set_postfix_str(f"{case.case_id}: {time.perf_counter() - t0:.1f}s")
            self._collect(pending, counts, block=True)
        except KeyboardInterrupt:
            reader.shutdown(wait=False, cancel_futures=True)
            self._collect(pending, counts, block=True)  # computed cases are written before stopping
            raise
        finally:
            reader.shutdown(wait=False, cancel_futures=True)
            writer.shutdown(wait=True)
            bar.close()

    def _collect(
        self, pending: list[tuple[io.CaseInput, Future[Any]]], counts: dict[str, int], *, block: bool
    ) -> None:
        """Count the finished writes of ``pending`` (all of them with ``block``) and remove them from it."""
        for item in list(pending):
            case, fut = item
            if not block and not fut.done():
                continue
            try:
                fut.result()
                outputs.clear_failure(self.output_dir, case.case_id)
                counts["succeeded"] += 1
            except Exception as err:  # noqa: BLE001
                self._fail(case, err, counts)
            pending.remove(item)

    def _fail(self, case: io.CaseInput, err: BaseException, counts: dict[str, int]) -> None:
        runstate.fail_case(self.output_dir, case.case_id, case.path, err)
        counts["failed"] += 1

    # ----------------------------------------------------------------------------------------- stages
    def _preprocess(self, case: io.CaseInput) -> tuple[dict[str, Any], float]:
        t = time.perf_counter()
        io.check_size(case, max_voxels=self.settings.max_input_voxels)
        data = self.preprocessing({"image": case, "case_id": case.case_id})
        return data, time.perf_counter() - t

    def _compute(self, data: dict[str, Any]) -> tuple[CaseResult, dict[str, float]]:
        timings: dict[str, float] = {}
        t = time.perf_counter()
        # no lung, or too thin a volume for a 3D detector (a localizer, a 2-slice stack): nothing to screen
        skip = bool(data.get("no_lung")) or not screenable(data)
        if skip:
            prob_net = torch.zeros(tuple(data["image"].shape[1:]))
            info: dict[str, Any] = {"windows_run": 0, "windows_skipped": 0}
        else:
            prob_net, info = self._probability(data)
        timings["network"] = time.perf_counter() - t
        fine = None
        if self.fine_preprocessing is not None and not skip:
            t = time.perf_counter()
            fine = self._fine_pass(data)
            timings["network_fine"] = time.perf_counter() - t
        t = time.perf_counter()
        result = analyse_case(
            data, prob_net, settings=self.settings, classifier=self.classifier, device=self.device, fine=fine
        )
        result.info.update({**info, **self._shard, "backend": active_backend(self.network)})
        if data.get("no_lung"):
            result.warnings.append("no lung tissue found: nothing screened")
        timings["postprocess"] = time.perf_counter() - t
        return result, timings

    def _probability(self, data: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        """The network's probability on ``data``'s network grid (sliding window, the settings' mirroring)."""
        return sliding_window_probability(
            data["image"],
            data.get("lungs"),
            network=self.network,
            inferer=self.inferer,
            settings=self.settings,
            device=self.device,
            channels_last=self.settings.channels_last and self.device.type == "cuda",
            compile_network=self.settings.compile and self.backend == "torch",
        )

    def _fine_pass(self, data: dict[str, Any]) -> tuple[dict[str, Any], torch.Tensor]:
        """The case on the finer grid and the network's probability there."""
        from pipelines.multiscale import fine_case

        fine_data = fine_case(data, self.fine_preprocessing)
        return fine_data, self._probability(fine_data)[0]

    def _write(
        self, case: io.CaseInput, data: dict[str, Any], result: CaseResult, timings: dict[str, float]
    ) -> None:
        from pipelines.case_writer import write_case

        t = time.perf_counter()
        result.info["input"] = str(case.path)  # summary.csv names the input beside the case id
        write_case(
            output_dir=self.output_dir,
            case=case,
            data=data,
            result=result,
            settings=self.settings,
            timings=timings,
            bundle_version=self.bundle_version,
            write_start=t,
            fingerprint=self._case_fp.get(case.case_id, self.fingerprint),
        )

    def _finish(self, rank: int, world: int, counts: dict[str, int], *, interrupted: bool) -> None:
        if world > 1 and not interrupted and torch.distributed.is_available():
            created = not torch.distributed.is_initialized()
            if created:
                torch.distributed.init_process_group("gloo", timeout=BARRIER_TIMEOUT)
            torch.distributed.barrier()
            if created:
                torch.distributed.destroy_process_group()
        from pipelines.case_writer import write_run_files

        runstate.finish(
            self.output_dir,
            counts=counts,
            write_tables=lambda: write_run_files(
                self.output_dir, self.settings, self.bundle_version, case_ids={c.case_id for c in self.cases}
            ),
            rank0=rank == 0,
            interrupted=interrupted,
            inputs=", ".join(str(r) for r in self.input_roots) or "the inputs given",
        )


def _as_case(item: Any, index: int) -> io.CaseInput:
    if isinstance(item, dict):
        src = item.get("image")
        case_id = item.get("case_id") or item.get("seriesuid")
        cases = io.discover_cases(src) if src is not None and not hasattr(src, "GetSize") else []
        if cases:
            c = cases[0]
            c.case_id = case_id or c.case_id
            return c
        return io.CaseInput(case_id or f"image_{index:04d}", Path("<memory>"), image=src)
    if hasattr(item, "GetSize"):
        return io.CaseInput(f"image_{index:04d}", Path("<memory>"), image=item)
    found = io.discover_cases(item)
    return found[0] if found else io.CaseInput(io.strip_image_suffix(Path(item).name), Path(item))


def _unique(cases: Sequence[io.CaseInput]) -> bool:
    return len({c.case_id for c in cases}) == len(cases)


class _NoBar:
    def update(self, n: int) -> None: ...
    def set_postfix_str(self, s: str) -> None: ...
    def close(self) -> None: ...


def _progress(total: int, *, enabled: bool) -> Any:
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="scan", dynamic_ncols=True)
