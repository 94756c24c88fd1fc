"""One batch runner for every engine: discovery's cases in, per-case outputs and run tables out.

:func:`run_cases` is the loop that screening (:class:`pipelines.screening.engine.ScreeningEngine`) and generic
segmentation (:class:`pipelines.segmentation.engine.SegmentationEngine`) share. An engine supplies its per-case
stages (:class:`CaseStages`); the runner owns everything around them:

- OUT checked before any work (never inside an input folder), leftovers of a killed run cleared;
- resume: a case is skipped when its ``result.json`` records the same run fingerprint (settings, weights,
  bundle version) and the same input files (:func:`pipelines.batch.runstate.case_fingerprints`);
- pipelining: the next case is prepared (read, resampled, lung-masked) in a thread while the current one is
  computed, and finished cases are written in another thread;
- faults: a failing case is recorded with a one-line reason (traceback in ``failures.log``) and the batch goes
  on; Ctrl-C writes the cases already computed and the run tables, then exits 130;
- sharding under ``torchrun`` (every N-th case per rank; rank 0 merges the tables after a barrier);
- the end of a run and its exit status (:func:`pipelines.batch.runstate.finish`), and a progress bar.

Both engines return :class:`RunResult`, the type that :func:`pipelines.screening.api.screen` and
:func:`pipelines.segmentation.engine.segment` give back.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol

from pipelines.batch import records, runstate

# Rank 0 waits at the final barrier for the slowest rank: shards of large scans can differ by hours, far
# beyond torch's default 30-minute collective timeout.
BARRIER_TIMEOUT = timedelta(days=7)


@dataclass
class RunResult:
    """Counts of one run and where its outputs are."""

    output_dir: Path
    succeeded: int
    failed: int
    skipped: int
    total: int

    @property
    def exit_code(self) -> int:
        """0: every case succeeded (or was already done); 1: some failed; 2: none succeeded or no scan found."""
        if self.total == 0:
            return 2
        if self.failed == 0:
            return 0
        return 1 if self.succeeded + self.skipped > 0 else 2

    @property
    def index_html(self) -> Path:
        return self.output_dir / "index.html"

    def counts(self) -> dict[str, int]:
        """``{"succeeded", "failed", "skipped", "total"}``."""
        return {
            "succeeded": self.succeeded,
            "failed": self.failed,
            "skipped": self.skipped,
            "total": self.total,
        }

    @classmethod
    def from_counts(cls, output_dir: str | os.PathLike[str], counts: dict[str, int]) -> RunResult:
        return cls(
            Path(output_dir), counts["succeeded"], counts["failed"], counts["skipped"], counts["total"]
        )


class CaseStages(Protocol):
    """What an engine does per case; every method may raise (the case then fails, the batch goes on)."""

    def prepare(self, case: Any) -> Any:
        """Read and preprocess ``case`` (runs in the prefetch thread, one case ahead)."""

    def compute(self, case: Any, prepared: Any) -> Any:
        """The network and the analysis of one prepared case (runs in the calling thread)."""

    def write(self, case: Any, computed: Any, *, fingerprint: str) -> None:
        """Write the case's outputs, ``result.json`` (recording ``fingerprint``) last (runs in the writer thread)."""

    def write_run_files(self, case_ids: set[str]) -> dict[str, int]:
        """Rebuild the run tables from the per-case records of ``case_ids``; return the tables' ``succeeded`` and
        ``failed`` counts."""


def shard_info() -> tuple[int, int]:
    """(rank, world_size) from torchrun's environment; (0, 1) otherwise."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def run_cases(
    cases: Sequence[Any],
    *,
    stages: CaseStages,
    output_dir: Path,
    fingerprint: str,
    input_roots: Sequence[Path] = (),
    scans: Sequence[Any] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    sharded: bool = True,
    pipelined: bool = True,
) -> dict[str, int]:
    """Run ``stages`` over ``cases`` into ``output_dir``; return counts (succeeded, failed, skipped, total).

    Args:
        cases: objects with ``case_id`` and ``path`` (and ``dicom_files`` / ``channels`` for fingerprints).
        stages: the engine's per-case work.
        output_dir: OUT (layout of :mod:`pipelines.screening.outputs` / :mod:`pipelines.segmentation.engine`).
        fingerprint: the run fingerprint (:func:`pipelines.batch.records.run_fingerprint`).
        input_roots: the folders the cases came from; OUT may not lie inside any of them.
        scans: the files whose folders OUT must stay out of (default: ``cases``).
        overwrite: recompute cases that are already complete.
        progress: show a progress bar.
        sharded: split the cases over torchrun ranks (rank 0 writes the run tables).
        pipelined: prepare the next case and write the previous one in threads while a case is computed; False
            runs prepare, compute and write one case after another (the baseline of the batch benchmark).

    Raises:
        pipelines.batch.runstate.OutputDirError: OUT unusable (before any work).
        pipelines.batch.runstate.NoScanFound, NoCaseSucceeded, TablesNotWritten, RunInterrupted: after the run
            tables are written (see :func:`pipelines.batch.runstate.finish`).
    """
    runstate.check_output_dir(
        output_dir, inputs=runstate.input_folders(scans if scans is not None else cases, input_roots)
    )
    rank, world = shard_info() if sharded else (0, 1)
    mine = [c for i, c in enumerate(cases) if i % world == rank]
    every = {c.case_id for c in cases}
    runstate.clean_start(output_dir, {c.case_id for c in mine}, every, rank0=rank == 0)
    case_fp = runstate.case_fingerprints(mine, fingerprint)
    todo, skipped = runstate.split_done(output_dir, mine, case_fp, overwrite=overwrite)
    counts = {"succeeded": 0, "failed": 0, "skipped": len(skipped), "total": len(cases)}
    interrupted = False
    try:
        run = _pipeline if pipelined else _sequential
        run(todo, stages, output_dir, case_fp, counts, progress=progress)
    except KeyboardInterrupt:
        interrupted = True
    _barrier(world, interrupted=interrupted)
    runstate.finish(
        output_dir,
        counts=counts,
        write_tables=lambda: stages.write_run_files(every),
        rank0=rank == 0,
        interrupted=interrupted,
        inputs=", ".join(str(r) for r in input_roots) or "the inputs given",
    )
    return counts


def _pipeline(
    todo: list[Any],
    stages: CaseStages,
    output_dir: Path,
    case_fp: dict[str, str],
    counts: dict[str, int],
    *,
    progress: bool,
) -> None:
    """Prepare one case ahead in a thread, compute in this one, write in another. On Ctrl-C the cases already
    computed are still written before the interrupt goes on."""
    reader = ThreadPoolExecutor(1, thread_name_prefix="prefetch")
    writer = ThreadPoolExecutor(1, thread_name_prefix="writer")
    bar = progress_bar(len(todo), enabled=progress)
    pending: list[tuple[Any, Future[Any]]] = []
    try:
        nxt = reader.submit(stages.prepare, todo[0]) if todo else None
        for i, case in enumerate(todo):
            assert nxt is not None
            fut = nxt
            nxt = reader.submit(stages.prepare, todo[i + 1]) if i + 1 < len(todo) else None
            t0 = time.perf_counter()
            try:
                computed = stages.compute(case, fut.result())
                fp = case_fp[case.case_id]
                pending.append((case, writer.submit(stages.write, case, computed, fingerprint=fp)))
            except Exception as err:  # noqa: BLE001 - one bad case must never stop the batch
                _fail(output_dir, case, err, counts)
            _collect(output_dir, pending, counts, block=False)
            bar.update(1)
            bar.set_postfix_str(f"{case.case_id}: {time.perf_counter() - t0:.1f}s")
        _collect(output_dir, pending, counts, block=True)
    except KeyboardInterrupt:
        reader.shutdown(wait=False, cancel_futures=True)
        _collect(output_dir, pending, counts, block=True)  # computed cases are written before stopping
        raise
    finally:
        reader.shutdown(wait=False, cancel_futures=True)
        writer.shutdown(wait=True)
        bar.close()


def _sequential(
    todo: list[Any],
    stages: CaseStages,
    output_dir: Path,
    case_fp: dict[str, str],
    counts: dict[str, int],
    *,
    progress: bool,
) -> None:
    """Each case prepared, computed and written before the next one starts (one thread)."""
    bar = progress_bar(len(todo), enabled=progress)
    try:
        for case in todo:
            try:
                computed = stages.compute(case, stages.prepare(case))
                stages.write(case, computed, fingerprint=case_fp[case.case_id])
                records.clear_failure(output_dir, case.case_id)
                counts["succeeded"] += 1
            except Exception as err:  # noqa: BLE001 - one bad case must never stop the batch
                _fail(output_dir, case, err, counts)
            bar.update(1)
    finally:
        bar.close()


def _collect(
    output_dir: Path, pending: list[tuple[Any, Future[Any]]], counts: dict[str, int], *, block: bool
) -> None:
    """Count the finished writes of ``pending`` (all of them with ``block``) and remove them from it."""
    for item in list(pending):
        case, fut = item
        if not block and not fut.done():
            continue
        try:
            fut.result()
            records.clear_failure(output_dir, case.case_id)
            counts["succeeded"] += 1
        except Exception as err:  # noqa: BLE001
            _fail(output_dir, case, err, counts)
        pending.remove(item)


def _fail(output_dir: Path, case: Any, err: BaseException, counts: dict[str, int]) -> None:
    runstate.fail_case(output_dir, case.case_id, case.path, err)
    counts["failed"] += 1


def _barrier(world: int, *, interrupted: bool) -> None:
    """Under torchrun, wait for every rank before rank 0 merges the tables."""
    if world <= 1 or interrupted:
        return
    import torch.distributed as dist

    if not dist.is_available():
        return
    created = not dist.is_initialized()
    if created:
        dist.init_process_group("gloo", timeout=BARRIER_TIMEOUT)
    dist.barrier()
    if created:
        dist.destroy_process_group()


class _NoBar:
    def update(self, n: int) -> None: ...
    def set_postfix_str(self, s: str) -> None: ...
    def close(self) -> None: ...


def progress_bar(total: int, *, enabled: bool) -> Any:
    """A tqdm bar over ``total`` cases, or a silent stand-in."""
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="case", dynamic_ncols=True)
