"""One validated settings object for screening; the bundle config is its only source of values.

``monai_bundle/configs/inference.json`` builds :class:`ScreeningSettings` under the id ``settings``; the CLI and
the Python API override those keys (``settings#prob_threshold``) and never hold defaults of their own. Errors
name the field, the bad value and what is allowed, as nnU-Net's plans accessors do.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from typing import Any

DEVICES = ("auto", "cpu", "cuda")
AMP_DTYPES = ("auto", "float32", "bfloat16", "float16")
STITCH_POLICIES = ("auto", "device", "cpu")
MIRROR_SCOPES = ("all", "candidates")
BACKENDS = ("auto", "torch", "openvino")


class SettingsError(ValueError):
    """A screening setting is invalid; the message names it and the allowed values."""


@dataclass(frozen=True)
class ScreeningSettings:
    """Settings of one screening run (all lengths in mm, intensities in HU, probabilities in [0, 1]).

    Attributes:
        target_spacing_mm: isotropic voxel size of the network grid. 1 mm: the smallest LUNA16 nodule (3 mm)
            spans 3 voxels, 30 mm nodules fit a 96 mm window with context, and isotropy makes 90-degree
            rotations valid augmentations.
        hu_min, hu_max: HU window clipped and scaled to [0, 1] for the network (air to dense bone edge).
        lung_margin_mm: margin kept around the lung bounding box (juxta-pleural nodules, chest wall context).
        roi_size: sliding-window size in voxels of the network grid ``(z, y, x)``.
        sw_batch_size: windows per network call (>= 2 on CPU: batch 1 hits PyTorch's slow conv3d path).
        overlap: window overlap fraction; windows are blended with Gaussian weights.
        skip_empty_windows: run the network only on windows that contain lung.
        candidate_threshold: probability above which voxels form a candidate (all go to the LUNA16 CSV).
        prob_threshold: final probability (segmentation x classifier) at which a candidate is a reported nodule.
        min_diameter_mm: smallest equivalent diameter kept as a candidate.
        max_candidates: per scan, at most this many candidates (LUNA16 caps submissions at 100 per scan).
        classifier_weight: weight of the false-positive classifier in the geometric mean of the scores
            (0 = segmentation only).
        blobness_weight: shape term of the score: ``logit(p) + w * (blobness - 0.5)``, where ``blobness``
            (0 vessel or wall, 1 ball; :func:`pipelines.second_look.blobness`) is measured at each candidate
            in the HU image (0 = the score alone).
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        amp: ``auto`` (bfloat16 on CUDA, float32 on CPU) or an explicit dtype.
        stitch: where sliding-window outputs are stitched: ``device``, ``cpu`` or ``auto`` (device when the
            output fits in ``stitch_device_max_voxels``).
        max_input_voxels: scans with more voxels are refused before reading, which bounds memory. Measured
            peak RSS on CPU (v0.4.0): 2.1 GiB at 512x512x251, 2.75 GiB at 1000 slices; the limit (400 M
            voxels, ~1525 slices of 512x512) extrapolates to ~3.2 GiB (linear; not measured).
        write_probability: also write the probability map (``probability.nii.gz``).
        report: write the per-case HTML report and the run's ``index.html``.
        compress: gzip written NIfTI files (level chosen by SimpleITK); ``False`` writes ``.nii``.
        channels_last: channels-last 3D memory format for the network on CUDA (ignored on CPU, where it is
            slower: 1.53 vs 0.97 s per window measured).
        compile: ``torch.compile`` the network (slow first case; for long batch runs on GPU).
        logit_temperature: probabilities are ``sigmoid(logit / T)``. T > 1 softens an over-confident network:
            in float32 ``sigmoid`` is exactly 1.0 above a logit of ~17, which ties confident candidates; the
            thresholds above apply to the tempered probabilities.
        mirror_axes: test-time mirroring: letters of ``"zyx"`` (``""`` off). The logit is averaged over each
            window and its mirror images along every combination of these axes (``2**n`` network passes).
        mirror_scope: which windows are mirrored: ``all`` (every window, nnU-Net's way) or ``candidates``
            (a second pass mirrors only the windows that hold a first-pass candidate: the same logits inside
            those candidates for about a third of the mirroring time; a near-miss that only mirroring would
            lift into a candidate is lost. On 16 validation scans: identical reported nodules, 100 instead of
            105 candidates, 28.5 % of the windows mirrored).
        second_look: add second-look candidates (:mod:`pipelines.second_look`): blob-shaped spots (Hessian dot
            filter) where the network's probability reaches ``second_look_min_probability`` but no network
            candidate formed. Scored by that probability, capped below ``candidate_threshold`` (before the
            shape term, which moves them like every candidate), never reported as nodules; they go to
            ``candidates.csv`` and the LUNA16 submission. Validation CPM 0.647 -> 0.658 on phantoms, 0.722 -> 0.746 on real CT.
        second_look_min_probability: network probability a second-look spot needs within 2 voxels.
        second_look_min_response_hu: dot-filter response (HU) a second-look spot needs.
        mirror_threshold: with ``mirror_scope="candidates"``, first-pass components above this (tempered)
            probability and at least ``min_diameter_mm`` big have their windows mirrored. Lower values mirror
            more windows and lose fewer near-misses.
        fine_spacing_mm: a second network pass on the lung crop resampled to this finer isotropic spacing
            (``None``: off), for small nodules that the first grid shows too few voxels of; its candidates are
            merged into the first pass's (:mod:`pipelines.multiscale`). Needs the bundle's
            ``fine_preprocessing``. About twice the first pass's network time at 0.7 mm.
        fine_max_diameter_mm: fine-pass candidates above this diameter are ignored (the first grid, with
            more context per window, finds the large ones).
        fine_logit_offset: added to the logit of fine-pass scores before the merge.
        backend: the runtime of the nodule network (:mod:`pipelines.inference_backend`): ``torch``,
            ``openvino`` (CPU only, float32; the ``cpu-fast`` extra) or ``auto`` (OpenVINO on the CPU when it
            is installed and ``amp`` asks for no reduced precision, PyTorch otherwise and always on CUDA).
            ``torch`` by default: on the 2-core AMD EPYC (AVX2) development machine OpenVINO 2026.4 took 1.6x
            PyTorch's time per window batch and 1.35x per screened scan (same nodules); choose ``auto`` where it
            measures faster (``benchmarks/openvino_backend.py``).
    """

    target_spacing_mm: float = 1.0
    hu_min: float = -1000.0
    hu_max: float = 500.0
    lung_margin_mm: float = 12.0
    roi_size: tuple[int, int, int] = (64, 64, 64)
    sw_batch_size: int = 4
    overlap: float = 0.25
    skip_empty_windows: bool = True
    candidate_threshold: float = 0.366
    prob_threshold: float = 0.88
    min_diameter_mm: float = 3.0
    max_candidates: int = 100
    classifier_weight: float = 0.0
    blobness_weight: float = 4.0
    device: str = "auto"
    amp: str = "auto"
    stitch: str = "auto"
    stitch_device_max_voxels: int = 400_000_000
    max_input_voxels: int = 400_000_000
    write_probability: bool = False
    report: bool = True
    compress: bool = True
    channels_last: bool = False
    compile: bool = False
    logit_temperature: float = 4.0
    mirror_axes: str = "x"
    mirror_scope: str = "candidates"
    mirror_threshold: float = 0.366
    second_look: bool = True
    second_look_min_probability: float = 0.2
    second_look_min_response_hu: float = 80.0
    fine_spacing_mm: float | None = 0.7
    fine_max_diameter_mm: float = 10.0
    fine_logit_offset: float = -1.0
    backend: str = "torch"

    def __post_init__(self) -> None:
        object.__setattr__(self, "roi_size", tuple(int(v) for v in self.roi_size))
        for f in fields(self):
            if f.type in ("bool", bool):
                object.__setattr__(self, f.name, _as_bool(f.name, getattr(self, f.name)))
        _check(
            self.target_spacing_mm > 0, "target_spacing_mm", self.target_spacing_mm, "a positive number of mm"
        )
        _check(self.hu_max > self.hu_min, "hu_max", self.hu_max, f"greater than hu_min ({self.hu_min})")
        _check(self.lung_margin_mm >= 0, "lung_margin_mm", self.lung_margin_mm, ">= 0")
        _check(
            len(self.roi_size) == 3 and all(v >= 16 and v % 8 == 0 for v in self.roi_size),
            "roi_size",
            self.roi_size,
            "three multiples of 8, each >= 16",
        )
        _check(self.sw_batch_size >= 1, "sw_batch_size", self.sw_batch_size, ">= 1")
        _check(0 <= self.overlap < 1, "overlap", self.overlap, "in [0, 1)")
        _check(
            self.mirror_scope in MIRROR_SCOPES, "mirror_scope", self.mirror_scope, f"one of {MIRROR_SCOPES}"
        )
        _check(0 < self.mirror_threshold < 1, "mirror_threshold", self.mirror_threshold, "in (0, 1)")
        _check(
            self.second_look_min_response_hu > 0,
            "second_look_min_response_hu",
            self.second_look_min_response_hu,
            "> 0 HU",
        )
        for name in (
            "candidate_threshold",
            "prob_threshold",
            "classifier_weight",
            "second_look_min_probability",
        ):
            _check(0 <= getattr(self, name) <= 1, name, getattr(self, name), "in [0, 1]")
        _check(self.min_diameter_mm >= 0, "min_diameter_mm", self.min_diameter_mm, ">= 0")
        _check(
            self.fine_spacing_mm is None or 0 < self.fine_spacing_mm < self.target_spacing_mm,
            "fine_spacing_mm",
            self.fine_spacing_mm,
            f"null or a spacing in mm below target_spacing_mm ({self.target_spacing_mm})",
        )
        _check(self.fine_max_diameter_mm > 0, "fine_max_diameter_mm", self.fine_max_diameter_mm, "> 0 mm")
        _check(0 <= self.blobness_weight <= 20, "blobness_weight", self.blobness_weight, "in [0, 20]")
        _check(self.logit_temperature > 0, "logit_temperature", self.logit_temperature, "> 0")
        _check(
            set(self.mirror_axes) <= set("zyx") and len(set(self.mirror_axes)) == len(self.mirror_axes),
            "mirror_axes",
            self.mirror_axes,
            'distinct letters of "zyx" ("" for none)',
        )
        _check(self.max_candidates >= 1, "max_candidates", self.max_candidates, ">= 1")
        _check(self.device in DEVICES, "device", self.device, f"one of {DEVICES}")
        _check(self.amp in AMP_DTYPES, "amp", self.amp, f"one of {AMP_DTYPES}")
        _check(self.stitch in STITCH_POLICIES, "stitch", self.stitch, f"one of {STITCH_POLICIES}")
        _check(self.backend in BACKENDS, "backend", self.backend, f"one of {BACKENDS}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ScreeningSettings:
        """Build from a mapping, refusing unknown keys with the list of valid ones."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise SettingsError(f"unknown setting(s) {unknown}; valid settings are {sorted(known)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["roi_size"] = list(self.roi_size)
        return d

    def sha256(self) -> str:
        """Hash of the settings (first 16 hex digits), recorded with every output."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def _as_bool(name: str, value: Any) -> bool:
    """Booleans, and the strings a command line passes (``true``/``false``, ``1``/``0``, ``yes``/``no``)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise SettingsError(f"setting {name} must be true or false, not {value!r}")


def _check(ok: bool, name: str, value: Any, allowed: str) -> None:
    if not ok:
        raise SettingsError(f"setting {name} must be {allowed}, not {value!r}")
