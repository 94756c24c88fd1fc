"""Network execution: device and precision policy, lung-gated sliding windows, checkpoint loading.

The sliding window itself is MONAI's :class:`monai.inferers.SlidingWindowInferer` as declared in the bundle;
this module only decides where it stitches (``device`` vs ``sw_device``), under which autocast dtype it
runs, and skips windows that hold no lung.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from monai.inferers import SlidingWindowInferer

from pipelines.settings import ScreeningSettings


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used; the message names the file."""


def select_device(name: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU raises a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(
            "device 'cuda' was requested but no CUDA GPU is available; use --device cpu or auto"
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
    """

    def __init__(
        self,
        network: torch.nn.Module,
        *,
        enabled: bool = True,
        channels_last: bool = False,
        mirror_axes: str = "",
    ) -> None:
        super().__init__()
        self.network = network
        self.enabled = enabled
        self.channels_last = channels_last
        self.flips = mirror_flips(mirror_axes)
        self.windows_run = 0
        self.windows_skipped = 0

    def _net(self, image: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            image = image.contiguous(memory_format=torch.channels_last_3d)
        return self.network(image).float()

    def _run(self, image: torch.Tensor) -> torch.Tensor:
        out = self._net(image)
        for dims in self.flips:  # mirrored test-time augmentation: mean logit over the mirrored windows
            out = out + self._net(image.flip(dims)).flip(dims)
        return out / (1 + len(self.flips))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        image, lungs = x[:, :1], x[:, 1:2]
        if not self.enabled:
            self.windows_run += x.shape[0]
            return self._run(image)
        keep = lungs.flatten(1).amax(dim=1) > 0
        out = torch.full_like(image, -20.0, dtype=torch.float32)
        n = int(keep.sum())
        self.windows_run += n
        self.windows_skipped += x.shape[0] - n
        if n:
            out[keep] = self._run(image[keep])
        return out


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

    Returns:
        ``[z, y, x]`` float32 probabilities on the CPU, and counters (windows run/skipped, stitch device).
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
    gated = LungGatedNetwork(
        net,
        enabled=settings.skip_empty_windows and lungs is not None,
        channels_last=channels_last,
        mirror_axes=settings.mirror_axes,
    )
    with precision(device, autocast_dtype(settings, device)):
        logits = inferer(x, gated)
    assert isinstance(logits, torch.Tensor)
    prob = torch.sigmoid(logits[0, 0].float() / float(settings.logit_temperature)).cpu()
    info = {
        "windows_run": gated.windows_run,
        "windows_skipped": gated.windows_skipped,
        "stitch_device": str(inferer.device),
    }
    return prob, info


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
    if not p.is_file():
        raise CheckpointError(f"{p}: checkpoint file not found (train with `make train` or pass --weights)")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt zip, truncated file, or a pickle with foreign objects
        raise CheckpointError(
            f"{p}: not a readable weights-only checkpoint ({type(err).__name__}: {err})"
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
    except RuntimeError as err:
        first = str(err).splitlines()[0][:300]
        raise CheckpointError(
            f"{p}: weights do not fit the {type(network).__name__} architecture: {first}"
        ) from None
    return network
