"""Slicer markups export: ``nodules.mrk.json`` satisfies the constraints of Slicer's markups JSON schema v1.0.3
(restated below for the properties we write; the schema itself lives in Slicer's repository,
``Modules/Loadable/Markups/Resources/Schema/markups-schema-v1.0.3.json``) and holds one LPS control point per
nodule, labelled with id, size, type and category."""

from __future__ import annotations

import json
import re
from pathlib import Path

import export_fixtures as fx
import jsonschema
import pytest

from pipelines.export.markups import markups_document, write_markups

_TRIPLE = {"type": "array", "items": {"type": "string"}, "minItems": 3, "maxItems": 3}
_NUMBERS = {"type": "array", "items": {"type": "number"}}
#: Slicer's markups-schema-v1.0.3.json, reduced to the properties lungscreen writes (draft-07 as the original).
SLICER_MARKUPS_V1_0_3 = {
    "$schema": "http://json-schema.org/draft-07/schema",
    "type": "object",
    "required": ["@schema", "markups"],
    "properties": {
        "@schema": {"type": "string"},
        "markups": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["type"],
                "properties": {
                    "type": {
                        "type": "string",
                        "enum": ["Fiducial", "Line", "Angle", "Curve", "ClosedCurve", "Plane", "ROI"],
                    },
                    "name": {"type": "string"},
                    "coordinateSystem": {"type": "string", "enum": ["LPS", "RAS"]},
                    "coordinateUnits": {"anyOf": [{"type": "string", "enum": ["mm", "um"]}, _TRIPLE]},
                    "locked": {"type": "boolean"},
                    "fixedNumberOfControlPoints": {"type": "boolean"},
                    "labelFormat": {"type": "string"},
                    "lastUsedControlPointNumber": {"type": "integer"},
                    "controlPoints": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {
                                "id": {"type": "string"},
                                "label": {"type": "string"},
                                "description": {"type": "string"},
                                "associatedNodeID": {"type": "string"},
                                "position": {**_NUMBERS, "minItems": 3, "maxItems": 3},
                                "orientation": {**_NUMBERS, "minItems": 9, "maxItems": 9},
                                "selected": {"type": "boolean"},
                                "locked": {"type": "boolean"},
                                "visibility": {"type": "boolean"},
                                "positionStatus": {
                                    "type": "string",
                                    "enum": ["undefined", "preview", "defined"],
                                },
                            },
                        },
                    },
                    "measurements": {"type": "array", "items": {"type": "object"}},
                },
            },
        },
    },
}
#: The schema URLs Slicer's JSON storage node accepts (vtkMRMLMarkupsJsonStorageNode, ACCEPTED_MARKUPS_SCHEMA_REGEX).
SLICER_ACCEPTED_SCHEMA = re.compile(r".*markups-schema-v1\.[0-9]+\.[0-9]+\.json#*$")


def test_reduced_schema_is_strict_enough() -> None:
    """The restated schema rejects what Slicer's would (so the check below can fail)."""
    validator = jsonschema.Draft7Validator(SLICER_MARKUPS_V1_0_3)
    bad = markups_document(fx.nodule_rows(), category="3")
    bad["markups"][0]["coordinateSystem"] = "IJK"
    bad["markups"][0]["controlPoints"][0]["position"] = [1.0, 2.0]
    assert len(list(validator.iter_errors(bad))) == 2


def test_written_file_validates_and_holds_each_nodule(tmp_path: Path) -> None:
    rows = fx.nodule_rows()
    path = write_markups(tmp_path / "case", rows, category="4A")
    assert path == tmp_path / "case" / "nodules.mrk.json"
    doc = json.loads(path.read_text(encoding="utf-8"))
    jsonschema.Draft7Validator(SLICER_MARKUPS_V1_0_3).validate(doc)
    assert SLICER_ACCEPTED_SCHEMA.match(doc["@schema"])
    (markup,) = doc["markups"]  # Slicer reads the first markup of a file only
    assert markup["type"] == "Fiducial" and markup["coordinateSystem"] == "LPS"
    assert markup["name"] == "lungscreen nodules (Lung-RADS 4A)"
    points = markup["controlPoints"]
    assert [p["id"] for p in points] == ["1", "2"]
    for point, row in zip(points, rows, strict=True):
        assert point["position"] == pytest.approx([float(row[f"center_lps_{a}_mm"]) for a in "xyz"])
        assert (
            point["label"] == f"N{row['nodule_id']} {float(row['mean_diameter_mm']):.1f} mm {row['type']} LR2"
        )
        assert f"volume {float(row['volume_mm3']):.1f} mm3" in point["description"]
        assert point["positionStatus"] == "defined"


def test_no_nodules_is_an_empty_point_list(tmp_path: Path) -> None:
    doc = json.loads(write_markups(tmp_path, [], category="1").read_text(encoding="utf-8"))
    jsonschema.Draft7Validator(SLICER_MARKUPS_V1_0_3).validate(doc)
    assert doc["markups"][0]["controlPoints"] == []


def test_row_without_centre_is_an_error() -> None:
    row = fx.nodule_rows()[0]
    row["center_lps_y_mm"] = ""
    with pytest.raises(ValueError, match="nodule 1 has no LPS centre"):
        markups_document([row], category="2")
