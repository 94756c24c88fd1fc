"""Merging generated datasets (and nodule-inserted real CT) into one training datalist."""

from __future__ import annotations

import json
import os
import stat

import pytest
from monai.data import load_decathlon_datalist

from pipelines.phantom.write import make_dataset, merge_datasets


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


def test_generator_version_stamp_follows_the_data_and_older_sets_warn(tmp_path, capsys):
    from pipelines.cli.main import main
    from pipelines.phantom.write import (
        GENERATOR_FILE,
        GENERATOR_VERSION,
        generator_version,
        held_out_set,
        stale_dataset_warning,
    )

    new = make_dataset(tmp_path / "new", n=1, seed=11, size="small")
    old = make_dataset(tmp_path / "old", n=1, seed=12, size="small")
    assert generator_version(new) == GENERATOR_VERSION and stale_dataset_warning(new) is None
    (old / GENERATOR_FILE).unlink()  # as a dataset of v0.6 or earlier: cases.csv, no stamp
    assert generator_version(old) == 1
    msg = stale_dataset_warning(old)
    assert msg is not None and str(old) in msg and "generator 1" in msg
    # merges and held-out sets are as old as their oldest phantom source
    assert generator_version(merge_datasets([new, old], tmp_path / "mixed")) == 1
    assert generator_version(held_out_set([(new, ("training", "validation", "test"))], tmp_path / "ho")) == 2
    # a dataset the generator did not make (no cases.csv, e.g. prepared LUNA16) gets no stamp and no warning
    other = tmp_path / "luna"
    other.mkdir()
    assert generator_version(other) is None and stale_dataset_warning(other) is None
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / GENERATOR_FILE).write_text("[]")
    with pytest.raises(ValueError, match="generator.json"):
        generator_version(tmp_path / "bad")
    # lungscreen evaluate says so on stderr and still evaluates
    out = tmp_path / "ev"
    rows = (old / "annotations.csv").read_text().splitlines()
    pred = tmp_path / "pred.csv"
    pred.write_text("\n".join([rows[0] + ",probability"] + [r + ",0.9" for r in rows[1:]]) + "\n")
    rc = main(
        [
            "evaluate",
            "--annotations",
            str(old / "annotations.csv"),
            "--predictions",
            str(pred),
            "--seriesuids",
            str(old / "seriesuids.csv"),
            "--bootstrap",
            "0",
            "--out",
            str(out),
        ]
    )
    assert rc == 0 and "generator 1" in capsys.readouterr().err
