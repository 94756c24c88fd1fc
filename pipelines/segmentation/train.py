"""Generic 3D segmentation training: ``images/`` + ``labels/`` (N labels, C channels) -> ``MODEL/``.

:func:`train_segmentation` (``lungscreen train-seg``) stacks the bundle configs
``configs/seg_inference.json`` (network, preprocessing, inferer: declared once) and ``configs/seg_train.json``
(plan computed from the dataset, loss, optimiser, patch sampler, trainer), and runs the config's ``trainer``.
The model folder then holds:

- ``plan.json``: the plan (:class:`pipelines.segmentation.plan.SegPlan`), the only source of spacing/patch/channels;
- ``model.pt``: the network's state dict (load with :func:`pipelines.screening.inference.load_weights`);
- ``config.json``: the config files and overrides used; ``train_log.json``: losses and timings.

Training follows nnU-Net's recipe at a small scale: every case is preprocessed once (N4 for MRI, normalised,
resampled to the target spacing) and cached in memory; each step draws ``batch_size`` patches, a third of
them centred on a random labelled voxel; Dice + cross-entropy loss; AdamW with a polynomial learning-rate
decay. Mirroring is *not* used as augmentation: labels may be lateralised (left/right kidney).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipelines.imaging import filesys
from pipelines.segmentation.data import SegCase, find_labelled_cases
from pipelines.segmentation.plan import SegPlan

log = logging.getLogger("lungscreen")

CONFIG_FILES = ("seg_inference.json", "seg_train.json")
MAX_FG_COORDS = 20_000


def labelled_cases(*, images: str | Path, labels: str | Path) -> list[SegCase]:
    """Cases of ``images/`` (channels grouped) with their ``labels/`` maps; raises when a label is missing."""
    return find_labelled_cases(images, labels)


# ------------------------------------------------------------------------------------------- sampling
def crop_or_pad(array: torch.Tensor, start_zyx: Sequence[int], patch_zyx: Sequence[int]) -> torch.Tensor:
    """Cut ``[C, z, y, x]`` at ``start_zyx`` (may be negative or run past the end) to ``patch_zyx``, zero-padded."""
    out = array.new_zeros((array.shape[0], *patch_zyx))
    src, dst = [], []
    for start, p, n in zip(start_zyx, patch_zyx, array.shape[1:]):
        a, b = max(0, start), min(n, start + p)
        src.append(slice(a, b))
        dst.append(slice(a - start, b - start))
    out[(slice(None), *dst)] = array[(slice(None), *src)]
    return out


class PatchSampler:
    """Draw training batches of patches from preprocessed cases.

    Args:
        patch_size_zyx: patch shape in voxels of the network grid.
        batch_size: patches per batch.
        foreground_fraction: share of patches holding a random voxel of a random label present in the case,
            at a random place in the patch (at least one such patch per batch when > 0), as nnU-Net's
            oversampling.
        seed: random seed.
        intensity_augmentation: random per-patch scale (0.9-1.1), shift (+-0.1) and Gaussian noise (sd 0.05).
    """

    def __init__(
        self,
        *,
        patch_size_zyx: Sequence[int],
        batch_size: int = 2,
        foreground_fraction: float = 0.33,
        seed: int = 0,
        intensity_augmentation: bool = True,
    ) -> None:
        self.patch = tuple(int(v) for v in patch_size_zyx)
        self.batch_size = int(batch_size)
        self.foreground_fraction = float(foreground_fraction)
        self.rng = np.random.default_rng(seed)
        self.augment = intensity_augmentation

    def index(self, label: torch.Tensor) -> dict[int, np.ndarray]:
        """Voxel coordinates ``[n, 3]`` (z, y, x) of every class present (subsampled), for foreground centring."""
        lab = label.reshape(label.shape[-3:]).numpy()
        coords = {}
        for k in np.unique(lab):
            if k == 0:
                continue
            pts = np.argwhere(lab == k)
            if len(pts) > MAX_FG_COORDS:
                pts = pts[self.rng.choice(len(pts), MAX_FG_COORDS, replace=False)]
            coords[int(k)] = pts
        return coords

    def _start(self, shape: Sequence[int], coords: dict[int, np.ndarray], foreground: bool) -> list[int]:
        if foreground and coords:
            pts = coords[list(coords)[self.rng.integers(len(coords))]]
            centre = pts[self.rng.integers(len(pts))]
            # the chosen voxel lands anywhere in the patch (nnU-Net's way), not always in its middle: a
            # network that only ever sees foreground centred learns a centre prior and misses structures
            # that sit off-centre in the sliding windows at inference
            starts = [int(c) - int(self.rng.integers(p)) for c, p in zip(centre, self.patch)]
            return [min(max(s, min(0, n - p)), max(0, n - p)) for s, n, p in zip(starts, shape, self.patch)]
        return [int(self.rng.integers(min(0, n - p), max(0, n - p) + 1)) for n, p in zip(shape, self.patch)]

    def __call__(self, items: Sequence[dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch ``([B, C, *patch] float32, [B, 1, *patch] int64)`` from items holding ``image``, ``label``,
        ``fg_coords``."""
        images, labels = [], []
        n_fg = int(round(self.batch_size * self.foreground_fraction))
        n_fg = max(n_fg, 1) if self.foreground_fraction > 0 else 0
        for b in range(self.batch_size):
            item = items[int(self.rng.integers(len(items)))]
            start = self._start(item["image"].shape[1:], item["fg_coords"], b >= self.batch_size - n_fg)
            img = crop_or_pad(item["image"], start, self.patch)
            if self.augment:
                img = img * float(self.rng.uniform(0.9, 1.1)) + float(self.rng.uniform(-0.1, 0.1))
                if self.rng.random() < 0.15:
                    img = img + 0.05 * torch.randn_like(img)
            images.append(img)
            labels.append(crop_or_pad(item["label"], start, self.patch))
        return torch.stack(images), torch.stack(labels)


# ------------------------------------------------------------------------------------------- trainer
class SegmentationTrainer:
    """Train the bundle's network on a plan's cases and write ``model_dir/model.pt`` (state dict).

    Args:
        plan: the dataset's plan (already written to ``model_dir/plan.json``).
        dataset: labelled cases.
        preprocessing: the bundle's preprocessing ``Compose`` (dict with ``image`` = case in, network-grid
            ``image`` ``[C, z, y, x]`` and ``label`` ``[1, z, y, x]`` class indices out).
        network, loss, optimizer, sampler: from the config.
        iterations: optimisation steps.
        device: where the network runs.
        model_dir: output folder.
        seed: recorded in the log (the config seeds MONAI/torch/numpy).
        lr_power: polynomial decay exponent of the learning rate.
    """

    def __init__(
        self,
        *,
        plan: SegPlan,
        dataset: Sequence[SegCase],
        preprocessing: Callable[[dict[str, Any]], dict[str, Any]],
        network: torch.nn.Module,
        loss: Callable[..., torch.Tensor],
        optimizer: torch.optim.Optimizer,
        sampler: PatchSampler,
        iterations: int,
        device: torch.device,
        model_dir: str | Path,
        seed: int = 0,
        lr_power: float = 0.9,
    ) -> None:
        if int(iterations) < 1:
            raise ValueError(f"iterations must be >= 1, not {iterations}")
        self.plan, self.dataset, self.preprocessing = plan, list(dataset), preprocessing
        self.network, self.loss, self.optimizer, self.sampler = network, loss, optimizer, sampler
        self.iterations, self.device, self.seed = int(iterations), torch.device(device), seed
        self.model_dir = Path(model_dir)
        self.lr_power = lr_power

    def prepare(self) -> list[dict[str, Any]]:
        """Preprocess every case once: network-grid image and class map plus foreground coordinates."""
        items = []
        for case in self.dataset:
            d = self.preprocessing({"image": case})
            items.append(
                {
                    "case_id": case.case_id,
                    "image": torch.as_tensor(d["image"]).float(),
                    "label": torch.as_tensor(d["label"]).long(),
                    "fg_coords": self.sampler.index(torch.as_tensor(d["label"])),
                }
            )
        return items

    def run(self) -> dict[str, Any]:
        """Train; write ``model.pt`` and ``train_log.json``; return the log."""
        t0 = time.perf_counter()
        items = self.prepare()
        t_prep = time.perf_counter() - t0
        base_lrs = [g["lr"] for g in self.optimizer.param_groups]
        amp = torch.bfloat16 if self.device.type == "cuda" else None
        self.network.train()
        losses: list[float] = []
        for it in range(self.iterations):
            for g, lr in zip(self.optimizer.param_groups, base_lrs):
                g["lr"] = lr * (1 - it / self.iterations) ** self.lr_power
            x, y = self.sampler(items)
            x, y = x.to(self.device), y.to(self.device)
            self.optimizer.zero_grad(set_to_none=True)
            with torch.autocast(self.device.type, dtype=amp, enabled=amp is not None):
                loss = self.loss(self.network(x).float(), y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12.0)
            self.optimizer.step()
            losses.append(float(loss.detach()))
            if (it + 1) % max(1, self.iterations // 10) == 0:
                log.info("iteration %d/%d loss %.4f", it + 1, self.iterations, np.mean(losses[-10:]))
        self.network.eval()
        path = self.model_dir / "model.pt"
        with filesys.atomic_write(path) as tmp:
            torch.save({k: v.detach().cpu() for k, v in self.network.state_dict().items()}, tmp)
        record = {
            "iterations": self.iterations,
            "seed": self.seed,
            "cases": [i["case_id"] for i in items],
            "loss_first10": float(np.mean(losses[:10])),
            "loss_last10": float(np.mean(losses[-10:])),
            "loss_curve": [
                float(np.mean(c)) for c in np.array_split(np.asarray(losses), min(20, len(losses)))
            ],
            "seconds_preprocess": round(t_prep, 2),
            "seconds_total": round(time.perf_counter() - t0, 2),
            "device": str(self.device),
        }
        filesys.atomic_write_text(self.model_dir / "train_log.json", json.dumps(record, indent=2) + "\n")
        return record


# ------------------------------------------------------------------------------------------- API
def train_segmentation(
    *,
    images: str | Path,
    labels: str | Path,
    modality: str,
    out: str | Path,
    iterations: int = 2000,
    seed: int = 0,
    device: str = "auto",
    planning: dict[str, Any] | None = None,
    overrides: dict[str, Any] | None = None,
    bundle_root: str | Path | None = None,
) -> Path:
    """Plan and train a segmentation model on ``images/`` + ``labels/``; return the model folder.

    Args:
        images: folder of ``case.nii.gz`` or ``case_0000.nii.gz``, ``case_0001.nii.gz``... (any readable format).
        labels: folder of ``case.nii.gz`` label maps (integer values, the images' geometry).
        modality: a name of :data:`pipelines.imaging.modality.MODALITIES` (``ct``, ``mri``).
        out: the model folder (created): ``plan.json``, ``model.pt``, ``config.json``, ``train_log.json``.
        iterations: optimisation steps.
        seed: seeds numpy, torch and MONAI.
        device: ``auto``, ``cpu`` or ``cuda``.
        planning: :func:`pipelines.segmentation.plan.make_plan` options (``max_patch_voxels``, ``base_features``, ``n4``...).
        overrides: further config ID-path overrides (``{"optimizer#lr": 0.001}``): numbers, booleans, None,
            plain strings or lists of those (:func:`pipelines.bundle.check_user_overrides`).
        bundle_root: bundle folder (see :func:`pipelines.bundle.bundle_root`).

    Raises:
        pipelines.bundle.OverrideError: for an override that is not a plain value or names a reserved key.
        pipelines.screening.inference.DeviceError: for a device this machine does not have.
        pipelines.imaging.modality.UnknownModalityError: listing the valid modalities.
        FileNotFoundError / filesys.ImageReadError: for missing labels, unreadable files or mismatched geometry.
    """
    from pipelines.bundle import check_user_overrides
    from pipelines.imaging.modality import get_modality
    from pipelines.screening.inference import select_device

    get_modality(modality)
    select_device(device)  # an unknown name or a missing GPU is refused before any work
    user = check_user_overrides({f"planning#{k}": v for k, v in (planning or {}).items()}, option="planning")
    user.update(check_user_overrides(overrides or {}, option="override"))
    out = Path(out)
    # paths as Path objects: MONAI's config parser never reads them as expressions, references or macros
    pairs: dict[str, Any] = {
        "images_dir": Path(images),
        "labels_dir": Path(labels),
        "modality": str(modality),
        "model_dir": out,
        "iterations": int(iterations),
        "seed": int(seed),
        "device_name": device,
        **user,
    }
    out.mkdir(parents=True, exist_ok=True)
    parser = load_config(CONFIG_FILES, overrides=pairs, bundle_root=bundle_root)
    _record_config(out, parser, pairs)
    run_unwrapped(lambda: parser.get_parsed_content("initialize"))
    record = run_unwrapped(lambda: parser.get_parsed_content("trainer").run())
    log.info(
        "trained %d iterations in %.0f s; final loss %.4f",
        iterations,
        record["seconds_total"],
        record["loss_last10"],
    )
    return out


def run_unwrapped(job: Callable[[], Any]) -> Any:
    """Run ``job``; when MONAI's config machinery wraps an error ("Failed to instantiate component ..."),
    raise the original error instead (a missing label, an unreadable file, an invalid plan)."""
    from pipelines.bundle import unwrapped_errors

    with unwrapped_errors():
        return job()


def load_config(
    files: Sequence[str], *, overrides: dict[str, Any], bundle_root: str | Path | None = None
) -> Any:
    """A MONAI ``ConfigParser`` of the bundle's ``configs/<files>`` (stacked) with ID-path ``overrides``."""
    from monai.bundle import ConfigParser

    from pipelines.bundle import apply_overrides
    from pipelines.bundle import bundle_root as find_root

    root = find_root(bundle_root)
    parser = ConfigParser()
    parser.read_config([str(root / "configs" / f) for f in files])
    return apply_overrides(parser, {"bundle_root": root, **overrides})


def _record_config(out: Path, parser: Any, overrides: dict[str, Any]) -> None:
    record = {"config_files": list(CONFIG_FILES), "overrides": overrides, "config": parser.get()}
    filesys.atomic_write_text(out / "config.json", json.dumps(record, indent=2, default=str) + "\n")
