"""Merging generated datasets (and nodule-inserted real CT) into one training datalist."""

from __future__ import annotations

import json
import os
import stat

import pytest
from monai.data import load_decathlon_datalist

from pipelines.phantom import make_dataset
from pipelines.phantom_write import merge_datasets


def test_merge_keeps_splits_tables_and_absolute_paths(tmp_path):
    a = make_dataset(tmp_path / "a", n=1, seed=11, size="small")
    b = make_dataset(tmp_path / "b", n=1, seed=12, size="small")
    out = merge_datasets([a, b], tmp_path / "merged")
    items = sum(json.loads((out / "datalist.json").read_text()).values(), [])
    assert sorted(i["seriesuid"] for i in items) == sorted(
        (a / "seriesuids.csv").read_text().split() + (b / "seriesuids.csv").read_text().split()
    )
    assert all(os.path.isabs(i["image"]) and os.path.exists(i["label"]) for i in items)
    ann = (out / "annotations.csv").read_text().splitlines()
    n_ann = sum(len((d / "annotations.csv").read_text().splitlines()) - 1 for d in (a, b))
    assert ann[0].startswith("seriesuid,coordX") and len(ann) == 1 + n_ann
    training = load_decathlon_datalist(out / "datalist.json", data_list_key="training", base_dir=out)
    assert all(os.path.exists(t["image"]) for t in training)
    with pytest.raises(ValueError, match="more than one source"):
        merge_datasets([a, a], tmp_path / "dup")


def test_written_files_are_readable_by_others(tmp_path):
    d = make_dataset(tmp_path / "a", n=1, seed=3, size="small")
    mode = next((d / "images").iterdir()).stat().st_mode
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(mode) == 0o666 & ~umask
