"""Training data plumbing for the bundle's ``train.json``: datalists, sampling indices, progress and checkpoints.

Datalists are the ``datalist.json`` that ``lungscreen sample-data`` and ``lungscreen prepare-luna16`` write
(MONAI decathlon layout, paths relative to the dataset folder or absolute). Items come out as dictionaries
``{"image", "label", "lungs", "seriesuid"}`` with absolute paths; ``lungs`` is None when the dataset has no
reference lung mask (the preprocessing then segments the lungs, as at inference).
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.transforms import MapTransform

log = logging.getLogger("lungscreen.train")

PathLike = str | os.PathLike[str]


def load_datalist(dataset_dir: PathLike, split: str, *, limit: int | None = None) -> list[dict[str, Any]]:
    """Items of ``split`` (``training``/``validation``/``test``) from ``dataset_dir/datalist.json``.

    Args:
        dataset_dir: dataset folder holding ``datalist.json``.
        split: datalist key; a missing key gives an empty list.
        limit: keep only the first ``limit`` items (None keeps all).

    Returns:
        Dicts with absolute ``image``, ``label`` and ``lungs`` (or None) paths and ``seriesuid``.

    Raises:
        FileNotFoundError: naming ``datalist.json`` or a listed file that is missing.
    """
    root = Path(dataset_dir)
    path = root / "datalist.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no datalist.json (make one with `lungscreen sample-data`)")
    items = json.loads(path.read_text()).get(split, [])
    out = []
    for item in items[:limit] if limit else items:
        image = _resolve(root, item["image"], path)
        lung = item.get("lung", item.get("lungs"))
        out.append(
            {
                "image": image,
                "label": _resolve(root, item["label"], path) if item.get("label") else None,
                "lungs": _resolve(root, lung, path) if lung else None,
                "seriesuid": item.get("seriesuid") or _stem(image),
            }
        )
    return out


def _resolve(root: Path, rel: str, datalist: Path) -> str:
    p = Path(rel) if Path(rel).is_absolute() else root / rel
    if not p.exists():
        raise FileNotFoundError(f"{p}: listed in {datalist} but missing")
    return str(p)


def _stem(path: str) -> str:
    name = Path(path).name
    for suffix in (".nii.gz", ".nii", ".mhd", ".nrrd", ".mha"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def crop_context_size(patch_size: Sequence[int], overlap: float) -> list[int]:
    """Size of the region cut around a sampled centre before the random ``patch_size`` crop inside it.

    ``RandCropByPosNegLabeld`` centres every positive patch on a nodule voxel, and a network trained only on
    such patches learns that nodules sit in the middle of the window: v0.2.0 gave probability 1.0 to an
    11 mm part-solid nodule in the window centred on it and 0.006 in the window 16 voxels away. The sliding
    window at inference meets a nodule anywhere within half a stride (``patch * (1 - overlap) / 2``) of the
    nearest window's centre, so training cuts ``patch + stride`` voxels around the sampled centre and then a
    random ``patch_size`` crop inside it: the nodule lands anywhere a sliding window will show it.

    Args:
        patch_size: training patch (= inference window) in voxels.
        overlap: the sliding-window overlap of inference, in [0, 1).

    Returns:
        ``[z, y, x]`` context size in voxels.
    """
    if not 0.0 <= float(overlap) < 1.0:
        raise ValueError(f"overlap must lie in [0, 1), not {overlap}")
    return [int(p) + int(round(int(p) * (1.0 - float(overlap)))) for p in patch_size]


class SampleIndicesd(MapTransform):
    """Precompute patch-centre candidates for ``RandCropByPosNegLabeld`` once, at caching time.

    ``fg_indices``: flat ``[z, y, x]`` indices of nodule voxels (``label > 0``), at most ``max_fg_per_nodule``
    per connected nodule, so that every nodule is a patch centre equally often (drawing from all voxels would
    pick a 25 mm nodule 60 times as often as a 6 mm one, and the network then misses small nodules);
    ``bg_indices``: at most ``max_bg`` indices of non-nodule voxels inside the lungs (``lungs > 0``; anywhere
    when there is no lung). Both are drawn with a fixed seed and index the spatial shape of ``label``
    (``[1, z, y, x]`` or ``[z, y, x]``). Negatives drawn inside the lungs show the network vessels, fissures and
    pleura, not air.
    """

    def __init__(
        self,
        *,
        label_key: str = "label",
        lung_key: str = "lungs",
        max_bg: int = 50000,
        max_fg_per_nodule: int = 64,
        seed: int = 0,
    ):
        super().__init__([label_key])
        self.label_key, self.lung_key = label_key, lung_key
        self.max_bg, self.seed = int(max_bg), int(seed)
        self.max_fg_per_nodule = int(max_fg_per_nodule)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        label = np.asarray(d[self.label_key]).reshape(-1) > 0
        lungs = d.get(self.lung_key)
        inside = np.asarray(lungs).reshape(-1) > 0 if lungs is not None else np.ones_like(label)
        if not inside.any():
            inside = np.ones_like(label)
        bg = np.flatnonzero(inside & ~label)
        if len(bg) > self.max_bg:
            rng = np.random.default_rng(self.seed + len(bg))
            bg = np.sort(rng.choice(bg, self.max_bg, replace=False))
        d["fg_indices"] = self._balanced_foreground(np.asarray(d[self.label_key]), label)
        d["bg_indices"] = bg
        return d

    def _balanced_foreground(self, label_array: np.ndarray, label_flat: np.ndarray) -> np.ndarray:
        from scipy import ndimage

        if not label_flat.any():
            return np.flatnonzero(label_flat)
        components, n = ndimage.label(np.squeeze(label_array) > 0, structure=np.ones((3, 3, 3)))
        flat = components.reshape(-1)
        order = np.argsort(flat, kind="stable")
        bounds = np.searchsorted(flat[order], np.arange(1, n + 2))
        rng = np.random.default_rng(self.seed + n)
        picks = []
        for i in range(n):
            idx = order[bounds[i] : bounds[i + 1]]
            if len(idx) > self.max_fg_per_nodule:
                idx = rng.choice(idx, self.max_fg_per_nodule, replace=False)
            picks.append(idx)
        return np.sort(np.concatenate(picks))


class HardNegativeIndicesd(MapTransform):
    """Put mined false positives among the negative patch centres (after :class:`SampleIndicesd`).

    Uniform negatives inside the lungs rarely centre a patch on the few spots that fool the network (vessel
    crossings, bifurcations, pleural bumps); step 10 of the shipped training, fed nodules pasted next to
    vessels, learnt to fire on such spots. This transform reads the false-positive candidates that the network
    produced on the training scans (:func:`write_hard_negatives`, world LPS mm per ``seriesuid``), maps them
    onto this case's network grid with its ``geometry`` and appends them to ``bg_indices`` so that they make up
    ``fraction`` of it: with ``RandCropByPosNegLabeld``'s ``pos``/``neg`` of 2/1 and ``fraction`` 0.5, one patch
    in six is centred on a mined spot (the random window inside the context crop then moves it about as a
    sliding window would). Spots that fall on a nodule voxel or outside the grid are dropped.

    Args:
        table: the ``hard_negatives.json`` path, its parsed ``{"cases": {uid: [[x, y, z], ...]}}`` content, or
            None (the transform then does nothing).
        fraction: share of ``bg_indices`` taken by mined spots, in [0, 1).
    """

    def __init__(
        self,
        *,
        table: PathLike | Mapping[str, Any] | None,
        fraction: float = 0.5,
        label_key: str = "label",
        uid_key: str = "seriesuid",
        geometry_key: str = "geometry",
        bg_key: str = "bg_indices",
    ) -> None:
        super().__init__([label_key])
        if not 0.0 <= float(fraction) < 1.0:
            raise ValueError(f"fraction must lie in [0, 1), not {fraction}")
        content: Mapping[str, Any] = {}
        if isinstance(table, Mapping):
            content = table
        elif table is not None:
            path = Path(table)
            try:
                content = json.loads(path.read_text())
            except (OSError, ValueError) as e:
                raise ValueError(f"{path}: cannot read the hard negatives ({e})") from e
        cases = content.get("cases", {})
        self.cases = {str(k): np.asarray(v, float).reshape(-1, 3) for k, v in cases.items()}
        self.fraction = float(fraction)
        self.label_key, self.uid_key, self.geometry_key, self.bg_key = (
            label_key,
            uid_key,
            geometry_key,
            bg_key,
        )

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        world = self.cases.get(str(d.get(self.uid_key)))
        if world is None or not len(world) or self.fraction == 0.0:
            return d
        label = np.squeeze(np.asarray(d[self.label_key]))
        idx = np.rint(d[self.geometry_key].world_to_network(world)).astype(int)
        idx = idx[((idx >= 0) & (idx < np.asarray(label.shape))).all(axis=1)]
        flat = np.ravel_multi_index(tuple(idx.T), label.shape) if len(idx) else np.zeros(0, int)
        flat = flat[label.reshape(-1)[flat] == 0]
        bg = np.asarray(d[self.bg_key], dtype=np.int64)
        if not len(flat):
            return d
        n_hard = max(len(flat), int(round(len(bg) * self.fraction / (1.0 - self.fraction))))
        d[self.bg_key] = np.concatenate([bg, np.resize(flat.astype(np.int64), n_hard)])
        return d


def write_hard_negatives(patches_file: PathLike, out_file: PathLike) -> dict[str, int]:
    """``hard_negatives.json`` for :class:`HardNegativeIndicesd` from the classifier's mined ``patches.npz``.

    Keeps the network's own candidates that match no annotation (kind ``candidate``, label 0). Written
    atomically; returns ``{"cases": ..., "spots": ...}``.
    """
    z = np.load(patches_file)
    keep = (z["kinds"] == "candidate") & (z["labels"] == 0)
    cases: dict[str, list[list[float]]] = {}
    for uid, w in zip(z["seriesuids"][keep], z["world_lps_mm"][keep]):
        cases.setdefault(str(uid), []).append([round(float(v), 3) for v in w])
    out = Path(out_file)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps({"source": str(patches_file), "cases": cases}, indent=1))
    os.replace(tmp, out)
    return {"cases": len(cases), "spots": int(keep.sum())}


def latest_checkpoint(ckpt_dir: PathLike) -> str | None:
    """Newest ``*.pt`` training checkpoint in ``ckpt_dir`` (by modification time), or None."""
    folder = Path(ckpt_dir)
    files = sorted(folder.glob("*.pt"), key=lambda p: p.stat().st_mtime) if folder.is_dir() else []
    return str(files[-1]) if files else None


def is_main_process() -> bool:
    """True outside ``torch.distributed`` and on rank 0 inside it."""
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


class ProgressLogger:
    """Ignite handler: every iteration's loss to ``log_file`` (JSON lines), a progress line to stdout.

    Lines are ``{"iteration", "epoch", "loss", "lr", "elapsed_s"}``; validation metrics are logged at the end of
    each epoch that has them. Only rank 0 writes.
    """

    def __init__(self, *, log_file: PathLike, every: int = 10) -> None:
        self.log_file = Path(log_file)
        self.every = max(1, int(every))
        self.losses: list[float] = []
        self.start = time.perf_counter()

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_completed)

    def _write(self, row: dict[str, Any]) -> None:
        if not is_main_process():
            return
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("a") as f:
            f.write(json.dumps(row) + "\n")

    def iteration_completed(self, engine: Any) -> None:
        out = engine.state.output
        first = out[0] if isinstance(out, list) else out
        loss = float(first["loss"]) if isinstance(first, dict) else float(first)
        self.losses.append(loss)
        opt = getattr(engine, "optimizer", None)
        lr = float(opt.param_groups[0]["lr"]) if opt is not None else None
        row = {
            "iteration": engine.state.iteration,
            "epoch": engine.state.epoch,
            "loss": round(loss, 6),
            "lr": lr,
            "elapsed_s": round(time.perf_counter() - self.start, 2),
        }
        self._write(row)
        if engine.state.iteration % self.every == 0 and is_main_process():
            total = engine.state.max_epochs * (engine.state.epoch_length or 0)
            recent = float(np.mean(self.losses[-self.every :]))
            print(
                f"[train] it {engine.state.iteration}/{total} epoch {engine.state.epoch} "
                f"loss {recent:.4f} lr {lr:.2e} {row['elapsed_s']:.0f}s",
                flush=True,
            )
            sys.stdout.flush()

    def epoch_completed(self, engine: Any) -> None:
        metrics = {k: float(v) for k, v in engine.state.metrics.items() if isinstance(v, int | float)}
        if metrics:
            self._write({"epoch": engine.state.epoch, "iteration": engine.state.iteration, **metrics})


def writes_files(handler: Any) -> bool:
    """Handlers that only rank 0 runs under DDP (checkpoints, logs, TensorBoard, progress)."""
    from monai.handlers import CheckpointSaver, StatsHandler, TensorBoardStatsHandler

    return isinstance(handler, CheckpointSaver | StatsHandler | TensorBoardStatsHandler | ProgressLogger)


class TimeLimit:
    """Ignite handler: stop the engine cleanly once ``seconds`` of wall-clock have passed since it started.

    Checkpoint savers with ``save_final`` still write on completion, so a bounded run always leaves weights.
    ``seconds=None`` or ``<= 0`` disables it.
    """

    def __init__(self, *, seconds: float | None = None) -> None:
        self.seconds = float(seconds) if seconds else 0.0
        self.start = 0.0

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._check)

    def _started(self, engine: Any) -> None:
        self.start = time.perf_counter()

    def _check(self, engine: Any) -> None:
        if self.seconds > 0 and time.perf_counter() - self.start > self.seconds:
            if is_main_process():
                print(
                    f"[train] time limit {self.seconds:.0f}s reached at iteration {engine.state.iteration}",
                    flush=True,
                )
            engine.terminate()


class TimeCosineLR(torch.optim.lr_scheduler.LRScheduler):
    """Cosine annealing over wall-clock seconds instead of steps, for runs bounded by ``train#time_limit_s``.

    On hardware of unknown speed (a lent GPU, a new laptop) a step-count schedule either ends before its
    time limit or is cut off at a high learning rate. This one reaches ``eta_min`` when ``seconds`` have
    passed, however many iterations that is, and stays there. The clock starts at the first ``step()`` after
    construction (the first iteration or epoch), so dataset caching does not eat into the schedule. Step it
    per iteration (``LrScheduleHandler(epoch_level=False)``) for a smooth curve. A resumed run restarts its
    clock: it anneals again over ``seconds``.

    Args:
        optimizer: the wrapped optimizer; its initial learning rates are the peak.
        seconds: length of the cosine in seconds (use the run's time limit).
        eta_min: the learning rate at and after ``seconds``.
        clock: seconds source (tests pass a fake one).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        seconds: float,
        eta_min: float = 0.0,
        clock: Any = time.monotonic,
    ) -> None:
        if not seconds or seconds <= 0:
            raise ValueError(f"TimeCosineLR needs seconds > 0, got {seconds!r}")
        self.seconds = float(seconds)
        self.eta_min = float(eta_min)
        self.clock = clock
        self.t0: float | None = None
        self._armed = False
        super().__init__(optimizer)
        self._armed = True

    def fraction(self) -> float:
        """Share of ``seconds`` passed since the clock started (0 before, clipped to 1)."""
        if self.t0 is None:
            return 0.0
        return min(1.0, max(0.0, (self.clock() - self.t0) / self.seconds))

    def step(self, epoch: int | None = None) -> None:  # type: ignore[override]
        if self._armed and self.t0 is None:
            self.t0 = self.clock()
        super().step()

    def get_lr(self) -> list[float]:  # type: ignore[override]
        cos = (1.0 + math.cos(math.pi * self.fraction())) / 2.0
        return [self.eta_min + (float(base) - self.eta_min) * cos for base in self.base_lrs]

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.pop("clock", None)
        return state


#: Learning-rate schedules of ``train.json`` by name (``--set train#lr_schedule=time_cosine``).
LR_SCHEDULES = ("cosine_epochs", "time_cosine")


def make_lr_scheduler(
    *,
    kind: str,
    optimizer: torch.optim.Optimizer,
    T_max: int,  # noqa: N803 (CosineAnnealingLR's name)
    seconds: float | None = None,
    eta_min: float = 0.0,
) -> torch.optim.lr_scheduler.LRScheduler:
    """The training's learning-rate schedule chosen by a plain name, so that a user override picks it without
    config syntax: ``cosine_epochs`` (``CosineAnnealingLR`` over ``T_max`` epochs, stepped per epoch) or
    ``time_cosine`` (:class:`TimeCosineLR` over ``seconds`` of wall clock, stepped per iteration;
    ``train.json`` sets its ``LrScheduleHandler`` to iteration level for it).

    Raises:
        ValueError: for another name, listing the valid ones.
    """
    if kind == "cosine_epochs":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=T_max, eta_min=eta_min)
    if kind == "time_cosine":
        return TimeCosineLR(optimizer, seconds=seconds or 0.0, eta_min=eta_min)
    raise ValueError(f"train#lr_schedule must be one of {list(LR_SCHEDULES)}, not {kind!r}")
