"""split_patches: train/validation items split by scan, with every patch read from patches.npz once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipelines.training.classifier import split_patches


def _patches_file(tmp_path: Path, n_scans: int = 10, per_scan: int = 6) -> Path:
    rng = np.random.default_rng(0)
    n = n_scans * per_scan
    path = tmp_path / "patches.npz"
    np.savez(
        path,
        patches=rng.random((n, 48, 48, 48)).astype(np.float16),
        labels=np.tile(np.asarray([1, 0, 0, 1, 0, 0], np.uint8), n_scans),
        kinds=np.asarray(["candidate"] * n),
        seriesuids=np.repeat(np.asarray([f"scan{i}" for i in range(n_scans)]), per_scan),
        world_lps_mm=np.zeros((n, 3)),
    )
    return path


def test_items_are_the_stored_patches_split_by_scan(tmp_path: Path) -> None:
    path = _patches_file(tmp_path)
    train, val = split_patches(path, val_fraction=0.2, seed=0)
    assert len(train) + len(val) == 60 and len(val) == 12  # 2 of 10 scans
    stored = np.load(path)["patches"].astype(np.float32)
    found = [int(np.flatnonzero((stored == it["image"][0]).all(axis=(1, 2, 3)))[0]) for it in train + val]
    assert sorted(found) == list(range(60))  # each patch once, unchanged
    uids = np.load(path)["seriesuids"]
    assert not {uids[i] for i in found[len(train) :]} & {uids[i] for i in found[: len(train)]}


def test_patches_member_is_read_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _patches_file(tmp_path)
    reads: list[str] = []
    original = np.lib.npyio.NpzFile.__getitem__

    def counting(self, key):  # type: ignore[no-untyped-def]
        reads.append(key)
        return original(self, key)

    monkeypatch.setattr(np.lib.npyio.NpzFile, "__getitem__", counting)
    split_patches(path, val_fraction=0.2, seed=0)
    assert reads.count("patches") == 1  # was once per patch: quadratic in the patch count
