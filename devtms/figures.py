"""The report's figures: pure functions from tidy tables and weight arrays to matplotlib Figures.

Nothing here reads or writes files (devtms/report.py does); every function takes plain data and
returns a `Figure`, so a figure can be rebuilt in a notebook from the run's CSVs.

Conventions shared by every figure:
- one colour and one marker per activation, fixed by name (`style(name)`), grouped by family
  (`FAMILIES`): each family has one hue, its members shades of it; seeds of one activation
  share its colour and differ by line style (`SEED_DASHES`);
- training steps on a symmetric-log axis (`step_axis`): linear between 0 and 1, so step 0
  (the initialisation) has a place, logarithmic from 1 on, ticks at 0, 1, 10, 100, ...;
- loss on a log axis, LLC on a linear one (an unhealthy estimate can be negative);
- LLC error bands are +-1 standard deviation over chains; unhealthy estimates are hollow markers;
- transitions: vertical lines coloured by kind (loss drop black, LLC jump red, geometry change
  purple: `EVENT_STYLE`) in the line style of the seed they belong to.

    >>> fig = loss_grid(curves, panels)          # small multiples on common axes
    >>> fig.savefig("loss.png")
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib import colormaps  # noqa: E402
from matplotlib.colors import to_hex  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Polygon  # noqa: E402

RC = {
    "font.size": 9, "axes.titlesize": 9.5, "axes.labelsize": 9, "xtick.labelsize": 8,
    "ytick.labelsize": 8, "legend.fontsize": 8, "figure.titlesize": 12, "axes.spines.top": False,
    "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.25, "grid.linewidth": 0.6,
    "pdf.fonttype": 42, "svg.fonttype": "none", "figure.dpi": 100,
    "axes.titlelocation": "left",
}
plt.rcParams.update(RC)

# ---------------------------------------------------------------------------------------------
# Colours: one per activation, by family

# family -> (colormap, members, in SCIENCE.md order within the family)
FAMILIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "ReLU-like": ("Blues", ("relu", "leaky_relu", "relu6", "relu_squared", "hardswish")),
    "smooth ReLU-like": ("Greens", ("gelu", "silu", "mish", "softplus", "elu", "celu", "selu")),
    "sigmoid/tanh-like": ("Oranges", ("sigmoid", "hardsigmoid", "tanh", "hardtanh", "softsign",
                                      "logsigmoid")),
    "shrink": ("Purples", ("hardshrink", "softshrink", "tanhshrink")),
    "softmax family": ("RdPu", ("softmax", "solu", "log_softmax", "softmin")),
    "exp family": ("Reds", ("exp", "exp_linear")),
    "controls": ("Greys", ("linear", "solu_ln")),
}
MARKERS = ("o", "s", "^", "D", "v", "P", "X")
SEED_DASHES = ("-", "--", ":", "-.", (0, (5, 1, 1, 1)), (0, (1, 1)), (0, (8, 2)),
               (0, (3, 1, 1, 1, 1, 1)))
EVENT_STYLE = {
    "loss_drop": dict(color="black", ls="-", lw=1.0),
    "llc": dict(color="#c0392b", ls="-", lw=1.1),
    "geometry": dict(color="#7b3294", ls="-", lw=0.8),
}
BIAS_COLOR = {"+": "#c0392b", "-": "#2166ac", "0": "#777777"}


@dataclass(frozen=True)
class Style:
    color: str
    marker: str
    family: str


def _build_styles() -> dict[str, Style]:
    styles = {}
    for family, (cmap, members) in FAMILIES.items():
        shades = np.linspace(0.92, 0.5, len(members)) if len(members) > 1 else [0.8]
        for i, name in enumerate(members):
            styles[name] = Style(to_hex(colormaps[cmap](shades[i])), MARKERS[i % len(MARKERS)],
                                 family)
    styles["linear"] = Style("#222222", "o", "controls")
    styles["solu_ln"] = Style("#8c8c8c", "s", "controls")
    return styles


STYLES = _build_styles()
FAMILY_ORDER = [name for _, members in FAMILIES.values() for name in members]


def style(activation: str) -> Style:
    """The fixed colour, marker and family of an activation (grey for an unknown name)."""
    return STYLES.get(activation, Style("#999999", "o", "other"))


def activation_order(names: Sequence[str]) -> list[str]:
    """Names sorted by family, then as listed in FAMILIES; unknown names last."""
    rank = {n: i for i, n in enumerate(FAMILY_ORDER)}
    return sorted(dict.fromkeys(names), key=lambda n: (rank.get(n, len(rank)), n))


def seed_dash(i: int):
    return SEED_DASHES[i % len(SEED_DASHES)]


def feature_colors(n: int) -> list[str]:
    """Categorical colours for the n features of a polygon plot."""
    cmap = colormaps["tab10"] if n <= 10 else colormaps["turbo"]
    return [to_hex(cmap(i if n <= 10 else i / max(n - 1, 1))) for i in range(n)]


# ---------------------------------------------------------------------------------------------
# Axes helpers


def step_axis(ax, max_step: int, label: bool = True, minor: bool = True,
              label_one: bool = True) -> None:
    """Training steps: linear on [0, 1] (so step 0 = init is shown), log from 1 on.

    minor=False leaves out minor ticks (small multiples: tick objects dominate drawing time).
    """
    ax.set_xscale("symlog", linthresh=1.0, linscale=0.4)
    ax.set_xlim(-0.12, max(max_step, 1) * 1.15)
    top = max(0, math.ceil(math.log10(max(max_step, 1))))
    ticks = [0] + [10**e for e in range(top + 1) if 10**e <= max_step * 1.15]
    ax.set_xticks(ticks)
    ax.set_xticklabels(["0"] + [_pow10(t) if t > 1 or label_one else "" for t in ticks[1:]])
    ax.xaxis.set_minor_locator(matplotlib.ticker.SymmetricalLogLocator(
        base=10, linthresh=1.0, subs=np.arange(2, 10)) if minor else matplotlib.ticker.NullLocator())
    if label:
        ax.set_xlabel("training step (log; 0 = initialisation)")


SUPERSCRIPT = str.maketrans("0123456789-", "⁰¹²³⁴⁵⁶⁷⁸⁹⁻")


def _pow10(t: int) -> str:
    """Tick labels without mathtext (one embedded font per PDF keeps saving fast)."""
    e = round(math.log10(t))
    return {0: "1", 1: "10", 2: "100"}.get(e, "10" + str(e).translate(SUPERSCRIPT))


def loss_axis(ax, label: bool = True, limits: tuple[float, float] | None = None) -> None:
    """Log loss axis; when the range spans under ~1.5 decades, 2x and 5x ticks get labels too."""
    ax.set_yscale("log")
    if limits is not None:
        ax.set_ylim(*limits)
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(_log_label))
    lo, hi = ax.get_ylim()
    narrow = lo > 0 and math.log10(hi / lo) < 1.5
    ax.yaxis.set_minor_formatter(matplotlib.ticker.FuncFormatter(_minor_log_label) if narrow
                                 else matplotlib.ticker.NullFormatter())
    if label:
        ax.set_ylabel("loss (log)")


def _log_label(v: float, _pos=None) -> str:
    if v <= 0 or not np.isfinite(v):
        return ""
    e = math.log10(v)
    if abs(e - round(e)) > 1e-6:
        return ""
    e = round(e)
    return {0: "1", 1: "10", -1: "0.1", -2: "0.01"}.get(e, "10" + str(e).translate(SUPERSCRIPT))


def _minor_log_label(v: float, _pos=None) -> str:
    if v <= 0 or not np.isfinite(v):
        return ""
    e = math.floor(math.log10(v) + 1e-9)
    mantissa = round(v / 10**e, 6)
    return f"{v:.{max(0, -e)}f}" if mantissa in (2.0, 5.0) else ""


def common_loss_limits(values: np.ndarray, initial: np.ndarray | None = None) -> tuple[float, float]:
    """Log-axis limits around the finite positive values. With `initial` (the losses at step 0),
    the top is capped at 3x the largest of them, so a diverging instance's blow-up does not
    flatten every other curve (its end is marked at the top edge instead)."""
    v = values[np.isfinite(values) & (values > 0)]
    if not len(v):
        return 1e-3, 1.0
    hi = float(v.max())
    if initial is not None:
        init = initial[np.isfinite(initial) & (initial > 0)]
        if len(init):
            hi = min(hi, 3.0 * float(init.max()))
    return float(v.min()) / 1.4, max(hi, float(v.min()) * 1.01) * 1.4


def _hide_unused(axes: np.ndarray, used: int) -> None:
    """Hide empty grid slots; the panel above an empty slot gets the x tick labels back."""
    rows, cols = axes.shape
    for k in range(used, rows * cols):
        r, c = divmod(k, cols)
        axes[r, c].set_visible(False)
        if r > 0 and (r - 1) * cols + c < used:
            axes[r - 1, c].xaxis.set_tick_params(which="both", labelbottom=True)


@dataclass(frozen=True)
class Margins:
    """Fixed margins and gaps in inches (figures are laid out by hand: constrained layout
    costs more than drawing the figure)."""

    left: float = 0.7
    right: float = 0.15
    top: float = 0.55
    bottom: float = 0.75
    wgap: float = 0.18
    hgap: float = 0.42


def grid_figure(rows: int, cols: int, panel_w: float, panel_h: float, margins: Margins,
                **subplots) -> tuple[Figure, np.ndarray]:
    """A figure of rows x cols panels of a fixed size in inches. -> (fig, axes (rows, cols))"""
    m = margins
    width = m.left + cols * panel_w + (cols - 1) * m.wgap + m.right
    height = m.top + rows * panel_h + (rows - 1) * m.hgap + m.bottom
    fig = plt.figure(figsize=(width, height))
    gs = fig.add_gridspec(rows, cols, left=m.left / width, right=1 - m.right / width,
                          bottom=m.bottom / height, top=1 - m.top / height,
                          wspace=m.wgap / panel_w, hspace=m.hgap / panel_h)
    axes = gs.subplots(squeeze=False, **subplots)
    return fig, axes


def _inches(fig: Figure, left: float, top: float, width: float, height: float) -> list[float]:
    """An axes rectangle from inches measured from the figure's top-left corner."""
    W, H = fig.get_size_inches()
    return [left / W, 1 - (top + height) / H, width / W, height / H]


def grid_shape(n: int, max_cols: int = 6) -> tuple[int, int]:
    cols = min(max_cols, max(1, n))
    return math.ceil(n / cols), cols


# ---------------------------------------------------------------------------------------------
# Panels: what a small multiple shows


@dataclass
class Panel:
    """One small multiple: the instances of one condition (seeds overlaid)."""

    key: str  # condition key, as in the curves' `condition` column
    title: str
    activation: str
    seeds: list[int] = field(default_factory=list)


def _seed_legend(fig: Figure, seeds: Sequence[int], extra: Sequence[Line2D] = (), y: float = 0.0,
                 color: str = "#444444", names: dict[int, str] | None = None) -> None:
    handles = [Line2D([], [], color=color, ls=seed_dash(i), lw=1.3,
                      label=names[s] if names else f"seed {s}") for i, s in enumerate(seeds)]
    handles += list(extra)
    fig.legend(handles=handles, loc="lower left", ncol=min(len(handles), 8), frameon=False,
               bbox_to_anchor=(0.0, y), borderaxespad=0.2)


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
    medians = {k: g.groupby("step")["loss"].median() for k, g in curves.groupby("condition")}
    seeds = sorted({s for p in panels for s in p.seeds})
    dash = {s: i for i, s in enumerate(seeds)}
    by_cond = dict(tuple(curves.groupby("condition")))
    for ax, panel in zip(axes.flat, panels, strict=False):
        for med in medians.values():
            ax.plot(med.index, med.to_numpy(), color="#d0d0d0", lw=0.5, zorder=1)
        st = style(panel.activation)
        data = by_cond.get(panel.key)
        if data is not None:
            for seed in panel.seeds:
                d = data[data["seed"] == seed]
                ax.plot(d["step"], d["loss"], color=st.color, ls=seed_dash(dash[seed]), lw=1.3,
                        zorder=3)
                _mark_divergence(ax, d["step"].to_numpy(), d["loss"].to_numpy(float), hi)
        ax.set_title(panel.title, color=_title_color(st.color))
        step_axis(ax, max_step, label=False, minor=False, label_one=False)
        loss_axis(ax, label=False, limits=(lo, hi))
        ax.yaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    _hide_unused(axes, len(panels))
    _label_grid(fig, axes, "loss (log)", title)
    _grid_footer(fig, seeds, "grey: the median of every other panel, for reference; "
                             "x: training step on a symlog axis (0 = initialisation)",
                 series_names)
    return fig


GRID_MARGINS = Margins(left=0.75, right=0.2, top=0.6, bottom=0.85, wgap=0.22, hgap=0.36)


def _grid_footer(fig: Figure, seeds: Sequence[int], note: str,
                 series_names: dict[int, str] | None = None) -> None:
    """Seed legend and a note under a grid, a title above it (fixed offsets in inches)."""
    H = fig.get_size_inches()[1]
    _seed_legend(fig, seeds, y=0.22 / H, names=series_names)
    fig.text(0.01, 0.06 / H, note, ha="left", va="bottom", fontsize=7.5, color="#555555")


def _label_grid(fig: Figure, axes: np.ndarray, ylabel: str, title: str) -> None:
    """Step on the bottom row's x axes, `ylabel` on the left column's, and the title."""
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel)
    for ax in axes[-1, :]:
        ax.set_xlabel("step")
    _grid_title(fig, title)


def _grid_title(fig: Figure, title: str) -> None:
    H = fig.get_size_inches()[1]
    fig.suptitle(title, x=0.01, y=1 - 0.12 / H, ha="left", va="top")


def _title_color(color: str) -> str:
    """Panel titles in the activation's colour, darkened if too light to read on white."""
    r, g, b = matplotlib.colors.to_rgb(color)
    lum = 0.2126 * r + 0.7152 * g + 0.0722 * b
    return to_hex((r * 0.6, g * 0.6, b * 0.6)) if lum > 0.45 else color


def _mark_divergence(ax, steps: np.ndarray, values: np.ndarray, top: float | None = None) -> None:
    """An x at the last finite value of a curve that ends in NaN/inf (at most at `top`)."""
    bad = ~np.isfinite(values)
    if bad.any() and (~bad).any():
        last = np.flatnonzero(~bad)[-1]
        if last < len(values) - 1:
            y = values[last] if top is None else min(values[last], top / 1.25)
            ax.plot(steps[last], y, "x", color="#c0392b", ms=8, mew=2, zorder=5, clip_on=False)


def llc_grid(llc: pd.DataFrame, panels: list[Panel], max_step: int, title: str) -> Figure:
    """LLC against step with +-1 sd bands, one panel per condition on common axes.

    llc: condition, seed, step, llc_mean, llc_std, healthy. Unhealthy estimates: hollow markers.
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
                _llc_curve(ax, data[data["seed"] == seed], st.color, seed_dash(dash[seed]), ms=2.5)
        else:
            ax.text(0.5, 0.5, "no estimates", transform=ax.transAxes, ha="center", color="#888")
        ax.set_title(panel.title, color=_title_color(st.color))
        step_axis(ax, max_step, label=False, minor=False, label_one=False)
    _hide_unused(axes, len(panels))
    _llc_ylim(axes.flat[0], llc)
    for ax, panel in zip(axes.flat, panels, strict=False):
        d = by_cond.get(panel.key)
        if d is not None:
            mark_outside(ax, d["step"].to_numpy(float), d["llc_mean"].to_numpy(float),
                         style(panel.activation).color, ~d["healthy"].to_numpy(bool))
    _label_grid(fig, axes, "LLC", title)
    _grid_footer(fig, seeds, "band: ±1 sd over chains; hollow markers: estimates flagged "
                             "unhealthy; y range: 1st percentile to maximum of the healthy "
                             "estimates; triangles at the edge mark estimates beyond it")
    return fig


def llc_limits(llc: pd.DataFrame, quantile: float = 0.01) -> tuple[float, float] | None:
    """Robust LLC axis limits: from the `quantile` of the healthy means to their maximum, 0
    included, padded. A few extreme estimates (one unstable condition, unhealthy outliers) then
    no longer flatten every other curve; what falls outside is marked at the edge."""
    ok = llc[llc["healthy"]] if llc["healthy"].any() else llc
    v = ok["llc_mean"].to_numpy(float)
    v = v[np.isfinite(v)]
    if not len(v):
        return None
    # the top is the largest healthy mean (llc.py flags estimates above d/2 as unhealthy); the
    # bottom a low quantile, since negative excursions (eps too large early on) dominate outliers
    lo = np.quantile(v, quantile) if len(v) >= 50 else v.min()
    hi = v.max()
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    pad = 0.08 * max(hi - lo, 1e-6)
    return lo - pad, hi + pad


def _llc_ylim(ax, llc: pd.DataFrame) -> None:
    limits = llc_limits(llc)
    if limits is not None:
        ax.set_ylim(*limits)


def mark_outside(ax, x: np.ndarray, y: np.ndarray, color: str, hollow: np.ndarray) -> None:
    """Points beyond the y limits as triangles at the edge (hollow: unhealthy)."""
    lo, hi = ax.get_ylim()
    span = hi - lo
    for sel, edge, marker in ((y > hi, hi - 0.03 * span, "^"), (y < lo, lo + 0.03 * span, "v")):
        if not sel.any():
            continue
        for h in (False, True):
            pick = sel & (hollow == h)
            if pick.any():
                ax.plot(x[pick], np.full(pick.sum(), edge), marker, ms=5, zorder=6, ls="none",
                        mfc="white" if h else color, mec=color, mew=1.0, clip_on=False)


def _llc_curve(ax, d: pd.DataFrame, color: str, ls, ms: float = 3.5) -> None:
    """Mean and +-1 sd band through the healthy estimates; unhealthy ones as hollow markers,
    unconnected (a line through them would draw a transition that is not there)."""
    d = d.sort_values("step")
    healthy = d["healthy"].to_numpy(bool)
    x = d["step"].to_numpy(float)
    y = d["llc_mean"].to_numpy(float)
    sd = d["llc_std"].fillna(0).to_numpy(float)
    ok = healthy & np.isfinite(y)
    ax.fill_between(x[ok], (y - sd)[ok], (y + sd)[ok], color=color, alpha=0.16, lw=0, zorder=2)
    ax.plot(x[ok], y[ok], color=color, ls=ls, lw=1.2, zorder=3)
    ax.plot(x[ok], y[ok], "o", color=color, ms=ms, zorder=4)
    ax.plot(x[~healthy], y[~healthy], "o", mfc="white", mec=color, mew=1.1, ms=ms * 1.5, zorder=4)


# ---------------------------------------------------------------------------------------------
# LLC against loss


def llc_vs_loss(traj: pd.DataFrame, panels: list[Panel], title: str) -> Figure:
    """LLC against loss along training, one trajectory per condition (mean over seeds).

    traj: condition, step, loss, llc_mean, healthy (all seeds healthy at that step). The top
    panel holds every condition, with a legend grouped by family; below, one panel per family
    with the other families in grey.
    """
    families = list(dict.fromkeys(style(p.activation).family for p in panels))
    fcols = min(4, len(families))
    frows = math.ceil(len(families) / fcols) if len(families) > 1 else 0
    width, main_h, fam_w, fam_h = 12.5, 4.6, 2.55, 1.9
    height = 0.45 + main_h + 0.75 + (frows * (fam_h + 0.8) + 0.1 if frows else 0)
    fig = plt.figure(figsize=(width, height))
    ax_all = fig.add_axes(_inches(fig, 0.8, 0.45, 7.6, main_h))
    ax_leg = fig.add_axes(_inches(fig, 8.75, 0.45, 3.6, main_h))
    by_cond = dict(tuple(traj.groupby("condition")))
    for panel in panels:
        d = by_cond.get(panel.key)
        if d is not None:
            _trajectory(ax_all, d, style(panel.activation), lw=1.3)
    _traj_axes(ax_all, traj)
    ax_all.set_title(title, fontsize=11)
    _family_legend(ax_leg, panels)
    top = 0.45 + main_h + 0.75 + 0.3
    for k, family in enumerate(families if frows else []):
        r, c = divmod(k, fcols)
        ax = fig.add_axes(_inches(fig, 0.8 + c * (fam_w + 0.45), top + r * (fam_h + 0.8), fam_w,
                                  fam_h))
        for panel in panels:
            d = by_cond.get(panel.key)
            if d is None:
                continue
            if style(panel.activation).family == family:
                _trajectory(ax, d, style(panel.activation), lw=1.2, zorder=3)
            else:
                ax.plot(d["loss"], d["llc_mean"], color="#dddddd", lw=0.7, zorder=1)
        _traj_axes(ax, traj, labels=False)
        ax.set_title(family)
        if c == 0:
            ax.set_ylabel("LLC")
        ax.set_xlabel("loss (log)")
    return fig


def _trajectory(ax, d: pd.DataFrame, st: Style, lw: float, zorder: int = 3) -> None:
    d = d.sort_values("step")
    x, y = d["loss"].to_numpy(float), d["llc_mean"].to_numpy(float)
    ok = d["healthy"].to_numpy(bool)
    line = d["any_healthy"].to_numpy(bool) if "any_healthy" in d else ok
    ax.plot(x[line], y[line], color=st.color, lw=lw, zorder=zorder, alpha=0.9)
    ax.plot(x[ok], y[ok], st.marker, color=st.color, ms=2.5, zorder=zorder)
    ax.plot(x[~ok], y[~ok], st.marker, mfc="white", mec=st.color, ms=4, zorder=zorder)
    if len(x):  # the final checkpoint: a large marker
        ax.plot(x[-1], y[-1], st.marker, color=st.color, ms=8, mec="black", mew=0.6,
                zorder=zorder + 1, mfc=st.color if ok[-1] else "white")


def _traj_axes(ax, traj: pd.DataFrame, labels: bool = True) -> None:
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(_log_label))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    lo, hi = common_loss_limits(traj["loss"].to_numpy(float))
    ax.set_xlim(lo, hi)
    _llc_ylim(ax, traj.assign(llc_std=0.0))
    if labels:
        ax.set_xlabel("loss at the checkpoint (log)  —  training moves right to left")
        ax.set_ylabel("LLC (mean over seeds)")


def _family_legend(ax, panels: list[Panel]) -> None:
    """A legend grouped by family, in its own axes."""
    ax.axis("off")
    handles: list[Line2D] = []
    seen_family = None
    for panel in panels:
        st = style(panel.activation)
        if st.family != seen_family:
            handles.append(Line2D([], [], ls="none", label=f"— {st.family} —"))
            seen_family = st.family
        handles.append(Line2D([], [], color=st.color, marker=st.marker, lw=1.3, ms=5,
                              label=panel.title))
    handles.append(Line2D([], [], ls="none", marker="o", mfc="white", mec="#444", ms=6,
                          label="hollow: unhealthy LLC"))
    handles.append(Line2D([], [], ls="none", marker="o", color="#444", mec="black", ms=8,
                          label="large: final checkpoint"))
    ncol = 1 if len(handles) <= 24 else 2
    ax.legend(handles=handles, loc="upper left", frameon=False, ncol=ncol, fontsize=7.5,
              handlelength=2.2, borderaxespad=0, labelspacing=0.35)


# ---------------------------------------------------------------------------------------------
# Geometry snapshots


@dataclass
class Snapshot:
    """The weights of one instance at one step, with what happened there."""

    step: int
    W: np.ndarray  # (m, n)
    b: np.ndarray | None  # (n,)
    caption: str  # e.g. "loss drop; k-gon 4 -> 5"


def kgon_axes(ax, W: np.ndarray, b: np.ndarray | None, color: str, radius: float,
              numbers: bool = True) -> str:
    """Draw an m = 2 instance: its k-gon, its feature vectors, the off-polygon bias signs.

    Returns the k-gon label ("5+"). Vertices come from devtms.geometry.kgon.
    """
    import torch

    from devtms import geometry

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
        ax.text(0, 0, "non-finite\nweights", ha="center", va="center", color="#c0392b")
        return "diverged"
    poly = geometry.kgon(Wt, bt)
    verts = [int(v) for v in str(poly.vertices[0]).split()]
    rep = geometry.represented(Wt)[0].numpy()
    if len(verts) >= 3:
        ax.add_patch(Polygon(W[:, verts].T, closed=True, fc=color, alpha=0.15, ec=color, lw=1.4,
                             zorder=1))
    elif len(verts) == 2:
        ax.plot(W[0, verts], W[1, verts], color=color, lw=1.4, zorder=1)
    fcols = feature_colors(n)
    alpha = np.where(rep, 1.0, 0.5)
    rgba = [matplotlib.colors.to_rgba(fcols[j], alpha[j]) for j in range(n)]
    ax.quiver(np.zeros(n), np.zeros(n), W[0], W[1], color=rgba, angles="xy", scale_units="xy",
              scale=1, width=0.022, headwidth=3.2, headlength=4, headaxislength=3.6, zorder=3)
    for j in range(n):
        x, y = W[0, j], W[1, j]
        off_poly = j not in verts and b is not None
        if off_poly:
            sign = "+" if b[j] > 0 else "-" if b[j] < 0 else "0"
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


def gram_axes(ax_heat, ax_bars, W: np.ndarray, numbers: bool = True) -> None:
    """Anthropic's picture of an instance: W^T W and feature norms coloured by interference."""
    import torch

    from devtms import geometry

    Wt = torch.as_tensor(W, dtype=torch.float64)
    G = geometry.gram(Wt).numpy()
    norms = geometry.feature_norms(Wt).numpy()
    interf = np.sqrt(geometry.interference(Wt).numpy())
    n = G.shape[0]
    lim = max(float(np.nanmax(np.abs(G))) if np.isfinite(G).any() else 1.0, 1e-6)
    ax_heat.imshow(G, cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
    ax_heat.set_xticks([])
    ax_heat.set_yticks([])
    ax_heat.grid(False)
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


# ---------------------------------------------------------------------------------------------
# One condition in detail


@dataclass
class SeedTrack:
    """Everything the detail figure shows for one instance."""

    seed: int
    instance: int
    loss: pd.DataFrame  # step, loss
    llc: pd.DataFrame | None  # step, llc_mean, llc_std, healthy
    geometry: pd.DataFrame | None  # step, k_gon, k_gon_label, dims_per_feature
    events: pd.DataFrame  # kind, step, size, description (may be empty)
    snapshots: list[Snapshot]
    diverged: bool = False


def _event_group(kind: str) -> str:
    if kind == "loss_drop":
        return "loss_drop"
    return "llc" if kind.startswith("llc") else "geometry"


def condition_figure(title: str, activation: str, tracks: list[SeedTrack], max_step: int,
                     m: int, loss_limits: tuple[float, float] | None = None) -> Figure:
    """Loss, LLC and geometry over training (seeds overlaid, transitions marked), then geometry
    snapshots at the transitions, one row per seed."""
    st = style(activation)
    has_llc = any(t.llc is not None and len(t.llc) for t in tracks)
    shown = [t for t in tracks if t.snapshots]
    n_snap = max((len(t.snapshots) for t in shown), default=0)
    width, left, right = 11.5, 0.85, 0.3
    heights = [2.0, 1.7, 0.85] if has_llc else [2.0, 0.85]
    curves_h = 0.8 + sum(heights) + 0.1 * (len(heights) - 1) + 0.5
    snap_w, pair = _snapshot_size(n_snap, m, width - left - right)
    row_h = 0.5 + snap_w  # caption above each snapshot
    snaps_h = (0.35 + row_h * len(shown) + 0.1) if n_snap else 0.0
    fig = plt.figure(figsize=(width, curves_h + snaps_h))
    axes, y = [], 0.8
    for i, h in enumerate(heights):
        axes.append(fig.add_axes(_inches(fig, left, y, width - left - right, h),
                                 sharex=axes[0] if axes else None))
        y += h + 0.1
        if i < len(heights) - 1:
            axes[-1].xaxis.set_tick_params(which="both", labelbottom=False)
    ax_loss, ax_geo = axes[0], axes[-1]
    ax_llc = axes[1] if has_llc else None
    for i, t in enumerate(tracks):
        ls = seed_dash(i)
        ax_loss.plot(t.loss["step"], t.loss["loss"], color=st.color, ls=ls, lw=1.4)
        _mark_divergence(ax_loss, t.loss["step"].to_numpy(), t.loss["loss"].to_numpy(float),
                         loss_limits[1] if loss_limits else None)
        if ax_llc is not None and t.llc is not None and len(t.llc):
            _llc_curve(ax_llc, t.llc, st.color, ls)
        _geometry_track(ax_geo, t, st.color, ls, m, labels=len(tracks) <= 3)
        _mark_events(axes, ax_loss, ax_llc, t, ls)
    loss_axis(ax_loss, limits=loss_limits)
    if ax_llc is not None:
        ax_llc.set_ylabel("LLC (±1 sd)")
        llc_all = pd.concat([t.llc for t in tracks if t.llc is not None and len(t.llc)])
        limits = llc_limits(llc_all, quantile=0.0)
        if limits is not None:
            ax_llc.set_ylim(*limits)
            for t in tracks:
                if t.llc is not None and len(t.llc):
                    mark_outside(ax_llc, t.llc["step"].to_numpy(float),
                                 t.llc["llc_mean"].to_numpy(float), st.color,
                                 ~t.llc["healthy"].to_numpy(bool))
    for ax in axes:
        step_axis(ax, max_step, label=ax is ax_geo)
        ax.yaxis.set_label_coords(-0.055, 0.5)
    H = fig.get_size_inches()[1]
    fig.text(0.01, 1 - 0.1 / H, f"{title}: loss, LLC and geometry over training", va="top",
             fontsize=12, color=_title_color(st.color))
    fig.legend(handles=_condition_legend(tracks, st.color, has_llc), loc="upper left",
               bbox_to_anchor=(left / width - 0.01, 1 - 0.38 / H), ncol=8, frameon=False,
               fontsize=8)
    if n_snap:
        _snapshot_rows(fig, shown, st.color, m, n_snap, curves_h, snap_w, pair, left)
    return fig


def _condition_legend(tracks: list[SeedTrack], color: str, has_llc: bool) -> list[Line2D]:
    if len(tracks) <= 6:
        legend = [Line2D([], [], color=color, ls=seed_dash(i), lw=1.4, label=f"seed {t.seed}")
                  for i, t in enumerate(tracks)]
    else:
        legend = [Line2D([], [], color=color, lw=1.4,
                         label=f"{len(tracks)} seeds (line style cycles)")]
    legend += [Line2D([], [], **EVENT_STYLE["loss_drop"], marker="v", ms=5,
                      label="loss drop"),
               Line2D([], [], **EVENT_STYLE["llc"], label="LLC jump"),
               Line2D([], [], **EVENT_STYLE["geometry"], label="geometry change")]
    if has_llc:
        legend.append(Line2D([], [], ls="none", marker="o", mfc="white", mec=color, ms=6,
                             label="unhealthy LLC"))
    if any(t.diverged for t in tracks):
        legend.append(Line2D([], [], ls="none", marker="x", color="#c0392b", mew=2, ms=7,
                             label="diverged"))
    return legend


def _snapshot_size(n_snap: int, m: int, avail: float) -> tuple[float, float]:
    """Width of one snapshot (and of its bar panel for m > 2) so that n_snap fit in avail."""
    if not n_snap:
        return 0.0, 0.0
    per = avail / n_snap
    if m == 2:
        return min(1.45, per - 0.2), 0.0
    size = min(1.25, (per - 0.35) / 1.55)
    return size, 0.55 * size


def _geometry_track(ax, t: SeedTrack, color: str, ls, m: int, labels: bool = True) -> None:
    """k of the k-gon (m = 2; its label written at each change when `labels`) or D*."""
    g = t.geometry
    if g is None or not len(g):
        return
    g = g.sort_values("step")
    if m == 2 and "k_gon" in g and g["k_gon"].notna().any():
        k = pd.to_numeric(g["k_gon"], errors="coerce").to_numpy(float)
        ax.step(g["step"], k, where="post", color=color, ls=ls, lw=1.3)
        names = g["k_gon_label"].fillna("").astype(str).to_numpy()
        steps = g["step"].to_numpy()
        for j in range(len(names) if labels else 0):
            if names[j] and (j == 0 or names[j] != names[j - 1]) and np.isfinite(k[j]):
                ax.annotate(names[j], (steps[j], k[j]), xytext=(2, 3), textcoords="offset points",
                            fontsize=7, color=_title_color(color))
        ax.set_ylabel("k-gon")
        ax.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        top = np.nanmax(k) if np.isfinite(k).any() else 1
        ax.set_ylim(min(0, np.nanmin(k)) - 0.3 if np.isfinite(k).any() else -0.3, top + 1.3)
    else:
        dims = g["dims_per_feature"].to_numpy(float)
        ax.plot(g["step"], dims, color=color, ls=ls, lw=1.3)
        octave_axis(ax, np.concatenate([dims, ax.get_ylim() if ax.lines[:-1] else []]))
        ax.set_ylabel("dims / feature")


def octave_axis(ax, values: np.ndarray) -> None:
    """A log2 axis spanning whole octaves, ticks labelled 1, 1/2, 1/4, ... (the D* plateaus)."""
    v = values[np.isfinite(values) & (values > 0)]
    if not len(v):
        return
    lo, hi = math.floor(math.log2(v.min()) + 1e-9), math.ceil(math.log2(v.max()) - 1e-9)
    hi = max(hi, lo + 1)
    ax.set_yscale("log", base=2)
    ax.set_ylim(2.0**lo, 2.0**hi)
    exps = list(range(lo, hi + 1))
    if len(exps) > 6:
        exps = exps[:: math.ceil(len(exps) / 6)]
    ax.yaxis.set_major_locator(matplotlib.ticker.FixedLocator([2.0**e for e in exps]))
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(
        lambda y, _p: "" if y <= 0 else (f"{y:g}" if y >= 1 else f"1/{round(1 / y)}")))
    ax.yaxis.set_minor_locator(matplotlib.ticker.NullLocator())


def _mark_events(axes, ax_loss, ax_llc, t: SeedTrack, ls) -> None:
    """Vertical lines at the events (colour: kind, line style: the seed's), markers on curves."""
    if t.events is None or not len(t.events):
        return
    for kind, step in zip(t.events["kind"], t.events["step"], strict=True):
        group = _event_group(str(kind))
        if group == "llc" and ax_llc is None:
            continue
        for ax in axes:
            ax.axvline(step, **{**EVENT_STYLE[group], "ls": ls, "alpha": 0.6}, zorder=1)
    drops = t.events[t.events["kind"] == "loss_drop"]
    if len(drops):
        curve = t.loss.set_index("step")["loss"]
        y = [curve.get(s, np.nan) for s in drops["step"]]
        ax_loss.plot(drops["step"], y, "v", color="black", ms=6, zorder=5)


def _snapshot_rows(fig: Figure, tracks: list[SeedTrack], color: str, m: int, n_snap: int,
                   top: float, size: float, bar_w: float, left: float) -> None:
    """One row of geometry snapshots per seed, starting `top` inches from the figure's top."""
    width = fig.get_size_inches()[0]
    avail = width - left - 0.3
    pitch = avail / n_snap
    what = ("feature vectors W_i (numbered), polygon = robust convex hull, circled +/−: bias "
            "sign of a feature off the polygon" if m == 2 else
            "W^T W (red +, blue −) and feature norms ||W_i|| coloured by sqrt(interference): "
            "dark none, yellow strong")
    H = fig.get_size_inches()[1]
    fig.text(0.01, 1 - (top + 0.05) / H, f"Geometry at init, at the transitions and at the end — "
             f"{what}", va="top", fontsize=9, color="#333333")
    y = top + 0.35
    for t in tracks:
        radius = _radius(t.snapshots)
        fig.text(0.01, 1 - (y + 0.5 + size / 2) / H, f"seed {t.seed}", va="center", fontsize=9,
                 rotation=90)
        for c, snap in enumerate(t.snapshots):
            x0 = left + c * pitch
            ax = fig.add_axes(_inches(fig, x0, y + 0.5, size, size))
            if m == 2:
                label = kgon_axes(ax, snap.W, snap.b, color, radius)
                head = f"step {snap.step}: {label}"
            else:
                gram_axes(ax, fig.add_axes(_inches(fig, x0 + size + 0.08, y + 0.5, bar_w, size)),
                          snap.W)
                head = f"step {snap.step}"
            ax.set_title(f"{head}\n{snap.caption}", fontsize=7.5, loc="left", pad=3)
        y += 0.5 + size


def _radius(snaps: list[Snapshot]) -> float:
    norms = [np.linalg.norm(s.W, axis=0).max() for s in snaps if np.all(np.isfinite(s.W))]
    return 1.3 * max(max(norms, default=1.0), 1e-3)


# ---------------------------------------------------------------------------------------------
# Final geometry of every condition


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
            kgon_axes(ax, snap.W, snap.b, st.color, _radius([snap]), numbers=True)
        else:
            G = snap.W.T @ snap.W
            lim = max(float(np.nanmax(np.abs(G))) if np.isfinite(G).any() else 1.0, 1e-6)
            ax.imshow(G, cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
        ax.set_title(f"{panel.title}\n{note}", fontsize=7.5, color=_title_color(st.color),
                     loc="center")
    _hide_unused(axes, len(items))
    _grid_title(fig, title)
    return fig


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
    shapes = ("o", "s", "^", "D", "v", "P", "X", "*")
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
            ax.scatter(d[value][ok], y[ok], c=list(colors[ok]), marker=shapes[r % len(shapes)],
                       s=22, edgecolors="black", linewidths=0.4, zorder=3)
            ax.scatter(d[value][~ok], y[~ok], facecolors="white", edgecolors=list(colors[~ok]),
                       marker=shapes[r % len(shapes)], s=26, linewidths=1.1, zorder=3)
        if log:
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(_log_label))
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel(label)
    axes[0, 0].set_yticks(range(len(acts)))
    axes[0, 0].set_yticklabels(acts)
    for tick, a in zip(axes[0, 0].get_yticklabels(), acts, strict=True):
        tick.set_color(_title_color(style(a).color))
    axes[0, 0].set_ylim(len(acts) - 0.5, -0.5)
    handles = [Line2D([], [], ls="none", marker=shapes[r % len(shapes)], color="#666",
                      mec="black", label=run) for r, run in enumerate(runs)]
    H = fig.get_size_inches()[1]
    fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(0.01, 1 - 0.4 / H),
               frameon=False, ncol=min(6, len(runs)))
    _grid_title(fig, title)
    return fig

