"""``lungscreen train``: its parser and its handler (:func:`pipelines.training.train.train`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from pipelines.cli.common import DEVICE_HELP, Command, UsageError, device_arg, key_values, warn_if_stale


def add_train(sub: Any) -> None:
    s = sub.add_parser("train", help="train the nodule UNet and the false-positive classifier")
    s.add_argument(
        "--dataset", type=Path, required=True, help="folder with datalist.json (sample-data output)"
    )
    s.add_argument("--out", type=Path, default=Path("runs/train"), help="run folder (default runs/train)")
    s.add_argument(
        "--profile",
        choices=("cpu", "gpu", "gpu-device", "smoke"),
        default="cpu",
        help="config stack: cpu (default), gpu, gpu-device or smoke (a few iterations, for tests)",
    )
    s.add_argument("--seed", type=int, default=0, help="seed of determinism, sampling and mining")
    s.add_argument("--device", type=device_arg, default="auto", help=DEVICE_HELP)
    s.add_argument(
        "--stages",
        nargs="+",
        choices=("segmentation", "classifier"),
        default=["segmentation", "classifier"],
        help="stages to run, in order (default both)",
    )
    s.add_argument("--resume", action="store_true", help="continue from the newest segmentation checkpoint")
    s.add_argument(
        "--init-weights", dest="init_weights", type=Path, default=None, help="fine-tune from a state dict"
    )
    s.add_argument(
        "--no-eval", action="store_true", help="skip the final screening + FROC on the validation split"
    )
    s.add_argument(
        "--set",
        nargs="+",
        action="extend",
        metavar="KEY=VALUE",
        help="train.json overrides by ID path, e.g. train#lr=0.001 (numbers, true/false, null, plain strings)",
    )
    s.add_argument("--bank", type=Path, default=None, help="paste real nodules of this bank's train split")
    s.add_argument(
        "--real-share", type=float, default=None, help="share of pasted nodules that are real (0.5)"
    )


def cmd_train(a: argparse.Namespace) -> int:
    from pipelines.training.train import train

    warn_if_stale(a.dataset)

    result = train(
        dataset=a.dataset,
        out=a.out,
        profile=a.profile,
        seed=a.seed,
        device=a.device,
        overrides={**key_values(a.set or []), **bank_overrides(a.bank, a.real_share)},
        resume=a.resume,
        stages=a.stages,
        init_weights=a.init_weights,
        evaluate=not a.no_eval,
    )
    print(json.dumps(result, indent=2, default=str))
    return 0


def bank_overrides(bank: Path | None, share: float | None) -> dict[str, Any]:
    """``train#paste_bank`` (an absolute path, so never read as a config expression) and its share."""
    if bank is None:
        if share is not None:
            raise UsageError("--real-share needs --bank")
        return {}
    if not bank.is_file():
        raise UsageError(f"--bank {bank}: no such file (make it with `lungscreen nodule-bank`)")
    return {
        "train#paste_bank": str(bank.resolve()),
        "train#paste_real_share": 0.5 if share is None else share,
    }


COMMANDS = {
    "train": Command(add_train, cmd_train),
}
