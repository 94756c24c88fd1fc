"""Case report and run index: content, numbers, orientation of the figures, privacy, atomic files, and a
headless Chromium rendering check."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines.nodules.lungrads import assign_categories
from pipelines.report.html import format_value, write_case_report, write_index
from pipelines.report.images import (
    CONTOUR_COLOR,
    DPI,
    MARKER_COLORS,
    MARKER_FONT_PT,
    mip_figure_png,
    orthogonal_views,
    padded_box,
)

ROOT = Path(__file__).resolve().parents[1]
SPACING_ZYX = (2.0, 0.8, 0.8)  # anisotropic on purpose


# ---------------------------------------------------------------------------------------------- fixtures
def _ball(shape, center_zyx, radius_mm, spacing_zyx) -> np.ndarray:
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    dist2 = sum(((g - c) * s) ** 2 for g, c, s in zip(grids, center_zyx, spacing_zyx))
    return dist2 <= radius_mm**2


def make_phantom(shape=(40, 96, 120), spacing_zyx=SPACING_ZYX, seed=0):
    """A chest-like phantom: soft-tissue body, two air-filled lungs, vessels, and two nodules.

    Nodule 1 (solid, ~9 mm) sits in the patient-right lung (small x), nodule 2 (ground-glass, ~12 mm) in
    the left lung (large x), higher up (larger z).
    """
    rng = np.random.default_rng(seed)
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    hu = np.full(shape, -1000.0, np.float32)
    body = ((y - shape[1] / 2) / (shape[1] * 0.46)) ** 2 + ((x - shape[2] / 2) / (shape[2] * 0.47)) ** 2 <= 1
    hu[np.broadcast_to(body, shape)] = 40.0
    lung = np.zeros(shape, np.uint8)
    for label, cx in ((1, shape[2] * 0.30), (2, shape[2] * 0.70)):
        inside = ((y - shape[1] / 2) / (shape[1] * 0.33)) ** 2 + ((x - cx) / (shape[2] * 0.16)) ** 2 <= 1
        inside = np.broadcast_to(inside & (z >= 2) & (z < shape[0] - 2), shape)
        lung[inside] = label
    hu[lung > 0] = -860.0
    vessel = np.broadcast_to(((y - shape[1] * 0.55) ** 2 + (x - shape[2] * 0.62) ** 2) <= 2, shape) & (
        lung > 0
    )
    hu[vessel] = 30.0
    hu += rng.normal(0, 12, shape).astype(np.float32)
    centers = [(16, 44, 34), (26, 52, 86)]
    nodule_mask = np.zeros(shape, np.uint16)
    nodule_mask[_ball(shape, centers[0], 4.5, spacing_zyx)] = 1
    nodule_mask[_ball(shape, centers[1], 6.0, spacing_zyx)] = 2
    hu[nodule_mask == 1] = 45.0
    hu[nodule_mask == 2] = -520.0
    prob = np.zeros(shape, np.float32)
    for label, center in zip((1, 2), centers):
        near = _ball(shape, center, 9.0, spacing_zyx)
        prob[near] = np.maximum(prob[near], 0.4)
        prob[nodule_mask == label] = 0.95 if label == 1 else 0.7
    nodules = [
        _nodule(1, "solid", 9.04, centers[0], 383.5, 0.953, 44.6, 98.0, "right", spacing_zyx),
        _nodule(2, "ground-glass", 12.06, centers[1], 905.2, 0.712, -517.4, -420.0, "left", spacing_zyx),
    ]
    return hu.astype(np.int16), lung, nodule_mask, prob, nodules


def _nodule(nid, ntype, diameter, center, volume, prob, mean_hu, max_hu, side, spacing_zyx) -> dict:
    lps = [c * s for c, s in zip(center[::-1], spacing_zyx[::-1])]
    return {
        "nodule_id": nid,
        "type": ntype,
        "diameter_mm": diameter - 0.3,
        "equivalent_diameter_mm": diameter - 0.3,
        "mean_diameter_mm": round(diameter, 1),
        "long_axis_mm": round(diameter + 1.2, 1),
        "short_axis_mm": round(diameter - 0.8, 1),
        "solid_component_mm": diameter if ntype == "solid" else None,
        "probability": prob,
        "volume_mm3": volume,
        "center_lps_x_mm": lps[0],
        "center_lps_y_mm": lps[1],
        "center_lps_z_mm": lps[2],
        "center_ras_x_mm": -lps[0],
        "center_ras_y_mm": -lps[1],
        "center_ras_z_mm": lps[2],
        "voxel_i": center[2],
        "voxel_j": center[1],
        "voxel_k": center[0],
        "canonical_index_zyx": list(center),
        "mean_hu": mean_hu,
        "max_hu": max_hu,
        "lung_side": side,
        "lung_zone": "middle",
    }


@pytest.fixture(scope="module")
def phantom():
    return make_phantom()


def _write(tmp_path: Path, phantom, **overrides) -> Path:
    """The report of ``phantom``; its nodules (copies) are categorised as the case writer does, unless a
    ``category`` is given."""
    hu, lung, mask, prob, nodules = phantom
    nodules = [dict(n) for n in overrides.pop("nodules", nodules)]
    category = overrides.pop("category", None) or assign_categories(nodules)
    kwargs = {
        "case_id": "case_001",
        "out_dir": tmp_path / "case_001",
        "hu_zyx": hu,
        "spacing_zyx": SPACING_ZYX,
        "nodules": nodules,
        "nodule_mask_zyx": mask,
        "probability_zyx": prob,
        "lung_mask_zyx": lung,
        "category": category,
        "extra": {"spacing_zyx_mm": SPACING_ZYX, "lung_volume_ml": 4321.25, "bundle_version": "0.1.0"},
    }
    kwargs.update(overrides)
    return write_case_report(**kwargs)


class _TableParser(HTMLParser):
    """Collects ``<td data-key=...>`` texts per row of the table with id ``nodules``, and img/link URLs."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict[str, str]] = []
        self.urls: list[str] = []
        self._in_table = False
        self._in_body = False
        self._key: str | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag in ("img", "script", "link") and (a.get("src") or a.get("href")):
            self.urls.append(a.get("src") or a.get("href"))
        if tag == "a" and a.get("href"):
            self.urls.append(a["href"])
        if tag == "table" and a.get("id") == "nodules":
            self._in_table = True
        elif self._in_table and tag == "tbody":
            self._in_body = True
        elif self._in_table and self._in_body and tag == "tr":
            self.rows.append({})
        elif self._in_table and tag == "td" and a.get("data-key"):
            self._key = a["data-key"]
            self.rows[-1][self._key] = ""

    def handle_endtag(self, tag):
        if tag == "table":
            self._in_table = self._in_body = False
        if tag == "td":
            self._key = None

    def handle_data(self, data):
        if self._key is not None:
            self.rows[-1][self._key] += data


def _parse(path: Path) -> _TableParser:
    parser = _TableParser()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


# ------------------------------------------------------------------------------------------- case report
def test_report_is_complete_and_self_contained(tmp_path, phantom):
    report = _write(tmp_path, phantom)
    assert report == tmp_path / "case_001" / "report.html"
    text = report.read_text(encoding="utf-8")
    parsed = _parse(report)
    images = [u for u in parsed.urls if u.endswith(".png")]
    assert sorted(images) == [
        "report_files/mip_coronal.png",
        "report_files/nodule_001.png",
        "report_files/nodule_002.png",
    ]
    for url in parsed.urls:
        assert not re.match(r"^[a-z]+://|^//", url), f"external resource {url}"
        assert (report.parent / url).is_file()
    assert "Lung-RADS 4A" in text  # the 9.0 mm solid nodule decides
    assert "not a medical device" in text
    assert "prior-dependent rules (growth, new, stable) are not applied without a prior" in text
    assert "v2022" in text
    leftovers = [p.name for p in (tmp_path / "case_001").rglob("*") if p.name.startswith(".tmp-")]
    assert leftovers == []


def test_compact_table_shows_what_a_reader_needs_and_equals_the_nodule_dicts(tmp_path, phantom):
    nodules = phantom[4]
    report = _write(tmp_path, phantom)
    parsed = _parse(report)
    assert len(parsed.rows) == len(nodules)
    for row, nodule in zip(parsed.rows, nodules):
        assert set(row) == {
            "nodule_id",
            "location",
            "type",
            "axes",
            "mean_diameter_mm",
            "volume_mm3",
            "lung_rads",
            "probability",
        }
        assert row["nodule_id"] == str(nodule["nodule_id"]) and row["type"] == nodule["type"]
        assert row["mean_diameter_mm"] == f"{nodule['mean_diameter_mm']:.1f}"
        assert row["axes"] == f"{nodule['long_axis_mm']:.1f} × {nodule['short_axis_mm']:.1f}"
        assert (
            row["volume_mm3"] == f"{nodule['volume_mm3']:.0f}"
            and row["probability"] == f"{nodule['probability']:.2f}"
        )
        lps = ", ".join(f"{nodule[f'center_lps_{a}_mm']:.1f}" for a in "xyz")
        assert row["location"] == f"{nodule['lung_side']} lung, middle zone({lps})"
    assert [r["lung_rads"] for r in parsed.rows] == ["4A", "2"]
    text = report.read_text(encoding="utf-8")
    assert "Score" in text and "not a calibrated probability" in text and "p = " not in text
    assert (
        "Probability" not in text and "Mean density" not in text and "Voxel i" not in text
    )  # internals: CSV only
    assert "mean diameter: mean of the long axis and the perpendicular short axis" in text


def test_incomplete_scan_shows_category_0_for_every_nodule_and_no_green(tmp_path, phantom):
    nodules = [dict(n) for n in phantom[4]]
    category = assign_categories(nodules, incomplete_reason="slices 4 mm thick")
    report = _write(tmp_path, phantom, nodules=nodules, category=category)
    parsed = _parse(report)
    assert [r["lung_rads"] for r in parsed.rows] == ["04A by size", "02 by size"]
    text = report.read_text(encoding="utf-8")
    assert "Lung-RADS 0" in text and "incomplete: slices 4 mm thick" in text
    mip = report.parent / "report_files" / "mip_coronal.png"
    assert (
        len(_colour_pixels(mip, MARKER_COLORS["2"])) == 0
        and len(_colour_pixels(mip, MARKER_COLORS["4A"])) == 0
    )


def test_mip_numbers_are_large_and_outlined(phantom):
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import TextPath

    digit = TextPath((0, 0), "8", size=MARKER_FONT_PT, prop=FontProperties(weight="bold"))
    assert digit.get_extents().height * DPI / 72.0 >= 14.0  # pixels of the PNG
    hu, lung, mask, _, _ = phantom
    png, _ = mip_figure_png(
        hu_zyx=hu,
        spacing_zyx=SPACING_ZYX,
        lung_mask_zyx=lung,
        nodule_mask_zyx=mask,
        markers=[{"number": 7, "center_zyx": (16, 44, 34), "radius_mm": 6.0, "category": "3"}],
    )
    image = np.asarray(Image.open(__import__("io").BytesIO(png)).convert("RGB")).astype(int)
    target = np.array([int(MARKER_COLORS["3"][i : i + 2], 16) for i in (1, 3, 5)])
    rows = np.flatnonzero((np.abs(image - target).sum(axis=-1) < 40).any(axis=1))
    assert rows.size and rows.max() - rows.min() >= 14  # circle and number together span it at least


def test_format_value_precision():
    assert format_value("diameter_mm", 5.96) == "6.0"
    assert format_value("volume_mm3", 905.6) == "906"
    assert format_value("probability", 0.953) == "0.95"
    assert format_value("mean_hu", -517.4) == "-517"
    assert format_value("voxel_i", 34) == "34"
    assert format_value("solid_component_mm", None) == "–"
    assert format_value("type", "part-solid") == "part-solid"


def _colour_pixels(png: Path, rgb_hex: str, tol: int = 40) -> np.ndarray:
    rgb = np.asarray(Image.open(png).convert("RGB")).astype(int)
    target = np.array([int(rgb_hex[i : i + 2], 16) for i in (1, 3, 5)])
    return np.argwhere(np.abs(rgb - target).sum(axis=-1) < tol)


def test_nodule_figure_shows_contour_and_heat_map(tmp_path, phantom):
    report = _write(tmp_path, phantom)
    png = report.parent / "report_files" / "nodule_001.png"
    image = np.asarray(Image.open(png).convert("RGB")).astype(int)
    assert image.shape[1] >= 1200 and image.std() > 30
    assert len(_colour_pixels(png, CONTOUR_COLOR)) > 100  # mask contours drawn
    saturated = (image.max(axis=-1) - image.min(axis=-1)) > 80  # colourful pixels: heat map and bar
    assert saturated.mean() > 0.005
    no_prob = _write(tmp_path / "noprob", phantom, probability_zyx=None)
    image2 = np.asarray(Image.open(no_prob.parent / "report_files" / "nodule_001.png").convert("RGB")).astype(
        int
    )
    assert ((image2.max(axis=-1) - image2.min(axis=-1)) > 80).mean() < saturated.mean() / 2


def test_mip_marks_right_lung_nodule_on_image_left(tmp_path, phantom):
    report = _write(tmp_path, phantom)
    png = report.parent / "report_files" / "mip_coronal.png"
    width = Image.open(png).size[0]
    red = _colour_pixels(png, MARKER_COLORS["4A"])  # nodule 1: right lung, 4A
    green = _colour_pixels(png, MARKER_COLORS["2"])  # nodule 2: left lung, higher, category 2
    assert len(red) > 30 and len(green) > 30
    assert red[:, 1].mean() < width / 2 < green[:, 1].mean()  # patient right on the image left
    assert green[:, 0].mean() < red[:, 0].mean()  # nodule 2 is more superior: nearer the top


def test_orthogonal_views_follow_radiological_convention():
    shape = (5, 7, 9)
    z, y, x = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    for volume, check in ((z, "z"), (y, "y"), (x, "x")):
        views = {v.name: (v, img) for v, img in orthogonal_views(volume, (3.0, 1.0, 0.5))}
        axial, coronal, sagittal = views["axial"][1], views["coronal"][1], views["sagittal"][1]
        if check == "x":  # patient right (small x) on the image left in axial and coronal
            assert axial[0, 0] < axial[0, -1] and coronal[0, 0] < coronal[0, -1]
        if check == "y":  # anterior (small y) at the top in axial and on the left in sagittal
            assert axial[0, 0] < axial[-1, 0] and sagittal[0, 0] < sagittal[0, -1]
        if check == "z":  # superior (large z) at the top in coronal and sagittal
            assert coronal[0, 0] > coronal[-1, 0] and sagittal[0, 0] > sagittal[-1, 0]
    assert views["coronal"][0].rows_mm == 3.0 and views["coronal"][0].cols_mm == 0.5
    assert views["sagittal"][0].edges == ("S", "I", "A", "P")


def test_padded_box_fills_outside_the_volume():
    volume = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    box = padded_box(volume, (0, 0, 0), (1, 2, 2), fill=-1024)
    assert box.shape == (3, 5, 5)
    assert box[1, 2, 2] == volume[0, 0, 0]
    assert box[0].max() == -1024 and box[:, :2].max() == -1024
    assert (box[1:, 2:, 2:] == volume[:2, :3, :3]).all()
    assert (padded_box(volume, (50, 50, 50), (1, 1, 1), fill=7) == 7).all()


def test_identifying_extra_fields_and_markup_are_not_shown(tmp_path, phantom):
    extra = {
        "PatientName": "DOE^JANE",
        "patient_birth_date": "19500101",
        "AccessionNumber": "A123",
        "slice_count": 40,
        "warnings": ["spacing 5 mm", "MRI-like"],
    }
    report = _write(tmp_path, phantom, case_id="<b>scan&1</b>", extra=extra)
    text = report.read_text(encoding="utf-8")
    for secret in ("DOE", "JANE", "19500101", "A123"):
        assert secret not in text
    assert "3 identifying field(s) withheld" in text
    assert "slice_count" in text and "spacing 5 mm; MRI-like" in text
    assert "<b>scan" not in text and "&lt;b&gt;scan&amp;1&lt;/b&gt;" in text


def test_rerun_replaces_figures_and_empty_scan_is_normal(tmp_path, phantom):
    hu, lung, _, _, _ = phantom
    _write(tmp_path, phantom)
    empty = np.zeros_like(phantom[2])
    report = _write(
        tmp_path,
        phantom,
        nodules=[],
        nodule_mask_zyx=empty,
        probability_zyx=None,
        category=assign_categories([]),
    )
    files = sorted(p.name for p in (report.parent / "report_files").iterdir())
    assert files == ["mip_coronal.png"]  # the two old nodule figures are gone
    text = report.read_text(encoding="utf-8")
    assert "No nodules were found" in text and "Lung-RADS 1" in text


def test_many_nodules_cap_figures_but_not_the_table(tmp_path, phantom):
    report = _write(tmp_path, phantom, max_nodule_figures=1)
    parsed = _parse(report)
    assert len(parsed.rows) == 2
    assert sorted(u for u in parsed.urls if "nodule_" in u) == ["report_files/nodule_001.png"]
    assert "1 more nodule(s)" in report.read_text()


def test_report_reads_the_assigned_categories_and_never_assigns_them(tmp_path, phantom):
    nodules = [dict(n, lung_rads=c) for n, c in zip(phantom[4], ("4B", "3"))]
    category = {
        "category": "4B",
        "descriptor": "Very suspicious",
        "management": "m",
        "reason": "r",
        "note": "n",
    }
    parsed = _parse(_write(tmp_path, phantom, nodules=nodules, category=category))
    assert [r["lung_rads"] for r in parsed.rows] == ["4B", "3"]
    unassigned = [{k: v for k, v in n.items() if k != "lung_rads"} for n in phantom[4]]
    parsed = _parse(_write(tmp_path / "none", phantom, nodules=unassigned, category=category))
    assert [r["lung_rads"] for r in parsed.rows] == ["–", "–"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"probability_zyx": np.zeros((2, 2, 2), np.float32)}, "probability_zyx has shape"),
        ({"spacing_zyx": (1.0, 0.0, 1.0)}, "strictly positive"),
        ({"hu_zyx": np.zeros((4, 4), np.int16)}, "3D"),
    ],
)
def test_bad_inputs_raise_clear_errors(tmp_path, phantom, override, message):
    with pytest.raises(ValueError, match=message):
        _write(tmp_path, phantom, **override)


# ---------------------------------------------------------------------------------------------- run index
def _index_rows(run_dir: Path) -> list[dict]:
    (run_dir / "b").mkdir(parents=True)
    (run_dir / "b" / "report.html").write_text("<html></html>")
    return [
        {
            "case_id": "a",
            "status": "failed",
            "category": None,
            "nodule_count": None,
            "largest_nodule_mm": None,
            "reason": "truncated gzip",
        },
        {"case_id": "b", "status": "ok", "category": "4B", "nodule_count": 3, "largest_nodule_mm": 16.04},
        {
            "case_id": "c",
            "status": "ok",
            "category": {"category": "2"},
            "nodule_count": 1,
            "largest_nodule_mm": 4.0,
        },
        {
            "case_id": "d",
            "status": "ok",
            "lung_rads": "1",
            "nodule_count": 0,
            "largest_nodule_mm": 0.0,
            "warnings": "MRI-like",
        },
    ]


def test_index_lists_cases_with_relative_links(tmp_path):
    run_dir = tmp_path / "run"
    index = write_index(run_dir=run_dir, rows=_index_rows(run_dir))
    text = index.read_text(encoding="utf-8")
    assert index == run_dir / "index.html"
    assert text.count("<tr>") + text.count('<tr class="failed">') == 1 + 4
    assert '<a href="b/report.html">' in text and text.count("<a href=") == 1  # missing reports: no link
    assert "truncated gzip" in text and "16.0" in text and "MRI-like" in text
    assert 'data-v="5"' in text and 'data-v="2"' in text and 'data-v="-1"' in text  # severity ranks
    assert "4 case(s): 1 failed, 3 ok. Lung-RADS 1: 1, 2: 1, 4B: 1" in text
    assert not re.search(r"""(src|href)=["'](https?:)?//""", text)


# ----------------------------------------------------------------- demo on a real CT (README screenshot)
def _implant(hu, mask, label, center, radii_mm, spacing_zyx, value, rng):
    grids = np.ogrid[tuple(slice(0, n) for n in hu.shape)]
    r = np.sqrt(sum(((g - c) * s / rad) ** 2 for g, c, s, rad in zip(grids, center, spacing_zyx, radii_mm)))
    wobble = 1.0 + 0.08 * np.sin(3.0 * np.arctan2(grids[1] - center[1], grids[2] - center[2]))
    inside = r <= wobble
    hu[inside] = np.maximum(hu[inside], value + rng.normal(0, 25, int(inside.sum())))
    mask[inside & (mask == 0)] = label
    return inside


def write_demo_report(ct_path: Path, out_dir: Path) -> Path:
    """Report for a real public chest CT with three synthetic nodules implanted (for the README)."""
    import SimpleITK as sitk
    from scipy import ndimage

    image = sitk.DICOMOrient(sitk.ReadImage(str(ct_path)), "LPS")
    hu = sitk.GetArrayFromImage(image).astype(np.float32)
    spacing = tuple(float(s) for s in image.GetSpacing()[::-1])
    rng = np.random.default_rng(7)
    air = ndimage.binary_opening(hu < -500, iterations=2)
    comps, n = ndimage.label(air)
    sizes = ndimage.sum(air, comps, range(1, n + 1))
    lungs = np.isin(comps, 1 + np.argsort(sizes)[-2:])
    lungs = np.stack([ndimage.binary_fill_holes(ndimage.binary_closing(s, iterations=3)) for s in lungs])
    lung = np.where(lungs, np.where(np.arange(hu.shape[2]) < hu.shape[2] // 2, 1, 2), 0).astype(np.uint8)
    depth = ndimage.distance_transform_edt(np.pad(lung > 0, 1), sampling=spacing)[1:-1, 1:-1, 1:-1]
    mask = np.zeros(hu.shape, np.uint16)
    plans = [  # (side, z fraction, radii mm zyx, HU, solid core radius mm)
        (1, 0.6, (4.6, 5.2, 4.4), 35.0, None),
        (2, 0.45, (6.8, 7.6, 6.4), -560.0, 3.4),
        (2, 0.8, (2.2, 2.4, 2.1), 20.0, None),
    ]
    nodules = []
    for label, (side, zf, radii, value, core) in enumerate(plans, start=1):
        z = int(zf * hu.shape[0])
        slab = np.where(lung[z] == side, depth[z], 0)
        y, x = np.unravel_index(int(np.argmax(slab)), slab.shape)
        center = (z, int(y), int(x))
        inside = _implant(hu, mask, label, center, radii, spacing, value, rng)
        if core is not None:
            _implant(hu, mask, label, center, (core, core * 1.1, core), spacing, 30.0, rng)
        nodules.append(measure_nodules(image, hu, inside, label, center, spacing, core, side))
    prob = ndimage.gaussian_filter((mask > 0).astype(np.float32), sigma=1.5) * 1.6
    prob = np.clip(prob + 0.15 * ndimage.gaussian_filter(rng.random(hu.shape).astype(np.float32), 3), 0, 0.98)
    extra = {
        "input": "real public chest CT (TotalSegmentator test data, Apache-2.0); the nodules are synthetic",
        "shape_zyx": hu.shape,
        "spacing_zyx_mm": spacing,
        "lung_volume_ml": float((lung > 0).sum() * np.prod(spacing) / 1000.0),
        "device": "cpu",
        "inference_s": 41.3,
        "bundle": "lung_nodule_ct_screening 0.1.0",
    }
    return write_case_report(
        case_id="totalseg_chest_ct_crop_1p5mm",
        out_dir=out_dir,
        hu_zyx=hu.astype(np.int16),
        spacing_zyx=spacing,
        nodules=nodules,
        nodule_mask_zyx=mask,
        probability_zyx=prob,
        lung_mask_zyx=lung,
        category=assign_categories(nodules),
        extra=extra,
    )


def measure_nodules(image, hu, inside, label, center, spacing, core, side) -> dict:
    volume = float(inside.sum() * np.prod(spacing))
    diameter = (6.0 * volume / np.pi) ** (1 / 3)
    idx = [int(v) for v in center[::-1]]
    lps = image.TransformIndexToPhysicalPoint(idx)
    return {
        "nodule_id": label,
        "type": "part-solid" if core is not None else "solid",
        "equivalent_diameter_mm": round(diameter, 1),
        "mean_diameter_mm": round(diameter * 1.01, 1),
        "long_axis_mm": round(diameter * 1.12, 1),
        "short_axis_mm": round(diameter * 0.9, 1),
        "solid_component_mm": round(2 * core * 1.03, 1) if core is not None else round(diameter, 1),
        "probability": round(0.97 - 0.08 * label, 2),
        "volume_mm3": round(volume),
        "center_lps_x_mm": lps[0],
        "center_lps_y_mm": lps[1],
        "center_lps_z_mm": lps[2],
        "center_ras_x_mm": -lps[0],
        "center_ras_y_mm": -lps[1],
        "center_ras_z_mm": lps[2],
        "voxel_i": idx[0],
        "voxel_j": idx[1],
        "voxel_k": idx[2],
        "canonical_index_zyx": list(center),
        "mean_hu": float(hu[inside].mean()),
        "max_hu": float(hu[inside].max()),
        "lung_side": "right" if side == 1 else "left",
    }


# ------------------------------------------------------------------------------------- headless Chromium
def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("chromium is not installed")


def _chromium_args(tmp_path: Path) -> list[str]:
    return [
        _chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'chrome-profile'}",
    ]


def screenshot(page: Path, png: Path, tmp_path: Path, *, window: str = "1280,2000") -> np.ndarray:
    """Render ``page`` in headless Chromium and return the screenshot as an RGB array."""
    args = [
        *_chromium_args(tmp_path),
        f"--screenshot={png}",
        f"--window-size={window}",
        page.resolve().as_uri(),
    ]
    subprocess.run(args, check=True, capture_output=True, timeout=120)
    assert png.is_file()
    return np.asarray(Image.open(png).convert("RGB")).astype(float)


@pytest.mark.slow
def test_report_and_index_render_in_headless_chromium(tmp_path, phantom):
    run_dir = tmp_path / "run"
    report = _write(run_dir, phantom)
    index = write_index(
        run_dir=run_dir,
        rows=[
            {
                "case_id": "case_001",
                "status": "ok",
                "category": "4A",
                "nodule_count": 2,
                "largest_nodule_mm": 12.06,
            }
        ],
    )
    for page in (report, index):
        image = screenshot(page, tmp_path / f"{page.stem}.png", tmp_path)
        assert image.shape[:2] == (2000, 1280)
        background = np.median(image.reshape(-1, 3), axis=0)
        ink = (np.abs(image - background).sum(axis=-1) > 60).mean()
        assert image.std() > 5 and ink > 0.005, (
            f"{page.name} rendered blank (std {image.std():.1f}, ink {ink:.4f})"
        )
    shot = screenshot(report, tmp_path / "report2.png", tmp_path)
    dark = (shot.mean(axis=-1) < 60).mean()
    assert dark > 0.05  # the CT figures (dark images) were loaded, not broken-image icons


@pytest.mark.slow
def test_index_sorts_by_lung_rads_in_chromium(tmp_path):
    run_dir = tmp_path / "run"
    index = write_index(run_dir=run_dir, rows=_index_rows(run_dir))
    args = [*_chromium_args(tmp_path), "--dump-dom", index.resolve().as_uri() + "#sort=2,desc"]
    dom = subprocess.run(args, check=True, capture_output=True, timeout=120, text=True).stdout
    order = re.findall(r'<tr(?: class="failed")?><td class="left" data-v="([^"]+)">', dom)
    assert order == ["b", "c", "d", "a"]  # 4B, 2, 1, failed


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("LUNGSCREEN_UPDATE_SCREENSHOT"), reason="set LUNGSCREEN_UPDATE_SCREENSHOT=1"
)
def test_update_readme_screenshot(tmp_path, shared_data):
    """Regenerate docs/images/report_screenshot.png from a real public chest CT with implanted nodules."""
    report = write_demo_report(shared_data / "ct" / "totalseg_chest_ct_crop_1p5mm.nii.gz", tmp_path / "demo")
    out = ROOT / "docs" / "images" / "report_screenshot.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    raw = tmp_path / "shot.png"
    screenshot(report, raw, tmp_path, window="1280,1900")
    Image.open(raw).convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(
        out, optimize=True
    )
    assert out.stat().st_size < 500_000
