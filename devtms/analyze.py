"""The analyze stage: geometry per checkpoint, transitions per instance, a study-level summary.

Reads a trained run directory (checkpoints/, train_log.csv, and llc.csv when present) and
writes three tables (columns documented in GEOMETRY_COLUMNS, EVENT_COLUMNS, SUMMARY_COLUMNS):

    geometry.csv      one row per (instance, checkpoint step): devtms.geometry.geometry_table
    transitions.csv   one row per event (loss_drop, llc_rise, llc_fall, kgon_change,
                      antipodal_change, superposition_change, dims_plateau); loss drops carry
                      their nearest LLC jump and geometry change (devtms.transitions)
    summary.csv       one row per condition (activation x sparsity x importance_ratio ...:
                      every column of instances.csv but instance and seed), aggregated over
                      seeds with spread

geometry.csv and transitions.csv are written with the instance's conditions after `instance`
(devtms.store.with_conditions); the tables this module computes and returns leave them out.

Incremental and idempotent: geometry is computed only for (instance, step) pairs not yet in
geometry.csv (all of it again if the geometry thresholds changed); transitions and summary
are recomputed from the tables every time (cheap) and written only if their bytes change, so
a rerun with nothing new leaves every file as it was, and a new or updated llc.csv shows up in
transitions.csv and summary.csv on the next run.

    >>> result = analyze_run(RunDir.open("runs/chen2023"))
    >>> result.sequences[3]          # [(0, "4++"), (92, "5+"), (696, "6")]
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from devtms import geometry as geo
from devtms import transitions as tr
from devtms.errors import RunDirError
from devtms.llc.active import choose, to_dict
from devtms.llc.table import read_llc_table
from devtms.store import (
    GEOMETRY_CSV,
    SUMMARY_CSV,
    TRAIN_LOG,
    TRANSITIONS_CSV,
    RunDir,
    condition_columns,
    without_conditions,
)

VERSION = 2  # bump when a change to the analysis makes old geometry rows stale (2: "o" marks)
STAGE = "devtms analyze"
CHUNK = 16  # checkpoints loaded at once

# summary.csv, after the group keys (summary_keys: the condition columns of instances.csv but
# seed); means and sample std over the group's instances (seeds), at the last checkpoint unless
# said otherwise
SUMMARY_COLUMNS = [
    "n_instances",
    "n_diverged",  # instances whose training diverged (non-finite final loss): not in the means
    "final_loss_mean", "final_loss_std",  # train_log loss at the last step
    "final_llc_mean", "final_llc_std",  # llc.csv at each instance's last healthy step (or empty)
    "dims_per_feature_mean", "dims_per_feature_std",
    "final_geometry",  # most common final k-gon label (m = 2), phase (m = 1, n = 2), else
    "final_geometry_count",  # "R rep, P pairs"; and how many instances end in it
    "antipodal_pairs_mean", "antipodal_pairs_std",
    "loss_drops_mean", "llc_jumps_mean", "geometry_changes_mean",  # events per instance
    "superposition_after_largest_drop",  # fraction of instances (of those where it is defined:
    "superposition_defined",  # ending in superposition and with a loss drop; this many)
    "drops_with_llc_rise",  # fraction of all loss drops with an LLC rise within tolerance
    "drops_with_geometry_change",  # ... with a geometry change within tolerance
    "n_loss_drops",  # the denominator of those two
]


# ---------------------------------------------------------------------------------------------
# Geometry, incrementally


def missing_steps(existing: pd.DataFrame | None, steps: list[int], instances: list[int]) -> list[int]:
    """Checkpoint steps with at least one instance not yet in `existing`."""
    if existing is None or existing.empty:
        return list(steps)
    have = existing.groupby("step")["instance"].apply(set).to_dict()
    want = set(instances)
    return [s for s in steps if not want <= have.get(s, set())]


def update_geometry(run: RunDir, existing: pd.DataFrame | None, thresholds: geo.Thresholds,
                    progress: Callable[[int], None] | None = None) -> pd.DataFrame:
    """geometry.csv with rows added for every missing (instance, step). Loads checkpoints."""
    steps = run.checkpoint_steps()
    instances = [int(i) for i in run.instances["instance"]]
    todo = missing_steps(existing, steps, instances)
    parts = [] if existing is None else [existing]
    bias = run.config.model.bias
    for start in range(0, len(todo), CHUNK):
        chunk = todo[start:start + CHUNK]
        W, b = run.load_weights(chunk)  # (S, I, m, n), (S, I, n)
        parts.append(geo.geometry_table(W, b if bias else None, chunk, instances, thresholds))
        if progress is not None:
            progress(len(chunk))
    if not parts:
        return pd.DataFrame(columns=geo.GEOMETRY_COLUMNS)
    table = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
    table = table.drop_duplicates(["instance", "step"], keep="first")
    table = table[table["step"].isin(steps) & table["instance"].isin(instances)]
    return normalize_geometry(table)


def normalize_geometry(table: pd.DataFrame) -> pd.DataFrame:
    """Sorted, with stable dtypes, so that a table read back from CSV serialises identically."""
    table = table.sort_values(["instance", "step"], kind="stable").reset_index(drop=True)
    for name in ("instance", "step", "n_represented", "n_superposed", "n_antipodal_pairs"):
        table[name] = table[name].astype(np.int64)
    table["k_gon"] = pd.array(table["k_gon"], dtype="Int64")
    for name in ("k_gon_label", "polygon", "phase"):
        table[name] = table[name].astype(object).fillna("").astype(str)
    return table[geo.GEOMETRY_COLUMNS]


# ---------------------------------------------------------------------------------------------
# Transitions and summary: pure functions of the tables


def checkpoint_losses(train_log: pd.DataFrame, steps: list[int]) -> pd.DataFrame:
    """The logged loss at the checkpoint steps. -> instance, step, loss"""
    log = train_log[train_log["step"].isin(steps)]
    log = log.drop_duplicates(["instance", "step"], keep="last")
    return log[["instance", "step", "loss"]].sort_values(["instance", "step"]).reset_index(drop=True)


def usable_llc(llc: pd.DataFrame) -> pd.DataFrame | None:
    """The rows of one setting of llc.csv (as devtms.llc.table reads it) fit to judge jumps:
    healthy ones (so never a checkpoint that is not at a local minimum), with llc_sem (else
    std / sqrt(chains)); None when there are none."""
    if llc.empty or "llc_mean" not in llc:
        return None
    llc = llc[llc["healthy"]].copy()
    if "llc_sem" not in llc and {"llc_std", "num_chains"} <= set(llc):
        llc["llc_sem"] = llc["llc_std"] / np.sqrt(llc["num_chains"].clip(lower=1))
    llc = llc[np.isfinite(llc["llc_mean"].astype(float))]
    return llc.sort_values(["instance", "step"]).reset_index(drop=True)


def transitions_table(geometry: pd.DataFrame, losses: pd.DataFrame, llc: pd.DataFrame | None,
                      settings: tr.Settings) -> pd.DataFrame:
    """Every instance's events (devtms.transitions.instance_events). -> EVENT_COLUMNS"""
    rows = []
    for instance, g in geometry.groupby("instance", sort=True):
        lo = losses[losses["instance"] == instance]
        li = None if llc is None else llc[llc["instance"] == instance]
        for event in tr.instance_events(lo["step"].to_numpy(), lo["loss"].to_numpy(), g, li,
                                        settings):
            rows.append({"instance": int(instance), **event})
    table = pd.DataFrame(rows, columns=tr.EVENT_COLUMNS)
    for name in ("size", "llc_lag", "llc_size", "llc_before", "llc_after", "llc_change_se",
                 "geometry_lag"):
        table[name] = geo.round_sig(table[name].to_numpy(dtype=float))
    for name in ("llc_step", "geometry_step"):
        table[name] = pd.array(table[name], dtype="Int64")
    return table


def final_geometry_label(row: pd.Series, m: int, n: int) -> str:
    """The k-gon label (m = 2), the phase (m = 1, n = 2), else represented / pairs counts."""
    if m == 2:
        return str(row["k_gon_label"])
    if (m, n) == (1, 2):
        return str(row["phase"])
    return f"{int(row['n_represented'])} rep, {int(row['n_antipodal_pairs'])} pairs"


def instance_summary(instances: pd.DataFrame, geometry: pd.DataFrame, losses: pd.DataFrame,
                     llc: pd.DataFrame | None, events: pd.DataFrame,
                     settings: tr.Settings) -> pd.DataFrame:
    """One row per instance: final values, event counts, and the two study questions."""
    rows = []
    for inst in instances.itertuples(index=False):
        i = int(inst.instance)
        g = geometry[geometry["instance"] == i].sort_values("step")
        lo = losses[losses["instance"] == i]
        ev = events[events["instance"] == i]
        drops = ev[ev["kind"] == "loss_drop"]
        last = g.iloc[-1] if len(g) else None
        li = None if llc is None else llc[llc["instance"] == i]
        # superposition: more features represented than the model has dimensions
        onset = tr.superposition_onset(g["step"].to_numpy(),
                                       (g["n_represented"] > inst.n_hidden).to_numpy(),
                                       settings.min_persist)
        after = np.nan
        if len(drops) and np.isfinite(onset):
            largest = int(drops.loc[drops["size"].idxmax(), "step"])
            tol = settings.tolerance or tr.default_tolerance(g["step"].tolist())
            after = float(onset > 0 and np.log10(onset) >= np.log10(largest) - tol)
        rows.append(dict(
            instance=i,
            final_loss=float(lo["loss"].iloc[-1]) if len(lo) else np.nan,
            final_llc=float(li["llc_mean"].iloc[-1]) if li is not None and len(li) else np.nan,
            dims_per_feature=float(last["dims_per_feature"]) if last is not None else np.nan,
            final_geometry=final_geometry_label(last, int(inst.n_hidden), int(inst.n_features))
            if last is not None else "",
            antipodal_pairs=float(last["n_antipodal_pairs"]) if last is not None else np.nan,
            loss_drops=len(drops),
            llc_jumps=int(ev["kind"].isin(["llc_rise", "llc_fall"]).sum()),
            geometry_changes=int(ev["kind"].isin(tr.GEOMETRY_KINDS).sum()),
            superposition_after_largest_drop=after,
            drops_llc_rise=float(drops["coincides_llc_rise"].astype(float).sum())
            if li is not None and len(li) else np.nan,
            drops_geometry=float(drops["coincides_geometry"].astype(float).sum()),
        ))
    return pd.DataFrame(rows)


def summary_keys(instances: pd.DataFrame) -> list[str]:
    """What summary.csv groups by: an instance's conditions but its seed (activation first)."""
    return [c for c in condition_columns(instances) if c != "seed"]


def summary_table(instances: pd.DataFrame, per_instance: pd.DataFrame) -> pd.DataFrame:
    """One row per condition (summary_keys). -> keys + SUMMARY_COLUMNS"""
    keys = summary_keys(instances)
    data = instances[["instance", *keys]].merge(per_instance, on="instance")
    order = list(dict.fromkeys(instances["activation"]))  # registry order, not alphabetical
    rows = []
    for key, g in data.groupby(keys, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        counts = g["final_geometry"].value_counts()
        top = sorted(counts.index, key=lambda lab: (-counts[lab], lab))[0] if len(counts) else ""
        defined = g["superposition_after_largest_drop"].dropna()
        n_drops = int(g["loss_drops"].sum())
        rows.append({
            **dict(zip(keys, key, strict=True)),
            "n_instances": len(g),
            "n_diverged": int((~np.isfinite(g["final_loss"].astype(float))).sum()),
            "final_loss_mean": g["final_loss"].mean(), "final_loss_std": _std(g["final_loss"]),
            "final_llc_mean": g["final_llc"].mean(), "final_llc_std": _std(g["final_llc"]),
            "dims_per_feature_mean": g["dims_per_feature"].mean(),
            "dims_per_feature_std": _std(g["dims_per_feature"]),
            "final_geometry": top, "final_geometry_count": int(counts.get(top, 0)),
            "antipodal_pairs_mean": g["antipodal_pairs"].mean(),
            "antipodal_pairs_std": _std(g["antipodal_pairs"]),
            "loss_drops_mean": g["loss_drops"].mean(), "llc_jumps_mean": g["llc_jumps"].mean(),
            "geometry_changes_mean": g["geometry_changes"].mean(),
            "superposition_after_largest_drop": defined.mean() if len(defined) else np.nan,
            "superposition_defined": len(defined),
            "drops_with_llc_rise": g["drops_llc_rise"].sum(min_count=1) / n_drops
            if n_drops else np.nan,
            "drops_with_geometry_change": g["drops_geometry"].sum() / n_drops if n_drops else np.nan,
            "n_loss_drops": n_drops,
        })
    table = pd.DataFrame(rows, columns=[*keys, *SUMMARY_COLUMNS])
    table["_order"] = table["activation"].map({a: i for i, a in enumerate(order)})
    table = table.sort_values(["_order", *keys[1:]], kind="stable").drop(columns="_order")
    for name in SUMMARY_COLUMNS:
        if table[name].dtype == float:
            table[name] = geo.round_sig(table[name].to_numpy())
    return table.reset_index(drop=True)


def _std(x: pd.Series) -> float:
    x = x.dropna()
    return float(x.std(ddof=1)) if len(x) > 1 else np.nan


def kgon_sequences(geometry: pd.DataFrame, min_persist: int = 2) -> dict[int, list[tuple[int, str]]]:
    """Debounced k-gon labels along training (devtms.transitions.debounce).

    -> {instance: [(first step, label), ...]}
    """
    out = {}
    for instance, g in geometry.sort_values("step").groupby("instance", sort=True):
        steps = g["step"].tolist()
        raw = g["k_gon_label"].astype(object).fillna("").astype(str).tolist()
        labels = tr.debounce(raw, min_persist)
        # the first run may have absorbed a short start: show where its label first appears
        first = next((s for s, r in zip(steps, raw, strict=True) if r == labels[0]), steps[0]) \
            if labels else None
        seq = [(int(first), labels[0])] if labels else []
        seq += [(s, new) for s, _, new in tr.changes(steps, raw, min_persist)]
        out[int(instance)] = seq
    return out


# ---------------------------------------------------------------------------------------------
# The stage


@dataclass
class AnalyzeResult:
    geometry: pd.DataFrame
    transitions: pd.DataFrame
    summary: pd.DataFrame
    new_geometry_rows: int
    written: list[str] = field(default_factory=list)  # files whose bytes changed
    sequences: dict[int, list[tuple[int, str]]] = field(default_factory=dict)  # m = 2 only
    have_llc: bool = False
    llc_setting: str = ""  # the id of the LLC setting read (devtms.llc.active)
    llc_note: str = ""  # what to do when that setting has no usable estimates


def _read_own(run: RunDir, name: str) -> pd.DataFrame | None:
    """One of analyze's own tables, or None if absent or damaged (it is then rebuilt)."""
    try:
        return run.read_table(name, STAGE)
    except RunDirError:
        return None


def analyze_run(run: RunDir, thresholds: geo.Thresholds = geo.DEFAULT,
                settings: tr.Settings | None = None, progress: bool = True,
                llc_setting: str | None = None) -> AnalyzeResult:
    """Run the analyze stage on a trained run (the caller holds the run lock).

    llc_setting: the id of the LLC setting of llc.csv to read (default: the run's active one);
    UserError if llc.csv has no such setting. Checked before anything is written.
    """
    from devtms.progress import progress_bar

    settings = settings or tr.Settings()
    llc_all = read_llc_table(run, check_settings=False)
    setting, llc_rows = choose(run, llc_all, llc_setting)
    params = {"version": VERSION, "thresholds": thresholds.to_dict()}
    existing = _read_own(run, GEOMETRY_CSV)
    if existing is not None:
        existing = without_conditions(existing, run.instances)  # written again from the registry
    if existing is not None and (run.stage("analyze").get("geometry") != params
                                 or set(existing.columns) != set(geo.GEOMETRY_COLUMNS)):
        existing = None  # made with other thresholds or by another version: recompute all
    steps = run.checkpoint_steps()
    instances = [int(i) for i in run.instances["instance"]]
    todo = missing_steps(existing, steps, instances)
    with progress_bar(len(todo), "geometry", "ckpt", enabled=progress and bool(todo)) as bar:
        geometry = update_geometry(run, existing, thresholds, bar.update)
    written = []
    if run.write_table_if_changed(GEOMETRY_CSV, geometry):
        written.append(GEOMETRY_CSV)
    geometry = normalize_geometry(run.read_table(GEOMETRY_CSV, STAGE))  # as later runs see it

    train_log = run.read_table(TRAIN_LOG)
    if train_log is None:
        raise RunDirError(f"{run.path} has no {TRAIN_LOG}: re-run `devtms train CONFIG --out "
                          f"{run.path} --resume`")
    losses = checkpoint_losses(train_log, steps)
    llc = usable_llc(llc_rows)
    events = transitions_table(geometry, losses, llc, settings)
    per_instance = instance_summary(run.instances, geometry, losses, llc, events, settings)
    summary = summary_table(run.instances, per_instance)
    for name, table in ((TRANSITIONS_CSV, events), (SUMMARY_CSV, summary)):
        if run.write_table_if_changed(name, table):
            written.append(name)
    status = {"done": True, "geometry": params, "transitions": settings.to_dict(),
              "llc": llc is not None, "llc_setting": to_dict(setting)}
    if run.stage("analyze") != {**run.stage("analyze"), **status}:
        run.set_stage("analyze", **status)
        written.append("run.json")
    sequences = kgon_sequences(geometry, settings.min_persist) \
        if run.config.model.n_hidden == 2 else {}
    note = ""
    if len(llc_all) and not len(llc_rows):
        note = (f"llc.csv has no estimates at the setting {setting.id}; run `devtms llc "
                f"{run.path}` to compute it, or pick one present with --setting")
    return AnalyzeResult(geometry, events, summary, len(todo) * len(instances), written,
                         sequences, llc is not None, setting.id, note)
