"""Are two output trees the same, byte for byte, apart from version fields, fingerprints and timings?

Usage::

    python benchmarks/compare_runs.py OUT_A OUT_B

Every file in both trees is compared as bytes; a JSON or CSV file that differs is compared again without the
keys/columns ``bundle_version``, ``version(s)``, ``fingerprint`` and ``seconds_*`` (JSON key order kept). Used to
check that a refactoring leaves the outputs of ``make demo`` and of a screened evaluation set unchanged.
Prints the counts and every file that still differs; exits 1 when one does or when a file is on one side only.
"""

from __future__ import annotations

import csv
import io
import json
import re
import sys
from pathlib import Path
from typing import Any

DROP = re.compile(r"^(bundle_version|fingerprint|seconds_.*|versions|version)$")


def _without(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _without(v) for k, v in obj.items() if not DROP.match(k)}
    if isinstance(obj, list):
        return [_without(v) for v in obj]
    return obj


def normalised(path: Path) -> bytes:
    """The file's bytes, or for JSON/CSV its content without the dropped keys/columns."""
    data = path.read_bytes()
    if path.suffix == ".json":
        return json.dumps(_without(json.loads(data)), indent=1).encode()
    if path.suffix == ".csv":
        rows = list(csv.reader(io.StringIO(data.decode())))
        if not rows:
            return data
        keep = [i for i, name in enumerate(rows[0]) if not DROP.match(name)]
        return "\n".join(",".join(r[i] for i in keep if i < len(r)) for r in rows).encode()
    return data


def compare(a: Path, b: Path) -> tuple[int, int, list[str], list[str]]:
    """(byte-identical count, identical-after-normalising count, differing files, files on one side only)."""
    files_a = {p.relative_to(a) for p in a.rglob("*") if p.is_file()}
    files_b = {p.relative_to(b) for p in b.rglob("*") if p.is_file()}
    identical = same = 0
    differ = []
    for rel in sorted(files_a & files_b):
        if (a / rel).read_bytes() == (b / rel).read_bytes():
            identical += 1
        elif normalised(a / rel) == normalised(b / rel):
            same += 1
        else:
            differ.append(str(rel))
    return identical, same, differ, sorted(str(p) for p in files_a ^ files_b)


def main(argv: list[str]) -> int:
    a, b = Path(argv[0]), Path(argv[1])
    identical, same, differ, one_side = compare(a, b)
    print(
        f"{identical + same + len(differ)} files in both: {identical} byte-identical, {same} identical without "
        f"version/fingerprint/seconds fields, {len(differ)} differ; on one side only: {one_side}"
    )
    for rel in differ:
        print("DIFFERS", rel)
    return 1 if differ or one_side else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
