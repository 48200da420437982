"""The k-gon phases a trained run passes through, from its geometry.csv and llc.csv.

A *plateau* is a stretch of at least PLATEAU_CHECKPOINTS consecutive checkpoints of one
instance with the same k-gon label: SGD sitting at (near) a critical point. The phases "that
training reaches" are the labels of the plateaus; each gets the run's own measurements there,
the training loss and the LLC level of its last healthy estimates (devtms.transitions.
plateau_level, as for the rises across loss drops), and SGD's side of the comparison:

    plateaus(geometry)           -> instance, k_gon_label, first_step, last_step, checkpoints
    run_phases(plateaus, llc)    -> per label: seeds, loss_run, llc_run, llc_run_sem
    sgd_fractions(geometry)      -> step, k_gon_label, fraction (of the instances)
    sgd_order(plateaus)          -> per label: seeds passing it, median first step

geometry: geometry.csv's rows of the instances studied (instance, step, k_gon_label);
llc: llc.csv's rows of the setting read (instance, step, llc_mean, llc_sem, healthy,
init_loss).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from devtms.transitions import plateau_level

PLATEAU_CHECKPOINTS = 3  # consecutive checkpoints of one label that make a plateau

PLATEAU_COLUMNS = ["instance", "k_gon_label", "first_step", "last_step", "checkpoints"]


def plateaus(geometry: pd.DataFrame, min_checkpoints: int = PLATEAU_CHECKPOINTS) -> pd.DataFrame:
    """Runs of one label lasting at least `min_checkpoints` checkpoints, per instance."""
    rows = []
    for instance, g in geometry.sort_values(["instance", "step"]).groupby("instance", sort=True):
        labels, steps = g["k_gon_label"].astype(str).to_numpy(), g["step"].to_numpy()
        start = 0
        for j in range(1, len(labels) + 1):
            if j == len(labels) or labels[j] != labels[start]:
                if j - start >= min_checkpoints and labels[start] not in ("", "nan", "diverged"):
                    rows.append((int(instance), labels[start], int(steps[start]),
                                 int(steps[j - 1]), j - start))
                start = j
    return pd.DataFrame(rows, columns=PLATEAU_COLUMNS)


def run_phases(plats: pd.DataFrame, llc: pd.DataFrame) -> pd.DataFrame:
    """Per label: how many instances sit on it, their training loss and LLC there.

    Each plateau's LLC is the level of its last healthy estimates (with a standard error that
    counts the chains and the spread); a label's LLC is the mean over its plateaus, its sem
    the spread of those means over sqrt(plateaus) (a single plateau keeps its own se).
    -> k_gon_label, seeds, plateaus_measured, loss_run, llc_run, llc_run_sem
    """
    healthy = llc[llc["healthy"].astype(bool)]
    by_instance = {int(i): g.sort_values("step") for i, g in healthy.groupby("instance")}
    every = {int(i): g.sort_values("step") for i, g in llc.groupby("instance")}
    rows = []
    for label, group in plats.groupby("k_gon_label", sort=False):
        levels, errors, losses = [], [], []
        for p in group.itertuples(index=False):
            inside = every.get(p.instance)
            if inside is not None:
                on = inside[(inside["step"] >= p.first_step) & (inside["step"] <= p.last_step)]
                losses.extend(on["init_loss"].tail(PLATEAU_CHECKPOINTS).tolist())
            h = by_instance.get(p.instance)
            if h is None:
                continue
            level, se = plateau_level(h["step"].to_numpy(float), h["llc_mean"].to_numpy(float),
                                      h["llc_sem"].to_numpy(float), p.first_step, p.last_step)
            if np.isfinite(level):
                levels.append(level)
                errors.append(se)
        if len(levels) > 1:
            sem = float(np.std(levels, ddof=1) / np.sqrt(len(levels)))
        else:
            sem = float(errors[0]) if errors else np.nan
        rows.append({
            "k_gon_label": label, "seeds": int(group["instance"].nunique()),
            "plateaus_measured": len(levels),
            "loss_run": float(np.mean(losses)) if losses else np.nan,
            "llc_run": float(np.mean(levels)) if levels else np.nan, "llc_run_sem": sem,
        })
    return pd.DataFrame(rows, columns=["k_gon_label", "seeds", "plateaus_measured", "loss_run",
                                       "llc_run", "llc_run_sem"])


def sgd_fractions(geometry: pd.DataFrame) -> pd.DataFrame:
    """The share of instances in each k-gon label at every checkpoint step."""
    counts = geometry.groupby(["step", "k_gon_label"]).size().rename("count").reset_index()
    totals = geometry.groupby("step").size()
    counts["fraction"] = counts["count"] / counts["step"].map(totals)
    return counts[["step", "k_gon_label", "fraction"]].sort_values(
        ["step", "k_gon_label"]).reset_index(drop=True)


def sgd_order(plats: pd.DataFrame, n_instances: int) -> pd.DataFrame:
    """Which phases SGD passes and when: per label, the share of instances with a plateau
    on it and the median step its first plateau starts, in order of that step.
    -> k_gon_label, sgd_seeds_fraction, sgd_median_first_step"""
    first = plats.groupby(["k_gon_label", "instance"])["first_step"].min().reset_index()
    out = first.groupby("k_gon_label").agg(
        sgd_seeds_fraction=("instance", lambda s: s.nunique() / n_instances),
        sgd_median_first_step=("first_step", "median")).reset_index()
    return out.sort_values("sgd_median_first_step", kind="stable").reset_index(drop=True)
