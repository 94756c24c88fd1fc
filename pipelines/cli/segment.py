"""``lungscreen train-seg`` and ``lungscreen segment``: the generic CT/MRI segmentation commands."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pipelines.cli.common import DEVICE_HELP, Command, device_arg, key_values


def add_train_seg(sub: Any) -> None:
    s = sub.add_parser("train-seg", help="train a generic 3D segmentation model on images/ + labels/")
    s.add_argument("--images", type=Path, required=True, help="folder of case.nii.gz or case_0000.nii.gz ...")
    s.add_argument("--labels", type=Path, required=True, help="folder of case.nii.gz label maps")
    s.add_argument("--modality", choices=("ct", "mri"), required=True, help="intensity normalisation family")
    s.add_argument("--out", type=Path, required=True, help="model folder to write (plan.json, model.pt)")
    s.add_argument("--iterations", type=int, default=2000, help="optimisation steps (default 2000)")
    s.add_argument("--seed", type=int, default=0, help="seed of numpy, torch and MONAI")
    s.add_argument("--device", type=device_arg, default="auto", help=DEVICE_HELP)
    s.add_argument(
        "--patch-voxels", dest="patch_voxels", type=int, default=None, help="patch budget (default 96^3)"
    )
    s.add_argument("--features", type=int, default=None, help="UNet base features (default 16)")
    s.add_argument("--no-n4", action="store_true", help="skip N4 bias-field correction (MRI)")
    s.add_argument(
        "--set",
        nargs="+",
        action="extend",
        metavar="KEY=VALUE",
        help="seg_train.json overrides by ID path, e.g. optimizer#lr=0.001",
    )


def cmd_train_seg(a: argparse.Namespace) -> int:
    from pipelines.segmentation.train import train_segmentation

    planning: dict[str, Any] = {}
    if a.patch_voxels is not None:
        planning["max_patch_voxels"] = a.patch_voxels
    if a.features is not None:
        planning["base_features"] = a.features
    if a.no_n4:
        planning["n4"] = False
    out = train_segmentation(
        images=a.images,
        labels=a.labels,
        modality=a.modality,
        out=a.out,
        iterations=a.iterations,
        seed=a.seed,
        device=a.device,
        planning=planning or None,
        overrides=key_values(a.set or []) or None,
    )
    print(f"model written to {out}")
    return 0


def add_segment(sub: Any) -> None:
    s = sub.add_parser("segment", help="segment a folder with a model trained by train-seg")
    s.add_argument("model", type=Path, help="model folder written by train-seg")
    s.add_argument("inputs", type=Path, help="folder, file or DICOM folder to segment")
    s.add_argument("out", type=Path, help="output folder")
    s.add_argument("--device", type=device_arg, default="auto", help=DEVICE_HELP)
    s.add_argument("--overwrite", action="store_true", help="recompute cases that are already complete")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.add_argument(
        "--set",
        nargs="+",
        action="extend",
        metavar="KEY=VALUE",
        help="seg_inference.json overrides, e.g. inferer#overlap=0.5",
    )


def cmd_segment(a: argparse.Namespace) -> int:
    from pipelines.segmentation.engine import segment

    res = segment(
        a.model,
        a.inputs,
        a.out,
        device=a.device,
        overwrite=a.overwrite,
        progress=not a.quiet,
        overrides=key_values(a.set or []) or None,
    )
    print(
        f"{res.succeeded} succeeded, {res.failed} failed, {res.skipped} skipped (already done) of {res.total}"
    )
    return res.exit_code


COMMANDS = {
    "train-seg": Command(add_train_seg, cmd_train_seg),
    "segment": Command(add_segment, cmd_segment),
}
