"""The bundle's metadata.json agrees with the model card and the inference config it describes."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
META = json.loads((ROOT / "monai_bundle" / "configs" / "metadata.json").read_text())
CARD = (ROOT / "monai_bundle" / "docs" / "README.md").read_text()
INFERENCE = json.loads((ROOT / "monai_bundle" / "configs" / "inference.json").read_text())


def _headline_row(label: str) -> list[float]:
    """Bold figures of the first row of the model card's Performance tables that starts with ``label``."""
    performance = CARD[CARD.index("## Performance") :]
    row = next(ln for ln in performance.splitlines() if ln.startswith(f"| {label}"))
    return [float(x) for x in re.findall(r"\*\*([0-9.]+)", row.split("|")[2].replace(" / ", "** **"))]


def test_metadata_metrics_are_the_model_cards_headline_figures() -> None:
    metrics = META["eval_metrics"]
    assert _headline_row("CPM") == [metrics["cpm"]]
    assert _headline_row("sensitivity at 4 FP/scan") == [metrics["sensitivity_at_4fp_ge6mm"]]
    assert _headline_row("nodule Dice") == [metrics["nodule_dice_detected_ge6mm"]]
    assert _headline_row("lung Dice") == [metrics["lung_dice_right"], metrics["lung_dice_left"]]


def test_metadata_version_is_the_newest_changelog_entry() -> None:
    newest = max(META["changelog"], key=lambda v: tuple(int(x) for x in v.split(".")))
    assert META["version"] == newest


def test_metadata_window_is_the_inference_window() -> None:
    roi = INFERENCE["settings"]["roi_size"]
    for part in ("inputs", "outputs"):
        for spec in META["network_data_format"][part].values():
            assert spec["spatial_shape"] == roi, (part, spec["spatial_shape"], roi)
