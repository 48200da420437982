"""Chen, Lau, Mendel, Wei & Murfet (2023), "Dynamical versus Bayesian phase transitions in a toy
model of superposition": SGD trajectories pass through k-gon critical points, each transition a
loss drop with an LLC rise. Reproduced with devtms over many seeds.

Runs (into OUT, default runs/chen2023_kgons):
  chen2023/   the `chen2023` preset: 6 features, 2 hidden, with bias, single-feature data, a
              finite training set of N = 1000, SGD lr 0.01 momentum 0.9, batch 100, 20,000
              steps, 60 log-spaced checkpoints, 16 seeds; then `devtms llc` at every checkpoint
              at the preset's calibrated setting (eps 3e-3 and gamma 5 from devtms
              calibrate --auto, 8 chains x 2000 draws after 1000 burn-in, on the loss summed
              over features) and `devtms analyze` (k-gons, loss drops, LLC jumps, the LLC levels
              either side of each drop, and their alignment)

Figures (OUT/figures/, PNG and PDF):
  kgon_sequences.png   the k-gon label along training, one row per seed (debounced as devtms
                       analyze does), with the loss drops (black) and LLC rises (red) marked
  trajectories.png     per seed: loss (black, log) and LLC (red, +-1 sd over chains) against
                       step, the background shaded by the current k-gon
  kgon_loss_llc.png    loss and LLC at the end of every k-gon plateau, coloured by k: Chen et
                       al.'s ordering (more vertices: lower loss, higher LLC)
  final_kgons.png      the final polygon of every seed
  sequences.csv, plateaus.csv, alignment.csv, llc_across_drops.csv   the numbers

Time on 2 CPU cores, which also ran the test suite: 85 s (2026-12-03: training 9 s, the LLC
of 16 seeds x 60 checkpoints 66 s, analysis and figures 9 s); --small (4 seeds,
3000 steps, 2 chains x 50 draws): under a minute; --smoke (for tests): about 10 s.
"""

from __future__ import annotations

import math
import re

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
    final_weights,
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
from matplotlib.patches import Patch

from devtms.transitions import default_tolerance

K_COLORS = {0: "#ffffff", 1: "#f0f0f0", 2: "#d9d9d9", 3: "#c6dbef", 4: "#9ecae1", 5: "#fdd49e",
            6: "#a1d99b", 7: "#bcbddc", 8: "#fa9fb5"}


def k_of(label: str) -> int:
    """The polygon's vertex count: the label's leading digits ("5+" -> 5, "3ooo" -> 3; the
    signs of off-polygon features are never digits)."""
    found = re.match(r"\d+", str(label))
    return int(found.group()) if found else 0


def make_config(size: str):
    """The chen2023 preset ("default"), or a reduced copy ("small", "smoke")."""
    if size == "default":
        return config("chen2023", base="chen2023")
    if size == "small":
        return config("chen2023", base="chen2023", train={"steps": 3000, "seeds": [0, 1, 2, 3]},
                      checkpoints={"log_points": 25}, llc={"chains": 2, "draws": 50, "burnin": 50})
    return config("chen2023", base="chen2023", train={"steps": 300, "seeds": [0, 1], "log_every": 30},
                  checkpoints={"log_points": 10}, llc={"chains": 2, "draws": 20, "burnin": 10})


def segments(seq: list[tuple[int, str]], last_step: int) -> list[tuple[int, int, str]]:
    """[(first step, label)] -> [(start, end, label)], the last one ending at last_step."""
    out = []
    for j, (s, lab) in enumerate(seq):
        end = seq[j + 1][0] if j + 1 < len(seq) else last_step
        out.append((s, end, lab))
    return out


def xpos(step):
    """Step on the log axis; the initialisation (step 0) is drawn at 0.7."""
    return np.maximum(np.asarray(step, float), 0.7)


def sequence_figure(run, result, out, pdf) -> pd.DataFrame:
    inst = run.instances
    T = run.config.train.steps
    ev = result.transitions
    fig, ax = plt.subplots(figsize=(8.6, 0.34 * len(inst) + 1.3))
    rows = []
    for row, r in enumerate(inst.itertuples()):
        seq = result.sequences[r.instance]
        segs = segments(seq, T)
        for s0, s1, lab in segs:
            x0, x1 = xpos(s0), xpos(s1)
            ax.barh(row, x1 - x0, left=x0, height=0.78, color=K_COLORS.get(k_of(lab), "#eeeeee"),
                    edgecolor="0.55", lw=0.5)
            if math.log10(x1 / x0) > 0.28:
                ax.text(math.sqrt(x0 * x1), row, lab, ha="center", va="center", fontsize=7)
        e = ev[ev["instance"] == r.instance]
        drops = e[e["kind"] == "loss_drop"]["step"]
        rises = e[e["kind"] == "llc_rise"]["step"]
        ax.plot(xpos(drops), np.full(len(drops), row - 0.47), "v", color="k", ms=4.2, zorder=4)
        ax.plot(xpos(rises), np.full(len(rises), row + 0.47), "^", color="#cb181d", ms=4.2,
                zorder=4)
        rows.append(dict(seed=r.seed, sequence=" -> ".join(f"{lab} ({s})" for s, lab in seq),
                         final=seq[-1][1] if seq else ""))
    ax.set_xscale("log")
    ax.set_xlim(0.7, T * 1.05)
    ax.set_ylim(len(inst) - 0.4, -0.6)
    ax.set_yticks(range(len(inst)))
    ax.set_yticklabels([f"seed {s}" for s in inst["seed"]], fontsize=7.5)
    ax.set_xlabel("training step (log)", labelpad=1)
    handles = [Patch(facecolor=K_COLORS[k], edgecolor="0.55", label=f"{k}-gon") for k in
               sorted({k_of(lab) for seq in result.sequences.values() for _, lab in seq})]
    handles += [plt.Line2D([], [], ls="", marker="v", color="k", label="loss drop"),
                plt.Line2D([], [], ls="", marker="^", color="#cb181d", label="LLC rise")]
    height = 0.34 * len(inst) + 1.3
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.55 / height - 0.02),
              ncol=len(handles), frameon=False, fontsize=7.5)
    ax.set_title("k-gon sequences along SGD (label: vertices, then the bias of each feature off "
                 "the polygon: + positive, - negative, o zero)", fontsize=9.5)
    save(fig, out, "kgon_sequences", pdf)
    return pd.DataFrame(rows)


def trajectories_figure(run, result, losses, llc_table, out, pdf) -> None:
    inst = run.instances
    T = run.config.train.steps
    cols = min(4, len(inst))
    fig, axes = grid(len(inst), cols, 2.6, 1.65, top=0.55, left=0.6, right=0.45, wspace=0.3,
                     hspace=0.4, sharex=True, sharey=True)
    lo_min, lo_max = losses["loss"].min(), losses["loss"].max()
    twins = []
    for ax, r in zip(axes.flat, inst.itertuples(), strict=False):
        for s0, s1, lab in segments(result.sequences[r.instance], T):
            ax.axvspan(xpos(s0), xpos(s1), color=K_COLORS.get(k_of(lab), "#eeeeee"), lw=0,
                       zorder=0)
            if math.log10(xpos(s1) / xpos(s0)) > 0.2 * len(lab) + 0.2:
                ax.text(math.sqrt(xpos(s0) * xpos(s1)), 0.97, lab, transform=ax.get_xaxis_transform(),
                        ha="center", va="top", fontsize=6.5, color="0.25")
        d = losses[losses["instance"] == r.instance]
        ax.plot(xpos(d["step"]), d["loss"], color="k", lw=1.2, zorder=3)
        ax.set_yscale("log")
        ax.set_xscale("log")
        ax.set_ylim(lo_min / 1.5, lo_max * 3)
        ax.set_title(f"seed {r.seed}", pad=2)
        tw = ax.twinx()
        twins.append(tw)
        li = llc_table[llc_table["instance"] == r.instance].sort_values("step")
        x = xpos(li["step"])
        tw.fill_between(x, li["llc_mean"] - li["llc_std"], li["llc_mean"] + li["llc_std"],
                        color="#cb181d", alpha=0.2, lw=0)
        tw.plot(x, li["llc_mean"], color="#cb181d", lw=1.1)
        tw.spines["right"].set_visible(True)
        tw.tick_params(axis="y", colors="#cb181d", labelsize=7)
    hi = float((llc_table["llc_mean"] + llc_table["llc_std"]).max())
    lo = min(0.0, float((llc_table["llc_mean"] - llc_table["llc_std"]).min()))
    for k, tw in enumerate(twins):
        tw.set_ylim(lo, hi * 1.05)
        if k % cols != cols - 1 and k != len(twins) - 1:
            tw.set_yticklabels([])
    for ax in bottom_row(axes, len(inst)):
        ax.set_xlabel("step")
    for ax in axes[:, 0]:
        ax.set_ylabel("loss")
    fig.suptitle("Loss (black, left) and LLC (red, right, +-1 sd over chains); background: "
                 "current k-gon", fontsize=10)
    save(fig, out, "trajectories", pdf)


def plateaus(result, losses, llc_table, min_len: int = 3) -> pd.DataFrame:
    """One row per k-gon plateau lasting >= min_len checkpoints: loss and LLC at its last one."""
    g = result.geometry
    rows = []
    for inst, gi in g.groupby("instance"):
        gi = gi.sort_values("step")
        labels = gi["k_gon_label"].tolist()
        steps = gi["step"].tolist()
        start = 0
        for j in range(1, len(labels) + 1):
            if j == len(labels) or labels[j] != labels[start]:
                if j - start >= min_len and steps[j - 1] > 0:
                    s = steps[j - 1]
                    lo = losses[(losses["instance"] == inst) & (losses["step"] == s)]["loss"]
                    row = dict(instance=inst, label=labels[start], k=k_of(labels[start]),
                               first_step=steps[start], last_step=s,
                               loss=float(lo.iloc[0]) if len(lo) else np.nan, llc=np.nan,
                               llc_std=np.nan)
                    li = llc_table[(llc_table["instance"] == inst) & (llc_table["step"] == s)]
                    if len(li):
                        row["llc"], row["llc_std"] = float(li["llc_mean"].iloc[0]), \
                            float(li["llc_std"].iloc[0])
                    rows.append(row)
                start = j
    return pd.DataFrame(rows)


def plateau_figure(table: pd.DataFrame, out, pdf) -> None:
    fig, ax = plt.subplots(figsize=(5.6, 4.0))
    cmap = {k: c for k, c in zip(range(2, 9), ["#969696", "#6baed6", "#2171b5", "#fd8d3c",
                                                "#238b45", "#6a51a3", "#ce1256"], strict=True)}
    for k, d in table.groupby("k"):
        ax.errorbar(d["loss"], d["llc"], yerr=d["llc_std"], fmt="none", ecolor=cmap.get(k, "k"),
                    alpha=0.4, lw=0.8)
        ax.scatter(d["loss"], d["llc"], color=cmap.get(k, "k"), s=22, label=f"{k}-gon", zorder=3,
                   edgecolor="white", lw=0.4)
    ax.set_xscale("log")
    ax.set_xlabel("loss at the end of the plateau")
    ax.set_ylabel("LLC at the end of the plateau (+-1 sd over chains)")
    ax.legend(frameon=False, loc="best")
    ax.set_title("Every k-gon plateau of every seed (>= 3 checkpoints)", fontsize=9.5)
    save(fig, out, "kgon_loss_llc", pdf)


def final_figure(run, result, out, pdf) -> None:
    W, b = final_weights(run)
    inst = run.instances
    last = result.geometry[result.geometry["step"] == run.config.train.steps].set_index("instance")
    cols = min(8, len(inst))
    fig, axes = grid(len(inst), cols, 1.35, 1.45, top=0.5, bottom=0.1, left=0.1, right=0.1,
                     wspace=0.1, hspace=0.35)
    radius = 1.12 * float(W.norm(dim=1).max())
    colors = plt.get_cmap("tab10").colors
    for ax, r in zip(axes.flat, inst.itertuples(), strict=False):
        g = last.loc[r.instance]
        poly = polygon(g)
        features_2d(ax, W[r.instance].numpy(), colors, radius, b[r.instance].numpy(), poly)
        ax.set_title(f"seed {r.seed}: {g['k_gon_label']}", fontsize=8, pad=2)
    fig.suptitle("Final geometry (dot edge: black b > 0, grey b <= 0; shaded: the polygon)",
                 fontsize=9)
    save(fig, out, "final_kgons", pdf)


def llc_across_drops(result) -> pd.DataFrame:
    """Every loss drop with the LLC levels of the plateaus either side (devtms analyze's
    llc_before / llc_after / llc_rises_across) and the geometry change it coincides with."""
    ev = result.transitions
    drops = ev[ev["kind"] == "loss_drop"]
    return drops[["instance", "step", "size", "geometry_description", "coincides_geometry",
                  "llc_before", "llc_after", "llc_change_se", "llc_rises_across",
                  "coincides_llc_rise"]].rename(columns={"step": "drop_step",
                                                         "size": "loss_drop_decades"})


def vertex_gain(row) -> bool:
    """The drop coincides with a k-gon change that adds vertices ("k-gon 4++ -> 5+")."""
    found = re.match(r"k-gon (\S+) -> (\S+)", str(row.geometry_description))
    return bool(row.coincides_geometry) and found is not None and \
        k_of(found.group(2)) > k_of(found.group(1))


def alignment(run, result) -> pd.DataFrame:
    """Per seed: loss drops, and how many have a k-gon change / an LLC rise within tolerance."""
    tol = default_tolerance(run.checkpoint_steps())
    ev = result.transitions
    rows = []
    for r in run.instances.itertuples():
        e = ev[ev["instance"] == r.instance]
        drops = e[e["kind"] == "loss_drop"]["step"].to_numpy(float)
        kch = e[e["kind"] == "kgon_change"]["step"].to_numpy(float)
        rises = e[e["kind"] == "llc_rise"]["step"].to_numpy(float)

        def near(a, b):
            return sum(bool(len(b)) and np.min(np.abs(np.log10(b) - np.log10(x))) <= tol for x in a)

        rows.append(dict(seed=r.seed, loss_drops=len(drops), kgon_changes=len(kch),
                         drops_with_kgon_change=near(drops, kch),
                         kgon_changes_with_drop=near(kch, drops),
                         llc_rises=len(rises), drops_with_llc_rise=near(drops, rises),
                         tolerance_decades=round(tol, 3)))
    return pd.DataFrame(rows)


def main() -> None:
    p = parser(__doc__, "chen2023_kgons")
    p.add_argument("--report", action="store_true", help="also write the `devtms report` HTML")
    args = p.parse_args()
    out, log = output_root(args), Clock()
    pdf = not args.no_pdf
    run = train(make_config(args.size), out / "chen2023", log)
    llc_table = llc(run, log)
    result = analyze(run)
    losses = checkpoint_losses(run)

    seqs = sequence_figure(run, result, out, pdf)
    write_csv(seqs, out, "sequences")
    trajectories_figure(run, result, losses, llc_table, out, pdf)
    table = plateaus(result, losses, llc_table)
    write_csv(table, out, "plateaus")
    plateau_figure(table, out, pdf)
    final_figure(run, result, out, pdf)
    al = alignment(run, result)
    write_csv(al, out, "alignment")
    if args.report:
        report(run, log)

    log("k-gon sequences:\n" + "\n".join(f"  seed {r.seed}: {r.sequence}" for r in seqs.itertuples()))
    log("final k-gons: " + ", ".join(f"{k} x{v}" for k, v in seqs["final"].value_counts().items()))
    by_k = table.groupby("k").agg(plateaus=("loss", "size"), median_loss=("loss", "median"),
                                  median_llc=("llc", "median"))
    log("plateaus by k:\n" + by_k.to_string())
    if len(table) > 2:
        rho = table[["k", "loss", "llc"]].corr(method="spearman")
        log(f"Spearman correlation over plateaus: k vs loss {rho.loc['k', 'loss']:.2f}, k vs LLC "
            f"{rho.loc['k', 'llc']:.2f}, loss vs LLC {rho.loc['loss', 'llc']:.2f}")
    tot = al.sum(numeric_only=True)
    msg = (f"loss drops {int(tot['loss_drops'])}: with a k-gon change within "
           f"{al['tolerance_decades'].iloc[0]} decades {int(tot['drops_with_kgon_change'])}; "
           f"k-gon changes {int(tot['kgon_changes'])}: with a loss drop "
           f"{int(tot['kgon_changes_with_drop'])}")
    msg += f"; loss drops with a detected LLC rise {int(tot['drops_with_llc_rise'])}"
    log(msg)
    across = llc_across_drops(result)
    write_csv(across, out, "llc_across_drops")
    gains = across[[vertex_gain(r) for r in across.itertuples()]]
    if len(gains):
        rises = gains["llc_rises_across"]
        log(f"loss drops where the k-gon gains a vertex: {len(gains)}; the LLC plateau level "
            f"rises across {int((rises == True).sum())} of them, does not across "  # noqa: E712
            f"{int((rises == False).sum())}, unmeasured (no healthy estimate on a "  # noqa: E712
            f"plateau) at {int(rises.isna().sum())}; a steep LLC jump within tolerance at "
            f"{int(gains['coincides_llc_rise'].astype(bool).sum())}")
    log(f"figures in {out / 'figures'}")


if __name__ == "__main__":
    main()
