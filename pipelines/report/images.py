"""PNG figures for the case report: per-nodule orthogonal crops and a coronal lung MIP.

All volumes are on the canonical grid of ``CONTRIBUTING.md``: numpy ``[z, y, x]`` with x toward patient
Left, y toward Posterior, z toward Superior; spacings are ``spacing_zyx`` in mm. Figures follow the
radiological display convention:

* axial: rows = y (anterior at the top), columns = x (patient right on the image left);
* coronal: rows = z flipped (superior at the top), columns = x (patient right on the image left);
* sagittal: rows = z flipped (superior at the top), columns = y (anterior on the image left).

Pixels are drawn with their physical size (matplotlib ``extent`` in mm), so anisotropic voxels keep the
true aspect ratio. Rendering uses matplotlib's object API with the Agg canvas (no pyplot global state),
so it is safe in worker threads and on headless machines.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib import patheffects
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Circle, Rectangle

from pipelines.imaging.volumes import CroppedVolume

LUNG_WINDOW = (1500.0, -600.0)  # (width, level) HU
SOFT_TISSUE_WINDOW = (400.0, 40.0)
MIP_WINDOW = (1600.0, -200.0)  # wider than the lung window: projected vessels do not saturate
AIR_HU = -1024.0
PROBABILITY_FLOOR = 0.1  # probabilities below this are not painted
HEAT_CMAP = "turbo"
HEAT_ALPHA = 0.5
CONTOUR_COLOR = "#ff2bd6"  # magenta: not in the turbo heat map
OTHER_CONTOUR_COLOR = "#ffffff"
#: Bright marker colours per Lung-RADS category, readable on a dark CT background.
MARKER_COLORS = {"0": "#b0bec5", "1": "#00e676", "2": "#00e676", "3": "#ffea00", "4A": "#ff9100"}
MARKER_COLORS.update({"4B": "#ff1744", "4X": "#ff1744"})
DPI = 100
#: Height (pixels of the PNG) of the digits that number the circles of the MIP, drawn with a dark outline.
MARKER_DIGIT_PX = 16.0
_DIGIT_HEIGHT_EM = 0.73  # a DejaVu Sans digit is about 0.73 em tall
MARKER_FONT_PT = MARKER_DIGIT_PX / _DIGIT_HEIGHT_EM * 72.0 / DPI


@dataclass(frozen=True)
class View:
    """One 2D display image (already in display orientation) and how to draw it.

    Attributes:
        name: ``axial``, ``coronal`` or ``sagittal``.
        rows_mm: physical size of one pixel along the rows (vertical), mm.
        cols_mm: physical size of one pixel along the columns (horizontal), mm.
        edges: orientation letters at (top, bottom, left, right).
    """

    name: str
    rows_mm: float
    cols_mm: float
    edges: tuple[str, str, str, str]


def window_limits(window: tuple[float, float]) -> tuple[float, float]:
    """``(vmin, vmax)`` in HU for a ``(width, level)`` window."""
    width, level = window
    return level - width / 2.0, level + width / 2.0


def padded_box(
    volume_zyx: np.ndarray | CroppedVolume,
    center_zyx: Sequence[int],
    half_zyx: Sequence[int],
    *,
    fill: float,
) -> np.ndarray:
    """Box of shape ``2 * half + 1`` per axis centred on ``center_zyx``; outside voxels get ``fill``.

    Args:
        volume_zyx: 3D array ``[z, y, x]``, or a :class:`~pipelines.imaging.volumes.CroppedVolume` (zero outside its
            box; read from the box alone when ``fill`` is that zero).
        center_zyx: voxel index of the box centre (may lie near or outside the border).
        half_zyx: half size of the box in voxels per axis.
        fill: value for voxels outside the volume (e.g. -1024 HU for air, 0 for masks).
    """
    if isinstance(volume_zyx, CroppedVolume):
        if fill != 0:
            return padded_box(volume_zyx.full(), center_zyx, half_zyx, fill=fill)
        # zero outside the crop and zero outside the volume: the box in the crop's own indices
        shifted = [int(c) - s for c, s in zip(center_zyx, volume_zyx.start, strict=True)]
        return padded_box(volume_zyx.data, shifted, half_zyx, fill=fill)
    shape = tuple(2 * int(h) + 1 for h in half_zyx)
    box = np.full(shape, fill, dtype=volume_zyx.dtype)
    src, dst = [], []
    for c, h, n in zip(center_zyx, half_zyx, volume_zyx.shape):
        lo, hi = int(c) - int(h), int(c) + int(h) + 1
        s0, s1 = max(lo, 0), min(hi, n)
        if s1 <= s0:
            return box
        src.append(slice(s0, s1))
        dst.append(slice(s0 - lo, s1 - lo))
    box[tuple(dst)] = volume_zyx[tuple(src)]
    return box


def orthogonal_views(box_zyx: np.ndarray, spacing_zyx: Sequence[float]) -> list[tuple[View, np.ndarray]]:
    """Axial, coronal and sagittal planes through the centre of a box, in display orientation."""
    hz, hy, hx = (s // 2 for s in box_zyx.shape)
    sz, sy, sx = (float(s) for s in spacing_zyx)
    return [
        (View("axial", sy, sx, ("A", "P", "R", "L")), box_zyx[hz]),
        (View("coronal", sz, sx, ("S", "I", "R", "L")), box_zyx[:, hy, :][::-1]),
        (View("sagittal", sz, sy, ("S", "I", "A", "P")), box_zyx[:, :, hx][::-1]),
    ]


def _extent(image: np.ndarray, view: View) -> tuple[float, float, float, float]:
    return (0.0, image.shape[1] * view.cols_mm, image.shape[0] * view.rows_mm, 0.0)


def _pixel_centres(image: np.ndarray, view: View) -> tuple[np.ndarray, np.ndarray]:
    cols = (np.arange(image.shape[1]) + 0.5) * view.cols_mm
    rows = (np.arange(image.shape[0]) + 0.5) * view.rows_mm
    return np.meshgrid(cols, rows)


def _draw_edges(ax: Axes, view: View) -> None:
    style: dict[str, Any] = {
        "color": "#ffd400",
        "fontsize": 8,
        "fontweight": "bold",
        "transform": ax.transAxes,
    }
    top, bottom, left, right = view.edges
    ax.text(0.5, 0.98, top, ha="center", va="top", **style)
    ax.text(0.5, 0.02, bottom, ha="center", va="bottom", **style)
    ax.text(0.02, 0.5, left, ha="left", va="center", **style)
    ax.text(0.98, 0.5, right, ha="right", va="center", **style)


def _draw_scale_bar(ax: Axes, image: np.ndarray, view: View, *, length_mm: float = 10.0) -> None:
    width_mm = image.shape[1] * view.cols_mm
    height_mm = image.shape[0] * view.rows_mm
    x0, y0 = 0.06 * width_mm, 0.90 * height_mm
    ax.plot([x0, x0 + length_mm], [y0, y0], color="white", linewidth=2)
    ax.text(
        x0 + length_mm / 2,
        y0 - 0.02 * height_mm,
        f"{length_mm:g} mm",
        color="white",
        fontsize=7,
        ha="center",
        va="bottom",
    )


def draw_view(
    ax: Axes,
    view: View,
    hu: np.ndarray,
    *,
    window: tuple[float, float],
    title: str,
    mask: np.ndarray | None = None,
    other_mask: np.ndarray | None = None,
    probability: np.ndarray | None = None,
) -> Any:
    """Draw one HU plane with optional nodule contour, other-nodule contour and probability heat map.

    Returns the heat-map image artist (for a colour bar) or ``None``.
    """
    vmin, vmax = window_limits(window)
    extent = _extent(hu, view)
    ax.imshow(hu, cmap="gray", vmin=vmin, vmax=vmax, extent=extent, interpolation="bilinear")
    heat = None
    if probability is not None:
        painted = np.ma.masked_less(probability.astype(np.float32), PROBABILITY_FLOOR)
        heat = ax.imshow(
            painted,
            cmap=HEAT_CMAP,
            norm=Normalize(0.0, 1.0),
            alpha=HEAT_ALPHA,
            extent=extent,
            interpolation="nearest",
        )
    xx, yy = _pixel_centres(hu, view)
    if other_mask is not None and other_mask.any():
        ax.contour(
            xx,
            yy,
            other_mask.astype(np.float32),
            levels=[0.5],
            colors=OTHER_CONTOUR_COLOR,
            linewidths=0.8,
            linestyles="dashed",
        )
    if mask is not None and mask.any():
        ax.contour(xx, yy, mask.astype(np.float32), levels=[0.5], colors=CONTOUR_COLOR, linewidths=1.2)
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])
    _draw_edges(ax, view)
    return heat


def figure_png(fig: Figure) -> bytes:
    """Render a matplotlib figure with the Agg canvas to PNG bytes."""
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    # zlib level 1: 2.6x faster to encode than PIL's default 6 on our report figures, files 15 % bigger
    fig.savefig(
        buffer, format="png", dpi=DPI, facecolor=fig.get_facecolor(), pil_kwargs={"compress_level": 1}
    )
    return buffer.getvalue()


def crop_half_voxels(
    nodule: Mapping[str, Any],
    spacing_zyx: Sequence[float],
    *,
    min_fov_mm: float = 40.0,
    max_fov_mm: float = 120.0,
) -> tuple[int, int, int]:
    """Half box size in voxels per axis: a cube of ``3 x long axis`` mm, within ``[min_fov_mm, max_fov_mm]``.

    The upper bound keeps memory and figure size bounded for masses and for implausible long axes.
    """
    long_axis = _finite(nodule.get("long_axis_mm")) or _finite(nodule.get("diameter_mm")) or 0.0
    half_mm = min(max_fov_mm, max(min_fov_mm, 3.0 * long_axis)) / 2.0
    return tuple(max(1, math.ceil(half_mm / float(s))) for s in spacing_zyx)  # type: ignore[return-value]


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _overview_axial(
    ax: Axes,
    hu_slice_yx: np.ndarray,
    spacing_zyx: Sequence[float],
    center_zyx: Sequence[int],
    half: Sequence[int],
) -> None:
    view = View("axial", float(spacing_zyx[1]), float(spacing_zyx[2]), ("A", "P", "R", "L"))
    draw_view(ax, view, hu_slice_yx, window=LUNG_WINDOW, title="Axial overview")
    y0 = (center_zyx[1] - half[1]) * view.rows_mm
    x0 = (center_zyx[2] - half[2]) * view.cols_mm
    box = Rectangle(
        (x0, y0),
        (2 * half[2] + 1) * view.cols_mm,
        (2 * half[1] + 1) * view.rows_mm,
        fill=False,
        edgecolor=CONTOUR_COLOR,
        linewidth=1.0,
    )
    ax.add_patch(box)


def nodule_figure_png(
    *,
    hu_zyx: np.ndarray,
    spacing_zyx: Sequence[float],
    nodule_mask_zyx: np.ndarray,
    probability_zyx: np.ndarray | CroppedVolume | None,
    label: int,
    center_zyx: Sequence[int],
    half_zyx: Sequence[int],
    heading: str,
) -> bytes:
    """One row of panels for a nodule, as PNG bytes.

    Panels: axial overview with the crop box; axial lung window (plain, with a 10 mm bar); axial, coronal
    and sagittal lung window (W1500/L-600) with the nodule contour (magenta), other nodules (white dashed)
    and the probability heat map; axial soft-tissue window (W400/L40) with the contour.

    Args:
        hu_zyx: CT in HU, ``[z, y, x]`` canonical LPS grid.
        spacing_zyx: voxel spacing in mm, array-axis order.
        nodule_mask_zyx: instance labels ``[z, y, x]`` (0 background).
        probability_zyx: network probability in [0, 1] ``[z, y, x]``, or ``None``.
        label: the instance label of this nodule in ``nodule_mask_zyx``.
        center_zyx: voxel index of the crop centre.
        half_zyx: half crop size in voxels per axis (see :func:`crop_half_voxels`).
        heading: figure title.
    """
    hu_box = padded_box(hu_zyx, center_zyx, half_zyx, fill=AIR_HU)
    lab_box = padded_box(nodule_mask_zyx, center_zyx, half_zyx, fill=0)
    prob_box = None if probability_zyx is None else padded_box(probability_zyx, center_zyx, half_zyx, fill=0)
    views = orthogonal_views(hu_box, spacing_zyx)
    labels = orthogonal_views(lab_box, spacing_zyx)
    probs = orthogonal_views(prob_box, spacing_zyx) if prob_box is not None else [None] * 3

    fig = Figure(figsize=(13.0, 2.75), facecolor="white")
    axes = fig.subplots(1, 6, gridspec_kw={"wspace": 0.06})
    fig.subplots_adjust(left=0.005, right=0.94, top=0.80, bottom=0.02)
    fig.suptitle(heading, fontsize=10, fontweight="bold", x=0.01, ha="left")
    cz = int(np.clip(center_zyx[0], 0, hu_zyx.shape[0] - 1))
    _overview_axial(axes[0], hu_zyx[cz], spacing_zyx, center_zyx, half_zyx)
    axial_view, axial_hu = views[0]
    draw_view(axes[1], axial_view, axial_hu, window=LUNG_WINDOW, title="Axial W1500/L-600")
    _draw_scale_bar(axes[1], axial_hu, axial_view)
    heat = None
    for ax, (view, hu), (_, lab), prob in zip(axes[2:5], views, labels, probs):
        p = None if prob is None else prob[1]
        title = f"{view.name.capitalize()} + mask" + (" + network output" if p is not None else "")
        heat = (
            draw_view(
                ax,
                view,
                hu,
                window=LUNG_WINDOW,
                title=title,
                mask=lab == label,
                other_mask=(lab > 0) & (lab != label),
                probability=p,
            )
            or heat
        )
    draw_view(
        axes[5],
        axial_view,
        axial_hu,
        window=SOFT_TISSUE_WINDOW,
        title="Axial W400/L40 (density)",
        mask=labels[0][1] == label,
    )
    if heat is not None:
        cax = fig.add_axes((0.948, 0.08, 0.008, 0.66))
        bar = fig.colorbar(heat, cax=cax)
        bar.ax.tick_params(labelsize=7)
        bar.set_label("network output (not calibrated)", fontsize=7)
    return figure_png(fig)


def lung_mip_coronal(hu_zyx: np.ndarray, region_zyx: np.ndarray | None, *, chunk: int = 16) -> np.ndarray:
    """Maximum-intensity projection along y (anterior-posterior) of the HU inside ``region_zyx``.

    Voxels outside the region count as air, so ribs and spine do not hide the lung vessels. Memory is
    bounded by processing ``chunk`` slices at a time.

    Returns:
        ``[z, x]`` array in HU (z ascending, i.e. not yet flipped for display).
    """
    out = np.empty((hu_zyx.shape[0], hu_zyx.shape[2]), dtype=np.float32)
    for z0 in range(0, hu_zyx.shape[0], chunk):
        block = hu_zyx[z0 : z0 + chunk].astype(np.float32)
        if region_zyx is not None:
            block = np.where(region_zyx[z0 : z0 + chunk], block, AIR_HU)
        out[z0 : z0 + chunk] = block.max(axis=1)
    return out


def _region_bounds(region_zx: np.ndarray, margin: int) -> tuple[slice, slice]:
    zs, xs = np.nonzero(region_zx)
    if zs.size == 0:
        return slice(None), slice(None)
    z0, z1 = max(zs.min() - margin, 0), min(zs.max() + margin + 1, region_zx.shape[0])
    x0, x1 = max(xs.min() - margin, 0), min(xs.max() + margin + 1, region_zx.shape[1])
    return slice(int(z0), int(z1)), slice(int(x0), int(x1))


def _draw_markers(
    ax: Axes,
    markers: Sequence[Mapping[str, Any]],
    *,
    origin_zx: tuple[int, int],
    spacing_zx: tuple[float, float],
    extent_mm: tuple[float, float],
) -> None:
    """Numbered circles on a coronal display whose top row is z = ``origin_zx[0] - 1``, left column x = ``origin_zx[1]``.

    The axes grow so that every circle and its number stay visible.
    """
    top_z, left_x = origin_zx
    sz, sx = spacing_zx
    bounds = [0.0, extent_mm[0], extent_mm[1], 0.0]
    for marker in markers:
        z, _, x = marker["center_zyx"]
        cx, cy = (x - left_x + 0.5) * sx, (top_z - 1 - z + 0.5) * sz
        color = MARKER_COLORS.get(str(marker.get("category")), "#00e5ff")
        radius = max(float(marker.get("radius_mm", 5.0)), 4.0)
        ax.add_patch(Circle((cx, cy), radius, fill=False, edgecolor=color, linewidth=2.0))
        ax.text(
            cx + radius * 0.75,
            cy - radius * 0.75,
            str(marker["number"]),
            color=color,
            fontsize=MARKER_FONT_PT,
            fontweight="bold",
            path_effects=[patheffects.withStroke(linewidth=3.5, foreground="black")],
            gid="marker-label",
        )
        reach = radius + 14.0
        bounds = [
            min(bounds[0], cx - reach),
            max(bounds[1], cx + reach),
            max(bounds[2], cy + reach),
            min(bounds[3], cy - reach),
        ]
    ax.set_xlim(bounds[0], bounds[1])
    ax.set_ylim(bounds[2], bounds[3])


def mip_figure_png(
    *,
    hu_zyx: np.ndarray,
    spacing_zyx: Sequence[float],
    lung_mask_zyx: np.ndarray | None,
    nodule_mask_zyx: np.ndarray,
    markers: Sequence[Mapping[str, Any]],
) -> tuple[bytes, str]:
    """Coronal lung MIP with every nodule circled and numbered, as PNG bytes plus a caption.

    Args:
        hu_zyx: CT in HU, ``[z, y, x]`` canonical LPS grid.
        spacing_zyx: voxel spacing in mm, array-axis order.
        lung_mask_zyx: lung labels (0 background); the MIP is restricted to lungs plus nodules. When it is
            ``None`` or empty, the whole volume is projected.
        nodule_mask_zyx: nodule instance labels ``[z, y, x]``.
        markers: one dict per nodule with ``number`` (shown), ``center_zyx`` (voxel index),
            ``radius_mm`` and ``category`` (Lung-RADS, for the colour).
    """
    region = None
    if lung_mask_zyx is not None and lung_mask_zyx.any():
        region = (lung_mask_zyx > 0) | (nodule_mask_zyx > 0)
    mip_zx = lung_mip_coronal(hu_zyx, region)
    region_zx: np.ndarray = np.ones(mip_zx.shape, bool) if region is None else np.any(region, axis=1)
    zsl, xsl = _region_bounds(region_zx, margin=8)
    shown = mip_zx[zsl, xsl][::-1]
    sz, sx = float(spacing_zyx[0]), float(spacing_zyx[2])
    view = View("coronal", sz, sx, ("S", "I", "R", "L"))
    height_mm, width_mm = shown.shape[0] * sz, shown.shape[1] * sx
    fig_w = 5.6
    fig_h = float(np.clip(fig_w * height_mm / max(width_mm, 1e-6), 2.5, 9.0)) + 0.4
    fig = Figure(figsize=(fig_w, fig_h), facecolor="white")
    ax = fig.add_axes((0.01, 0.01, 0.98, 0.98 - 0.4 / fig_h))
    ax.set_aspect("equal")
    title = f"Coronal maximum-intensity projection (lungs), W{MIP_WINDOW[0]:.0f}/L{MIP_WINDOW[1]:.0f}"
    draw_view(ax, view, shown, window=MIP_WINDOW, title=title)
    ax.set_facecolor("black")
    origin_zx = (zsl.stop if zsl.stop is not None else mip_zx.shape[0], xsl.start or 0)
    _draw_markers(ax, markers, origin_zx=origin_zx, spacing_zx=(sz, sx), extent_mm=(width_mm, height_mm))
    caption = (
        "Projection over the lung mask (voxels outside it count as air)"
        if region is not None
        else "Projection over the whole volume (no lung mask)"
    )
    return figure_png(fig), caption
