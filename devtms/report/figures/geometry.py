"""Pictures of an instance's weights: the k-gon (m = 2) or W^T W with feature norms (m > 2),
one instance at a time (`kgon_axes`, `gram_axes`) or every condition's end (`final_geometry_grid`).

A `Snapshot` is the weights of one instance at one checkpoint, with a caption of what happened
there (devtms.report.snapshots makes them).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.patches import Polygon
from matplotlib.path import Path
from matplotlib.textpath import TextPath

from devtms import geometry as geo
from devtms.report.figures.layout import Margins, Panel, grid_figure, grid_shape, grid_title, hide_unused
from devtms.report.figures.style import (
    BIAS_COLOR,
    DIVERGED_COLOR,
    feature_colors,
    style,
    styled,
    title_color,
)


@dataclass
class Snapshot:
    """The weights of one instance at one step, with what happened there."""

    step: int
    W: np.ndarray  # (m, n)
    b: np.ndarray | None  # (n,)
    caption: str  # e.g. "loss drop; k-gon 4 -> 5"


def snapshot_radius(snaps: list[Snapshot]) -> float:
    """A common half-width for the k-gon pictures of these snapshots (their longest W_i, +30%)."""
    norms = [np.linalg.norm(s.W, axis=0).max() for s in snaps if np.all(np.isfinite(s.W))]
    return 1.3 * max(max(norms, default=1.0), 1e-3)


def kgon_axes(ax: Axes, W: np.ndarray, b: np.ndarray | None, color: str, radius: float) -> str:
    """Draw an m = 2 instance on axes of its own (see `draw_kgon`). -> its k-gon label"""
    return kgon_row_axes(ax, [Snapshot(0, W, b, "")], color, radius, pitch=0.0)[0]


def kgon_row_axes(ax: Axes, snaps: list[Snapshot], color: str, radius: float, pitch: float
                  ) -> list[str]:
    """Draw snapshots side by side on one axes, `pitch` data units apart, the first at x = 0.

    One axes for a row instead of one per snapshot: a dozen little axes, each with its own
    ticks, spines and title slots to lay out, took 15% of a condition figure's time.
    The caller sizes the axes to the row: (len(snaps) - 1) pitch + 2 radius wide, 2 radius high,
    at equal aspect. -> the snapshots' k-gon labels
    """
    _bare_square(ax, (-radius, (len(snaps) - 1) * pitch + radius), radius)
    glyphs: list[Glyph] = []
    labels = [draw_kgon(ax, s.W, s.b, color, radius, glyphs, center=c * pitch)
              for c, s in enumerate(snaps)]
    draw_glyphs(ax, glyphs)
    return labels


def _bare_square(ax: Axes, xlim: tuple[float, float], radius: float) -> None:
    """Equal aspect, y from -radius to radius, no ticks, grid or spines."""
    ax.set_aspect("equal")
    ax.set_xlim(*xlim)
    ax.set_ylim(-radius, radius)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    for s in ax.spines.values():
        s.set_visible(False)


def draw_kgon(ax: Axes, W: np.ndarray, b: np.ndarray | None, color: str, radius: float,
              glyphs: list[Glyph], center: float = 0.0) -> str:
    """Draw an m = 2 instance centred at (center, 0): its k-gon, its feature vectors, the
    off-polygon bias marks (devtms.geometry.bias_mark: +, − or o, circled), faint axes
    `radius` long and, for n <= 12, each W_i's index beyond its tip. The
    marks' and numbers' characters are appended to `glyphs` for `draw_glyphs`.

    W: (2, n), b: (n,) or None. Returns the k-gon label ("5+", "3ooo"). Vertices come from
    devtms.geometry.kgon.
    """
    n = W.shape[1]
    ax.plot([center - radius, center + radius, np.nan, center, center],
            [0, 0, np.nan, -radius, radius], color="#e6e6e6", lw=0.6, zorder=0)
    if not np.all(np.isfinite(W)):
        ax.text(center, 0, "non-finite\nweights", ha="center", va="center",
                color=DIVERGED_COLOR)
        return "diverged"
    Wt = torch.as_tensor(W, dtype=torch.float64)[None]
    bt = None if b is None else torch.as_tensor(b, dtype=torch.float64)[None]
    poly = geo.kgon(Wt, bt)
    verts = [int(v) for v in str(poly.vertices[0]).split()]
    rep = geo.represented(Wt)[0].numpy()
    x, y = W[0] + center, W[1]  # the tips of the W_i
    if len(verts) >= 3:
        ax.add_patch(Polygon(np.stack([x[verts], y[verts]], axis=1), closed=True, fc=color,
                             alpha=0.15, ec=color, lw=1.4, zorder=1))
    elif len(verts) == 2:
        ax.plot(x[verts], y[verts], color=color, lw=1.4, zorder=1)
    fcols = feature_colors(n)
    alpha = np.where(rep, 1.0, 0.5)
    rgba = [to_rgba(fcols[j], alpha[j]) for j in range(n)]
    ax.quiver(np.full(n, center), np.zeros(n), W[0], W[1], color=rgba, angles="xy",
              scale_units="xy", scale=1, width=0.022 * 2 * radius / _width(ax), headwidth=3.2,
              headlength=4, headaxislength=3.6, zorder=3)
    for j in range(n):
        off_poly = j not in verts and b is not None
        if off_poly:
            sign = geo.bias_mark(float(b[j])) or "o"  # the mark its label gives it
            ax.plot(x[j], y[j], "o", mfc="white", mec=BIAS_COLOR[sign], ms=9, mew=1.3, zorder=4)
            glyphs.append(Glyph("−" if sign == "-" else sign, x[j], y[j], BIAS_COLOR[sign], 8, 5))
        if n <= 12:
            r = math.hypot(W[0, j], W[1, j])
            ux, uy = (W[0, j] / r, W[1, j] / r) if r > 1e-9 else (0.0, 1.0)
            off = 0.12 * radius + (0.06 * radius if off_poly else 0)
            glyphs.append(Glyph(str(j), x[j] + ux * off, y[j] + uy * off, fcols[j], 7, 6))
    return str(poly.label[0])


class Glyph(NamedTuple):
    """A short string to draw centred on (x, y) at a font size, in a colour, at a zorder."""

    text: str
    x: float
    y: float
    color: str
    size: float
    zorder: float


def draw_glyphs(ax: Axes, glyphs: list[Glyph]) -> None:
    """Draw short strings (feature numbers, bias marks) as markers shaped like the text, one
    artist for each distinct string, colour, size and zorder.

    A snapshot row has dozens of them; as Text objects each is laid out and rendered glyph by
    glyph, 10% of a condition figure's time. As markers they are one path each, stamped
    where needed; in a PDF they are vector outlines of the same font (not selectable text).
    """
    groups: dict[tuple[str, str, float, float], list[tuple[float, float]]] = {}
    for g in glyphs:
        groups.setdefault((g.text, g.color, g.size, g.zorder), []).append((g.x, g.y))
    for (text, color, size, zorder), points in groups.items():
        path, extent = _glyph_marker(text, size)
        xs, ys = zip(*points, strict=True)
        ax.plot(xs, ys, ls="none", marker=path, ms=extent, mew=0, color=color, zorder=zorder)


@functools.lru_cache(maxsize=256)
def _glyph_marker(text: str, size: float) -> tuple[Path, float]:
    """`text` at font size `size` as a marker path centred on its ink, and its marker size
    (the larger side of the ink, in points: a path marker is scaled to that)."""
    outline = TextPath((0, 0), text, size=size)
    lo, hi = outline.vertices.min(axis=0), outline.vertices.max(axis=0)
    return Path(outline.vertices - (lo + hi) / 2, outline.codes), float(max(hi - lo))


def _width(ax: Axes) -> float:
    """The axes' width in data units (quiver widths are fractions of it)."""
    lo, hi = ax.get_xlim()
    return hi - lo


def gram_axes(ax_heat: Axes, ax_bars: Axes, W: np.ndarray) -> None:
    """Anthropic's picture of an instance: W^T W and feature norms coloured by interference.

    W: (m, n)."""
    Wt = torch.as_tensor(W, dtype=torch.float64)
    G = geo.gram(Wt).numpy()
    norms = geo.feature_norms(Wt).numpy()
    interf = np.sqrt(geo.interference(Wt).numpy())
    n = G.shape[0]
    _gram_heatmap(ax_heat, G)
    cmap = colormaps["plasma"]
    ax_bars.barh(np.arange(n), norms, color=[cmap(min(v, 1.0) * 0.9) for v in interf], height=0.8)
    ax_bars.set_ylim(n - 0.5, -0.5)
    ax_bars.set_yticks([])
    ax_bars.grid(False)
    ax_bars.set_xlim(0, max(float(np.nanmax(norms)) if np.isfinite(norms).any() else 1.0, 1e-6)
                     * 1.1)
    ax_bars.tick_params(axis="x", labelsize=6.5)
    for s in ("top", "right", "left"):
        ax_bars.spines[s].set_visible(False)


def _gram_heatmap(ax: Axes, G: np.ndarray) -> None:
    """W^T W on a symmetric red-blue scale, no ticks, no grid."""
    lim = max(float(np.nanmax(np.abs(G))) if np.isfinite(G).any() else 1.0, 1e-6)
    ax.imshow(G, cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)


@styled
def final_geometry_grid(items: list[tuple[Panel, Snapshot, str]], m: int, title: str) -> Figure:
    """The final checkpoint of every condition's first seed: k-gons (m = 2) or W^T W.

    items: (panel, snapshot, note) with note e.g. the k-gon labels of all seeds.
    """
    rows, cols = grid_shape(len(items), max_cols=8)
    margins = Margins(left=0.15, right=0.15, top=0.85, bottom=0.15, wgap=0.2, hgap=0.55)
    fig, axes = grid_figure(rows, cols, 1.3, 1.3, margins)
    for ax, (panel, snap, note) in zip(axes.flat, items, strict=False):
        st = style(panel.activation)
        if m == 2:
            kgon_axes(ax, snap.W, snap.b, st.color, snapshot_radius([snap]))
        else:
            _gram_heatmap(ax, snap.W.T @ snap.W)
        ax.set_title(f"{panel.title}\n{note}", fontsize=7.5, color=title_color(st.color),
                     loc="center")
    hide_unused(axes, len(items))
    grid_title(fig, title)
    return fig
