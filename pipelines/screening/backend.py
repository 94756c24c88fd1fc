"""Which runtime runs the nodule network: PyTorch, or OpenVINO on the CPU (the optional ``cpu-fast`` extra).

MONAI's sliding window takes any callable predictor, so the OpenVINO backend is a module with the network's
signature: window batches ``[B, C, z, y, x]`` float32 in, logits ``[B, 1, z, y, x]`` float32 out, on the CPU.
Gating, mirroring, stitching and the logit temperature stay in :mod:`pipelines.screening.inference`, unchanged.

The network is exported once per weights and architecture (``torch.jit.trace`` at the window shape, then
``openvino.convert_model``) and cached as OpenVINO IR in ``$LUNGSCREEN_OPENVINO_CACHE`` (default
``~/.cache/lungscreen/openvino``) under ``<weights sha256>/<architecture hash>-ov<version>/``; later runs read
it back in milliseconds. It is compiled for the CPU once per window-batch shape (a fixed shape: a dynamic-shape
model ran 1.5x slower), at ``f32`` inference precision (the CPU plugin's default on a bf16-capable CPU is
bf16, which moved voxels across 0.5), and saved without the fp16 weight compression ``save_model`` does by
default. Without OpenVINO, or when exporting fails, the network runs with PyTorch and a one-line note says why.

Not faster on every CPU: on the 2-core AMD EPYC (AVX2, no AVX-512) development machine, quiet, OpenVINO took
1.6x PyTorch's time per batch of four 64^3 windows (1.9x with one thread each) and 1.35x per screened scan;
measure with ``benchmarks/openvino_backend.py`` before choosing ``auto`` (``benchmarks/results/``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from pipelines.screening.settings import ScreeningSettings

log = logging.getLogger("lungscreen")

CACHE_ENV = "LUNGSCREEN_OPENVINO_CACHE"
INSTALL_HINT = "pip install 'lungscreen[cpu-fast]'"
# Compile options of every window shape: f32 (never the bf16 default), single-stream latency mode.
COMPILE_CONFIG: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}

_CORE: Any = None


def import_openvino() -> Any | None:
    """The ``openvino`` module, or None when it is not installed (or fails to import)."""
    try:
        import openvino
    except ImportError:
        return None
    return openvino


def resolve_backend(
    requested: str, *, device: torch.device, amp: str = "auto", available: bool
) -> tuple[str, str | None]:
    """The runtime to use and, when it differs from what was asked for, a one-line note saying why.

    Args:
        requested: the ``backend`` setting: ``auto``, ``torch`` or ``openvino``.
        device: where the network would run with PyTorch; OpenVINO is used on the CPU only.
        amp: the ``amp`` setting. ``auto`` leaves PyTorch's reduced-precision autocast alone (``bfloat16`` or
            ``float16`` asked for on the CPU keeps PyTorch); an explicit ``openvino`` runs float32 regardless.
        available: whether OpenVINO can be imported.

    Returns:
        ``("torch" | "openvino", note or None)``.

    >>> resolve_backend("auto", device=torch.device("cuda"), available=True)
    ('torch', None)
    """
    if requested == "torch":
        return "torch", None
    explicit = requested == "openvino"
    if device.type != "cpu":
        note = f"backend openvino runs on the CPU only: the network runs with PyTorch on {device}"
        return "torch", note if explicit else None
    if not available:
        return "torch", f"openvino is not installed: the network runs with PyTorch ({INSTALL_HINT})"
    if amp in ("bfloat16", "float16"):
        if not explicit:
            return "torch", None
        return "openvino", f"backend openvino runs in float32: amp={amp} applies to PyTorch only"
    return "openvino", None


def network_backend(
    network: torch.nn.Module, *, settings: ScreeningSettings, device: torch.device
) -> tuple[torch.nn.Module, str]:
    """The callable the sliding window runs for ``settings.backend``, and its name (``torch`` / ``openvino``).

    Args:
        network: the nodule network with its weights loaded, in eval mode (or an ensemble's mean-logit module),
            taking ``[B, 1, z, y, x]`` windows.
        settings: ``backend``, ``amp`` and ``roi_size`` (the example window of the export).
        device: the screening device.

    Returns:
        ``network`` itself for PyTorch (on the CPU with ``settings.cpu_layers``, its single-channel layers
        switched in place to :mod:`pipelines.screening.cpu_layers`' kernels), or an :class:`OpenVinoNetwork`
        around it; a note is logged when the backend asked for is not the one used (a warning for an explicit
        ``openvino``, info for ``auto``).
    """
    name, note = resolve_backend(
        settings.backend, device=device, amp=settings.amp, available=import_openvino() is not None
    )
    if note:
        (log.warning if settings.backend == "openvino" else log.info)(note)
    if name == "torch":
        if settings.cpu_layers and device.type == "cpu":
            from pipelines.screening.cpu_layers import use_cpu_layers

            use_cpu_layers(network)
        return network, "torch"
    return OpenVinoNetwork(network, example_shape=(2, 1, *settings.roi_size)), "openvino"


def active_backend(network: torch.nn.Module) -> str:
    """``openvino`` for an :class:`OpenVinoNetwork` that has not fallen back to PyTorch, else ``torch``."""
    return "openvino" if isinstance(network, OpenVinoNetwork) and network.failed is None else "torch"


class OpenVinoNetwork(torch.nn.Module):
    """``network`` run by OpenVINO on the CPU: same call signature, float32 logits (probabilities ~1e-4 apart).

    The export (or the read from the cache) happens at the first call, so that building an engine costs
    nothing; every new input shape is compiled once (~0.1 s on two cores) and kept with its infer request.
    If anything in OpenVINO fails, a warning names the error and this and every later call runs ``network``
    with PyTorch.

    Args:
        network: the PyTorch network (kept: it is exported, and it is the fallback).
        example_shape: the window batch traced for the export, ``(B, C, z, y, x)``; the exported model takes
            any shape (compiled per shape at run time).
        cache_root: where exports are cached (None: :func:`default_cache_root`, which may disable caching).
        threads: CPU threads for inference (default: ``torch.get_num_threads()``, so both runtimes obey the
            same limit).
    """

    def __init__(
        self,
        network: torch.nn.Module,
        *,
        example_shape: Sequence[int],
        cache_root: str | os.PathLike[str] | None = None,
        threads: int | None = None,
    ) -> None:
        super().__init__()
        self.network = network
        self.example_shape = tuple(int(s) for s in example_shape)
        self.cache_root = Path(cache_root) if cache_root is not None else default_cache_root()
        self.threads = threads
        self.failed: str | None = None
        self.cache_path: Path | None = None
        self.export_seconds = 0.0  # export or cache read
        self.compile_seconds: dict[tuple[int, ...], float] = {}
        self._model: Any = None
        self._requests: dict[tuple[int, ...], Any] = {}
        self._lock = threading.Lock()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.failed is None:
            try:
                return self._infer(x)
            except Exception as err:  # noqa: BLE001 - any OpenVINO failure falls back to PyTorch
                self.failed = f"{type(err).__name__}: {str(err).strip().splitlines()[0][:200]}"
                log.warning("openvino failed (%s): the network runs with PyTorch", self.failed)
        return self.network(x)

    def _infer(self, x: torch.Tensor) -> torch.Tensor:
        shape = tuple(int(s) for s in x.shape)
        arr = x.detach().to("cpu", torch.float32).contiguous().numpy()
        with self._lock:  # one infer request per shape, whose output buffer the next call overwrites
            request = self._request(shape)
            request.infer({0: arr})
            out = request.get_output_tensor(0).data.copy()
        return torch.from_numpy(out).to(x.device)

    def _request(self, shape: tuple[int, ...]) -> Any:
        if shape not in self._requests:
            if self._model is None:
                t = time.perf_counter()
                self._model, self.cache_path = load_or_export(
                    self.network, example_shape=self.example_shape, cache_root=self.cache_root
                )
                self.export_seconds = time.perf_counter() - t
            t = time.perf_counter()
            compiled = compile_for_shape(self._model, shape, threads=self.threads)
            self._requests[shape] = compiled.create_infer_request()
            self.compile_seconds[shape] = time.perf_counter() - t
        return self._requests[shape]


def compile_for_shape(model: Any, shape: Sequence[int], *, threads: int | None = None) -> Any:
    """``model`` compiled for the CPU at one fixed input ``shape``, f32 precision, ``threads`` threads."""
    fixed = model.clone()
    fixed.reshape([int(s) for s in shape])
    config = {**COMPILE_CONFIG, "INFERENCE_NUM_THREADS": int(threads or torch.get_num_threads())}
    return _core().compile_model(fixed, "CPU", config)


def default_cache_root() -> Path | None:
    """``$LUNGSCREEN_OPENVINO_CACHE``, else ``$XDG_CACHE_HOME/lungscreen/openvino`` (``~/.cache`` by default).

    The variable set to an empty string disables the cache (every run exports again).
    """
    if CACHE_ENV in os.environ:
        value = os.environ[CACHE_ENV]
        return Path(value).expanduser() if value else None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lungscreen" / "openvino"


def weights_sha256(network: torch.nn.Module) -> str:
    """SHA-256 of the network's weights: every state-dict entry's name, dtype, shape and bytes, in key order.

    The loaded weights, not a checkpoint file, are hashed: an ensemble's members, weights set in memory and
    one checkpoint saved twice with other metadata all get the entry that matches what runs.
    """
    h = hashlib.sha256()
    for key, value in sorted(network.state_dict().items()):
        t = value.detach().to("cpu").contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def architecture_sha256(network: torch.nn.Module) -> str:
    """SHA-256 of the network's class and printed structure (layers, kernels, norms, activations)."""
    cls = type(network)
    return hashlib.sha256(f"{cls.__module__}.{cls.__qualname__}\n{network!r}".encode()).hexdigest()


def cache_entry(cache_root: Path, network: torch.nn.Module, version: str) -> Path:
    """``<cache_root>/<weights sha256>/<architecture sha256[:16]>-ov<version>``."""
    short = version.split("-")[0]
    return cache_root / weights_sha256(network) / f"{architecture_sha256(network)[:16]}-ov{short}"


def load_or_export(
    network: torch.nn.Module, *, example_shape: Sequence[int], cache_root: Path | None
) -> tuple[Any, Path | None]:
    """The network as an OpenVINO model: read from the cache, or exported (and cached when possible).

    A cache entry that cannot be read is exported again and replaced; a cache folder that cannot be written
    costs a warning and an export per process, never a failure.

    Returns:
        ``(openvino.Model, cache entry or None)``.
    """
    ov = import_openvino()
    if ov is None:
        raise ImportError(f"openvino is not installed ({INSTALL_HINT})")
    entry = cache_entry(cache_root, network, ov.__version__) if cache_root is not None else None
    if entry is not None and (entry / "model.xml").is_file():
        try:
            return _core().read_model(str(entry / "model.xml")), entry
        except Exception as err:  # noqa: BLE001 - a damaged entry is exported again
            log.warning("openvino cache entry %s is unreadable (%s): exporting again", entry, err)
    model = export_openvino(network, example_shape=example_shape)
    if entry is None:
        return model, None
    try:
        _save_entry(ov, model, entry, example_shape=example_shape)
    except OSError as err:
        log.warning("cannot cache the openvino model in %s (%s): exporting again next run", entry, err)
        return model, None
    return model, entry


def export_openvino(network: torch.nn.Module, *, example_shape: Sequence[int]) -> Any:
    """Trace ``network`` (eval mode, on the CPU) at ``example_shape`` and convert it to an OpenVINO model.

    The trace is not re-run for checking (``torch.jit.trace`` would run the network twice more); the model
    keeps dynamic input dimensions and is compiled per shape by :func:`compile_for_shape`.
    """
    ov = import_openvino()
    if ov is None:
        raise ImportError(f"openvino is not installed ({INSTALL_HINT})")
    example = torch.zeros(tuple(int(s) for s in example_shape))
    # inference_mode(False): the sliding window calls this under inference mode, whose tensors tracing refuses
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        # instance norm's shape checks become constants of the trace: right for every window shape
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(network.eval(), example, check_trace=False)
        return ov.convert_model(traced, example_input=example)


def _save_entry(ov: Any, model: Any, entry: Path, *, example_shape: Sequence[int]) -> None:
    """Write the IR to a temporary folder beside ``entry`` and rename it into place (atomic on POSIX)."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{entry.name}-", dir=entry.parent))
    try:
        ov.save_model(model, str(tmp / "model.xml"), compress_to_fp16=False)
        meta = {
            "openvino": ov.__version__,
            "torch": torch.__version__,
            "example_shape": list(example_shape),
            "precision": "f32 weights; compiled with INFERENCE_PRECISION_HINT=f32",
        }
        (tmp / "export.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
        if entry.exists():  # a damaged entry (an intact one was read above)
            shutil.rmtree(entry, ignore_errors=True)
        try:
            os.rename(tmp, entry)
        except OSError:
            if not (entry / "model.xml").is_file():  # not a concurrent writer winning the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _core() -> Any:
    """One ``openvino.Core`` per process."""
    global _CORE
    if _CORE is None:
        ov = import_openvino()
        if ov is None:
            raise ImportError(f"openvino is not installed ({INSTALL_HINT})")
        _CORE = ov.Core()
    return _CORE
