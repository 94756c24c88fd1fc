"""Pulmonary vessel and airway trees of the synthetic chest CT.

Trees grow by recursive territory splitting: each branch owns a cloud of points sampled uniformly inside
its lung; it runs part of the way toward the cloud's centroid, then splits the cloud in two along its
principal axis, and each child gets a radius from Murray's law (``r^3 = r1^3 + r2^3``, flow proportional to
territory). This fills the lung with tapering, branching tubes from the hilum to ~0.5 mm at the periphery,
which is what makes vessels in cross-section the main nodule mimic. Arteries and veins are separate trees;
bronchi run alongside the larger arteries. All positions are LPS world millimetres.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipelines.phantom.anatomy import LEFT, RIGHT, Thorax, lung_sdf
from pipelines.phantom.shapes import Array, Grid, rasterize_tubes


@dataclass
class Tree:
    """Tube segments of one or more trees.

    Attributes:
        starts, ends: ``[n, 3]`` LPS world points (mm).
        r0, r1: ``[n]`` radii (mm) at the start and end of each segment.
        off0, off1: ``[n, 3]`` unit vectors perpendicular to the segment at each end (where a bronchus runs).
    """

    starts: Array
    ends: Array
    r0: Array
    r1: Array
    off0: Array
    off1: Array

    @staticmethod
    def concat(trees: list[Tree]) -> Tree:
        return Tree(
            *(
                np.concatenate([getattr(t, f) for t in trees])
                for f in ("starts", "ends", "r0", "r1", "off0", "off1")
            )
        )


def sample_lung_points(
    t: Thorax, side: int, n: int, rng: np.random.Generator, *, margin: float = 3.0
) -> Array:
    """``n`` points (``[n, 3]`` LPS mm) uniformly inside one lung, at least ``margin`` mm from its surface."""
    lo = np.array([t.cx - t.cav_a, t.cy - t.cav_b_ant, t.cz - t.recess - 10])
    hi = np.array([t.cx + t.cav_a, t.cy + t.cav_b_post, t.cz + t.lung_top + 5])
    if side == RIGHT:
        hi[0] = t.cx
    else:
        lo[0] = t.cx
    out: list[Array] = []
    got = 0
    for _ in range(50):
        p = rng.uniform(lo, hi, size=(4 * n, 3))
        keep = p[lung_sdf(t, p[:, 0], p[:, 1], p[:, 2], side) < -margin]
        out.append(keep)
        got += len(keep)
        if got >= n:
            break
    return np.concatenate(out)[:n]


def grow_tree(root: Array, points: Array, r_root: float, rng: np.random.Generator, *, leaf: int = 1) -> Tree:
    """Grow one tree from ``root`` (LPS mm) that supplies ``points`` (``[n, 3]``); see the module docstring."""
    starts, ends, r0s, r1s, off0, off1 = [], [], [], [], [], []
    ref = rng.normal(size=3)
    ref /= np.linalg.norm(ref)
    first_off = np.cross(points.mean(0) - root, ref)
    stack = [
        (
            root.astype(np.float64),
            np.arange(len(points)),
            float(r_root),
            first_off / (np.linalg.norm(first_off) + 1e-9),
        )
    ]
    while stack:
        p, idx, r, o_in = stack.pop()
        pts = points[idx]
        c = pts.mean(0)
        tip = len(idx) <= leaf
        q = c if tip else p + rng.uniform(0.3, 0.6) * (c - p)
        d = q - p
        length = float(np.linalg.norm(d))
        if length < 1e-3:
            continue
        o = np.cross(d, ref)
        o /= np.linalg.norm(o) + 1e-9
        starts.append(p)
        ends.append(q)
        r0s.append(r)
        r1s.append(r * (0.75 if tip else 0.97))
        off0.append(o_in)
        off1.append(o)
        if tip:
            continue
        centred = pts - c
        axis = np.linalg.eigh(centred.T @ centred)[1][:, -1]
        proj = centred @ axis
        cut = np.quantile(proj, rng.uniform(0.3, 0.7))
        left = idx[proj <= cut]
        right = idx[proj > cut]
        for part in (left, right):
            if len(part):
                stack.append((q, part, r * (len(part) / len(idx)) ** (1 / 3), o))
    return Tree(
        np.array(starts), np.array(ends), np.array(r0s), np.array(r1s), np.array(off0), np.array(off1)
    )


def hilum_points(t: Thorax, side: int) -> dict[str, Array]:
    """Roots (LPS mm) of the pulmonary artery, the two pulmonary veins and the main bronchus of one lung."""
    sgn = -1.0 if side == RIGHT else 1.0
    base = np.array([t.cx, t.cy, t.cz])
    drop = 0.0 if side == RIGHT else 8.0
    la_w = t.heart_c[2] + 38.0
    return {
        "artery": base + [sgn * (t.med_mid + 10), t.spine_v - 48, t.carina_w - 18 + drop],
        "vein_sup": base + [sgn * (t.med_mid + 6), t.spine_v - 52, la_w + 14],
        "vein_inf": base + [sgn * (t.med_mid + 4), t.spine_v - 40, la_w - 8],
        "bronchus": base + [sgn * (t.med_mid + 8), t.spine_v - 36, t.carina_w - 22 - 1.5 * drop],
    }


def build_vessels(t: Thorax, rng: np.random.Generator, *, n_points: int) -> tuple[Tree, Tree, Tree]:
    """Arterial tree, venous tree and mediastinal trunks (pulmonary arteries, main bronchi) of both lungs.

    Returns:
        ``(arteries, veins, bronchi)`` where ``bronchi`` holds airway centrelines with their lumen radii.
    """
    arts, veins, bronchi = [], [], []
    base = np.array([t.cx, t.cy, t.cz])
    carina = base + [-3.0, t.spine_v - 26 - t.trachea_r, t.carina_w]
    pa_bif = base + [6.0, t.spine_v - 62, t.carina_w - 12]
    for side in (RIGHT, LEFT):
        roots = hilum_points(t, side)
        pts = sample_lung_points(t, side, n_points, rng)
        n_side = len(pts)
        r_art = rng.uniform(6.0, 8.0) * (n_side / 3000) ** (1 / 3) * 1.0
        art = grow_tree(roots["artery"], pts, r_art, rng)
        arts.append(art)
        arts.append(_tube([pa_bif, roots["artery"]], [10.0, r_art]))
        vpts = sample_lung_points(t, side, n_points, rng)
        upper = vpts[:, 2] > roots["vein_sup"][2] - 30
        for key, sel in (("vein_sup", upper), ("vein_inf", ~upper)):
            if sel.sum() > 4:
                veins.append(grow_tree(roots[key], vpts[sel], r_art * (sel.mean()) ** (1 / 3), rng))
        main = _tube([carina, roots["bronchus"]], [0.75 * t.trachea_r, 0.6 * t.trachea_r])
        bronchi.append(main)
        bronchi.append(_bronchi_along(art, roots["bronchus"], min_r=1.0))
    return Tree.concat(arts), Tree.concat(veins), Tree.concat(bronchi)


def _tube(points: list[Array], radii: list[float]) -> Tree:
    p = np.asarray(points, dtype=np.float64)
    r = np.asarray(radii, dtype=np.float64)
    z = np.zeros((len(p) - 1, 3))
    return Tree(p[:-1], p[1:], r[:-1], r[1:], z, z)


def _bronchi_along(art: Tree, root: Array, *, min_r: float) -> Tree:
    """Airway segments beside every artery segment thicker than ``min_r`` mm (lumen ~ artery radius)."""
    keep = art.r0 >= min_r
    gap0 = (art.r0 * 1.9 + 0.6)[keep, None]
    gap1 = (art.r1 * 1.9 + 0.6)[keep, None]
    starts = art.starts[keep] + art.off0[keep] * gap0
    ends = art.ends[keep] + art.off1[keep] * gap1
    if len(starts):
        starts[0] = root
    return Tree(starts, ends, art.r0[keep] * 0.85, art.r1[keep] * 0.85, art.off0[keep], art.off1[keep])


def paint_trees(
    hu: Array, grid: Grid, t: Thorax, arteries: Tree, veins: Tree, bronchi: Tree
) -> tuple[Array, Array]:
    """Paint vessels (blood HU) and airways (air lumen with a soft-tissue wall) into ``hu`` in place.

    Args:
        hu: float32 ``[z, y, x]`` HU volume on ``grid``.

    Returns:
        ``(vessel_fraction, airway_fraction)`` float32 volumes (lumen occupancy), for labels and placement.
    """
    wall = np.zeros(grid.shape_zyx, dtype=np.float32)
    lumen = np.zeros(grid.shape_zyx, dtype=np.float32)
    wall_t = 0.25 * bronchi.r0 + 0.4
    rasterize_tubes(
        wall, grid, bronchi.starts, bronchi.ends, bronchi.r0 + wall_t, bronchi.r1 + 0.25 * bronchi.r1 + 0.4
    )
    rasterize_tubes(lumen, grid, bronchi.starts, bronchi.ends, bronchi.r0, bronchi.r1, min_visible=0.2)
    hu += wall * (t.hu["muscle"] - 20 - hu)
    hu += lumen * (-1000.0 - hu)
    vessels = wall
    vessels[:] = 0.0
    tree = Tree.concat([arteries, veins])
    rasterize_tubes(vessels, grid, tree.starts, tree.ends, tree.r0, tree.r1)
    blood = t.hu["blood"] if t.contrast else t.hu["blood"] + 5.0
    hu += vessels * (blood - hu)
    return vessels, lumen
