"""The segmentation engine follows the screening engine's run-state rules (pipelines.batch.runstate): input-bound
resume, rows of removed cases dropped, leftovers of a killed run cleared, tracebacks in ``failures.log``, OUT
checked first, an empty input or a run where nothing succeeded ends with an error."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
from mri_phantoms import TINY, make_mri_phantoms

from pipelines.batch import runstate
from pipelines.segmentation.engine import segment
from pipelines.segmentation.train import train_segmentation


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("segstate")
    data = make_mri_phantoms(root / "train", n=2, seed=20)
    return train_segmentation(
        images=data / "images", labels=data / "labels", modality="mri", out=root / "model",
        iterations=2, seed=0, device="cpu", planning=TINY,
    )  # fmt: skip


def _rows(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="") as fh:
        return {r["case_id"]: r for r in csv.DictReader(fh)}


def test_segment_resumes_by_input_and_recovers_like_screening(model: Path, tmp_path: Path) -> None:
    inputs = make_mri_phantoms(tmp_path / "new", n=2, seed=21, with_labels=False) / "images"
    (inputs / "broken.nii.gz").write_bytes(b"not an image")
    out = tmp_path / "out"
    assert segment(model, inputs, out, device="cpu", progress=False).succeeded == 2
    summary = _rows(out / "summary.csv")
    assert summary["case000"]["input"] == str(inputs / "case000_0000.nii.gz")
    assert "Traceback" in (out / "failures.log").read_text()
    # a killed run's leftovers; then case001's file is replaced by another scan and case000 is removed
    failed = out / ".state" / "failed"
    (failed / ".tmp-broken.json-k1ll3d00.json").write_text((failed / "broken.json").read_text())
    (failed / "case001.json").write_text("")
    shutil.copy(inputs / "case000_0000.nii.gz", inputs / "case001_0000.nii.gz")
    (inputs / "case000_0000.nii.gz").unlink()
    again = segment(model, inputs, out, device="cpu", progress=False)
    assert again.counts() == {"succeeded": 1, "failed": 1, "skipped": 0, "total": 2}  # case001 done again
    assert sorted(_rows(out / "summary.csv")) == ["broken", "case001"]
    assert list(_rows(out / "failures.csv")) == ["broken"]
    assert not list(out.rglob(".tmp-*"))


def test_segment_checks_out_first_and_ends_non_zero_when_nothing_to_do(model: Path, tmp_path: Path) -> None:
    inputs = make_mri_phantoms(tmp_path / "new", n=1, seed=22, with_labels=False) / "images"
    (tmp_path / "file").write_text("x")
    with pytest.raises(runstate.OutputDirError, match="is an existing file, not a folder"):
        segment(model, inputs, tmp_path / "file", device="cpu", progress=False)
    (tmp_path / "empty").mkdir()
    empty = segment(model, tmp_path / "empty", tmp_path / "o1", device="cpu", progress=False)
    assert (empty.total, empty.exit_code) == (0, 2)  # no scan found: the same result type as screen()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.nii.gz").write_text("not an image")
    bad = segment(model, tmp_path / "bad", tmp_path / "o2", device="cpu", progress=False)
    assert bad.counts() == {"succeeded": 0, "failed": 1, "skipped": 0, "total": 1} and bad.exit_code == 2
    assert list(_rows(tmp_path / "o2" / "failures.csv")) == ["x"]
