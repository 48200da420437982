"""The figure of `devtms calibrate`: an eps x gamma grid of SGLD runs at one checkpoint.

Top: one panel per (gamma, eps) with n_beta (mean chain loss - init loss) over the SGLD steps,
one line per instance; bottom: the LLC of every cell as a heatmap per instance, unhealthy cells
marked. In the house style (devtms.report.figures.style), without grid lines over the heatmaps.

    >>> fig = calibration_figure(table[table["n_beta"] == n_beta], traces, d=15)
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure

from devtms.report.figures.style import styled


def calibration_figure(table: pd.DataFrame, traces: dict[tuple[float, float, float], torch.Tensor],
                       d: int) -> Figure:
    """The calibration grid of one n_beta.

    table: one row per (eps, gamma, instance) of that n_beta, with columns eps, gamma, n_beta,
    instance, activation, step, init_loss, llc_mean, healthy, chains, burnin (devtms.calibrate's
    table); instances in the order of the traces' first axis. traces[(eps, gamma, n_beta)]:
    (instances, chains, burnin + draws) the loss of every chain at every SGLD step. d: the
    number of sampled parameters (the largest possible LLC is d/2).
    """
    with warnings.catch_warnings():  # all-diverged cells: means of empty slices are NaN, fine
        warnings.simplefilter("ignore", RuntimeWarning)
        return _calibration_figure(table, traces, d)


@styled
def _calibration_figure(table: pd.DataFrame,
                        traces: dict[tuple[float, float, float], torch.Tensor], d: int) -> Figure:
    epss = sorted(table["eps"].unique())
    gammas = sorted(table["gamma"].unique())
    n_beta = float(table["n_beta"].iloc[0])
    instances = list(dict.fromkeys(table["instance"].astype(int)))
    acts = table.drop_duplicates("instance").set_index("instance")["activation"]
    step, chains, burnin = (int(table[c].iloc[0]) for c in ("step", "chains", "burnin"))
    colors = colormaps["tab10"]

    n_rows, n_cols = len(gammas), len(epss)
    heat_cols = len(instances)
    fig = Figure(figsize=(max(2.6 * n_cols, 3.2 * heat_cols) + 1.0, 2.1 * n_rows + 3.4),
                 layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[2.1 * n_rows, 3.0])
    axes = np.atleast_2d(top.subplots(n_rows, n_cols, sharex=True, squeeze=False))
    init = {}
    for r, gamma in enumerate(reversed(gammas)):
        for c, eps in enumerate(epss):
            ax = axes[r, c]
            loss = traces[(eps, gamma, n_beta)]  # (I, C, T)
            cells = table[(table["eps"] == eps) & (table["gamma"] == gamma)].set_index("instance")
            for k, instance in enumerate(instances):
                init[instance] = float(cells.loc[instance, "init_loss"])
                mean = np.nanmean(loss[k].double().numpy(), axis=0)  # (T,)
                y = n_beta * (mean - init[instance])
                ax.plot(np.arange(len(y)), y, color=colors(k % 10), lw=1.0,
                        label=f"{instance} ({acts[instance]})")
            ax.axhline(0.0, color="black", ls="--", lw=0.8)
            ax.axvspan(0, burnin, color="0.9", zorder=0)
            bad = cells[~cells["healthy"].astype(bool)]
            title = f"eps={eps:g}, gamma={gamma:g}"
            if len(bad):
                title += f"  [{len(bad)} unhealthy]"
            ax.set_title(title, fontsize=8, color="firebrick" if len(bad) else "black")
            ax.tick_params(labelsize=7)
            finite = np.concatenate([
                n_beta * (np.nanmean(loss[k].double().numpy(), axis=0) - init[i])
                for k, i in enumerate(instances)])
            finite = finite[np.isfinite(finite)]
            if finite.size:
                lo, hi = np.percentile(finite, [1, 99])
                span = max(hi - lo, 1e-3)
                ax.set_ylim(min(lo, 0) - 0.1 * span, max(hi, 0) + 0.1 * span)
            if r == n_rows - 1:
                ax.set_xlabel("SGLD step", fontsize=8)
            if c == 0:
                ax.set_ylabel("n_beta (loss - init)", fontsize=8)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    top.legend(handles, labels, loc="outside upper right", fontsize=8, ncols=len(instances),
               title="instance (activation); dashed: init loss, grey: burn-in",
               title_fontsize=8)
    top.suptitle(f"mean loss trace per cell, step {step}, n_beta={n_beta:.4g}, "
                 f"{chains} chains", fontsize=10)

    hax = np.atleast_1d(bottom.subplots(1, heat_cols, squeeze=False)[0])
    for k, instance in enumerate(instances):
        ax = hax[k]
        sub = table[table["instance"] == instance]
        grid = sub.pivot(index="gamma", columns="eps", values="llc_mean").reindex(
            index=list(reversed(gammas)), columns=epss)
        healthy = sub.pivot(index="gamma", columns="eps", values="healthy").reindex(
            index=list(reversed(gammas)), columns=epss)
        values = grid.to_numpy(dtype=float)
        finite = values[np.isfinite(values)]
        vmax = max(float(np.percentile(np.abs(finite), 95)) if finite.size else 1.0, 1e-6)
        im = ax.imshow(np.clip(values, -vmax, vmax), cmap="RdBu_r", vmin=-vmax, vmax=vmax,
                       aspect="auto")
        ax.grid(False)  # grid lines would cut through the cells and their numbers
        for (r, c), v in np.ndenumerate(values):
            ok = bool(healthy.iloc[r, c]) if not pd.isna(healthy.iloc[r, c]) else False
            text = "nan" if not np.isfinite(v) else f"{v:.3g}"
            ax.text(c, r, text + ("" if ok else "\n(x)"), ha="center", va="center", fontsize=7,
                    color="black" if ok else "firebrick")
        ax.set_xticks(range(len(epss)), [f"{e:g}" for e in epss], fontsize=7, rotation=30)
        ax.set_yticks(range(len(gammas)), [f"{g:g}" for g in reversed(gammas)], fontsize=7)
        ax.set_xlabel("eps", fontsize=8)
        if k == 0:
            ax.set_ylabel("gamma", fontsize=8)
        ax.set_title(f"LLC, instance {instance} ({acts[instance]}); d/2 = {d / 2:g}", fontsize=8)
        bottom.colorbar(im, ax=ax, shrink=0.8)
    bottom.suptitle("LLC per cell ((x): unhealthy: diverged, negative or above d/2)",
                    fontsize=10)
    return fig
