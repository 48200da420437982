"""The HTML report: one self-contained file comparing training dynamics across activations.

    >>> runs = [load_run(Path("runs/quick"))]        # validates; reads tables, never writes
    >>> result = write_report(runs, Path("runs/quick/report/index.html"))

`write_report` renders every figure (devtms/figures.py), saves each as PNG and PDF in a
figures directory beside the HTML (`figures/` for index.html, `<stem>_figures/` otherwise),
embeds the PNGs as base64 in the HTML and writes the HTML last, every file atomically. The
HTML needs nothing else: CSS and the table-sorting script are inline, there are no external
URLs, scripts or fonts.

What comes from where (a stage that has not run leaves its part out, with the command to run):

| part | source |
|---|---|
| loss curves | train_log.csv |
| LLC curves, hyperparameters, unhealthy estimates | llc.csv (`devtms llc`) |
| geometry over training, k-gons | geometry.csv (`devtms analyze`), else computed here |
| transitions | transitions.csv (`devtms analyze`) |
| summary table | summary.csv (`devtms analyze`), else a provisional one from the above |
| diverged instances | run.json, stage "train" |
| calibration figures | calibration/*.png (`devtms calibrate`), embedded as they are |

(Without geometry.csv the geometry is computed from the checkpoints with devtms.geometry.)

A *condition* is everything an instance is but its seed (activation, and sparsity,
importance ratio, ... where the run sweeps them): per-condition figures overlay the seeds.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
import textwrap
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from devtms import figures as F
from devtms.errors import UserError
from devtms.store import (
    GEOMETRY_CSV,
    LLC_CSV,
    REPORT_DIR,
    SUMMARY_CSV,
    TRAIN_LOG,
    TRANSITIONS_CSV,
    RunDir,
    write_bytes_atomic,
)

MAX_SNAPSHOTS = 7  # geometry snapshots per instance: init, up to 5 transitions, final
MAX_SNAPSHOT_SEEDS = 4  # rows of snapshots per condition (the first seeds); curves show all
CONDITION_FIELDS = ("activation", "n_features", "n_hidden", "data", "sparsity",
                    "importance_ratio", "n_samples")
SHORT = {"sparsity": "S", "importance_ratio": "r", "n_features": "n", "n_hidden": "m",
         "data": "data", "n_samples": "N"}
# What identifies an LLC setting (llc.csv may hold several: engines, calibration runs ...)
LLC_HYPER = ("engine", "eps", "gamma", "n_beta", "num_chains", "num_draws", "burnin",
             "batch_size", "seed", "n_samples")


# ---------------------------------------------------------------------------------------------
# Reading a run


@dataclass
class RunData:
    """Everything the report shows about one run, read from its directory."""

    run: RunDir
    name: str
    instances: pd.DataFrame  # instances.csv + condition, title, family
    panels: list[F.Panel]  # one per condition, in family order
    train_log: pd.DataFrame  # step, instance, loss
    steps: list[int]  # checkpoint steps
    llc: pd.DataFrame | None  # the plotted setting's rows of llc.csv (healthy bool, reason)
    geometry: pd.DataFrame  # geometry.csv, or computed from the checkpoints
    geometry_source: str  # "analyze" or "report"
    transitions: pd.DataFrame | None
    summary: pd.DataFrame | None
    diverged: list[int]
    notes: list[str] = field(default_factory=list)  # stages not run, with what to do
    llc_all: pd.DataFrame | None = None  # every row of llc.csv, every setting
    llc_setting: dict[str, Any] = field(default_factory=dict)  # the plotted one

    @property
    def m(self) -> int:
        return int(self.instances["n_hidden"].iloc[0])

    @property
    def max_step(self) -> int:
        return int(self.steps[-1])


def load_run(path: Path) -> RunData:
    """Open and read a trained run directory. Bad input raises UserError; nothing is written."""
    run = RunDir.open(Path(path))
    steps = run.checkpoint_steps()
    train_log = run.read_table(TRAIN_LOG)
    if not steps or train_log is None or not len(train_log):
        raise UserError(f"{path} has not been trained yet (no checkpoints or no {TRAIN_LOG}): "
                        f"run `devtms train CONFIG --out {path}` first")
    instances = _with_conditions(run.instances)
    if instances["n_hidden"].nunique() != 1:
        raise UserError(f"{path}: instances with different n_hidden in one run are not supported "
                        "by the report")
    notes = []
    if not run.stage_done("train"):
        notes.append(f"training is incomplete (last checkpoint at step {steps[-1]}): the report "
                     f"shows what exists; resume with `devtms train CONFIG --out {path} --resume`")
    llc_all = _normalise_llc(run.read_table(LLC_CSV))
    llc, setting = plotted_llc(llc_all, run)
    if llc is None:
        notes.append(f"no LLC estimates yet: run `devtms llc {path}`")
    geometry = run.read_table(GEOMETRY_CSV)
    source = "analyze"
    if geometry is None:
        geometry, source = compute_geometry(run, steps), "report"
    transitions = run.read_table(TRANSITIONS_CSV)
    summary = run.read_table(SUMMARY_CSV)
    if transitions is None or summary is None:
        notes.append(f"no transition analysis yet (transitions.csv, summary.csv): run "
                     f"`devtms analyze {path}`; geometry is computed from the checkpoints and "
                     "the summary table is provisional")
    diverged = [int(i) for i in run.stage("train").get("diverged", [])]
    if llc_all is not None and len(llc) < len(llc_all):
        notes.append(f"llc.csv holds estimates of several LLC settings: the figures show "
                     f"{_setting_text(setting)}; all settings are listed under provenance")
    return RunData(run, Path(path).resolve().name, instances, _panels(instances), train_log,
                   steps, llc, geometry, source, transitions, summary, diverged, notes,
                   llc_all, setting)


def _with_conditions(instances: pd.DataFrame) -> pd.DataFrame:
    """Add condition (key), title and family: the instance without its seed."""
    inst = instances.copy()
    varying = [c for c in CONDITION_FIELDS if c in inst and c != "activation"
               and inst[c].nunique() > 1]

    def title(row: pd.Series) -> str:
        parts = [f"{SHORT.get(c, c)}={_fmt(row[c])}" for c in varying]
        return " ".join([str(row["activation"]), *parts])

    inst["title"] = inst.apply(title, axis=1) if len(inst) else []
    inst["condition"] = inst["title"]
    inst["family"] = [F.style(a).family for a in inst["activation"]]
    return inst


def _panels(instances: pd.DataFrame) -> list[F.Panel]:
    order = {a: i for i, a in enumerate(F.activation_order(instances["activation"].unique()))}
    firsts = instances.drop_duplicates("condition").copy()
    firsts["_rank"] = firsts["activation"].map(order)
    sort = ["_rank", *[c for c in CONDITION_FIELDS if c in firsts and c != "activation"]]
    firsts = firsts.sort_values(sort, kind="stable")
    return [F.Panel(row.condition, row.title, row.activation,
                    sorted(instances.loc[instances["condition"] == row.condition, "seed"].unique()
                           .tolist()))
            for row in firsts.itertuples()]


def _normalise_llc(llc: pd.DataFrame | None) -> pd.DataFrame | None:
    """healthy as bool (a non-finite estimate is never healthy), reason as text, llc_std present."""
    if llc is None or not len(llc):
        return None
    llc = llc.copy()
    if "healthy" in llc:
        h = llc["healthy"]
        llc["healthy"] = (h.astype(bool) if h.dtype == bool
                          else h.astype(str).str.strip().str.lower().isin(["true", "1", "yes"]))
    else:
        llc["healthy"] = True
    llc["reason"] = llc["reason"].fillna("").astype(str) if "reason" in llc else ""
    bad = ~np.isfinite(pd.to_numeric(llc["llc_mean"], errors="coerce").to_numpy(float))
    llc.loc[bad & llc["healthy"].to_numpy(), "reason"] = "non-finite estimate"
    llc.loc[bad, "healthy"] = False
    llc.loc[~llc["healthy"] & (llc["reason"] == ""), "reason"] = "flagged (no reason given)"
    if "llc_std" not in llc:
        llc["llc_std"] = np.nan
    return llc


def plotted_llc(llc: pd.DataFrame | None, run: RunDir) -> tuple[pd.DataFrame | None, dict]:
    """The rows of the one LLC setting the figures show, and that setting.

    Preference: the setting of the run's [llc] config (eps, gamma, chains, draws, burn-in), then
    the batched engine, then the most estimates.
    """
    if llc is None:
        return None, {}
    cols = [c for c in LLC_HYPER if c in llc]
    if not cols:
        return llc, {}
    keyed = llc.assign(_key=[tuple(r) for r in llc[cols].astype(str).itertuples(index=False)])
    cfg = run.config.llc
    wanted = {"eps": cfg.eps, "gamma": cfg.gamma, "num_chains": cfg.chains,
              "num_draws": cfg.draws, "burnin": cfg.burnin}

    def score(rows: pd.DataFrame) -> tuple:
        first = rows.iloc[0]
        matches = all(c not in rows or _close(first[c], v) for c, v in wanted.items())
        return (matches, str(first.get("engine", "")) == "batched", len(rows))

    groups = list(keyed.groupby("_key", sort=False))
    _, best = max(groups, key=lambda kv: score(kv[1]))
    setting = {c: best.iloc[0][c] for c in cols}
    return best.drop(columns="_key"), setting


def _close(a: Any, b: Any) -> bool:
    """Equal settings values: floats within rounding, missing (NaN, None, "—") equal missing."""
    def missing(x: Any) -> bool:
        return x is None or (isinstance(x, str) and x == "—") or (
            isinstance(x, float | np.floating) and np.isnan(x))

    if missing(a) or missing(b):
        return missing(a) and missing(b)
    try:
        return math.isclose(float(a), float(b), rel_tol=1e-9)
    except (TypeError, ValueError):
        return str(a) == str(b)


def _setting_text(setting: dict) -> str:
    return ", ".join(f"{k} {_fmt(v)}" for k, v in setting.items())


def compute_geometry(run: RunDir, steps: Sequence[int]) -> pd.DataFrame:
    """geometry.csv's rows computed from the checkpoints, one checkpoint at a time."""
    from devtms import geometry

    ids = run.instances["instance"].tolist()
    tables = []
    for step in steps:
        W, b = run.load_weights([step])  # (1, I, m, n), (1, I, n)
        tables.append(geometry.geometry_table(W, b if run.config.model.bias else None, [step], ids))
    return pd.concat(tables, ignore_index=True).sort_values(["instance", "step"], kind="stable")


# ---------------------------------------------------------------------------------------------
# Tables the figures take


def loss_curves(data: RunData) -> pd.DataFrame:
    """condition, seed, instance, step, loss"""
    cols = data.instances[["instance", "condition", "seed"]]
    return data.train_log.merge(cols, on="instance").sort_values(["instance", "step"])


def llc_curves(data: RunData) -> pd.DataFrame | None:
    if data.llc is None:
        return None
    cols = data.instances[["instance", "condition", "seed"]]
    return data.llc.drop(columns=["seed"], errors="ignore").merge(cols, on="instance").sort_values(
        ["instance", "step"])


def trajectories(data: RunData) -> pd.DataFrame | None:
    """Mean over seeds of (loss, LLC) at each checkpoint that has an LLC. condition, step, ..."""
    llc = llc_curves(data)
    if llc is None:
        return None
    loss = data.train_log[["instance", "step", "loss"]]
    d = llc.merge(loss, on=["instance", "step"], how="left")
    if "init_loss" in d:
        d["loss"] = d["loss"].fillna(d["init_loss"])
    d = d[np.isfinite(d["loss"].astype(float)) & (d["loss"] > 0)]
    d = d.assign(log_loss=np.log10(d["loss"].astype(float)),
                 llc_ok=d["llc_mean"].where(d["healthy"]))
    g = d.groupby(["condition", "step"])
    # the mean over seeds of the healthy estimates (of all, hollow, where none is healthy)
    out = pd.DataFrame({"loss": 10 ** g["log_loss"].mean(),
                        "llc_mean": g["llc_ok"].mean().fillna(g["llc_mean"].mean()),
                        "healthy": g["healthy"].all(),
                        "any_healthy": g["healthy"].any()}).reset_index()
    return out


def final_rows(data: RunData) -> pd.DataFrame:
    """Per instance at the last checkpoint: loss, LLC, geometry columns."""
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


def provisional_summary(data: RunData) -> pd.DataFrame:
    """One row per condition from the final checkpoint, when `devtms analyze` has not run."""
    final = final_rows(data)
    rows = []
    for panel in data.panels:
        d = final[final["condition"] == panel.key]
        row: dict[str, Any] = {"activation": panel.activation}
        if panel.title != panel.activation:
            row["condition"] = panel.title
        row["family"] = F.style(panel.activation).family
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
# Geometry snapshots at the transitions


EVENT_NAMES = {"loss_drop": "loss drop", "llc_rise": "LLC rise", "llc_fall": "LLC fall",
               "kgon_change": None, "antipodal_change": None, "superposition_change": None,
               "dims_plateau": "D* step"}
EVENT_PRIORITY = ["kgon_change", "loss_drop", "antipodal_change", "superposition_change",
                  "dims_plateau", "llc_rise", "llc_fall"]


def instance_events(data: RunData, instance: int) -> pd.DataFrame:
    if data.transitions is None or not len(data.transitions):
        return pd.DataFrame(columns=["kind", "step", "size", "description"])
    t = data.transitions
    return t[t["instance"] == instance].sort_values("step")


def _caption(kind: str, description: str) -> str:
    name = EVENT_NAMES.get(kind, kind.replace("_", " "))
    if name is None:  # geometry changes: their description is the caption ("k-gon 4 -> 5")
        name = re.sub(r"\s*->\s*", "→", str(description))
    return name


def snapshot_steps(data: RunData, instance: int, events: pd.DataFrame) -> list[tuple[int, str]]:
    """(step, caption) of the snapshots: init, the transitions (by priority), the end."""
    steps = data.steps
    captions: dict[int, list[str]] = {}
    if len(events):
        rank = {k: i for i, k in enumerate(EVENT_PRIORITY)}
        ev = events.assign(_r=events["kind"].map(rank).fillna(len(rank)),
                           _s=-events["size"].abs().fillna(0))
        for e in ev.sort_values(["_r", "_s"]).itertuples():
            step = _nearest_checkpoint(int(e.step), steps)
            captions.setdefault(step, [])
            cap = _caption(str(e.kind), str(e.description))
            if cap not in captions[step]:
                captions[step].append(cap)
    else:
        captions = _geometry_change_steps(data, instance)
    chosen = [s for s in captions if s not in (steps[0], steps[-1])][: MAX_SNAPSHOTS - 2]
    out = {steps[0]: ["init"] + captions.get(steps[0], []),
           steps[-1]: ["end"] + captions.get(steps[-1], [])}
    out.update({s: captions[s] for s in chosen})
    return [(s, _wrap("; ".join(out[s][:2]))) for s in sorted(out)]


def _wrap(text: str) -> str:
    return "\n".join(textwrap.wrap(text, 26, max_lines=2, placeholder="…"))


def _nearest_checkpoint(step: int, steps: Sequence[int]) -> int:
    return min(steps, key=lambda s: (abs(math.log10(s + 1) - math.log10(step + 1)), s))


def _geometry_change_steps(data: RunData, instance: int) -> dict[int, list[str]]:
    """Without transitions.csv: the steps where the (debounced) k-gon label changes (m = 2)."""
    from devtms.transitions import changes

    g = data.geometry[data.geometry["instance"] == instance].sort_values("step")
    if data.m != 2 or not len(g):
        picks = np.unique(np.geomspace(1, max(data.max_step, 1), 4).round().astype(int))
        return {_nearest_checkpoint(int(s), data.steps): [] for s in picks}
    labels = g["k_gon_label"].fillna("").astype(str).tolist()
    return {int(s): [f"k-gon {old}→{new}"] for s, old, new in changes(g["step"].tolist(), labels)}


def load_snapshots(data: RunData, wanted: dict[int, list[tuple[int, str]]]) -> dict[int, list]:
    """{instance: [(step, caption)]} -> {instance: [Snapshot]}, one checkpoint read at a time."""
    position = {int(i): p for p, i in enumerate(data.run.instances["instance"])}
    by_step: dict[int, list[tuple[int, str]]] = {}
    for inst, items in wanted.items():
        for step, caption in items:
            by_step.setdefault(step, []).append((inst, caption))
    out: dict[int, list[F.Snapshot]] = {inst: [] for inst in wanted}
    bias = data.run.config.model.bias
    for step in sorted(by_step):
        t = data.run.load_checkpoint(step)
        W, b = t["W"].double().numpy(), t["b"].double().numpy()  # (I, m, n), (I, n)
        for inst, caption in by_step[step]:
            p = position[inst]
            out[inst].append(F.Snapshot(step, W[p].copy(), b[p].copy() if bias else None, caption))
    for snaps in out.values():
        snaps.sort(key=lambda s: s.step)
    return out


# ---------------------------------------------------------------------------------------------
# Rendering figures


@dataclass
class Rendered:
    """A rendered figure: its file stem, PNG and PDF bytes, caption."""

    stem: str
    png: bytes
    pdf: bytes
    caption: str
    alt: str


def render(fig, stem: str, caption: str, alt: str, dpi: int = 110) -> Rendered:
    import matplotlib.pyplot as plt

    png, pdf = io.BytesIO(), io.BytesIO()
    fig.savefig(png, format="png", dpi=dpi, metadata={"Software": "devtms report"})
    fig.savefig(pdf, format="pdf", metadata={"Creator": "devtms report", "Producer": "devtms"})
    plt.close(fig)
    return Rendered(stem, png.getvalue(), pdf.getvalue(), caption, alt)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "x"


def cross_figures(data: RunData, prefix: str) -> list[Rendered]:
    """Small multiples of every condition, LLC against loss, final geometry."""
    figs = []
    curves = loss_curves(data)
    figs.append(render(
        F.loss_grid(curves, data.panels, data.max_step,
                    f"{data.name}: loss over training, every condition on common axes"),
        f"{prefix}loss_grid", "Loss against training step for every condition (log-log; step 0 "
        "= initialisation, on the linear part of the symlog axis). Seeds overlaid by line style; "
        "grey lines repeat every other panel's median for comparison. A red x marks where a "
        "diverged instance's loss stopped being finite.", "loss small multiples"))
    llc = llc_curves(data)
    if llc is not None:
        figs.append(render(
            F.llc_grid(llc, data.panels, data.max_step,
                       f"{data.name}: LLC over training, every condition on common axes"),
            f"{prefix}llc_grid", "Estimated local learning coefficient against training step, "
            "mean over chains with a band of ±1 sd over chains. Hollow markers are estimates the "
            "LLC stage flagged unhealthy (see the health section). The common y range runs from the "
            "1st percentile to the maximum of the healthy estimates; estimates beyond it are "
            "triangles at the edge.", "LLC small multiples"))
        traj = trajectories(data)
        if traj is not None and len(traj):
            figs.append(render(
                F.llc_vs_loss(traj, data.panels,
                              f"{data.name}: LLC against loss along training (mean over seeds)"),
                f"{prefix}llc_vs_loss", "Each line follows one condition through its checkpoints "
                "(mean over seeds of the healthy LLC estimates against the geometric mean loss); "
                "training moves from right (high loss) to left, ending at the large marker. "
                "Hollow markers: at least one seed's estimate there is unhealthy (the line skips "
                "points where none is healthy). Below, one panel per family with the others in "
                "grey.", "LLC against loss trajectories"))
    figs.append(_final_geometry_figure(data, prefix))
    return figs


def _final_geometry_figure(data: RunData, prefix: str) -> Rendered:
    final = final_rows(data)
    firsts = {p.key: final[final["condition"] == p.key].sort_values("seed") for p in data.panels}
    wanted = {int(d["instance"].iloc[0]): [(data.max_step, "end")] for d in firsts.values()
              if len(d)}
    snaps = load_snapshots(data, wanted)
    items = []
    for p in data.panels:
        d = firsts[p.key]
        if not len(d):
            continue
        if data.m == 2:
            note = " / ".join(d["k_gon_label"].fillna("?").astype(str))
        elif "phase" in d and d["phase"].fillna("").astype(str).str.len().gt(0).all():
            note = " / ".join(d["phase"].astype(str).str.replace("_", " "))
        else:
            note = "D* " + " / ".join(f"{v:.2g}" for v in d["dims_per_feature"])
        items.append((p, snaps[int(d["instance"].iloc[0])][0], note))
    what = ("k-gon of the first seed; the line under each name lists every seed's k-gon label "
            "(Chen et al.'s notation: \"5+\" is a 5-gon with a positive-bias feature off it)"
            if data.m == 2 else "W^T W of the first seed; the line under each name lists every "
            "seed's dimensions per feature D*")
    return render(F.final_geometry_grid(items, data.m, f"{data.name}: geometry at the end of "
                                        f"training (step {data.max_step})"),
                  f"{prefix}final_geometry", f"Final geometry of every condition: {what}.",
                  "final geometry of every condition")


def _phase(data: RunData, instance: int, step: int) -> str:
    """The n = 2, m = 1 phase class (geometry.csv's `phase`), or ""."""
    g = data.geometry
    if "phase" not in g:
        return ""
    row = g[(g["instance"] == instance) & (g["step"] == step)]
    return str(row["phase"].iloc[0]).replace("_", " ") if len(row) and pd.notna(
        row["phase"].iloc[0]) else ""


def condition_figures(data: RunData, prefix: str) -> list[tuple[F.Panel, Rendered]]:
    """One detail figure per condition: curves with transitions, snapshots at the transitions."""
    curves = loss_curves(data)
    llc = llc_curves(data)
    plan: dict[int, list[tuple[int, str]]] = {}
    events: dict[int, pd.DataFrame] = {}
    first_seeds = data.instances.sort_values("seed").groupby("condition").head(MAX_SNAPSHOT_SEEDS)
    for inst in data.instances["instance"].astype(int):
        events[inst] = instance_events(data, inst)
        if inst in set(first_seeds["instance"]):
            plan[inst] = snapshot_steps(data, inst, events[inst])
    snaps = load_snapshots(data, plan)
    if data.m != 2:
        for inst, items in snaps.items():
            for snap in items:
                phase = _phase(data, inst, snap.step)
                snap.caption = f"{phase}; {snap.caption}" if phase else snap.caption
    diverged = set(data.diverged)
    out = []
    for panel in data.panels:
        rows = data.instances[data.instances["condition"] == panel.key].sort_values("seed")
        tracks = []
        for inst, seed in zip(rows["instance"].astype(int), rows["seed"].astype(int), strict=True):
            tracks.append(F.SeedTrack(
                seed, inst, curves[curves["instance"] == inst][["step", "loss"]],
                None if llc is None else llc[llc["instance"] == inst],
                data.geometry[data.geometry["instance"] == inst], events[inst],
                snaps.get(inst, []), inst in diverged))
        own = curves[curves["condition"] == panel.key]
        first = own["step"] == own["step"].min()
        limits = F.common_loss_limits(own["loss"].to_numpy(float),
                                      own.loc[first, "loss"].to_numpy(float))
        fig = F.condition_figure(panel.title, panel.activation, tracks, data.max_step, data.m,
                                 limits)
        caption = (f"{panel.title}: loss (log), LLC (±1 sd over "
                   "chains) and " + ("the k-gon's vertex count" if data.m == 2 else
                                     "dimensions per feature") +
                   " against training step, seeds overlaid; vertical lines mark the transitions "
                   "found by `devtms analyze`. Below: the geometry at init, at the transitions "
                   "and at the end, one row per seed"
                   + (f" (the first {MAX_SNAPSHOT_SEEDS} seeds)." if len(rows) > MAX_SNAPSHOT_SEEDS
                      else "."))
        out.append((panel, render(fig, f"{prefix}condition_{_slug(panel.key)}", caption,
                                  f"{panel.title} detail")))
    return out


def comparison_figures(runs: list[RunData]) -> list[Rendered]:
    """Several runs: final loss/LLC per activation, and loss curves with runs overlaid."""
    names = [r.name for r in runs]
    finals = pd.concat([final_rows(r).assign(run=r.name) for r in runs], ignore_index=True)
    figs = [render(F.runs_final_dotplot(finals, names, "Final loss and LLC of every instance, "
                                        "by activation and run"),
                   "compare_finals", "One marker per instance at the end of training; marker "
                   "shape is the run, colour the activation.", "final loss and LLC by run")]
    curves, panels = [], {}
    for r_i, r in enumerate(runs):
        c = loss_curves(r)
        med = c.groupby(["condition", "step"])["loss"].median().reset_index()
        curves.append(med.assign(seed=r_i))
        for p in r.panels:
            panels.setdefault(p.key, F.Panel(p.key, p.title, p.activation, []))
            panels[p.key].seeds.append(r_i)
    fig = F.loss_grid(pd.concat(curves, ignore_index=True), list(panels.values()),
                      max(r.max_step for r in runs), "Loss over training, runs overlaid "
                      "(median over seeds)", series_names=dict(enumerate(names)))
    figs.append(render(fig, "compare_loss_grid", "Median loss over seeds for every condition; "
                       "line style is the run (see the legend).", "loss by run"))
    return figs


# ---------------------------------------------------------------------------------------------
# HTML


CSS = """
body{font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;margin:0;color:#222;
background:#fafafa;line-height:1.45}
main{max-width:1280px;margin:0 auto;padding:16px 28px 60px;background:#fff}
h1{font-size:1.7em;margin:.4em 0 .2em}h2{border-bottom:2px solid #ddd;padding-bottom:.2em;
margin-top:2em}h3{margin-top:1.6em}
figure{margin:1em 0 2em}figure img{max-width:100%;height:auto;display:block;
border:1px solid #eee}figcaption{font-size:.88em;color:#555;margin-top:.3em;max-width:960px}
table{border-collapse:collapse;font-size:.8em;margin:.6em 0}
th,td{border-bottom:1px solid #e4e4e4;padding:3px 6px;text-align:right;white-space:nowrap}
th{background:#f2f2f2;position:sticky;top:0;white-space:normal;max-width:7.5em;
vertical-align:bottom}td.t,th.t{text-align:left}
table.sortable th{cursor:pointer}table.sortable th:hover{background:#e6e6e6}
th[data-dir=asc]::after{content:' \\25B2'}th[data-dir=desc]::after{content:' \\25BC'}
.swatch{display:inline-block;width:.8em;height:.8em;border-radius:2px;margin-right:.35em;
vertical-align:-1px}
.note{background:#fff8e1;border-left:4px solid #f0b400;padding:6px 12px;margin:.5em 0}
.bad{background:#fdecea;border-left:4px solid #c0392b;padding:6px 12px;margin:.5em 0}
.ok{background:#eaf6ec;border-left:4px solid #2e8b57;padding:6px 12px;margin:.5em 0}
pre{background:#f6f6f6;padding:8px;overflow-x:auto;font-size:.82em}
nav{font-size:.9em;columns:3;background:#f6f6f6;padding:8px 16px}nav a{color:#225}
.intro{max-width:960px}code{background:#f1f1f1;padding:0 3px}
details>summary{cursor:pointer;font-weight:600;margin:.4em 0}
.scroll{max-height:560px;overflow:auto;max-width:100%}
"""

SORT_JS = """
document.querySelectorAll('table.sortable').forEach(function (table) {
  table.querySelectorAll('th').forEach(function (th, i) {
    th.addEventListener('click', function () {
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      var asc = th.dataset.dir !== 'asc';
      table.querySelectorAll('th').forEach(function (h) { delete h.dataset.dir; });
      th.dataset.dir = asc ? 'asc' : 'desc';
      function key(r) {
        var c = r.cells[i], v = c.dataset.v !== undefined ? c.dataset.v : c.textContent;
        var x = parseFloat(v);
        return isNaN(x) ? [1, v] : [0, x];
      }
      rows.sort(function (a, b) {
        var x = key(a), y = key(b);
        if (x[0] !== y[0]) { return x[0] - y[0]; }
        var c = x[1] < y[1] ? -1 : (x[1] > y[1] ? 1 : 0);
        return asc ? c : -c;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""

INTRO = """
<p class="intro">This report compares how toy models of superposition (TMS) learn under different
activation functions. Each <b>instance</b> is one TMS (n features squeezed into m hidden
dimensions, <code>x' = f(W<sup>T</sup>W x + b)</code>); a <b>condition</b> is an instance without its
seed, and its seeds are overlaid in every per-condition plot (line style = seed). Every activation
keeps one colour throughout, grouped by family (ReLU-like blues, smooth ReLU-like greens,
sigmoid/tanh-like oranges, shrinks purples, softmax family pinks, exp family reds, controls grey).
Training steps are on a symmetric-log axis: linear between 0 and 1 so that step 0 (the
initialisation) is shown, logarithmic after. The <b>LLC</b> (local learning coefficient, estimated
with SGLD at each checkpoint) measures the effective dimension of the loss basin: in the
developmental picture, a drop in loss paired with a rise in LLC is a phase transition, and
for m = 2 it shows as the features' <b>k-gon</b> gaining a vertex. Start with the summary table
(click a header to sort) and the health section, then the small multiples across activations,
then each condition's detail: its curves with the detected transitions marked as vertical lines
(black: loss drop, red: LLC jump, purple: geometry change; in the line style of their seed) and
the geometry at each transition. Every figure is also saved as PNG and PDF beside this file.</p>
"""


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "—"
    if isinstance(v, bool | np.bool_):
        return "yes" if v else "no"
    if isinstance(v, float | np.floating):
        if v == 0:
            return "0"
        return f"{v:.4g}" if 1e-3 <= abs(v) < 1e5 else f"{v:.3e}"
    return str(v)


def _cell(col: str, v: Any) -> str:
    if isinstance(v, Shown):
        return f'<td data-v="{html.escape(str(v.sort))}">{html.escape(v.text)}</td>'
    text = html.escape(_fmt(v))
    numeric = isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool)
    if col == "activation":
        sw = f'<span class="swatch" style="background:{F.style(str(v)).color}"></span>'
        return f'<td class="t" data-v="{html.escape(str(v))}">{sw}{text}</td>'
    if numeric:
        fv = float(v)
        dv = "" if not np.isfinite(fv) else repr(fv)
        return f'<td data-v="{dv}">{text}</td>'
    if v is None or (isinstance(v, float) and np.isnan(v)) or pd.isna(v):
        return '<td data-v="">—</td>'
    return f'<td class="t">{text}</td>'


def html_table(df: pd.DataFrame, sortable: bool = True, cls: str = "") -> str:
    if df is None or not len(df):
        return "<p><i>none</i></p>"
    head = "".join(f'<th class="t">{html.escape(str(c))}</th>' for c in df.columns)
    body = []
    for row in df.itertuples(index=False):
        body.append("<tr>" + "".join(_cell(c, v) for c, v in zip(df.columns, row, strict=True))
                    + "</tr>")
    classes = " ".join(x for x in ("sortable" if sortable else "", cls) if x)
    return (f'<table class="{classes}"><thead><tr>{head}</tr></thead><tbody>'
            + "\n".join(body) + "</tbody></table>")


def figure_html(fig: Rendered) -> str:
    data = base64.b64encode(fig.png).decode()
    return (f'<figure id="fig-{html.escape(fig.stem)}"><img alt="{html.escape(fig.alt)}" '
            f'src="data:image/png;base64,{data}"><figcaption>{html.escape(fig.caption)} '
            f'<i>Files: {html.escape(fig.stem)}.png, .pdf</i></figcaption></figure>')


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


SUMMARY_NOTE = ("<p class=\"intro\"><small>Loss drops, LLC jumps, geometry changes: mean number "
                "per seed. Superposition after largest drop: the fraction of seeds in which "
                "superposition emerges only after the largest loss drop (— where no seed has "
                "both). Drops with LLC rise / geometry change: the fraction of all loss drops that "
                "coincide with one (within the tolerance of `devtms analyze`). Final geometry: "
                "the most common final k-gon label (m = 2) and how many seeds end in it."
                "</small></p>")


@dataclass
class Shown:
    """A table cell whose text differs from the value it sorts by."""

    text: str
    sort: float | str


def summary_table(data: RunData) -> tuple[pd.DataFrame, str]:
    """The analyze step's summary (curated, mean ± sd over seeds), or the provisional one."""
    if data.summary is None or not len(data.summary) or "activation" not in data.summary:
        return provisional_summary(data), ("provisional, from the final checkpoint: the "
                                           "transition columns appear once `devtms analyze` "
                                           "has run")
    s = data.summary
    rank = {a: i for i, a in enumerate(F.activation_order(s["activation"].astype(str)))}
    s = s.iloc[np.argsort([rank[str(a)] for a in s["activation"]], kind="stable")]
    keys = [c for c in s.columns if c in CONDITION_FIELDS]
    out = s[keys].copy()
    out.insert(1, "family", [F.style(str(a)).family for a in s["activation"]])
    known = {"activation", *keys}
    for source, name in SUMMARY_VIEW:
        cols = source if isinstance(source, tuple) else (source,)
        if not all(c in s for c in cols):
            continue
        known.update(cols)
        if len(cols) == 1:
            out[name] = s[cols[0]].to_numpy()
        elif name == "final geometry":
            out[name] = [Shown(f"{g} ({int(c)}/{int(n)})" if str(g) else "—", str(g))
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
        return Shown(_fmt(mean), mean)
    return Shown(f"{mean:.3g} ± {float(sd):.2g}", mean)


def health_html(data: RunData) -> str:
    parts = []
    inst = data.instances.set_index("instance")
    if data.diverged:
        rows = inst.loc[[i for i in data.diverged if i in inst.index]].reset_index()
        shown = rows[["instance", "activation", "seed", *[c for c in ("sparsity", "importance_ratio")
                                                          if rows[c].nunique() > 1]]]
        parts.append(f'<div class="bad"><b>{len(data.diverged)} training instance(s) diverged</b> '
                     "(non-finite weights at the end of training). Their curves end with a red x "
                     "and their later statistics are missing.</div>" + html_table(shown))
    else:
        parts.append(f'<div class="ok">Training: no instance diverged (all {len(inst)} instances '
                     "have finite weights at the last step).</div>")
    if data.llc is None:
        parts.append(f'<div class="note">No LLC estimates yet: run <code>devtms llc '
                     f'{html.escape(str(data.run.path))}</code>.</div>')
        return "\n".join(parts)
    llc = data.llc_all if data.llc_all is not None else data.llc
    bad = llc[~llc["healthy"]]
    total = len(llc)
    if not len(bad):
        parts.append(f'<div class="ok">LLC: all {total} estimates are healthy.</div>')
        return "\n".join(parts)
    merged = bad.drop(columns=["seed"], errors="ignore").merge(
        data.instances[["instance", "title", "seed"]], on="instance", how="left")
    by_reason = (merged.groupby("reason").agg(estimates=("instance", "size"),
                                              conditions=("title", lambda t: ", ".join(
                                                  sorted(set(map(str, t)))[:12])))
                 .reset_index().sort_values("estimates", ascending=False))
    parts.append(f'<div class="bad"><b>{len(bad)} of {total} LLC estimates are flagged '
                 "unhealthy</b>; they are drawn as hollow markers in every LLC plot. By reason:"
                 "</div>" + html_table(by_reason))
    several = llc_settings(data) is not None and len(llc_settings(data)) > 1
    setting_cols = [c for c in LLC_HYPER if c in merged and c != "seed"] if several else []
    cols = [c for c in ("instance", "title", "seed", "step", *setting_cols, "llc_mean", "llc_std",
                        "init_loss", "num_diverged", "mala_acceptance", "reason") if c in merged]
    listing = merged[cols].rename(columns={"title": "condition"}).sort_values(["instance", "step"])
    opened = " open" if len(listing) <= 40 else ""
    parts.append(f"<details{opened}><summary>Every unhealthy estimate ({len(listing)})</summary>"
                 f'<div class="scroll">{html_table(listing)}</div></details>')
    return "\n".join(parts)


def llc_settings(data: RunData) -> pd.DataFrame | None:
    """The distinct LLC hyperparameter settings in llc.csv, with how many estimates each made
    and which one the figures show."""
    llc = data.llc_all if data.llc_all is not None else data.llc
    if llc is None:
        return None
    cols = [c for c in LLC_HYPER if c in llc]
    if not cols:
        return None
    g = llc.fillna({c: "—" for c in cols}).groupby(cols, dropna=False, sort=False)
    out = g.agg(estimates=("step", "size"), checkpoints=("step", "nunique"),
                unhealthy=("healthy", lambda h: int((~h.astype(bool)).sum()))).reset_index()
    if "mala_acceptance" in llc:
        out["mean MALA acceptance"] = g["mala_acceptance"].mean().to_numpy()
    out.insert(0, "plotted", [all(_close(row[c], data.llc_setting.get(c)) for c in cols)
                              for _, row in out.iterrows()])
    return out


CALIBRATION_DIR = "calibration"  # devtms.calibrate's output directory
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def calibration_html(data: RunData) -> str:
    """The figures `devtms calibrate` left in RUN_DIR/calibration/ (embedded as they are), or a
    pointer to the command."""
    folder = data.run.path / CALIBRATION_DIR
    pngs = sorted(folder.glob("*.png")) if folder.is_dir() else []
    head = "<h4>How eps and gamma were chosen (devtms calibrate)</h4>"
    if not pngs:
        return (head + "<p><i>No calibration in this run.</i> <code>devtms calibrate "
                f"{html.escape(str(data.run.path))} --step STEP</code> sweeps eps x gamma at one "
                "checkpoint and shows which settings give healthy chains.</p>")
    parts = [head]
    for png in pngs[:6]:
        raw = png.read_bytes()
        if not raw.startswith(PNG_MAGIC) or len(raw) > 8 * 2**20:
            continue  # embed only what is a PNG, and not a huge one
        parts.append(f'<figure class="calibration"><img alt="calibration {html.escape(png.stem)}" '
                     f'src="data:image/png;base64,{base64.b64encode(raw).decode()}">'
                     f"<figcaption>{html.escape(png.name)} from <code>devtms calibrate</code> "
                     f"(in {html.escape(str(folder))}).</figcaption></figure>")
    return "\n".join(parts)


def provenance_html(data: RunData) -> str:
    parts = [f"<p>Run directory: <code>{html.escape(str(data.run.path.resolve()))}</code>; "
             f"{len(data.instances)} instances, {len(data.steps)} checkpoints (steps 0 to "
             f"{data.max_step}); geometry "
             + ("from geometry.csv" if data.geometry_source == "analyze"
                else "computed by the report from the checkpoints (geometry.csv absent)")
             + ".</p>"]
    settings = llc_settings(data)
    parts.append("<h4>LLC hyperparameters that produced the estimates</h4>")
    if settings is None:
        parts.append("<p><i>No LLC estimates yet.</i> The config's [llc] section (used when "
                     "<code>devtms llc</code> runs): <code>"
                     + html.escape(json.dumps(data.run.meta["config"].get("llc", {})))
                     + "</code></p>")
    else:
        parts.append(html_table(settings, sortable=False))
    parts.append(calibration_html(data))
    versions = data.run.meta.get("versions", {})
    parts.append("<h4>Package versions (at training)</h4>" + html_table(
        pd.DataFrame([versions]), sortable=False))
    parts.append("<details><summary>Stage status (run.json)</summary><pre>"
                 + html.escape(json.dumps(data.run.meta.get("stages", {}), indent=2))
                 + "</pre></details>")
    parts.append("<details><summary>Resolved config (run.json)</summary><pre>"
                 + html.escape(json.dumps(data.run.meta["config"], indent=2)) + "</pre></details>")
    return "\n".join(parts)


def run_section(data: RunData, prefix: str, heading: str) -> tuple[str, list[Rendered], list[str]]:
    """The HTML of one run's sections, its figures, and its table-of-contents entries."""
    anchor = _slug(prefix or "run")
    figs = cross_figures(data, prefix)
    details = condition_figures(data, prefix)
    summary, source = summary_table(data)
    notes = "".join(f'<div class="note">{html.escape(n)}</div>' for n in data.notes)
    per = "activation" if len(summary) == data.instances["activation"].nunique() else "condition"
    cond_links = " · ".join(f'<a href="#{anchor}-c-{_slug(p.key)}">{html.escape(p.title)}</a>'
                            for p, _ in details)
    body = [f'<h2 id="{anchor}">{html.escape(heading)}</h2>', notes,
            f'<h3 id="{anchor}-summary">Summary across conditions</h3>',
            f"<p>One row per {per}; {html.escape(source)}. Click a column header to sort.</p>",
            f'<div class="scroll">{html_table(summary)}</div>',
            SUMMARY_NOTE if data.summary is not None else "",
            f'<h3 id="{anchor}-health">Health: diverged training and unhealthy LLC estimates</h3>',
            health_html(data),
            f'<h3 id="{anchor}-across">Across activations</h3>',
            *[figure_html(f) for f in figs],
            f'<h3 id="{anchor}-detail">Each condition in detail</h3>',
            f"<p>{cond_links}</p>"]
    for panel, fig in details:
        body.append(f'<section id="{anchor}-c-{_slug(panel.key)}">{figure_html(fig)}</section>')
    body += [f'<h3 id="{anchor}-provenance">Provenance</h3>', provenance_html(data)]
    toc = [f'<a href="#{anchor}">{html.escape(heading)}</a>',
           f'<a href="#{anchor}-summary">summary table</a>',
           f'<a href="#{anchor}-health">health</a>',
           f'<a href="#{anchor}-across">across activations</a>',
           f'<a href="#{anchor}-detail">conditions in detail</a>',
           f'<a href="#{anchor}-provenance">provenance</a>']
    return "\n".join(body), figs + [f for _, f in details], toc


def build_html(title: str, sections: list[str], toc: list[str], header: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body><main>"
            f"<h1>{html.escape(title)}</h1>{header}{INTRO}"
            f"<nav>{'<br>'.join(toc)}</nav>" + "\n".join(sections)
            + f"</main><script>{SORT_JS}</script></body></html>\n")


# ---------------------------------------------------------------------------------------------
# Writing


@dataclass
class ReportResult:
    html: Path
    figures: list[Path]
    seconds: float


def default_out(paths: Sequence[Path]) -> Path:
    """RUN_DIR/report/index.html for one run; several runs need an explicit --out."""
    if len(paths) != 1:
        raise UserError("several RUN_DIRs make one comparison report that belongs to none of "
                        "them: pass --out FILE.html")
    return Path(paths[0]) / REPORT_DIR / "index.html"


def figures_dir(out: Path) -> Path:
    return out.parent / ("figures" if out.name == "index.html" else f"{out.stem}_figures")


def check_out(out: Path) -> None:
    if out.suffix.lower() not in (".html", ".htm"):
        raise UserError(f"--out {out}: the report is one HTML file; give a name ending in .html")
    if out.exists() and not out.is_file():
        raise UserError(f"--out {out} exists and is not a file")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"--out {out}: {parent} is not a directory")
            break


def write_report(runs: list[RunData], out: Path) -> ReportResult:
    """Render every figure, write them (PNG + PDF) and then the HTML, all atomically."""
    start = time.perf_counter()
    out = Path(out)
    sections, figs, toc = [], [], []
    names = _unique_names([r.name for r in runs])
    if len(runs) > 1:
        comp = comparison_figures(runs)
        figs += comp
        sections.append('<h2 id="compare">Comparison across runs</h2>'
                        + html_table(_runs_overview(runs, names), sortable=False)
                        + "".join(figure_html(f) for f in comp))
        toc.append('<a href="#compare">comparison across runs</a>')
    for data, name in zip(runs, names, strict=True):
        data.name = name
        prefix = f"{_slug(name)}-" if len(runs) > 1 else ""
        html_part, run_figs, run_toc = run_section(data, prefix, f"Run {name}")
        sections.append(html_part)
        figs += run_figs
        toc += run_toc
    fig_dir = figures_dir(out)
    written = _write_figures(fig_dir, figs)
    title = ("devtms report: " + ", ".join(names))
    header = _header(fig_dir)
    write_bytes_atomic(out, build_html(title, sections, toc, header).encode())
    return ReportResult(out, written, time.perf_counter() - start)


def _unique_names(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}-{seen[n]}")
    return out


def _runs_overview(runs: list[RunData], names: list[str]) -> pd.DataFrame:
    rows = []
    for r, n in zip(runs, names, strict=True):
        rows.append({"run": n, "path": str(r.run.path), "instances": len(r.instances),
                     "conditions": len(r.panels), "steps": r.max_step,
                     "LLC": "yes" if r.llc is not None else "no",
                     "analyze": "yes" if r.transitions is not None else "no",
                     "diverged": len(r.diverged),
                     "unhealthy LLC": 0 if r.llc is None else int((~r.llc["healthy"]).sum())})
    return pd.DataFrame(rows)


def _header(fig_dir: Path) -> str:
    from devtms import __version__

    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")  # noqa: UP017
    return (f"<p>Generated {when} by devtms {__version__}. Every figure as PNG and PDF: "
            f"<code>{html.escape(fig_dir.name)}/</code> beside this file.</p>")


MANIFEST = ".devtms-report-figures"  # what the last report wrote into its figures directory


def _write_figures(fig_dir: Path, figs: list[Rendered]) -> list[Path]:
    """Write PNG + PDF of each figure, then remove the files the previous report wrote there
    (listed in its manifest) that this one did not: never any other file."""
    written = []
    for f in figs:
        for ext, data in (("png", f.png), ("pdf", f.pdf)):
            path = fig_dir / f"{f.stem}.{ext}"
            write_bytes_atomic(path, data)
            written.append(path)
    manifest = fig_dir / MANIFEST
    names = {p.name for p in written}
    if manifest.is_file():
        for old in manifest.read_text().split("\n"):
            if old and old not in names and "/" not in old and old.endswith((".png", ".pdf")):
                (fig_dir / old).unlink(missing_ok=True)
    write_bytes_atomic(manifest, ("\n".join(sorted(names)) + "\n").encode())
    return written
