"""Batch inference of a model trained by ``lungscreen train-seg``: resumable, fault-tolerant, input geometry.

:func:`segment` (``lungscreen segment MODEL IN OUT``) builds :class:`SegmentationEngine` from the bundle's
``configs/seg_inference.json`` with the model folder's ``plan.json`` as the only source of spacing, patch size
and channels. Output layout::

    OUT/cases/<case_id>/segmentation.nii.gz  label values of the training labels, the input's exact grid
    OUT/cases/<case_id>/volumes.csv|json     per label: voxels, volume_mm3, volume_ml
    OUT/cases/<case_id>/result.json          written last: its presence means the case is complete
    OUT/summary.csv                          one row per case (input, status, seconds, volume_ml_<label> columns)
    OUT/failures.csv                         failed cases with a one-line reason (.state/failed/*.json)
    OUT/failures.log                         their tracebacks (only when some failed)

A failing case (unreadable file, channel geometry mismatch, wrong channel count) is recorded and the batch
goes on; completed cases (same plan, weights and input files) are skipped unless ``overwrite`` (resume after an
interruption). OUT checks, recovery after a kill, Ctrl-C and the end of a run follow :mod:`pipelines.batch.runstate`,
as for screening.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipelines.batch import records, runstate
from pipelines.batch.runner import RunResult, run_cases
from pipelines.imaging import filesys, io, writing
from pipelines.imaging.preprocess import CaseGeometry, resample
from pipelines.screening.inference import load_weights
from pipelines.segmentation.data import SegCase
from pipelines.segmentation.plan import SegPlan
from pipelines.segmentation.transforms import classes_to_labels

log = logging.getLogger("lungscreen")

SUMMARY_BASE = (
    "case_id",
    "input",
    "status",
    "seconds_total",
    "seconds_preprocess",
    "seconds_network",
    "seconds_write",
)
VOLUME_COLUMNS = ("label_value", "label_name", "voxels", "volume_mm3", "volume_ml")


def label_volumes(
    labels_zyx: np.ndarray, spacing_zyx: Sequence[float], plan: SegPlan
) -> list[dict[str, Any]]:
    """Per-label voxel count and volume (mm^3, mL) of a label-value map ``[z, y, x]`` with ``spacing_zyx`` mm.

    Every non-zero label of the plan gets a row (0 voxels when absent), in ``plan.label_values`` order.
    """
    voxel_mm3 = float(np.prod(np.asarray(spacing_zyx, dtype=float)))
    counts = np.bincount(labels_zyx.ravel().astype(np.int64), minlength=max(plan.label_values) + 1)
    rows = []
    for value in plan.label_values[1:]:
        n = int(counts[value])
        rows.append(
            {
                "label_value": int(value),
                "label_name": plan.label_name(value),
                "voxels": n,
                "volume_mm3": round(n * voxel_mm3, 3),
                "volume_ml": round(n * voxel_mm3 / 1000.0, 4),
            }
        )
    return rows


def probabilities_to_canonical(prob: torch.Tensor, geometry: CaseGeometry) -> np.ndarray:
    """Class map on the canonical grid from network-grid probabilities ``[K, z, y, x]``.

    Each class's probability is resampled (trilinear, voxel-edge convention) to the canonical grid and the
    running maximum kept, so memory stays two canonical float arrays whatever the number of classes.
    """
    shape = geometry.canonical_shape
    if tuple(prob.shape[1:]) == tuple(shape):
        return prob.argmax(0).cpu().numpy().astype(np.int64)
    best = torch.full(shape, -1.0)
    arg = torch.zeros(shape, dtype=torch.long)
    for k in range(prob.shape[0]):
        pk = resample(prob[k], shape, mode="trilinear").cpu()
        better = pk > best
        best = torch.where(better, pk, best)
        arg[better] = k
    return arg.numpy()


class SegmentationEngine:
    """Segment a list of cases into ``output_dir`` (layout in the module docstring).

    Args:
        dataset: :class:`SegCase` list (:func:`pipelines.segmentation.data.find_cases`).
        output_dir: where results go; never inside an input folder.
        plan: the model's plan.
        preprocessing: the bundle's preprocessing ``Compose``.
        network: the bundle's UNet (logits ``[B, K, z, y, x]``).
        inferer: MONAI ``SlidingWindowInferer`` (roi = the plan's patch size).
        weights: ``model.pt`` (loaded with ``weights_only=True``); None keeps the network's weights.
        device: where the network runs.
        overwrite: recompute completed cases.
        progress: show a progress bar.
        input_roots: input folders; the output may not lie inside any of them.
        compress: write ``.nii.gz`` (else ``.nii``).
    """

    def __init__(
        self,
        *,
        dataset: Sequence[SegCase],
        output_dir: str | os.PathLike[str],
        plan: SegPlan,
        preprocessing: Callable[[dict[str, Any]], dict[str, Any]],
        network: torch.nn.Module,
        inferer: Any,
        weights: str | os.PathLike[str] | None = None,
        device: torch.device | str = "cpu",
        overwrite: bool = False,
        progress: bool = True,
        input_roots: Sequence[str | os.PathLike[str]] = (),
        compress: bool = True,
    ) -> None:
        self.cases = list(dataset)
        self.output_dir = Path(output_dir)
        self.plan, self.preprocessing, self.inferer = plan, preprocessing, inferer
        self.device = torch.device(device)
        self.network = network.to(self.device).eval()
        if weights:
            load_weights(self.network, Path(weights))
        self.overwrite, self.progress, self.compress = overwrite, progress, compress
        self.stats: dict[str, int] = {}
        self.input_roots = [Path(r) for r in input_roots]
        # a done case is skipped only if this plan and these weights produced it
        plan_sha = hashlib.sha256(
            json.dumps(plan.to_dict(), sort_keys=True, default=str).encode()
        ).hexdigest()
        self.fingerprint = records.run_fingerprint(f"{plan_sha}|compress={compress}", "segment", [weights])

    def run(self) -> dict[str, int]:
        """Segment every case; return counts ``succeeded``, ``failed``, ``skipped``, ``total``.

        Raises:
            pipelines.batch.runstate.OutputDirError: OUT unusable (before any work).
            pipelines.batch.runstate.NoScanFound, NoCaseSucceeded, TablesNotWritten, RunInterrupted: after the run
                tables are written (see :func:`pipelines.batch.runstate.finish`).
        """
        counts: dict[str, int] = {}
        try:
            counts = run_cases(
                self.cases,
                stages=self,
                output_dir=self.output_dir,
                fingerprint=self.fingerprint,
                input_roots=self.input_roots,
                scans=[scan for case in self.cases for scan in case.channels],
                overwrite=self.overwrite,
                progress=self.progress,
                sharded=False,
            )
        finally:
            self.stats = counts
        return counts

    # ------------------------------------------------------------------ the batch runner's per-case stages
    def prepare(self, case: SegCase) -> tuple[dict[str, Any], float]:
        """Check the case's channels against the plan, then read and preprocess them (prefetch thread)."""
        if case.problem:
            raise filesys.ImageReadError(case.path, case.problem)
        if len(case.channels) != self.plan.num_channels:
            names = ", ".join(Path(c.path).name for c in case.channels)
            raise filesys.ImageReadError(
                case.path,
                f"case has {len(case.channels)} channel(s) ({names}); the model expects {self.plan.num_channels} "
                f"(files {case.case_id}_0000 .. {case.case_id}_{self.plan.num_channels - 1:04d})",
            )
        t0 = time.perf_counter()
        data = self.preprocessing({"image": SegCase(case.case_id, case.channels)})
        return data, time.perf_counter() - t0

    def compute(self, case: SegCase, prepared: tuple[dict[str, Any], float]) -> tuple[Any, ...]:
        data, t_pre = prepared
        t = time.perf_counter()
        labels = classes_to_labels(self.predict(data), self.plan)
        return data["geometry"], labels, {"preprocess": t_pre, "network": time.perf_counter() - t}

    def predict(self, data: dict[str, Any]) -> np.ndarray:
        """Class indices ``[z, y, x]`` on the canonical grid from a preprocessed dict."""
        x = torch.as_tensor(data["image"]).float()[None].to(self.device)
        amp = torch.bfloat16 if self.device.type == "cuda" else None
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=amp, enabled=amp is not None):
            logits = self.inferer(x, self.network)
        prob = torch.softmax(logits[0].float(), dim=0)
        return probabilities_to_canonical(prob, data["geometry"])

    def write(self, case: SegCase, computed: tuple[Any, ...], *, fingerprint: str) -> None:
        """The label map on the input's grid, the volumes and ``result.json`` (last, recording ``fingerprint``:
        the run's and the case's input files', :func:`pipelines.batch.runstate.case_fingerprints`)."""
        geometry, labels, timings = computed
        t2 = time.perf_counter()
        folder = records.case_dir(self.output_dir, case.case_id)
        (folder / "result.json").unlink(missing_ok=True)  # incomplete until the new record lands
        ext = ".nii.gz" if self.compress else ".nii"
        writing.write_mask(labels, geometry, folder / f"segmentation{ext}", compress=self.compress)
        volumes = label_volumes(labels, io.spacing_zyx(geometry.canonical), self.plan)
        filesys.atomic_write_text(folder / "volumes.csv", records.to_csv(volumes, VOLUME_COLUMNS))
        records.write_json(folder / "volumes.json", volumes)
        t3 = time.perf_counter()
        seconds = {k: round(v, 2) for k, v in timings.items()}
        summary = {
            "case_id": case.case_id,
            "input": str(case.path),
            "status": "ok",
            "seconds_total": round(sum(timings.values()) + t3 - t2, 2),
            "seconds_preprocess": seconds["preprocess"],
            "seconds_network": seconds["network"],
            "seconds_write": round(t3 - t2, 2),
            **{f"volume_ml_{v['label_name']}": v["volume_ml"] for v in volumes},
        }
        result = {
            "case_id": case.case_id,
            "fingerprint": fingerprint or self.fingerprint,
            "input": str(case.path),
            "inputs": [str(c.path) for c in case.channels],
            "segmentation": f"segmentation{ext}",
            "geometry": {
                "size_xyz": list(geometry.original.size),
                "spacing_xyz_mm": list(geometry.original.spacing),
                "origin_lps_mm": list(geometry.original.origin),
                "direction": list(geometry.original.direction),
                "network_shape_zyx": list(geometry.network_shape),
                "network_spacing_zyx_mm": list(geometry.network_spacing_zyx),
            },
            "volumes": volumes,
            "summary": summary,
        }
        records.write_json(folder / "result.json", result)

    def write_run_files(self, case_ids: set[str]) -> dict[str, int]:
        return rebuild_tables(self.output_dir, self.plan, case_ids=case_ids)


def rebuild_tables(
    output_dir: str | Path, plan: SegPlan, *, case_ids: Collection[str] | None = None
) -> dict[str, int]:
    """Rebuild ``summary.csv``, ``failures.csv`` and ``failures.log`` from the per-case records of ``case_ids``
    (the run's cases; None: every record in OUT), so resumed runs merge (:func:`pipelines.batch.records.load_run_records`)."""
    out = Path(output_dir)
    results, failures, rows = records.load_run_records(out, case_ids)
    columns = [*SUMMARY_BASE, *(f"volume_ml_{plan.label_name(v)}" for v in plan.label_values[1:]), "reason"]
    out.mkdir(parents=True, exist_ok=True)
    filesys.atomic_write_text(out / "summary.csv", records.to_csv(rows, columns))
    records.write_failure_tables(out, failures)
    return {"succeeded": len(results), "failed": len(failures)}


def segment(
    model: str | Path,
    inputs: str | Path,
    out: str | Path,
    *,
    device: str = "auto",
    overwrite: bool = False,
    progress: bool = True,
    overrides: dict[str, Any] | None = None,
    bundle_root: str | Path | None = None,
) -> RunResult:
    """Segment a folder (or file) of scans with a ``train-seg`` model; return counts and where the outputs are.

    Args:
        model: the model folder (``plan.json``, ``model.pt``).
        inputs: folder of ``case.nii.gz`` / ``case_0000.nii.gz``... (channels grouped as in training), a file,
            or a DICOM folder.
        out: output folder (see the module docstring); may not lie inside ``inputs``.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        overwrite: recompute completed cases.
        progress: show a progress bar.
        overrides: config ID-path overrides (``{"inferer#overlap": 0.25}``): numbers, booleans, None, plain
            strings or lists of those (:func:`pipelines.bundle.check_user_overrides`).
        bundle_root: bundle folder (see :func:`pipelines.bundle.bundle_root`).

    Returns:
        A :class:`pipelines.batch.runner.RunResult` (the type :func:`pipelines.screening.api.screen` returns):
        ``succeeded``, ``failed``, ``skipped``, ``total`` and ``exit_code``.

    Raises:
        pipelines.segmentation.plan.PlanError / pipelines.screening.inference.CheckpointError: for an unusable model folder.
        FileNotFoundError: when ``inputs`` does not exist.
        pipelines.bundle.OverrideError: for an override that is not a plain value or names a reserved key.
        pipelines.screening.inference.DeviceError: for a device this machine does not have.
    """
    from pipelines.bundle import check_user_overrides
    from pipelines.screening.inference import CheckpointError, select_device
    from pipelines.segmentation.plan import load_plan
    from pipelines.segmentation.train import load_config, run_unwrapped

    select_device(device)  # an unknown name or a missing GPU is refused before any work
    user = check_user_overrides(overrides or {}, option="override")
    model, inputs, out = Path(model), Path(inputs), Path(out)
    load_plan(model)  # clear errors before the config machinery wraps them
    if not (model / "model.pt").is_file():
        raise CheckpointError(f"{model / 'model.pt'}: checkpoint file not found (train with train-seg)")
    if not inputs.exists():
        raise FileNotFoundError(f"input {inputs} does not exist")
    # paths as Path objects: MONAI's config parser never reads them as expressions, references or macros
    pairs = {
        "model_dir": model,
        "dataset_dir": inputs,
        "output_dir": out,
        "device_name": device,
        "overwrite": bool(overwrite),
        "progress": bool(progress),
        **user,
    }
    parser = load_config(["seg_inference.json"], overrides=pairs, bundle_root=bundle_root)
    run_unwrapped(lambda: parser.get_parsed_content("initialize"))
    try:
        counts = run_unwrapped(lambda: parser.get_parsed_content("evaluator").run())
    except (
        runstate.NoScanFound,
        runstate.NoCaseSucceeded,
    ) as err:  # run tables written; the exit code says it
        counts = err.counts
    return RunResult.from_counts(out, counts)
