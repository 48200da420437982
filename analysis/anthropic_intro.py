"""Anthropic's Toy Models of Superposition (Elhage et al. 2022): the introduction figure and the
sparsity sweep of feature geometry, reproduced with devtms.

Runs (into OUT, default runs/anthropic_intro):
  intro/   the `anthropic-intro` preset: n = 5 features in m = 2 dimensions, importance 0.9^i,
           ten sparsities S = 1 - 20^-linspace(0, 1, 10), ReLU, AdamW 1e-3, batch 1024,
           10,000 steps, fresh data (the notebook's setup)
  sweep/   n = 200, m = 20, uniform importance, ReLU, 20 sparsities S = 1 - 20^-linspace(0, 1, 20)
           (1/(1-S) from 1 to 20), otherwise as above: the notebook's "feature geometry" setup

Figures (OUT/figures/, PNG and PDF):
  intro_features.png   the five feature columns of W in 2-d per sparsity, coloured by
                       importance (yellow = most important), with the k-gon devtms finds
  sweep_dims.png       dimensions per feature D* = m / ||W||_F^2 against 1/(1-S) (line), each
                       feature's dimensionality D_i (dots) and the fractions 1, 3/4, 2/3, 1/2,
                       2/5, 3/8 (bands): Anthropic's "sticky" plateaus
  intro_geometry.csv, sweep_dims.csv   the numbers behind them

Time on 2 shared CPU cores: about 12 minutes (intro 1 min, sweep 10 min: the n = 200 sweep is
the cost). --small: about 30 s (intro 1500 steps; sweep 8 sparsities, batch 256, 1000 steps);
--smoke (for tests): a few seconds.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from _common import (
    Clock,
    analyze,
    config,
    features_2d,
    final_weights,
    output_root,
    parser,
    polygon,
    save,
    train,
    write_csv,
)

from devtms.geometry import feature_dimensionality, represented

FRACTIONS = [(1, 1), (3, 4), (2, 3), (1, 2), (2, 5), (3, 8)]  # Anthropic's bands


def sweep_sparsities(k: int) -> list[float]:
    """S = 1 - 20^-linspace(0, 1, k), rounded (the notebook's feature probabilities)."""
    return [round(float(1 - p), 6) for p in 20.0 ** -np.linspace(0, 1, k)]


def configs(size: str):
    """-> (intro, sweep) RunConfigs at `size` ("smoke", "small" or "default")."""
    if size == "default":
        # The preset has one seed; five show which geometries are robust (the figure: seed 0).
        intro = config("anthropic-intro", base="anthropic-intro", train={"seeds": [0, 1, 2, 3, 4]})
    else:
        steps = {"smoke": 300, "small": 1500}[size]
        intro = config("anthropic-intro", base="anthropic-intro",
                       train={"steps": steps, **({"log_every": 30} if size == "smoke" else {})},
                       checkpoints={"log_points": 10, "linear_every": steps // 3})
    sweep = {  # (sparsities, steps, batch) of the n = 200 sweep
        "smoke": (3, 100, 64), "small": (8, 1000, 256), "default": (20, 10000, 1024)}[size]
    sweep = config(
        "anthropic-sweep",
        model={"n_features": 200, "n_hidden": 20, "activations": ["relu"]},
        data={"kind": "sparse-uniform", "sparsity": sweep_sparsities(sweep[0]),
              "importance_ratio": [1.0]},
        train={"steps": sweep[1], "batch_size": sweep[2], "optimizer": "adamw", "lr": 1e-3,
               "init": "xavier", "seeds": [0],
               # the loss on 2048 samples every 5 steps would cost more than training
               **({} if size == "default" else {"log_every": max(1, sweep[1] // 20)})},
        checkpoints={"log_points": 20 if size == "default" else 8,
                     "linear_every": 2500 if size == "default" else 0},
    )
    return intro, sweep


def intro_figure(run, result, out, pdf: bool) -> pd.DataFrame:
    import matplotlib.pyplot as plt

    W, b = final_weights(run)  # (I, 2, 5), (I, 5)
    last = result.geometry[result.geometry["step"] == run.config.train.steps].set_index("instance")
    all_inst = run.instances.join(last, on="instance")
    inst = run.instances[run.instances["seed"] == run.config.train.seeds[0]]
    n = W.shape[-1]
    importance = 0.9 ** np.arange(n)
    cmap = plt.get_cmap("viridis")
    colors = [cmap((imp - importance.min()) / (1 - importance.min())) for imp in importance]
    radius = 1.12 * float(W.norm(dim=1).max())
    cols = 5
    rows = int(np.ceil(len(inst) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.75 * cols, 2.35 * rows + 0.6))
    fig.subplots_adjust(left=0.02, right=0.98, top=0.88, bottom=0.16, wspace=0.12, hspace=0.55)
    for ax, r in zip(axes.flat, inst.itertuples(), strict=False):
        g = last.loc[r.instance]
        poly = polygon(g)
        features_2d(ax, W[r.instance].numpy(), colors, radius, b[r.instance].numpy(), poly)
        ax.set_title(f"1-S = {r.feature_probability:.3f}", pad=3)
        ax.set_xlabel(f"{g['n_represented']} features, k-gon {g['k_gon_label']}\n"
                      f"pairs {g['n_antipodal_pairs']}, D* = {g['dims_per_feature']:.2f}",
                      fontsize=7.5, labelpad=3)
    for ax in list(axes.flat)[len(inst):]:
        ax.set_visible(False)
    sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(importance.min(), 1))
    cax = fig.add_axes([0.3, 0.06, 0.4, 0.018])
    cb = fig.colorbar(sm, cax=cax, orientation="horizontal")
    cb.set_label("feature importance 0.9^i (dot edge: black b > 0, grey b <= 0)", fontsize=8)
    fig.suptitle(f"5 features in 2 dimensions (ReLU, {run.config.train.steps} steps, seed "
                 f"{run.config.train.seeds[0]}): superposition grows with sparsity", fontsize=10.5)
    save(fig, out, "intro_features", pdf)
    # one row per sparsity: the geometry of every seed
    return all_inst.groupby("sparsity", sort=True).agg(
        feature_probability=("feature_probability", "first"),
        k_gon=("k_gon_label", lambda s: " ".join(s)),
        n_represented=("n_represented", lambda s: " ".join(map(str, s))),
        antipodal_pairs=("n_antipodal_pairs", lambda s: " ".join(map(str, s))),
        dims_per_feature_mean=("dims_per_feature", "mean"),
    ).reset_index()


def sweep_figure(run, out, pdf: bool) -> pd.DataFrame:
    import matplotlib.pyplot as plt

    inst = run.instances
    m = run.config.model.n_hidden
    steps = run.checkpoint_steps()
    shown = [s for s in (2500, 5000) if s in steps and s < run.config.train.steps]
    W, _ = run.load_weights([*shown, run.config.train.steps])  # (S, I, m, n)
    W = W.double()
    dstar = (m / W.square().sum((-2, -1))).numpy()  # (S, I)
    D_i = feature_dimensionality(W[-1]).numpy()  # (I, n)
    rep = represented(W[-1]).numpy()
    x = 1.0 / inst["feature_probability"].to_numpy()

    fig, ax = plt.subplots(figsize=(7.2, 4.2))
    for num, den in FRACTIONS:
        v = num / den
        ax.axhspan(v - 0.012, v + 0.012, color="#fde0c5" if v != 0.5 else "#f4a582", lw=0,
                   zorder=0)
        # 2/5 and 3/8 lie 0.025 apart: their labels go above and below their bands
        va = {(2, 5): "bottom", (3, 8): "top"}.get((num, den), "center")
        ax.text(x.max() * 1.07, v, f"{num}/{den}", va=va, fontsize=8, color="0.3")
    for i in range(len(inst)):
        d = D_i[i][rep[i]]
        ax.scatter(np.full(len(d), x[i]) * np.exp(np.random.default_rng(i).normal(0, 0.012, len(d))),
                   d, s=4, color="0.35", alpha=0.35, lw=0, zorder=1)
    for k in range(len(shown)):
        ax.plot(x, dstar[k], "-", color="#92c5de", lw=1, zorder=2,
                label=f"D* at steps {', '.join(map(str, shown))}" if k == 0 else None,
                alpha=0.5 + 0.25 * k)
    ax.plot(x, dstar[-1], "o-", color="#b2182b", lw=1.8, ms=4, zorder=3,
            label=f"D* = m / ||W||_F^2 at step {run.config.train.steps}")
    ax.scatter([], [], s=8, color="0.35", label="D_i of each represented feature")
    ax.set_xscale("log")
    ax.set_xlabel("1 / (1 - S)   (inverse feature density)")
    ax.set_ylabel("dimensions per feature")
    ax.set_ylim(0, 1.08)
    ax.set_xlim(x.min() / 1.1, x.max() * 1.05)
    ax.set_xticks([1, 2, 5, 10, 20])
    ax.set_xticklabels(["1", "2", "5", "10", "20"])
    ax.legend(loc="upper right", bbox_to_anchor=(0.97, 0.98), frameon=False)
    ax.set_title(f"{run.config.model.n_features} features in {m} dimensions, uniform importance "
                 "(ReLU): D* sticks at 1/2 (antipodal pairs)")
    save(fig, out, "sweep_dims", pdf)
    table = pd.DataFrame({"sparsity": inst["sparsity"], "inv_density": x,
                          "dims_per_feature": dstar[-1],
                          "n_represented": rep.sum(-1),
                          "median_D_i": [float(np.median(D_i[i][rep[i]])) for i in range(len(inst))]})
    for k, s in enumerate(shown):
        table[f"dims_per_feature_step{s}"] = dstar[k]
    return table


def main() -> None:
    args = parser(__doc__, "anthropic_intro").parse_args()
    out, log = output_root(args), Clock()
    intro_cfg, sweep_cfg = configs(args.size)

    intro = train(intro_cfg, out / "intro", log)
    result = analyze(intro)
    table = intro_figure(intro, result, out, not args.no_pdf)
    write_csv(table, out, "intro_geometry")
    log("intro: " + "; ".join(f"1-S={r.feature_probability:.2f}: {r.k_gon}"
                              for r in table.itertuples()))

    sweep = train(sweep_cfg, out / "sweep", log)
    table = sweep_figure(sweep, out, not args.no_pdf)
    write_csv(table, out, "sweep_dims")
    log("sweep D*: " + ", ".join(f"{x:.1f}:{d:.3f}" for x, d in
                                 zip(table["inv_density"], table["dims_per_feature"], strict=True)))
    log(f"figures in {out / 'figures'}")


if __name__ == "__main__":
    main()
