"""No spreadsheet formula in our tables (issue 23, OWASP's CSV-injection rule): a text cell starting with ``=``,
``+``, ``-``, ``@``, a tab or a carriage return is written with a leading ``'``; numbers stay numbers. One
test per table we write."""

from __future__ import annotations

import csv
import io as _io
from pathlib import Path

import numpy as np
import pytest
from helpers import chest_image, lung_centre_zyx, patched_network, run_screen, write_case

from pipelines.batch import records
from pipelines.screening import outputs

HOSTILE = ["=HYPERLINK(1)", "+cmd|calc", "-2+3", "@SUM(1)", "\tx", "\rx"]


def _rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(_io.StringIO(text)))


def _safe(cell: str) -> bool:
    return not cell.startswith(("=", "+", "-", "@", "\t", "\r")) or _number(cell)


def _number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


@pytest.mark.parametrize("value", HOSTILE)
def test_csv_safe_neutralises_text(value: str) -> None:
    assert records.csv_safe(value) == "'" + value


@pytest.mark.parametrize(
    "value", [-512.3, -1, np.float32(-0.5), np.int64(-3), "-512.3", "+4", "-1e-05", "abc", ""]
)
def test_csv_safe_keeps_numbers_and_plain_text(value: object) -> None:
    assert records.csv_safe(value) is value


def test_nodules_csv() -> None:
    row = {c: -12.5 for c in outputs.NODULE_COLUMNS} | {"type": "=1+1", "lung_side": "@x", "lung_rads": "-4A"}
    (got,) = _rows(records.to_csv([row], outputs.NODULE_COLUMNS))
    assert got["type"] == "'=1+1" and got["lung_side"] == "'@x" and got["lung_rads"] == "'-4A"
    assert got["center_lps_x_mm"] == "-12.5" and float(got["volume_mm3"]) == -12.5  # numbers untouched


def test_candidates_csv() -> None:
    row = {c: -0.25 for c in outputs.CANDIDATE_COLUMNS} | {"source": "+network", "type": "\tsolid"}
    (got,) = _rows(records.to_csv([row], outputs.CANDIDATE_COLUMNS))
    assert got["source"] == "'+network" and got["type"] == "'\tsolid" and got["probability"] == "-0.25"


def test_segmentation_volumes_csv() -> None:
    from pipelines.segmentation.engine import VOLUME_COLUMNS

    row = {
        "label_value": 1,
        "label_name": "=cmd|' /C calc'!A0",
        "voxels": 3,
        "volume_mm3": -1.5,
        "volume_ml": 0.1,
    }
    (got,) = _rows(records.to_csv([row], VOLUME_COLUMNS))
    assert got["label_name"] == "'=cmd|' /C calc'!A0" and got["volume_mm3"] == "-1.5"


def test_run_tables_of_hostile_file_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """summary.csv, failures.csv and submission.csv of a run over files named like formulas."""
    inp, out = tmp_path / "in", tmp_path / "out"
    nodule = (
        lung_centre_zyx((24, 48, 56)),
        8.0,
        400,
    )  # a bright ball in the right lung: the threshold net fires
    for name in ("=HYPERLINK(1)", "+cmd|calc", "@SUM(1)"):
        write_case(chest_image(sphere=nodule), inp / f"{name}.nii.gz")
    (inp / "-bad.nii.gz").write_text("not an image")
    with patched_network(monkeypatch):
        res = run_screen(inp, out, weights="", logit_temperature=1.0, candidate_threshold=0.1)
    assert (res.succeeded, res.failed) == (3, 1)
    tables = {name: (out / name).read_text() for name in ("summary.csv", "failures.csv", "submission.csv")}
    for name, text in tables.items():
        for row in _rows(text):
            assert all(_safe(cell) for cell in row.values()), (name, row)
    summary = {r["case_id"]: r for r in _rows(tables["summary.csv"])}
    assert set(summary) == {"'=HYPERLINK(1)", "'+cmd|calc", "'@SUM(1)", "'-bad"}
    assert [r["case_id"] for r in _rows(tables["failures.csv"])] == ["'-bad"]
    submission = _rows(tables["submission.csv"])
    assert submission and {r["seriesuid"] for r in submission} <= {"'=HYPERLINK(1)", "'+cmd|calc", "'@SUM(1)"}
    assert all(_number(r["coordX"]) for r in submission)  # negative LPS coordinates stay numbers
    # the case folders keep their real names; only the table cells are neutralised
    assert (out / "cases" / "=HYPERLINK(1)" / "result.json").is_file()


def test_csv_rows_text_quotes_and_neutralises() -> None:
    from pipelines.imaging.filesys import csv_rows_text

    text = csv_rows_text([["=1+1", "a,b", -3.5, "-3.5"]], ["id", "name", "x", "y"])
    assert list(csv.reader(_io.StringIO(text))) == [
        ["id", "name", "x", "y"],
        ["'=1+1", "a,b", "-3.5", "-3.5"],
    ]


def test_dataset_tables_of_hostile_case_ids(tmp_path: Path) -> None:
    """annotations.csv, cases.csv and seriesuids.csv of a dataset whose case id came from a hostile host name."""
    from pipelines.phantom.write import write_tables

    ids = ["=HYPERLINK(1)", "plain"]
    nodule = {"nodule_id": 1, "center_lps_mm": [-10.0, 5.0, -20.0], "diameter_mm": 6.0, "type": "@solid"}
    nodule |= {"location": "-pleural", "solid_component_mm": 6.0, "mean_hu": -20.0}
    entries = {c: {"image": f"images/{c}.nii.gz", "label": f"labels/{c}.nii.gz"} for c in ids}
    write_tables(tmp_path, ids, {c: [dict(nodule)] for c in ids}, entries, seed=1, splits=(1.0, 0.0, 0.0))
    for name in ("annotations.csv", "cases.csv"):
        rows = _rows((tmp_path / name).read_text())
        assert rows and all(_safe(cell) for row in rows for cell in row.values()), name
    assert {r["seriesuid"] for r in _rows((tmp_path / "annotations.csv").read_text())} == {
        "'=HYPERLINK(1)",
        "plain",
    }
    assert (tmp_path / "seriesuids.csv").read_text().splitlines() == ["'=HYPERLINK(1)", "plain"]


def test_prepared_luna16_tables_of_a_hostile_seriesuid(tmp_path: Path) -> None:
    import SimpleITK as sitk

    from pipelines.evaluation.luna16 import prepare_luna16

    (tmp_path / "subset0").mkdir()
    img = sitk.GetImageFromArray(np.zeros((8, 16, 16), np.int16))
    sitk.WriteImage(img, str(tmp_path / "subset0" / "=cmd.mhd"))
    ann = tmp_path / "annotations.csv"
    ann.write_text("seriesuid,coordX,coordY,coordZ,diameter_mm\n=cmd,8,8,4,3.0\n")
    prepare_luna16(root=tmp_path, annotations=ann, out=tmp_path / "out", excluded=ann)
    for name in ("nodules.csv", "annotations_excluded.csv"):
        rows = _rows((tmp_path / "out" / name).read_text())
        assert [r["seriesuid"] for r in rows] == ["'=cmd"], name
        assert _number(rows[0]["coordX"])
