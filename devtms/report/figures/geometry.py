"""Pictures of an instance's weights: the k-gon (m = 2) or W^T W with feature norms (m > 2),
one instance at a time (`kgon_axes`, `gram_axes`) or every condition's end (`final_geometry_grid`).

A `Snapshot` is the weights of one instance at one checkpoint, with a caption of what happened
there (devtms.report.snapshots makes them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.patches import Polygon

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


def kgon_axes(ax: Axes, W: np.ndarray, b: np.ndarray | None, color: str, radius: float,
              numbers: bool = True) -> str:
    """Draw an m = 2 instance: its k-gon, its feature vectors, the off-polygon bias marks
    (devtms.geometry.bias_mark: +, − or o, circled).

    W: (2, n), b: (n,) or None. Returns the k-gon label ("5+", "3ooo"). Vertices come from
    devtms.geometry.kgon.
    """
    n = W.shape[1]
    Wt = torch.as_tensor(W, dtype=torch.float64)[None]
    bt = None if b is None else torch.as_tensor(b, dtype=torch.float64)[None]
    ax.set_aspect("equal")
    ax.set_xlim(-radius, radius)
    ax.set_ylim(-radius, radius)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    for s in ax.spines.values():
        s.set_visible(False)
    ax.axhline(0, color="#e6e6e6", lw=0.6, zorder=0)
    ax.axvline(0, color="#e6e6e6", lw=0.6, zorder=0)
    if not np.all(np.isfinite(W)):
        ax.text(0, 0, "non-finite\nweights", ha="center", va="center", color=DIVERGED_COLOR)
        return "diverged"
    poly = geo.kgon(Wt, bt)
    verts = [int(v) for v in str(poly.vertices[0]).split()]
    rep = geo.represented(Wt)[0].numpy()
    if len(verts) >= 3:
        ax.add_patch(Polygon(W[:, verts].T, closed=True, fc=color, alpha=0.15, ec=color, lw=1.4,
                             zorder=1))
    elif len(verts) == 2:
        ax.plot(W[0, verts], W[1, verts], color=color, lw=1.4, zorder=1)
    fcols = feature_colors(n)
    alpha = np.where(rep, 1.0, 0.5)
    rgba = [to_rgba(fcols[j], alpha[j]) for j in range(n)]
    ax.quiver(np.zeros(n), np.zeros(n), W[0], W[1], color=rgba, angles="xy", scale_units="xy",
              scale=1, width=0.022, headwidth=3.2, headlength=4, headaxislength=3.6, zorder=3)
    for j in range(n):
        x, y = W[0, j], W[1, j]
        off_poly = j not in verts and b is not None
        if off_poly:
            sign = geo.bias_mark(float(b[j])) or "o"  # the mark its label gives it
            ax.plot(x, y, "o", mfc="white", mec=BIAS_COLOR[sign], ms=9, mew=1.3, zorder=4)
            ax.text(x, y, "−" if sign == "-" else sign, ha="center", va="center_baseline",
                    fontsize=8, color=BIAS_COLOR[sign], zorder=5)
        if numbers and n <= 12:
            r = math.hypot(x, y)
            ux, uy = (x / r, y / r) if r > 1e-9 else (0.0, 1.0)
            off = 0.12 * radius + (0.06 * radius if off_poly else 0)
            ax.text(x + ux * off, y + uy * off, str(j), ha="center", va="center", fontsize=7,
                    color=fcols[j], zorder=6)
    return str(poly.label[0])


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
            kgon_axes(ax, snap.W, snap.b, st.color, snapshot_radius([snap]), numbers=True)
        else:
            _gram_heatmap(ax, snap.W.T @ snap.W)
        ax.set_title(f"{panel.title}\n{note}", fontsize=7.5, color=title_color(st.color),
                     loc="center")
    hide_unused(axes, len(items))
    grid_title(fig, title)
    return fig
