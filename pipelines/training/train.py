"""``lungscreen train``: the nodule UNet (bundle ``train.json``) then the false-positive classifier.

Profiles pick the config stack and a few overrides; every value lives in the bundle configs:

- ``gpu``: ``inference.json + train.json`` (bf16 on CUDA; the random patch transforms run on the CPU in 12
  DataLoader worker processes, batches of 8 volumes x 4 patches).
- ``gpu-device``: ``gpu + train_gpu_fast.json`` (volumes cached on the GPU, the random patch transforms run
  there in one thread). Measured on an H200 (2026-11-30, runs sharing the GPU and its 16 cores) at 0.30-0.40
  iterations/s against the ``gpu`` profile's 1.9: kept as an option, not the default.
- ``cpu``: ``+ train_cpu.json`` (fp32, small batches, what ``make train`` runs on 2 cores).

Training patches are always the inference window, ``settings#roi_size`` (64^3 in the bundle).
- ``smoke``: ``cpu`` plus :data:`SMOKE_OVERRIDES` (a few iterations on 32^3 patches, for tests).

Under ``torchrun`` (``WORLD_SIZE > 1``) ``multi_gpu_train.json`` is stacked too (DDP, DistributedSampler) and
only rank 0 runs the classifier stage and the final evaluation. Output layout of ``out``::

    out/segmentation/checkpoints/last_*.pt  full training state (model, optimizer, scheduler, trainer)
    out/segmentation/models/model.pt        best-validation-Dice UNet weights (plain state dict)
    out/segmentation/tensorboard/, train_log.jsonl
    out/classifier/patches.npz, classifier/models/classifier.pt
    out/models/model.pt, out/models/classifier.pt   the weights to ship (plain state dicts)
    out/evaluation/metrics.json              detection metrics of the validation split (screen + evaluate)
    out/train_result.json                    what train() returns
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from pipelines.screening.inference import CheckpointError, load_weights
from pipelines.training.data import PathLike, latest_checkpoint, load_datalist
from pipelines.training.profiles import PROFILES, SMOKE_OVERRIDES

log = logging.getLogger("lungscreen.train")

STAGES = ("segmentation", "classifier")
#: validation scans screened for the final detection metrics (bounded time); None = all.
EVAL_MAX_CASES: dict[str, int | None] = {"gpu": 16, "gpu-device": 16, "cpu": 3, "smoke": 1}


class EvaluationFailed(RuntimeError):
    """The closing evaluation could not screen every validation scan it was given.

    Raised by :func:`train` after ``train_result.json`` is written (the trained weights are kept), so that
    ``lungscreen train`` and ``make train`` exit non-zero instead of reporting figures of the scans that did not
    fail.
    """


def world_info() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment; (0, 1) otherwise."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def train(
    *,
    dataset: PathLike,
    out: PathLike,
    profile: str = "cpu",
    seed: int = 0,
    device: str = "auto",
    overrides: dict[str, Any] | None = None,
    resume: bool = False,
    stages: Sequence[str] = STAGES,
    evaluate: bool = True,
    init_weights: PathLike | None = None,
) -> dict[str, Any]:
    """Train the nodule UNet and/or the false-positive classifier on a ``sample-data`` / LUNA16 dataset.

    Args:
        dataset: folder with ``datalist.json`` (``training``/``validation`` lists), ``annotations.csv``
            (LUNA16 world LPS mm) and optionally ``cases.csv``.
        out: run folder (layout in the module docstring).
        profile: ``gpu``, ``cpu`` or ``smoke``.
        seed: seed for :func:`monai.utils.set_determinism`, patch sampling and mining.
        device: ``auto``, ``cpu`` or ``cuda``.
        overrides: ID-path overrides of the stacked configs, e.g. ``{"train#trainer#max_epochs": 50}``;
            keys starting with ``classifier#`` go to ``train_classifier.json``. Values are numbers, booleans,
            None, plain strings or lists of those (:func:`pipelines.bundle.check_user_overrides`).
        resume: continue the segmentation stage from the newest checkpoint in ``out/segmentation/checkpoints``.
        stages: any of ``segmentation`` and ``classifier``, run in that order.
        evaluate: finish with ``screen()`` + ``evaluate()`` on the validation split (rank 0); the environment
            variable ``LUNGSCREEN_TRAIN_NO_EVAL=1`` turns it off (the CLI has no flag for it).

    Returns:
        JSON-ready dict: per-stage metrics and paths, and ``evaluation`` (detection metrics) when run.

    Raises:
        ValueError: on an unknown profile or stage; ``OverrideError`` for an override that is not a plain
            value (a ``$`` expression, a reserved key such as ``_target_``); ``DeviceError`` for a missing GPU.
        CheckpointError: naming the file, when a checkpoint to resume from or to mine with is unusable.
        EvaluationFailed: when a validation scan of the closing evaluation failed (after everything else,
            ``train_result.json`` included, is written).
    """
    from pipelines.bundle import check_user_overrides
    from pipelines.screening.inference import select_device

    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {sorted(PROFILES)}, not {profile!r}")
    bad = sorted(set(stages) - set(STAGES))
    if bad:
        raise ValueError(f"unknown stage(s) {bad}; stages are {list(STAGES)}")
    select_device(device)  # an unknown name or a missing GPU is refused before any work
    overrides = check_user_overrides(overrides or {})
    # absolute Path objects: no user path reaches MONAI's config parser as an expression, reference or macro
    dataset, out_dir = Path(dataset).resolve(), Path(out).resolve()
    _setup_logging()
    out_dir.mkdir(parents=True, exist_ok=True)
    cls_over = {k: v for k, v in overrides.items() if k.startswith("classifier#")}
    seg_over = {k: v for k, v in overrides.items() if k not in cls_over}
    rank, _world = world_info()
    result: dict[str, Any] = {"profile": profile, "seed": seed, "dataset": str(dataset), "out": str(out_dir)}
    t0 = time.perf_counter()
    if "segmentation" in stages:
        result["segmentation"] = train_segmentation(
            dataset=dataset,
            out=out_dir,
            profile=profile,
            seed=seed,
            device=device,
            overrides=seg_over,
            resume=resume,
            init_weights=init_weights,
        )
    if rank != 0:
        return result
    if "classifier" in stages:
        from pipelines.training.classifier import train_classifier_stage

        result["classifier"] = train_classifier_stage(
            dataset=dataset, out=out_dir, profile=profile, seed=seed, device=device, overrides=cls_over
        )
    if evaluate and os.environ.get("LUNGSCREEN_TRAIN_NO_EVAL") != "1":
        os.environ["WORLD_SIZE"], os.environ["RANK"] = "1", "0"  # screen() must not shard after DDP training
        result["evaluation"] = evaluate_validation(
            dataset=dataset, out=out_dir, device=device, max_cases=EVAL_MAX_CASES[profile]
        )
    result["elapsed_s"] = round(time.perf_counter() - t0, 1)
    (out_dir / "train_result.json").write_text(json.dumps(result, indent=1, default=str))
    failed = int((result.get("evaluation") or {}).get("failed") or 0)
    if failed:
        ev = result["evaluation"]
        raise EvaluationFailed(
            f"closing evaluation: {failed} of {failed + int(ev.get('scans') or 0)} validation scans failed "
            f"(reasons in {ev['failures_csv']}); the trained weights are in {out_dir / 'models'}"
        )
    return result


def _setup_logging() -> None:
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(asctime)s %(name)s %(message)s")


def segmentation_configs(profile: str) -> list[str]:
    """Config files (in ``monai_bundle/configs``) stacked for ``profile``, plus the DDP overlay under torchrun."""
    files = list(PROFILES[profile])
    if world_info()[1] > 1:
        files.append("multi_gpu_train.json")
    return files


def segmentation_overrides(
    *, dataset: PathLike, run_dir: Path, profile: str, seed: int, device: str, resume: bool
) -> dict[str, Any]:
    """ID-path overrides that ``train()`` passes to the stacked segmentation configs."""
    pairs: dict[str, Any] = {
        "dataset_dir": Path(dataset).resolve(),
        "run_dir": Path(run_dir).resolve(),
        "seed": int(seed),
        "resume": bool(resume),
        "settings#device": device,
    }
    if profile == "smoke":
        pairs.update(SMOKE_OVERRIDES)
    return pairs


def train_segmentation(
    *,
    dataset: PathLike,
    out: Path,
    profile: str,
    seed: int,
    device: str,
    overrides: dict[str, Any],
    resume: bool,
    init_weights: PathLike | None = None,
) -> dict[str, Any]:
    """Run the bundle's segmentation training; return iterations, losses, best Dice and weight paths.

    ``init_weights`` (a state dict, loaded with ``weights_only=True``) starts a fine-tuning run.
    """
    from pipelines.bundle import load_workflow

    run_dir = out / "segmentation"
    pairs = segmentation_overrides(
        dataset=dataset, run_dir=run_dir, profile=profile, seed=seed, device=device, resume=resume
    )
    pairs.update(overrides)
    start_iteration = 0
    if resume:
        start_iteration = _check_resume(run_dir / "checkpoints")
    workflow = load_workflow(segmentation_configs(profile), workflow_type="train", overrides=pairs)
    workflow.initialize()
    if init_weights is not None and not resume:
        net = workflow.parser.get_parsed_content("network")
        load_weights(net.module if hasattr(net, "module") else net, init_weights)
        print(f"[train] initialised the network from {init_weights}", flush=True)
    print(f"[train] segmentation: profile {profile}, seed {seed}, run dir {run_dir}", flush=True)
    workflow.run()
    parser = workflow.parser
    trainer = parser.get_parsed_content("train#trainer")
    evaluator = parser.get_parsed_content("validate#evaluator")
    network = parser.get_parsed_content("network")
    logger = next(h for h in parser.get_parsed_content("train#handlers") if hasattr(h, "losses"))
    workflow.finalize()
    return _segmentation_result(run_dir, out, trainer, evaluator, network, logger.losses, start_iteration)


def _check_resume(ckpt_dir: Path) -> int:
    """Validate the checkpoint to resume from (weights-only, right architecture); return its iteration."""
    from monai.bundle import ConfigParser

    from pipelines.bundle import bundle_root

    path = latest_checkpoint(ckpt_dir)
    if path is None:
        raise CheckpointError(f"{ckpt_dir}: no checkpoint to resume from (train once without --resume)")
    parser = ConfigParser()
    parser.read_config(str(bundle_root() / "configs" / "inference.json"))
    load_weights(parser.get_parsed_content("network_def"), path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    return int(state.get("trainer", {}).get("iteration", 0))


def _segmentation_result(
    run_dir: Path,
    out: Path,
    trainer: Any,
    evaluator: Any,
    network: torch.nn.Module,
    losses: list[float],
    start_iteration: int,
) -> dict[str, Any]:
    from pipelines.training.data import is_main_process

    best = run_dir / "models" / "model.pt"
    net: torch.nn.Module = (
        network.module if isinstance(network, torch.nn.parallel.DistributedDataParallel) else network
    )
    shipped = out / "models" / "model.pt"
    if is_main_process():
        shipped.parent.mkdir(parents=True, exist_ok=True)
        if not best.is_file():  # no validation ran: ship the last weights
            best.parent.mkdir(parents=True, exist_ok=True)
            torch.save({k: v.detach().cpu() for k, v in net.state_dict().items()}, best)
        shutil.copyfile(best, shipped)
        torch.save(
            {k: v.detach().cpu() for k, v in net.state_dict().items()}, run_dir / "models" / "model_last.pt"
        )
    k = max(1, min(10, len(losses) // 4))
    return {
        "start_iteration": start_iteration,
        "iterations": int(trainer.state.iteration),
        "epochs": int(trainer.state.epoch),
        "loss_first": float(sum(losses[:k]) / k) if losses else None,
        "loss_last": float(sum(losses[-k:]) / k) if losses else None,
        "losses": [round(v, 5) for v in losses],
        "best_val_dice": float(evaluator.state.best_metric)
        if evaluator.state.best_metric_epoch > 0
        else None,
        "best_val_epoch": int(evaluator.state.best_metric_epoch),
        "checkpoint": latest_checkpoint(run_dir / "checkpoints"),
        "weights": str(shipped),
    }


def evaluate_validation(
    *, dataset: PathLike, out: Path, device: str, split: str = "validation", max_cases: int | None = None
) -> dict[str, Any]:
    """Screen the ``split`` scans with the trained weights; LUNA16 detection and segmentation metrics.

    Returns a summary (CPM, sensitivity at 4 FP/scan, nodule and lung Dice), the ``metrics.json`` path, and
    ``failed`` / ``failures_csv``: the scans that could not be screened (no metrics when none could).
    """
    from pipelines.evaluation.evaluate import evaluate
    from pipelines.screening.api import screen

    items = (load_datalist(dataset, split) or load_datalist(dataset, "test"))[:max_cases]
    if not items:
        return {"skipped": f"no {split} scans in {dataset}/datalist.json"}
    models = out / "models"
    cls = models / "classifier.pt"
    screen_dir = out / "evaluation" / "screen"
    res = screen(
        [it["image"] for it in items],
        screen_dir,
        weights=models / "model.pt",
        classifier_weights=cls if cls.is_file() else models / "no_classifier.pt",
        overwrite=True,
        progress=False,
        device=device,
        report=False,
    )
    failures = {"failed": res.failed, "failures_csv": str(screen_dir / "failures.csv")}
    if res.succeeded == 0:  # nothing to score: :func:`train` fails the run
        print(
            f"[train] validation: all {res.failed} scans failed (see {failures['failures_csv']})", flush=True
        )
        return {"scans": 0, **failures}
    root = Path(dataset)
    cases = root / "cases.csv"
    metrics = evaluate(
        annotations=root / "annotations.csv",
        predictions=screen_dir / "submission.csv",
        out_dir=out / "evaluation",
        seriesuids=[it["seriesuid"] for it in items],
        cases_table=cases if cases.is_file() else None,
        pred_dir=screen_dir / "cases",
        ref_dir=root,
        n_bootstrap=200,
        seed=0,
    )
    det = metrics.get("detection", {})
    seg = metrics.get("segmentation", {})
    seg = seg.get("summary", seg)
    summary = {
        "scans": res.succeeded,
        **failures,
        "cpm": det.get("cpm"),
        "sensitivities": det.get("sensitivities"),
        "nodules_ge6mm": {
            k: v for k, v in (det.get("nodules_ge6mm") or {}).items() if not isinstance(v, list)
        },
        "nodule_dice_ge6mm": seg.get("dice_mean_ge6mm_all"),
        "lung_dice_right": seg.get("lung_dice_right_mean"),
        "lung_dice_left": seg.get("lung_dice_left_mean"),
        "metrics_json": str(out / "evaluation" / "metrics.json"),
    }
    print(
        f"[train] validation: CPM {summary['cpm']}, nodule Dice>=6mm {summary['nodule_dice_ge6mm']}",
        flush=True,
    )
    return summary
