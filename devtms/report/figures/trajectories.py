"""LLC against loss along training: one trajectory per condition, a panel per family below.

    >>> fig = llc_vs_loss(traj, panels, "quick: LLC against loss")
"""

from __future__ import annotations

import math

import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from devtms.report.figures.axes import common_loss_limits, joined_by_nan, llc_ylim, log_axis
from devtms.report.figures.layout import Panel, inches
from devtms.report.figures.style import Style, condition_styles, style, styled


@styled
def llc_vs_loss(traj: pd.DataFrame, panels: list[Panel], title: str) -> Figure:
    """LLC against loss along training, one trajectory per condition (mean over seeds).

    traj: condition, step, loss, llc_mean, healthy (all seeds healthy at that step),
    any_healthy (optional). The top panel holds every condition, with a legend grouped by
    family; below, one panel per family with the other families in grey.
    """
    families = list(dict.fromkeys(style(p.activation).family for p in panels))
    fcols = min(4, len(families))
    frows = math.ceil(len(families) / fcols) if len(families) > 1 else 0
    width, main_h, fam_w, fam_h = 12.5, 4.6, 2.55, 1.9
    height = 0.45 + main_h + 0.75 + (frows * (fam_h + 0.8) + 0.1 if frows else 0)
    fig = Figure(figsize=(width, height))
    ax_all = fig.add_axes(inches(fig, 0.8, 0.45, 7.6, main_h))
    ax_leg = fig.add_axes(inches(fig, 8.75, 0.45, 3.6, main_h))
    by_cond = dict(tuple(traj.groupby("condition")))
    styles = condition_styles(panels)
    for panel in panels:
        d = by_cond.get(panel.key)
        if d is not None:
            _trajectory(ax_all, d, styles[panel.key], lw=1.3)
    _traj_axes(ax_all, traj)
    ax_all.set_title(title, fontsize=11)
    _family_legend(ax_leg, panels, styles)
    top = 0.45 + main_h + 0.75 + 0.3
    for k, family in enumerate(families if frows else []):
        r, c = divmod(k, fcols)
        ax = fig.add_axes(inches(fig, 0.8 + c * (fam_w + 0.45), top + r * (fam_h + 0.8), fam_w,
                                 fam_h))
        others = []
        for panel in panels:
            d = by_cond.get(panel.key)
            if d is None:
                continue
            if styles[panel.key].family == family:
                _trajectory(ax, d, styles[panel.key], lw=1.2, zorder=3)
            else:
                others.append((d["loss"], d["llc_mean"]))
        ax.plot(*joined_by_nan(others), color="#dddddd", lw=0.7, zorder=1)
        _traj_axes(ax, traj, labels=False)
        ax.set_title(family)
        if c == 0:
            ax.set_ylabel("LLC")
        ax.set_xlabel("loss (log)")
    return fig


def _trajectory(ax: Axes, d: pd.DataFrame, st: Style, lw: float, zorder: int = 3) -> None:
    d = d.sort_values("step")
    x, y = d["loss"].to_numpy(float), d["llc_mean"].to_numpy(float)
    ok = d["healthy"].to_numpy(bool)
    line = d["any_healthy"].to_numpy(bool) if "any_healthy" in d else ok
    ax.plot(x[line], y[line], color=st.color, ls=st.dash, lw=lw, zorder=zorder, alpha=0.9)
    ax.plot(x[ok], y[ok], st.marker, color=st.color, ms=2.5, zorder=zorder)
    ax.plot(x[~ok], y[~ok], st.marker, mfc="white", mec=st.color, ms=4, zorder=zorder)
    if len(x):  # the final checkpoint: a large marker
        ax.plot(x[-1], y[-1], st.marker, color=st.color, ms=8, mec="black", mew=0.6,
                zorder=zorder + 1, mfc=st.color if ok[-1] else "white")


def _traj_axes(ax: Axes, traj: pd.DataFrame, labels: bool = True) -> None:
    log_axis(ax.xaxis)
    lo, hi = common_loss_limits(traj["loss"].to_numpy(float))
    ax.set_xlim(lo, hi)
    llc_ylim(ax, traj.assign(llc_std=0.0))
    if labels:
        ax.set_xlabel("loss at the checkpoint (log)  —  training moves right to left")
        ax.set_ylabel("LLC (mean over seeds)")


def _family_legend(ax: Axes, panels: list[Panel], styles: dict[str, Style]) -> None:
    """A legend grouped by family, in its own axes: one entry per condition."""
    ax.axis("off")
    handles: list[Line2D] = []
    seen_family = None
    for panel in panels:
        st = styles[panel.key]
        if st.family != seen_family:
            handles.append(Line2D([], [], ls="none", label=f"— {st.family} —"))
            seen_family = st.family
        handles.append(Line2D([], [], color=st.color, marker=st.marker, ls=st.dash, lw=1.3,
                              ms=5, label=panel.title))
    handles.append(Line2D([], [], ls="none", marker="o", mfc="white", mec="#444", ms=6,
                          label="hollow: unhealthy LLC"))
    handles.append(Line2D([], [], ls="none", marker="o", color="#444", mec="black", ms=8,
                          label="large: final checkpoint"))
    ncol = 1 if len(handles) <= 24 else 2
    ax.legend(handles=handles, loc="upper left", frameon=False, ncol=ncol, fontsize=7.5,
              handlelength=2.2, borderaxespad=0, labelspacing=0.35)
