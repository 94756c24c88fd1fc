"""Per-case HTML report: nodule crops with mask and network-output overlays, a lung MIP, a compact nodule
table and the Lung-RADS category.

``write_case_report`` writes ``out_dir/report.html`` and its PNG figures in ``out_dir/report_files/``;
the page links them relatively, so the folder can be moved or zipped as a whole. Every file is written to
a temporary name and renamed (``pipelines.imaging.filesys.atomic_write``); the HTML is written last, so a
``report.html`` that exists is complete. Nothing is fetched from the network when the page is opened.

Privacy: the page shows only the ``case_id`` given by the caller, the measurements and the entries of
``extra`` whose keys do not look like identifying DICOM attributes (patient, birth date, accession,
institution, physician, ...); such keys are dropped and the page says how many were withheld.

``write_index`` (the run's sortable ``index.html``) lives in :mod:`pipelines.report.index` and is
re-exported here.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.imaging.filesys import atomic_write
from pipelines.imaging.volumes import CroppedVolume
from pipelines.nodules.lungrads import NOTE as LUNG_RADS_NOTE
from pipelines.nodules.lungrads import REFERENCE as LUNG_RADS_REFERENCE
from pipelines.report.images import crop_half_voxels, mip_figure_png, nodule_figure_png
from pipelines.report.index import BADGE_COLORS, PAGE_CSS, write_index

__all__ = ["NODULE_COLUMNS", "category_box_html", "format_value", "write_case_report", "write_index"]

FILES_DIR = "report_files"

#: Nodule table columns: (key, header, unit). Only what a reader needs; every measurement is in ``nodules.csv``.
NODULE_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("nodule_id", "Nodule", ""),
    ("location", "Location", "centre, LPS mm"),
    ("type", "Type", ""),
    ("axes", "Long × short axis", "mm"),
    ("mean_diameter_mm", "Mean diameter", "mm"),
    ("volume_mm3", "Volume", "mm³"),
    ("lung_rads", "Lung-RADS", ""),
    ("probability", "Score", "0-1"),
)
TABLE_NOTE = (
    "Mean diameter: Lung-RADS v2022, the mean of the long axis and the perpendicular short axis on the nodule's "
    "largest axial slice; the category is based on it (not on the volume). Solid part: measured the same way. "
    "Score: the network's output for the nodule (0-1), a ranking score, not a calibrated probability of "
    "malignancy. Zone: the third of that lung's height (upper, middle, lower), not a lobe. Every measurement "
    "(equivalent-sphere diameter, density, RAS and voxel coordinates, scores) is in nodules.csv."
)
_IDENTIFYING = (
    "patient",
    "birth",
    "accession",
    "institution",
    "physician",
    "operator",
    "referring",
    "studyid",
    "study_id",
    "otherpatient",
)


def format_value(key: str, value: Any) -> str:
    """Text shown for a nodule value: mm to 0.1, mm³ and HU to 1, probability to 0.01; '–' if missing.

    Lung-RADS v2022 reports diameters to one decimal and volumes to the nearest whole mm³.
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return str(value)
    number = float(value)
    if key == "volume_mm3" or key.endswith("_hu") or key.startswith("voxel_"):
        return f"{number:.0f}"
    if key.endswith("_mm"):
        return f"{number:.1f}"
    if key == "probability":
        return f"{number:.2f}"
    return str(value) if isinstance(value, (int, np.integer)) else f"{number:.4g}"


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _check_inputs(
    hu_zyx: np.ndarray, spacing_zyx: Sequence[float], arrays: Mapping[str, np.ndarray | CroppedVolume | None]
) -> None:
    if hu_zyx.ndim != 3:
        raise ValueError(f"hu_zyx must be a 3D [z, y, x] array, not shape {hu_zyx.shape}")
    if len(spacing_zyx) != 3 or not all(math.isfinite(float(s)) and float(s) > 0 for s in spacing_zyx):
        raise ValueError(f"spacing_zyx must be three strictly positive mm values, not {tuple(spacing_zyx)}")
    for name, array in arrays.items():
        if array is not None and array.shape != hu_zyx.shape:
            raise ValueError(f"{name} has shape {array.shape}, but hu_zyx has shape {hu_zyx.shape}")


def _nodule_label(nodule: Mapping[str, Any], mask_zyx: np.ndarray, center_zyx: Sequence[int]) -> int:
    """Instance label of a nodule: its ``label`` key, else its integer ``nodule_id``, else the centre voxel."""
    if nodule.get("label") is not None:
        return int(nodule["label"])
    try:
        label = int(nodule["nodule_id"])
        if label > 0 and np.any(mask_zyx == label):
            return label
    except (KeyError, TypeError, ValueError):
        pass
    return int(mask_zyx[tuple(center_zyx)])


def _nodule_center(nodule: Mapping[str, Any], shape: Sequence[int]) -> tuple[int, int, int]:
    index = nodule.get("canonical_index_zyx")
    if index is None or len(index) != 3:
        raise ValueError(f"nodule {nodule.get('nodule_id')!r} has no canonical_index_zyx [z, y, x]")
    return tuple(int(np.clip(round(float(v)), 0, n - 1)) for v, n in zip(index, shape))  # type: ignore[return-value]


def _per_nodule_categories(nodules: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """Lung-RADS category per ``nodule_id``, as assigned by :func:`pipelines.nodules.lungrads.assign_categories`
    (each nodule's ``lung_rads``): the report reads categories, it never assigns them."""
    return {str(n.get("nodule_id")): str(n["lung_rads"]) for n in nodules if n.get("lung_rads")}


def _safe_extra(extra: Mapping[str, Any]) -> tuple[dict[str, Any], int]:
    kept = {
        k: v
        for k, v in extra.items()
        if not any(part in str(k).lower().replace(" ", "") for part in _IDENTIFYING)
    }
    return kept, len(extra) - len(kept)


def _write_png(path: Path, data: bytes) -> None:
    with atomic_write(path) as tmp:
        tmp.write_bytes(data)


def _render_figures(
    *,
    files_dir: Path,
    hu_zyx: np.ndarray,
    spacing_zyx: Sequence[float],
    nodules: Sequence[Mapping[str, Any]],
    nodule_mask_zyx: np.ndarray,
    probability_zyx: np.ndarray | CroppedVolume | None,
    lung_mask_zyx: np.ndarray | None,
    categories: Mapping[str, str],
    max_nodule_figures: int,
) -> tuple[list[str], str, list[str]]:
    """Write the MIP and the per-nodule PNGs; return (nodule image names, MIP caption, written names)."""
    markers, images = [], []
    for number, nodule in enumerate(nodules, start=1):
        center = _nodule_center(nodule, hu_zyx.shape)
        radius = float(nodule.get("long_axis_mm") or _mean_diameter(nodule) or 8.0) / 2.0 + 3.0
        cat = categories.get(str(nodule.get("nodule_id")), "")
        markers.append(
            {"number": _shown_id(nodule, number), "center_zyx": center, "radius_mm": radius, "category": cat}
        )
        if number > max_nodule_figures:
            continue
        label = _nodule_label(nodule, nodule_mask_zyx, center)
        heading = _nodule_heading(number, nodule, cat)
        png = nodule_figure_png(
            hu_zyx=hu_zyx,
            spacing_zyx=spacing_zyx,
            nodule_mask_zyx=nodule_mask_zyx,
            probability_zyx=probability_zyx,
            label=label,
            center_zyx=center,
            half_zyx=crop_half_voxels(nodule, spacing_zyx),
            heading=heading,
        )
        name = f"nodule_{number:03d}.png"
        _write_png(files_dir / name, png)
        images.append(name)
    mip, caption = mip_figure_png(
        hu_zyx=hu_zyx,
        spacing_zyx=spacing_zyx,
        lung_mask_zyx=lung_mask_zyx,
        nodule_mask_zyx=nodule_mask_zyx,
        markers=markers,
    )
    _write_png(files_dir / "mip_coronal.png", mip)
    return images, caption, [*images, "mip_coronal.png"]


def _shown_id(nodule: Mapping[str, Any], number: int) -> str:
    """The id a reader sees in the table, the MIP and the figures: ``nodule_id``, else the row number."""
    value = nodule.get("nodule_id")
    return str(number if value is None or value == "" else value)


def _mean_diameter(nodule: Mapping[str, Any]) -> float | None:
    """The Lung-RADS mean diameter (``mean_diameter_mm``; ``diameter_mm`` for dicts that have no other size)."""
    for key in ("mean_diameter_mm", "diameter_mm"):
        value = nodule.get(key)
        if value is not None and value != "":
            return float(value)
    return None


def _nodule_heading(number: int, nodule: Mapping[str, Any], category: str) -> str:
    parts = [f"#{_shown_id(nodule, number)}", str(nodule.get("type", "")), _size_text(nodule)]
    if category:
        parts.append(f"Lung-RADS {category}")
    if nodule.get("probability") is not None:
        parts.append(f"score {format_value('probability', nodule.get('probability'))}")
    if nodule.get("lung_side"):
        parts.append(_place_text(nodule))
    return " · ".join(p for p in parts if p)


def _axes_text(nodule: Mapping[str, Any]) -> str | None:
    """``12.3 × 8.1`` (long × short axis, mm), or None when either is missing."""
    long_axis, short_axis = nodule.get("long_axis_mm"), nodule.get("short_axis_mm")
    if long_axis is None or short_axis is None:
        return None
    return f"{format_value('long_axis_mm', long_axis)} × {format_value('short_axis_mm', short_axis)}"


def _size_text(nodule: Mapping[str, Any]) -> str:
    """``12.3 × 8.1 mm (mean 10.2 mm)``, or the mean alone when the axes are missing."""
    mean = format_value("mean_diameter_mm", _mean_diameter(nodule))
    axes = _axes_text(nodule)
    return f"mean {mean} mm" if axes is None else f"{axes} mm (mean {mean} mm)"


def _place_text(nodule: Mapping[str, Any]) -> str:
    """``right lung, upper zone`` (zone only when known)."""
    side = str(nodule.get("lung_side") or "unknown")
    text = "lung side unknown" if side == "unknown" else f"{side} lung"
    return f"{text}, {nodule['lung_zone']} zone" if nodule.get("lung_zone") else text


def _cell(key: str, nodule: Mapping[str, Any], categories: Mapping[str, str]) -> str:
    """The (escaped) HTML of one cell of the compact nodule table."""
    if key == "location":
        coords = [nodule.get(f"center_lps_{a}_mm") for a in "xyz"]
        lps = ", ".join(format_value("center_lps_x_mm", c) for c in coords)
        return f'{_esc(_place_text(nodule))}<br><span class="unit">({_esc(lps)})</span>'
    if key == "type":
        text = _esc(format_value("type", nodule.get("type")))
        if nodule.get("type") == "part-solid" and nodule.get("solid_component_mm") is not None:
            solid = format_value("solid_component_mm", nodule["solid_component_mm"])
            text += f'<br><span class="unit">solid part {_esc(solid)} mm</span>'
        return text
    if key == "axes":
        return _esc(_axes_text(nodule) or "–")
    if key == "mean_diameter_mm":
        return _esc(format_value(key, _mean_diameter(nodule)))
    if key == "lung_rads":
        cat = categories.get(str(nodule.get("nodule_id")), "–")
        own = nodule.get("size_category")
        extra = f'<br><span class="unit">{_esc(own)} by size</span>' if own and own != cat else ""
        return _esc(cat) + extra
    return _esc(format_value(key, nodule.get(key)))


def _nodule_table(nodules: Sequence[Mapping[str, Any]], categories: Mapping[str, str]) -> str:
    if not nodules:
        return '<p class="muted">No nodules were found.</p>'
    head = "".join(
        f'<th data-key="{_esc(k)}">{_esc(h)}'
        + (f'<br><span class="unit">({_esc(u)})</span>' if u else "")
        + "</th>"
        for k, h, u in NODULE_COLUMNS
    )
    rows = []
    for number, nodule in enumerate(nodules, start=1):
        cells = []
        for key, _, _ in NODULE_COLUMNS:
            content = (
                _esc(_shown_id(nodule, number)) if key == "nodule_id" else _cell(key, nodule, categories)
            )
            align = ' class="left"' if key in ("location", "type") else ""
            cells.append(f'<td data-key="{_esc(key)}"{align}>{content}</td>')
        rows.append(f'<tr id="row-{number}">{"".join(cells)}</tr>')
    return (
        '<div class="scroll"><table id="nodules" class="data">'
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
        f'<p class="muted small">{_esc(TABLE_NOTE)}</p>'
    )


def _category_box(category: Mapping[str, Any]) -> str:
    cat = str(category.get("category", "–"))
    color = BADGE_COLORS.get(cat, "#607d8b")
    deciding = category.get("deciding_nodule_id")
    lines = [
        f'<div class="lr"><span class="badge big" style="background:{color}">Lung-RADS {_esc(cat)}</span>',
        f'<div><div class="descriptor">{_esc(category.get("descriptor", ""))}</div>',
        f"<div><b>Management:</b> {_esc(category.get('management', ''))}</div>",
        f"<div><b>Why:</b> {_esc(category.get('reason', ''))}</div>",
    ]
    if deciding is not None:
        lines.append(f"<div><b>Deciding nodule:</b> {_esc(deciding)}</div>")
    if category.get("size_basis"):
        lines.append(f'<div class="muted small"><b>Size:</b> {_esc(category["size_basis"])}</div>')
    lines.append(f'<div class="note">{_esc(category.get("note", LUNG_RADS_NOTE))}</div>')
    lines.append(
        f'<div class="muted small">{_esc(category.get("reference", LUNG_RADS_REFERENCE))}</div></div></div>'
    )
    return "\n".join(lines)


def category_box_html(category: Mapping[str, Any]) -> str:
    """The Lung-RADS box of the case report (category badge, descriptor, management, reason, note) as HTML."""
    return _category_box(category)


def _format_extra(value: Any) -> str:
    if isinstance(value, (list, tuple)) and all(
        isinstance(v, (int, float, np.integer, np.floating)) for v in value
    ):
        return " × ".join(f"{float(v):.4g}" for v in value)
    if isinstance(value, (list, tuple)):
        return "; ".join(str(v) for v in value) if value else "none"
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.4g}"
    return str(value)


def _extra_table(extra: Mapping[str, Any]) -> str:
    kept, withheld = _safe_extra(extra)
    rows = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(_format_extra(v))}</td></tr>" for k, v in kept.items())
    note = f'<p class="muted small">{withheld} identifying field(s) withheld.</p>' if withheld else ""
    return f'<table class="kv">{rows}</table>{note}' if rows else note


def _figures_html(
    nodules: Sequence[Mapping[str, Any]], images: Sequence[str], categories: Mapping[str, str]
) -> str:
    parts = []
    for number, name in enumerate(images, start=1):
        alt = _nodule_heading(
            number, nodules[number - 1], categories.get(str(nodules[number - 1].get("nodule_id")), "")
        )
        parts.append(
            f'<figure id="nodule-{number}"><img src="{FILES_DIR}/{name}" alt="{_esc(alt)}" loading="lazy"></figure>'
        )
    if len(nodules) > len(images):
        parts.append(
            f'<p class="muted">{len(nodules) - len(images)} more nodule(s) are in the table without figures.</p>'
        )
    if images:
        parts.append(
            '<p class="muted small">Radiological convention: axial and coronal show patient right on the image left; '
            "sagittal shows anterior on the left. Magenta: this nodule's mask; white dashed: other nodules; colour: "
            "the network's voxel output (0-1, shown from 0.1; not a calibrated probability). Pixels keep their "
            "physical aspect ratio.</p>"
        )
    return "\n".join(parts)


def _page(case_id: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>lungscreen · {_esc(case_id)}</title><style>{PAGE_CSS}</style></head><body>\n{body}\n</body></html>\n"
    )


def _body_html(
    *,
    case_id: str,
    nodules: Sequence[Mapping[str, Any]],
    category: Mapping[str, Any],
    categories: Mapping[str, str],
    extra: Mapping[str, Any],
    images: Sequence[str],
    mip_caption: str,
) -> str:
    largest = max((d for d in map(_mean_diameter, nodules) if d is not None), default=None)
    summary = f"{len(nodules)} nodule(s)"
    if largest is not None:
        summary += f"; largest {format_value('mean_diameter_mm', largest)} mm mean diameter"
    return "\n".join(
        [
            f'<header><h1>Case {_esc(case_id)}</h1><div class="muted">{_esc(summary)}</div></header>',
            '<div class="banner">Research use only: not a medical device. Findings need review by a radiologist.</div>',
            f"<section><h2>Lung-RADS (baseline)</h2>{_category_box(category)}</section>",
            f'<section class="two"><div><h2>Overview</h2><figure><img src="{FILES_DIR}/mip_coronal.png" '
            f'alt="coronal MIP with nodules numbered"><figcaption>{_esc(mip_caption)}; circles numbered as in the '
            f"table, coloured by Lung-RADS category.</figcaption></figure></div>"
            f"<div><h2>Scan and run</h2>{_extra_table(extra)}</div></section>",
            f"<section><h2>Nodules</h2>{_nodule_table(nodules, categories)}</section>",
            f"<section><h2>Nodule views</h2>{_figures_html(nodules, images, categories)}</section>",
        ]
    )


def write_case_report(
    *,
    case_id: str,
    out_dir: Path,
    hu_zyx: np.ndarray,
    spacing_zyx: Sequence[float],
    nodules: Sequence[Mapping[str, Any]],
    nodule_mask_zyx: np.ndarray,
    probability_zyx: np.ndarray | CroppedVolume | None,
    lung_mask_zyx: np.ndarray | None,
    category: dict,
    extra: dict,
    max_nodule_figures: int = 30,
) -> Path:
    """Write ``out_dir/report.html`` with figures in ``out_dir/report_files/``; return the HTML path.

    Args:
        case_id: the case identifier shown on the page (file/folder name or a hash; never a patient ID).
        out_dir: the case's output folder (created if needed).
        hu_zyx: CT in HU, ``[z, y, x]`` on the canonical LPS grid.
        spacing_zyx: voxel spacing in mm, array-axis order ``(z, y, x)``.
        nodules: nodule dicts as in ``nodules.json`` (``nodule_id``, ``type``, ``mean_diameter_mm``,
            ``long_axis_mm``, ``short_axis_mm``, ``volume_mm3``, ``probability`` (shown as the score),
            ``lung_side``, ``lung_zone``, ``center_lps_*_mm``, ``lung_rads`` (assigned by
            :func:`pipelines.nodules.lungrads.assign_categories`; the report does not categorise), ...,
            ``canonical_index_zyx`` = voxel ``[z, y, x]`` of the centre on the canonical grid).
        nodule_mask_zyx: nodule instance labels (0 background) ``[z, y, x]``; a nodule's label is its
            ``label`` key, else its integer ``nodule_id``, else the label at its centre.
        probability_zyx: network probability in [0, 1] ``[z, y, x]``, or ``None`` (no heat map).
        lung_mask_zyx: lung labels ``[z, y, x]`` (1 right, 2 left), or ``None``.
        category: the scan's category (:func:`pipelines.nodules.lungrads.assign_categories`), shown in the Lung-RADS box.
        extra: scan and run details shown as a key/value table (e.g. spacing, lung volume, timings,
            bundle version); identifying keys are dropped.
        max_nodule_figures: figures are drawn for the first this many nodules; all are in the table.

    Raises:
        ValueError: shapes that differ from ``hu_zyx``, a non-3D volume, bad spacing, or a nodule
            without ``canonical_index_zyx``.
    """
    _check_inputs(
        hu_zyx,
        spacing_zyx,
        {
            "nodule_mask_zyx": nodule_mask_zyx,
            "probability_zyx": probability_zyx,
            "lung_mask_zyx": lung_mask_zyx,
        },
    )
    out_dir = Path(out_dir)
    files_dir = out_dir / FILES_DIR
    files_dir.mkdir(parents=True, exist_ok=True)
    categories = _per_nodule_categories(nodules)
    images, mip_caption, written = _render_figures(
        files_dir=files_dir,
        hu_zyx=hu_zyx,
        spacing_zyx=spacing_zyx,
        nodules=nodules,
        nodule_mask_zyx=nodule_mask_zyx,
        probability_zyx=probability_zyx,
        lung_mask_zyx=lung_mask_zyx,
        categories=categories,
        max_nodule_figures=max_nodule_figures,
    )
    body = _body_html(
        case_id=case_id,
        nodules=nodules,
        category=category,
        categories=categories,
        extra=extra,
        images=images,
        mip_caption=mip_caption,
    )
    report = out_dir / "report.html"
    with atomic_write(report) as tmp:
        tmp.write_text(_page(case_id, body), encoding="utf-8")
    _remove_stale(files_dir, keep=set(written))
    return report


def _remove_stale(files_dir: Path, *, keep: set[str]) -> None:
    """Delete PNGs of an earlier report of this case that the new page no longer links."""
    for path in files_dir.glob("*.png"):
        if path.name not in keep:
            path.unlink(missing_ok=True)
