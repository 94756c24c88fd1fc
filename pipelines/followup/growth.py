"""Change of a nodule between two scans: diameter and volume change, volume doubling time, the interval.

Sizes are the ``nodules.csv`` columns of both scans: ``mean_diameter_mm`` (the Lung-RADS mean diameter, mm) and
``volume_mm3`` (mm³). The interval is in days, from the two studies' DICOM StudyDate (0008,0020) or given.

Volume doubling time (Schultz exponential model): ``VDT = t * ln 2 / ln(V_now / V_then)`` days. It is
``inf`` when the volume did not change, **negative** when the nodule shrank (its magnitude is then the volume
halving time), and ``None`` when it is undefined (a volume that is not positive, or no interval).
"""

from __future__ import annotations

import datetime as _dt
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "Change",
    "interval_days",
    "measure_change",
    "parse_dicom_date",
    "study_date",
    "volume_doubling_time_days",
]


def volume_doubling_time_days(
    *, volume_then_mm3: float, volume_now_mm3: float, interval_days: float
) -> float | None:
    """Volume doubling time in days: ``interval * ln 2 / ln(V_now / V_then)``.

    Returns:
        days; ``math.inf`` for an unchanged volume, negative for a shrinking nodule, ``None`` when a volume is
        not a positive finite number or the interval is not a positive finite number of days.
    """
    values = (volume_then_mm3, volume_now_mm3, interval_days)
    if not all(isinstance(v, int | float) and math.isfinite(v) and v > 0 for v in values):
        return None
    ratio = math.log(volume_now_mm3 / volume_then_mm3)
    if ratio == 0.0:
        return math.inf
    return interval_days * math.log(2.0) / ratio


@dataclass(frozen=True)
class Change:
    """Change of one matched nodule (then = prior scan, now = current scan).

    Attributes:
        diameter_then_mm, diameter_now_mm: mean diameters, mm.
        diameter_change_mm: now minus then, mm; ``diameter_change_pct``: relative to then, % (``None`` if then 0).
        volume_then_mm3, volume_now_mm3, volume_change_mm3: mm³; ``volume_change_pct``: % of then.
        volume_doubling_time_days: see :func:`volume_doubling_time_days`.
        interval_days: days between the scans (``None``: unknown).
    """

    diameter_then_mm: float
    diameter_now_mm: float
    diameter_change_mm: float
    diameter_change_pct: float | None
    volume_then_mm3: float | None
    volume_now_mm3: float | None
    volume_change_mm3: float | None
    volume_change_pct: float | None
    volume_doubling_time_days: float | None
    interval_days: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _pct(change: float, then: float) -> float | None:
    return None if then <= 0 else 100.0 * change / then


def measure_change(
    *,
    diameter_then_mm: float,
    diameter_now_mm: float,
    volume_then_mm3: float | None,
    volume_now_mm3: float | None,
    interval_days: float | None,
) -> Change:
    """Diameter and volume change of one nodule, and its volume doubling time (days)."""
    d_change = float(diameter_now_mm) - float(diameter_then_mm)
    v_change = v_pct = vdt = None
    if volume_then_mm3 is not None and volume_now_mm3 is not None:
        v_change = float(volume_now_mm3) - float(volume_then_mm3)
        v_pct = _pct(v_change, float(volume_then_mm3))
        if interval_days is not None:
            vdt = volume_doubling_time_days(
                volume_then_mm3=float(volume_then_mm3),
                volume_now_mm3=float(volume_now_mm3),
                interval_days=float(interval_days),
            )
    return Change(
        diameter_then_mm=float(diameter_then_mm),
        diameter_now_mm=float(diameter_now_mm),
        diameter_change_mm=d_change,
        diameter_change_pct=_pct(d_change, float(diameter_then_mm)),
        volume_then_mm3=None if volume_then_mm3 is None else float(volume_then_mm3),
        volume_now_mm3=None if volume_now_mm3 is None else float(volume_now_mm3),
        volume_change_mm3=v_change,
        volume_change_pct=v_pct,
        volume_doubling_time_days=vdt,
        interval_days=None if interval_days is None else float(interval_days),
    )


def parse_dicom_date(text: str) -> _dt.date:
    """A DICOM DA value (``YYYYMMDD``; the old ``YYYY.MM.DD`` form too) as a date.

    Raises:
        ValueError: naming the value, when it is not such a date.
    """
    digits = str(text).strip().replace(".", "")
    if len(digits) != 8 or not digits.isdigit():
        raise ValueError(f"not a DICOM date (YYYYMMDD): {text!r}")
    try:
        return _dt.date(int(digits[:4]), int(digits[4:6]), int(digits[6:]))
    except ValueError:
        raise ValueError(f"not a DICOM date (YYYYMMDD): {text!r}") from None


def interval_days(prior: _dt.date | str, current: _dt.date | str) -> int:
    """Days from the prior study to the current one (dates or DICOM DA strings).

    Raises:
        ValueError: a date that does not parse, or a prior dated after the current study.
    """
    then = prior if isinstance(prior, _dt.date) else parse_dicom_date(prior)
    now = current if isinstance(current, _dt.date) else parse_dicom_date(current)
    days = (now - then).days
    if days < 0:
        raise ValueError(
            f"the prior study ({then.isoformat()}) is dated after the current one ({now.isoformat()})"
        )
    return days


def study_date(path: str | os.PathLike[str]) -> _dt.date | None:
    """The StudyDate (0008,0020) of a DICOM file, or of the first readable DICOM file of a folder (sorted).

    Returns ``None`` for a non-DICOM input or a missing/empty/invalid StudyDate (header read only).
    """
    import pydicom

    p = Path(path)
    files = sorted(f for f in p.iterdir() if f.is_file()) if p.is_dir() else [p]
    for f in files:
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=["StudyDate"])
        except Exception:  # not a DICOM file: try the next one
            continue
        value = str(getattr(ds, "StudyDate", "") or "")
        try:
            return parse_dicom_date(value)
        except ValueError:
            return None
    return None
