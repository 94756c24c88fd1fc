"""The follow-up section of a case report: the comparison with the prior and prior/current crops side by side.

:func:`add_followup_section` puts the section into an existing ``report.html`` (between two HTML comments, so a
rerun replaces it instead of adding a second one) and writes one PNG per matched nodule into ``report_files/``:
the prior crop centred on the matched prior nodule's centre in the prior scan, the current crop centred on the
current nodule in the current scan, both the same physical size (mm) and drawn in the radiological convention
of :mod:`pipelines.report.images`. The crops are not resampled into each other's frame: each is its own scan's
canonical grid (``[z, y, x]``, x toward patient left), so a change of the patient's pose between the scans shows.
Centres are LPS world mm (``center_lps_*_mm`` and ``prior_center_lps_*_mm`` of ``followup.csv``).
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from matplotlib.figure import Figure

from pipelines.imaging import io
from pipelines.imaging.filesys import atomic_write
from pipelines.report.html import FILES_DIR, category_box_html
from pipelines.report.images import AIR_HU, LUNG_WINDOW, draw_view, figure_png, orthogonal_views, padded_box

__all__ = ["START", "END", "CanonicalScan", "add_followup_section", "followup_figure_png", "section_html"]

START, END = "<!-- followup:start -->", "<!-- followup:end -->"
_BASELINE_HEADING = "<h2>Lung-RADS (baseline)</h2>"
_CENTER = ("center_lps_x_mm", "center_lps_y_mm", "center_lps_z_mm")
#: Follow-up table columns: (key, header).
TABLE = (
    ("nodule_id", "Nodule"),
    ("prior_nodule_id", "Prior nodule"),
    ("followup_status", "Status"),
    ("lung_rads", "Lung-RADS"),
    ("prior_rule", "Rule"),
    ("diameter_then_mm", "Mean diameter then (mm)"),
    ("diameter_now_mm", "now (mm)"),
    ("diameter_change_mm", "change (mm)"),
    ("volume_then_mm3", "Volume then (mm³)"),
    ("volume_now_mm3", "now (mm³)"),
    ("volume_change_pct", "change (%)"),
    ("volume_doubling_time_days", "Doubling time (days)"),
    ("match_distance_mm", "Match distance (mm)"),
)


class CanonicalScan:
    """A scan (and optionally its nodule labels) on its canonical grid: ``hu`` ``[z, y, x]`` HU, ``labels``
    ``[z, y, x]`` instance labels or ``None``, ``spacing_zyx`` mm; :meth:`index_of` maps LPS mm to a voxel."""

    def __init__(self, scan: str | Path | sitk.Image, labels: str | Path | None = None) -> None:
        image = scan if isinstance(scan, sitk.Image) else io.read_image(scan)
        self.hu, header = io.canonical_array(image, dtype=np.float32)
        self.spacing_zyx = io.spacing_zyx(header)
        self._ref = io.header_image(header)
        self.labels = None
        if labels is not None and Path(labels).is_file():
            lab, _ = io.canonical_array(io.read_image(labels), dtype=np.int32)
            if lab.shape == self.hu.shape:
                self.labels = lab

    def index_of(self, lps_mm: Sequence[float]) -> tuple[int, int, int]:
        """The nearest voxel ``[z, y, x]`` of an LPS point (mm), clipped into the grid."""
        i, j, k = self._ref.TransformPhysicalPointToContinuousIndex([float(v) for v in lps_mm])
        return tuple(int(np.clip(round(v), 0, n - 1)) for v, n in zip((k, j, i), self.hu.shape))  # type: ignore[return-value]


def _half(spacing_zyx: Sequence[float], half_mm: float) -> tuple[int, int, int]:
    return tuple(max(1, math.ceil(half_mm / float(s))) for s in spacing_zyx)  # type: ignore[return-value]


def followup_figure_png(
    *,
    prior: CanonicalScan,
    current: CanonicalScan,
    prior_center_lps_mm: Sequence[float],
    current_center_lps_mm: Sequence[float],
    prior_label: int | None,
    current_label: int | None,
    half_mm: float,
    heading: str,
    titles: tuple[str, str] = ("Prior", "Current"),
) -> bytes:
    """Axial and coronal crops of the prior and the current scan side by side (prior, current, prior, current).

    Args:
        prior, current: the two scans on their canonical grids.
        prior_center_lps_mm, current_center_lps_mm: crop centres, LPS mm of each scan's own frame.
        prior_label, current_label: the nodule's instance label in each scan's labels (contour), or ``None``.
        half_mm: half the crop's side, mm (the same for both scans, so both show the same physical size).
        heading: figure title.
        titles: the two scans' names in the panel titles.
    """
    fig = Figure(figsize=(10.0, 2.9), facecolor="white")
    axes = fig.subplots(1, 4, gridspec_kw={"wspace": 0.05})
    fig.subplots_adjust(left=0.005, right=0.995, top=0.80, bottom=0.02)
    fig.suptitle(heading, fontsize=10, fontweight="bold", x=0.01, ha="left")
    for col, (scan, centre, label, title) in enumerate(
        (
            (prior, prior_center_lps_mm, prior_label, titles[0]),
            (current, current_center_lps_mm, current_label, titles[1]),
        )
    ):
        index = scan.index_of(centre)
        half = _half(scan.spacing_zyx, half_mm)
        hu_views = orthogonal_views(padded_box(scan.hu, index, half, fill=AIR_HU), scan.spacing_zyx)
        lab_views: list[Any] = [None] * 3
        if scan.labels is not None and label:
            lab_views = [
                v[1] == label
                for v in orthogonal_views(padded_box(scan.labels, index, half, fill=0), scan.spacing_zyx)
            ]
        for row, name in ((0, "axial"), (1, "coronal")):
            view, hu = hu_views[row]
            draw_view(
                axes[2 * row + col],
                view,
                hu,
                window=LUNG_WINDOW,
                title=f"{title} {name}",
                mask=lab_views[row],
            )
    return figure_png(fig)


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return str(value)


def section_html(followup: Mapping[str, Any], images: Sequence[tuple[str, str]]) -> str:
    """The follow-up section: the category with the prior applied, the comparison table and the crops.

    Args:
        followup: :meth:`pipelines.followup.compare.FollowupResult.to_dict`.
        images: ``(file name in report_files/, alt text)`` of the side-by-side figures.
    """
    rows = followup.get("nodules") or []
    head = "".join(f"<th>{_esc(h)}</th>" for _, h in TABLE)
    body = "".join(
        "<tr>" + "".join(f"<td>{_esc(_cell(r.get(k)))}</td>" for k, _ in TABLE) + "</tr>" for r in rows
    )
    days = followup.get("interval_days")
    interval = "unknown" if days is None else f"{float(days):.0f} days"
    warnings = "".join(f"<li>{_esc(w)}</li>" for w in followup.get("warnings") or [])
    figures = "".join(
        f'<figure><img src="{FILES_DIR}/{_esc(name)}" alt="{_esc(alt)}" loading="lazy"></figure>'
        for name, alt in images
    )
    parts = [
        START,
        '<section id="followup"><h2>Lung-RADS with the prior (follow-up)</h2>',
        category_box_html(followup.get("lung_rads") or {}),
        f'<p class="muted small">Prior case: {_esc(Path(str(followup.get("prior_case", ""))).name)}; interval: '
        f"{_esc(interval)}. The category above replaces the baseline category below.</p>",
        f'<ul class="small">{warnings}</ul>' if warnings else "",
        f'<div class="scroll"><table class="data"><tr>{head}</tr>{body}</table></div>'
        if rows
        else "<p>No nodules on either scan.</p>",
        figures,
        '<p class="muted small">Prior and current crops, each in its own scan (not resampled): the same size in mm, '
        "radiological convention; magenta: the nodule's mask in that scan.</p>"
        if figures
        else "",
        "</section>",
        END,
    ]
    return "\n".join(p for p in parts if p)


def _figures(
    case_dir: Path,
    rows: Sequence[Mapping[str, Any]],
    *,
    current_scan: str | Path | sitk.Image,
    prior_scan: str | Path | sitk.Image,
    prior_case_dir: Path,
    max_figures: int,
) -> list[tuple[str, str]]:
    matched = [
        r for r in rows if r.get("nodule_id") not in (None, "") and r.get("prior_nodule_id") not in (None, "")
    ]
    if not matched:
        return []
    current = CanonicalScan(current_scan, case_dir / "nodules.nii.gz")
    prior = CanonicalScan(prior_scan, prior_case_dir / "nodules.nii.gz")
    out: list[tuple[str, str]] = []
    for r in matched[:max_figures]:
        then, now = float(r.get("diameter_then_mm") or 0.0), float(r.get("diameter_now_mm") or 0.0)
        heading = (
            f"Nodule {r['nodule_id']} (prior {r['prior_nodule_id']}): {r.get('followup_status', '')}, "
            f"{then:.1f} -> {now:.1f} mm mean diameter, Lung-RADS {r.get('lung_rads', '')}"
        )
        png = followup_figure_png(
            prior=prior,
            current=current,
            prior_center_lps_mm=[float(r[f"prior_{k}"]) for k in _CENTER],
            current_center_lps_mm=[float(r[k]) for k in _CENTER],
            prior_label=_label(r["prior_nodule_id"]),
            current_label=_label(r["nodule_id"]),
            half_mm=max(20.0, 1.5 * max(then, now)),
            heading=heading,
        )
        name = f"followup_{_label(r['nodule_id']) or len(out) + 1:03d}.png"
        with atomic_write(case_dir / FILES_DIR / name) as tmp:
            tmp.write_bytes(png)
        out.append((name, heading))
    return out


def _label(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def add_followup_section(
    case_dir: str | Path,
    followup: Mapping[str, Any],
    *,
    current_scan: str | Path | sitk.Image,
    prior_scan: str | Path | sitk.Image,
    prior_case_dir: str | Path,
    max_figures: int = 30,
) -> Path | None:
    """Put the follow-up section into ``case_dir/report.html`` (replacing an earlier one); ``None`` when the case
    has no report (``report=False``). Figures are written first, the page last (atomically)."""
    folder = Path(case_dir)
    page = folder / "report.html"
    if not page.is_file():
        return None
    text = page.read_text(encoding="utf-8")
    if START in text and END in text:
        text = text[: text.index(START)] + text[text.index(END) + len(END) :]
    for old in (folder / FILES_DIR).glob("followup_*.png"):
        old.unlink(missing_ok=True)
    (folder / FILES_DIR).mkdir(exist_ok=True)
    images = _figures(
        folder,
        followup.get("nodules") or [],
        current_scan=current_scan,
        prior_scan=prior_scan,
        prior_case_dir=Path(prior_case_dir),
        max_figures=max_figures,
    )
    section = section_html(followup, images)
    baseline = "<h2>Lung-RADS without the prior (baseline rules)</h2>"
    text = text.replace(_BASELINE_HEADING, baseline)
    anchor = f"<section>{baseline}"
    at = text.find(anchor) if anchor in text else text.rfind("</body>")
    text = text[:at] + section + "\n" + text[at:]
    with atomic_write(page) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return page
