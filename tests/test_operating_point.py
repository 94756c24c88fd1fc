"""Offline re-scoring of a screened set: the shape term's weight and the reporting threshold swept."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipelines.evaluation.operating_point import (
    format_sweep,
    main,
    rescored_marks,
    reweighted,
    sweep,
    used_blobness_weight,
)
from pipelines.screening.scoring import shape_adjusted

CAND_HEADER = "candidate_id,probability,blobness,center_lps_x_mm,center_lps_y_mm,center_lps_z_mm,source"


def _screened(tmp_path: Path, weight: float = 4.0) -> tuple[Path, Path]:
    """Two scans: a nodule of 8 mm scored 0.90 with blobness 0.3 (a lumpy real nodule), one of 5 mm at 0.97,
    blobness 0.8, and a false mark at 0.93 with blobness 0.6; the run used ``weight``."""
    data, out = tmp_path / "data", tmp_path / "out"
    data.mkdir()
    (data / "seriesuids.csv").write_text("a\nb\n")
    (data / "annotations.csv").write_text(
        "seriesuid,coordX,coordY,coordZ,diameter_mm\na,0,0,0,8.0\nb,0,0,0,5.0\n"
    )
    for uid, rows in {
        "a": ["1,0.9,0.3,0.5,0,0,network", "2,0.2,0.9,40,0,0,second_look"],
        "b": ["1,0.97,0.8,0,0,1,network", "2,0.93,0.6,-60,0,0,network"],
    }.items():
        folder = out / "cases" / uid
        folder.mkdir(parents=True)
        (folder / "candidates.csv").write_text("\n".join([CAND_HEADER, *rows]) + "\n")
    (out / "run.json").write_text(json.dumps({"settings": {"blobness_weight": weight}}))
    return data, out


def test_reweighting_a_final_score_equals_screening_with_the_other_weight() -> None:
    rng = np.random.default_rng(0)
    network, blob = rng.uniform(0.01, 0.99, 50), rng.uniform(0, 1, 50)
    final4 = shape_adjusted(network, blob, 4.0)
    for w in (0.0, 2.0, 3.0, 6.0):
        expect = network if w == 0 else shape_adjusted(network, blob, w)
        got = [reweighted(f, b, w - 4.0) for f, b in zip(final4, blob)]
        np.testing.assert_allclose(got, expect, atol=1e-9)


def test_rescored_marks_keep_the_run_at_its_own_weight_and_move_with_another(tmp_path: Path) -> None:
    _, out = _screened(tmp_path)
    assert used_blobness_weight(out) == 4.0
    same = rescored_marks(out, blobness_weight=4.0)
    assert [(m.seriesuid, m.probability) for m in same] == [("a", 0.9), ("a", 0.2), ("b", 0.97), ("b", 0.93)]
    lower = rescored_marks(out, blobness_weight=2.0, scans={"a"})
    assert [m.seriesuid for m in lower] == ["a", "a"]
    assert lower[0].probability == pytest.approx(reweighted(0.9, 0.3, -2.0))
    assert lower[0].probability > 0.9  # a lumpy nodule gains when the shape term weighs less
    assert lower[1].probability < 0.2  # a ball-like second-look spot loses


def test_sweep_trades_the_lumpy_nodule_against_the_false_mark(tmp_path: Path) -> None:
    data, out = _screened(tmp_path)
    rows = sweep(data, out, blobness_weights=[4.0, 0.0], thresholds=[0.88, 0.95])
    by = {(r["blobness_weight"], r["threshold"]): r for r in rows}
    assert (by[4.0, 0.88]["sensitivity"], by[4.0, 0.88]["false_nodules_per_scan"]) == (1.0, 0.5)
    assert (by[4.0, 0.95]["sensitivity"], by[4.0, 0.95]["false_nodules_per_scan"]) == (0.5, 0.0)
    assert by[4.0, 0.95]["by_size"]["6-10 mm"] == {"n": 1, "found": 0}
    # without the shape term the lumpy 8 mm nodule (0.9 after a -0.8 logit step) is 0.952, the ball-like 5 mm
    # one (0.97 after +1.2) 0.907 and the false mark (0.93 after +0.4) 0.899
    assert by[0.0, 0.95]["by_size"]["6-10 mm"] == {"n": 1, "found": 1}
    assert by[0.0, 0.95]["by_size"]["4-6 mm"] == {"n": 1, "found": 0}
    assert (by[0.0, 0.88]["sensitivity"], by[0.0, 0.88]["false_nodules_per_scan"]) == (1.0, 0.5)
    assert by[0.0, 0.95]["false_nodules_per_scan"] == 0.0
    table = format_sweep(rows)
    assert table.count("\n") == 5 and "| 4 | 0.88 | 0.8571 | 1 | 1 | 0.5 |" in table
    # the false mark outranks the lumpy nodule at weight 4, not without the shape term
    assert by[4.0, 0.88]["cpm"] < by[0.0, 0.88]["cpm"] == 1.0


def test_a_run_without_its_settings_is_refused_naming_the_file(tmp_path: Path, capsys) -> None:
    data, out = _screened(tmp_path)
    (out / "run.json").unlink()
    with pytest.raises(ValueError, match="run.json"):
        rescored_marks(out, blobness_weight=3.0)
    assert main([str(data), str(out), "--thresholds", "0.9"]) == 2
    assert "run.json" in capsys.readouterr().err


def test_command_prints_the_table_and_writes_json(tmp_path: Path, capsys) -> None:
    data, out = _screened(tmp_path)
    target = tmp_path / "sweep.json"
    code = main(
        [str(data), str(out), "--blobness-weights", "3,4", "--thresholds", "0.88", "--json", str(target)]
    )
    assert code == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 4  # header, rule, two rows
    rows = json.loads(target.read_text())
    assert [r["blobness_weight"] for r in rows] == [3.0, 4.0]
    only_b = main([str(data), str(out), "--thresholds", "0.88", "--series-containing", "b"])
    assert only_b == 0 and "| 4 | 0.88 | 1 | 1 | 1 | 1 |" in capsys.readouterr().out


def test_second_look_rows_rank_in_the_froc_but_never_count_as_reported(tmp_path: Path) -> None:
    from dataclasses import replace

    from pipelines.evaluation.operating_point import threshold_summary

    data, out = _screened(tmp_path)
    with (out / "cases" / "a" / "candidates.csv").open("a") as f:  # two second-look rows scored above 0.95
        f.write("3,0.96,0.9,0,0.5,0,second_look\n4,0.955,0.9,-70,0,0,second_look\n")
    marks = rescored_marks(out, blobness_weight=4.0)
    s = threshold_summary(data, out, threshold=0.95, marks=marks)
    # reported at 0.95: only the 5 mm nodule (0.97); the 8 mm one's network row is 0.90, its second-look row 0.96
    assert s["sensitivity"] == 0.5 and s["false_nodules_per_scan"] == 0.0
    assert s["cpm"] == 1.0  # in the FROC the second-look row ranks the 8 mm nodule above every false mark
    everything = threshold_summary(
        data, out, threshold=0.95, marks=[replace(m, reportable=True) for m in marks]
    )
    assert everything["sensitivity"] == 1.0 and everything["false_nodules_per_scan"] == 0.5  # the old count
    row = {r["threshold"]: r for r in sweep(data, out, blobness_weights=[4.0], thresholds=[0.95])}[0.95]
    assert (row["sensitivity"], row["false_nodules_per_scan"]) == (0.5, 0.0)
