"""Several runs side by side: final loss and LLC of every instance, by activation and run.

(The loss curves of several runs overlaid are devtms.report.figures.grids.loss_grid with the
runs in place of the seeds.)
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib import ticker
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from devtms.report.figures.axes import log_label
from devtms.report.figures.layout import Margins, grid_figure, grid_title
from devtms.report.figures.style import activation_order, style, styled, title_color

RUN_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


@styled
def runs_final_dotplot(finals: pd.DataFrame, runs: list[str], title: str) -> Figure:
    """Final loss and final LLC of each activation, one marker shape per run.

    finals: run, activation, seed, loss, llc (may be NaN), llc_healthy (hollow when False).
    """
    acts = activation_order(finals["activation"].unique())
    has_llc = finals["llc"].notna().any()
    ncols = 2 if has_llc else 1
    margins = Margins(left=1.2, right=0.2, top=0.75, bottom=0.55, wgap=0.35, hgap=0.3)
    fig, axes = grid_figure(1, ncols, 4.6, 0.24 * len(acts) + 0.2, margins, sharey=True)
    ypos = {a: i for i, a in enumerate(acts)}
    offsets = np.linspace(-0.25, 0.25, len(runs)) if len(runs) > 1 else [0.0]
    for col, (value, label, log) in enumerate([("loss", "final loss (log)", True),
                                               ("llc", "final LLC", False)][:ncols]):
        ax = axes[0, col]
        for r, run in enumerate(runs):
            d = finals[finals["run"] == run]
            y = d["activation"].map(ypos).to_numpy(float) + offsets[r]
            colors = np.array([style(a).color for a in d["activation"]], dtype=object)
            ok = (d["llc_healthy"].fillna(True).astype(bool).to_numpy()
                  if value == "llc" and "llc_healthy" in d else np.ones(len(d), bool))
            marker = RUN_MARKERS[r % len(RUN_MARKERS)]
            ax.scatter(d[value][ok], y[ok], c=list(colors[ok]), marker=marker, s=22,
                       edgecolors="black", linewidths=0.4, zorder=3)
            ax.scatter(d[value][~ok], y[~ok], facecolors="white", edgecolors=list(colors[~ok]),
                       marker=marker, s=26, linewidths=1.1, zorder=3)
        if log:
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(ticker.FuncFormatter(log_label))
            ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.set_xlabel(label)
    axes[0, 0].set_yticks(range(len(acts)))
    axes[0, 0].set_yticklabels(acts)
    for tick, a in zip(axes[0, 0].get_yticklabels(), acts, strict=True):
        tick.set_color(title_color(style(a).color))
    axes[0, 0].set_ylim(len(acts) - 0.5, -0.5)
    handles = [Line2D([], [], ls="none", marker=RUN_MARKERS[r % len(RUN_MARKERS)],
                      color="#666", mec="black", label=run) for r, run in enumerate(runs)]
    H = fig.get_size_inches()[1]
    fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(0.01, 1 - 0.4 / H),
               frameon=False, ncol=min(6, len(runs)))
    grid_title(fig, title)
    return fig
