"""What a reader of the report sees on a real-nodule validation set: detection at the reporting threshold.

``make validate-real-nodules`` screens scans with real nodules inserted (:mod:`pipelines.realnodules.insert`) and runs
``lungscreen evaluate`` (FROC, CPM, per-type sensitivities). This module adds the figures at the reporting
threshold (``settings#prob_threshold``): sensitivity overall, for nodules of at least 4 mm and per readers'
rating (``cases.csv`` type: LIDC texture or ``calcified``) and size, and false nodules per scan, over the
real nodules only (the phantom hosts' own generator nodules are matched, so hitting one is no false positive,
but they are not counted). The same figures per host (``by_host``: the real chest CT apart from the phantoms, whose
false marks would otherwise hide the real CT's) follow (:func:`pipelines.evaluation.operating_point.threshold_summary`;
its module also sweeps the shape term's weight and the threshold offline). Run as
``python -m pipelines.realnodules.validation DATA SCREEN_OUT``.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from pipelines.evaluation import froc
from pipelines.evaluation.operating_point import threshold_summary

__all__ = ["host_group", "main", "threshold_summary"]


def host_group(seriesuid: str) -> str:
    """The host a case of ``insert-nodules`` was made from: its scan id before ``_real_s<seed>``, a phantom's case
    number dropped (``phantom_s7000_0003_real_s10003`` -> ``phantom_s7000``; ``ct_real_s301`` -> ``ct``)."""
    stem = seriesuid.rsplit("_real_s", 1)[0]
    return re.sub(r"^(phantom_s\d+)_\d+$", r"\1", stem)


def main(argv: list[str] | None = None) -> int:
    """``python -m pipelines.realnodules.validation DATA SCREEN_OUT``: print and write ``SCREEN_OUT/real_nodules.json``."""
    from pipelines.imaging.filesys import atomic_write_text
    from pipelines.screening.settings import ScreeningSettings

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m pipelines.realnodules.validation DATA SCREEN_OUT", file=sys.stderr)
        return 2
    threshold = ScreeningSettings().prob_threshold
    summary = threshold_summary(args[0], args[1], threshold=threshold)
    hosts: dict[str, list[str]] = {}
    for uid in froc.read_seriesuids(Path(args[0]) / "seriesuids.csv"):
        hosts.setdefault(host_group(uid), []).append(uid)
    summary["by_host"] = {
        host: threshold_summary(args[0], args[1], threshold=threshold, scans=set(uids))
        for host, uids in sorted(hosts.items())
    }
    text = json.dumps(summary, indent=1)
    atomic_write_text(Path(args[1]) / "real_nodules.json", text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
