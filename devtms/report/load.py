"""Reading a run for the report: `load_run(path) -> RunData`. Validates; never writes.

Where each table comes from:
- instances.csv, train_log.csv, checkpoints: `devtms train`;
- llc.csv through devtms.llc.table.read_llc_table (healthy already a bool, reason text);
  the figures plot one LLC setting of it (`plotted_llc`);
- geometry.csv, transitions.csv, summary.csv: `devtms analyze`. Without geometry.csv the
  geometry is computed from the checkpoints by analyze's own function (update_geometry), not
  written; without transitions.csv no transitions are marked and the summary is provisional.

llc.csv, geometry.csv and transitions.csv carry the instance's conditions; RunData holds them
without (devtms.store.without_conditions) and joins `instances` where a table needs them.

A *condition* is everything an instance is but its seed (activation, and sparsity, importance
ratio, ... where the run sweeps them): per-condition figures overlay the seeds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from devtms import geometry as geo
from devtms.analyze import update_geometry
from devtms.errors import UserError
from devtms.llc.active import ActivationSettings, choose
from devtms.llc.table import empty_table, read_llc_table
from devtms.report.bayes import BayesTables, load_bayes
from devtms.report.figures.layout import Panel
from devtms.report.figures.style import activation_order, style
from devtms.report.format import fmt
from devtms.store import (
    GEOMETRY_CSV,
    SUMMARY_CSV,
    TRAIN_LOG,
    TRANSITIONS_CSV,
    RunDir,
    without_conditions,
)

CONDITION_FIELDS = ("activation", "n_features", "n_hidden", "data", "sparsity",
                    "importance_ratio", "n_samples")
SHORT = {"sparsity": "S", "importance_ratio": "r", "n_features": "n", "n_hidden": "m",
         "data": "data", "n_samples": "N"}


@dataclass
class RunData:
    """Everything the report shows about one run, read from its directory."""

    run: RunDir
    name: str
    instances: pd.DataFrame  # instances.csv + condition, title, variant, family
    panels: list[Panel]  # one per condition, in family order
    train_log: pd.DataFrame  # step, instance, loss
    steps: list[int]  # checkpoint steps
    llc: pd.DataFrame | None  # the plotted setting's rows of llc.csv (see display_llc)
    geometry: pd.DataFrame  # geometry.csv, or computed from the checkpoints
    geometry_source: str  # "analyze" or "report"
    transitions: pd.DataFrame | None
    summary: pd.DataFrame | None
    diverged: list[int]
    notes: list[str] = field(default_factory=list)  # stages not run, with what to do
    llc_all: pd.DataFrame | None = None  # every row of llc.csv, every setting (None: no LLC)
    llc_setting: ActivationSettings | None = None  # the plotted one (the active, or --setting)
    bayes: BayesTables | None = None  # RUN_DIR/bayes/ (devtms bayes), if it has run

    @property
    def m(self) -> int:
        return int(self.instances["n_hidden"].iloc[0])

    @property
    def max_step(self) -> int:
        return int(self.steps[-1])


def load_run(path: Path, setting_id: str | None = None) -> RunData:
    """Open and read a trained run directory. Bad input raises UserError; nothing is written.

    setting_id: the LLC setting of llc.csv the figures show (default: the run's active one).
    """
    run = RunDir.open(Path(path))
    steps = run.checkpoint_steps()
    train_log = run.read_table(TRAIN_LOG)
    if not steps or train_log is None or not len(train_log):
        raise UserError(f"{path} has not been trained yet (no checkpoints or no {TRAIN_LOG}): "
                        f"run `devtms train CONFIG --out {path}` first")
    instances = label_conditions(run.instances)
    if instances["n_hidden"].nunique() != 1:
        raise UserError(f"{path}: instances with different n_hidden in one run are not supported "
                        "by the report")
    notes = []
    if not run.stage_done("train"):
        notes.append(f"training is incomplete (last checkpoint at step {steps[-1]}): the report "
                     f"shows what exists; resume with `devtms train CONFIG --out {path} --resume`")
    own = run.instances  # instances.csv: the condition columns the tables below leave out
    llc_all = display_llc(without_conditions(read_llc_table(run, check_settings=False), own))
    setting, llc = plotted_llc(llc_all, run, setting_id)
    if llc_all is None:
        notes.append(f"no LLC estimates yet: run `devtms llc {path}`")
    elif llc is None:
        notes.append(f"llc.csv has no estimates at the LLC setting {setting.describe()}: run "
                     f"`devtms llc {path}` to compute it, or show another with --setting "
                     f"(present: {present_settings(llc_all)})")
    geometry = run.read_table(GEOMETRY_CSV)
    source = "analyze"
    if geometry is None:  # analyze has not run: its geometry, computed here, not written
        geometry, source = update_geometry(run, None, geo.DEFAULT), "report"
    geometry = without_conditions(geometry, own)
    transitions = run.read_table(TRANSITIONS_CSV)
    if transitions is not None:
        transitions = without_conditions(transitions, own)
    summary = run.read_table(SUMMARY_CSV)
    if transitions is None or summary is None:
        notes.append(f"no transition analysis yet (transitions.csv, summary.csv): run "
                     f"`devtms analyze {path}`; geometry is computed from the checkpoints and "
                     "the summary table is provisional")
    diverged = [int(i) for i in run.stage("train").get("diverged", [])]
    if llc is not None and len(llc) < len(llc_all):
        notes.append(f"llc.csv holds estimates of several LLC settings: the figures show "
                     f"{setting.describe()}; all settings are listed under provenance")
    elif llc is not None and setting.by_activation:
        notes.append(f"the LLC of each activation is shown at its own setting: "
                     f"{setting.describe()}")
    return RunData(run, Path(path).resolve().name, instances, condition_panels(instances), train_log,
                   steps, llc, geometry, source, transitions, summary, diverged, notes,
                   llc_all, setting, load_bayes(run))


def label_conditions(instances: pd.DataFrame) -> pd.DataFrame:
    """Add condition (key), title, variant and family: the instance without its seed.

    The title names the activation and every CONDITION_FIELDS column that varies in
    `instances` ("relu S=0.9"); variant is the title without the activation ("S=0.9", "" when
    only activations vary). Instances of several runs concatenated get titles that match
    across the runs."""
    inst = instances.copy()
    varying = [c for c in CONDITION_FIELDS if c in inst and c != "activation"
               and inst[c].nunique() > 1]

    def variant(row: pd.Series) -> str:
        return " ".join(f"{SHORT.get(c, c)}={fmt(row[c])}" for c in varying)

    inst["variant"] = inst.apply(variant, axis=1) if len(inst) else []
    inst["title"] = [f"{a} {v}" if v else str(a)
                     for a, v in zip(inst["activation"], inst["variant"], strict=True)]
    inst["condition"] = inst["title"]
    inst["family"] = [style(a).family for a in inst["activation"]]
    return inst


def condition_panels(instances: pd.DataFrame) -> list[Panel]:
    """One Panel per condition of `label_conditions(...)`, by family, then the condition
    fields; each with its seeds."""
    order = {a: i for i, a in enumerate(activation_order(instances["activation"].unique()))}
    firsts = instances.drop_duplicates("condition").copy()
    firsts["_rank"] = firsts["activation"].map(order)
    sort = ["_rank", *[c for c in CONDITION_FIELDS if c in firsts and c != "activation"]]
    firsts = firsts.sort_values(sort, kind="stable")
    return [Panel(row.condition, row.title, row.activation,
                  sorted(instances.loc[instances["condition"] == row.condition, "seed"].unique()
                         .tolist()), row.variant)
            for row in firsts.itertuples()]


def display_llc(llc: pd.DataFrame) -> pd.DataFrame | None:
    """llc.csv (as read_llc_table reads it) as the report shows it; None when it has no rows.

    A non-finite estimate is never shown healthy (reason "non-finite estimate"), a flagged one
    without a reason says so, and llc_std is present (NaN where llc.csv lacks it).
    """
    if llc.empty:
        return None
    llc = llc.copy()
    bad = ~np.isfinite(pd.to_numeric(llc["llc_mean"], errors="coerce").to_numpy(float))
    llc.loc[bad & llc["healthy"].to_numpy(), "reason"] = "non-finite estimate"
    llc.loc[bad, "healthy"] = False
    llc.loc[~llc["healthy"] & (llc["reason"] == ""), "reason"] = "flagged (no reason given)"
    if "llc_std" not in llc:
        llc["llc_std"] = np.nan
    return llc


def present_settings(llc: pd.DataFrame) -> str:
    ids = sorted(set(llc["setting"].dropna().astype(str))) if "setting" in llc else []
    return ", ".join(ids) or "none with a setting id: written by an older devtms"


def plotted_llc(llc: pd.DataFrame | None, run: RunDir, setting_id: str | None = None
                ) -> tuple[ActivationSettings, pd.DataFrame | None]:
    """The LLC setting the figures show (devtms.llc.active.choose: the run's active one, or
    `setting_id`) and its rows of llc.csv, None when it has none."""
    setting, rows = choose(run, llc if llc is not None else empty_table(), setting_id)
    return setting, rows if len(rows) else None
