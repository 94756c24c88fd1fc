"""The run's ``index.html``: one row per case, sortable by clicking a column header.

Self-contained: inline CSS and a few lines of inline JavaScript, no external resources, no CDN. Links to
each case's ``report.html`` are relative to the run folder and URL-encoded (a case id may hold ``#``, ``%``,
``?`` or spaces).
"""

from __future__ import annotations

import html
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from pipelines.imaging.filesys import atomic_write

#: Badge colours per Lung-RADS category (white text on them).
BADGE_COLORS = {
    "0": "#607d8b",
    "1": "#2e7d32",
    "2": "#2e7d32",
    "3": "#b26a00",
    "4A": "#d84315",
    "4B": "#b71c1c",
    "4X": "#7f0000",
}

#: Sort rank of a category in the index (severity order; unknown sorts first).
CATEGORY_RANK = {"0": 0, "1": 1, "2": 2, "3": 3, "4A": 4, "4B": 5, "4X": 6}

PAGE_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Arial,sans-serif;margin:0 auto;max-width:1320px;
padding:16px 20px;color:#1b1f23;background:#fafafa;font-size:14px}
h1{font-size:22px;margin:4px 0}h2{font-size:17px;margin:18px 0 8px;border-bottom:1px solid #ddd;padding-bottom:3px}
.muted{color:#5f6b76}.small{font-size:12px}.unit{font-weight:normal;color:#5f6b76;font-size:11px}
.banner{background:#fff4e5;border:1px solid #ffcc80;padding:6px 10px;border-radius:4px;margin:8px 0}
.badge{display:inline-block;color:#fff;border-radius:4px;padding:1px 7px;font-weight:600;white-space:nowrap}
.badge.big{font-size:20px;padding:6px 14px;margin-right:14px}
.lr{display:flex;align-items:flex-start;background:#fff;border:1px solid #ddd;border-radius:6px;padding:10px}
.lr div{margin:2px 0}.descriptor{font-weight:600;font-size:15px}.note{color:#8a4b00;font-size:12px;margin-top:6px}
.two{display:flex;gap:20px;flex-wrap:wrap}.two>div:first-child{flex:1 1 560px}.two>div:last-child{flex:1 1 320px}
figure{margin:6px 0 14px}figure img{max-width:100%;height:auto;border:1px solid #ccc;background:#000}
figcaption{font-size:12px;color:#5f6b76}
.scroll{overflow-x:auto}
table.data{border-collapse:collapse;background:#fff;font-size:12.5px}
table.data th,table.data td{border:1px solid #ddd;padding:3px 6px;text-align:right;white-space:nowrap}
table.data th{background:#eef1f4;vertical-align:bottom}table.data tr:nth-child(even) td{background:#f7f9fa}
table.kv{border-collapse:collapse;font-size:12.5px;background:#fff}
table.kv th,table.kv td{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
table.kv th{background:#eef1f4;font-weight:600}
th.sortable{cursor:pointer;user-select:none}th.sortable:after{content:" \\2195";color:#9aa5b1}
th.asc:after{content:" \\25B2";color:#1b1f23}th.desc:after{content:" \\25BC";color:#1b1f23}
table.data td.left{text-align:left}
tr.failed td{color:#b71c1c}
"""

_SORT_JS = r"""
(function(){
  var table=document.getElementById('cases');if(!table)return;
  var heads=table.tHead.rows[0].cells;
  function key(td,kind){var v=td.getAttribute('data-v');if(kind==='num'){var n=parseFloat(v);return isNaN(n)?-Infinity:n;}return (v||'').toLowerCase();}
  Array.prototype.forEach.call(heads,function(th,col){
    th.addEventListener('click',function(){
      var kind=th.getAttribute('data-kind');var asc=!th.classList.contains('asc');
      Array.prototype.forEach.call(heads,function(h){h.classList.remove('asc','desc');});
      th.classList.add(asc?'asc':'desc');
      var body=table.tBodies[0];var rows=Array.prototype.slice.call(body.rows);
      rows.sort(function(a,b){var x=key(a.cells[col],kind),y=key(b.cells[col],kind);return x<y?(asc?-1:1):x>y?(asc?1:-1):0;});
      rows.forEach(function(r){body.appendChild(r);});
    });
  });
  var m=/^#sort=(\d+)(,desc)?$/.exec(location.hash);
  if(m&&heads[+m[1]]){heads[+m[1]].click();if(m[2])heads[+m[1]].click();}
})();
"""

#: Index columns: (header, sort kind).
INDEX_COLUMNS = (
    ("Case", "text"),
    ("Status", "text"),
    ("Lung-RADS", "num"),
    ("Nodules", "num"),
    ("Largest nodule (mm)", "num"),
    ("Report", "text"),
    ("Note", "text"),
)


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _category_of(row: Mapping[str, Any]) -> str:
    category = row.get("category", row.get("lung_rads"))
    if isinstance(category, Mapping):
        category = category.get("category")
    return "" if category is None else str(category)


def _report_link(run_dir: Path, row: Mapping[str, Any]) -> str | None:
    """The report's path relative to ``run_dir`` (POSIX, not yet URL-encoded), or None when there is none."""
    given = row.get("report") or row.get("report_path")
    path = Path(given) if given else run_dir / str(row.get("case_id", "")) / "report.html"
    if not path.is_absolute():
        path = run_dir / path
    if not path.is_file():
        return None
    return Path(os.path.relpath(path, run_dir)).as_posix()


def _row_html(run_dir: Path, row: Mapping[str, Any]) -> str:
    case_id = str(row.get("case_id", ""))
    status = str(row.get("status", ""))
    category = _category_of(row)
    count = _number(row.get("nodule_count"))
    largest = _number(row.get("largest_nodule_mm"))
    link = _report_link(run_dir, row)
    note = row.get("reason") or row.get("warnings") or ""
    badge = (
        f'<span class="badge" style="background:{BADGE_COLORS.get(category, "#607d8b")}">{_esc(category)}</span>'
        if category
        else "–"
    )
    cells = [
        f'<td class="left" data-v="{_esc(case_id)}">{_esc(case_id)}</td>',
        f'<td class="left" data-v="{_esc(status)}">{_esc(status)}</td>',
        f'<td data-v="{CATEGORY_RANK.get(category, -1)}">{badge}</td>',
        f'<td data-v="{"" if count is None else f"{count:g}"}">{"–" if count is None else f"{count:.0f}"}</td>',
        f'<td data-v="{"" if largest is None else f"{largest:g}"}">{"–" if largest is None else f"{largest:.1f}"}</td>',
        f'<td class="left" data-v="{_esc(link or "")}">'
        + (f'<a href="{_esc(quote(link))}">report</a>' if link else "–")
        + "</td>",
        f'<td class="left" data-v="{_esc(note)}">{_esc(note)}</td>',
    ]
    css = ' class="failed"' if status.lower() in ("failed", "error") else ""
    return f"<tr{css}>{''.join(cells)}</tr>"


def _summary_line(rows: Sequence[Mapping[str, Any]]) -> str:
    statuses: dict[str, int] = {}
    categories: dict[str, int] = {}
    for row in rows:
        statuses[str(row.get("status", ""))] = statuses.get(str(row.get("status", "")), 0) + 1
        cat = _category_of(row)
        if cat:
            categories[cat] = categories.get(cat, 0) + 1
    status_text = ", ".join(f"{n} {s}" for s, n in sorted(statuses.items()))
    cat_text = ", ".join(
        f"{c}: {categories[c]}" for c in sorted(categories, key=lambda c: CATEGORY_RANK.get(c, -1))
    )
    return f"{len(rows)} case(s): {status_text}" + (f". Lung-RADS {cat_text}" if cat_text else "")


def write_index(*, run_dir: Path, rows: list[dict]) -> Path:
    """Write ``run_dir/index.html`` listing every case; return its path.

    Args:
        run_dir: the run's output folder; report links are made relative to it.
        rows: one dict per case with ``case_id``, ``status`` (e.g. ``ok`` / ``failed``), ``category``
            (Lung-RADS string such as ``"4A"``, or the dict from ``categorize_scan``, or ``None``; the
            key ``lung_rads`` of ``summary.csv`` is accepted instead),
            ``nodule_count``, ``largest_nodule_mm`` and optionally ``report`` (path to the case's
            ``report.html``, absolute or relative to ``run_dir``; default ``<case_id>/report.html``)
            and ``reason`` or ``warnings`` (shown as a note, e.g. why a case failed). A link is shown
            only when the
            report file exists.

    Clicking a column header sorts by it (Lung-RADS sorts by severity: 0 < 1 < 2 < 3 < 4A < 4B < 4X),
    clicking again reverses the order. A link may preselect the order: ``index.html#sort=2,desc`` sorts
    by the third column (Lung-RADS), most severe first.
    """
    run_dir = Path(run_dir)
    head = "".join(
        f'<th class="sortable" data-kind="{kind}">{_esc(name)}</th>' for name, kind in INDEX_COLUMNS
    )
    body = "".join(_row_html(run_dir, row) for row in rows)
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>lungscreen run</title><style>{PAGE_CSS}</style></head><body>\n"
        f'<header><h1>lungscreen run</h1><div class="muted">{_esc(_summary_line(rows))}</div></header>\n'
        '<div class="banner">Research use only: not a medical device. Lung-RADS v2022 baseline categories; '
        "prior-dependent rules are not applied. Click a column header to sort.</div>\n"
        '<div class="scroll"><table id="cases" class="data">'
        f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>\n"
        f"<script>{_SORT_JS}</script>\n</body></html>\n"
    )
    index = run_dir / "index.html"
    with atomic_write(index) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return index
