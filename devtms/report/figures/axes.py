"""Axes shared by the figures: scales, limits, tick labels, and the marks drawn on them.

- training steps on a symmetric-log axis (`step_axis`): linear between 0 and 1, so step 0
  (the initialisation) has a place, logarithmic from 1 on, ticks at 0, 1, 10, 100, ...;
- loss on a log axis (`loss_axis`), LLC on a linear one (an unhealthy estimate can be negative);
- LLC error bands are +-1 standard deviation over chains; unhealthy estimates are hollow
  markers (`llc_curve`); values beyond the axis limits are triangles at the edge
  (`mark_outside`); a diverged curve ends in a red x (`mark_divergence`).

Every axis has at least two labelled ticks in view: a log axis (`log_axis`) labels powers of
ten, and where fewer than two fall in its range 2x and 5x, then every digit, then values
rounded to a few significant digits (`log_ticks`). Tick labels avoid mathtext (superscript
digits instead): one embedded font per PDF keeps saving fast.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib import markers, rcParams, ticker
from matplotlib.axes import Axes
from matplotlib.axis import Axis
from matplotlib.lines import Line2D

from devtms.report.figures.style import DIVERGED_COLOR

SUPERSCRIPT = str.maketrans("0123456789-", "⁰¹²³⁴⁵⁶⁷⁸⁹⁻")


def step_axis(ax: Axes, max_step: int, label: bool = True, minor: bool = True,
              label_one: bool = True) -> None:
    """Training steps: linear on [0, 1] (so step 0 = init is shown), log from 1 on.

    minor=False leaves out the minor ticks (2..9 x powers of ten).
    label_one=False leaves tick 1 unlabelled (crowded next to 0), unless 0 would be alone.
    """
    ax.set_xscale("symlog", linthresh=1.0, linscale=0.4)
    right = max(max_step, 1) * 1.15
    ax.set_xlim(-0.12, right)
    top = max(0, math.ceil(math.log10(max(max_step, 1))))
    ticks = [0] + [10**e for e in range(top + 1) if 10**e <= right]
    label_one = label_one or len(ticks) <= 2
    ax.set_xticks(ticks)
    ax.set_xticklabels(["0"] + [_pow10(t) if t > 1 or label_one else "" for t in ticks[1:]])
    ax.xaxis.set_minor_locator(ticker.NullLocator())
    if minor:
        minor_tick_marks(ax, [s * 10**e for e in range(top + 1) for s in range(2, 10)
                              if s * 10**e <= right])
    if label:
        ax.set_xlabel("training step (log; 0 = initialisation)")


def minor_tick_marks(ax: Axes, steps: list[float]) -> None:
    """Unlabelled minor ticks under the x-axis at `steps`, drawn as they look but as one
    artist: matplotlib's own minor ticks are two lines and two texts each, copied from a
    template, and were a third of a condition figure's drawing time."""
    ax.add_artist(Line2D(steps, np.zeros(len(steps)), linestyle="none",
                         marker=markers.TICKDOWN, markersize=rcParams["xtick.minor.size"],
                         markeredgewidth=rcParams["xtick.minor.width"],
                         color=rcParams["xtick.color"], clip_on=False,
                         transform=ax.get_xaxis_transform()))


def joined_by_nan(lines: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Several (x, y) polylines as one, broken by NaNs: drawn as one artist, they look the same
    where they share a style (the grey background curves of a grid: one line per panel instead
    of one per condition, a fifth of loss_grid's time)."""
    if not lines:
        return np.empty(0), np.empty(0)
    xs, ys = zip(*((np.append(np.asarray(x, float), np.nan), np.append(np.asarray(y, float),
                                                                        np.nan))
                   for x, y in lines), strict=True)
    return np.concatenate(xs), np.concatenate(ys)


def _pow10(t: int) -> str:
    e = round(math.log10(t))
    return {0: "1", 1: "10", 2: "100"}.get(e, "10" + str(e).translate(SUPERSCRIPT))


def loss_axis(ax: Axes, label: bool = True, limits: tuple[float, float] | None = None) -> None:
    """Log loss axis (`log_axis`): at least two labelled ticks however narrow the range."""
    log_axis(ax.yaxis)
    if limits is not None:
        ax.set_ylim(*limits)
    if label:
        ax.set_ylabel("loss (log)")


def log_axis(axis: Axis) -> None:
    """A log scale whose labelled ticks follow the view (`LabelledLogLocator`), with unlabelled
    minor ticks at 2..9 x powers of ten. axis: ax.xaxis or ax.yaxis."""
    ax = axis.axes
    (ax.set_xscale if axis is ax.xaxis else ax.set_yscale)("log")
    axis.set_major_locator(LabelledLogLocator())
    axis.set_major_formatter(ticker.FuncFormatter(log_tick_label))
    axis.set_minor_locator(ticker.LogLocator(base=10, subs=np.arange(2, 10)))
    axis.set_minor_formatter(ticker.NullFormatter())


class LabelledLogLocator(ticker.Locator):
    """Major ticks of a log axis from `log_ticks` over the current view: two or more."""

    def __call__(self) -> list[float]:
        return self.tick_values(*self.axis.get_view_interval())

    def tick_values(self, vmin: float, vmax: float) -> list[float]:
        return log_ticks(vmin, vmax)


# The mantissas tried in turn until at least two ticks fall in the range.
LOG_MANTISSAS = ((1,), (1, 2, 5), (1, 2, 3, 4, 5, 6, 7, 8, 9))


def log_ticks(lo: float, hi: float) -> list[float]:
    """Tick values in [lo, hi] for a log axis, at least two (for a positive range): powers of
    ten; else also 2x and 5x; else every digit x a power of ten; else values evenly spaced in
    log, rounded to the fewest significant digits that keep them apart."""
    lo, hi = sorted((float(lo), float(hi)))
    if not (lo > 0 and np.isfinite(hi)):
        return []
    first, last = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    for mantissas in LOG_MANTISSAS:
        ticks = [float(f"{m}e{e}") for e in range(first, last + 1) for m in mantissas]
        ticks = [t for t in ticks if lo <= t <= hi]
        if len(ticks) >= 2:
            return ticks
    inner = np.geomspace(lo, hi, 5)[1:-1]
    for digits in range(2, 8):
        ticks = sorted({float(f"{v:.{digits - 1}e}") for v in inner})
        ticks = [t for t in ticks if lo <= t <= hi]
        if len(ticks) >= 2:
            return ticks
    return [float(inner[0]), float(inner[-1])]


def log_tick_label(v: float, _pos: int | None = None) -> str:
    """A log axis's tick label: powers of ten as `log_label`, other values in plain digits
    between 0.001 and 10^4, else as m×10ⁿ."""
    if v <= 0 or not np.isfinite(v):
        return ""
    if (power := log_label(v)) != "":
        return power
    if 1e-3 <= v < 1e4:
        return f"{v:.6g}"
    e = math.floor(math.log10(v))
    return f"{v / 10**e:.6g}×10" + str(e).translate(SUPERSCRIPT)


def log_label(v: float, _pos: int | None = None) -> str:
    """A tick label at powers of ten only: 0.01, 0.1, 1, 10, 10², ..."""
    if v <= 0 or not np.isfinite(v):
        return ""
    e = math.log10(v)
    if abs(e - round(e)) > 1e-6:
        return ""
    e = round(e)
    return {0: "1", 1: "10", -1: "0.1", -2: "0.01"}.get(e, "10" + str(e).translate(SUPERSCRIPT))


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


def octave_axis(ax: Axes, values: np.ndarray) -> None:
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
    ax.yaxis.set_major_locator(ticker.FixedLocator([2.0**e for e in exps]))
    ax.yaxis.set_major_formatter(ticker.FuncFormatter(
        lambda y, _p: "" if y <= 0 else (f"{y:g}" if y >= 1 else f"1/{round(1 / y)}")))
    ax.yaxis.set_minor_locator(ticker.NullLocator())


def llc_limits(llc: pd.DataFrame, quantile: float = 0.01) -> tuple[float, float] | None:
    """Robust LLC axis limits: from the `quantile` of the healthy means to their maximum, 0
    included, padded. A few extreme estimates (one unstable condition, unhealthy outliers) then
    no longer flatten every other curve; what falls outside is marked at the edge.

    llc: llc_mean, healthy (bool)."""
    ok = llc[llc["healthy"]] if llc["healthy"].any() else llc
    v = ok["llc_mean"].to_numpy(float)
    v = v[np.isfinite(v)]
    if not len(v):
        return None
    # the top is the largest healthy mean (the LLC stage flags estimates above d/2 as
    # unhealthy); the bottom a low quantile, since negative excursions (eps too large early
    # on) dominate outliers
    lo = np.quantile(v, quantile) if len(v) >= 50 else v.min()
    hi = v.max()
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    pad = 0.08 * max(hi - lo, 1e-6)
    return lo - pad, hi + pad


def llc_ylim(ax: Axes, llc: pd.DataFrame) -> None:
    limits = llc_limits(llc)
    if limits is not None:
        ax.set_ylim(*limits)


def mark_outside(ax: Axes, x: np.ndarray, y: np.ndarray, color: str, hollow: np.ndarray,
                 skip: np.ndarray | None = None) -> None:
    """Points beyond the y limits as triangles at the edge (hollow: unhealthy); `skip`: points
    drawn otherwise (not at a local minimum)."""
    if skip is not None:
        x, y, hollow = x[~skip], y[~skip], hollow[~skip]
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


def mark_divergence(ax: Axes, steps: np.ndarray, values: np.ndarray,
                    top: float | None = None) -> None:
    """An x at the last finite value of a curve that ends in NaN/inf (at most at `top`)."""
    bad = ~np.isfinite(values)
    if bad.any() and (~bad).any():
        last = np.flatnonzero(~bad)[-1]
        if last < len(values) - 1:
            y = values[last] if top is None else min(values[last], top / 1.25)
            ax.plot(steps[last], y, "x", color=DIVERGED_COLOR, ms=8, mew=2, zorder=5,
                    clip_on=False)


NOT_AT_MINIMUM_COLOR = "#9a9a9a"


def not_at_minimum(d: pd.DataFrame) -> np.ndarray:
    """Rows of llc.csv whose checkpoint is not at a local minimum: they have no LLC to plot."""
    if "state" not in d:
        return np.zeros(len(d), bool)
    return (d["state"] == "not_at_minimum").to_numpy(bool)


def llc_curve(ax: Axes, d: pd.DataFrame, color: str, ls: str | tuple, ms: float = 3.5) -> None:
    """Mean and +-1 sd band through the healthy estimates; unhealthy ones as hollow markers,
    unconnected (a line through them would draw a transition that is not there); checkpoints
    not at a local minimum as grey x at the bottom of the axes, never at their (negative) value.

    d: step, llc_mean, llc_std, healthy (bool)[, state]."""
    d = d.sort_values("step")
    absent = not_at_minimum(d)
    healthy = d["healthy"].to_numpy(bool)
    x = d["step"].to_numpy(float)
    y = d["llc_mean"].to_numpy(float)
    sd = d["llc_std"].fillna(0).to_numpy(float)
    ok = healthy & np.isfinite(y)
    flagged = ~healthy & ~absent
    ax.fill_between(x[ok], (y - sd)[ok], (y + sd)[ok], color=color, alpha=0.16, lw=0, zorder=2)
    ax.plot(x[ok], y[ok], color=color, ls=ls, lw=1.2, zorder=3)
    ax.plot(x[ok], y[ok], "o", color=color, ms=ms, zorder=4)
    ax.plot(x[flagged], y[flagged], "o", mfc="white", mec=color, mew=1.1, ms=ms * 1.5, zorder=4)
    if absent.any():
        ax.plot(x[absent], np.full(int(absent.sum()), 0.03), "x", color=NOT_AT_MINIMUM_COLOR,
                ms=ms * 1.2, mew=1.0, zorder=4, transform=ax.get_xaxis_transform(),
                clip_on=False)
