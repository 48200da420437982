"""The self-check: every SGLD setting measured against the exact engine on its own run.

SGLD's unadjusted step biases an estimate by a share that grows with eps x n_beta x the
basin's curvature (and with the minibatch's gradient noise), and no convergence diagnostic
sees it: a biased chain mixes as well as an unbiased one. So whenever the LLC stage computes
a setting, it also estimates a sample of the setting's checkpoints with the reference engine
(devtms.llc.mala: full-batch MALA, no step-size bias) at the same gamma and n_beta, and
compares. The sample (`check_pairs`): up to MAX_INSTANCES instances spread over the
conditions, at CHECK_STEPS log-spread checkpoints ending at the last, of those estimates
the setting finds at a local minimum (not `not_at_minimum`, not `diverged`).

For each compared estimate (`compare`):

    delta = llc_sgld - llc_ref,   rel = delta / |llc_ref|,   z = delta / sqrt(sem_sgld^2 + sem_ref^2)

and per (setting, activation) the bias is the inverse-variance weighted mean of `rel`
(`summarize_check`). An estimate is flagged `biased` (`annotate`, a column beside `state`)
when its own comparison, or where it has none its activation's bias at its setting, is off by
more than BIAS_TOL (5%) and beyond the difference's 95% bound; changes below
FLAT_FLOOR x d/2 (an LLC of about 0, where ratios are noise) never flag. Only a reference that
is itself healthy counts: one that finds no basin, or does not converge, leaves the estimate
unchecked. The bound (`z_limit`): an estimate's sem is the std of a few chains' means (4 for
the reference), itself uncertain, so for one comparison it is Student's t at 97.5% with
Welch's degrees of freedom from the two chain counts (2.45 for two 4-chain estimates of equal
sem, 3.2 where one dominates; at least BIAS_Z); for an activation's aggregate, BIAS_Z.
The reference runs REFERENCE_BURNIN + REFERENCE_DRAWS steps: with 300 + 700 it read up to 8%
below long chains (its burn-in too short for the flat directions), and 6 of the 7 flags on
chen2023 at N = 300-5000 were not confirmed by them; at 600 + 1400 on half the instances
(the same cost), 1 of 2 (docs/science.md, section 4.11).

The reference estimates are ordinary rows of llc.csv (engine "mala", `reference_params`), so
the check resumes like any LLC job and costs nothing when rerun; calibration/check.csv and
run.json's "llc_check" record what it found, and `annotate` recomputes the flags from llc.csv
whenever a stage reads a setting (devtms.llc.active.choose).

The localization's sensitivity: at the last checkpoint's sampled estimates the reference also
runs at gamma / 2 and 2 gamma (`SENSITIVITY`), so every setting records how far the value it
measures moves with gamma (the estimator's value at a finite N depends on gamma; only its
large-N limit is the learning coefficient).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import pandas as pd

from devtms.llc.mala import ENGINE as REFERENCE_ENGINE
from devtms.llc.mala import H0
from devtms.llc.params import LLCParams

REFERENCE_CHAINS, REFERENCE_BURNIN, REFERENCE_DRAWS = 4, 600, 1400
MAX_INSTANCES = 16  # compared per setting, spread over the conditions
CHECK_STEPS = 3  # log-spread checkpoints, the last among them
SENSITIVITY_INSTANCES = 4  # of the last checkpoint's sample
BIAS_TOL = 0.05
BIAS_Z = 2.0
FLAT_FLOOR = 0.02  # of d/2: a difference below it is no bias (an LLC near 0)
SENSITIVITY = (0.5, 2.0)  # gamma factors the reference also runs at, on the last checkpoint
CHECK_CSV = "check.csv"  # in calibration/: one row per compared estimate
KEY = "llc_check"  # in run.json: per setting, what the check found
UNUSABLE = ("not_at_minimum", "diverged")  # the SGLD states that are no basin measurement


def reference_params(params: LLCParams, gamma: float | None = None) -> LLCParams:
    """The reference engine's setting that checks `params`: the same posterior (gamma, n_beta,
    LLC dataset, seed), full batch, its own chain lengths and starting step."""
    return dataclasses.replace(
        params, eps=H0, gamma=params.gamma if gamma is None else gamma,
        chains=REFERENCE_CHAINS, burnin=REFERENCE_BURNIN, draws=REFERENCE_DRAWS,
        batch_size=params.n_samples, precond="none")


def sample_instances(instances: pd.DataFrame, pool: list[int], limit: int) -> list[int]:
    """Up to `limit` instances of `pool`, the same number from every condition (activation x
    sparsity x importance), at least one each, seeds in order."""
    table = instances[instances["instance"].isin(pool)]
    keys = [c for c in ("activation", "sparsity", "importance_ratio") if c in table]
    groups = [g for _, g in table.groupby(keys, sort=False)]
    if not groups:
        return []
    per = max(1, math.ceil(limit / len(groups)))
    return sorted(int(i) for g in groups for i in g.sort_values("seed")["instance"][:per])


def log_spread(steps: list[int], k: int) -> list[int]:
    """k of `steps` (ascending) spread evenly in log(1 + step), the last always among them."""
    if len(steps) <= k:
        return list(steps)
    logs = np.log1p(np.asarray(steps, dtype=float))
    targets = np.linspace(logs[0], logs[-1], k)
    picked = {int(np.abs(logs - t).argmin()) for t in targets} | {len(steps) - 1}
    return [steps[j] for j in sorted(picked)]


def check_pairs(rows: pd.DataFrame, instances: pd.DataFrame,
                max_instances: int = MAX_INSTANCES, steps: int = CHECK_STEPS
                ) -> list[tuple[int, int]]:
    """The (instance, step) estimates of one setting's `rows` (of llc.csv) that the reference
    checks: sampled instances at log-spread steps, where the setting is at a minimum."""
    usable = rows[~rows["state"].isin(UNUSABLE)]
    if usable.empty:
        return []
    chosen = sample_instances(instances, sorted(usable["instance"].astype(int).unique()),
                              max_instances)
    mine = usable[usable["instance"].isin(chosen)]
    picked = log_spread(sorted(mine["step"].astype(int).unique()), steps)
    mine = mine[mine["step"].isin(picked)]
    return sorted(zip(mine["instance"].astype(int), mine["step"].astype(int), strict=True))


def sensitivity_pairs(pairs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The sample's estimates at its last checkpoint that the reference also runs at gamma x
    SENSITIVITY: up to SENSITIVITY_INSTANCES of them, spread evenly."""
    last = [(i, s) for i, s in pairs if s == max(step for _, step in pairs)]
    keep = np.linspace(0, len(last) - 1, min(len(last), SENSITIVITY_INSTANCES)).round()
    return [last[k] for k in sorted({int(k) for k in keep})]


def reference_rows(table: pd.DataFrame, params: LLCParams, gamma: float | None = None
                   ) -> pd.DataFrame:
    """llc.csv's rows of the reference setting of `params` (at `gamma`), indexed by
    (instance, step)."""
    from devtms.llc.table import done_mask

    ref = table[done_mask(table, reference_params(params, gamma), REFERENCE_ENGINE)]
    return ref.set_index(["instance", "step"])


def compare(rows: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    """Each of `rows` (one setting's SGLD estimates) that has a reference estimate in `table`
    (all of llc.csv), side by side. -> instance, step, activation, setting, llc_mean, llc_sem,
    ref_llc, ref_sem, ref_state, delta, rel, z, z_limit (`welch_limit`)"""
    out = []
    for setting, part in rows.groupby("setting", sort=False):
        ref = reference_rows(table, LLCParams.from_identity(part.iloc[0]))
        if ref.empty:
            continue
        key = pd.MultiIndex.from_arrays([part["instance"], part["step"]])
        found = key.isin(ref.index)
        if not found.any():
            continue
        mine = part[found]
        theirs = ref.loc[key[found]]
        delta = mine["llc_mean"].to_numpy() - theirs["llc_mean"].to_numpy()
        se = np.hypot(mine["llc_sem"].to_numpy(), theirs["llc_sem"].to_numpy())
        out.append(pd.DataFrame({
            "instance": mine["instance"].to_numpy(), "step": mine["step"].to_numpy(),
            "activation": mine["activation"].to_numpy(), "setting": setting,
            "llc_mean": mine["llc_mean"].to_numpy(), "llc_sem": mine["llc_sem"].to_numpy(),
            "state": mine["state"].to_numpy(),
            "ref_llc": theirs["llc_mean"].to_numpy(), "ref_sem": theirs["llc_sem"].to_numpy(),
            "ref_state": theirs["state"].to_numpy(), "delta": delta,
            "rel": delta / np.abs(theirs["llc_mean"].to_numpy()),
            "z": delta / np.where(se > 0, se, np.nan),
            "z_limit": welch_limit(mine["llc_sem"].to_numpy(float),
                                   mine["num_chains"].to_numpy(float),
                                   theirs["llc_sem"].to_numpy(float),
                                   theirs["num_chains"].to_numpy(float))}))
    columns = ["instance", "step", "activation", "setting", "llc_mean", "llc_sem", "state",
               "ref_llc", "ref_sem", "ref_state", "delta", "rel", "z", "z_limit"]
    return pd.concat(out, ignore_index=True)[columns] if out else pd.DataFrame(columns=columns)


def welch_limit(sem_a: np.ndarray, chains_a: np.ndarray, sem_b: np.ndarray,
                chains_b: np.ndarray) -> np.ndarray:
    """The 95% bound on |z| for the difference of two estimates whose sems come from their
    chains' spread: Student's t at 97.5% with Welch-Satterthwaite degrees of freedom, at least
    BIAS_Z. (All arrays of one shape.)"""
    from scipy.stats import t as student

    va, vb = np.square(sem_a), np.square(sem_b)
    with np.errstate(invalid="ignore", divide="ignore"):
        dof = np.square(va + vb) / (np.square(va) / np.maximum(chains_a - 1, 1)
                                    + np.square(vb) / np.maximum(chains_b - 1, 1))
    dof = np.where(np.isfinite(dof) & (dof > 0), dof, np.inf)
    return np.maximum(BIAS_Z, student.ppf(0.975, dof))


def is_biased(delta: np.ndarray, rel: np.ndarray, z: np.ndarray, floor: float,
              z_limit: np.ndarray | float = BIAS_Z) -> np.ndarray:
    """The flag's rule on compared estimates (z_limit: their `welch_limit`) or on a group's
    aggregate (BIAS_Z)."""
    with np.errstate(invalid="ignore"):
        return (np.abs(rel) > BIAS_TOL) & (np.abs(z) > z_limit) & (np.abs(delta) > floor)


def group_bias(pairs: pd.DataFrame) -> dict[str, float]:
    """The bias of a group of compared estimates: the inverse-variance weighted mean of their
    relative differences, its standard error, and the mean difference. NaN when empty."""
    rel_se = np.hypot(pairs["llc_sem"], pairs["ref_sem"]) / pairs["ref_llc"].abs()
    ok = np.isfinite(pairs["rel"]) & np.isfinite(rel_se) & (rel_se > 0)
    if not ok.any():
        return dict(n=0, bias=math.nan, bias_se=math.nan, delta=math.nan)
    w = 1.0 / rel_se[ok] ** 2
    bias = float((w * pairs["rel"][ok]).sum() / w.sum())
    return dict(n=int(ok.sum()), bias=bias, bias_se=float(1.0 / np.sqrt(w.sum())),
                delta=float(pairs["delta"][ok].mean()))


def usable_pairs(pairs: pd.DataFrame) -> pd.DataFrame:
    """The comparisons that count: the reference healthy, and the setting's estimate at a
    minimum."""
    return pairs[(pairs["ref_state"] == "healthy") & ~pairs["state"].isin(UNUSABLE)]


def summarize_check(pairs: pd.DataFrame, d: int) -> dict[str, dict[str, Any]]:
    """Per setting: its bias over all compared estimates and per activation, each with the
    verdict (`biased`), and the comparisons that did not count (reference not healthy)."""
    floor = FLAT_FLOOR * d / 2
    out: dict[str, dict[str, Any]] = {}
    for setting, part in pairs.groupby("setting", sort=True):
        good = usable_pairs(part)
        record = {**group_bias(good), "compared": int(len(part)),
                  "reference_unhealthy": int((part["ref_state"] != "healthy").sum()),
                  "by_activation": {}}
        record["biased"] = bool(_verdict(record, floor))
        for activation, group in good.groupby("activation", sort=True):
            entry = group_bias(group)
            entry["biased"] = bool(_verdict(entry, floor))
            record["by_activation"][str(activation)] = entry
        out[str(setting)] = record
    return out


def _verdict(entry: dict[str, Any], floor: float) -> bool:
    if not entry["n"]:
        return False
    z = entry["bias"] / entry["bias_se"] if entry["bias_se"] > 0 else math.inf
    return bool(is_biased(np.array([entry["delta"]]), np.array([entry["bias"]]),
                          np.array([z]), floor)[0])


def annotate(rows: pd.DataFrame, table: pd.DataFrame, d: int) -> pd.DataFrame:
    """`rows` (SGLD estimates of llc.csv) with the check's columns:

    ref_llc, ref_sem  the reference's estimate at this (instance, step), where it ran
    bias              the relative bias that applies: this estimate's own comparison, else its
                      activation's at its setting (NaN: unchecked)
    biased            whether it is off by more than BIAS_TOL and its comparison's bound
    checked           "own", "activation" or "" (no usable comparison)
    """
    rows = rows.copy()
    n = len(rows)
    ref_llc, ref_sem, bias = np.full(n, math.nan), np.full(n, math.nan), np.full(n, math.nan)
    biased, checked = np.zeros(n, dtype=bool), np.full(n, "", dtype=object)
    sgld = rows[rows["engine"] != REFERENCE_ENGINE] if "engine" in rows else rows.iloc[:0]
    pairs = compare(sgld, table) if len(sgld) else pd.DataFrame()
    if len(pairs):
        floor = FLAT_FLOOR * d / 2
        index = pd.MultiIndex.from_arrays([rows["setting"].astype(str), rows["instance"],
                                           rows["step"]])
        keyed = pairs.assign(setting=pairs["setting"].astype(str)).set_index(
            ["setting", "instance", "step"])
        found = keyed.reindex(index)
        ref_llc, ref_sem = found["ref_llc"].to_numpy(float), found["ref_sem"].to_numpy(float)
        usable = (found["ref_state"] == "healthy").to_numpy() \
            & ~rows["state"].isin(UNUSABLE).to_numpy()
        own = usable & np.isfinite(found["rel"].to_numpy(float))
        bias[own] = found["rel"].to_numpy(float)[own]
        biased[own] = is_biased(found["delta"].to_numpy(float), found["rel"].to_numpy(float),
                                found["z"].to_numpy(float), floor,
                                found["z_limit"].to_numpy(float))[own]
        checked[own] = "own"
        groups = pd.DataFrame([(setting, activation, e["bias"], e["biased"])
                               for setting, record in summarize_check(pairs, d).items()
                               for activation, e in record["by_activation"].items() if e["n"]],
                              columns=["setting", "activation", "bias", "biased"])
        key = pd.MultiIndex.from_arrays([rows["setting"].astype(str),
                                         rows["activation"].astype(str)])
        group = groups.set_index(["setting", "activation"]).reindex(key)
        rest = ~own & ~rows["state"].isin(UNUSABLE).to_numpy() \
            & group["bias"].notna().to_numpy()
        bias[rest] = group["bias"].to_numpy(float)[rest]
        biased[rest] = group["biased"].to_numpy()[rest].astype(bool)
        checked[rest] = "activation"
    rows["ref_llc"], rows["ref_sem"], rows["bias"] = ref_llc, ref_sem, bias
    rows["biased"], rows["checked"] = biased, checked
    return rows


def sensitivity(table: pd.DataFrame, params: LLCParams, pairs: list[tuple[int, int]]
                ) -> dict[str, Any]:
    """The reference's mean llc at gamma x SENSITIVITY and at gamma itself over `pairs` (the
    last checkpoint's sample) where all three are healthy: how far the measured value moves
    with the localization."""
    frames = [reference_rows(table, params, params.gamma * f) for f in (SENSITIVITY[0], 1.0,
                                                                         SENSITIVITY[1])]
    key = pd.MultiIndex.from_tuples(pairs, names=["instance", "step"])
    values = []
    for frame in frames:
        found = frame.reindex(key)
        values.append(found["llc_mean"].where(found["state"] == "healthy"))
    both = pd.concat(values, axis=1, keys=range(3)).dropna()
    record: dict[str, Any] = {"gamma": params.gamma, "n": int(len(both))}
    for k, name in enumerate(("at_half", "at", "at_double")):
        record[name] = float(both[k].mean()) if len(both) else math.nan
    return record


def describe(setting: str, record: dict[str, Any]) -> str:
    """One line for a person: what the self-check found for a setting."""
    if not record.get("n"):
        return (f"self-check of {setting}: no usable comparison ({record.get('compared', 0)} "
                "compared; the reference is not healthy there)")
    verdict = ("BIASED: its estimates are flagged `biased`; use a smaller eps, or `devtms "
               "calibrate RUN --auto`" if record["biased"] else "within tolerance")
    worst = sorted(((a, e) for a, e in record.get("by_activation", {}).items() if e["biased"]),
                   key=lambda item: -abs(item[1]["bias"]))
    named = ", ".join(f"{a} {100 * e['bias']:+.0f}%" for a, e in worst[:6])
    more = f"; biased activations: {named}{' ...' if len(worst) > 6 else ''}" if worst else ""
    s = record.get("sensitivity", {})
    gamma = (f"; the reference at gamma {s['gamma'] / 2:g} / {s['gamma']:g} / {2 * s['gamma']:g}: "
             f"{s['at_half']:.3g} / {s['at']:.3g} / {s['at_double']:.3g}") if s.get("n") else ""
    return (f"self-check of {setting} against {REFERENCE_ENGINE} on {record['n']} estimates: "
            f"bias {100 * record['bias']:+.1f}% +- {100 * record['bias_se']:.1f}% ({verdict})"
            f"{more}{gamma}")
