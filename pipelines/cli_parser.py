"""The ``lungscreen`` argument parser: every command, option and help text (no heavy imports).

:mod:`pipelines.cli` runs the commands; this module only describes them, so ``lungscreen --help`` is instant.
Usage errors are one line (``lungscreen screen: error: ...``) with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, NoReturn

USAGE_EXIT = 2


class UsageError(ValueError):
    """A command line that cannot be run as given (exit 2, one line)."""


class _Parser(argparse.ArgumentParser):
    """``argparse`` with one-line usage errors (``lungscreen screen: error: ...``), exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE_EXIT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _device(text: str) -> str:
    """``--device`` value: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (whether that GPU exists is checked by
    the command, before any work)."""
    from pipelines.settings import RULES, SettingsError, validate_setting

    try:
        return str(validate_setting("device", text))
    except SettingsError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {RULES['device'].allowed()}") from None


def _version() -> str:
    from pipelines import __version__

    meta = Path(__file__).resolve().parents[1] / "monai_bundle" / "configs" / "metadata.json"
    try:
        bundle = json.loads(meta.read_text())["version"]
    except (OSError, ValueError, KeyError):
        bundle = "not found"
    return f"lungscreen {__version__} (bundle {bundle}; python {sys.version.split()[0]})"


# ------------------------------------------------------------------------------------------------ parser
DEVICE_HELP = "auto (CUDA when available), cpu, cuda or cuda:N; a GPU this machine lacks is an error"


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="lungscreen",
        description="Screen 3D chest CT for lung nodules; segment 3D CT and MRI. Not a medical device.",
    )
    p.add_argument("--version", action="version", version=_version(), help="print the version and exit")
    p.add_argument(
        "--debug", action="store_true", help="show the full traceback of an error instead of one line"
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_sample_data(sub)
    _add_held_out_set(sub)
    _add_insert_nodules(sub)
    _add_real_nodules(sub)
    _add_screen(sub)
    _add_evaluate(sub)
    _add_prepare_luna16(sub)
    _add_train(sub)
    _add_bench(sub)
    _add_train_seg(sub)
    _add_segment(sub)
    return p


def _add_sample_data(sub: Any) -> None:
    s = sub.add_parser("sample-data", help="generate synthetic chest CT (or MRI) with labelled nodules")
    s.add_argument("out", type=Path, help="dataset folder to write (images/, labels/, datalist.json, ...)")
    s.add_argument("--n", type=int, default=4, help="number of cases (default 4)")
    s.add_argument("--seed", type=int, default=0, help="random seed of the first case (default 0)")
    s.add_argument(
        "--size", choices=("small", "full"), default="small", help="small (fast tests) or full-size scans"
    )
    s.add_argument("--modality", choices=("ct", "mri"), default="ct", help="ct (default) or mri")
    s.add_argument("--format", choices=("nii", "mhd"), default="nii", help="NIfTI (default) or MetaImage")
    s.add_argument("--preview", action="store_true", help="also write preview.png, a montage through nodules")
    s.add_argument("--workers", type=int, default=1, help="generate cases in this many processes")


def _add_held_out_set(sub: Any) -> None:
    s = sub.add_parser(
        "held-out-set", help="link chosen splits of datasets into one evaluation folder (validation sets)"
    )
    s.add_argument("out", type=Path, help="evaluation folder to create")
    s.add_argument(
        "sources", nargs="+", metavar="DATASET[:SPLITS]", help="e.g. sample_data/train_full:validation,test"
    )


def _add_insert_nodules(sub: Any) -> None:
    s = sub.add_parser("insert-nodules", help="insert synthetic nodules into a real CT (labelled test cases)")
    s.add_argument("ct", type=Path, help="the chest CT to insert nodules into")
    s.add_argument("out", type=Path, help="output folder (image, nodule labels, annotations.csv)")
    s.add_argument("--n", type=int, default=3, help="number of nodules (default 3)")
    s.add_argument("--seed", type=int, default=0, help="random seed of sizes, types and places (default 0)")
    s.add_argument("--lungs", type=Path, default=None, help="lung mask of the CT (else segmented)")
    s.add_argument("--bank", type=Path, default=None, help="insert real nodules from this nodule bank (.npz)")
    s.add_argument(
        "--split",
        choices=("train", "validation", "all"),
        default="validation",
        help="the bank split to draw from",
    )
    s.add_argument("--labels", type=Path, default=None, help="nodule labels already in the scan (phantoms)")


def _add_real_nodules(sub: Any) -> None:
    s = sub.add_parser("nodule-bank", help="read annotated nodule crops (LIDC layout) into a nodule bank")
    s.add_argument("src", type=Path, help="folder with image/, nodule_mask/ and nodules.csv")
    s.add_argument("out", type=Path, help="the bank file to write (.npz)")
    s.add_argument("--split-file", type=Path, default=None, help="also record the patient split here (CSV)")

    s = sub.add_parser(
        "calibrate-density",
        help="density type and diameter against the readers' ratings of annotated nodules",
    )
    s.add_argument("src", type=Path, help="folder with image/, nodule_mask/ and nodules.csv")
    s.add_argument(
        "--split",
        choices=("train", "validation", "all"),
        default="validation",
        help="the bank split to report on (default validation)",
    )
    s.add_argument("--fit", action="store_true", help="also choose the thresholds on the train split")
    s.add_argument("--out", type=Path, default=None, help="write the tables as JSON here")


def _add_screen(sub: Any) -> None:
    s = sub.add_parser("screen", help="screen a folder/file/DICOM series for lung nodules")
    s.add_argument(
        "inputs", nargs="+", type=Path, help="folders, files or DICOM folders; the last argument is OUT"
    )
    s.add_argument(
        "--weights",
        type=Path,
        action="append",
        default=None,
        help="segmentation checkpoint; repeat it to screen with the mean logit of several (e.g. fold models)",
    )
    s.add_argument(
        "--classifier-weights", type=Path, default=None, help="false-positive classifier checkpoint"
    )
    s.add_argument("--device", type=_device, default=None, help=DEVICE_HELP)
    s.add_argument(
        "--sw-batch-size",
        dest="sw_batch_size",
        type=int,
        default=None,
        help="sliding windows per network call",
    )
    s.add_argument(
        "--overlap", type=float, default=None, help="sliding-window overlap fraction, in [0, 0.95)"
    )
    s.add_argument(
        "--roi-size",
        dest="roi_size",
        type=int,
        nargs=3,
        default=None,
        metavar=("Z", "Y", "X"),
        help="sliding-window size in voxels (multiples of 8)",
    )
    s.add_argument(
        "--threshold",
        dest="prob_threshold",
        type=float,
        default=None,
        help="reporting probability, in [0, 1]",
    )
    s.add_argument("--write-probability", action="store_true", help="also write probability.nii.gz per case")
    s.add_argument("--no-report", action="store_true", help="no HTML report per case and no index.html")
    s.add_argument("--no-compress", action="store_true", help="write .nii instead of .nii.gz")
    s.add_argument("--overwrite", action="store_true", help="recompute cases that are already complete")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.add_argument("--bundle-root", type=Path, default=None, help="another bundle folder (configs/, models/)")
    s.add_argument(
        "--set",
        nargs="+",
        action="extend",
        metavar="KEY=VALUE",
        help="any screening setting, e.g. lung_margin_mm=15 (JSON values; repeatable)",
    )


def _add_evaluate(sub: Any) -> None:
    s = sub.add_parser("evaluate", help="LUNA16 FROC/CPM and segmentation metrics")
    s.add_argument(
        "--annotations", type=Path, required=True, help="reference annotations.csv (LUNA16 format)"
    )
    s.add_argument("--predictions", type=Path, required=True, help="submission.csv written by screen")
    s.add_argument("--excluded", type=Path, default=None, help="LUNA16 annotations_excluded.csv")
    s.add_argument("--seriesuids", type=Path, default=None, help="the scans to evaluate (one uid a line)")
    s.add_argument("--cases", type=Path, default=None, help="per-nodule table with type (cases.csv)")
    s.add_argument("--pred-dir", type=Path, default=None, help="screening output cases/ folder (masks)")
    s.add_argument("--ref-dir", type=Path, default=None, help="dataset folder with labels/ and lungs/")
    s.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples of the CPM interval")
    s.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    s.add_argument("--out", type=Path, required=True, help="folder for metrics.json and the FROC plot")


def _add_prepare_luna16(sub: Any) -> None:
    s = sub.add_parser("prepare-luna16", help="LUNA16 subsets -> nodule masks and a 10-fold MONAI datalist")
    s.add_argument("--root", type=Path, required=True, help="folder holding subset0/ ... subset9/")
    s.add_argument("--annotations", type=Path, required=True, help="LUNA16 annotations.csv")
    s.add_argument("--excluded", type=Path, default=None, help="LUNA16 annotations_excluded.csv")
    s.add_argument("--out", type=Path, required=True, help="dataset folder to write")
    s.add_argument(
        "--subsets", type=int, nargs="*", default=None, help="subset numbers to ingest (default all)"
    )
    s.add_argument(
        "--validation-fold", dest="validation_fold", type=int, default=0, help="subset used for validation"
    )


def _add_train(sub: Any) -> None:
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
    s.add_argument("--device", type=_device, default="auto", help=DEVICE_HELP)
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


def _add_bench(sub: Any) -> None:
    s = sub.add_parser("bench", help="benchmark every stage against the plain MONAI chain")
    s.add_argument(
        "--out", type=Path, default=Path("benchmarks/results"), help="results folder (JSON and Markdown)"
    )
    s.add_argument(
        "--sizes",
        nargs="+",
        choices=("small", "full"),
        default=["small", "full"],
        help="phantom sizes to bench",
    )
    s.add_argument("--device", type=_device, default="auto", help=DEVICE_HELP)
    s.add_argument("--repeats", type=int, default=3, help="timed repeats per measurement (median reported)")
    s.add_argument("--no-baseline", action="store_true", help="skip the plain MONAI chain")
    s.add_argument(
        "--quick",
        action="store_true",
        help="stages, end-to-end screens and the baseline only (no setting variants, no sw_batch_size sweep)",
    )
    s.add_argument(
        "--memory-slices", type=int, nargs="*", default=None, help="also measure scans stacked to N slices"
    )
    s.add_argument(
        "--scan",
        action="append",
        metavar="NAME=PATH",
        help="bench this scan (repeatable) instead of generating one per --sizes; an annotations.csv in its "
        "folder or the one above gives the reference nodules",
    )


def _add_train_seg(sub: Any) -> None:
    s = sub.add_parser("train-seg", help="train a generic 3D segmentation model on images/ + labels/")
    s.add_argument("--images", type=Path, required=True, help="folder of case.nii.gz or case_0000.nii.gz ...")
    s.add_argument("--labels", type=Path, required=True, help="folder of case.nii.gz label maps")
    s.add_argument("--modality", choices=("ct", "mri"), required=True, help="intensity normalisation family")
    s.add_argument("--out", type=Path, required=True, help="model folder to write (plan.json, model.pt)")
    s.add_argument("--iterations", type=int, default=2000, help="optimisation steps (default 2000)")
    s.add_argument("--seed", type=int, default=0, help="seed of numpy, torch and MONAI")
    s.add_argument("--device", type=_device, default="auto", help=DEVICE_HELP)
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


def _add_segment(sub: Any) -> None:
    s = sub.add_parser("segment", help="segment a folder with a model trained by train-seg")
    s.add_argument("model", type=Path, help="model folder written by train-seg")
    s.add_argument("inputs", type=Path, help="folder, file or DICOM folder to segment")
    s.add_argument("out", type=Path, help="output folder")
    s.add_argument("--device", type=_device, default="auto", help=DEVICE_HELP)
    s.add_argument("--overwrite", action="store_true", help="recompute cases that are already complete")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.add_argument(
        "--set",
        nargs="+",
        action="extend",
        metavar="KEY=VALUE",
        help="seg_inference.json overrides, e.g. inferer#overlap=0.5",
    )
