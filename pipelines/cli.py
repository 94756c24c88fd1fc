"""``lungscreen`` command line: a thin argparse adapter over the keyword-only Python API.

Heavy modules (torch, MONAI, SimpleITK) are imported inside each command so ``lungscreen --help`` is instant.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

Handler = Callable[[argparse.Namespace], int]
USAGE_EXIT = 2


class UsageError(ValueError):
    """A command line that cannot be run as given (exit 2, one line)."""


class _Parser(argparse.ArgumentParser):
    """``argparse`` with one-line usage errors (``lungscreen screen: error: ...``), exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE_EXIT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _parse_value(text: str) -> Any:
    """A ``--set`` value: JSON (numbers, true/false, null, lists, quoted strings), else the text itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _key_values(pairs: list[str]) -> dict[str, Any]:
    """``["a=1", "b#c=x"]`` -> ``{"a": 1, "b#c": "x"}``; a pair without ``=`` is a usage error."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--set expects KEY=VALUE, got {pair!r}")
        out[key.strip()] = _parse_value(value)
    return out


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


# ------------------------------------------------------------------------------------------------ commands
def cmd_sample_data(a: argparse.Namespace) -> int:
    from pipelines.phantom import make_dataset

    out = make_dataset(
        a.out,
        n=a.n,
        seed=a.seed,
        size=a.size,
        modality=a.modality,
        fmt=a.format,
        preview=a.preview,
        workers=a.workers,
    )
    print(f"wrote {a.n} {a.size} {a.modality} case(s) to {out}")
    return 0


def cmd_held_out_set(a: argparse.Namespace) -> int:
    from pipelines.phantom_write import SPLITS, held_out_set

    sources = []
    for spec in a.sources:
        folder, _, splits = spec.partition(":")
        names = SPLITS if splits in ("", "all") else tuple(x for x in splits.split(",") if x)
        sources.append((folder, names))
    out = held_out_set(sources, a.out)
    n = len(json.loads((out / "datalist.json").read_text())["test"])
    print(f"linked {n} held-out case(s) into {out}")
    return 0


def cmd_insert_nodules(a: argparse.Namespace) -> int:
    if a.bank is not None:
        from pipelines.real_insert import insert_real_nodules

        out = insert_real_nodules(
            a.ct,
            a.out,
            a.bank,
            n=a.n,
            seed=a.seed,
            split=a.split,
            lung_mask_path=a.lungs,
            labels_path=a.labels,
        )
        print(f"wrote {out}")
        return 0
    from pipelines.phantom import insert_nodules

    if a.labels is not None:
        raise UsageError("--labels is for --bank insertions")
    out = insert_nodules(a.ct, a.out, n=a.n, seed=a.seed, lung_mask_path=a.lungs)
    print(f"wrote {out}")
    return 0


def cmd_nodule_bank(a: argparse.Namespace) -> int:
    from pipelines.nodule_bank import build_bank, save_bank, write_split_file

    bank = build_bank(a.src)
    for name, reason in bank.refused:
        print(f"refused {name}: {reason}")
    if not len(bank):
        raise ValueError(f"{a.src}: no usable nodule crop")
    save_bank(bank, a.out)
    if a.split_file is not None:
        write_split_file(bank, a.split_file)
    print(json.dumps(bank.summary(), indent=1))
    print(f"wrote {a.out}")
    return 0


def cmd_calibrate_density(a: argparse.Namespace) -> int:
    from pipelines.nodule_calibration import calibrate

    print(calibrate(a.src, split=a.split, fit=a.fit, out=a.out))
    return 0


def cmd_screen(a: argparse.Namespace) -> int:
    from pipelines.screen import screen

    settings: dict[str, Any] = _key_values(a.set or [])
    for name in ("device", "sw_batch_size", "overlap", "prob_threshold"):
        value = getattr(a, name)
        if value is not None:
            settings[name] = value
    if a.roi_size:
        settings["roi_size"] = a.roi_size
    if a.no_report:
        settings["report"] = False
    if a.write_probability:
        settings["write_probability"] = True
    if a.no_compress:
        settings["compress"] = False
    res = screen(
        a.inputs,
        a.out,
        weights=a.weights,
        classifier_weights=a.classifier_weights,
        overwrite=a.overwrite,
        progress=not a.quiet,
        bundle_root=a.bundle_root,
        **settings,
    )
    print(
        f"{res.succeeded} succeeded, {res.failed} failed, {res.skipped} skipped (already done) of {res.total}; "
        f"summary: {res.output_dir / 'summary.csv'}"
    )
    if res.failed:
        print(f"failures: {res.output_dir / 'failures.csv'}")
    if res.index_html.exists():
        print(f"report: {res.index_html.resolve()}")
    return res.exit_code


def _warn_if_stale(dataset: Path | str | None) -> None:
    """Print a warning when ``dataset`` was made by an older phantom generator (its figures are not comparable)."""
    from pipelines.phantom_write import stale_dataset_warning

    msg = stale_dataset_warning(dataset) if dataset is not None and Path(dataset).is_dir() else None
    if msg:
        print(msg, file=sys.stderr)


def cmd_evaluate(a: argparse.Namespace) -> int:
    from pipelines.evaluation import evaluate

    _warn_if_stale(a.ref_dir if a.ref_dir is not None else Path(a.annotations).parent)

    metrics = evaluate(
        annotations=a.annotations,
        predictions=a.predictions,
        out_dir=a.out,
        excluded=a.excluded,
        seriesuids=a.seriesuids,
        cases_table=a.cases,
        pred_dir=a.pred_dir,
        ref_dir=a.ref_dir,
        n_bootstrap=a.bootstrap,
        seed=a.seed,
    )
    det = metrics.get("detection", metrics)
    print(f"CPM {det.get('cpm', float('nan')):.4f}; metrics in {Path(a.out) / 'metrics.json'}")
    return 0


def cmd_prepare_luna16(a: argparse.Namespace) -> int:
    from pipelines.luna16 import prepare_luna16

    out = prepare_luna16(
        root=a.root,
        annotations=a.annotations,
        out=a.out,
        excluded=a.excluded,
        subsets=a.subsets,
        validation_fold=a.validation_fold,
    )
    print(f"wrote {out}")
    return 0


def cmd_train(a: argparse.Namespace) -> int:
    from pipelines.train import train

    _warn_if_stale(a.dataset)

    result = train(
        dataset=a.dataset,
        out=a.out,
        profile=a.profile,
        seed=a.seed,
        device=a.device,
        overrides={**_key_values(a.set or []), **_bank_overrides(a.bank, a.real_share)},
        resume=a.resume,
        stages=a.stages,
        init_weights=a.init_weights,
        evaluate=not a.no_eval,
    )
    print(json.dumps(result, indent=2, default=str))
    return 0


def _bank_overrides(bank: Path | None, share: float | None) -> dict[str, Any]:
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


def _bench_scans(pairs: list[str] | None) -> dict[str, str] | None:
    """``--scan SIZE=PATH`` pairs as ``{size: path}`` (None when none were given)."""
    if not pairs:
        return None
    out = {}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            raise UsageError(f"--scan wants NAME=PATH, got {pair!r}")
        if not Path(path).exists():
            raise UsageError(f"--scan {name}: {path} does not exist")
        out[name] = path
    return out


def cmd_bench(a: argparse.Namespace) -> int:
    from pipelines.bench import run_bench

    result = run_bench(
        out_dir=a.out,
        sizes=a.sizes,
        device=a.device,
        repeats=a.repeats,
        baseline=not a.no_baseline,
        memory_slices=tuple(a.memory_slices or ()),
        inputs=_bench_scans(a.scan),
        sweeps=not a.quick,
        variants=not a.quick,
    )
    print(result["markdown"])
    return 0


def cmd_train_seg(a: argparse.Namespace) -> int:
    from pipelines.segtrain import train_segmentation

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
        overrides=_key_values(a.set or []) or None,
    )
    print(f"model written to {out}")
    return 0


def cmd_segment(a: argparse.Namespace) -> int:
    from pipelines.segment import segment

    res = segment(
        a.model,
        a.inputs,
        a.out,
        device=a.device,
        overwrite=a.overwrite,
        progress=not a.quiet,
        overrides=_key_values(a.set or []) or None,
    )
    print(f"{res['succeeded']} succeeded, {res['failed']} failed, {res['skipped']} skipped")
    return 0 if res["failed"] == 0 else (1 if res["succeeded"] + res["skipped"] else 2)


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
    s.set_defaults(func=cmd_sample_data)


def _add_held_out_set(sub: Any) -> None:
    s = sub.add_parser(
        "held-out-set", help="link chosen splits of datasets into one evaluation folder (validation sets)"
    )
    s.add_argument("out", type=Path, help="evaluation folder to create")
    s.add_argument(
        "sources", nargs="+", metavar="DATASET[:SPLITS]", help="e.g. sample_data/train_full:validation,test"
    )
    s.set_defaults(func=cmd_held_out_set)


def _add_insert_nodules(sub: Any) -> None:
    s = sub.add_parser("insert-nodules", help="insert synthetic nodules into a real CT (labelled test cases)")
    s.add_argument("ct", type=Path, help="the chest CT to insert nodules into")
    s.add_argument("out", type=Path, help="output folder (image, nodule labels, annotations.csv)")
    s.add_argument("--n", type=int, default=3, help="number of nodules (default 3)")
    s.add_argument("--seed", type=int, default=0, help="random seed of sizes, types and places (default 0)")
    s.add_argument("--lungs", type=Path, default=None, help="lung mask of the CT (else segmented)")
    s.add_argument("--bank", type=Path, default=None, help="insert real nodules from this nodule bank (.npz)")
    s.add_argument("--split", choices=("train", "validation", "all"), default="validation", help="bank split")
    s.add_argument("--labels", type=Path, default=None, help="nodule labels already in the scan (phantoms)")
    s.set_defaults(func=cmd_insert_nodules)


def _add_real_nodules(sub: Any) -> None:
    s = sub.add_parser("nodule-bank", help="read annotated nodule crops (LIDC layout) into a nodule bank")
    s.add_argument("src", type=Path, help="folder with image/, nodule_mask/ and nodules.csv")
    s.add_argument("out", type=Path, help="the bank file to write (.npz)")
    s.add_argument("--split-file", type=Path, default=None, help="also record the patient split here (CSV)")
    s.set_defaults(func=cmd_nodule_bank)

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
    s.set_defaults(func=cmd_calibrate_density)


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
    s.set_defaults(func=cmd_screen)


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
    s.set_defaults(func=cmd_evaluate)


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
    s.set_defaults(func=cmd_prepare_luna16)


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
    s.set_defaults(func=cmd_train)


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
    s.set_defaults(func=cmd_bench)


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
    s.set_defaults(func=cmd_train_seg)


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
    s.set_defaults(func=cmd_segment)


# ------------------------------------------------------------------------------------------------ main
def _screen_out(inputs: list[Path]) -> tuple[list[Path] | Path, Path]:
    """Split ``screen``'s positionals into inputs and OUT, refusing a forgotten OUT before any work."""
    usage = "lungscreen screen IN [IN ...] OUT"
    if len(inputs) < 2:
        raise UsageError(f"screen needs at least one input and an output folder: {usage}")
    out = inputs[-1]
    if out.exists() and not out.is_dir():
        raise UsageError(
            f"OUT {out} is an existing file, not a folder; the last argument is the output folder: {usage}"
        )
    if _holds_dicom(out):
        raise UsageError(
            f"OUT {out} holds DICOM files, so it looks like an input; the last argument is the output folder: {usage}"
        )
    return (inputs[:-1] if len(inputs) > 2 else inputs[0]), out


def _holds_dicom(folder: Path, *, limit: int = 32) -> bool:
    """Whether ``folder`` directly holds a DICOM file (``DICM`` at byte 128), among its first ``limit`` files."""
    if not folder.is_dir():
        return False
    try:
        with os.scandir(folder) as entries:
            files = [e for e in entries if e.is_file(follow_symlinks=False)][:limit]
        for entry in files:
            with open(entry.path, "rb") as fh:
                if fh.read(132)[128:] == b"DICM":
                    return True
    except OSError:
        return False
    return False


def _one_line(err: BaseException) -> str:
    """The root cause of ``err`` (out of MONAI's wrappers) as one line."""
    from pipelines.bundle import unwrap_config_error

    cause = unwrap_config_error(err)
    text = " ".join(str(cause).split())
    if isinstance(cause, ValueError | OSError | RuntimeError) and text:
        return text
    return f"{type(cause).__name__}: {text}" if text else type(cause).__name__


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "screen":
            args.inputs, args.out = _screen_out(args.inputs)
        return int(args.func(args))
    except KeyboardInterrupt as err:  # Ctrl-C: one line (the engines write the run tables first), exit 130
        print(f"lungscreen {args.command}: {err or 'interrupted'}", file=sys.stderr)
        return 130
    except UsageError as err:
        print(f"lungscreen {args.command}: error: {err}", file=sys.stderr)
        return USAGE_EXIT
    except Exception as err:
        if args.debug:
            raise
        hint = "" if _is_usage_error(err) else " (rerun with --debug for the traceback)"
        print(f"lungscreen {args.command}: error: {_one_line(err)}{hint}", file=sys.stderr)
        return 2


def _is_usage_error(err: BaseException) -> bool:
    """A bad setting, override or device: the message says it all, a traceback adds nothing."""
    from pipelines.bundle import OverrideError, unwrap_config_error
    from pipelines.inference import DeviceError
    from pipelines.settings import SettingsError

    return isinstance(unwrap_config_error(err), SettingsError | OverrideError | DeviceError)


if __name__ == "__main__":
    sys.exit(main())
