"""``lungscreen`` data commands: synthetic scans, held-out sets, nodule insertion, the real-nodule bank, LUNA16.

Each command's parser sits beside its handler; the handler passes every option to the Python API.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from pipelines.cli.common import Command, UsageError


def add_sample_data(sub: Any) -> None:
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


def cmd_sample_data(a: argparse.Namespace) -> int:
    from pipelines.phantom.write import make_dataset

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


def add_held_out_set(sub: Any) -> None:
    s = sub.add_parser(
        "held-out-set", help="link chosen splits of datasets into one evaluation folder (validation sets)"
    )
    s.add_argument("out", type=Path, help="evaluation folder to create")
    s.add_argument(
        "sources", nargs="+", metavar="DATASET[:SPLITS]", help="e.g. sample_data/train_full:validation,test"
    )


def cmd_held_out_set(a: argparse.Namespace) -> int:
    from pipelines.phantom.write import SPLITS, held_out_set

    sources = []
    for spec in a.sources:
        folder, _, splits = spec.partition(":")
        names = SPLITS if splits in ("", "all") else tuple(x for x in splits.split(",") if x)
        sources.append((folder, names))
    out = held_out_set(sources, a.out)
    n = len(json.loads((out / "datalist.json").read_text())["test"])
    print(f"linked {n} held-out case(s) into {out}")
    return 0


def add_insert_nodules(sub: Any) -> None:
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
    s.add_argument(
        "--exclude-patients",
        type=Path,
        nargs="+",
        default=[],
        metavar="CSV",
        help="draw no nodule of the patients in these tables' patient_id column (e.g. other sets' real_nodules.csv)",
    )


def _patients_in(tables: list[Path]) -> set[str]:
    """The ``patient_id`` values of every table in ``tables`` (a table without that column is a usage error)."""
    import csv

    found: set[str] = set()
    for path in tables:
        try:
            with path.open(newline="") as f:
                rows = csv.DictReader(f)
                if "patient_id" not in (rows.fieldnames or []):
                    raise UsageError(f"{path}: no patient_id column")
                found.update(r["patient_id"].strip() for r in rows if r["patient_id"].strip())
        except OSError as e:
            raise UsageError(f"{path}: cannot read ({e.strerror or e})") from e
    return found


def cmd_insert_nodules(a: argparse.Namespace) -> int:
    if a.bank is not None:
        from pipelines.realnodules.insert import insert_real_nodules

        out = insert_real_nodules(
            a.ct,
            a.out,
            a.bank,
            n=a.n,
            seed=a.seed,
            split=a.split,
            lung_mask_path=a.lungs,
            labels_path=a.labels,
            exclude_patients=_patients_in(a.exclude_patients),
        )
        print(f"wrote {out}")
        return 0
    from pipelines.phantom.insert import insert_nodules

    if a.labels is not None or a.exclude_patients:
        raise UsageError("--labels and --exclude-patients are for --bank insertions")
    out = insert_nodules(a.ct, a.out, n=a.n, seed=a.seed, lung_mask_path=a.lungs)
    print(f"wrote {out}")
    return 0


def add_nodule_bank(sub: Any) -> None:
    s = sub.add_parser("nodule-bank", help="read annotated nodule crops (LIDC layout) into a nodule bank")
    s.add_argument("src", type=Path, help="folder with image/, nodule_mask/ and nodules.csv")
    s.add_argument("out", type=Path, help="the bank file to write (.npz)")
    s.add_argument("--split-file", type=Path, default=None, help="also record the patient split here (CSV)")


def cmd_nodule_bank(a: argparse.Namespace) -> int:
    from pipelines.realnodules.bank import build_bank, save_bank, write_split_file

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


def add_calibrate_density(sub: Any) -> None:
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


def cmd_calibrate_density(a: argparse.Namespace) -> int:
    from pipelines.realnodules.calibration import calibrate

    print(calibrate(a.src, split=a.split, fit=a.fit, out=a.out))
    return 0


def add_prepare_luna16(sub: Any) -> None:
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


def cmd_prepare_luna16(a: argparse.Namespace) -> int:
    from pipelines.evaluation.luna16 import prepare_luna16

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


def add_followup_pairs(sub: Any) -> None:
    s = sub.add_parser(
        "followup-pairs", help="make follow-up scan pairs with known truth (phantom or a real CT as host)"
    )
    s.add_argument(
        "out", type=Path, help="folder to write (current/, prior/, *_labels/, pairs.csv, truth.csv)"
    )
    s.add_argument("--n", type=int, default=20, help="number of pairs (default 20)")
    s.add_argument("--seed", type=int, default=7700, help="master seed (default 7700)")
    s.add_argument(
        "--size", choices=("small", "full"), default="small", help="phantom size (ignored with --host)"
    )
    s.add_argument("--host", type=Path, default=None, help="make the pairs from this real chest CT instead")
    s.add_argument("--lungs", type=Path, default=None, help="lung mask of the host CT (else segmented)")


def cmd_followup_pairs(a: argparse.Namespace) -> int:
    from pipelines.followup.pairs import make_followup_pairs

    out = make_followup_pairs(a.out, n_pairs=a.n, seed=a.seed, size=a.size, host=a.host, lung_mask=a.lungs)
    print(f"wrote {a.n} follow-up pair(s) to {out} (pairs.csv, truth.csv)")
    return 0


COMMANDS = {
    "sample-data": Command(add_sample_data, cmd_sample_data),
    "held-out-set": Command(add_held_out_set, cmd_held_out_set),
    "insert-nodules": Command(add_insert_nodules, cmd_insert_nodules),
    "nodule-bank": Command(add_nodule_bank, cmd_nodule_bank),
    "calibrate-density": Command(add_calibrate_density, cmd_calibrate_density),
    "prepare-luna16": Command(add_prepare_luna16, cmd_prepare_luna16),
    "followup-pairs": Command(add_followup_pairs, cmd_followup_pairs),
}
