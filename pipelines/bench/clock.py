"""Wall seconds, CPU seconds and peak memory per named stage of one benchmark process."""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch


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
