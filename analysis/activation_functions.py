"""Lad & Kostolansky (2023), "The Effect of Activation Functions On Superposition in Toy Models",
reproduced with devtms: ReLU, GELU, SiLU, Sigmoid, Tanh, SoLU and the linear model.

Runs (into OUT, default runs/activation_functions):
  wtw/     n = 10 features, m = 5 hidden, importance 0.7^i, sparsities 0, 0.7, 0.9, 0.97, 0.99,
           0.997, 0.999 (Anthropic's "demonstrating superposition" grid; the study does not say
           which importance decay it used), AdamW 1e-3, batch 1024, 10,000 steps, fresh data
  phase/   n = 2, m = 1: importance of the extra feature r in 10^[-1, 1] x feature density
           1 - S in 10^[-2, 0] (a 12 x 12 grid), 3 initialisations per cell of which the
           lowest-loss one is shown, 5,000 steps (--full: 10,000), otherwise as above
  sweep/   n = 200, m = 20, uniform importance, 1/(1-S) = 20^linspace(0, 1, k): dimensions per
           feature against sparsity. Published size (--full): k = 10, 10,000 steps at batch 1024;
           default here k = 8, 3,000 steps at batch 256 (devtms's n = 200 step costs O(B n^2))

Figures (OUT/figures/, PNG and PDF):
  wtw_<group>.png        W^T W (red +, blue -) and feature norms coloured by interference
                         (Anthropic's colouring: dark = own dimension, yellow = shared) for each
                         activation (rows) and sparsity (columns)
  phase_diagram.png      per activation, the class of the extra feature: not learned,
                         superposition (both features share the dimension), dedicated
  dims_per_feature.png   D* = m / ||W||_F^2 against 1/(1-S), all activations overlaid
  dims_per_feature_grid.png   the same, one panel per activation
  wtw_summary.csv, phase_counts.csv, sweep_dims.csv   the numbers

Time on 2 shared CPU cores: default about 11 minutes (wtw 1 min, phase 7 min, sweep 3 min);
--full about 35 minutes; --small about 40 s; --smoke (for tests) about 15 s.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from _common import (
    LAD_KOSTOLANSKY,
    PHASE_CMAP,
    PHASE_COLORS,
    PHASE_LABELS,
    Clock,
    analyze,
    bottom_row,
    config,
    final_weights,
    gram_heatmap,
    grid,
    norm_bars,
    output_root,
    parser,
    save,
    train,
    write_csv,
)
from matplotlib.patches import Patch

from devtms.geometry import PHASES, phase_m1

WTW_SPARSITIES = [0.0, 0.7, 0.9, 0.97, 0.99, 0.997, 0.999]

# Sizes (smoke, small, default, full) of each part. The 27-variant script passes its own.
SIZES = {
    "smoke": dict(wtw_steps=200, wtw_batch=128, phase_grid=2, phase_steps=200, phase_seeds=1,
                  sweep_points=2, sweep_steps=20, sweep_batch=64, sweep_n=200, sweep_m=20,
                  log_every=20),
    "small": dict(wtw_steps=1500, wtw_batch=256, phase_grid=5, phase_steps=1500, phase_seeds=2,
                  sweep_points=4, sweep_steps=400, sweep_batch=256, sweep_n=200, sweep_m=20),
    "default": dict(wtw_steps=10000, wtw_batch=1024, phase_grid=12, phase_steps=5000, phase_seeds=3,
                    sweep_points=8, sweep_steps=3000, sweep_batch=256, sweep_n=200, sweep_m=20),
    "full": dict(wtw_steps=10000, wtw_batch=1024, phase_grid=12, phase_steps=10000, phase_seeds=3,
                 sweep_points=10, sweep_steps=10000, sweep_batch=1024, sweep_n=200, sweep_m=20),
}

ANTHROPIC_TRAIN = {"optimizer": "adamw", "lr": 1e-3, "init": "xavier", "seeds": [0]}


def configs(acts: Sequence[str], size: dict, prefix: str):
    """-> (wtw, phase, sweep) RunConfigs for `acts` at `size` (a SIZES entry)."""
    acts = list(acts)
    # devtms logs the loss ~200 times by default (every step below 200 steps): at the smoke
    # size that evaluation would cost more than the training
    log_every = {"log_every": size["log_every"]} if "log_every" in size else {}
    wtw = config(
        f"{prefix}-wtw",
        model={"n_features": 10, "n_hidden": 5, "activations": acts},
        data={"kind": "sparse-uniform", "sparsity": WTW_SPARSITIES, "importance_ratio": [0.7]},
        train={**ANTHROPIC_TRAIN, "steps": size["wtw_steps"], "batch_size": size["wtw_batch"],
               **log_every},
        checkpoints={"log_points": 12, "linear_every": 0},
    )
    k = size["phase_grid"]
    phase = config(
        f"{prefix}-phase",
        model={"n_features": 2, "n_hidden": 1, "activations": acts},
        data={"kind": "sparse-uniform",
              "sparsity": [round(float(1 - p), 8) for p in np.logspace(0, -2, k)],
              "importance_ratio": [round(float(r), 6) for r in np.logspace(-1, 1, k)]},
        # several initialisations per cell; the figure shows the lowest-loss one (the best of
        # k local minima approximates the global optimum that the phase diagram describes)
        train={**ANTHROPIC_TRAIN, "steps": size["phase_steps"], "batch_size": 1024,
               "seeds": list(range(size["phase_seeds"])), **log_every},
        checkpoints={"log_points": 6, "linear_every": size["phase_steps"] // 4},
    )
    sweep = config(
        f"{prefix}-sweep",
        model={"n_features": size["sweep_n"], "n_hidden": size["sweep_m"], "activations": acts},
        data={"kind": "sparse-uniform",
              "sparsity": [round(float(1 - p), 6)
                           for p in 20.0 ** -np.linspace(0, 1, size["sweep_points"])],
              "importance_ratio": [1.0], "eval_samples": 1024},
        # log the loss 50 times: devtms's default (~200 times, every step for runs under 200
        # steps) on 2048 samples costs more than training at n = 200
        train={**ANTHROPIC_TRAIN, "steps": size["sweep_steps"], "batch_size": size["sweep_batch"],
               "log_every": size.get("log_every", max(1, size["sweep_steps"] // 50))},
        checkpoints={"log_points": 8, "linear_every": 0},
    )
    return wtw, phase, sweep


# ---------------------------------------------------------------------------------------------
# W^T W grid


def wtw_figures(run, result, out, pdf: bool, per_figure: int = 8) -> pd.DataFrame:
    W, _ = final_weights(run)  # (I, 5, 10)
    inst = run.instances
    last = result.geometry[result.geometry["step"] == run.config.train.steps].set_index("instance")
    acts = list(dict.fromkeys(inst["activation"]))
    sparsities = sorted(inst["sparsity"].unique())
    groups = [acts[i:i + per_figure] for i in range(0, len(acts), per_figure)]
    for g, names in enumerate(groups):
        rows, cols = len(names), len(sparsities)
        fig = plt.figure(figsize=(1.55 * cols + 1.2, 1.25 * rows + 1.0))
        outer = fig.add_gridspec(rows, cols, left=0.09, right=0.99, top=1 - 0.55 / (1.25 * rows + 1),
                                 bottom=0.35 / (1.25 * rows + 1), wspace=0.25, hspace=0.35)
        for r, act in enumerate(names):
            for c, s in enumerate(sparsities):
                i = int(inst[(inst["activation"] == act) & (inst["sparsity"] == s)]["instance"].iloc[0])
                Wi = W[i].numpy()
                scale = float(np.abs(Wi.T @ Wi).max()) or 1.0
                inner = outer[r, c].subgridspec(1, 2, width_ratios=[1, 0.6], wspace=0.08)
                ax = fig.add_subplot(inner[0])
                gram_heatmap(ax, Wi, vmax=scale)
                bars = fig.add_subplot(inner[1])
                norm_bars(bars, Wi, xmax=1.1 * float(np.linalg.norm(Wi, axis=0).max()))
                bars.set_xticks([])
                geo = last.loc[i]
                bars.set_title(f"{geo['n_represented']}r {geo['n_superposed']}s", fontsize=6.5,
                               pad=1.5, color="0.3")
                if r == 0:
                    ax.set_title(f"S = {s:g}", fontsize=9, loc="left", pad=10)
                if c == 0:
                    ax.set_ylabel(act, fontsize=9.5, rotation=0, ha="right", va="center",
                                  labelpad=6)
        fig.suptitle("W^T W (colour scale per panel: red +, blue -) and feature norms coloured "
                     "by interference (dark: own dimension, yellow: shared); "
                     "'r' represented, 's' superposed features",
                     fontsize=8.5, y=0.998)
        suffix = "" if len(groups) == 1 else f"_{g + 1}"
        save(fig, out, f"wtw{suffix}", pdf)
    cols = ["dims_per_feature", "n_represented", "n_superposed", "n_antipodal_pairs",
            "mean_sqrt_interference"]
    return inst[["instance", "activation", "sparsity"]].join(last[cols], on="instance") \
        .drop(columns="instance")


# ---------------------------------------------------------------------------------------------
# Phase diagram


def best_of_seeds(run, samples: int = 40000) -> pd.DataFrame:
    """Per (activation, density, importance) cell, the seed with the lowest loss on a common large
    sample (the logged losses are on per-seed eval sets of 2048, too few nonzero features at
    density 0.01 to rank local minima). -> instances.csv rows + phase, loss, seeds_agree"""
    from devtms import model as tms
    from devtms.activations import contiguous_groups
    from devtms.data import importance_weights, sample_features
    from devtms.rng import generator

    W, b = final_weights(run)  # (I, 1, 2), (I, 2)
    inst = run.instances.copy()
    inst["phase"] = phase_m1(W)
    inst["loss"] = np.nan
    n, reduction = run.config.model.n_features, run.config.model.reduction
    for p, d in inst.groupby("feature_probability"):
        x = sample_features("sparse-uniform", samples, n, float(p), generator("analysis", float(p)))
        for start in range(0, len(d), 64):
            part = d.iloc[start:start + 64]  # instance order: activations stay contiguous
            idx = torch.tensor(part["instance"].tolist())
            loss = tms.loss(W[idx], b[idx], x.expand(len(part), -1, -1),
                            importance_weights(part["importance_ratio"], n),
                            contiguous_groups(list(part["activation"])), reduction)
            inst.loc[part.index, "loss"] = loss.numpy()
    keys = ["activation", "feature_probability", "importance_ratio"]
    agree = inst.groupby(keys, sort=False)["phase"].transform(lambda s: s.nunique() == 1)
    inst["seeds_agree"] = agree
    best = inst.loc[inst.groupby(keys, sort=False)["loss"].idxmin()]
    return best.sort_values("instance").reset_index(drop=True)


def phase_figure(run, out, pdf: bool) -> pd.DataFrame:
    inst = best_of_seeds(run)
    acts = list(dict.fromkeys(inst["activation"]))
    dens = np.sort(inst["feature_probability"].unique())  # ascending
    imps = np.sort(inst["importance_ratio"].unique())
    cols = min(4, len(acts) + 1) if len(acts) <= 7 else 6
    # one panel per activation, then one for the legend
    fig, axes = grid(len(acts) + 1, cols, 2.05, 1.85, top=0.6, bottom=0.55, left=0.65,
                     wspace=0.12, hspace=0.3, sharex=True, sharey=True)
    code = {p: k for k, p in enumerate(PHASES)}

    def edges(v):
        """Cell edges halfway (in log) between grid points."""
        lv = np.log10(v)
        mid = (lv[1:] + lv[:-1]) / 2
        return 10 ** np.concatenate([[lv[0] - (mid[0] - lv[0])], mid, [lv[-1] + (lv[-1] - mid[-1])]])

    for ax, act in zip(axes.flat, acts, strict=False):
        d = inst[inst["activation"] == act]
        cells = d.pivot_table(index="importance_ratio", columns="feature_probability",
                              values="phase", aggfunc="first").reindex(index=imps, columns=dens)
        Z = cells.map(lambda p: code[p]).to_numpy(dtype=float)
        ax.pcolormesh(edges(dens), edges(imps), Z, cmap=PHASE_CMAP, vmin=-0.5, vmax=2.5,
                      edgecolors="white", linewidth=0.3)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.invert_xaxis()  # sparser to the right
        ax.set_title(act, pad=3)
        ax.axhline(1, color="0.3", lw=0.6, ls=":")
    for ax in bottom_row(axes, len(acts) + 1):
        ax.set_xlabel("feature density 1 - S")
    for ax in axes[:, 0]:
        ax.set_ylabel("importance of extra feature")
    legend_ax = axes.flat[len(acts)]
    legend_ax.axis("off")
    legend_ax.legend(handles=[Patch(color=PHASE_COLORS[p], label=PHASE_LABELS[p]) for p in PHASES],
                     loc="center", frameon=False, title="n = 2 features, m = 1 dimension",
                     fontsize=7.5, title_fontsize=8)
    fig.suptitle(f"Phase diagrams of the extra feature ({run.config.train.steps} steps; each cell "
                 f"the lowest-loss of {len(run.config.train.seeds)} initialisations)",
                 fontsize=10.5)
    save(fig, out, "phase_diagram", pdf)
    counts = inst.groupby(["activation", "phase"], sort=False).size().unstack(fill_value=0)
    sparse = inst[inst["feature_probability"] <= 0.1].groupby(["activation", "phase"], sort=False) \
        .size().unstack(fill_value=0)
    counts = counts.reindex(columns=list(PHASES), fill_value=0)
    sparse = sparse.reindex(index=counts.index, columns=list(PHASES), fill_value=0)
    sparse.columns = [f"{c}_density_le_0.1" for c in sparse.columns]
    agree = inst.groupby("activation", sort=False)["seeds_agree"].mean().rename("seeds_agree")
    return counts.join(sparse).join(agree).reindex(acts).reset_index()


# ---------------------------------------------------------------------------------------------
# Dimensions per feature against sparsity


def dims_figure(run, out, pdf: bool, highlight: Sequence[str]) -> pd.DataFrame:
    """dims_per_feature.png (highlighted activations overlaid, the rest grey) and
    dims_per_feature_grid.png (one panel per activation, common axes)."""
    W, _ = final_weights(run)
    m = run.config.model.n_hidden
    inst = run.instances.copy()
    inst["dims_per_feature"] = (m / W.double().square().sum((-2, -1))).numpy()
    inst["inv_density"] = 1.0 / inst["feature_probability"]
    acts = list(dict.fromkeys(inst["activation"]))
    cmap = plt.get_cmap("tab10")
    colors = {a: cmap(k % 10) for k, a in enumerate(highlight)}
    ymax = max(1.05, float(inst["dims_per_feature"].clip(upper=3).max()) * 1.05)
    xt = [1, 2, 5, 10, 20]
    title = (f"{run.config.model.n_features} features in {m} dimensions, uniform importance, "
             f"{run.config.train.steps} steps")

    def axis(ax):
        ax.set_xscale("log")
        ax.set_xticks(xt)
        ax.set_xticklabels([str(t) for t in xt])
        ax.minorticks_off()
        ax.set_ylim(0, ymax)
        for v in (1, 0.5):
            ax.axhline(v, color="#f4a582", lw=0.8, zorder=0)

    fig, ax = plt.subplots(figsize=(7.8, 4.2))
    for act in acts:
        d = inst[inst["activation"] == act].sort_values("inv_density")
        hi = act in colors
        ax.plot(d["inv_density"], d["dims_per_feature"], "o-" if hi else "-",
                ms=3.5, lw=1.8 if hi else 0.8, color=colors.get(act, "0.78"),
                label=act if hi else None, zorder=3 if hi else 1)
    axis(ax)
    ax.set_xlabel("1 / (1 - S)   (inverse feature density)")
    ax.set_ylabel("dimensions per feature D* = m / ||W||_F^2")
    if len(colors) < len(acts):
        ax.plot([], [], "-", color="0.78", lw=0.8, label="other activations")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.set_title(title, fontsize=9.5)
    save(fig, out, "dims_per_feature", pdf)

    cols = min(len(acts), 4 if len(acts) <= 8 else 6)
    fig, axes = grid(len(acts), cols, 1.8, 1.3, top=0.55, left=0.55, hspace=0.4, sharex=True,
                     sharey=True)
    for ax, act in zip(axes.flat, acts, strict=False):
        d = inst[inst["activation"] == act].sort_values("inv_density")
        ax.plot(d["inv_density"], d["dims_per_feature"], "o-", ms=2.5, lw=1.2,
                color=colors.get(act, "0.25"))
        axis(ax)
        ax.set_title(act, pad=2)
    for ax in bottom_row(axes, len(acts)):
        ax.set_xlabel("1 / (1 - S)")
    for ax in axes[:, 0]:
        ax.set_ylabel("D*")
    fig.suptitle("Dimensions per feature: " + title, fontsize=10)
    save(fig, out, "dims_per_feature_grid", pdf)
    return inst[["activation", "sparsity", "inv_density", "dims_per_feature"]]


# ---------------------------------------------------------------------------------------------


def run_study(doc: str, name: str, acts: Sequence[str], sizes: dict, highlight: Sequence[str],
              smoke_acts: Sequence[str] | None = None):
    """Parse the command line, then train, analyze and draw the three experiments.
    `smoke_acts`: the activations at --smoke size (default: `acts`)."""
    args = parser(doc, name, full=True).parse_args()
    size = sizes[args.size]
    if args.size == "smoke" and smoke_acts is not None:
        acts = smoke_acts
    out, log = output_root(args), Clock()
    pdf = not args.no_pdf
    wtw_cfg, phase_cfg, sweep_cfg = configs(acts, size, name)

    run = train(wtw_cfg, out / "wtw", log)
    table = wtw_figures(run, analyze(run), out, pdf)
    write_csv(table, out, "wtw_summary")

    run = train(phase_cfg, out / "phase", log)
    table = phase_figure(run, out, pdf)
    write_csv(table, out, "phase_counts")
    log("phase classes (not learned / superposition / dedicated):\n" + table.to_string(index=False))

    run = train(sweep_cfg, out / "sweep", log)
    table = dims_figure(run, out, pdf, highlight)
    write_csv(table, out, "sweep_dims")
    wide = table.pivot_table(index="activation", columns="inv_density", values="dims_per_feature",
                             sort=False)
    log("D* against 1/(1-S):\n" + wide.round(3).to_string())
    log(f"figures in {out / 'figures'}")


def main() -> None:
    run_study(__doc__, "activation_functions", LAD_KOSTOLANSKY, SIZES, LAD_KOSTOLANSKY)


if __name__ == "__main__":
    main()
