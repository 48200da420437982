"""Every figure of a report as a job (devtms.report.figures.render.FigureJob): which builder
draws it from which tables, with its caption. Nothing is drawn here.

    across activations   loss_grid, llc_grid, llc_vs_loss, final_geometry  (cross_figures)
    each condition       condition_<key>                                   (condition_figures)
    several runs         compare_finals, compare_loss_grid, compare_llc_grid (comparison_figures)

A figure's stem (its file name and HTML id) is prefixed with the run's slug in a report of
several runs.
"""

from __future__ import annotations

import pandas as pd

from devtms.geometry import LABEL_NOTATION
from devtms.report.figures.axes import common_loss_limits
from devtms.report.figures.compare import runs_final_dotplot
from devtms.report.figures.condition import SeedTrack, condition_figure
from devtms.report.figures.geometry import final_geometry_grid
from devtms.report.figures.grids import llc_grid, loss_grid
from devtms.report.figures.layout import Panel
from devtms.report.figures.render import FigureJob
from devtms.report.figures.trajectories import llc_vs_loss
from devtms.report.format import slug
from devtms.report.load import RunData
from devtms.report.snapshots import (
    MAX_SNAPSHOT_SEEDS,
    instance_events,
    load_snapshots,
    snapshot_steps,
)
from devtms.report.tables import (
    compared_finals,
    compared_llcs,
    compared_losses,
    compared_panels,
    final_rows,
    llc_curves,
    loss_curves,
    shared_conditions,
    trajectories,
)


def cross_figures(data: RunData, prefix: str) -> list[FigureJob]:
    """Small multiples of every condition, LLC against loss, final geometry."""
    figs = []
    curves = loss_curves(data)
    figs.append(FigureJob(
        f"{prefix}loss_grid", loss_grid,
        (curves, data.panels, data.max_step,
         f"{data.name}: loss over training, every condition on common axes"),
        "Loss against training step for every condition (log-log; step 0 "
        "= initialisation, on the linear part of the symlog axis). Seeds overlaid by line style; "
        "grey lines repeat every other panel's median for comparison. A red x marks where a "
        "diverged instance's loss stopped being finite.", "loss small multiples"))
    llc = llc_curves(data)
    if llc is not None:
        figs.append(FigureJob(
            f"{prefix}llc_grid", llc_grid,
            (llc, data.panels, data.max_step,
             f"{data.name}: LLC over training, every condition on common axes"),
            "Estimated local learning coefficient against training step, "
            "mean over chains with a band of ±1 sd over chains. Hollow markers are estimates the "
            "LLC stage flagged unhealthy (see the health section); grey x at the bottom mark "
            "checkpoints not at a local minimum, which have no LLC (the chains descend below the "
            "checkpoint's loss). The common y range runs from the 1st percentile to the maximum "
            "of the healthy estimates; estimates beyond it are triangles at the edge.",
            "LLC small multiples"))
        traj = trajectories(data)
        if traj is not None and len(traj):
            figs.append(FigureJob(
                f"{prefix}llc_vs_loss", llc_vs_loss,
                (traj, data.panels,
                 f"{data.name}: LLC against loss along training (mean over seeds)"),
                "Each line follows one condition through its checkpoints "
                "(mean over seeds of the healthy LLC estimates against the geometric mean loss); "
                "training moves from right (high loss) to left, ending at the large marker. "
                "Hollow markers: at least one seed's estimate there is unhealthy (the line skips "
                "points where none is healthy); checkpoints not at a local minimum are left out. "
                "Below, one panel per family with the others in "
                "grey.", "LLC against loss trajectories"))
    figs.append(_final_geometry_figure(data, prefix))
    return figs


def _final_geometry_figure(data: RunData, prefix: str) -> FigureJob:
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
    what = ("k-gon of the first seed; the line under each name lists every seed's k-gon label. "
            f"{LABEL_NOTATION}" if data.m == 2 else "W^T W of the first seed; the line under "
            "each name lists every seed's dimensions per feature D*")
    return FigureJob(f"{prefix}final_geometry", final_geometry_grid,
                     (items, data.m, f"{data.name}: geometry at the end of training "
                      f"(step {data.max_step})"),
                     f"Final geometry of every condition: {what}.",
                     "final geometry of every condition")


def _phase(data: RunData, instance: int, step: int) -> str:
    """The n = 2, m = 1 phase class (geometry.csv's `phase`), or ""."""
    g = data.geometry
    if "phase" not in g:
        return ""
    row = g[(g["instance"] == instance) & (g["step"] == step)]
    return str(row["phase"].iloc[0]).replace("_", " ") if len(row) and pd.notna(
        row["phase"].iloc[0]) else ""


def condition_figures(data: RunData, prefix: str) -> list[tuple[Panel, FigureJob]]:
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
            tracks.append(SeedTrack(
                seed, inst, curves[curves["instance"] == inst][["step", "loss"]],
                None if llc is None else llc[llc["instance"] == inst],
                data.geometry[data.geometry["instance"] == inst], events[inst],
                snaps.get(inst, []), inst in diverged))
        own = curves[curves["condition"] == panel.key]
        first = own["step"] == own["step"].min()
        limits = common_loss_limits(own["loss"].to_numpy(float),
                                    own.loc[first, "loss"].to_numpy(float))
        args = (panel.title, panel.activation, tracks, data.max_step, data.m, limits)
        caption = (f"{panel.title}: loss (log), LLC (±1 sd over "
                   "chains) and " + ("the k-gon's vertex count (its label at each change)"
                                     if data.m == 2 else
                                     "dimensions per feature") +
                   " against training step, seeds overlaid; vertical lines mark the transitions "
                   "found by `devtms analyze`; grey x at the bottom of the LLC panel: checkpoints "
                   "not at a local minimum (no LLC). Below: the geometry at init, at the transitions "
                   "and at the end, one row per seed"
                   + (f" (the first {MAX_SNAPSHOT_SEEDS} seeds)." if len(rows) > MAX_SNAPSHOT_SEEDS
                      else ".")
                   + (f" Each snapshot's title is its step and k-gon label; {LABEL_NOTATION}."
                      if data.m == 2 else ""))
        out.append((panel, FigureJob(f"{prefix}condition_{slug(panel.key)}", condition_figure,
                                     args, caption, f"{panel.title} detail")))
    return out


def comparison_figures(runs: list[RunData]) -> list[FigureJob]:
    """Several runs, condition by condition (conditions matched across the runs): final loss
    and LLC of every instance, and the loss and LLC curves with the runs overlaid."""
    names = [r.name for r in runs]
    shared = shared_conditions(runs)
    panels = compared_panels(shared)
    series = dict(enumerate(names))
    max_step = max(r.max_step for r in runs)
    figs = [FigureJob("compare_finals", runs_final_dotplot,
                      (compared_finals(runs, shared), panels, names,
                       "Final loss and LLC of every instance, by condition and run"),
                      "One marker per instance at the end of training, one row per condition "
                      "(activation and every swept field, e.g. sparsity S, importance ratio r); "
                      "marker shape is the run, colour the activation; hollow: an unhealthy LLC "
                      "estimate.", "final loss and LLC by condition and run")]
    figs.append(FigureJob(
        "compare_loss_grid", loss_grid,
        (compared_losses(runs, shared), panels, max_step,
         "Loss over training, runs overlaid (median over seeds)", series),
        "Median loss over seeds for every condition; line style is the run (see the legend).",
        "loss by run"))
    llc = compared_llcs(runs, shared)
    if llc is not None:
        figs.append(FigureJob(
            "compare_llc_grid", llc_grid,
            (llc, panels, max_step, "LLC over training, runs overlaid (mean over seeds)", series),
            "LLC of every condition against training step, the runs overlaid: the mean over "
            "seeds of the healthy estimates (hollow where none is healthy), band ±1 sd over "
            "chains (the mean over seeds); line style is the run (see the legend). Each run "
            "shows its plotted LLC setting.", "LLC by run"))
    return figs
