"""``lungscreen evaluate``: its parser and its handler (:func:`pipelines.evaluation.evaluate.evaluate`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pipelines.cli.common import Command, warn_if_stale


def add_evaluate(sub: Any) -> None:
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


def cmd_evaluate(a: argparse.Namespace) -> int:
    from pipelines.evaluation.evaluate import evaluate

    warn_if_stale(a.ref_dir if a.ref_dir is not None else Path(a.annotations).parent)

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


COMMANDS = {
    "evaluate": Command(add_evaluate, cmd_evaluate),
}
