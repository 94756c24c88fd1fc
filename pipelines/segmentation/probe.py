"""Where a segmentation training run's time goes: the data loader alone, the host-to-device copy, the step alone.

A training iteration can be no faster than the slower of its loader and its optimisation step; when the
trainer runs well below both, the main process (collation, transfers, handlers) is the limit. This probe builds
the same bundle objects ``lungscreen train`` builds (same profile, same overrides) and times each part on its
own for ``seconds``::

    python -m pipelines.segmentation.probe --dataset DATASET --profile gpu --device cuda --seconds 15 \
        [--set train#num_workers=14 ...] [--out probe.json]

The JSON holds batches/s and patches/s of the loader, steps/s of forward + backward + AdamW on one fixed batch
(with the profile's autocast on CUDA), the seconds one batch takes to reach the device, and the caching time.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from pipelines.training.data import PathLike
from pipelines.training.train import segmentation_configs, segmentation_overrides


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def probe(
    *,
    dataset: PathLike,
    profile: str = "gpu",
    device: str = "auto",
    seconds: float = 15.0,
    overrides: dict[str, Any] | None = None,
    run_dir: PathLike | None = None,
) -> dict[str, Any]:
    """Time the loader, the transfer and the optimisation step of ``profile``'s training on ``dataset``.

    Args:
        dataset: folder with ``datalist.json`` (as for ``lungscreen train``).
        profile: ``gpu``, ``gpu-device``, ``cpu`` or ``smoke``.
        device: ``auto``, ``cpu`` or ``cuda``.
        seconds: how long the loader and the step are each timed (at least one batch / step each).
        overrides: ``train.json`` overrides by ID path, as ``--set`` gives them.
        run_dir: where the (unused) run folder points; a temporary name by default.

    Returns:
        ``{"profile", "device", "cache_s", "first_batch_s", "patches_per_batch", "loader_batches_per_s",
        "loader_patches_per_s", "transfer_s", "step_per_s", "step_patches_per_s", "bound"}``; ``bound`` names
        the slower of loader and step.
    """
    from pipelines.bundle import load_workflow

    pairs = segmentation_overrides(
        dataset=dataset,
        run_dir=Path(run_dir or "runs/probe"),
        profile=profile,
        seed=0,
        device=device,
        resume=False,
    )
    pairs.update(overrides or {})
    parser = load_workflow(segmentation_configs(profile), workflow_type="train", overrides=pairs).parser
    dev = parser.get_parsed_content("device")

    t0 = time.perf_counter()
    loader = parser.get_parsed_content("train#dataloader")  # builds (and caches) the dataset
    cache_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    it = iter(loader)
    first = next(it)
    first_batch_s = time.perf_counter() - t0
    patches = int(first["image"].shape[0])
    batches = 0
    t0 = time.perf_counter()
    while batches == 0 or time.perf_counter() - t0 < seconds:
        try:
            next(it)
        except StopIteration:
            it = iter(loader)
            continue
        batches += 1
    loader_s = time.perf_counter() - t0
    del it

    t0 = time.perf_counter()
    x = first["image"].to(dev)
    y = first["label"].to(dev)
    _sync(dev)
    transfer_s = time.perf_counter() - t0

    net = parser.get_parsed_content("network").train()
    loss_fn = parser.get_parsed_content("train#loss")
    opt = parser.get_parsed_content("train#optimizer")
    amp = bool(parser.get_parsed_content("amp"))
    amp_dtype = parser.get_parsed_content("amp_dtype")

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type=dev.type, dtype=amp_dtype, enabled=amp):
            loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()

    step()  # warm-up (cuDNN autotuning, allocator)
    _sync(dev)
    steps = 0
    t0 = time.perf_counter()
    while steps == 0 or time.perf_counter() - t0 < seconds:
        step()
        steps += 1
    _sync(dev)
    step_s = time.perf_counter() - t0

    loader_rate, step_rate = batches / loader_s, steps / step_s
    return {
        "profile": profile,
        "device": str(dev),
        "cache_s": round(cache_s, 3),
        "first_batch_s": round(first_batch_s, 3),
        "patches_per_batch": patches,
        "loader_batches_per_s": round(loader_rate, 3),
        "loader_patches_per_s": round(loader_rate * patches, 2),
        "transfer_s": round(transfer_s, 4),
        "step_per_s": round(step_rate, 3),
        "step_patches_per_s": round(step_rate * patches, 2),
        "bound": "loader" if loader_rate < step_rate else "step",
    }


def main(argv: list[str] | None = None) -> int:
    from pipelines.cli.common import key_values

    ap = argparse.ArgumentParser(
        prog="python -m pipelines.segmentation.probe", description=__doc__.splitlines()[0]
    )
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--profile", choices=("cpu", "gpu", "gpu-device", "smoke"), default="gpu")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE", help="train.json overrides by ID path"
    )
    ap.add_argument("--out", type=Path, help="also write the result here as JSON")
    a = ap.parse_args(argv)
    over = key_values(a.set)
    result = probe(dataset=a.dataset, profile=a.profile, device=a.device, seconds=a.seconds, overrides=over)
    text = json.dumps(result, indent=1)
    print(text)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
