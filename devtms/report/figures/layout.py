"""Laying figures out by hand: grids of fixed-size panels, margins in inches, titles, legends.

Figures are laid out with fixed margins instead of constrained layout, which costs more than
drawing the figure. They are plain `matplotlib.figure.Figure`s: no pyplot, no backend, nothing
to close.

A `Panel` is what one small multiple shows: the instances of one condition, seeds overlaid.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from devtms.report.figures.style import seed_dash


@dataclass
class Panel:
    """One small multiple: the instances of one condition (seeds overlaid)."""

    key: str  # condition key, as in the curves' `condition` column
    title: str
    activation: str
    seeds: list[int] = field(default_factory=list)
    variant: str = ""  # the condition but its activation ("S=0.9"); "" when only that varies


@dataclass(frozen=True)
class Margins:
    """Fixed margins and gaps in inches."""

    left: float = 0.7
    right: float = 0.15
    top: float = 0.55
    bottom: float = 0.75
    wgap: float = 0.18
    hgap: float = 0.42


GRID_MARGINS = Margins(left=0.75, right=0.2, top=0.6, bottom=0.85, wgap=0.22, hgap=0.36)


def grid_shape(n: int, max_cols: int = 6) -> tuple[int, int]:
    cols = min(max_cols, max(1, n))
    return math.ceil(n / cols), cols


def grid_figure(rows: int, cols: int, panel_w: float, panel_h: float, margins: Margins,
                **subplots: Any) -> tuple[Figure, np.ndarray]:
    """A figure of rows x cols panels of a fixed size in inches. -> (fig, axes (rows, cols))"""
    m = margins
    width = m.left + cols * panel_w + (cols - 1) * m.wgap + m.right
    height = m.top + rows * panel_h + (rows - 1) * m.hgap + m.bottom
    fig = Figure(figsize=(width, height))
    gs = fig.add_gridspec(rows, cols, left=m.left / width, right=1 - m.right / width,
                          bottom=m.bottom / height, top=1 - m.top / height,
                          wspace=m.wgap / panel_w, hspace=m.hgap / panel_h)
    axes = gs.subplots(squeeze=False, **subplots)
    return fig, axes


def inches(fig: Figure, left: float, top: float, width: float, height: float) -> list[float]:
    """An axes rectangle from inches measured from the figure's top-left corner."""
    W, H = fig.get_size_inches()
    return [left / W, 1 - (top + height) / H, width / W, height / H]


def hide_unused(axes: np.ndarray, used: int) -> None:
    """Hide empty grid slots; the panel above an empty slot gets the x tick labels back."""
    rows, cols = axes.shape
    for k in range(used, rows * cols):
        r, c = divmod(k, cols)
        axes[r, c].set_visible(False)
        if r > 0 and (r - 1) * cols + c < used:
            axes[r - 1, c].xaxis.set_tick_params(which="both", labelbottom=True)


def grid_title(fig: Figure, title: str) -> None:
    H = fig.get_size_inches()[1]
    fig.suptitle(title, x=0.01, y=1 - 0.12 / H, ha="left", va="top")


def label_grid(fig: Figure, axes: np.ndarray, ylabel: str, title: str) -> None:
    """Step on the bottom row's x axes, `ylabel` on the left column's, and the title."""
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel)
    for ax in axes[-1, :]:
        ax.set_xlabel("step")
    grid_title(fig, title)


def grid_footer(fig: Figure, seeds: Sequence[int], note: str,
                series_names: dict[int, str] | None = None) -> None:
    """Seed legend and a note under a grid (fixed offsets in inches)."""
    H = fig.get_size_inches()[1]
    _seed_legend(fig, seeds, y=0.22 / H, names=series_names)
    fig.text(0.01, 0.06 / H, note, ha="left", va="bottom", fontsize=7.5, color="#555555")


def _seed_legend(fig: Figure, seeds: Sequence[int], y: float,
                 names: dict[int, str] | None = None) -> None:
    handles = [Line2D([], [], color="#444444", ls=seed_dash(i), lw=1.3,
                      label=names[s] if names else f"seed {s}") for i, s in enumerate(seeds)]
    fig.legend(handles=handles, loc="lower left", ncol=min(len(handles), 8), frameon=False,
               bbox_to_anchor=(0.0, y), borderaxespad=0.2)
