"""3D Slicer markups (``nodules.mrk.json``): one point list with a control point per nodule, LPS mm.

Follows Slicer's markups JSON schema v1.0.3 (``Modules/Loadable/Markups/Resources/Schema/`` in Slicer's
repository; the version Slicer writes and the newest published). One ``Fiducial`` markup (a point list) holds
all nodules because Slicer's JSON reader loads the first markup of a file only: a file of one ROI per nodule
would show one nodule. Each control point is placed at the nodule centre (``center_lps_*_mm`` of
``nodules.csv``; ``coordinateSystem`` ``LPS``, the frame of the scan and of our masks, so it lands on the scan
and on ``nodules.nii.gz`` loaded beside it), labelled ``N<id> <mean diameter> mm <type> LR<category>``, with the
long/short axis, volume, probability and place in its description. The point list is named after the case's
Lung-RADS category and locked (a reader's click does not move a finding).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pipelines.imaging.filesys import atomic_write_text

SCHEMA_URL = (
    "https://raw.githubusercontent.com/Slicer/Slicer/main/Modules/Loadable/Markups/Resources/Schema/"
    "markups-schema-v1.0.3.json#"
)
FILE_NAME = "nodules.mrk.json"


def _number(row: Mapping[str, Any], column: str) -> float | None:
    value = row.get(column)
    if value in (None, ""):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _fmt(value: float | None, unit: str, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f} {unit}"


def control_point(row: Mapping[str, Any]) -> dict[str, Any]:
    """The control point of one ``nodules.csv`` row (values as text or numbers)."""
    nodule_id = int(row["nodule_id"])
    position = [_number(row, f"center_lps_{axis}_mm") for axis in "xyz"]
    if any(v is None for v in position):
        raise ValueError(f"nodule {nodule_id} has no LPS centre (center_lps_x/y/z_mm)")
    mean = _number(row, "mean_diameter_mm")
    category = str(row.get("lung_rads") or "")
    label = f"N{nodule_id} {_fmt(mean, 'mm')} {row.get('type', '')}" + (f" LR{category}" if category else "")
    description = "; ".join(
        [
            f"nodule {nodule_id}",
            f"mean diameter {_fmt(mean, 'mm')}",
            f"long axis {_fmt(_number(row, 'long_axis_mm'), 'mm')}",
            f"short axis {_fmt(_number(row, 'short_axis_mm'), 'mm')}",
            f"volume {_fmt(_number(row, 'volume_mm3'), 'mm3')}",
            f"type {row.get('type', '')}",
            f"Lung-RADS {category or 'n/a'}",
            f"probability {_fmt(_number(row, 'probability'), '', 3).strip()}",
            f"{row.get('lung_side', '')} lung {row.get('lung_zone', '')}".strip(),
        ]
    )
    return {
        "id": str(nodule_id),
        "label": label,
        "description": description,
        "associatedNodeID": "",
        "position": [float(v) for v in position if v is not None],
        "orientation": [-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0],  # what Slicer writes for LPS
        "selected": True,
        "locked": True,
        "visibility": True,
        "positionStatus": "defined",
    }


def markups_document(nodule_rows: Sequence[Mapping[str, Any]], *, category: str) -> dict[str, Any]:
    """The markups JSON document (a dict) of a case's nodules; ``category`` is the case's Lung-RADS category."""
    points = [control_point(row) for row in nodule_rows]
    return {
        "@schema": SCHEMA_URL,
        "markups": [
            {
                "type": "Fiducial",
                "name": f"lungscreen nodules (Lung-RADS {category})",
                "coordinateSystem": "LPS",
                "coordinateUnits": "mm",
                "locked": True,
                "fixedNumberOfControlPoints": False,
                "labelFormat": "N%d",
                "lastUsedControlPointNumber": len(points),
                "controlPoints": points,
                "measurements": [],
            }
        ],
    }


def write_markups(
    case_dir: str | os.PathLike[str], nodule_rows: Sequence[Mapping[str, Any]], *, category: str
) -> Path:
    """Write ``<case_dir>/nodules.mrk.json`` atomically (also for a case without nodules: an empty point list).

    Args:
        case_dir: the case's output folder.
        nodule_rows: rows of ``nodules.csv`` / ``nodules.json`` (``center_lps_*_mm`` in LPS world mm).
        category: the case's Lung-RADS v2022 category.

    Returns:
        The path written.
    """
    text = json.dumps(markups_document(nodule_rows, category=category), indent=2) + "\n"
    return atomic_write_text(Path(case_dir) / FILE_NAME, text)
