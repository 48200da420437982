"""Chen, Lau, Mendel, Wei & Murfet (2023), the Bayesian half: which k-gon phase the posterior
prefers as the number of training samples N grows, predicted by the free energy
F_N = N L + lambda log N and sampled, beside the k-gons SGD passes in training.

Runs (into OUT, default runs/chen2023_bayes):
  chen2023/   the `chen2023` preset (6 features, 2 hidden, with bias, single-feature data,
              N = 1000, SGD, 16 seeds), trained, `devtms llc` at its calibrated setting, analysed;
              then `devtms bayes` with its defaults: the phases SGD reaches, their regular
              k-gon critical points (exact loss; LLC estimated at the run's setting), the free
              energy's crossovers, and replica-exchange SGLD at N = 100 ... 5000 (8 chains from
              each phase and 8 random, ladders from beta N = 100 to beta = 1, 8000 steps)

Figures (OUT/figures/, PNG and PDF):
  journeys.png      `devtms bayes`'s figure: free energy, sampled occupancy and SGD's k-gons
  llc_check.png     each phase's LLC three ways: estimated at its critical point, the
                    parameter count (d - 1 - 3 per dead feature) / 2, and the run's plateaus
  implied_llc.png   the LLC gap between two phases that the sampled occupancy implies,
                    (-log(p_a / p_b) - N (L_a - L_b)) / log N, against N, beside the estimated
                    and the counted gap: the posterior as a check of the LLC estimates
  phases.csv, crossovers.csv, sequences.csv, implied_llc.csv   the numbers

Time on 2 CPU cores: about 3 minutes (training 5 s, LLC ~40 s, bayes 2 min); --small about
a minute; --smoke (for tests) about 15 s.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from _common import (
    SUBPROCESS_ENV,
    Clock,
    analyze,
    config,
    llc,
    output_root,
    parser,
    save,
    train,
    write_csv,
)
from matplotlib.ticker import NullFormatter, ScalarFormatter

from devtms.store import (
    BAYES_CROSSOVERS,
    BAYES_DIR,
    BAYES_MIXING,
    BAYES_OCCUPANCY,
    BAYES_PHASES,
    BAYES_SEQUENCES,
    RunDir,
)

LABELS = {"k_gon_label": str, "from_phase": str, "to_phase": str}
MIN_SHARE = 0.02  # both phases of a pair need this share at N for an implied gap


def make_config(size: str):
    """The chen2023 preset ("default"), or a reduced copy ("small", "smoke")."""
    if size == "default":
        return config("chen2023", base="chen2023")
    if size == "small":
        return config("chen2023", base="chen2023", train={"steps": 4000, "seeds": [0, 1, 2, 3]},
                      checkpoints={"log_points": 30}, llc={"chains": 4, "draws": 300})
    return config("chen2023", base="chen2023",
                  data={"n_samples": 500}, train={"steps": 4000, "seeds": [0, 1], "lr": 0.005},
                  checkpoints={"log_points": 30},
                  llc={"chains": 4, "draws": 200, "burnin": 200})


BAYES_ARGS = {"default": [],
              "small": ["--grid", "100,300,1000,3000", "--chains", "4", "--steps", "4000",
                        "--burnin", "2000"],
              "smoke": ["--grid", "100,300", "--chains", "2", "--steps", "400", "--burnin",
                        "200"]}


def bayes(run: RunDir, size: str, log: Clock) -> None:
    """`devtms bayes RUN` (a subprocess; it skips every N already sampled)."""
    log(f"{run.path.name}: devtms bayes {' '.join(BAYES_ARGS[size])}")
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "devtms.cli", "bayes", str(run.path),
                        *BAYES_ARGS[size]], env=SUBPROCESS_ENV)
    if r.returncode != 0:
        sys.exit(f"`devtms bayes {run.path}` failed with status {r.returncode}")
    log(f"{run.path.name}: bayes in {time.time() - t0:.0f}s")


def llc_check_figure(phases: pd.DataFrame, out, pdf) -> None:
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    x = np.arange(len(phases))
    ax.errorbar(x - 0.15, phases["llc_critical"], yerr=phases["llc_critical_sem"], fmt="o",
                color="#c0392b", label="estimated at the critical point (± sem)")
    ax.errorbar(x + 0.15, phases["llc_run"], yerr=phases["llc_run_sem"], fmt="s",
                color="#2166ac", label="run's plateaus (± se over plateaus)")
    ax.plot(x, phases["llc_count"], "_", color="k", ms=22, mew=2,
            label="parameter count (d − 1 − 3 per dead feature) / 2")
    ax.set_xticks(x)
    ax.set_xticklabels(phases["k_gon_label"])
    ax.set_xlabel("k-gon phase")
    ax.set_ylabel("learning coefficient")
    ax.legend(fontsize=7.5, loc="lower right", frameon=True)
    ax.set_title("the LLC of each phase, three ways", fontsize=9.5)
    save(fig, out, "llc_check", pdf)


def implied_gaps(phases: pd.DataFrame, occ: pd.DataFrame, mixing: pd.DataFrame) -> pd.DataFrame:
    """For every N where the starts agree and two phases both hold MIN_SHARE of the draws: the
    LLC gap lambda_b - lambda_a the sampled shares imply, with a the higher-loss phase."""
    agree = set(mixing.loc[mixing["agree"].astype(bool), "N"])
    by = phases.set_index("k_gon_label")
    rows = []
    for n, g in occ[occ["N"].isin(agree)].groupby("N"):
        share = g.set_index("k_gon_label")["fraction"]
        present = [s for s in share.index if s in by.index and share[s] >= MIN_SHARE]
        for a in present:
            for b in present:
                if by.loc[a, "loss"] <= by.loc[b, "loss"]:
                    continue
                d_loss = by.loc[a, "loss"] - by.loc[b, "loss"]
                implied = (math.log(share[a] / share[b]) + n * d_loss) / math.log(n)
                rows.append({"N": n, "from_phase": a, "to_phase": b, "share_from": share[a],
                             "share_to": share[b], "implied_gap": implied,
                             "estimated_gap": by.loc[b, "llc"] - by.loc[a, "llc"],
                             "count_gap": by.loc[b, "llc_count"] - by.loc[a, "llc_count"]})
    return pd.DataFrame(rows, columns=["N", "from_phase", "to_phase", "share_from", "share_to",
                                       "implied_gap", "estimated_gap", "count_gap"])


def implied_figure(gaps: pd.DataFrame, crossovers: pd.DataFrame, out, pdf) -> None:
    """The pairs of the crossovers first, then the pairs sampled at the most N; four at most."""
    present = gaps.groupby(["from_phase", "to_phase"]).size().sort_values(ascending=False)
    first = [p for p in zip(crossovers["from_phase"], crossovers["to_phase"], strict=True)
             if p in present.index]
    pairs = list(dict.fromkeys([*first, *present.index]))[:4]
    fig, axes = plt.subplots(1, max(len(pairs), 1), figsize=(3.3 * max(len(pairs), 1), 3.2),
                             squeeze=False)
    for ax, (a, b) in zip(axes[0], pairs, strict=False):
        g = gaps[(gaps["from_phase"] == a) & (gaps["to_phase"] == b)]
        ax.plot(g["N"], g["implied_gap"], "o-", color="k", label="implied by the posterior")
        ax.axhline(g["estimated_gap"].iloc[0], color="#c0392b", ls="--", label="estimated LLCs")
        ax.axhline(g["count_gap"].iloc[0], color="#2166ac", ls=":", label="parameter count")
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("N (log)")
        ax.set_title(f"λ({b}) − λ({a})", fontsize=9.5)
    axes[0][0].set_ylabel("LLC gap")
    axes[0][0].legend(fontsize=7, frameon=False)
    if not pairs:
        axes[0][0].text(0.5, 0.5, "no pair of phases shares the posterior", ha="center",
                        transform=axes[0][0].transAxes)
    fig.tight_layout()
    save(fig, out, "implied_llc", pdf)


def main() -> None:
    args = parser(__doc__, "chen2023_bayes").parse_args()
    out = output_root(args)
    log = Clock()
    run = train(make_config(args.size), out / "chen2023", log)
    llc(run, log)
    analyze(run)
    bayes(run, args.size, log)
    folder = run.path / BAYES_DIR
    for ext in ("png", "pdf") if not args.no_pdf else ("png",):
        shutil.copyfile(folder / f"bayes.{ext}", out / "figures" / f"journeys.{ext}")
    phases = pd.read_csv(folder / BAYES_PHASES, dtype=LABELS)
    crossovers = pd.read_csv(folder / BAYES_CROSSOVERS, dtype=LABELS)
    occ = pd.read_csv(folder / BAYES_OCCUPANCY, dtype=LABELS)
    mixing = pd.read_csv(folder / BAYES_MIXING)
    llc_check_figure(phases, out, not args.no_pdf)
    gaps = implied_gaps(phases[phases["in_prediction"].astype(bool)], occ, mixing)
    implied_figure(gaps, crossovers, out, not args.no_pdf)
    for name, table in (("phases", phases), ("crossovers", crossovers),
                        ("sequences", pd.read_csv(folder / BAYES_SEQUENCES, dtype=LABELS)),
                        ("implied_llc", gaps)):
        write_csv(table, out, name)
    cols = ["from_phase", "to_phase", "n_star_free_energy", "n_star_low", "n_star_high",
            "n_star_count", "n_star_sampled"]
    print(crossovers[cols].round(0).to_string(index=False))
    if len(gaps):
        print(gaps.groupby(["from_phase", "to_phase"])[["implied_gap", "estimated_gap",
                                                        "count_gap"]].mean().round(2))
    log(f"figures in {out / 'figures'}")


if __name__ == "__main__":
    main()
