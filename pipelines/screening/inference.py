"""Network execution: device and precision policy, lung-gated sliding windows, checkpoint loading.

The sliding window itself is MONAI's :class:`monai.inferers.SlidingWindowInferer` as declared in the bundle;
this module only decides where it stitches (``device`` vs ``sw_device``), under which autocast dtype it
runs, and skips windows that hold no lung.
"""

from __future__ import annotations

import contextlib
import os
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from monai.inferers import SlidingWindowInferer

from pipelines.screening.settings import ScreeningSettings


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used; the message names the file."""


class DeviceError(ValueError):
    """A requested device is not a device name, or not present on this machine."""


def select_device(name: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cpu``; ``cuda`` or ``cuda:N`` when that GPU exists.

    Raises:
        DeviceError: for another name, or a CUDA device this machine does not have (the message says which
            GPUs there are and how to choose the CPU).
    """
    from pipelines.screening.settings import SettingsError, validate_setting

    try:
        name = validate_setting("device", name)
    except SettingsError as err:
        raise DeviceError(str(err)) from None
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(name.partition(":")[2] or 0)
        if count == 0:
            raise DeviceError(
                f"device {name} was requested but no CUDA GPU is available; use --device cpu or auto"
            )
        if index >= count:
            raise DeviceError(
                f"device {name} was requested but this machine has {count} CUDA GPU(s): cuda:0 to cuda:{count - 1}"
            )
    return torch.device(name)


def autocast_dtype(settings: ScreeningSettings, device: torch.device) -> torch.dtype | None:
    """Autocast dtype: None (fp32) on CPU unless asked; bfloat16 on CUDA by default."""
    if settings.amp == "float32":
        return None
    if settings.amp == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"bfloat16": torch.bfloat16, "float16": torch.float16}[settings.amp]


@contextlib.contextmanager
def precision(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    with torch.inference_mode():
        if dtype is None:
            yield
        else:
            with torch.autocast(device_type=device.type, dtype=dtype):
                yield


class LungGatedNetwork(torch.nn.Module):
    """Run ``network`` only on windows that contain lung.

    Input windows are ``[B, 2, z, y, x]``: channel 0 the scaled image, channel 1 the lung mask. Windows with no
    lung voxel get a constant logit of ``-20`` (probability ~0) without a network call; the others are
    passed through ``network`` as ``[b, 1, z, y, x]``. Output is the logit ``[B, 1, z, y, x]`` in float32.
    With ``mirror_axes`` (letters of ``"zyx"``) the logit is the mean over the window and its mirror images along
    every combination of those axes (nnU-Net's mirroring; ``2**len(mirror_axes)`` network passes).

    With ``marked`` (a ``[1, 1, z, y, x]`` bool tensor on the padded grid; the sliding window then passes each
    window's slices, ``with_coord=True``) a window runs only when it also holds a marked voxel; the others get
    the same ``-20`` and count as skipped (``windows_unmarked`` of them for want of a mark). Blended by the
    sliding window, the logit inside the marks is the one of running every window: each window that covers a
    marked voxel holds that mark.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        *,
        enabled: bool = True,
        channels_last: bool = False,
        mirror_axes: str = "",
        marked: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.network = network
        self.enabled = enabled
        self.channels_last = channels_last
        self.flips = mirror_flips(mirror_axes)
        self.marked = marked
        self.windows_run = 0
        self.windows_skipped = 0
        self.windows_unmarked = 0

    def _run(self, image: torch.Tensor) -> torch.Tensor:
        out = _forward(self.network, image, self.channels_last)
        for dims in self.flips:  # mirrored test-time augmentation: mean logit over the mirrored windows
            out = out + _forward(self.network, image.flip(dims), self.channels_last).flip(dims)
        return out / (1 + len(self.flips))

    def forward(self, x: torch.Tensor, coords: list[list[slice]] | None = None) -> torch.Tensor:
        image, lungs = x[:, :1], x[:, 1:2]
        if not self.enabled and self.marked is None:
            self.windows_run += x.shape[0]
            return self._run(image)
        keep = (
            lungs.flatten(1).amax(dim=1) > 0
            if self.enabled
            else torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        )
        if self.marked is not None:
            assert coords is not None, "a marked gate needs the window slices (with_coord=True)"
            holds = torch.tensor([bool(self.marked[tuple(c)].any()) for c in coords], device=x.device)
            self.windows_unmarked += int((keep & ~holds).sum())
            keep = keep & holds
        out = torch.full_like(image, -20.0, dtype=torch.float32)
        n = int(keep.sum())
        self.windows_run += n
        self.windows_skipped += x.shape[0] - n
        if n == 1 and self.marked is not None and image.device.type == "cpu":
            # batch 1 takes PyTorch's slow CPU conv3d path: 2 is faster (marked gates often leave one)
            out[keep] = self._run(image[keep].expand(2, *image.shape[1:]))[:1]
        elif n:
            out[keep] = self._run(image[keep])
        return out


class MirrorRefineNetwork(torch.nn.Module):
    """Second pass of candidate-scoped mirroring: mirrored logits only for windows holding a candidate.

    Called by MONAI's sliding window with ``with_coord=True``: ``image`` windows ``[B, 1, z, y, x]`` and their
    slices into the (padded) grid. ``marked`` (first-pass candidates), ``base`` (the first-pass logit) and
    ``lung`` (the first pass's gate, or None) are ``[1, 1, z, y, x]`` tensors on that grid. A window holding a
    mark and a lung voxel returns the mean logit of its mirror images (one per entry of ``flips``); any other
    window returns the first-pass logit under it, without a network call. Blended by the same sliding window,
    the output equals the mirror mean of every window wherever every window covering a voxel holds a mark,
    which is true inside every marked candidate, and the first pass far from candidates.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        flips: list[tuple[int, ...]],
        *,
        marked: torch.Tensor,
        base: torch.Tensor,
        lung: torch.Tensor | None,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.network = network
        self.flips = flips
        self.marked, self.base, self.lung = marked, base, lung
        self.channels_last = channels_last
        self.windows_run = 0

    def forward(self, image: torch.Tensor, coords: list[list[slice]]) -> torch.Tensor:
        where = [tuple(c) for c in coords]
        out = torch.cat([self.base[w] for w in where]).to(image.device, torch.float32)
        keep = torch.tensor(
            [bool(self.marked[w].any()) and (self.lung is None or bool(self.lung[w].any())) for w in where],
            device=image.device,
        )
        n = int(keep.sum())
        if not n:
            return out
        self.windows_run += n
        sel = image[keep]
        if n == 1 and sel.device.type == "cpu":
            sel = sel.expand(2, *sel.shape[1:])  # batch 1 takes PyTorch's slow CPU conv3d path: 2 is faster
        mirrored = [_forward(self.network, sel.flip(d), self.channels_last).flip(d) for d in self.flips]
        out[keep] = torch.stack(mirrored).mean(dim=0)[:n]
        return out


def _forward(network: torch.nn.Module, image: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """The network's float32 logit for a window batch (channels-last 3D when asked)."""
    if channels_last:
        image = image.contiguous(memory_format=torch.channels_last_3d)
    return network(image).float()


def mirror_trigger_mask(
    logits: torch.Tensor, *, threshold: float, temperature: float, min_voxels: int, grow: int = 2
) -> torch.Tensor:
    """First-pass candidates that earn mirrored windows: ``[z, y, x]`` bool, on the device of ``logits``.

    Marks the bounding box, grown by ``grow`` voxels, of every component (26-connected) of
    ``sigmoid(logits / temperature) > threshold`` with at least ``min_voxels`` voxels: every window that
    touches a candidate or its rim holds a mark. (Boxes, not voxels: a few slices per component instead of a
    max filter over the whole grid, which takes ~0.5 s on a full CT on two CPU cores.)
    """
    import numpy as np
    from scipy import ndimage

    if not 0 < threshold < 1:
        raise ValueError(f"mirror_threshold must lie in (0, 1), got {threshold}")
    cut = float(temperature) * float(np.log(threshold / (1 - threshold)))  # the threshold as a logit
    hot = (logits > cut).cpu().numpy()
    mask = np.zeros(hot.shape, dtype=bool)
    if hot.any():
        labels, n = ndimage.label(hot, structure=np.ones((3, 3, 3), bool))
        sizes = np.bincount(labels[hot], minlength=n + 1)
        for box, size in zip(ndimage.find_objects(labels), sizes[1:], strict=True):
            if box is not None and size >= max(1, int(min_voxels)):
                mask[tuple(slice(max(0, b.start - grow), b.stop + grow) for b in box)] = True
    return torch.from_numpy(mask).to(logits.device)


def mirror_flips(mirror_axes: str) -> list[tuple[int, ...]]:
    """Tensor dims (of ``[B, C, z, y, x]``) of every non-empty combination of the ``mirror_axes`` letters.

    >>> mirror_flips("x"), len(mirror_flips("zyx"))
    ([(4,)], 7)
    """
    from itertools import combinations

    dims = sorted({"zyx".index(a) + 2 for a in mirror_axes})
    return [c for k in range(1, len(dims) + 1) for c in combinations(dims, k)]


_COMPILED: dict[int, torch.nn.Module] = {}


def compiled(network: torch.nn.Module) -> torch.nn.Module:
    """``torch.compile(network)``, cached per network object (the first windows pay the compilation)."""
    key = id(network)
    if key not in _COMPILED:
        _COMPILED[key] = torch.compile(network)  # type: ignore[assignment]
    return _COMPILED[key]


def sliding_window_probability(
    image: torch.Tensor,
    lungs: torch.Tensor | None,
    *,
    network: torch.nn.Module,
    inferer: SlidingWindowInferer,
    settings: ScreeningSettings,
    device: torch.device,
    channels_last: bool = False,
    compile_network: bool = False,
    window_marks: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Nodule probability on the network grid.

    Args:
        image: ``[1, z, y, x]`` float32 in [0, 1] (network grid), on any device.
        lungs: ``[z, y, x]`` or ``[1, z, y, x]`` lung labels on the same grid, or None (no gating).
        network, inferer: the bundle's ``network`` and ``inferer``.
        settings: for gating, precision and stitching policy.
        device: where the network runs.
        channels_last: run the network on ``channels_last_3d`` windows and weights (meant for CUDA convolutions;
            slower on CPU, where it is never switched on by default).
        compile_network: wrap the network in ``torch.compile`` (off by default: the first scan pays the
            compilation, and every new window batch size recompiles).
        window_marks: ``[z, y, x]`` bool on the same grid, or None (every window): only windows holding a
            marked voxel run (:class:`LungGatedNetwork`), and only those are mirrored; the others keep the
            background logit ``-20``. Inside the marks the probability is the one of running every window.

    Returns:
        ``[z, y, x]`` float32 probabilities on the CPU, and counters (windows run/skipped, of the skipped
        ``windows_unmarked`` for want of a mark, windows mirrored, stitch device).
    """
    lung = (
        torch.ones_like(image) if lungs is None else (torch.as_tensor(lungs).reshape(image.shape) > 0).float()
    )
    x = torch.cat([image.float(), lung], dim=0)[None]
    n_out = int(image[0].numel())
    stitch_on_device = settings.stitch == "device" or (
        settings.stitch == "auto" and (device.type == "cpu" or n_out <= settings.stitch_device_max_voxels)
    )
    inferer.sw_device = device
    inferer.device = device if stitch_on_device else torch.device("cpu")
    x = x.to(device if stitch_on_device else "cpu")
    if channels_last:
        network = network.to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]
    net = compiled(network) if compile_network else network
    marks = None if window_marks is None else torch.as_tensor(window_marks).to(x.device).bool()
    scoped = settings.mirror_scope == "candidates" and bool(settings.mirror_axes)
    gated = LungGatedNetwork(
        net,
        enabled=settings.skip_empty_windows and lungs is not None,
        channels_last=channels_last,
        mirror_axes="" if scoped else settings.mirror_axes,
        marked=None if marks is None else _padded_like(marks[None, None], x, inferer),
    )
    with precision(device, autocast_dtype(settings, device)):
        inferer.with_coord = marks is not None
        try:
            logits = inferer(x, gated)
        finally:
            inferer.with_coord = False
        assert isinstance(logits, torch.Tensor)
        mirrored = gated.windows_run if settings.mirror_axes and not scoped else 0
        if scoped:
            logits, mirrored = _mirror_candidates(
                logits, x, net, inferer, settings, channels_last, within=marks
            )
    prob = torch.sigmoid(logits[0, 0].float() / float(settings.logit_temperature)).cpu()
    info = {
        "windows_run": gated.windows_run,
        "windows_skipped": gated.windows_skipped,
        "windows_unmarked": gated.windows_unmarked,
        "windows_mirrored": mirrored,
        "stitch_device": str(inferer.device),
    }
    return prob, info


def window_count(shape_zyx: tuple[int, ...], roi_size: tuple[int, ...], overlap: float) -> int:
    """How many windows MONAI's sliding window takes over a grid of ``shape_zyx`` (padded up to the window)."""
    import math

    n = 1
    for size, roi in zip(shape_zyx, roi_size, strict=True):
        size = max(int(size), int(roi))
        step = int(roi) if size == roi else max(1, int(int(roi) * (1 - float(overlap))))
        n *= math.ceil((size - int(roi)) / step) + 1
    return n


def _padded_like(t: torch.Tensor, x: torch.Tensor, inferer: SlidingWindowInferer) -> torch.Tensor:
    """``t`` (``[1, 1, z, y, x]`` on the grid of ``x``) padded as MONAI pads a grid smaller than the window, so
    that the window slices it hands to the network index ``t`` too (no copy when nothing is padded)."""
    from monai.utils import ensure_tuple_rep

    roi = tuple(int(r) for r in ensure_tuple_rep(inferer.roi_size, x.ndim - 2))
    pad, _ = _roi_padding(tuple(x.shape[2:]), roi)
    return torch.nn.functional.pad(t, pad) if any(pad) else t


def _mirror_candidates(
    logits: torch.Tensor,
    x: torch.Tensor,
    network: torch.nn.Module,
    inferer: SlidingWindowInferer,
    settings: ScreeningSettings,
    channels_last: bool,
    *,
    within: torch.Tensor | None = None,
) -> tuple[torch.Tensor, int]:
    """Candidate-scoped mirroring (``mirror_scope="candidates"``): the blended logit and the windows mirrored.

    ``within`` (``[z, y, x]`` bool, the window marks of the pass) restricts the candidates' marks to it.
    """
    import math

    flips = mirror_flips(settings.mirror_axes)
    radius_vox = settings.min_diameter_mm / 2 / settings.target_spacing_mm
    marked = mirror_trigger_mask(
        logits[0, 0].float(),
        threshold=settings.mirror_threshold,
        temperature=settings.logit_temperature,
        min_voxels=int(4 / 3 * math.pi * radius_vox**3),
    )
    if within is not None:
        marked &= within.to(marked.device)
    if not bool(marked.any()):
        return logits, 0
    # MONAI pads a grid smaller than the window before slicing it; pad the same way here, so that the window
    # slices it hands to the network index these tensors too
    from monai.utils import ensure_tuple_rep

    roi = tuple(int(r) for r in ensure_tuple_rep(inferer.roi_size, x.ndim - 2))
    pad, crop = _roi_padding(tuple(x.shape[2:]), roi)

    def padded(t: torch.Tensor) -> torch.Tensor:  # no copy of a full-size grid when nothing is padded
        return torch.nn.functional.pad(t, pad) if any(pad) else t

    refine = MirrorRefineNetwork(
        network,
        flips,
        marked=padded(marked[None, None].to(x.device)),
        base=padded(logits.float()),
        lung=padded(x[:, 1:2]) if settings.skip_empty_windows else None,
        channels_last=channels_last,
    )
    image = padded(x[:, :1])
    inferer.with_coord = True
    try:
        mirrored = inferer(image, refine)
    finally:
        inferer.with_coord = False
    assert isinstance(mirrored, torch.Tensor)
    k = len(flips)
    mirrored = mirrored[(slice(None), slice(None), *crop)].float().to(logits.device)
    return (logits.float() + k * mirrored) / (1 + k), refine.windows_run


def _roi_padding(shape: tuple[int, ...], roi: tuple[int, ...]) -> tuple[list[int], list[slice]]:
    """MONAI's sliding-window padding of a grid smaller than the window (half before, the rest after).

    Returns ``F.pad`` widths (last axis first) and the slices that crop the padded grid back to ``shape``.
    """
    pad: list[int] = []
    crop: list[slice] = []
    for n, r in zip(shape, roi, strict=True):
        diff = max(r - n, 0)
        crop.append(slice(diff // 2, diff // 2 + n))
    for n, r in zip(reversed(shape), reversed(roi), strict=True):
        diff = max(r - n, 0)
        pad += [diff // 2, diff - diff // 2]
    return pad, crop


def load_weights(
    network: torch.nn.Module, path: str | os.PathLike[str], *, strict: bool = True
) -> torch.nn.Module:
    """Load a state dict saved by our training (``weights_only=True``: never unpickles foreign objects).

    Accepts a plain state dict or a dict holding it under ``model``/``network``/``state_dict``.

    Raises:
        CheckpointError: naming the file, when it is missing, corrupt, not a weights file or from another
            architecture (listing the first mismatched keys).
    """
    p = Path(path)
    if p.is_dir():
        raise CheckpointError(f"{p}: is a folder, not a checkpoint file")
    if not p.is_file():
        raise CheckpointError(f"{p}: checkpoint file not found (train with `make train` or pass --weights)")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # a pickle, or garbage: refused by the weights-only unpickler
        detail = _torch_reason(err)
        if "GLOBAL" in str(err):
            raise CheckpointError(
                f"{p}: refused: a pickle of Python objects, not plain weights; nothing was executed ({detail})"
            ) from None
        raise CheckpointError(
            f"{p}: not a weights file, torch cannot read it as a state dict ({detail})"
        ) from None
    except Exception as err:  # corrupt zip, truncated file
        raise CheckpointError(
            f"{p}: not a readable checkpoint, truncated or corrupt ({_torch_reason(err)})"
        ) from None
    state = obj
    if isinstance(obj, dict):
        for key in ("model", "network", "state_dict"):
            if key in obj and isinstance(obj[key], dict):
                state = obj[key]
                break
    if not isinstance(state, dict):
        raise CheckpointError(f"{p}: holds a {type(state).__name__}, not a state dict")
    try:
        network.load_state_dict(state, strict=strict)
    except RuntimeError:
        raise CheckpointError(
            f"{p}: weights do not fit the {type(network).__name__} architecture ({_mismatch(network, state)})"
        ) from None
    return network


def _torch_reason(err: BaseException) -> str:
    """The informative line of a ``torch.load`` error (its advice about ``weights_only`` left out)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    marked = [line.partition("WeightsUnpickler error:")[2] or line for line in lines if "GLOBAL" in line]
    marked += [
        line.partition("WeightsUnpickler error:")[2] for line in lines if "WeightsUnpickler error:" in line
    ]
    skip = ("Weights only load failed", "Please file an issue", "Check the documentation", "(1)", "(2)")
    plain = [line for line in lines if not line.startswith(skip)]
    detail = next((m.strip() for m in marked + plain if m.strip()), type(err).__name__)
    return detail.split(". ")[0][:200]


def _mismatch(network: torch.nn.Module, state: dict[str, Any]) -> str:
    """The first keys by which ``state`` differs from ``network``'s state dict, in one line."""
    own = network.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(
        k for k in set(own) & set(state) if tuple(getattr(state[k], "shape", ())) != tuple(own[k].shape)
    )
    parts = [
        f"{len(keys)} {what}, e.g. {', '.join(keys[:2])}"
        for keys, what in ((missing, "missing"), (unexpected, "unexpected"), (shapes, "of another shape"))
        if keys
    ]
    return "; ".join(parts) or "the state dict does not load"
