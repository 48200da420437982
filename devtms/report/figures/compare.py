"""Several runs side by side: final loss and LLC of every instance, one row per condition.

(The loss and LLC curves of several runs overlaid are devtms.report.figures.grids.loss_grid and
llc_grid with the runs in place of the seeds.)
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from devtms.report.figures.axes import log_axis
from devtms.report.figures.layout import Margins, Panel, grid_figure, grid_title
from devtms.report.figures.style import style, styled, title_color

RUN_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


@styled
def runs_final_dotplot(finals: pd.DataFrame, panels: list[Panel], runs: list[str],
                       title: str) -> Figure:
    """Final loss and final LLC of each condition (a row per Panel, in their order: sparsities
    and other swept fields are rows of their own), one marker shape per run.

    finals: run (index in `runs`, the names), condition (Panel.key), activation, loss, llc
    (may be NaN), llc_healthy (hollow when False).
    """
    keys = [p.key for p in panels]
    has_llc = finals["llc"].notna().any()
    ncols = 2 if has_llc else 1
    left = max(1.2, 0.3 + 0.065 * max((len(p.title) for p in panels), default=0))  # the names
    margins = Margins(left=left, right=0.2, top=0.75, bottom=0.55, wgap=0.35, hgap=0.3)
    fig, axes = grid_figure(1, ncols, 4.6, 0.24 * len(keys) + 0.2, margins, sharey=True)
    ypos = {k: i for i, k in enumerate(keys)}
    offsets = np.linspace(-0.25, 0.25, len(runs)) if len(runs) > 1 else [0.0]
    for col, (value, label, log) in enumerate([("loss", "final loss (log)", True),
                                               ("llc", "final LLC", False)][:ncols]):
        ax = axes[0, col]
        for r in range(len(runs)):
            d = finals[finals["run"] == r]
            y = d["condition"].map(ypos).to_numpy(float) + offsets[r]
            colors = np.array([style(a).color for a in d["activation"]], dtype=object)
            ok = (d["llc_healthy"].fillna(True).astype(bool).to_numpy()
                  if value == "llc" and "llc_healthy" in d else np.ones(len(d), bool))
            marker = RUN_MARKERS[r % len(RUN_MARKERS)]
            ax.scatter(d[value][ok], y[ok], c=list(colors[ok]), marker=marker, s=22,
                       edgecolors="black", linewidths=0.4, zorder=3)
            ax.scatter(d[value][~ok], y[~ok], facecolors="white", edgecolors=list(colors[~ok]),
                       marker=marker, s=26, linewidths=1.1, zorder=3)
        if log:
            log_axis(ax.xaxis)
        ax.set_xlabel(label)
    axes[0, 0].set_yticks(range(len(keys)))
    axes[0, 0].set_yticklabels([p.title for p in panels])
    for tick, p in zip(axes[0, 0].get_yticklabels(), panels, strict=True):
        tick.set_color(title_color(style(p.activation).color))
    axes[0, 0].set_ylim(len(keys) - 0.5, -0.5)
    handles = [Line2D([], [], ls="none", marker=RUN_MARKERS[r % len(RUN_MARKERS)],
                      color="#666", mec="black", label=run) for r, run in enumerate(runs)]
    H = fig.get_size_inches()[1]
    fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(0.01, 1 - 0.4 / H),
               frameon=False, ncol=min(6, len(runs)))
    grid_title(fig, title)
    return fig
