"""The devinterp TMS example (Timaeus' `tms` notebook: loss and LLC over training, with k-gon
snapshots) and its extension to the 27 activation variants (Rares Baron, "Minor
interpretability exploration #3"), reproduced with devtms.

Runs (into OUT, default runs/devinterp_tms):
  tms/     the `devinterp-tms` preset: 8 features, 2 hidden, one-hot-binary data, N = 1000,
           SGD lr 0.01 momentum 0.9, batch 100, 2-gon init + noise, bias ~ N(0, 10), 20,000
           steps, 50 log-spaced checkpoints, ReLU, seed 1
  act27/   the `activations27` preset: the same setup for the 27 variants + `linear` and
           `solu_ln`, 5 seeds (145 instances)
  each followed by `devtms llc` at every checkpoint (SGLD eps 1e-3, gamma 100, 8 chains x 200
  draws after 200 burn-in, n_beta = N / log N) and `devtms analyze`

Figures (OUT/figures/, PNG and PDF):
  tms_loss_llc.png     loss and LLC against step with detected loss drops / LLC jumps, and the
                       geometry at the initialisation, at every k-gon change and at the end
  act27_loss.png       loss against step per activation (seeds overlaid), common axes
  act27_llc.png        the LLC against step per activation (seeds overlaid), common axes
  act27_final.png      the final geometry of every activation (seed 0)
  act27_summary.png    per activation (sorted by final loss): final loss, final LLC, features
                       represented, and whether superposition emerged after the largest loss drop
  act27_summary.csv    the numbers (devtms analyze's summary.csv plus activation properties)

Time on 2 shared CPU cores: about 8 minutes (training 1 min, the LLC of 145 instances x 50
checkpoints 5 min, analysis and figures 1 min); --small (1 seed, 2000 steps, 2 chains x 40
draws) about a minute; --smoke (for tests: 300 steps, nine activations) about 15 s.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from _common import (
    Clock,
    analyze,
    bottom_row,
    checkpoint_losses,
    config,
    features_2d,
    grid,
    llc,
    output_root,
    parser,
    polygon,
    report,
    save,
    train,
    write_csv,
)

from devtms.activations import REGISTRY

EVENT = {"loss_drop": ("k", "-"), "llc_rise": ("#cb181d", "--"), "llc_fall": ("#2171b5", "--")}
BOUNDED_COLOR, UNBOUNDED_COLOR, CONTROL_COLOR = "#d95f02", "#1b9e77", "0.45"


# --smoke trains nine activations of every kind (bounded, unbounded, over features, diverging,
# the controls) instead of all 29
SMOKE = ("relu", "sigmoid", "hardshrink", "exp", "softmax", "solu", "softmin", "linear", "solu_ln")


def configs(size: str):
    """-> (tms, act27) RunConfigs: the presets ("default") or reduced copies ("small", "smoke")."""
    if size == "default":
        return config("devinterp-tms", base="devinterp-tms"), \
            config("activations27", base="activations27")
    steps, points, llc = {"small": (2000, 15, {"chains": 2, "draws": 40, "burnin": 40}),
                          "smoke": (300, 8, {"chains": 2, "draws": 20, "burnin": 10})}[size]
    shrink = {"checkpoints": {"log_points": points}, "llc": llc}
    schedule = {"steps": steps, **({"log_every": 30} if size == "smoke" else {})}
    tms = config("devinterp-tms", base="devinterp-tms", train=schedule, **shrink)
    act = config("activations27", base="activations27", train={**schedule, "seeds": [0]},
                 **({"model": {"activations": list(SMOKE)}} if size == "smoke" else {}),
                 **shrink)
    return tms, act


def xpos(step):
    return np.maximum(np.asarray(step, float), 0.7)


def healthy(llc_rows: pd.DataFrame) -> pd.Series:
    h = llc_rows["healthy"]
    return h.astype(bool) if h.dtype == bool else h.astype(str).str.lower().isin(["true", "1"])


def llc_limits(rows: pd.DataFrame) -> tuple[float, float]:
    """y-limits covering the healthy estimates (+-1 sd), with a margin."""
    if not len(rows):
        return -1.0, 1.0
    lo = float((rows["llc_mean"] - rows["llc_std"]).min())
    hi = float((rows["llc_mean"] + rows["llc_std"]).max())
    pad = 0.08 * (hi - lo or 1.0)
    return min(lo, 0.0) - pad, hi + pad


def bounded(act: str) -> bool:
    a = REGISTRY[act]
    return a.bounded_above and a.bounded_below


def act_color(act: str) -> str:
    if REGISTRY[act].control:
        return CONTROL_COLOR
    return BOUNDED_COLOR if bounded(act) else UNBOUNDED_COLOR


# ---------------------------------------------------------------------------------------------
# The single devinterp-tms run


def tms_figure(run, result, losses, llc_table, out, pdf) -> list[tuple[int, str]]:
    T = run.config.train.steps
    inst = int(run.instances["instance"].iloc[0])
    seq = result.sequences[inst]
    snap_steps = [0] + [s for s, _ in seq[1:]] + [T]
    snap_steps = list(dict.fromkeys(snap_steps))[:9]
    W, b = run.load_weights(snap_steps)
    geo = result.geometry[result.geometry["instance"] == inst].set_index("step")

    n_snap = len(snap_steps)
    fig = plt.figure(figsize=(max(7.5, 1.45 * n_snap), 6.3))
    outer = fig.add_gridspec(2, 1, height_ratios=[2.3, 1.05], hspace=0.3, left=0.09, right=0.98,
                             top=0.93, bottom=0.03)
    top = outer[0].subgridspec(2, 1, height_ratios=[1.3, 1.0], hspace=0.08)
    gs = outer[1].subgridspec(1, n_snap, wspace=0.1)
    ax_loss = fig.add_subplot(top[0])
    ax_llc = fig.add_subplot(top[1], sharex=ax_loss)
    d = losses[losses["instance"] == inst]
    ax_loss.plot(xpos(d["step"]), d["loss"], "o-", ms=2.5, color="k", lw=1.2)
    ax_loss.set_yscale("log")
    ax_loss.set_xscale("log")
    ax_loss.set_ylabel("loss")
    li = llc_table[llc_table["instance"] == inst].sort_values("step")
    ok = healthy(li)
    h = li[ok]
    x = xpos(h["step"])
    ax_llc.fill_between(x, h["llc_mean"] - h["llc_std"], h["llc_mean"] + h["llc_std"],
                        color="#cb181d", alpha=0.2, lw=0)
    ax_llc.plot(x, h["llc_mean"], "o-", ms=2.5, color="#cb181d", lw=1.2, label="healthy")
    if (~ok).any():
        u = li[~ok]
        lo, hi = llc_limits(h)
        ax_llc.plot(xpos(u["step"]), u["llc_mean"].clip(lo, hi), "o", ms=3.5, mfc="none",
                    color="#cb181d", label="unhealthy (clipped to the axis)")
        ax_llc.set_ylim(lo, hi)
        ax_llc.legend(loc="lower right", frameon=False, fontsize=7.5)
    ax_llc.set_ylabel("LLC (+-1 sd)")
    ax_llc.set_xlabel("training step (log; the initialisation at the left edge)", labelpad=1)
    ev = result.transitions[result.transitions["instance"] == inst]
    for kind, (color, ls) in EVENT.items():
        for s in ev[ev["kind"] == kind]["step"]:
            for ax in (ax_loss, ax_llc):
                ax.axvline(s, color=color, ls=ls, lw=0.8, alpha=0.7)
    for s in snap_steps:
        for ax in (ax_loss, ax_llc):
            ax.axvline(xpos(s), color="#7b3294", lw=3, alpha=0.12)
    handles = [plt.Line2D([], [], color=c, ls=ls, label=k.replace("_", " "))
               for k, (c, ls) in EVENT.items()]
    handles.append(plt.Line2D([], [], color="#7b3294", lw=3, alpha=0.3, label="snapshot below"))
    ax_loss.legend(handles=handles, loc="upper right", frameon=False, ncol=2, fontsize=7.5)
    plt.setp(ax_loss.get_xticklabels(), visible=False)
    radius = 1.12 * float(W.norm(dim=2).max())
    colors = plt.get_cmap("tab10").colors
    for k, s in enumerate(snap_steps):
        ax = fig.add_subplot(gs[0, k])
        g = geo.loc[s]
        poly = polygon(g)
        features_2d(ax, W[k, inst].numpy(), colors, radius, b[k, inst].numpy(), poly)
        ax.set_title(f"step {s}\n{g['k_gon_label']}", fontsize=8, pad=2)
    fig.suptitle("devinterp TMS example (8 features, 2 hidden, ReLU): loss, LLC and the k-gon "
                 "at each geometry change", fontsize=10)
    save(fig, out, "tms_loss_llc", pdf)
    return seq


# ---------------------------------------------------------------------------------------------
# The 27 variants


def grid_axes(n: int, cols: int = 6, w: float = 1.9, h: float = 1.45, **margins):
    """Small multiples sharing both axes (see _common.grid)."""
    return grid(n, cols, w, h, sharex=True, sharey=True, **margins)


def curves_figure(run, table, value: str, out, name, title, pdf, log_y: bool, band: str | None):
    """Small multiples of one curve per instance, seeds overlaid. LLC tables: healthy estimates
    as lines, unhealthy ones as hollow markers (clipped to the common axis range)."""
    inst = run.instances
    acts = list(dict.fromkeys(inst["activation"]))
    is_llc = "healthy" in table
    ok = healthy(table) if is_llc else pd.Series(True, index=table.index)
    vals = table.loc[ok, value].astype(float)
    vals = vals[np.isfinite(vals)]
    if log_y:
        vals = vals[vals > 0]
        lo, hi = vals.min() / 2, np.percentile(vals, 99.5) * 2
    else:
        lo, hi = llc_limits(table[ok])
    diverged = set(run.stage("train").get("diverged", []))
    fig, axes = grid_axes(len(acts), bottom=0.8, left=0.55)
    for ax, act in zip(axes.flat, acts, strict=False):
        finite = False
        for k, r in enumerate(inst[inst["activation"] == act].itertuples()):
            d = table[table["instance"] == r.instance].sort_values("step")
            good = d[ok.loc[d.index]]
            x = xpos(good["step"])
            if band is not None and k == 0:
                ax.fill_between(x, good[value] - good[band], good[value] + good[band],
                                color=act_color(act), alpha=0.18, lw=0)
            ax.plot(x, good[value], color=act_color(act), lw=0.9, alpha=0.85)
            bad = d[~ok.loc[d.index]]
            if len(bad):
                ax.plot(xpos(bad["step"]), bad[value].clip(lo, hi), "o", ms=2.2, mfc="none",
                        mew=0.5, color=act_color(act), alpha=0.6)
            finite |= bool(np.isfinite(d[value].astype(float)).any())
        ids = set(inst.loc[inst["activation"] == act, "instance"])
        if not finite or ids <= diverged:
            ax.text(0.5, 0.5, "diverged\n(non-finite weights)", transform=ax.transAxes,
                    ha="center", va="center", color="#cb181d", fontsize=8)
        ax.set_title(act, pad=2, fontsize=8.5, color=act_color(act))
        ax.set_xscale("log")
        if log_y:
            ax.set_yscale("log")
        ax.set_ylim(lo, hi)
        ax.tick_params(labelsize=7)
    for ax in bottom_row(axes, len(acts)):
        ax.set_xlabel("step", fontsize=8)
    handles = [plt.Line2D([], [], color=c, label=lab) for c, lab in
               ((UNBOUNDED_COLOR, "unbounded"), (BOUNDED_COLOR, "bounded (above and below)"),
                (CONTROL_COLOR, "control"))]
    if is_llc:
        handles.append(plt.Line2D([], [], ls="", marker="o", mfc="none", color="0.4",
                                  label="unhealthy estimate (clipped)"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False,
               bbox_to_anchor=(0.5, 0.0))
    fig.suptitle(title, fontsize=10)
    save(fig, out, name, pdf)


def final_geometry_figure(run, result, out, pdf) -> None:
    inst = run.instances
    seed = run.config.train.seeds[0]
    first = inst[inst["seed"] == seed]
    W, b = run.load_weights([run.config.train.steps])
    W, b = W[0], b[0]
    last = result.geometry[result.geometry["step"] == run.config.train.steps].set_index("instance")
    fig, axes = grid(len(first), cols=8, w=1.3, h=1.45, top=0.75, bottom=0.1, left=0.1,
                     wspace=0.1, hspace=0.5)
    colors = plt.get_cmap("tab10").colors
    for ax, r in zip(axes.flat, first.itertuples(), strict=False):
        Wi = W[r.instance].numpy()
        radius = 1.12 * float(np.linalg.norm(Wi, axis=0).max())
        g = last.loc[r.instance]
        poly = polygon(g)
        features_2d(ax, Wi, colors, radius, b[r.instance].numpy(), poly)
        ax.set_title(f"{r.activation}\n{g['k_gon_label']}", fontsize=7.5, pad=2,
                     color=act_color(r.activation))
    fig.suptitle(f"Final geometry, seed {seed} (each panel on its own scale; label: k-gon and the "
                 "bias signs off it)", fontsize=9.5)
    save(fig, out, "act27_final", pdf)


def summary_table(run, result) -> pd.DataFrame:
    s = result.summary.copy()
    last = result.geometry[result.geometry["step"] == run.config.train.steps]
    rep = run.instances[["instance", "activation"]].merge(last[["instance", "n_represented"]])
    s = s.merge(rep.groupby("activation")["n_represented"].mean().rename("represented_mean"),
                on="activation")
    s["bounded"] = s["activation"].map(bounded)
    s["control"] = s["activation"].map(lambda a: REGISTRY[a].control)
    return s


def summary_figure(s: pd.DataFrame, out, pdf) -> None:
    s = s.sort_values("final_loss_mean").reset_index(drop=True)
    y = np.arange(len(s))
    fig, axes = plt.subplots(1, 4, figsize=(10.5, 0.2 * len(s) + 1.6), sharey=True,
                             gridspec_kw=dict(width_ratios=[1.2, 1.2, 1, 1]))
    colors = [act_color(a) for a in s["activation"]]
    panels = [("final_loss_mean", "final_loss_std", "final loss (mean +- sd over seeds)", True),
              ("final_llc_mean", "final_llc_std", "final LLC", False),
              ("represented_mean", None, "features represented (of 8)", False),
              ("superposition_after_largest_drop", None, "superposition after\nlargest loss drop "
               "(fraction)", False)]
    for ax, (col, err, label, logx) in zip(axes, panels, strict=True):
        vals = s[col].astype(float)
        if err is not None:
            ax.errorbar(vals, y, xerr=s[err].astype(float).fillna(0), fmt="none", ecolor="0.6",
                        lw=0.8)
        ax.scatter(vals, y, c=colors, s=18, zorder=3)
        if logx:
            ax.set_xscale("log")
        ax.set_xlabel(label, fontsize=8)
        ax.grid(axis="y", color="0.93", lw=0.6)
    axes[0].set_yticks(y)
    axes[0].set_yticklabels(s["activation"], fontsize=7.5)
    for t, c in zip(axes[0].get_yticklabels(), colors, strict=True):
        t.set_color(c)
    axes[0].invert_yaxis()
    axes[2].set_xlim(-0.3, 8.5)
    for yy in y:
        if not np.isfinite(float(s.loc[yy, "final_loss_mean"])):
            axes[0].text(0.02, yy, "diverged", transform=axes[0].get_yaxis_transform(),
                         va="center", fontsize=7, color="#cb181d")
    axes[3].set_xlim(-0.05, 1.05)
    handles = [plt.Line2D([], [], ls="", marker="o", color=c, label=lab) for c, lab in
               ((UNBOUNDED_COLOR, "unbounded"), (BOUNDED_COLOR, "bounded"),
                (CONTROL_COLOR, "control"))]
    fig.legend(handles=handles, loc="upper center", ncol=3, frameon=False,
               bbox_to_anchor=(0.55, 1.0))
    fig.suptitle("27 variants + controls at the end of training (sorted by final loss)", x=0.55,
                 y=1.04, fontsize=10)
    fig.tight_layout()
    save(fig, out, "act27_summary", pdf)


def main() -> None:
    p = parser(__doc__, "devinterp_tms")
    p.add_argument("--report", action="store_true", help="also write `devtms report` HTML reports")
    args = p.parse_args()
    out, log = output_root(args), Clock()
    pdf = not args.no_pdf
    tms_cfg, act_cfg = configs(args.size)

    run = train(tms_cfg, out / "tms", log)
    llc_table = llc(run, log)
    result = analyze(run)
    seq = tms_figure(run, result, checkpoint_losses(run), llc_table, out, pdf)
    log("devinterp-tms k-gon sequence: " + " -> ".join(f"{lab} ({s})" for s, lab in seq))
    if args.report:
        report(run, log)

    run = train(act_cfg, out / "act27", log)
    llc_table = llc(run, log)
    result = analyze(run)
    losses = checkpoint_losses(run)
    curves_figure(run, losses, "loss", out, "act27_loss", "Loss against step (seeds overlaid)",
                  pdf, log_y=True, band=None)
    curves_figure(run, llc_table, "llc_mean", out, "act27_llc",
                  "LLC against step (seeds overlaid; band: +-1 sd over chains, first seed)",
                  pdf, log_y=False, band="llc_std")
    final_geometry_figure(run, result, out, pdf)
    s = summary_table(run, result)
    write_csv(s, out, "act27_summary")
    summary_figure(s, out, pdf)
    if args.report:
        report(run, log)
    cols = ["activation", "final_loss_mean", "final_llc_mean", "represented_mean", "final_geometry",
            "final_geometry_count", "superposition_after_largest_drop", "superposition_defined"]
    log("summary:\n" + s[cols].to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    after = result.summary["superposition_after_largest_drop"]
    defined = result.summary["superposition_defined"]
    frac = float((after * defined).sum() / defined.sum()) if defined.sum() else float("nan")
    log(f"superposition emerged after the largest loss drop in {frac:.2f} of the "
        f"{int(defined.sum())} instances where it is defined")
    log(f"figures in {out / 'figures'}")


if __name__ == "__main__":
    main()
