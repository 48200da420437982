"""Dynamical versus Bayesian: the three journeys through the k-gon phases, side by side.

    journeys_figure(tables, title) -> Figure with three panels sharing one colour per label:
      free energy   F_N - min F_N of every phase against N, the predicted crossovers N* with
                    their one-standard-error range
      posterior     the sampled share of each k-gon at beta = 1 against N (hollow markers where
                    chains from different starts disagree: not the posterior there)
      SGD           the share of seeds in each k-gon against training step

tables: a devtms.report.bayes.BayesTables (free_energy, crossovers, occupancy, mixing,
sgd_fractions as in RUN_DIR/bayes/).
"""

from __future__ import annotations

import math

import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from devtms.report.figures.axes import log_axis, step_axis
from devtms.report.figures.style import styled

MIN_SHOWN = 0.05  # a label is drawn in its own colour where its share reaches this somewhere
OTHER = "other"
OTHER_COLOR = "#9a9a9a"
F_CAP = 300.0  # the free-energy panel shows F_N - min F_N up to this (nats, symlog)


def label_key(label: str) -> tuple[int, str]:
    digits = "".join(ch for ch in str(label) if ch.isdigit())
    return (int(digits) if digits else -1, str(label))


def label_colors(labels: list[str]) -> dict[str, str]:
    """One colour per k-gon label, in order of vertex count (tab10, then tab20's lighter
    shades: 20 distinct colours before any repeats)."""
    tab10, tab20 = colormaps["tab10"], colormaps["tab20"]
    palette = [tab10(j) for j in range(10)] + [tab20(2 * j + 1) for j in range(10)]
    ordered = sorted(set(labels), key=label_key)
    colors = {label: palette[j % len(palette)] for j, label in enumerate(ordered)}
    colors[OTHER] = OTHER_COLOR
    return colors


@styled
def journeys_figure(tables, title: str) -> Figure:
    occ, sgd = tables.occupancy, tables.sgd_fractions
    phases = set(tables.phases["k_gon_label"])
    shown_occ = _shown(occ, "N")
    shown_sgd = _shown(sgd, "step", keep=phases | set(shown_occ["k_gon_label"]))
    labels = sorted({*tables.free_energy["k_gon_label"], *shown_occ["k_gon_label"],
                     *shown_sgd["k_gon_label"]} - {OTHER}, key=label_key)
    colors = label_colors(labels)
    fig = Figure(figsize=(13.5, 4.6))
    axes = fig.subplots(1, 3, gridspec_kw={"wspace": 0.28})
    fig.subplots_adjust(left=0.05, right=0.99, top=0.83, bottom=0.27)
    _free_energy_panel(axes[0], tables, colors)
    _occupancy_panel(axes[1], shown_occ, tables, colors)
    _sgd_panel(axes[2], shown_sgd, colors)
    handles = [Line2D([], [], color=colors[s], lw=2, marker="o", ms=4, label=s)
               for s in [*labels, OTHER] if s in colors]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 10), frameon=False,
               title="k-gon label (vertices, then + / − per off-polygon feature's bias)",
               bbox_to_anchor=(0.5, 0.0))
    fig.suptitle(title, x=0.05, ha="left")
    return fig


def _shown(table: pd.DataFrame, x: str, keep: set[str] | None = None) -> pd.DataFrame:
    """Labels that reach MIN_SHOWN somewhere (and are in `keep`, if given); the rest summed
    into OTHER."""
    if table.empty:
        return table
    peak = table.groupby("k_gon_label")["fraction"].max()
    big = set(peak.index[peak >= MIN_SHOWN]) & (keep if keep is not None else set(peak.index))
    t = table.assign(k_gon_label=table["k_gon_label"].where(table["k_gon_label"].isin(big),
                                                            OTHER))
    return t.groupby([x, "k_gon_label"], as_index=False)["fraction"].sum()


def _crossover_lines(ax: Axes, crossovers: pd.DataFrame) -> None:
    for c in crossovers.itertuples(index=False):
        if not math.isfinite(c.n_star_free_energy) or c.found_by != "estimated LLC":
            continue
        lo, hi = c.n_star_low, c.n_star_high
        if math.isfinite(lo) and math.isfinite(hi):
            ax.axvspan(lo, hi, color="#000000", alpha=0.06, lw=0)
        ax.axvline(c.n_star_free_energy, color="#444444", lw=0.8, ls=":")


def _free_energy_panel(ax: Axes, tables, colors: dict[str, str]) -> None:
    fe = tables.free_energy
    for label, g in fe.groupby("k_gon_label", sort=False):
        ax.plot(g["N"], g["relative_free_energy"], color=colors[label], lw=1.8)
    _crossover_lines(ax, tables.crossovers)
    shown = [c for c in tables.crossovers.itertuples(index=False)
             if math.isfinite(c.n_star_free_energy) and c.found_by == "estimated LLC"]
    for j, c in enumerate(shown):
        ax.annotate(f"{c.from_phase}→{c.to_phase}\nN* ≈ {c.n_star_free_energy:.0f}",
                    (c.n_star_free_energy, F_CAP / (3 ** (j % 3))), fontsize=7, ha="center",
                    va="top", bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "none",
                                    "alpha": 0.85})
    log_axis(ax.xaxis)
    ax.set_yscale("symlog", linthresh=1.0, linscale=0.5)
    ax.set_ylim(-0.1, F_CAP)
    ax.set_xlabel("training-set size N (log)")
    ax.set_ylabel("F_N − min over phases (nats)")
    ax.set_title("free energy N·L + λ·log N (estimated λ)")


def _occupancy_panel(ax: Axes, occ: pd.DataFrame, tables, colors: dict[str, str]) -> None:
    agree = tables.mixing.set_index("N")["agree"].astype(bool) if len(tables.mixing) else \
        pd.Series(dtype=bool)
    _crossover_lines(ax, tables.crossovers)
    for label, g in occ.groupby("k_gon_label", sort=False):
        g = g.sort_values("N")
        ok = g["N"].map(agree).fillna(False).to_numpy(bool)
        ax.plot(g["N"], g["fraction"], color=colors[label], lw=1.4, alpha=0.9)
        ax.plot(g["N"][ok], g["fraction"][ok], "o", color=colors[label], ms=5)
        ax.plot(g["N"][~ok], g["fraction"][~ok], "o", mfc="white", mec=colors[label], ms=5)
    if len(occ):
        log_axis(ax.xaxis)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("training-set size N (log)")
    ax.set_ylabel("share of posterior draws")
    bad = int((~agree).sum()) if len(agree) else 0
    note = f" · hollow: starts disagree ({bad} of {len(agree)} N)" if bad else ""
    ax.set_title(f"posterior at β = 1 (sampled){note}")


def _sgd_panel(ax: Axes, sgd: pd.DataFrame, colors: dict[str, str]) -> None:
    for label, g in sgd.groupby("k_gon_label", sort=False):
        g = g.sort_values("step")
        ax.plot(g["step"], g["fraction"], color=colors[label], lw=1.6)
    step_axis(ax, int(sgd["step"].max()) if len(sgd) else 1)
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("share of seeds")
    ax.set_title("SGD (training)")


def sequence_text(order: pd.DataFrame, column: str) -> str:
    """'4++ → 5+ → 6' from sequences.csv's `<journey>_order` column."""
    ranked = order.dropna(subset=[column]).sort_values(column, kind="stable")
    return " → ".join(ranked["k_gon_label"].astype(str)) or "—"
