"""Do two screening output folders report the same nodules? (e.g. ``--set backend=torch`` against ``openvino``)

Usage::

    python benchmarks/compare_outputs.py OUT_A OUT_B [--centre-mm 0.01] [--score 1e-3]

For every case in both folders, ``nodules.csv`` and ``candidates.csv`` must list the same ids in the same order,
with LPS centres (mm) within ``--centre-mm`` and probabilities within ``--score``; diameters and other numeric
columns are reported as the largest difference. Prints one line per case and table, and exits 1 on a mismatch.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

CENTRE = ("center_lps_x_mm", "center_lps_y_mm", "center_lps_z_mm")
SCORES = ("probability", "segmentation_probability")


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _float(v: str) -> float | None:
    try:
        return float(v)
    except ValueError:
        return None


def compare_table(a: Path, b: Path, *, centre_mm: float, score: float) -> tuple[bool, str]:
    """Whether two tables agree, and a one-line summary of the largest differences."""
    ra, rb = _rows(a), _rows(b)
    id_col = "nodule_id" if ra and "nodule_id" in ra[0] else "candidate_id"
    ids_a, ids_b = [r.get(id_col) for r in ra], [r.get(id_col) for r in rb]
    if ids_a != ids_b:
        return False, f"{len(ra)} vs {len(rb)} rows; ids {ids_a} vs {ids_b}"
    worst: dict[str, float] = {}
    for x, y in zip(ra, rb, strict=True):
        for col, vx in x.items():
            fx, fy = _float(vx), _float(y.get(col, ""))
            if fx is None or fy is None:
                if vx != y.get(col):
                    worst[col] = float("inf")
                continue
            worst[col] = max(worst.get(col, 0.0), abs(fx - fy))
    centre = max((worst.get(c, 0.0) for c in CENTRE), default=0.0)
    scores = max((worst.get(c, 0.0) for c in SCORES), default=0.0)
    text_diff = sorted(c for c, v in worst.items() if v == float("inf"))
    ok = centre <= centre_mm and scores <= score and not text_diff
    others = {c: v for c, v in worst.items() if c not in CENTRE + SCORES and v > 0 and v != float("inf")}
    largest = max(others.items(), key=lambda kv: kv[1], default=("-", 0.0))
    line = (
        f"{len(ra)} rows, same ids; max centre diff {centre:.2g} mm, max score diff {scores:.2g}, "
        f"largest other diff {largest[0]} {largest[1]:.3g}"
        + (f"; text differs in {text_diff}" if text_diff else "")
    )
    return ok, line


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path)
    ap.add_argument("--centre-mm", type=float, default=0.01)
    ap.add_argument("--score", type=float, default=1e-3)
    args = ap.parse_args(argv)
    cases_a = {p.name for p in (args.a / "cases").iterdir() if (p / "result.json").is_file()}
    cases_b = {p.name for p in (args.b / "cases").iterdir() if (p / "result.json").is_file()}
    all_ok = cases_a == cases_b and bool(cases_a)
    if cases_a != cases_b:
        print(f"cases differ: {sorted(cases_a ^ cases_b)}")
    for case in sorted(cases_a & cases_b):
        for table in ("nodules.csv", "candidates.csv"):
            ok, line = compare_table(
                args.a / "cases" / case / table,
                args.b / "cases" / case / table,
                centre_mm=args.centre_mm,
                score=args.score,
            )
            all_ok &= ok
            print(f"{'OK  ' if ok else 'DIFF'} {case} {table}: {line}")
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
