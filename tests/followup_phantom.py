"""Analytic chest phantom for the follow-up tests: the same anatomy sampled on two grids under a known map."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

LUNG_CENTERS = ((-38.0, 0.0, 0.0), (38.0, 0.0, 0.0))
LUNG_AXES = (28.0, 42.0, 48.0)


def _inside(points: np.ndarray, center, axes, edge_mm: float = 0.8) -> np.ndarray:
    """Soft indicator (0..1) of an ellipsoid; ``points`` ``[n, 3]`` LPS mm."""
    rel = (points - np.asarray(center)) / np.asarray(axes)
    s = np.sqrt((rel**2).sum(axis=1))
    return 1.0 / (1.0 + np.exp(-(1.0 - s) * float(np.mean(axes)) / edge_mm))


def blobs(seed: int = 3, n: int = 60) -> list[tuple[tuple[float, float, float], float, float]]:
    """Random spheres (centre LPS mm, radius mm, HU) inside the lungs: vessels for the registration to see."""
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n:
        side = LUNG_CENTERS[len(out) % 2]
        p = np.asarray(side) + rng.uniform(-1, 1, 3) * np.asarray(LUNG_AXES) * 0.8
        if float(_inside(p[None], side, LUNG_AXES)[0]) > 0.99:
            out.append(
                (tuple(float(v) for v in p), float(rng.uniform(1.5, 4.0)), float(rng.uniform(-100, 80)))
            )
    return out


def anatomy(points: np.ndarray, nodules=(), seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """(HU, lung indicator) of the phantom at ``[n, 3]`` LPS points (mm)."""
    hu = -1000.0 + 1040.0 * _inside(points, (0, 0, 0), (80, 62, 72))
    lung = np.zeros(len(points))
    for c in LUNG_CENTERS:
        w = _inside(points, c, LUNG_AXES)
        hu += (-860.0 - 40.0) * w
        lung = np.maximum(lung, w)
    hu += 360.0 * _inside(points, (0.0, 48.0, 0.0), (12, 12, 80))  # spine
    hu += 30.0 * _inside(points, (8.0, -25.0, -25.0), (20, 18, 22))  # heart
    for center, radius, value in [*blobs(seed), *nodules]:
        w = _inside(points, center, (radius,) * 3, edge_mm=0.5)
        hu += (value - (-860.0)) * w * lung
    return hu, lung


def grid(size, spacing, direction=(1, 0, 0, 0, 1, 0, 0, 0, 1), center=(0.0, 0.0, 0.0)) -> sitk.Image:
    """An empty image of ``size`` (x, y, z) centred on ``center`` (LPS mm)."""
    image = sitk.Image([int(v) for v in size], sitk.sitkFloat32)
    image.SetSpacing([float(v) for v in spacing])
    image.SetDirection([float(v) for v in direction])
    d = np.asarray(direction, float).reshape(3, 3)
    half = d @ ((np.asarray(size) - 1) * np.asarray(spacing) / 2)
    image.SetOrigin([float(v) for v in np.asarray(center) - half])
    return image


def world_points(image: sitk.Image) -> np.ndarray:
    """LPS mm of every voxel, ``[n, 3]`` in the order of ``GetArrayFromImage(image).ravel()`` ([z, y, x])."""
    size = image.GetSize()
    k, j, i = np.meshgrid(*(np.arange(n) for n in size[::-1]), indexing="ij")
    index = np.stack([i.ravel(), j.ravel(), k.ravel()], axis=1).astype(float)
    d = np.asarray(image.GetDirection()).reshape(3, 3)
    return (index * np.asarray(image.GetSpacing())) @ d.T + np.asarray(image.GetOrigin())


def render(template: sitk.Image, to_anatomy, *, nodules=(), noise_hu: float = 15.0, seed: int = 0):
    """Scan and lung mask on ``template``'s grid; ``to_anatomy`` maps its LPS points to the phantom frame."""
    points = to_anatomy(world_points(template))
    hu, lung = anatomy(points, nodules)
    hu = hu + np.random.default_rng(seed).normal(0, noise_hu, hu.shape)
    shape = template.GetSize()[::-1]
    scan = sitk.GetImageFromArray(hu.reshape(shape).astype(np.int16))
    mask = sitk.GetImageFromArray((lung > 0.5).reshape(shape).astype(np.uint8))
    for image in (scan, mask):
        image.CopyInformation(template)
    return scan, mask


def rotation(deg_x: float, deg_y: float, deg_z: float) -> np.ndarray:
    ax, ay, az = np.radians([deg_x, deg_y, deg_z])
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx
