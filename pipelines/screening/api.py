"""``screen()``: the whole screening job as one function (folder, file, list or in-memory image in; files out).

Also the torchrun entry point: ``torchrun --nproc_per_node N -m pipelines.cli screen IN OUT`` shards the cases
over ranks; rank 0 merges the run tables.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipelines.batch.runner import RunResult

#: What :func:`screen` returns: the batch runner's result (also what ``segment()`` returns).
ScreenResult = RunResult


def screen(
    inputs: Any,
    output_dir: str | os.PathLike[str],
    *,
    weights: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
    classifier_weights: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    bundle_root: str | os.PathLike[str] | None = None,
    spacing_zyx: Sequence[float] | None = None,
    **settings: Any,
) -> ScreenResult:
    """Screen chest CT for lung nodules with the bundle's inference config.

    Args:
        inputs: a folder (searched recursively for NIfTI/MetaImage/NRRD files and DICOM series), one file, one
            DICOM folder or a list of those; or in memory (:mod:`pipelines.screening.inputs`): a ``SimpleITK.Image``
            (LPS world, HU), a nibabel image (its RAS affine is converted), a numpy array ``[z, y, x]`` in HU
            on the canonical LPS grid with ``spacing_zyx``, or a list of such images.
        output_dir: output folder (layout in :mod:`pipelines.screening.outputs`); must not lie inside an input folder.
        weights, classifier_weights: checkpoints overriding the bundle's ``models/``; several ``weights``
            screen with the mean logit of their networks (:mod:`pipelines.screening.ensemble`).
        overwrite: recompute cases that are already complete.
        progress: show a progress bar.
        bundle_root: another bundle folder.
        spacing_zyx: voxel size ``(z, y, x)`` in mm of a numpy array input (origin ``(0, 0, 0)`` LPS mm).
        **settings: any :class:`pipelines.screening.settings.ScreeningSettings` field, e.g. ``device="cpu"``; each is
            validated in Python (type and range) before the bundle config sees it.

    Returns:
        A :class:`ScreenResult`; per-case files are under ``output_dir/cases/<case_id>/``.

    Raises:
        TypeError: for an input of a kind listed nowhere above (the message says what it got).
        pipelines.screening.settings.SettingsError: for an unknown setting or a bad value (naming it and the range).
        pipelines.screening.inference.DeviceError: for a device this machine does not have.
        pipelines.screening.inference.CheckpointError: for unusable weights (naming the file).

    Example:
        >>> from pipelines import screen
        >>> res = screen("sample_data/demo/images", "outputs/demo", device="cpu")  # doctest: +SKIP
        >>> res.exit_code, res.index_html  # doctest: +SKIP
    """
    from pipelines.batch.runstate import NoCaseSucceeded, NoScanFound
    from pipelines.bundle import load_workflow, unwrapped_errors

    overrides = screen_overrides(
        inputs,
        output_dir,
        weights=weights,
        classifier_weights=classifier_weights,
        overwrite=overwrite,
        progress=progress,
        spacing_zyx=spacing_zyx,
        settings=settings,
    )
    workflow = load_workflow("inference.json", root=bundle_root, overrides=overrides)
    # our components' errors (a refused output folder, a bad setting, unusable weights) come out as themselves,
    # not as MONAI's "Failed to instantiate component ..." wrapper
    try:
        with unwrapped_errors():
            workflow.initialize()
            workflow.parser.get_parsed_content("settings")  # cross-setting checks before any scan is touched
            workflow.run()
            engine = workflow.parser.get_parsed_content("evaluator")
            workflow.finalize()
    except (NoScanFound, NoCaseSucceeded) as err:  # run tables written; the exit code says it
        return RunResult.from_counts(output_dir, err.counts)
    return RunResult.from_counts(output_dir, engine.stats)


def screen_overrides(
    inputs: Any,
    output_dir: str | os.PathLike[str],
    *,
    weights: Any = None,
    classifier_weights: Any = None,
    overwrite: bool = False,
    progress: bool = True,
    spacing_zyx: Sequence[float] | None = None,
    settings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The bundle overrides of one :func:`screen` call, every value checked in Python first.

    Paths are ``Path`` objects and in-memory scans :class:`pipelines.imaging.discovery.CaseInput` objects, which MONAI's
    config parser never reads as expressions, references or macros; settings are validated
    (:func:`pipelines.screening.settings.settings_overrides`) and a requested device is checked to exist.
    """
    from pipelines.imaging import discovery
    from pipelines.screening import inputs as api_inputs
    from pipelines.screening.inference import select_device
    from pipelines.screening.settings import settings_overrides

    overrides: dict[str, Any] = {
        "output_dir": _path("output_dir", output_dir),
        "overwrite": _flag("overwrite", overwrite),
        "progress": _flag("progress", progress),
        **settings_overrides(settings or {}),
    }
    if "settings#device" in overrides:
        select_device(overrides["settings#device"])  # a missing GPU is a usage error, before any work
    paths = api_inputs.as_paths(inputs)
    if paths is not None and spacing_zyx is not None:
        raise ValueError("spacing_zyx applies to numpy array inputs only (files carry their own spacing)")
    if overrides.get("settings#dicom_out"):
        _check_dicom_inputs(paths)
    if paths is None:
        images = api_inputs.as_images(inputs, spacing_zyx=spacing_zyx)
        cases = [
            discovery.CaseInput(f"image_{i:04d}", Path("<memory>"), image=im) for i, im in enumerate(images)
        ]
        overrides["dataset"] = cases
        overrides["evaluator#input_roots"] = []
    else:
        overrides["dataset_dir"] = paths
        overrides["evaluator#input_roots"] = paths if isinstance(paths, list) else [paths]
    if weights is not None:  # "" or []: keep the network's own weights
        files = _weight_paths(weights)
        overrides["weights"] = files if len(files) > 1 else (files[0] if files else "")
    if classifier_weights is not None:
        overrides["classifier_weights"] = (
            "" if classifier_weights == "" else _path("classifier_weights", classifier_weights)
        )
    return overrides


def _check_dicom_inputs(paths: Path | list[Path] | None) -> None:
    """``dicom_out`` needs DICOM series: a NIfTI/MetaImage/NRRD file or an in-memory image is refused before any
    work (a folder may mix formats: its other cases get a warning instead, :mod:`pipelines.screening.case_writer`)."""
    from pipelines.export.dicom_source import DicomExportError, require_dicom_input

    if paths is None:
        raise DicomExportError(
            "--dicom-out needs a DICOM series input; an in-memory image has no source series"
        )
    for p in paths if isinstance(paths, list) else [paths]:
        require_dicom_input(p)


def _path(name: str, value: Any) -> Path:
    from pipelines.screening.inputs import describe, is_path

    if not is_path(value):
        raise TypeError(f"{name} must be a path (str or os.PathLike), not {describe(value)}")
    return Path(value)


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, not {value!r}")
    return value


def _weight_paths(weights: Any) -> list[Path]:
    from pipelines.screening.ensemble import weight_files

    if isinstance(weights, str) and weights == "":
        return []
    items = [weights] if isinstance(weights, os.PathLike | str) else weights
    if not isinstance(items, list | tuple):
        return [_path("weights", weights)]
    for w in items:
        _path("weights", w)
    return weight_files(items)
