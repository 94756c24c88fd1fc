"""Dataset fingerprint and training plan of the generic segmentation recipe (nnU-Net-like heuristics).

A *fingerprint* summarises a labelled dataset (per case: canonical spacing and shape in ``(z, y, x)``,
label values present, foreground intensities per channel). A *plan* is derived from it and is the single
source of truth for training and inference (``MODEL/plan.json``):

- target spacing = median spacing per axis; on anisotropic data (coarsest axis more than 3x the finest) the
  coarse axis takes the 10th percentile of its spacings (never finer than the other axes), as nnU-Net does;
- patch size: start from a box of equal physical extent on every axis, cap each axis at the median image
  shape at the target spacing, then shrink the axis that is largest relative to the median shape until the
  patch fits ``max_patch_voxels`` (memory); each axis is a multiple of its total pooling stride;
- pooling: an axis is downsampled while its feature map stays >= 4 voxels and its spacing is at most twice the
  finest spacing (anisotropic axes wait until the others catch up), at most 5 stages;
- intensity statistics per channel from the labelled foreground of all cases (CT normalisation uses them).

:class:`SegPlan` is the typed, validated accessor of ``plan.json``: errors name the field and list the valid
choices or fields, as nnU-Net's ``PlansManager`` does.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.imaging.modality import get_modality, intensity_statistics, modality_names, sample_values

PLAN_VERSION = 1
PLAN_FILE = "plan.json"
MIN_FEATURE_MAP = 4
MAX_STAGES = 5
ANISOTROPY_RATIO = 3.0
SAMPLES_PER_CASE = 10_000


class PlanError(ValueError):
    """``plan.json`` is missing, unreadable or invalid; the message names the field and the valid choices."""


@dataclass(frozen=True)
class SegPlan:
    """Validated plan of one segmentation model. Spacings in mm and shapes in voxels, both ``(z, y, x)``.

    Attributes:
        modality: a name of :data:`pipelines.imaging.modality.MODALITIES`.
        num_channels: input channels (``case_0000`` ... ``case_{C-1:04d}``).
        label_values: label values on disk, ``label_values[k]`` is network class ``k`` (``0`` first).
        label_names: ``{str(value): name}`` for every non-zero label value.
        target_spacing_zyx: network grid spacing.
        patch_size_zyx: training patch and sliding-window size.
        strides: per-stage pooling strides ``(z, y, x)`` of the UNet.
        features: channels per UNet level (``len(strides) + 1`` levels).
        batch_size: training patches per step.
        n4: apply N4 bias-field correction before normalisation (MRI).
        intensity: per-channel foreground statistics (:func:`pipelines.imaging.modality.intensity_statistics`).
        fingerprint: the dataset fingerprint the plan came from.
        version: plan format version.
    """

    modality: str
    num_channels: int
    label_values: tuple[int, ...]
    label_names: dict[str, str]
    target_spacing_zyx: tuple[float, float, float]
    patch_size_zyx: tuple[int, int, int]
    strides: tuple[tuple[int, int, int], ...]
    features: tuple[int, ...]
    batch_size: int = 2
    n4: bool = False
    intensity: tuple[dict[str, float], ...] = ()
    fingerprint: dict[str, Any] = field(default_factory=dict)
    version: int = PLAN_VERSION

    def __post_init__(self) -> None:
        _set = object.__setattr__
        if self.modality not in modality_names():
            raise PlanError(
                f"plan modality {self.modality!r} is unknown; valid choices are {list(modality_names())}"
            )
        _set(self, "label_values", tuple(int(v) for v in self.label_values))
        _set(self, "target_spacing_zyx", tuple(float(v) for v in self.target_spacing_zyx))
        _set(self, "patch_size_zyx", tuple(int(v) for v in self.patch_size_zyx))
        _set(self, "strides", tuple(tuple(int(s) for s in st) for st in self.strides))
        _set(self, "features", tuple(int(v) for v in self.features))
        _set(self, "intensity", tuple(dict(d) for d in self.intensity))
        _set(self, "label_names", {str(k): str(v) for k, v in self.label_names.items()})
        self._validate()

    def _validate(self) -> None:
        _require(self.version == PLAN_VERSION, "version", self.version, f"{PLAN_VERSION}")
        _require(self.num_channels >= 1, "num_channels", self.num_channels, "an integer >= 1")
        _require(
            len(self.label_values) >= 2 and self.label_values[0] == 0 and len(set(self.label_values)) == len(self.label_values),
            "label_values", self.label_values, "distinct values starting with 0 and at least one label",
        )  # fmt: skip
        _require(
            len(self.target_spacing_zyx) == 3 and min(self.target_spacing_zyx) > 0,
            "target_spacing_zyx", self.target_spacing_zyx, "three positive spacings in mm",
        )  # fmt: skip
        _require(
            len(self.patch_size_zyx) == 3 and min(self.patch_size_zyx) >= 1,
            "patch_size_zyx", self.patch_size_zyx, "three positive sizes in voxels",
        )  # fmt: skip
        _require(
            all(len(s) == 3 and set(s) <= {1, 2} for s in self.strides),
            "strides", self.strides, "a list of (z, y, x) strides of 1 or 2",
        )  # fmt: skip
        _require(
            len(self.features) == len(self.strides) + 1,
            "features",
            self.features,
            f"{len(self.strides) + 1} levels",
        )
        divisors = self.divisors
        _require(
            all(p % d == 0 for p, d in zip(self.patch_size_zyx, divisors)),
            "patch_size_zyx", self.patch_size_zyx, f"multiples of the total strides {divisors}",
        )  # fmt: skip
        _require(self.batch_size >= 1, "batch_size", self.batch_size, "an integer >= 1")
        _require(
            not self.n4 or get_modality(self.modality).supports_n4,
            "n4", self.n4, f"false for modality {self.modality!r}",
        )  # fmt: skip
        needs_stats = get_modality(self.modality).normalization == "dataset_zscore"
        _require(
            not needs_stats or len(self.intensity) == self.num_channels,
            "intensity", len(self.intensity), f"statistics for each of the {self.num_channels} channel(s)",
        )  # fmt: skip

    # ------------------------------------------------------------------------------------- derived
    @property
    def num_classes(self) -> int:
        """Network output channels: background plus every label value."""
        return len(self.label_values)

    @property
    def divisors(self) -> tuple[int, int, int]:
        """Total pooling stride per axis ``(z, y, x)``: every patch axis must be a multiple of it."""
        d = (
            np.prod(np.asarray(self.strides, dtype=int).reshape(-1, 3), axis=0)
            if self.strides
            else np.ones(3)
        )
        return tuple(int(v) for v in d)  # type: ignore[return-value]

    def label_name(self, value: int) -> str:
        return self.label_names.get(str(int(value)), f"label_{int(value)}")

    # ------------------------------------------------------------------------------------- I/O
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("label_values", "target_spacing_zyx", "patch_size_zyx", "features", "intensity"):
            d[key] = list(d[key])
        d["strides"] = [list(s) for s in self.strides]
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "plan") -> SegPlan:
        """Build from a dict, refusing unknown or missing fields with the list of valid ones."""
        if not isinstance(data, dict):
            raise PlanError(f"{source}: expected a JSON object, got {type(data).__name__}")
        valid = [f.name for f in fields(cls)]
        required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
        unknown = sorted(set(data) - set(valid))
        missing = [k for k in required if k not in data]
        if unknown:
            raise PlanError(f"{source}: unknown field(s) {unknown}; valid fields are {valid}")
        if missing:
            raise PlanError(f"{source}: missing field(s) {missing}; valid fields are {valid}")
        try:
            return cls(**data)
        except PlanError as err:
            raise PlanError(f"{source}: {err}") from None
        except (TypeError, ValueError) as err:
            raise PlanError(f"{source}: {err}") from None

    def save(self, path: str | Path) -> Path:
        """Write ``plan.json`` atomically (a folder gets ``plan.json`` inside it)."""
        from pipelines.imaging.filesys import atomic_write_text

        p = Path(path)
        p = p / PLAN_FILE if p.is_dir() else p
        return atomic_write_text(p, json.dumps(self.to_dict(), indent=2) + "\n")


def _require(ok: bool, name: str, value: Any, allowed: str) -> None:
    if not ok:
        raise PlanError(f"plan field {name!r} is {value!r}; expected {allowed}")


def load_plan(path: str | Path) -> SegPlan:
    """Read and validate ``plan.json`` (or ``MODEL/plan.json`` when ``path`` is a model folder).

    Raises:
        PlanError: naming the file, for a missing/unreadable file or an invalid field.
    """
    p = Path(path)
    p = p / PLAN_FILE if p.is_dir() else p
    if not p.is_file():
        raise PlanError(f"{p}: plan file not found (train a model with `lungscreen train-seg` first)")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise PlanError(f"{p}: not a readable JSON plan ({err})") from None
    return SegPlan.from_dict(data, source=str(p))


# ------------------------------------------------------------------------------------------- heuristics
def target_spacing(spacings_zyx: np.ndarray) -> tuple[float, float, float]:
    """Target spacing from the per-case spacings ``[N, 3]`` (z, y, x) in mm (see module docstring)."""
    sp = np.asarray(spacings_zyx, dtype=float).reshape(-1, 3)
    target = np.median(sp, axis=0)
    worst = int(np.argmax(target))
    others = [a for a in range(3) if a != worst]
    if target[worst] > ANISOTROPY_RATIO * min(target[others]):
        coarse = float(np.percentile(sp[:, worst], 10))
        target[worst] = max(coarse, float(max(target[others])))
    return tuple(float(v) for v in target)  # type: ignore[return-value]


def pooling_strides(
    patch_zyx: Sequence[int], spacing_zyx: Sequence[float], *, max_stages: int = MAX_STAGES
) -> list[tuple[int, int, int]]:
    """Per-stage strides ``(z, y, x)``: pool an axis while its map stays >= 4 voxels and its spacing is at
    most twice the finest spacing among the poolable axes."""
    size, sp = [float(v) for v in patch_zyx], [float(v) for v in spacing_zyx]
    strides: list[tuple[int, int, int]] = []
    for _ in range(max_stages):
        poolable = [a for a in range(3) if size[a] >= 2 * MIN_FEATURE_MAP]
        if not poolable:
            break
        finest = min(sp[a] for a in poolable)
        stride = tuple(2 if a in poolable and sp[a] <= 2 * finest else 1 for a in range(3))
        strides.append(stride)  # type: ignore[arg-type]
        size = [s / st for s, st in zip(size, stride)]
        sp = [s * st for s, st in zip(sp, stride)]
    return strides


def patch_size(
    median_shape_zyx: Sequence[float], spacing_zyx: Sequence[float], *, max_patch_voxels: int
) -> tuple[tuple[int, int, int], list[tuple[int, int, int]]]:
    """Patch size ``(z, y, x)`` fitting ``max_patch_voxels`` and its pooling strides (see module docstring)."""
    median = np.maximum(np.asarray(median_shape_zyx, dtype=float), 1.0)
    inv = 1.0 / np.asarray(spacing_zyx, dtype=float)
    patch = inv / np.prod(inv) ** (1 / 3) * 256.0  # equal physical extent on every axis, 256^3 voxels
    patch = np.minimum(patch, median)
    for _ in range(1000):
        strides = pooling_strides(np.round(patch).astype(int), spacing_zyx)
        div = np.prod(np.asarray(strides, dtype=int).reshape(-1, 3), axis=0) if strides else np.ones(3, int)
        rounded = np.maximum(div, np.round(patch / div).astype(int) * div)
        if np.prod(rounded) <= max_patch_voxels:
            return tuple(int(v) for v in rounded), strides  # type: ignore[return-value]
        ratio = rounded / median
        ratio[rounded <= div] = -np.inf  # an axis at its minimum cannot shrink further
        if not np.isfinite(ratio).any():
            return tuple(int(v) for v in rounded), strides  # type: ignore[return-value]
        axis = int(np.argmax(ratio))
        patch[axis] = max(1.0, rounded[axis] - div[axis])
    raise RuntimeError("patch size search did not converge")


def unet_features(n_levels: int, *, base: int, maximum: int) -> tuple[int, ...]:
    """Channels per UNet level: ``base`` doubled at each level, capped at ``maximum``."""
    return tuple(min(base * 2**k, maximum) for k in range(n_levels))


# ------------------------------------------------------------------------------------------- fingerprint
def fingerprint_dataset(cases: Sequence[Any], *, seed: int = 0) -> dict[str, Any]:
    """Measure a labelled dataset: spacing/shape ``(z, y, x)`` per case, labels present, foreground intensities.

    Args:
        cases: :class:`pipelines.segmentation.data.SegCase` with labels attached.
        seed: for the intensity subsample (at most 10,000 foreground voxels per case and channel).

    Raises:
        ValueError: when the cases have different channel counts or every label map is empty.
    """
    from pipelines.segmentation.data import load_case

    if not cases:
        raise ValueError("no training cases found")
    n_channels = {len(c.channels) for c in cases}
    if len(n_channels) > 1:
        counts = {c.case_id: len(c.channels) for c in cases}
        raise ValueError(f"cases have different numbers of channels: {counts}")
    spacings, shapes, labels = [], [], set()
    samples: list[list[np.ndarray]] = [[] for _ in range(n_channels.pop())]
    for i, case in enumerate(cases):
        loaded = load_case(case, n4=False, with_label=True)
        assert loaded.label is not None
        spacings.append(loaded.spacing_zyx)
        shapes.append(loaded.label.shape)
        labels |= {int(v) for v in np.unique(loaded.label)}
        fg = loaded.label > 0
        for ch, arr in enumerate(loaded.image):
            samples[ch].append(sample_values(arr[fg], n=SAMPLES_PER_CASE, seed=seed + i))
    if labels <= {0}:
        raise ValueError("every label map is empty: nothing to learn")
    return {
        "n_cases": len(cases),
        "spacings_zyx": [list(map(float, s)) for s in spacings],
        "shapes_zyx": [list(map(int, s)) for s in shapes],
        "label_values": sorted(labels | {0}),
        "intensity": [intensity_statistics(np.concatenate(s)) for s in samples],
    }


def make_plan(
    fingerprint: dict[str, Any],
    *,
    modality: str,
    n4: bool | None = None,
    max_patch_voxels: int = 96**3,
    base_features: int = 16,
    max_features: int = 256,
    batch_size: int = 2,
    label_names: dict[str, str] | None = None,
) -> SegPlan:
    """Derive a :class:`SegPlan` from a fingerprint.

    Args:
        fingerprint: from :func:`fingerprint_dataset`.
        modality: a registry name (raises listing the choices when unknown).
        n4: N4 bias correction; the modality's default when None.
        max_patch_voxels: memory budget of one patch. 96^3 (default) is ~0.5 s per forward pass of the
            16-feature UNet on a CPU core and fits 2 GB with batch 2; raise it on a GPU.
        base_features, max_features: UNet width (first level, cap).
        batch_size: patches per training step (nnU-Net's minimum of 2 keeps instance norm statistics sane).
        label_names: ``{str(value): name}``; ``label_<value>`` for the others.
    """
    mod = get_modality(modality)
    spacing = target_spacing(np.asarray(fingerprint["spacings_zyx"]))
    sp = np.asarray(fingerprint["spacings_zyx"], dtype=float)
    shp = np.asarray(fingerprint["shapes_zyx"], dtype=float)
    median_shape = np.median(shp * sp / np.asarray(spacing), axis=0)
    patch, strides = patch_size(median_shape, spacing, max_patch_voxels=max_patch_voxels)
    values = [int(v) for v in fingerprint["label_values"]]
    names = {str(v): (label_names or {}).get(str(v), f"label_{v}") for v in values if v}
    fp = dict(fingerprint)
    fp["median_spacing_zyx"] = [float(v) for v in np.median(sp, axis=0)]
    fp["median_shape_zyx"] = [float(v) for v in median_shape]
    return SegPlan(
        modality=mod.name,
        num_channels=len(fingerprint["intensity"]),
        label_values=tuple(values),
        label_names=names,
        target_spacing_zyx=spacing,
        patch_size_zyx=patch,
        strides=tuple(strides),
        features=unet_features(len(strides) + 1, base=base_features, maximum=max_features),
        batch_size=batch_size,
        n4=mod.n4_default if n4 is None else bool(n4),
        intensity=tuple(fingerprint["intensity"]),
        fingerprint=fp,
    )


def read_label_names(images_dir: str | Path) -> dict[str, str]:
    """Label names from an nnU-Net ``dataset.json`` beside ``images/`` (``{"labels": {"liver": 1}}``)."""
    path = Path(images_dir).parent / "dataset.json"
    if not path.is_file():
        return {}
    try:
        labels = json.loads(path.read_text(encoding="utf-8")).get("labels", {})
    except (OSError, json.JSONDecodeError, AttributeError):
        return {}
    out = {}
    for name, value in labels.items():
        if isinstance(value, int) and value > 0:
            out[str(value)] = str(name)
    return out


def plan_dataset(
    *, images: str | Path, labels: str | Path, modality: str, out: str | Path | None = None, **options: Any
) -> SegPlan:
    """Discover ``images/`` + ``labels/``, fingerprint them and make a plan; write ``out/plan.json`` if given.

    ``options`` go to :func:`make_plan` (``max_patch_voxels``, ``n4``, ``base_features``...).
    """
    from pipelines.segmentation.data import find_labelled_cases

    get_modality(modality)  # fail fast with the valid choices
    cases = find_labelled_cases(images, labels)
    fingerprint = fingerprint_dataset(cases)
    names = options.pop("label_names", None) or read_label_names(images)
    plan = make_plan(fingerprint, modality=modality, label_names=names, **options)
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        plan.save(Path(out) / PLAN_FILE)
    return plan
