"""Training profiles: which bundle configs each profile stacks, and the smoke profile's overrides (for tests)."""

from __future__ import annotations

from typing import Any

PROFILES: dict[str, list[str]] = {
    "gpu": ["inference.json", "train.json"],
    "gpu-device": ["inference.json", "train.json", "train_gpu_fast.json"],
    "cpu": ["inference.json", "train.json", "train_cpu.json"],
    "smoke": ["inference.json", "train.json", "train_cpu.json"],
}


SMOKE_OVERRIDES: dict[str, Any] = {
    "settings#roi_size": [32, 32, 32],
    "train#num_samples": 2,
    "train#batch_size": 1,
    "train#cache_workers": 0,
    "train#num_workers": 0,
    "train#max_bg_indices": 2000,
    "train#epoch_length": 5,
    "train#trainer#max_epochs": 4,
    "train#lr": 0.003,
    "val_interval": 2,
    "validate#max_cases": 1,
}
