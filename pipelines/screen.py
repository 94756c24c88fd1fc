"""``screen()``: the whole screening job as one function (folder, file, list or in-memory image in; files out).

Also the torchrun entry point: ``torchrun --nproc_per_node N -m pipelines.screen IN OUT`` shards the cases
over ranks; rank 0 merges the run tables.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class ScreenResult:
    """Counts of one run and where its outputs are."""

    output_dir: Path
    succeeded: int
    failed: int
    skipped: int
    total: int

    @property
    def exit_code(self) -> int:
        """0: every case succeeded (or was already done); 1: some failed; 2: none succeeded or no scan found."""
        if self.total == 0:
            return 2
        if self.failed == 0:
            return 0
        return 1 if self.succeeded + self.skipped > 0 else 2

    @property
    def index_html(self) -> Path:
        return self.output_dir / "index.html"


def screen(
    inputs: Any,
    output_dir: str | os.PathLike[str],
    *,
    weights: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
    classifier_weights: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    bundle_root: str | os.PathLike[str] | None = None,
    **settings: Any,
) -> ScreenResult:
    """Screen chest CT for lung nodules with the bundle's inference config.

    Args:
        inputs: a folder (searched recursively for NIfTI/MetaImage/NRRD files and DICOM series), one file, one
            DICOM folder, a list of those, or an in-memory ``SimpleITK.Image`` (LPS world, HU).
        output_dir: output folder (layout in :mod:`pipelines.outputs`); must not lie inside an input folder.
        weights, classifier_weights: checkpoints overriding the bundle's ``models/``; several ``weights``
            screen with the mean logit of their networks (:mod:`pipelines.ensemble`).
        overwrite: recompute cases that are already complete.
        progress: show a progress bar.
        bundle_root: another bundle folder.
        **settings: any :class:`pipelines.settings.ScreeningSettings` field, e.g. ``device="cpu"``.

    Returns:
        A :class:`ScreenResult`; per-case files are under ``output_dir/cases/<case_id>/``.

    Example:
        >>> from pipelines import screen
        >>> res = screen("sample_data/demo/images", "outputs/demo", device="cpu")  # doctest: +SKIP
        >>> res.exit_code, res.index_html  # doctest: +SKIP
    """
    from pipelines import io
    from pipelines.bundle import load_workflow, settings_overrides
    from pipelines.engine import root_cause
    from pipelines.ensemble import weight_files
    from pipelines.runstate import NoCaseSucceeded, NoScanFound, TablesNotWritten

    overrides: dict[str, Any] = {
        "output_dir": str(output_dir),
        "overwrite": overwrite,
        "progress": progress,
        **settings_overrides(settings),
    }
    if hasattr(inputs, "GetSize"):
        overrides["dataset"] = [io.CaseInput("image_0000", Path("<memory>"), image=inputs)]
        overrides["evaluator#input_roots"] = []
    else:
        roots = [str(p) for p in inputs] if isinstance(inputs, list | tuple) else str(inputs)
        overrides["dataset_dir"] = roots
        overrides["evaluator#input_roots"] = roots if isinstance(roots, list) else [roots]
    if weights is not None:  # "" or []: keep the network's own weights
        files = [str(w) for w in weight_files(weights)]
        overrides["weights"] = files if len(files) > 1 else (files[0] if files else "")
    if classifier_weights is not None:
        overrides["classifier_weights"] = str(classifier_weights)
    workflow = load_workflow("inference.json", root=bundle_root, overrides=overrides)
    try:
        workflow.initialize()
        workflow.run()
    except RuntimeError as err:  # MONAI wraps errors of config expressions ("Failed to evaluate ...")
        cause = root_cause(err)
        if isinstance(cause, NoScanFound | NoCaseSucceeded):  # run tables written; the exit code says it
            c = cause.counts
            return ScreenResult(Path(output_dir), c["succeeded"], c["failed"], c["skipped"], c["total"])
        if isinstance(cause, ValueError | OSError | TablesNotWritten):
            raise cause from None  # a refused output folder, a bad setting, a missing file: say it plainly
        raise
    engine = workflow.parser.get_parsed_content("evaluator")
    workflow.finalize()
    c = engine.stats
    return ScreenResult(Path(output_dir), c["succeeded"], c["failed"], c["skipped"], c["total"])


def main(argv: list[str] | None = None) -> int:
    from pipelines.cli import main as cli_main

    return cli_main(["screen", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
