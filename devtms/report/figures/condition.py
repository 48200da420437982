"""One condition in detail: loss, LLC and geometry over training with the seeds overlaid and
their transitions marked, then rows of geometry snapshots at the transitions, one per seed.

Transitions are vertical lines coloured by kind (loss drop black, LLC jump red, geometry
change purple: `EVENT_STYLE`) in the line style of the seed they belong to.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib import ticker
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from devtms.report.figures.axes import (
    NOT_AT_MINIMUM_COLOR,
    llc_curve,
    llc_limits,
    loss_axis,
    mark_divergence,
    mark_outside,
    not_at_minimum,
    octave_axis,
    step_axis,
)
from devtms.report.figures.geometry import Snapshot, gram_axes, kgon_row_axes, snapshot_radius
from devtms.report.figures.layout import inches
from devtms.report.figures.style import (
    DIVERGED_COLOR,
    EVENT_STYLE,
    seed_dash,
    style,
    styled,
    title_color,
)

CAPTION_SIZE = 7.5  # points: the snapshots' captions
CHAR_WIDTH = 0.62  # of the font size: DejaVu Sans's widest common characters (digits, →, +)


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


@styled
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
    bottom = 0.3 if m > 2 else 0.1  # m > 2: the norm bars' tick labels under the last row
    snaps_h = (0.35 + row_h * len(shown) + bottom) if n_snap else 0.0
    fig = Figure(figsize=(width, curves_h + snaps_h))
    axes: list[Axes] = []
    y = 0.8
    for i, h in enumerate(heights):
        axes.append(fig.add_axes(inches(fig, left, y, width - left - right, h),
                                 sharex=axes[0] if axes else None))
        y += h + 0.1
        if i < len(heights) - 1:
            axes[-1].xaxis.set_tick_params(which="both", labelbottom=False)
    ax_loss, ax_geo = axes[0], axes[-1]
    ax_llc = axes[1] if has_llc else None
    for i, t in enumerate(tracks):
        ls = seed_dash(i)
        ax_loss.plot(t.loss["step"], t.loss["loss"], color=st.color, ls=ls, lw=1.4)
        mark_divergence(ax_loss, t.loss["step"].to_numpy(), t.loss["loss"].to_numpy(float),
                        loss_limits[1] if loss_limits else None)
        if ax_llc is not None and t.llc is not None and len(t.llc):
            llc_curve(ax_llc, t.llc, st.color, ls)
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
                                 ~t.llc["healthy"].to_numpy(bool), not_at_minimum(t.llc))
    for ax in axes:
        step_axis(ax, max_step, label=ax is ax_geo)
        ax.yaxis.set_label_coords(-0.055, 0.5)
    H = fig.get_size_inches()[1]
    fig.text(0.01, 1 - 0.1 / H, f"{title}: loss, LLC and geometry over training", va="top",
             fontsize=12, color=title_color(st.color))
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
        if any(t.llc is not None and not_at_minimum(t.llc).any() for t in tracks):
            legend.append(Line2D([], [], ls="none", marker="x", color=NOT_AT_MINIMUM_COLOR,
                                 ms=6, label="not at a minimum (no LLC)"))
    if any(t.diverged for t in tracks):
        legend.append(Line2D([], [], ls="none", marker="x", color=DIVERGED_COLOR, mew=2, ms=7,
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


def _geometry_track(ax: Axes, t: SeedTrack, color: str, ls: str | tuple, m: int,
                    labels: bool = True) -> None:
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
                            fontsize=7, color=title_color(color))
        ax.set_ylabel("k-gon")
        ax.yaxis.set_major_locator(ticker.MaxNLocator(integer=True))
        top = np.nanmax(k) if np.isfinite(k).any() else 1
        ax.set_ylim(min(0, np.nanmin(k)) - 0.3 if np.isfinite(k).any() else -0.3, top + 1.3)
    else:
        dims = g["dims_per_feature"].to_numpy(float)
        ax.plot(g["step"], dims, color=color, ls=ls, lw=1.3)
        octave_axis(ax, np.concatenate([dims, ax.get_ylim() if ax.lines[:-1] else []]))
        ax.set_ylabel("dims / feature")


def _mark_events(axes: list[Axes], ax_loss: Axes, ax_llc: Axes | None, t: SeedTrack,
                 ls: str | tuple) -> None:
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
    what = ("W_i numbered, polygon = robust convex hull, circled +/−/o: the bias sign of a "
            "feature off it" if m == 2 else
            "W^T W (red +, blue −), norms ||W_i|| by sqrt(interference): dark none, yellow strong")
    H = fig.get_size_inches()[1]
    fig.text(0.01, 1 - (top + 0.05) / H, f"Geometry at init, transitions and end — {what}",
             va="top", fontsize=9, color="#333333", wrap=True)
    y = top + 0.35
    for t in tracks:
        fig.text(0.01, 1 - (y + 0.5 + size / 2) / H, f"seed {t.seed}", va="center", fontsize=9,
                 rotation=90)
        if m == 2:
            _kgon_row(fig, t.snapshots, color, left, y + 0.5, size, pitch)
        else:
            for c, snap in enumerate(t.snapshots):
                x0 = left + c * pitch
                ax = fig.add_axes(inches(fig, x0, y + 0.5, size, size))
                gram_axes(ax, fig.add_axes(inches(fig, x0 + size + 0.08, y + 0.5, bar_w, size)),
                          snap.W)
                ax.set_title(f"step {snap.step}\n{_fit(snap.caption, pitch)}", fontsize=CAPTION_SIZE,
                             loc="left", pad=3)
        y += 0.5 + size


def _kgon_row(fig: Figure, snaps: list[Snapshot], color: str, left: float, top: float,
              size: float, pitch: float) -> None:
    """One seed's k-gon snapshots on one axes `top` inches from the figure's top, each `size`
    inches square, `pitch` inches apart, captioned above."""
    radius = snapshot_radius(snaps)
    per_inch = 2 * radius / size
    ax = fig.add_axes(inches(fig, left, top, (len(snaps) - 1) * pitch + size, size))
    labels = kgon_row_axes(ax, snaps, color, radius, pitch * per_inch)
    for c, (snap, label) in enumerate(zip(snaps, labels, strict=True)):
        ax.annotate(f"step {snap.step}: {label}\n{_fit(snap.caption, pitch)}",
                    (c * pitch * per_inch - radius,
                    radius), xytext=(0, 3), textcoords="offset points", ha="left", va="baseline",
                    fontsize=CAPTION_SIZE, annotation_clip=False)


def _fit(caption: str, pitch: float) -> str:
    """A snapshot's caption in at most two lines that fit in `pitch` inches, the space before
    the next snapshot's caption ("…" where it is cut)."""
    width = max(8, int(pitch * 72 / (CHAR_WIDTH * CAPTION_SIZE)) - 1)
    return "\n".join(textwrap.wrap(caption, width, max_lines=2, placeholder="…"))
