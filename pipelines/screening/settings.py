"""One validated settings object for screening; the bundle config is its only source of values.

``monai_bundle/configs/inference.json`` builds :class:`ScreeningSettings` under the id ``settings``; the CLI and
the Python API override those keys (``settings#prob_threshold``) and never hold defaults of their own. The
dataclass's own defaults are read from that same block (:func:`bundle_defaults`), so each value is written in one
place: a direct ``ScreeningSettings()`` behaves as the bundle in use (``$LUNGSCREEN_BUNDLE`` or the checkout's). Errors
name the field, the bad value and what is allowed, as nnU-Net's plans accessors do.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import re
from dataclasses import asdict, dataclass, fields
from typing import Any

DEVICES = ("auto", "cpu", "cuda")
AMP_DTYPES = ("auto", "float32", "bfloat16", "float16")
STITCH_POLICIES = ("auto", "device", "cpu")
MIRROR_SCOPES = ("all", "candidates")
FINE_SCOPES = ("all", "candidates")
SECOND_LOOK_SCOPES = ("all", "finest")
BACKENDS = ("auto", "torch", "openvino")


class SettingsError(ValueError):
    """A screening setting is invalid; the message names it and the allowed values."""


def bundle_defaults() -> dict[str, Any]:
    """The plain values of ``inference.json``'s ``settings`` block (the bundle of :func:`pipelines.bundle.bundle_root`).

    Raises:
        SettingsError: when the block holds a config expression instead of a value.
    """
    from pipelines.bundle import bundle_root

    path = bundle_root() / "configs" / "inference.json"
    block = json.loads(path.read_text(encoding="utf-8"))["settings"]
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in block.items() if not k.startswith("_")}
    for key, value in values.items():
        if isinstance(value, str) and value[:1] in "$@%":
            raise SettingsError(f"{path}: settings#{key} must be a plain value, not the expression {value!r}")
    return {**values, "_path": str(path)}


_DEFAULTS = bundle_defaults()


def _default(name: str) -> Any:
    if name not in _DEFAULTS:
        raise SettingsError(
            f"{_DEFAULTS['_path']}: the settings block has no {name!r} (every setting has its value there)"
        )
    return _DEFAULTS[name]


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
            (0 vessel or wall, 1 ball; :func:`pipelines.nodules.second_look.blobness`) is measured at each candidate
            in the HU image (0 = the score alone).
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N`` (GPU number N).
        amp: ``auto`` (bfloat16 on CUDA, float32 on CPU) or an explicit dtype.
        stitch: where sliding-window outputs are stitched: ``device``, ``cpu`` or ``auto`` (device when the
            output fits in ``stitch_device_max_voxels``).
        max_input_voxels: scans with more voxels are refused before reading, which bounds memory. Measured
            peak RSS on CPU (v0.4.0): 2.1 GiB at 512x512x251, 2.75 GiB at 1000 slices; the limit (400 M
            voxels, ~1525 slices of 512x512) extrapolates to ~3.2 GiB (linear; not measured).
        write_probability: also write the probability map (``probability.nii.gz``).
        dicom_out: also write a DICOM SEG (lungs, nodules) and a TID 1500 SR per DICOM-series case
            (:mod:`pipelines.export`; the ``dicom`` extra). They carry the source's patient and study identifiers
            so a PACS files them with the study: opt-in. A case read from another format gets a warning instead.
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
        second_look: add second-look candidates (:mod:`pipelines.nodules.second_look`): blob-shaped spots (Hessian dot
            filter) where the network's probability reaches ``second_look_min_probability`` but no network
            candidate formed. Scored by that probability, capped below ``candidate_threshold`` (before the
            shape term, which moves them like every candidate), never reported as nodules; they go to
            ``candidates.csv`` and the LUNA16 submission. Validation CPM 0.647 -> 0.658 on phantoms, 0.722 -> 0.746 on real CT.
        second_look_scope: on which grids the second look runs: ``all`` (the first grid and the finer one) or
            ``finest`` (only the finest grid screened: the finer grid when ``fine_spacing_mm`` is set, else the
            first grid). ``finest`` by default: on the validation sets the 1 mm grid's second look added 28 marks
            on 34 scans and no sensitivity (the same CPM without them), and it took a fifth of postprocess
            (``benchmarks/results/2026-12-07-second-look-scope.md``).
        second_look_min_probability: network probability a second-look spot needs within 2 voxels.
        second_look_min_response_hu: dot-filter response (HU) a second-look spot needs.
        mirror_threshold: with ``mirror_scope="candidates"``, first-pass components above this (tempered)
            probability and at least ``min_diameter_mm`` big have their windows mirrored. Lower values mirror
            more windows and lose fewer near-misses.
        fine_spacing_mm: a second network pass on the lung crop resampled to this finer isotropic spacing
            (``None``: off), for small nodules that the first grid shows too few voxels of; its candidates are
            merged into the first pass's (:mod:`pipelines.screening.multiscale`). Needs the bundle's
            ``fine_preprocessing``. About twice the first pass's network time at 0.7 mm.
        fine_max_diameter_mm: fine-pass candidates above this diameter are ignored (the first grid, with
            more context per window, finds the large ones).
        fine_logit_offset: added to the logit of fine-pass scores before the merge.
        fine_scope: which windows of the finer grid run: ``all`` (every window holding lung) or ``candidates``
            (only windows holding a first-pass mark: the box, grown by a few mm, of every component where the
            first pass's probability reaches ``fine_floor``, and of every second-look spot there; the other
            windows keep the background logit and count as skipped. Inside the marks the fine probability is
            the one of ``all``; a small nodule the first pass shows nowhere near the floor gets no fine pass).
        fine_floor: with ``fine_scope="candidates"``, the first-pass (tempered) probability that marks a region
            for the finer grid. Lower values run more fine windows and miss fewer faint small nodules. Validation
            (10 phantoms of seed 7000 and the real CT with seeds 201-206;
            ``benchmarks/results/2026-12-07-fine-scope.md``): at 0.1 CPM 0.816 -> 0.820 on phantoms and 1.0 -> 1.0
            on real CT, the same reported nodules, 7.6 % and 1 % fewer fine windows, 3 % less CPU end to end on
            the full bench phantom; at the candidate threshold (0.366) 82 % fewer fine windows and 41 % less CPU,
            but a 6.9 mm real-CT nodule that only the finer grid finds (first-pass probability 0.17 there) is
            lost: real-CT CPM 1.0 -> 0.944. The bundle ships ``all``: 3 % is within the machine's noise and the
            check ran on part of the validation sets only (not the 16 seed-1000 phantoms' held-out splits).
        fine_mirror: whether the finer grid's windows are mirrored as the first grid's are (``mirror_axes``,
            ``mirror_scope``, ``mirror_threshold``); ``False`` runs the finer grid once, unmirrored: about a
            quarter fewer fine windows, ``screen()`` of the full bench phantom 1.23x faster (23.9 -> 19.4 s, same
            reported nodules), but on the 16 validation phantoms 1.44 instead of 0.88 false reported nodules per
            scan at the same sensitivity and CPM (mirroring averages away the finer grid's noise), so the bundle
            keeps ``True`` (``benchmarks/results/2026-12-07-fine-mirror.md``).
        backend: the runtime of the nodule network (:mod:`pipelines.screening.backend`): ``torch``,
            ``openvino`` (CPU only, float32; the ``cpu-fast`` extra) or ``auto`` (OpenVINO on the CPU when it
            is installed and ``amp`` asks for no reduced precision, PyTorch otherwise and always on CUDA).
            ``torch`` by default: on the 2-core AMD EPYC (AVX2) development machine OpenVINO 2026.4 took 1.6x
            PyTorch's time per window batch and 1.35x per screened scan (same nodules); choose ``auto`` where it
            measures faster (``benchmarks/openvino_backend.py``).
        cpu_layers: with PyTorch on the CPU, run the UNet's single-channel output layers with faster kernels
            (:mod:`pipelines.screening.cpu_layers`: the same weights, logits within ~1e-5); ``False`` keeps
            oneDNN for every layer.

    Allowed values (checked in Python before any work, :func:`validate_setting`; a wrong type or value gives a
    :class:`SettingsError` naming the setting, the value and this line)::

        target_spacing_mm: a number in [0.3, 3] mm
        hu_min: a number in [-1100, 3100] HU
        hu_max: a number in [-1100, 3100] HU
        lung_margin_mm: a number in [0, 100] mm
        roi_size: three integers (z, y, x), multiples of 8 in [16, 256] voxels
        sw_batch_size: an integer in [1, 256]
        overlap: a number in [0, 0.95)
        skip_empty_windows: true or false
        candidate_threshold: a number in [0, 1]
        prob_threshold: a number in [0, 1]
        min_diameter_mm: a number in [0, 100] mm
        max_candidates: an integer in [1, 100000]
        classifier_weight: a number in [0, 1]
        blobness_weight: a number in [0, 20]
        device: one of auto, cpu, cuda or cuda:N (N = GPU index)
        amp: one of auto, float32, bfloat16, float16
        stitch: one of auto, device, cpu
        stitch_device_max_voxels: an integer in [1, 1e10] voxels
        max_input_voxels: an integer in [1, 4e9] voxels
        write_probability: true or false
        dicom_out: true or false
        report: true or false
        compress: true or false
        channels_last: true or false
        compile: true or false
        logit_temperature: a number in (0, 100]
        mirror_axes: distinct letters of "zyx" ("" for none)
        mirror_scope: one of all, candidates
        mirror_threshold: a number in (0, 1)
        second_look: true or false
        second_look_scope: one of all, finest
        second_look_min_probability: a number in [0, 1]
        second_look_min_response_hu: a number in (0, 3100] HU
        fine_spacing_mm: null or a number in [0.3, 3] mm
        fine_max_diameter_mm: a number in (0, 100] mm
        fine_logit_offset: a number in [-20, 20]
        fine_scope: one of all, candidates
        fine_floor: a number in (0, 1)
        fine_mirror: true or false
        backend: one of auto, torch, openvino
        cpu_layers: true or false
    """

    target_spacing_mm: float = _default("target_spacing_mm")
    hu_min: float = _default("hu_min")
    hu_max: float = _default("hu_max")
    lung_margin_mm: float = _default("lung_margin_mm")
    roi_size: tuple[int, int, int] = _default("roi_size")
    sw_batch_size: int = _default("sw_batch_size")
    overlap: float = _default("overlap")
    skip_empty_windows: bool = _default("skip_empty_windows")
    candidate_threshold: float = _default("candidate_threshold")
    prob_threshold: float = _default("prob_threshold")
    min_diameter_mm: float = _default("min_diameter_mm")
    max_candidates: int = _default("max_candidates")
    classifier_weight: float = _default("classifier_weight")
    blobness_weight: float = _default("blobness_weight")
    device: str = _default("device")
    amp: str = _default("amp")
    stitch: str = _default("stitch")
    stitch_device_max_voxels: int = _default("stitch_device_max_voxels")
    max_input_voxels: int = _default("max_input_voxels")
    write_probability: bool = _default("write_probability")
    dicom_out: bool = _default("dicom_out")
    report: bool = _default("report")
    compress: bool = _default("compress")
    channels_last: bool = _default("channels_last")
    compile: bool = _default("compile")
    logit_temperature: float = _default("logit_temperature")
    mirror_axes: str = _default("mirror_axes")
    mirror_scope: str = _default("mirror_scope")
    mirror_threshold: float = _default("mirror_threshold")
    second_look: bool = _default("second_look")
    second_look_scope: str = _default("second_look_scope")
    second_look_min_probability: float = _default("second_look_min_probability")
    second_look_min_response_hu: float = _default("second_look_min_response_hu")
    fine_spacing_mm: float | None = _default("fine_spacing_mm")
    fine_max_diameter_mm: float = _default("fine_max_diameter_mm")
    fine_logit_offset: float = _default("fine_logit_offset")
    fine_scope: str = _default("fine_scope")
    fine_floor: float = _default("fine_floor")
    fine_mirror: bool = _default("fine_mirror")
    backend: str = _default("backend")
    cpu_layers: bool = _default("cpu_layers")

    def __post_init__(self) -> None:
        for f in fields(self):
            object.__setattr__(self, f.name, validate_setting(f.name, getattr(self, f.name)))
        _check(self.hu_max > self.hu_min, "hu_max", self.hu_max, f"greater than hu_min ({self.hu_min})")
        _check(
            self.fine_spacing_mm is None or self.fine_spacing_mm < self.target_spacing_mm,
            "fine_spacing_mm",
            self.fine_spacing_mm,
            f"null or a spacing in mm below target_spacing_mm ({self.target_spacing_mm})",
        )

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


# ---------------------------------------------------------------------------------------- field rules
@dataclass(frozen=True)
class Interval:
    """Allowed numbers: ``[lo, hi]``, with either end open (``(lo, hi)``) when ``lo_open``/``hi_open``."""

    lo: float
    hi: float
    lo_open: bool = False
    hi_open: bool = False
    unit: str = ""

    def __contains__(self, value: float) -> bool:
        above = value > self.lo if self.lo_open else value >= self.lo
        below = value < self.hi if self.hi_open else value <= self.hi
        return above and below

    def __str__(self) -> str:
        text = f"{'(' if self.lo_open else '['}{_num(self.lo)}, {_num(self.hi)}{')' if self.hi_open else ']'}"
        return f"{text} {self.unit}" if self.unit else text


@dataclass(frozen=True)
class Rule:
    """What one setting accepts: ``kind`` is ``float``, ``int``, ``bool``, ``choice``, ``roi``, ``axes`` or
    ``device``; ``interval`` bounds numbers (each component for ``roi``); ``choices`` for ``choice``;
    ``optional``: ``None`` (JSON ``null``) is accepted too."""

    kind: str
    interval: Interval | None = None
    choices: tuple[str, ...] = ()
    optional: bool = False

    def allowed(self) -> str:
        """The allowed values in words (used in every error message and in the class docstring)."""
        text = {
            "float": f"a number in {self.interval}",
            "int": f"an integer in {self.interval}",
            "bool": "true or false",
            "choice": f"one of {', '.join(self.choices)}",
            "roi": f"three integers (z, y, x), multiples of 8 in {self.interval}",
            "axes": 'distinct letters of "zyx" ("" for none)',
            "device": "one of auto, cpu, cuda or cuda:N (N = GPU index)",
        }[self.kind]
        return f"null or {text}" if self.optional else text


def _num(v: float) -> str:
    return f"{v:g}" if abs(v) < 1e6 else f"{v:.0e}".replace("e+0", "e").replace("e+", "e")


_PROB = Interval(0.0, 1.0)
_SPACING = Interval(0.3, 3.0, unit="mm")
_HU = Interval(-1100.0, 3100.0, unit="HU")
#: The rule of every :class:`ScreeningSettings` field (a test checks that each field has one).
RULES: dict[str, Rule] = {
    "target_spacing_mm": Rule("float", _SPACING),
    "hu_min": Rule("float", _HU),
    "hu_max": Rule("float", _HU),
    "lung_margin_mm": Rule("float", Interval(0.0, 100.0, unit="mm")),
    "roi_size": Rule("roi", Interval(16, 256, unit="voxels")),
    "sw_batch_size": Rule("int", Interval(1, 256)),
    "overlap": Rule("float", Interval(0.0, 0.95, hi_open=True)),
    "skip_empty_windows": Rule("bool"),
    "candidate_threshold": Rule("float", _PROB),
    "prob_threshold": Rule("float", _PROB),
    "min_diameter_mm": Rule("float", Interval(0.0, 100.0, unit="mm")),
    "max_candidates": Rule("int", Interval(1, 100_000)),
    "classifier_weight": Rule("float", _PROB),
    "blobness_weight": Rule("float", Interval(0.0, 20.0)),
    "device": Rule("device"),
    "amp": Rule("choice", choices=AMP_DTYPES),
    "stitch": Rule("choice", choices=STITCH_POLICIES),
    "stitch_device_max_voxels": Rule("int", Interval(1, 10_000_000_000, unit="voxels")),
    "max_input_voxels": Rule("int", Interval(1, 4_000_000_000, unit="voxels")),
    "write_probability": Rule("bool"),
    "dicom_out": Rule("bool"),
    "report": Rule("bool"),
    "compress": Rule("bool"),
    "channels_last": Rule("bool"),
    "compile": Rule("bool"),
    "logit_temperature": Rule("float", Interval(0.0, 100.0, lo_open=True)),
    "mirror_axes": Rule("axes"),
    "mirror_scope": Rule("choice", choices=MIRROR_SCOPES),
    "backend": Rule("choice", choices=BACKENDS),
    "cpu_layers": Rule("bool"),
    "mirror_threshold": Rule("float", Interval(0.0, 1.0, lo_open=True, hi_open=True)),
    "second_look": Rule("bool"),
    "second_look_scope": Rule("choice", choices=SECOND_LOOK_SCOPES),
    "second_look_min_probability": Rule("float", _PROB),
    "second_look_min_response_hu": Rule("float", Interval(0.0, 3100.0, lo_open=True, unit="HU")),
    "fine_spacing_mm": Rule("float", _SPACING, optional=True),
    "fine_max_diameter_mm": Rule("float", Interval(0.0, 100.0, lo_open=True, unit="mm")),
    "fine_logit_offset": Rule("float", Interval(-20.0, 20.0)),
    "fine_scope": Rule("choice", choices=FINE_SCOPES),
    "fine_floor": Rule("float", Interval(0.0, 1.0, lo_open=True, hi_open=True)),
    "fine_mirror": Rule("bool"),
}
_DEVICE = re.compile(r"(auto|cpu|cuda(:[0-9]{1,3})?)")


def allowed_values(name: str) -> str:
    """The values setting ``name`` accepts, in words (``"a number in [0, 1]"``)."""
    return _rule(name).allowed()


def validate_setting(name: str, value: Any) -> Any:
    """``value`` as the canonical Python value of setting ``name``, or a :class:`SettingsError`.

    Checked in Python, before any config machinery sees the value: the type (no strings for numbers, no
    booleans for integers), finiteness and the range of :data:`RULES`. A string survives only where it is one
    of the setting's allowed words, so no string reaches MONAI's config parser as an expression or reference.

    Raises:
        SettingsError: naming the setting, the value (and its type when that is the problem) and what is allowed.
    """
    rule = _rule(name)
    if value is None and rule.optional:
        return None
    if rule.kind == "bool":
        return _as_bool(name, value)
    if rule.kind in ("choice", "device", "axes"):
        return _word(name, value, rule)
    if rule.kind == "roi":
        if isinstance(value, str | bytes) or not hasattr(value, "__len__") or len(value) != 3:
            raise _error(name, value, rule)
        return tuple(_number(name, v, rule, integer=True, whole=value) for v in value)
    return _number(name, value, rule, integer=rule.kind == "int")


def _rule(name: str) -> Rule:
    if name not in RULES:
        raise SettingsError(f"unknown setting {name!r}; valid settings are {sorted(RULES)}")
    return RULES[name]


def _word(name: str, value: Any, rule: Rule) -> str:
    ok = isinstance(value, str) and (
        value in rule.choices
        if rule.kind == "choice"
        else _DEVICE.fullmatch(value) is not None
        if rule.kind == "device"
        else set(value) <= set("zyx") and len(set(value)) == len(value)
    )
    if not ok:
        raise _error(name, value, rule)
    return str(value)


def _number(name: str, value: Any, rule: Rule, *, integer: bool, whole: Any = None) -> Any:
    shown = value if whole is None else whole
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _error(name, shown, rule)
    number = float(value)
    if not math.isfinite(number) or (integer and not number.is_integer()):
        raise _error(name, shown, rule)
    assert rule.interval is not None
    if number not in rule.interval or (rule.kind == "roi" and number % 8):
        raise _error(name, shown, rule)
    return int(number) if integer else number


def _error(name: str, value: Any, rule: Rule) -> SettingsError:
    expected: tuple[type, ...] = {
        "float": (numbers.Real,),
        "int": (numbers.Real,),
        "roi": (list, tuple),
        "bool": (bool, str, numbers.Integral),
    }.get(rule.kind, (str,))
    wrong_type = isinstance(value, bool) and rule.kind != "bool" or not isinstance(value, expected)
    kind = type(value).__name__
    shown = f"{value!r} ({'an' if kind[0] in 'aeiou' else 'a'} {kind})" if wrong_type else repr(value)
    return SettingsError(f"setting {name} must be {rule.allowed()}, not {shown}")


def _as_bool(name: str, value: Any) -> bool:
    """Booleans (also numpy's and 0/1), and the words a command line passes (``true``/``false``, ``yes``/``no``,
    ``on``/``off``, ``1``/``0``)."""
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return bool(value)
    if isinstance(value, numbers.Integral) and int(value) in (0, 1):
        return bool(value)
    text = value.strip().lower() if isinstance(value, str) else None
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise _error(name, value, RULES[name])


def _check(ok: bool, name: str, value: Any, allowed: str) -> None:
    if not ok:
        raise SettingsError(f"setting {name} must be {allowed}, not {value!r}")


def settings_overrides(settings: dict[str, Any], *, prefix: str = "settings") -> dict[str, Any]:
    """Turn ``{"prob_threshold": 0.6}`` into ``{"settings#prob_threshold": 0.6}`` after validating each value
    in Python (:func:`validate_setting`: type, finiteness, range, allowed words).

    Raises:
        SettingsError: for an unknown setting or a bad value, naming it and what is allowed.
    """
    out = {}
    for name, value in settings.items():
        canonical = validate_setting(name, value)
        out[f"{prefix}#{name}"] = list(canonical) if isinstance(canonical, tuple) else canonical
    return out
