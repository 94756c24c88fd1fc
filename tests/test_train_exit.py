"""``lungscreen train`` exits non-zero when its own closing evaluation fails (``make train`` stops there)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pipelines.cli.main import main
from pipelines.screening.api import ScreenResult
from pipelines.training import train as train_mod


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """Two validation scans in a datalist (their content is never read: screening is faked)."""
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    items = []
    for uid in ("a", "b"):
        (root / "images" / f"{uid}.nii.gz").write_bytes(b"")
        items.append({"image": f"images/{uid}.nii.gz", "seriesuid": uid})
    (root / "datalist.json").write_text(json.dumps({"training": [], "validation": items}))
    return root


def _fake_run(monkeypatch: pytest.MonkeyPatch, *, failed: int) -> list[str]:
    """Training stages that do nothing, and a closing screen in which ``failed`` of the 2 scans fail."""
    import pipelines.evaluation.evaluate
    import pipelines.screening.api

    evaluated: list[str] = []
    monkeypatch.setattr(train_mod, "train_segmentation", lambda **kw: {"iterations": 0})

    def screen(inputs: list[str], out: Path, **kw: Any) -> ScreenResult:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "failures.csv").write_text("case_id,reason\n" + "x,MemoryError\n" * failed)
        return ScreenResult(Path(out), len(inputs) - failed, failed, 0, len(inputs))

    monkeypatch.setattr(pipelines.screening.api, "screen", screen)
    monkeypatch.setattr(
        pipelines.evaluation.evaluate,
        "evaluate",
        lambda **kw: evaluated.append(kw["predictions"]) or {"detection": {}},
    )
    return evaluated


def _train(dataset: Path, out: Path) -> int:
    return main(["train", "--dataset", str(dataset), "--out", str(out), "--stages", "segmentation"])


@pytest.mark.parametrize("failed", [1, 2])
def test_train_exits_non_zero_when_the_closing_evaluation_fails(
    dataset: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    failed: int,
) -> None:
    evaluated = _fake_run(monkeypatch, failed=failed)
    out = tmp_path / "run"
    assert _train(dataset, out) != 0
    err = capsys.readouterr().err
    assert f"closing evaluation: {failed} of 2 validation scans failed" in err
    assert str(out / "evaluation" / "screen" / "failures.csv") in err
    result = json.loads((out / "train_result.json").read_text())  # written before failing
    assert result["evaluation"]["failed"] == failed
    assert len(evaluated) == (failed < 2)  # metrics of the scans that did screen; none when none did


def test_train_exits_zero_when_every_validation_scan_is_screened(
    dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    evaluated = _fake_run(monkeypatch, failed=0)
    assert _train(dataset, tmp_path / "run") == 0 and len(evaluated) == 1


def test_train_api_raises_after_writing_its_result(
    dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_run(monkeypatch, failed=2)
    with pytest.raises(train_mod.EvaluationFailed, match="2 of 2"):
        train_mod.train(dataset=dataset, out=tmp_path / "run", stages=["segmentation"])
    assert (tmp_path / "run" / "train_result.json").is_file()
    monkeypatch.setenv("LUNGSCREEN_TRAIN_NO_EVAL", "1")  # no closing evaluation: nothing to fail
    assert "evaluation" not in train_mod.train(
        dataset=dataset, out=tmp_path / "run2", stages=["segmentation"]
    )
