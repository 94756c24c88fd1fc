"""held_out_set: the validation folder links the chosen splits and keeps only their table rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.cli.main import main
from pipelines.phantom.write import held_out_set


def _dataset(root: Path, uids: dict[str, list[str]]) -> Path:
    """A make_dataset-shaped folder with dummy files: ``{split: [seriesuid, ...]}``."""
    datalist: dict[str, list[dict[str, str]]] = {}
    ann, cases, series = ["seriesuid,coordX,coordY,coordZ,diameter_mm"], ["seriesuid,nodule_id,type"], []
    for split, names in uids.items():
        for uid in names:
            item = {"seriesuid": uid}
            for key, folder in (("image", "images"), ("label", "labels"), ("lung", "lungs")):
                f = root / folder / f"{uid}.nii.gz"
                f.parent.mkdir(parents=True, exist_ok=True)
                f.write_text(f"{key} of {uid}")
                item[key] = f"{folder}/{uid}.nii.gz"
            datalist.setdefault(split, []).append(item)
            ann.append(f"{uid},1,2,3,6.0")
            cases.append(f"{uid},1,solid")
            series.append(uid)
    (root / "datalist.json").write_text(json.dumps(datalist))
    for name, lines in (("annotations.csv", ann), ("cases.csv", cases), ("seriesuids.csv", series)):
        (root / name).write_text("\n".join(lines) + "\n")
    return root


def test_held_out_set_links_chosen_splits_and_filters_tables(tmp_path: Path) -> None:
    val = _dataset(tmp_path / "val", {"training": ["v0"], "validation": ["v1"], "test": ["v2"]})
    train = _dataset(tmp_path / "train", {"training": ["t0", "t1"], "validation": ["t2"], "test": ["t3"]})
    rc = main(["held-out-set", str(tmp_path / "out"), f"{val}:all", f"{train}:validation,test"])
    out = tmp_path / "out"
    assert rc == 0
    uids = [e["seriesuid"] for e in json.loads((out / "datalist.json").read_text())["test"]]
    assert uids == ["v0", "v1", "v2", "t2", "t3"]  # never the training split of the training data
    for uid in uids:
        for folder in ("images", "labels", "lungs"):
            link = out / folder / f"{uid}.nii.gz"
            assert link.is_symlink() and link.read_text().endswith(f"of {uid}")
    assert not (out / "images" / "t0.nii.gz").exists()
    rows = (out / "annotations.csv").read_text().splitlines()
    assert rows[0].startswith("seriesuid,") and [r.split(",")[0] for r in rows[1:]] == [
        "v0",
        "v1",
        "v2",
        "t2",
        "t3",
    ]
    assert (out / "seriesuids.csv").read_text().split() == ["v0", "v1", "v2", "t2", "t3"]
    assert len((out / "cases.csv").read_text().splitlines()) == 6
    # rerunning replaces the links instead of failing; a narrower selection drops the links it no longer holds
    assert main(["held-out-set", str(out), f"{val}:all", f"{train}:validation,test"]) == 0
    assert main(["held-out-set", str(out), f"{train}:test"]) == 0
    assert sorted(p.name for p in (out / "images").iterdir()) == ["t3.nii.gz"]
    assert (out / "seriesuids.csv").read_text().split() == ["t3"]


def test_held_out_set_refuses_unknown_splits_and_repeats(tmp_path: Path) -> None:
    val = _dataset(tmp_path / "val", {"test": ["v0"]})
    with pytest.raises(ValueError, match="unknown split"):
        held_out_set([(val, ("tests",))], tmp_path / "out")
    with pytest.raises(ValueError, match="more than once"):
        held_out_set([(val, ("test",)), (val, ("test",))], tmp_path / "out")
    with pytest.raises(ValueError, match="no datalist.json"):
        held_out_set([(tmp_path / "nowhere", ("test",))], tmp_path / "out")
