"""The tables the report draws and shows, computed from a RunData (pure pandas; nothing read).

For the figures:
    loss_curves    instance, step, loss, condition, seed
    llc_curves     llc.csv's plotted rows + condition, seed
    trajectories   condition, step, loss (geometric mean over seeds), llc_mean, healthy,
                   any_healthy
    final_rows     instances.csv + loss, geometry.csv's columns, llc, llc_std, llc_healthy at
                   the last checkpoint, one row per instance

For a comparison of several runs (conditions matched across the runs; `seed` is the run's
index, so the grids overlay runs where they overlay seeds):
    shared_conditions   run, instance + condition, title, variant, activation, family, seed
    compared_panels     one Panel per condition of any run, its runs as seeds
    compared_losses     condition, seed (run), step, loss (median over the run's seeds)
    compared_llcs       condition, seed (run), step, llc_mean, llc_std, healthy, state
    compared_finals     run (index), condition, activation, seed, loss, llc, llc_healthy

For the page (one row per shown row; `Shown` cells sort by another value than their text):
    summary_table        one row per condition: analyze's summary.csv, or provisional_summary
    llc_settings         one row per LLC setting in llc.csv
    diverged_rows        one row per diverged training instance
    llc_health           the unhealthy estimates, by reason and one by one
    runs_overview        one row per run of a comparison
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from devtms.llc.check import KEY, REFERENCE_ENGINE
from devtms.llc.params import SETTING_COLUMNS
from devtms.report.figures.layout import Panel
from devtms.report.figures.style import activation_order, style
from devtms.report.format import MISSING, fmt
from devtms.report.load import CONDITION_FIELDS, RunData, condition_panels, label_conditions

# ---------------------------------------------------------------------------------------------
# For the figures


def loss_curves(data: RunData) -> pd.DataFrame:
    cols = data.instances[["instance", "condition", "seed"]]
    return data.train_log.merge(cols, on="instance").sort_values(["instance", "step"])


def llc_curves(data: RunData) -> pd.DataFrame | None:
    if data.llc is None:
        return None
    cols = data.instances[["instance", "condition", "seed"]]
    return data.llc.merge(cols, on="instance").sort_values(["instance", "step"])


def trajectories(data: RunData) -> pd.DataFrame | None:
    """Mean over seeds of (loss, LLC) at each checkpoint that has an LLC (train_log.csv has
    every checkpoint's loss; llc.csv's init_loss is on the LLC's summed scale, not used here).
    Checkpoints not at a local minimum have no LLC and are left out."""
    llc = llc_curves(data)
    if llc is None:
        return None
    if "state" in llc:
        llc = llc[llc["state"] != "not_at_minimum"]
    loss = data.train_log[["instance", "step", "loss"]]
    d = llc.merge(loss, on=["instance", "step"], how="left")
    d = d[np.isfinite(d["loss"].astype(float)) & (d["loss"] > 0)]
    d = d.assign(log_loss=np.log10(d["loss"].astype(float)),
                 llc_ok=d["llc_mean"].where(d["healthy"]))
    g = d.groupby(["condition", "step"])
    # the mean over seeds of the healthy estimates (of all, hollow, where none is healthy)
    return pd.DataFrame({"loss": 10 ** g["log_loss"].mean(),
                         "llc_mean": g["llc_ok"].mean().fillna(g["llc_mean"].mean()),
                         "healthy": g["healthy"].all(),
                         "any_healthy": g["healthy"].any()}).reset_index()


def final_rows(data: RunData) -> pd.DataFrame:
    last = data.max_step
    loss = data.train_log[data.train_log["step"] == last][["instance", "loss"]]
    geo = data.geometry[data.geometry["step"] == last].drop(columns=["step"])
    out = data.instances.merge(loss, on="instance", how="left").merge(geo, on="instance",
                                                                      how="left")
    if data.llc is not None:
        llc = data.llc.sort_values("step").groupby("instance").tail(1)
        out = out.merge(llc[["instance", "llc_mean", "llc_std", "healthy"]].rename(
            columns={"llc_mean": "llc", "healthy": "llc_healthy"}), on="instance", how="left")
    else:
        out["llc"] = np.nan
    return out


# ---------------------------------------------------------------------------------------------
# Several runs


def shared_conditions(runs: list[RunData]) -> pd.DataFrame:
    """Every instance of every run labelled by the condition fields that vary across all of
    them, so "relu S=0.9" names the same condition in each run (a run that does not sweep
    sparsity still gets its S=...). -> run (index in `runs`), instance, activation, seed,
    condition, title, variant, family"""
    fields = ["instance", "activation", "seed", *[c for c in CONDITION_FIELDS
                                                  if c != "activation"]]
    parts = [r.instances[[c for c in fields if c in r.instances]].assign(run=k)
             for k, r in enumerate(runs)]
    return label_conditions(pd.concat(parts, ignore_index=True))


def compared_panels(shared: pd.DataFrame) -> list[Panel]:
    """One Panel per condition of any run, with the runs that have it as its `seeds`."""
    return condition_panels(shared.drop(columns="seed").rename(columns={"run": "seed"}))


def _relabelled(table: pd.DataFrame, shared: pd.DataFrame, run: int) -> pd.DataFrame:
    """A run's per-instance table with the shared condition in place of the run's own."""
    own = shared.loc[shared["run"] == run, ["instance", "condition"]]
    return table.drop(columns=["condition"], errors="ignore").merge(own, on="instance")


def compared_losses(runs: list[RunData], shared: pd.DataFrame) -> pd.DataFrame:
    """The median loss over each run's seeds at every logged step, per condition and run."""
    parts = []
    for k, r in enumerate(runs):
        d = _relabelled(loss_curves(r), shared, k)
        med = d.groupby(["condition", "step"])["loss"].median().reset_index()
        parts.append(med.assign(seed=k))
    return pd.concat(parts, ignore_index=True)


def compared_llcs(runs: list[RunData], shared: pd.DataFrame) -> pd.DataFrame | None:
    """Per condition, run and checkpoint: the mean over seeds of the healthy estimates (of all,
    flagged unhealthy, where none is healthy), with the mean sd over chains; not at a minimum
    only where every seed is. None when no run has LLC estimates."""
    parts = []
    for k, r in enumerate(runs):
        llc = llc_curves(r)
        if llc is None:
            continue
        d = _relabelled(llc, shared, k)
        absent = d["state"] == "not_at_minimum" if "state" in d else pd.Series(False, d.index)
        d = d.assign(ok_mean=d["llc_mean"].where(d["healthy"]),
                     ok_std=d["llc_std"].where(d["healthy"]), absent=absent)
        g = d.groupby(["condition", "step"])
        out = pd.DataFrame({
            "llc_mean": g["ok_mean"].mean().fillna(g["llc_mean"].mean()),
            "llc_std": g["ok_std"].mean().fillna(g["llc_std"].mean()),
            "healthy": g["healthy"].any(),
            "state": g["absent"].all().map({True: "not_at_minimum", False: ""}),
        }).reset_index()
        parts.append(out.assign(seed=k))
    return pd.concat(parts, ignore_index=True) if parts else None


def compared_finals(runs: list[RunData], shared: pd.DataFrame) -> pd.DataFrame:
    """Every instance of every run at its last checkpoint: run (index in `runs`), condition,
    activation, seed, loss, llc, llc_healthy."""
    parts = []
    for k, r in enumerate(runs):
        f = _relabelled(final_rows(r), shared, k)
        if "llc_healthy" not in f:
            f["llc_healthy"] = np.nan
        parts.append(f[["condition", "activation", "seed", "loss", "llc", "llc_healthy"]]
                     .assign(run=k))
    return pd.concat(parts, ignore_index=True)


# ---------------------------------------------------------------------------------------------
# The summary table


@dataclass
class Shown:
    """A table cell whose text differs from the value it sorts by."""

    text: str
    sort: float | str


# summary.csv column(s) -> shown column: a value, or (mean, sd) shown as "mean ± sd"
SUMMARY_VIEW = [
    ("n_instances", "seeds"),
    (("final_loss_mean", "final_loss_std"), "final loss"),
    (("final_llc_mean", "final_llc_std"), "final LLC"),
    (("dims_per_feature_mean", "dims_per_feature_std"), "dims per feature"),
    (("final_geometry", "final_geometry_count"), "final geometry"),
    (("antipodal_pairs_mean", "antipodal_pairs_std"), "antipodal pairs"),
    ("loss_drops_mean", "loss drops"),
    ("llc_jumps_mean", "LLC jumps"),
    ("geometry_changes_mean", "geometry changes"),
    ("superposition_after_largest_drop", "superposition after largest drop"),
    ("drops_with_llc_rise", "drops with LLC rise"),
    ("drops_with_geometry_change", "drops with geometry change"),
    ("n_loss_drops", "loss drops (all seeds)"),
]


def summary_table(data: RunData) -> tuple[pd.DataFrame, str]:
    """The analyze step's summary (curated, mean ± sd over seeds), or the provisional one;
    and where it comes from, in words."""
    if data.summary is None or not len(data.summary) or "activation" not in data.summary:
        return provisional_summary(data), ("provisional, from the final checkpoint: the "
                                           "transition columns appear once `devtms analyze` "
                                           "has run")
    s = data.summary
    rank = {a: i for i, a in enumerate(activation_order(s["activation"].astype(str)))}
    s = s.iloc[np.argsort([rank[str(a)] for a in s["activation"]], kind="stable")]
    # summary.csv's group keys are every condition column: show those that tell rows apart
    keys = [c for c in s.columns if c in CONDITION_FIELDS
            and (c == "activation" or s[c].nunique(dropna=False) > 1)]
    out = s[keys].copy()
    out.insert(1, "family", [style(str(a)).family for a in s["activation"]])
    known = {c for c in s.columns if c in data.instances}  # the group keys, shown or constant
    for source, name in SUMMARY_VIEW:
        cols = source if isinstance(source, tuple) else (source,)
        if not all(c in s for c in cols):
            continue
        known.update(cols)
        if len(cols) == 1:
            out[name] = s[cols[0]].to_numpy()
        elif name == "final geometry":
            out[name] = [Shown(f"{g} ({int(c)}/{int(n)})" if str(g) else MISSING, str(g))
                         for g, c, n in zip(s[cols[0]].fillna(""), s[cols[1]].fillna(0),
                                            s.get("n_instances", s[cols[1]]), strict=True)]
        else:
            out[name] = [_mean_sd(m, sd) for m, sd in zip(s[cols[0]], s[cols[1]], strict=True)]
    for c in s.columns:  # columns this report does not know yet: shown as they are
        if c not in known and c != "superposition_defined":
            out[c] = s[c].to_numpy()
    return out, "from summary.csv (`devtms analyze`); ± is the sd over seeds"


def _mean_sd(mean: Any, sd: Any) -> Shown | float:
    mean = float(mean) if pd.notna(mean) else np.nan
    if not np.isfinite(mean):
        return np.nan
    if pd.isna(sd) or not np.isfinite(float(sd)):
        return Shown(fmt(mean), mean)
    return Shown(f"{mean:.3g} ± {float(sd):.2g}", mean)


def provisional_summary(data: RunData) -> pd.DataFrame:
    """One row per condition from the final checkpoint, when `devtms analyze` has not run."""
    final = final_rows(data)
    rows = []
    for panel in data.panels:
        d = final[final["condition"] == panel.key]
        row: dict[str, Any] = {"activation": panel.activation}
        if panel.title != panel.activation:
            row["condition"] = panel.title
        row["family"] = style(panel.activation).family
        row["seeds"] = len(d)
        row["final loss"] = _geo_mean(d["loss"])
        row["final LLC"] = d["llc"].mean() if d["llc"].notna().any() else np.nan
        row["dims per feature"] = d["dims_per_feature"].mean()
        if data.m == 2:
            row["k-gon"] = " / ".join(d["k_gon_label"].fillna("?").astype(str))
        row["antipodal pairs"] = d["n_antipodal_pairs"].mean()
        row["superposed features"] = d["n_superposed"].mean() if "n_superposed" in d else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def _geo_mean(x: pd.Series) -> float:
    v = x.to_numpy(float)
    v = v[np.isfinite(v) & (v > 0)]
    return float(10 ** np.log10(v).mean()) if len(v) else np.nan


# ---------------------------------------------------------------------------------------------
# Health and provenance


def diverged_rows(data: RunData) -> pd.DataFrame:
    """instance, activation, seed (and sparsity, importance_ratio where they vary)."""
    inst = data.instances.set_index("instance")
    rows = inst.loc[[i for i in data.diverged if i in inst.index]].reset_index()
    return rows[["instance", "activation", "seed",
                 *[c for c in ("sparsity", "importance_ratio") if rows[c].nunique() > 1]]]


@dataclass
class LLCHealth:
    """The estimates of llc.csv (every setting) flagged unhealthy."""

    total: int  # estimates in llc.csv
    by_reason: pd.DataFrame  # reason, estimates, conditions (up to 12 names)
    listing: pd.DataFrame  # one row per unhealthy estimate: instance, condition, seed, step,
    # the setting columns when llc.csv holds several settings, llc_mean, ..., reason


def llc_health(data: RunData) -> LLCHealth | None:
    """The health of every SGLD estimate of llc.csv (the self-check's reference estimates are
    shown apart: `llc_check`). None without LLC estimates."""
    llc = data.llc_all  # None exactly when data.llc is None
    if llc is None:
        return None
    if "engine" in llc:
        llc = llc[llc["engine"] != REFERENCE_ENGINE]
    bad = llc[~llc["healthy"]]
    merged = bad.merge(data.instances[["instance", "title", "seed"]], on="instance", how="left")
    by_reason = (merged.groupby("reason").agg(estimates=("instance", "size"),
                                              conditions=("title", lambda t: ", ".join(
                                                  sorted(set(map(str, t)))[:12])))
                 .reset_index().sort_values("estimates", ascending=False))
    settings = llc_settings(data)
    several = settings is not None and len(settings) > 1
    setting_cols = [c for c in SETTING_COLUMNS if c in merged] if several else []
    cols = [c for c in ("instance", "title", "seed", "step", *setting_cols, "llc_mean", "llc_std",
                        "init_loss", "grad_norm", "grad_shift", "hess_min", "num_diverged",
                        "mala_acceptance", "reason")
            if c in merged]
    listing = merged[cols].rename(columns={"title": "condition"}).sort_values(["instance", "step"])
    return LLCHealth(len(llc), by_reason, listing)


def llc_settings(data: RunData) -> pd.DataFrame | None:
    """The distinct LLC settings in llc.csv: plotted (the one the figures show), the setting
    columns, estimates, checkpoints, unhealthy[, mean MALA acceptance]."""
    llc = data.llc_all  # None exactly when data.llc is None
    if llc is None:
        return None
    cols = [c for c in ("setting", *SETTING_COLUMNS) if c in llc]
    if not cols:
        return None
    g = llc.fillna({c: MISSING for c in cols}).groupby(cols, dropna=False, sort=False)
    out = g.agg(estimates=("step", "size"), checkpoints=("step", "nunique"),
                unhealthy=("healthy", lambda h: int((~h.astype(bool)).sum()))).reset_index()
    if "mala_acceptance" in llc:
        out["mean MALA acceptance"] = g["mala_acceptance"].mean().to_numpy()
    plotted = [s.id for s in data.llc_setting.settings()] if data.llc_setting is not None else []
    out.insert(0, "plotted", out["setting"].astype(str).isin(plotted) if "setting" in out
               else False)
    return out


def llc_check(data: RunData) -> pd.DataFrame | None:
    """What the self-check found per setting (run.json's record, devtms.llc.check): the
    reference setting, estimates compared and usable, the bias with its standard error, the
    verdict, the most biased activations, and the reference's mean llc at gamma / 2, gamma and
    2 gamma on the last checkpoint. None when the run has no check."""
    records = data.run.meta.get(KEY)
    if not records:
        return None
    plotted = {s.id for s in data.llc_setting.settings()} if data.llc_setting is not None else set()
    rows = []
    for setting, r in records.items():
        worst = sorted(((a, e["bias"]) for a, e in r.get("by_activation", {}).items()
                        if e["biased"]), key=lambda item: -abs(item[1]))
        sens = r.get("sensitivity", {})
        rows.append({
            "setting": setting, "plotted": setting in plotted, "reference": r.get("reference"),
            "compared": r.get("compared"), "usable": r.get("n"),
            "bias": (f"{100 * r['bias']:+.1f}% ± {100 * r['bias_se']:.1f}%" if r.get("n")
                     else MISSING),
            "verdict": "BIASED" if r.get("biased") else "ok" if r.get("n") else "unchecked",
            "most biased": ", ".join(f"{a} {100 * b:+.0f}%" for a, b in worst[:3])
            + (f" (+{len(worst) - 3} more)" if len(worst) > 3 else ""),
            "gamma": sens.get("gamma"),
            **{f"reference at {name}": fmt(sens[key]) if sens.get("n") else MISSING
               for name, key in (("gamma / 2", "at_half"), ("gamma", "at"),
                                 ("2 gamma", "at_double"))}})
    return pd.DataFrame(rows).sort_values(["plotted", "setting"], ascending=[False, True])


def runs_overview(runs: list[RunData], names: list[str]) -> pd.DataFrame:
    rows = []
    for r, n in zip(runs, names, strict=True):
        rows.append({"run": n, "path": str(r.run.path), "instances": len(r.instances),
                     "conditions": len(r.panels), "steps": r.max_step,
                     "LLC": "yes" if r.llc is not None else "no",
                     "analyze": "yes" if r.transitions is not None else "no",
                     "diverged": len(r.diverged),
                     "unhealthy LLC": 0 if r.llc is None else int((~r.llc["healthy"]).sum())})
    return pd.DataFrame(rows)
