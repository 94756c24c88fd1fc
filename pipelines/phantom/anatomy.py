"""Analytic thorax of the synthetic chest CT: body wall, bones, mediastinum, heart, diaphragm and lungs.

The body is described by signed-distance functions of LPS world millimetres (x left, y posterior, z
superior), evaluated either on grid slices (``x[1, nx]``, ``y[ny, 1]``, scalar ``z``) or on point lists
(three 1D arrays), so the same lung shape serves rendering and nodule placement. Slices are rendered one by
one into a float32 HU volume indexed ``[z, y, x]`` with partial volume from :func:`coverage`.
Body-centred coordinates: ``u = x - cx`` (left), ``v = y - cy`` (posterior), ``w = z - cz`` (superior, 0 at
the top of the right hemidiaphragm dome).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pipelines.phantom.shapes import Array, ellipse_sdf, rotated_ellipsoid_sdf, smooth_min

RIGHT, LEFT = 1, 2


@dataclass
class Thorax:
    """Random anatomical parameters of one patient (mm, HU); see :func:`sample_thorax`."""

    cx: float
    cy: float
    cz: float
    body_a: float  # lateral half width of the body
    body_b_ant: float  # anterior half depth from the centre
    body_b_post: float  # posterior half depth (the back rests on the table)
    fat: float  # subcutaneous fat thickness at the side
    muscle: float  # chest-wall muscle thickness
    cav_a: float  # half width of the thoracic cavity (inside the ribs)
    cav_b_ant: float
    cav_b_post: float
    lung_top: float  # w of the lung apices
    recess: float  # depth of the costophrenic recesses below the dome top
    left_dome_drop: float
    dome_height: float
    rib_gap: float
    rib_slope: float
    rib_half_r: float
    rib_half_z: float
    med_ant: float  # half width of the anterior junction between the lungs
    med_mid: float  # half width of the superior mediastinum
    spine_v: float  # v of the vertebral body centre
    heart_c: tuple[float, float, float]
    heart_r: tuple[float, float, float]
    heart_axes: Array
    aorta_r: float
    trachea_r: float
    carina_w: float
    contrast: bool
    hu: dict[str, float] = field(default_factory=dict)
    breasts: bool = False

    def uvw(self, x: Array, y: Array, z: Array) -> tuple[Array, Array, Array]:
        return x - self.cx, y - self.cy, z - self.cz


def sample_thorax(rng: np.random.Generator, *, fov_mm: float, z_center: float) -> Thorax:
    """Draw one patient's anatomy that fits a field of view of ``fov_mm`` (in-plane width, mm)."""
    a = float(np.clip(rng.normal(0.40, 0.04), 0.32, 0.46) * fov_mm)
    a = min(a, 200.0)
    b_ant = a * rng.uniform(0.66, 0.82)
    b_post = b_ant * rng.uniform(0.95, 1.12)
    fat = rng.uniform(4, 30) * a / 160
    muscle = rng.uniform(7, 16)
    cav_a = a - fat - muscle - 9
    cav_b_ant = b_ant - 0.5 * fat - 0.7 * muscle - 6
    cav_b_post = b_post - 0.5 * fat - 0.7 * muscle - rng.uniform(18, 26)
    scale = cav_a / 125.0
    lung_top = rng.uniform(175, 225) * scale
    contrast = bool(rng.random() < 0.35)
    ang = rng.uniform(0.45, 0.75)
    tilt = rng.uniform(0.25, 0.45)
    long_ax = np.array([np.sin(ang) * np.cos(tilt), -np.cos(ang) * np.cos(tilt), -np.sin(tilt)])
    side = np.cross(long_ax, [0.0, 0.0, 1.0])
    side /= np.linalg.norm(side)
    third = np.cross(long_ax, side)
    heart_r = (rng.uniform(46, 56) * scale, rng.uniform(34, 42) * scale, rng.uniform(36, 44) * scale)
    spine_v = cav_b_post - rng.uniform(24, 30)
    hu = {
        "fat": rng.uniform(-115, -80),
        "muscle": rng.uniform(35, 60),
        "blood": rng.uniform(180, 320) if contrast else rng.uniform(35, 50),
        "myo": rng.uniform(80, 120) if contrast else rng.uniform(38, 52),
        "lung": rng.uniform(-885, -820),
        "lung_grad": rng.uniform(20, 90),
        "cortex": rng.uniform(750, 1150),
        "marrow": rng.uniform(180, 330),
        "liver": rng.uniform(45, 70) + (35 if contrast else 0),
        "cartilage": rng.uniform(80, 160),
    }
    return Thorax(
        cx=float(rng.uniform(-15, 15)),
        cy=float(rng.uniform(-25, 10)),
        cz=z_center,
        body_a=a,
        body_b_ant=b_ant,
        body_b_post=b_post,
        fat=fat,
        muscle=muscle,
        cav_a=cav_a,
        cav_b_ant=cav_b_ant,
        cav_b_post=cav_b_post,
        lung_top=lung_top,
        recess=rng.uniform(35, 60) * scale,
        left_dome_drop=rng.uniform(8, 25) * scale,
        dome_height=rng.uniform(45, 70) * scale,
        rib_gap=rng.uniform(22, 28) * scale,
        rib_slope=rng.uniform(90, 140) * scale,
        rib_half_r=rng.uniform(3.0, 4.5),
        rib_half_z=rng.uniform(4.0, 6.0),
        med_ant=rng.uniform(3, 9),
        med_mid=rng.uniform(22, 32) * scale,
        spine_v=spine_v,
        heart_c=(rng.uniform(0.15, 0.25) * cav_a, -0.3 * cav_b_ant, rng.uniform(18, 32) * scale),
        heart_r=heart_r,
        heart_axes=np.stack([long_ax, side, third]),
        aorta_r=rng.uniform(11, 15) * scale,
        trachea_r=rng.uniform(8, 11) * scale,
        carina_w=lung_top - rng.uniform(85, 110) * scale,
        contrast=contrast,
        hu=hu,
        breasts=bool(rng.random() < 0.3),
    )


# ------------------------------------------------------------------------------------------- shapes
def _ramp(t: Array) -> Array:
    return np.clip(t, 0.0, 1.0)


def body_sdf(t: Thorax, u: Array, v: Array, w: Array) -> Array:
    """Signed distance (mm) to the skin surface; the back is flattened where it lies on the table."""
    b = np.where(v < 0, t.body_b_ant, t.body_b_post)
    d = np.maximum(ellipse_sdf(u, v, 0.0, 0.0, t.body_a, b), v - (t.body_b_post - 8.0))
    if t.breasts:
        for sgn in (-1, 1):
            c = np.array([sgn * 0.4 * t.body_a, -0.62 * t.body_b_ant, t.heart_c[2] + 35.0])
            r = np.array([0.32 * t.body_a, 0.5 * t.body_b_ant, 60.0])
            d = smooth_min(d, rotated_ellipsoid_sdf(u, v, w, c, np.eye(3), r), 30.0)
    return d


def cavity_scale(t: Thorax, w: Array) -> Array:
    """Shrink factor (0.55..1) of the rib cage towards the thoracic inlet."""
    top = t.lung_top
    return (
        1.0 - 0.12 * _ramp((w - 0.1 * top) / (0.5 * top)) - 0.33 * _ramp((w - 0.5 * top) / (0.55 * top)) ** 2
    )


def cavity_sdf(t: Thorax, u: Array, v: Array, w: Array) -> Array:
    """Signed distance (mm) to the inner surface of the rib cage (the parietal pleura)."""
    s = cavity_scale(t, w)
    b = np.where(v < 0, t.cav_b_ant, t.cav_b_post) * s
    return ellipse_sdf(u, v, 0.0, 0.0, t.cav_a * s, b)


def dome_w(t: Thorax, u: Array, v: Array) -> Array:
    """Height ``w`` (mm) of the diaphragm under each point: two domes, the right one higher."""
    out = None
    for side, top in ((-1, 0.0), (1, -t.left_dome_drop)):
        q = ((u - side * 0.42 * t.cav_a) / (0.62 * t.cav_a)) ** 2 + (
            (v + 0.1 * t.cav_b_ant) / (0.95 * t.cav_b_post)
        ) ** 2
        dw = top - t.dome_height * q
        out = dw if out is None else np.maximum(out, dw)
    assert out is not None
    return np.maximum(out, -t.recess - 5)


def heart_sdf(t: Thorax, u: Array, v: Array, w: Array) -> Array:
    return rotated_ellipsoid_sdf(u, v, w, np.asarray(t.heart_c), t.heart_axes, np.asarray(t.heart_r))


def spine_sdf(t: Thorax, u: Array, v: Array) -> Array:
    """Signed distance (mm) to the vertebral column block the lungs wrap around (body, pedicles, canal)."""
    body = ellipse_sdf(u, v, 0.0, t.spine_v, 21.0, 17.0)
    post = np.maximum(np.abs(u) - 17.0, t.spine_v - v)
    return np.minimum(body, post)


def desc_aorta_center(t: Thorax) -> tuple[float, float]:
    return 0.17 * t.cav_a + 6.0, t.spine_v - 14.0


def lung_shared_sdf(t: Thorax, u: Array, v: Array, w: Array, d_cav: Array | None = None) -> Array:
    """The part of both lungs' signed distance shared by the two sides (cage, heart, spine, aorta, diaphragm)."""
    d = (cavity_sdf(t, u, v, w) if d_cav is None else d_cav) + 1.0
    d = np.maximum(d, -(heart_sdf(t, u, v, w) - 5.0))
    d = np.maximum(d, -(spine_sdf(t, u, v) - 4.0))
    ax, av = desc_aorta_center(t)
    aorta = ellipse_sdf(u, v, ax, av, t.aorta_r + 3, t.aorta_r + 3)
    d = np.maximum(d, np.where(w < t.carina_w + 25, -aorta, -1e3))
    return np.maximum(d, (dome_w(t, u, v) - w) * 0.7)


def lung_side_sdf(t: Thorax, u: Array, v: Array, w: Array, side: int) -> Array:
    """The side-specific part of a lung's signed distance: apex cap and mediastinal border."""
    sgn = -1.0 if side == RIGHT else 1.0
    cap_c = np.array([sgn * 0.45 * t.cav_a, 0.15 * t.cav_b_post, 0.35 * t.lung_top])
    radii = np.array([0.75 * t.cav_a, 1.1 * t.cav_b_post, 0.65 * t.lung_top])
    cap = rotated_ellipsoid_sdf(u, v, w, cap_c, np.eye(3), radii)
    mw = t.med_ant + (t.med_mid - t.med_ant) / (1.0 + np.exp(-(v + 0.45 * t.cav_b_ant) / 12.0))
    return np.maximum(cap, mw - sgn * u)


def lung_sdf(t: Thorax, x: Array, y: Array, z: Array, side: int) -> Array:
    """Signed distance (mm, negative inside) to the right (``side=1``) or left (``side=2``) lung.

    Works on broadcastable world LPS arrays (grid slices or point lists).
    """
    u, v, w = t.uvw(x, y, z)
    return np.maximum(lung_shared_sdf(t, u, v, w), lung_side_sdf(t, u, v, w, side))
