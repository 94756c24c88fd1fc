"""The screening of one case in public stages: ``preprocess -> predict -> analyse -> write``.

:class:`Screener` holds the components that ``monai_bundle/configs/inference.json`` declares (preprocessing,
network, inferer, classifier, settings) and runs one case through them. It is the only copy of the per-case
steps: the batch engine (:class:`pipelines.screening.engine.ScreeningEngine`), the benchmark
(:mod:`pipelines.bench.worker`) and the classifier's candidate mining call these stages, never their own copies.

Example::

    screener = Screener.from_bundle(weights="monai_bundle/models/model.pt", device="cpu")
    case = discover_cases("scan.nii.gz")[0]
    data = screener.preprocess(case)           # canonical grid, lungs, network grid
    prediction = screener.predict(data)        # sliding window (and the finer grid when set)
    result = screener.analyse(data, prediction)  # candidates, scores, nodules
    screener.write("out", case, data, result)  # masks, tables, report, result.json last
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from pipelines.imaging.discovery import CaseInput, check_size
from pipelines.screening.assessability import screenable
from pipelines.screening.backend import active_backend, network_backend
from pipelines.screening.ensemble import load_network_weights, weight_files
from pipelines.screening.inference import (
    load_weights,
    select_device,
    sliding_window_probability,
    window_count,
)
from pipelines.screening.scoring import CaseResult, analyse_case
from pipelines.screening.settings import ScreeningSettings

log = logging.getLogger("lungscreen")

PathLike = str | os.PathLike[str]
#: ``timer(name)`` returns a context manager that times the block as stage ``name``.
Timer = Callable[[str], AbstractContextManager[Any]]


def _no_timer(name: str) -> AbstractContextManager[Any]:
    return nullcontext()


@dataclass
class Prediction:
    """The network's output for one case.

    Attributes:
        probability: nodule probability ``[z, y, x]`` on the case's network grid (zeros when not screened).
        info: window counts (``windows_run``, ``windows_skipped``, ``windows_mirrored``) and the backend.
        fine: the case on the finer grid and the probability there (``fine_spacing_mm``), else None.
        timings: wall seconds of ``network`` (and ``network_fine``).
    """

    probability: torch.Tensor
    info: dict[str, Any]
    fine: tuple[dict[str, Any], torch.Tensor] | None = None
    timings: dict[str, float] = field(default_factory=dict)


def rank_device(device: torch.device) -> torch.device:
    """Under torchrun each process takes its own GPU: an unindexed ``cuda`` becomes ``cuda:$LOCAL_RANK``."""
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device


class Screener:
    """One case through the bundle's components, stage by stage.

    Args:
        preprocessing: the bundle's preprocessing ``Compose`` (dict in, dict out).
        network: nodule segmentation network (logits ``[B, 1, z, y, x]``).
        inferer: MONAI ``SlidingWindowInferer``.
        settings: validated :class:`ScreeningSettings`.
        weights: checkpoint for ``network`` (loaded with ``weights_only=True``), or several: their networks'
            mean logit (:mod:`pipelines.screening.ensemble`); None keeps its weights.
        classifier, classifier_weights: the false-positive classifier and its checkpoint (optional; a missing
            file is a warning and scoring uses the segmentation network only).
        fine_preprocessing: resampling + HU scaling at ``settings.fine_spacing_mm`` (the second grid).
    """

    def __init__(
        self,
        *,
        preprocessing: Callable[[dict[str, Any]], dict[str, Any]],
        network: torch.nn.Module,
        inferer: Any,
        settings: ScreeningSettings,
        weights: PathLike | Sequence[PathLike] | None = None,
        classifier: torch.nn.Module | None = None,
        classifier_weights: PathLike | None = None,
        fine_preprocessing: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> None:
        self.settings = settings
        self.preprocessing = preprocessing
        self.fine_preprocessing = fine_preprocessing if settings.fine_spacing_mm else None
        self.inferer = inferer
        self.device = rank_device(select_device(settings.device))
        self.network, self.backend = network_backend(
            load_network_weights(network.to(self.device), weights).eval(),
            settings=settings,
            device=self.device,
        )
        self.classifier: torch.nn.Module | None = None
        if classifier is not None and classifier_weights and Path(classifier_weights).is_file():
            self.classifier = load_weights(classifier, Path(classifier_weights)).to(self.device).eval()
        elif classifier is not None and classifier_weights:
            log.warning(
                "classifier weights %s not found: scoring with the segmentation network only",
                classifier_weights,
            )
        #: the files that made this screener's scores (run fingerprint of :mod:`pipelines.batch.records`)
        files: list[PathLike | None] = [*weight_files(weights)] or [None]
        self.weight_files = [*files, classifier_weights if self.classifier is not None else None]

    @classmethod
    def from_bundle(
        cls,
        *,
        weights: PathLike | Sequence[PathLike] | None = None,
        classifier_weights: PathLike | None = None,
        bundle_root: PathLike | None = None,
        **settings: Any,
    ) -> Screener:
        """The bundle's components with ``settings`` (validated :class:`ScreeningSettings` fields) overridden.

        ``weights`` / ``classifier_weights`` default to the bundle's ``models/`` files.
        """
        from pipelines.bundle import load_workflow
        from pipelines.screening.settings import settings_overrides

        overrides = settings_overrides(settings)
        parser = load_workflow("inference.json", root=bundle_root, overrides=overrides).parser
        get = parser.get_parsed_content
        chosen = get("settings")
        return cls(
            preprocessing=get("preprocessing"),
            network=get("network_def"),
            inferer=get("inferer"),
            settings=chosen,
            weights=weights if weights is not None else get("weights"),
            classifier=get("classifier_def"),
            classifier_weights=classifier_weights
            if classifier_weights is not None
            else get("classifier_weights"),
            fine_preprocessing=get("fine_preprocessing") if chosen.fine_spacing_mm else None,
        )

    # ------------------------------------------------------------------------------------------- stages
    def preprocess(self, case: CaseInput, *, timer: Timer | None = None) -> dict[str, Any]:
        """Read ``case`` (size limits checked from its header first), reorient, mask the lungs, resample.

        ``timer(name)`` (a context-manager factory, e.g. the benchmark's clock) times each transform under its
        class name.
        """
        check_size(case, max_voxels=self.settings.max_input_voxels)
        data: dict[str, Any] = {"image": case, "case_id": case.case_id}
        if timer is None:
            return self.preprocessing(data)
        for transform in self.preprocessing.transforms:  # type: ignore[attr-defined]
            with timer(type(transform).__name__):
                data = transform(data)
        return data

    @torch.no_grad()
    def predict(self, data: dict[str, Any], *, timer: Timer | None = None) -> Prediction:
        """The network over the lung crop (and over the finer grid when ``fine_spacing_mm`` is set).

        A case without lung, or too thin for a 3D detector (a localizer, a 2-slice stack), is not screened:
        its probability is zero (:func:`pipelines.screening.assessability.screenable`). ``timer(name)`` times
        ``sliding_window`` and ``sliding_window_fine``.
        """
        timer = timer or _no_timer
        t = time.perf_counter()
        skip = bool(data.get("no_lung")) or not screenable(data)
        with timer("sliding_window"):
            if skip:
                prob = torch.zeros(tuple(data["image"].shape[1:]))
                info: dict[str, Any] = {"windows_run": 0, "windows_skipped": 0}
            else:
                prob, info = self.probability(data)
        timings = {"network": time.perf_counter() - t}
        fine = None
        if self.fine_preprocessing is not None and not skip:
            t = time.perf_counter()
            with timer("sliding_window_fine"):
                fine = self._fine_pass(data, prob, info)
            timings["network_fine"] = time.perf_counter() - t
        return Prediction(prob, info, fine, timings)

    def _fine_pass(
        self, data: dict[str, Any], prob: torch.Tensor, info: dict[str, Any]
    ) -> tuple[dict[str, Any], torch.Tensor]:
        """The finer grid's case and probability; its window counts go to ``info`` as ``fine_windows_*``.

        With ``fine_scope="candidates"`` only windows holding a first-pass mark run
        (:func:`pipelines.screening.multiscale.fine_window_marks`); with no mark at all, none does and the
        probability is the background's everywhere.
        """
        from pipelines.screening.multiscale import fine_case, fine_window_marks
        from pipelines.screening.scoring import NetworkHU

        fine_data = fine_case(data, self.fine_preprocessing)
        marks = None
        if self.settings.fine_scope == "candidates":
            lungs = data.get("lungs")
            marks = fine_window_marks(
                prob.numpy(),
                tuple(fine_data["image"].shape[1:]),
                self.settings,
                hu=NetworkHU(data, self.settings),
                lungs=None if lungs is None else torch.as_tensor(lungs).reshape(prob.shape).numpy(),
            )
        if marks is not None and not marks.any():
            background = torch.sigmoid(torch.tensor(-20.0) / float(self.settings.logit_temperature))
            fine_prob = torch.full(tuple(fine_data["image"].shape[1:]), float(background))
            n = window_count(fine_prob.shape, self.settings.roi_size, self.settings.overlap)
            fine_info: dict[str, Any] = {"windows_run": 0, "windows_skipped": n, "windows_unmarked": n}
        else:
            fine_settings = (
                self.settings if self.settings.fine_mirror else replace(self.settings, mirror_axes="")
            )
            fine_prob, fine_info = self.probability(fine_data, window_marks=marks, settings=fine_settings)
        info["fine_scope"] = self.settings.fine_scope
        for key in ("windows_run", "windows_skipped", "windows_unmarked", "windows_mirrored"):
            if key in fine_info:
                info[f"fine_{key}"] = fine_info[key]
        return fine_data, fine_prob

    def probability(
        self, data: dict[str, Any], *, window_marks: Any = None, settings: ScreeningSettings | None = None
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """The network's probability on ``data``'s network grid (sliding window, the settings' mirroring).

        ``window_marks`` (``[z, y, x]`` bool on that grid): only windows holding a mark run. ``settings``:
        these instead of the engine's (the finer grid's, e.g. without mirroring).
        """
        settings = settings or self.settings
        return sliding_window_probability(
            data["image"],
            data.get("lungs"),
            network=self.network,
            inferer=self.inferer,
            settings=settings,
            device=self.device,
            channels_last=settings.channels_last and self.device.type == "cuda",
            compile_network=settings.compile and self.backend == "torch",
            window_marks=None if window_marks is None else torch.as_tensor(window_marks),
        )

    @torch.no_grad()
    def analyse(
        self,
        data: dict[str, Any],
        prediction: Prediction,
        *,
        classify: bool = True,
        info: dict[str, Any] | None = None,
    ) -> CaseResult:
        """Candidates, scores (network, shape, classifier), nodules with sizes, types and Lung-RADS inputs.

        ``classify=False`` leaves the classifier out (the benchmark times it as a stage of its own); ``info``
        (e.g. the torchrun rank) is recorded in ``result.info`` with the window counts and the backend.
        """
        result = analyse_case(
            data,
            prediction.probability,
            settings=self.settings,
            classifier=self.classifier if classify else None,
            device=self.device,
            fine=prediction.fine,
        )
        result.info.update({**prediction.info, **(info or {}), "backend": active_backend(self.network)})
        if data.get("no_lung"):
            result.warnings.append("no lung tissue found: nothing screened")
        return result

    def write(
        self,
        output_dir: PathLike,
        case: CaseInput,
        data: dict[str, Any],
        result: CaseResult,
        *,
        timings: dict[str, float] | None = None,
        bundle_version: str = "",
        fingerprint: str | None = None,
        settings: ScreeningSettings | None = None,
    ) -> None:
        """Masks on the input's grid, tables, report and ``result.json`` (last) in ``output_dir/cases/<id>/``."""
        from pipelines.screening.case_writer import write_case

        t = time.perf_counter()
        result.info["input"] = str(case.path)  # summary.csv names the input beside the case id
        write_case(
            output_dir=Path(output_dir),
            case=case,
            data=data,
            result=result,
            settings=settings or self.settings,
            timings=timings or {},
            bundle_version=bundle_version,
            write_start=t,
            fingerprint=fingerprint or "",
        )
