"""Does a preset's LLC setting carry to a researcher's own run? chen2023's [llc] on runs that
differ from the preset only in the training set's size N, against the exact engine.

Runs (into OUT, default runs/llc_carry):
  chen-nN/    the `chen2023` preset with only [data] n_samples = N (N = 300, 500, 1000, 4000,
              5000) and seeds 100-115 (not the preset's), trained, `devtms llc --steps last` at
              the preset's own [llc] (with its self-check), the exact engine (`--engine mala`, 8
              chains x (1000 + 4000)) on the same checkpoints, analysed for the k-gon labels

Figure and table (OUT/figures/):
  llc_carry.png   per N, the 5+ and 6-gon estimates at the last checkpoint: SGLD at the
                  preset's setting against the exact engine, beside Chen et al.'s 8.5 and d/2
  llc_carry.csv   per estimate: N, gamma, k-gon, SGLD and exact values with their sems, the
                  relative difference, states, and the self-check's flag; with the date, the
                  commit and the machine in its first lines (docs/science.md, section 4.11)

Time on 2 CPU cores: about 10 minutes (training 5 x 10 s; the exact engine at N = 5000 is the
longest, ~4 minutes); --small about 2 minutes; --smoke (for tests) about 30 s.
"""

from __future__ import annotations

import datetime
import platform
import subprocess

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from _common import (
    REPO,
    Clock,
    analyze,
    config,
    llc,
    output_root,
    parser,
    run_llc_command,
    save,
    train,
)

from devtms.store import RunDir

SIZES = {  # N values, seeds, training steps, and the exact engine's chains x (burn-in + draws)
    "smoke": dict(ns=(300, 1000), seeds=[100, 101], steps=300, ref=(2, 50, 100),
                  llc=dict(chains=2, burnin=20, draws=60)),
    "small": dict(ns=(1000, 5000), seeds=list(range(100, 104)), steps=20000, ref=(8, 500, 2000),
                  llc={}),
    "default": dict(ns=(300, 500, 1000, 4000, 5000), seeds=list(range(100, 116)), steps=20000,
                    ref=(8, 1000, 4000), llc={}),
}
KGONS = ("5+", "6")  # Chen et al.'s 8.5 both
THEORY, HALF_D = 8.5, 9.0


def main() -> None:
    args = parser(__doc__, "llc_carry").parse_args()
    size, out, log = SIZES[args.size], output_root(args), Clock()
    tables = []
    for n in size["ns"]:
        cfg = config(f"chen-n{n}", base="chen2023", data={"n_samples": n},
                     train={"steps": size["steps"], "seeds": size["seeds"]},
                     **({"llc": size["llc"]} if size["llc"] else {}))
        run = train(cfg, out / f"chen-n{n}", log)
        sgld = llc(run, log, ["--steps", "last"])
        chains, burnin, draws = size["ref"]
        exact = exact_rows(run, log, chains, burnin, draws)
        geometry = analyze(run).geometry
        tables.append(compare(run, sgld, exact, geometry))
    table = pd.concat(tables, ignore_index=True)
    write_record(table, out)
    figure(table, out, not args.no_pdf)
    log(f"wrote {out / 'figures' / 'llc_carry.csv'}")
    summary(table)


def exact_rows(run: RunDir, log: Clock, chains: int, burnin: int, draws: int) -> pd.DataFrame:
    """`devtms llc --engine mala` on the last checkpoint (resumes: computes only what is missing)
    -> its rows of llc.csv at that setting."""
    from devtms.llc import read_llc_table

    run_llc_command(run, log, ["--steps", "last", "--engine", "mala", "--chains", str(chains),
                               "--burnin", str(burnin), "--draws", str(draws), "--no-check"])
    table = read_llc_table(RunDir.open(run.path))
    last = run.checkpoint_steps()[-1]
    rows = table[(table.engine == "mala") & (table.step == last) & (table.num_chains == chains)
                 & (table.num_draws == draws) & (table.burnin == burnin)]
    return rows.drop_duplicates("instance", keep="last").set_index("instance")


def compare(run: RunDir, sgld: pd.DataFrame, exact: pd.DataFrame,
            geometry: pd.DataFrame) -> pd.DataFrame:
    """One row per instance at the last checkpoint: the setting's estimate and the exact one."""
    from devtms.llc import choose, read_llc_table

    last = run.checkpoint_steps()[-1]
    _, flagged = choose(run, read_llc_table(run))  # the setting's rows with the check's flag
    flagged = flagged[flagged.step == last].set_index("instance")
    labels = geometry[geometry.step == last].set_index("instance")["k_gon_label"]
    s = sgld[sgld.step == last].set_index("instance")
    out = pd.DataFrame({
        "n_samples": run.config.data.n_samples, "gamma": s["gamma"], "n_beta": s["n_beta"],
        "k_gon": labels.reindex(s.index), "llc": s["llc_mean"], "llc_sem": s["llc_sem"],
        "state": s["state"], "exact": exact["llc_mean"].reindex(s.index),
        "exact_sem": exact["llc_sem"].reindex(s.index),
        "exact_state": exact["state"].reindex(s.index),
        "biased": flagged["biased"].reindex(s.index)})
    out["rel"] = (out["llc"] - out["exact"]) / out["exact"].abs()
    return out.reset_index()


def write_record(table: pd.DataFrame, out) -> None:
    """llc_carry.csv with its provenance (date, commit, machine) as comment lines."""
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip() or "unknown"
    path = out / "figures" / "llc_carry.csv"
    with open(path, "w") as f:
        f.write(f"# {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, commit "
                f"{commit}, {platform.machine()} {platform.processor() or ''} "
                f"({platform.python_version()})\n")
        table.to_csv(f, index=False, float_format="%.6g")


def summary(table: pd.DataFrame) -> None:
    """Per N: the 5+ and 6-gon values, and every estimate at a minimum against the exact one."""
    for n, t in table.groupby("n_samples"):
        at_min = t[(t.state != "not_at_minimum") & (t.exact_state == "healthy")]
        line = [f"N = {n} (gamma {t.gamma.iloc[0]:.3g}): vs exact median "
                f"{100 * at_min.rel.median():+.1f}% ({100 * at_min.rel.min():+.1f}.."
                f"{100 * at_min.rel.max():+.1f}%), {int((t.state == 'healthy').sum())}/{len(t)} "
                f"healthy, {int(t.biased.fillna(False).astype(bool).sum())} flagged biased"]
        for k in KGONS:
            kt = t[t.k_gon == k]
            if len(kt):
                line.append(f"{k}: {kt.llc.min():.2f}-{kt.llc.max():.2f} (exact "
                            f"{kt.exact.mean():.2f}; {len(kt)})")
        print("; ".join(line), flush=True)


def figure(table: pd.DataFrame, out, pdf: bool) -> None:
    ns = sorted(table.n_samples.unique())
    fig, axes = plt.subplots(1, len(KGONS), figsize=(9, 3.4), sharey=True)
    for ax, k in zip(np.atleast_1d(axes), KGONS, strict=True):
        for j, n in enumerate(ns):
            t = table[(table.n_samples == n) & (table.k_gon == k)]
            x = np.full(len(t), j, dtype=float)
            ax.errorbar(x - 0.12, t.exact, yerr=2 * t.exact_sem, fmt="o", color="0.45", ms=3,
                        lw=0.8, label="exact engine" if j == 0 else None)
            ax.errorbar(x + 0.12, t.llc, yerr=2 * t.llc_sem, fmt="o", color="C0", ms=3, lw=0.8,
                        label="SGLD, preset's setting" if j == 0 else None)
        ax.axhline(THEORY, color="C2", lw=1, ls="--", label="Chen et al. 8.5")
        ax.axhline(HALF_D, color="C3", lw=1, ls=":", label="d/2 = 9")
        ax.set_xticks(range(len(ns)), [str(n) for n in ns])
        ax.set_xlabel("training set size N")
        ax.set_title(f"{'6-gon' if k == '6' else k} at the last checkpoint (bars: 2 sem)")
    np.atleast_1d(axes)[0].set_ylabel("LLC")
    np.atleast_1d(axes)[0].legend(loc="lower right", frameon=False)
    fig.suptitle("chen2023's [llc] on runs with another N: SGLD (curvature-preconditioned) "
                 "against the exact engine", fontsize=9.5)
    save(fig, out, "llc_carry", pdf)


if __name__ == "__main__":
    main()
