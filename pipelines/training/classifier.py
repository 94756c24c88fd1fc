"""Second training stage: the false-positive classifier (bundle ``classifier_def``, a MONAI 3-D ResNet).

1. Mining (:func:`mine_patches`): the trained UNet runs over the training scans exactly as at inference
   (bundle preprocessing, lung-gated sliding window, :func:`pipelines.nodules.extract.extract_nodules` at a low
   threshold). Candidates are labelled with :func:`pipelines.training.patches.label_candidates` against
   ``annotations.csv`` (LUNA16 rule): hits are positives, misses are the hard negatives (vessel crossings,
   pleura, fissures). Every annotated nodule is added as a positive with jittered copies, and a few random lung
   points as easy negatives, so the classifier learns even when the UNet finds little.
2. Training (``train_classifier.json``): 48^3 patches of the scaled ``[0, 1]`` network-grid volume, cut by
   :func:`pipelines.training.patches.extract_patch` with ``pad_value=0`` exactly as :func:`pipelines.screening.scoring.
   classify_candidates` does at inference; BCE with a positive-class weight, flips and 90-degree rotations.

Patches are stored in ``patches.npz``: ``patches`` float16 ``[N, 48, 48, 48]`` (``[z, y, x]``), ``labels`` uint8,
``kinds`` (``candidate``/``annotation``/``jitter``/``random``), ``seriesuids``, ``world_lps_mm`` ``[N, 3]``.
"""

from __future__ import annotations

import csv
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipelines.imaging.preprocess import CaseGeometry, unscale_hu
from pipelines.screening.inference import load_weights, sliding_window_probability
from pipelines.screening.scoring import CLASSIFIER_PATCH
from pipelines.training.data import PathLike, load_datalist, write_hard_negatives
from pipelines.training.patches import extract_patch, label_candidates

_GPU_CLASSIFIER: dict[str, Any] = {
    "classifier#batch_size": 64,
    "classifier#num_workers": 8,
    "classifier#max_epochs": 15,
    "classifier#time_limit_s": 60,
    "classifier#mining#workers": 15,
    "classifier#mining#max_cases": 64,
}
#: Classifier settings per training profile (the keys of :data:`pipelines.training.profiles.PROFILES`); both GPU profiles
#: train the classifier the same way (its patches are small and cached, the overlay is for the UNet's stage).
CLASSIFIER_PROFILES: dict[str, dict[str, Any]] = {
    "gpu": _GPU_CLASSIFIER,
    "gpu-device": _GPU_CLASSIFIER,
    "cpu": {
        "classifier#batch_size": 16,
        "classifier#num_workers": 0,
        "classifier#max_epochs": 8,
        "classifier#time_limit_s": 180,
    },
    "smoke": {
        "classifier#batch_size": 8,
        "classifier#num_workers": 0,
        "classifier#max_epochs": 2,
        "classifier#mining#jitter_per_positive": 2,
        "classifier#mining#random_negatives": 2,
    },
}


def read_annotations(path: PathLike) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``annotations.csv`` -> {seriesuid: (centres ``[M, 3]`` world LPS mm, diameters ``[M]`` mm)}."""
    rows: dict[str, list[list[float]]] = defaultdict(list)
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            rows[r["seriesuid"]].append(
                [float(r["coordX"]), float(r["coordY"]), float(r["coordZ"]), float(r["diameter_mm"])]
            )
    return {uid: (np.asarray(v)[:, :3], np.asarray(v)[:, 3]) for uid, v in rows.items()}


def _mining_parser(*, files: list[str], overrides: dict[str, Any]) -> Any:
    from monai.bundle import ConfigParser

    from pipelines.bundle import apply_overrides, bundle_root

    root = bundle_root()
    parser = ConfigParser()
    parser.read_config([str(root / "configs" / f) for f in files])
    return apply_overrides(parser, {"bundle_root": root, **overrides})


def _case_patches(
    data: dict[str, Any],
    prob: torch.Tensor,
    ann: tuple[np.ndarray, np.ndarray],
    *,
    settings: Any,
    mining: dict[str, Any],
    rng: np.random.Generator,
) -> list[tuple[np.ndarray, int, str, np.ndarray]]:
    """(patch, label, kind, world centre) for one case; see the module docstring for the kinds."""
    from pipelines.nodules.extract import extract_nodules

    geometry: CaseGeometry = data["geometry"]
    vol = data["image"][0].cpu().numpy()
    lungs = np.asarray(data["lungs"]).reshape(vol.shape)
    hu = unscale_hu(vol, hu_min=settings.hu_min, hu_max=settings.hu_max)
    _, cands = extract_nodules(
        prob.numpy(),
        hu,
        geometry.network_spacing_zyx,
        threshold=float(mining["candidate_threshold"]),
        min_diameter_mm=settings.min_diameter_mm,
        max_candidates=int(mining["max_candidates"]),
        lung_labels_zyx=lungs,
    )
    centres = [np.asarray(c["canonical_index_zyx"], float) for c in cands]  # network grid here
    ann_w, ann_d = ann
    world = geometry.network_to_world(np.asarray(centres).reshape(-1, 3))
    hits = label_candidates(world, ann_w, ann_d)
    # (network-grid centre, label, kind, world centre or None while not mapped yet)
    out: list[tuple[np.ndarray, int, str, np.ndarray | None]] = [
        (c, int(h), "candidate", w) for c, h, w in zip(centres, hits, world)
    ]
    ann_net = geometry.world_to_network(ann_w) if len(ann_w) else np.zeros((0, 3))
    spacing = np.asarray(geometry.network_spacing_zyx, float)
    for c, w, d in zip(ann_net, ann_w, ann_d):
        out.append((c, 1, "annotation", np.asarray(w, float)))
        jit = min(float(mining["jitter_mm"]), d / 4.0)
        for _ in range(int(mining["jitter_per_positive"])):
            out.append((c + rng.uniform(-jit, jit, 3) / spacing, 1, "jitter", None))
    inside = np.argwhere(lungs > 0)
    for _ in range(int(mining["random_negatives"]) if len(inside) else 0):
        c = inside[rng.integers(len(inside))].astype(float)
        w = geometry.network_to_world(c[None])
        if not label_candidates(w, ann_w, ann_d + 10.0)[0]:
            out.append((c, 0, "random", w[0]))
    # the jittered centres are the only ones not mapped yet: one batched mapping
    jitter_w = iter(
        geometry.network_to_world(np.asarray([c for c, *_, w in out if w is None]).reshape(-1, 3))
    )
    return [
        (
            extract_patch(vol, c, size=CLASSIFIER_PATCH, pad_value=0.0),
            y,
            k,
            w if w is not None else next(jitter_w),
        )
        for c, y, k, w in out
    ]


def mine_patches(
    *,
    dataset: PathLike,
    weights: PathLike,
    out_file: PathLike,
    files: list[str],
    overrides: dict[str, Any],
    mining: dict[str, Any],
    seed: int = 0,
) -> dict[str, int]:
    """Run the UNet over the training scans, label candidates, write ``patches.npz``; return counts by kind."""
    parser = _mining_parser(files=files, overrides=overrides)
    preprocessing = parser.get_parsed_content("preprocessing")
    settings = parser.get_parsed_content("settings")
    device = parser.get_parsed_content("device")
    network = load_weights(parser.get_parsed_content("network"), Path(weights)).eval()
    inferer = parser.get_parsed_content("inferer")
    annotations = read_annotations(Path(dataset) / "annotations.csv")
    rng = np.random.default_rng(seed)
    rows: list[tuple[np.ndarray, int, str, np.ndarray, str]] = []
    items = load_datalist(dataset, "training", limit=mining.get("max_cases"))
    loader = torch.utils.data.DataLoader(
        _Preprocessed(items, preprocessing),
        batch_size=1,
        num_workers=int(mining.get("workers") or 0),
        collate_fn=_first,
    )
    for n, (item, data) in enumerate(loader, 1):
        prob, _ = sliding_window_probability(
            data["image"], data["lungs"], network=network, inferer=inferer, settings=settings, device=device
        )
        empty = (np.zeros((0, 3)), np.zeros(0))
        case = _case_patches(
            data, prob, annotations.get(item["seriesuid"], empty), settings=settings, mining=mining, rng=rng
        )
        rows += [(*r, item["seriesuid"]) for r in case]
        print(f"[train] mining {n}/{len(items)} {item['seriesuid']}: {len(case)} patches", flush=True)
    return _save_patches(rows, Path(out_file))


class _Preprocessed(torch.utils.data.Dataset):
    """Datalist items through the bundle preprocessing (run in DataLoader workers while the GPU mines)."""

    def __init__(self, items: list[dict[str, Any]], preprocessing: Any) -> None:
        self.items, self.preprocessing = items, preprocessing

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[dict[str, Any], dict[str, Any]]:
        item = self.items[i]
        return item, self.preprocessing({k: item[k] for k in ("image", "label", "lungs")})


def _first(batch: list[Any]) -> Any:
    return batch[0]


def _save_patches(rows: list[tuple[np.ndarray, int, str, np.ndarray, str]], path: Path) -> dict[str, int]:
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (0, *CLASSIFIER_PATCH)
    patches = np.stack([r[0] for r in rows]).astype(np.float16) if rows else np.zeros(shape, np.float16)
    labels = np.asarray([r[1] for r in rows], np.uint8)
    kinds = np.asarray([r[2] for r in rows], dtype="U10")
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(
        tmp,
        patches=patches,
        labels=labels,
        kinds=kinds,
        seriesuids=np.asarray([r[4] for r in rows], dtype="U128"),
        world_lps_mm=np.asarray([r[3] for r in rows], float).reshape(-1, 3),
    )
    tmp.replace(path)
    counts = {
        f"{k}_{'pos' if y else 'neg'}": 0
        for k in ("candidate", "annotation", "jitter", "random")
        for y in (0, 1)
    }
    for y, k in zip(labels, kinds):
        counts[f"{k}_{'pos' if y else 'neg'}"] += 1
    counts = {k: v for k, v in counts.items() if v}
    counts["total"] = int(len(labels))
    return counts


def split_patches(
    patches_file: PathLike, *, val_fraction: float = 0.15, seed: int = 0
) -> tuple[list[dict[str, np.ndarray]], list[dict[str, np.ndarray]]]:
    """Train/validation items ``{"image": [1, 48, 48, 48] float32, "label": [1] float32}`` split by scan.

    Falls back to a stratified split by patch when the scan split leaves validation without both classes.
    """
    z = np.load(patches_file)
    # each NpzFile lookup reads the whole member again: read the patches once (a lookup per patch made this
    # quadratic: 0.92 s per lookup of a 628 MB file, ~43 min for 2,833 patches)
    patches, labels, uids = z["patches"], z["labels"].astype(np.float32), z["seriesuids"]
    rng = np.random.default_rng(seed)
    unique = np.unique(uids)
    n_val = int(round(len(unique) * val_fraction))
    val_uids = set(rng.permutation(unique)[:n_val].tolist()) if len(unique) > 2 else set()
    is_val = np.asarray([u in val_uids for u in uids], bool)
    if len(np.unique(labels[is_val])) < 2:
        is_val = np.zeros(len(labels), bool)
        for y in (0.0, 1.0):
            idx = np.flatnonzero(labels == y)
            take: np.ndarray | list[int] = (
                rng.permutation(idx)[: max(1, int(round(len(idx) * val_fraction)))] if len(idx) > 1 else []
            )
            is_val[take] = True
    items = [
        {"image": patches[i][None].astype(np.float32), "label": np.asarray([labels[i]], np.float32)}
        for i in range(len(labels))
    ]
    return [it for it, v in zip(items, is_val) if not v], [it for it, v in zip(items, is_val) if v]


def train_classifier_stage(
    *, dataset: PathLike, out: Path, profile: str, seed: int, device: str, overrides: dict[str, Any]
) -> dict[str, Any]:
    """Mine patches with ``out/models/model.pt``, train ``train_classifier.json``, ship ``classifier.pt``.

    Returns:
        Patch counts by kind and label, iterations, best validation AUC and the weights path.
    """
    from pipelines.bundle import load_workflow
    from pipelines.training.profiles import PROFILES, SMOKE_OVERRIDES

    run_dir = out / "classifier"
    # paths as Path objects: MONAI's config parser never reads them as expressions, references or macros
    pairs: dict[str, Any] = {"run_dir": Path(run_dir), "seed": int(seed), "settings#device": device}
    pairs.update(CLASSIFIER_PROFILES[profile])
    pairs.update(overrides)
    parser = _mining_parser(files=["inference.json", "train_classifier.json"], overrides=pairs)
    mining = parser.get_parsed_content("classifier#mining")
    seg_settings = (
        {k: v for k, v in SMOKE_OVERRIDES.items() if k.startswith("settings#")} if profile == "smoke" else {}
    )
    # inference settings given by the caller shape the mining network's map too, not only the thresholds
    seg_settings.update({k: v for k, v in overrides.items() if k.startswith("settings#")})
    patches_file = run_dir / "patches.npz"
    counts = mine_patches(
        dataset=dataset,
        weights=out / "models" / "model.pt",
        out_file=patches_file,
        files=list(PROFILES[profile]),
        overrides={"dataset_dir": Path(dataset), "settings#device": device, **seg_settings},
        mining=dict(mining),
        seed=seed,
    )
    hard = write_hard_negatives(patches_file, run_dir / "hard_negatives.json")
    print(f"[train] hard negatives for the segmentation stage: {hard} -> {run_dir / 'hard_negatives.json'}")
    n_pos = sum(v for k, v in counts.items() if k.endswith("_pos"))
    n_neg = counts["total"] - n_pos
    pairs["pos_weight"] = float(np.clip(n_neg / max(n_pos, 1), 1.0, 10.0))
    print(f"[train] classifier patches {counts}; pos_weight {pairs['pos_weight']:.2f}", flush=True)
    workflow = load_workflow(
        ["inference.json", "train_classifier.json"], workflow_type="infer", overrides=pairs
    )
    workflow.initialize()
    workflow.run()
    trainer = workflow.parser.get_parsed_content("classifier#trainer")
    evaluator = workflow.parser.get_parsed_content("classifier#evaluator")
    network = workflow.parser.get_parsed_content("classifier#network")
    workflow.finalize()
    best = run_dir / "models" / "classifier.pt"
    if not best.is_file():
        best.parent.mkdir(parents=True, exist_ok=True)
        torch.save({k: v.detach().cpu() for k, v in network.state_dict().items()}, best)
    shipped = out / "models" / "classifier.pt"
    shipped.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(best, shipped)
    return {
        "patches": counts,
        "pos_weight": pairs["pos_weight"],
        "iterations": int(trainer.state.iteration),
        "best_val_auc": float(evaluator.state.best_metric) if evaluator.state.best_metric_epoch > 0 else None,
        "weights": str(shipped),
    }
