"""Small multiples on common axes: loss and LLC against training step, one panel per condition.

    >>> fig = loss_grid(curves, panels, max_step=5000, title="quick: loss")
"""

from __future__ import annotations

import pandas as pd
from matplotlib import ticker
from matplotlib.figure import Figure

from devtms.report.figures.axes import (
    common_loss_limits,
    joined_by_nan,
    llc_curve,
    llc_ylim,
    loss_axis,
    mark_divergence,
    mark_outside,
    not_at_minimum,
    step_axis,
)
from devtms.report.figures.layout import (
    GRID_MARGINS,
    Panel,
    grid_figure,
    grid_footer,
    grid_shape,
    hide_unused,
    label_grid,
)
from devtms.report.figures.style import seed_dash, style, styled, title_color


@styled
def loss_grid(curves: pd.DataFrame, panels: list[Panel], max_step: int, title: str,
              series_names: dict[int, str] | None = None) -> Figure:
    """Loss against step, one panel per condition on common axes, seeds overlaid.

    curves: condition, seed, step, loss (rows sorted by step). Every panel also shows the
    median (over seeds) of every other condition in light grey, for reference. series_names
    relabels the `seed` column in the legend (e.g. runs, when comparing runs).
    """
    rows, cols = grid_shape(len(panels))
    fig, axes = grid_figure(rows, cols, 2.05, 1.45, GRID_MARGINS, sharex=True, sharey=True)
    first = curves["step"] == curves["step"].min()
    lo, hi = common_loss_limits(curves["loss"].to_numpy(float),
                                curves.loc[first, "loss"].to_numpy(float))
    medians = [g.groupby("step")["loss"].median() for _, g in curves.groupby("condition")]
    grey_x, grey_y = joined_by_nan([(m.index, m.to_numpy()) for m in medians])
    seeds = sorted({s for p in panels for s in p.seeds})
    dash = {s: i for i, s in enumerate(seeds)}
    by_cond = dict(tuple(curves.groupby("condition")))
    for ax, panel in zip(axes.flat, panels, strict=False):
        ax.plot(grey_x, grey_y, color="#d0d0d0", lw=0.5, zorder=1)
        st = style(panel.activation)
        data = by_cond.get(panel.key)
        if data is not None:
            for seed in panel.seeds:
                d = data[data["seed"] == seed]
                ax.plot(d["step"], d["loss"], color=st.color, ls=seed_dash(dash[seed]), lw=1.3,
                        zorder=3)
                mark_divergence(ax, d["step"].to_numpy(), d["loss"].to_numpy(float), hi)
        ax.set_title(panel.title, color=title_color(st.color))
        step_axis(ax, max_step, label=False, minor=False, label_one=False)
        loss_axis(ax, label=False, limits=(lo, hi))
        ax.yaxis.set_minor_locator(ticker.NullLocator())
    hide_unused(axes, len(panels))
    label_grid(fig, axes, "loss (log)", title)
    grid_footer(fig, seeds, "grey: the median of every other panel, for reference; "
                            "x: training step on a symlog axis (0 = initialisation)",
                series_names)
    return fig


@styled
def llc_grid(llc: pd.DataFrame, panels: list[Panel], max_step: int, title: str,
             series_names: dict[int, str] | None = None) -> Figure:
    """LLC against step with +-1 sd bands, one panel per condition on common axes.

    llc: condition, seed, step, llc_mean, llc_std, healthy. Unhealthy estimates: hollow markers.
    series_names relabels the `seed` column in the legend (e.g. runs, when comparing runs).
    """
    rows, cols = grid_shape(len(panels))
    fig, axes = grid_figure(rows, cols, 2.05, 1.45, GRID_MARGINS, sharex=True, sharey=True)
    by_cond = dict(tuple(llc.groupby("condition")))
    seeds = sorted({s for p in panels for s in p.seeds})
    dash = {s: i for i, s in enumerate(seeds)}
    for ax, panel in zip(axes.flat, panels, strict=False):
        st = style(panel.activation)
        data = by_cond.get(panel.key)
        if data is not None:
            for seed in panel.seeds:
                llc_curve(ax, data[data["seed"] == seed], st.color, seed_dash(dash[seed]), ms=2.5)
        else:
            ax.text(0.5, 0.5, "no estimates", transform=ax.transAxes, ha="center", color="#888")
        ax.set_title(panel.title, color=title_color(st.color))
        step_axis(ax, max_step, label=False, minor=False, label_one=False)
    hide_unused(axes, len(panels))
    llc_ylim(axes.flat[0], llc)
    for ax, panel in zip(axes.flat, panels, strict=False):
        d = by_cond.get(panel.key)
        if d is not None:
            mark_outside(ax, d["step"].to_numpy(float), d["llc_mean"].to_numpy(float),
                         style(panel.activation).color, ~d["healthy"].to_numpy(bool),
                         not_at_minimum(d))
    label_grid(fig, axes, "LLC", title)
    grid_footer(fig, seeds, "band: ±1 sd over chains; hollow: flagged unhealthy; grey x: not at a "
                            "local minimum (no LLC); y range: 1st percentile to maximum of the "
                            "healthy estimates, triangles at the edge beyond it", series_names)
    return fig
