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
from typing import Any

from pipelines.cli_parser import USAGE_EXIT, UsageError, build_parser

Handler = Callable[[argparse.Namespace], int]


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


# ------------------------------------------------------------------------------------------------ main
HANDLERS: dict[str, Handler] = {
    "sample-data": cmd_sample_data,
    "held-out-set": cmd_held_out_set,
    "insert-nodules": cmd_insert_nodules,
    "nodule-bank": cmd_nodule_bank,
    "calibrate-density": cmd_calibrate_density,
    "screen": cmd_screen,
    "evaluate": cmd_evaluate,
    "prepare-luna16": cmd_prepare_luna16,
    "train": cmd_train,
    "bench": cmd_bench,
    "train-seg": cmd_train_seg,
    "segment": cmd_segment,
}


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
        return int(HANDLERS[args.command](args))
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
