"""Slice-by-slice rendering of the analytic thorax (:mod:`pipelines.phantom.anatomy`) into HU.

Each axial slice is painted back to front (air, body wall, cage, bones, mediastinum, abdomen, lungs);
small structures are evaluated only inside their bounding window, which keeps a 512x512 slice at a few
milliseconds. Output arrays are indexed ``[z, y, x]`` on the canonical LPS grid.
"""

from __future__ import annotations

import numpy as np

from pipelines.phantom.anatomy import (
    LEFT,
    RIGHT,
    Thorax,
    body_sdf,
    cavity_scale,
    cavity_sdf,
    desc_aorta_center,
    dome_w,
    heart_sdf,
    lung_shared_sdf,
    lung_side_sdf,
)
from pipelines.phantom.shapes import Array, Grid, coverage, ellipse_sdf, rotated_ellipsoid_sdf

TISSUES = {"air": 0, "fat": 1, "soft": 2, "bone": 3, "lung": 4, "blood": 5, "abdomen": 6}


class _Slice:
    """One axial slice being painted: HU, dominant tissue, and body-centred coordinates ``u[1,nx]``, ``v[ny,1]``."""

    def __init__(self, u: Array, v: Array, w: float, h: float):
        self.u, self.v, self.w, self.h = u, v, float(w), h
        self.hu = np.full((v.shape[0], u.shape[1]), -1000.0, dtype=np.float32)
        self.tissue = np.zeros(self.hu.shape, dtype=np.uint8)
        self._u1, self._v1 = u.ravel(), v.ravel()

    def window(self, cu: float, cv: float, ru: float, rv: float) -> tuple[slice, slice]:
        """Array window (rows, cols) covering ``|u - cu| <= ru + 2h`` and ``|v - cv| <= rv + 2h``."""
        m = 2 * self.h
        c0, c1 = np.searchsorted(self._u1, [cu - ru - m, cu + ru + m])
        r0, r1 = np.searchsorted(self._v1, [cv - rv - m, cv + rv + m])
        return slice(int(r0), int(r1)), slice(int(c0), int(c1))

    def local(self, win: tuple[slice, slice]) -> tuple[Array, Array]:
        return self.u[:, win[1]], self.v[win[0], :]

    def paint(
        self, frac: Array, value: float | Array, tissue: str, win: tuple[slice, slice] | None = None
    ) -> None:
        hu = self.hu if win is None else self.hu[win]
        ts = self.tissue if win is None else self.tissue[win]
        if hu.size == 0:
            return
        frac = np.broadcast_to(frac, hu.shape)
        hu += frac * (value - hu)
        ts[frac >= 0.5] = TISSUES[tissue]

    def ellipse(
        self,
        cu: float,
        cv: float,
        ru: float,
        rv: float,
        value: float,
        tissue: str,
        *,
        shell: float = 0.0,
        inner: float = 0.0,
    ) -> None:
        """Paint an axis-aligned ellipse (optionally a cortex ``shell`` around an ``inner`` value)."""
        win = self.window(cu, cv, ru, rv)
        lu, lv = self.local(win)
        d = ellipse_sdf(lu, lv, cu, cv, ru, rv)
        self.paint(coverage(d, self.h), value, tissue, win)
        if shell > 0:
            self.paint(coverage(d + shell, self.h), inner, tissue, win)


def _paint_wall(s: _Slice, t: Thorax, d_body: Array, d_cav: Array) -> None:
    h = s.h
    phi = np.arctan2(np.abs(s.u) / t.body_a, s.v / t.body_b_post)
    fat = t.fat * (0.6 + 0.8 * np.sin(phi) ** 2) * (1.3 if s.w < 0 else 1.0)
    s.paint(coverage(d_body, h), t.hu["muscle"] - 10, "soft")  # skin
    s.paint(coverage(d_body + 2.0, h), t.hu["fat"], "fat")
    s.paint(coverage(d_body + 2.0 + fat, h), t.hu["muscle"], "soft")
    s.paint(np.clip(1.0 - np.abs(d_cav - 14.0) / 2.0, 0, 1) * 0.7, t.hu["fat"] + 20, "fat")  # fascia plane


def _paint_ribs(s: _Slice, t: Thorax, d_cav: Array) -> None:
    h, w = s.h, s.w
    sc = float(cavity_scale(t, np.float32(w)))
    phi = np.arctan2(np.abs(s.u) / (t.cav_a * sc), s.v / (t.cav_b_post * sc)) / np.pi
    idx = (t.lung_top + 12.0 - t.rib_slope * phi - w) / t.rib_gap
    k = np.round(idx)
    dz = (idx - k) * t.rib_gap
    rad = d_cav - (t.rib_half_r + 1.0)
    d = (np.sqrt((rad / t.rib_half_r) ** 2 + (dz / t.rib_half_z) ** 2) - 1.0) * t.rib_half_r
    phi_end = np.clip(0.93 - 0.05 * np.maximum(k - 6, 0), 0.45, 0.93)
    d = np.where((k >= 0) & (k <= 11) & (phi > 0.08) & (phi < phi_end), d, 1e3)
    cart = phi > phi_end - 0.17
    s.paint(coverage(np.where(cart, 1e3, d), h), t.hu["cortex"], "bone")
    s.paint(coverage(np.where(cart, 1e3, d + 1.3), h), t.hu["marrow"], "bone")
    s.paint(coverage(np.where(cart, d, 1e3), h), t.hu["cartilage"], "soft")
    if w > t.lung_top - 140:  # scapulae: thin curved plates behind the upper ribs
        plate = np.abs(d_cav - 2 * t.rib_half_r - 9.0) - 2.5
        plate = np.where((phi > 0.12) & (phi < 0.4) & (np.abs(s.u) > 0.35 * t.cav_a), plate, 1e3)
        s.paint(coverage(plate, h), t.hu["cortex"] * 0.8, "bone")
        s.paint(coverage(plate + 1.0, h), t.hu["marrow"], "bone")


def _paint_spine(s: _Slice, t: Thorax) -> None:
    phase = (s.w - t.cz) % 24.0
    if phase < 5.0:
        s.ellipse(0.0, t.spine_v + 1.0, 19.0, 15.0, 85.0, "soft")  # disc
    else:
        s.ellipse(0.0, t.spine_v + 1.0, 19.0, 15.0, t.hu["cortex"], "bone", shell=1.5, inner=t.hu["marrow"])
    cy = t.spine_v + 24.0
    if phase > 8.0:
        win = s.window(0.0, cy + 10.0, 38.0, 35.0)
        lu, lv = s.local(win)
        ring = np.abs(ellipse_sdf(lu, lv, 0.0, cy, 10.0, 8.5)) - 2.8
        spinous = ellipse_sdf(lu, lv, 0.0, cy + 22.0, 4.0, 12.0)
        trans = np.minimum(
            ellipse_sdf(lu, lv, -24.0, cy - 3, 12.0, 5.0), ellipse_sdf(lu, lv, 24.0, cy - 3, 12.0, 5.0)
        )
        d = np.minimum(np.minimum(ring, spinous), trans)
        s.paint(coverage(d, s.h), t.hu["cortex"], "bone", win)
        s.paint(coverage(d + 1.2, s.h), t.hu["marrow"], "bone", win)
    s.ellipse(0.0, cy, 7.0, 6.0, 15.0, "soft")  # canal


def _paint_heart(s: _Slice, t: Thorax) -> None:
    rmax = max(t.heart_r) + 8.0
    if abs(s.w - t.heart_c[2]) > rmax:
        return
    win = s.window(t.heart_c[0], t.heart_c[1], rmax, rmax)
    lu, lv = s.local(win)
    wf = np.float32(s.w)
    d = heart_sdf(t, lu, lv, wf)
    s.paint(coverage(d - 6.0, s.h) * (wf > dome_w(t, lu, lv)), t.hu["fat"], "fat", win)
    s.paint(coverage(d, s.h), t.hu["myo"], "blood", win)
    ax = t.heart_axes[1]
    sept = (
        np.abs((lu - t.heart_c[0]) * ax[0] + (lv - t.heart_c[1]) * ax[1] + (wf - t.heart_c[2]) * ax[2]) - 4.0
    )
    s.paint(coverage(np.maximum(d + 8.0, -sept), s.h), t.hu["blood"], "blood", win)


def _paint_mediastinum(s: _Slice, t: Thorax) -> None:
    w, blood = s.w, t.hu["blood"]
    _paint_heart(s, t)
    la_c = np.array([8.0, t.spine_v - 38, t.heart_c[2] + 38])
    if abs(w - la_c[2]) < 22:
        win = s.window(la_c[0], la_c[1], 34.0, 20.0)
        lu, lv = s.local(win)
        la = rotated_ellipsoid_sdf(lu, lv, np.float32(w), la_c, np.eye(3), np.array([34.0, 20.0, 20.0]))
        s.paint(coverage(la, s.h), blood, "blood", win)
    s.ellipse(6.0, t.spine_v - 24.0, 8.0, 6.5, t.hu["muscle"], "soft")  # oesophagus
    ax_, av = desc_aorta_center(t)
    if w < t.carina_w + 25:
        s.ellipse(ax_, av, t.aorta_r, t.aorta_r, blood, "blood")
    top_heart = t.heart_c[2] + 0.8 * t.heart_r[2]
    if top_heart - 20 < w < t.carina_w + 25:
        s.ellipse(-0.06 * t.cav_a, t.heart_c[1] + 12, t.aorta_r + 2, t.aorta_r + 2, blood, "blood")
    if top_heart - 10 < w:
        s.ellipse(
            -0.06 * t.cav_a - t.aorta_r - 11,
            t.heart_c[1] + 18,
            9.0,
            9.0,
            blood * (1.6 if t.contrast else 1.0),
            "blood",
        )
    if w > t.carina_w + 35:
        for du, dv, r in ((-14.0, -25.0, 7.0), (-2.0, -30.0, 5.0), (14.0, -20.0, 6.0)):
            s.ellipse(du, t.spine_v - 38 + dv, r, r, blood, "blood")
    if w > t.carina_w:
        tv = t.spine_v - 26.0 - t.trachea_r
        s.ellipse(-3.0, tv, t.trachea_r + 2, 0.9 * t.trachea_r + 2, t.hu["muscle"], "soft")
        s.ellipse(-3.0, tv, t.trachea_r, 0.9 * t.trachea_r, -1000.0, "air")


def _paint_abdomen(s: _Slice, t: Thorax, cav: Array) -> None:
    if s.w > 5.0:
        return
    below = coverage(np.float32(s.w) - dome_w(t, s.u, s.v), s.h) * cav
    edge = 0.05 * t.cav_a + 15.0 * np.sin(s.v / 25.0)
    s.paint(below, np.where(s.u < edge, t.hu["liver"], t.hu["muscle"] - 5), "abdomen")
    c = np.array([0.42 * t.cav_a, -0.25 * t.cav_b_ant, -t.left_dome_drop - 38.0])
    if abs(s.w - c[2]) < 22:
        win = s.window(c[0], c[1], 30.0, 24.0)
        lu, lv = s.local(win)
        bub = rotated_ellipsoid_sdf(lu, lv, np.float32(s.w), c, np.eye(3), np.array([30.0, 24.0, 22.0]))
        s.paint(coverage(bub, s.h) * below[win], -1000.0 if s.w > c[2] - 4 else 15.0, "air", win)


def render_thorax(t: Thorax, grid: Grid, texture: Array) -> tuple[Array, Array, Array]:
    """Render the noiseless anatomy on ``grid``.

    Args:
        t: the patient.
        grid: canonical LPS grid.
        texture: float32 ``[z, y, x]`` correlated unit noise modulating the lung parenchyma.

    Returns:
        ``hu`` float32 ``[z, y, x]`` (HU, before vessels, nodules and scanner effects), ``lungs`` uint8
        (1 right, 2 left) and ``tissue`` uint8 classes of :data:`TISSUES`.
    """
    x, y, _ = grid.axes()
    u, v = x[0] - t.cx, y[0] - t.cy
    hu = np.full(grid.shape_zyx, -1000.0, dtype=np.float32)
    lungs = np.zeros(grid.shape_zyx, dtype=np.uint8)
    tissue = np.zeros(grid.shape_zyx, dtype=np.uint8)
    c0, c1 = np.searchsorted(u.ravel(), [-t.body_a - 3 * grid.h, t.body_a + 3 * grid.h])
    r0, r1 = np.searchsorted(v.ravel(), [-t.body_b_ant - 60, t.body_b_post + 3 * grid.h])
    box = (slice(int(r0), int(r1)), slice(int(c0), int(c1)))
    u, v = u[:, box[1]], v[box[0], :]
    for k, z in enumerate(grid.z_axis().ravel()):
        s = _Slice(u, v, float(z - t.cz), grid.h)
        wf = np.float32(s.w)
        d_cav = cavity_sdf(t, u, v, wf)
        _paint_wall(s, t, body_sdf(t, u, v, wf), d_cav)
        cav = coverage(d_cav, s.h)
        s.paint(cav, t.hu["fat"] + 10, "fat")
        _paint_ribs(s, t, d_cav)
        _paint_spine(s, t)
        if 0.05 * t.lung_top < s.w < 0.85 * t.lung_top:
            st_v = -t.cav_b_ant * float(cavity_scale(t, wf)) - 7.0
            s.ellipse(0.0, st_v, 15.0, 6.0, t.hu["cortex"], "bone", shell=1.5, inner=t.hu["marrow"])
        _paint_mediastinum(s, t)
        _paint_abdomen(s, t, cav)
        if -t.recess - 10 < s.w < t.lung_top + 5:
            base = (
                t.hu["lung"] + t.hu["lung_grad"] * np.clip(v / t.cav_b_post, -1, 1) + 18.0 * texture[k][box]
            )
            shared = lung_shared_sdf(t, u, v, wf, d_cav)
            for side in (RIGHT, LEFT):
                cl = coverage(np.maximum(shared, lung_side_sdf(t, u, v, wf, side)), s.h)
                s.paint(cl, base, "lung")
                lungs[k][box][cl >= 0.5] = side
        hu[k][box] = s.hu
        tissue[k][box] = s.tissue
    return hu, lungs, tissue
