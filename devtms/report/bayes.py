"""The bayes stage's tables for figures and the report: `load_bayes(run)`, its figure job,
and the stage's own copy of the figure (RUN_DIR/bayes/bayes.png and .pdf).

Reads RUN_DIR/bayes/ (devtms.bayes.stage writes it); a run without it has no bayes section.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from devtms import store
from devtms.report.figures.bayes import journeys_figure, sequence_text
from devtms.report.figures.render import FigureJob, render
from devtms.store import RunDir

FIGURE_STEM = "bayes"
LABEL_COLUMNS = {name: str for name in ("k_gon_label", "from_phase", "to_phase", "start")}


@dataclass
class BayesTables:
    """RUN_DIR/bayes/'s tables (see `devtms bayes --help`)."""

    phases: pd.DataFrame
    free_energy: pd.DataFrame
    crossovers: pd.DataFrame
    occupancy: pd.DataFrame
    mixing: pd.DataFrame
    sequences: pd.DataFrame
    sgd_fractions: pd.DataFrame
    activation: str

    def journeys(self) -> dict[str, str]:
        """Each journey's phase sequence as text: predicted, sampled, SGD."""
        return {name: sequence_text(self.sequences, f"{key}_order")
                for name, key in (("free energy (prediction)", "predicted"),
                                  ("posterior (sampled)", "sampled"), ("SGD", "sgd"))}


def load_bayes(run: RunDir) -> BayesTables | None:
    """The run's bayes tables, or None when `devtms bayes` has not finished on it."""
    folder = run.path / store.BAYES_DIR
    if not run.stage_done("bayes") or not folder.is_dir():
        return None
    names = {"phases": store.BAYES_PHASES, "free_energy": store.BAYES_FREE_ENERGY,
             "crossovers": store.BAYES_CROSSOVERS, "occupancy": store.BAYES_OCCUPANCY,
             "mixing": store.BAYES_MIXING, "sequences": store.BAYES_SEQUENCES,
             "sgd_fractions": store.BAYES_SGD}
    tables = {}
    for field, name in names.items():
        path = folder / name
        if not path.is_file():
            return None
        tables[field] = pd.read_csv(path, dtype=LABEL_COLUMNS)
    return BayesTables(**tables, activation=run.stage("bayes").get("activation", ""))


def bayes_job(tables: BayesTables, prefix: str, name: str) -> FigureJob:
    journeys = "; ".join(f"{k}: {v}" for k, v in tables.journeys().items())
    return FigureJob(
        f"{prefix}{FIGURE_STEM}", journeys_figure,
        (tables, f"{name}: dynamical versus Bayesian phases ({tables.activation})"),
        "Left: the free energy F_N = N·L + λ·log N of each k-gon phase that training reaches, "
        "relative to the least (the dominant phase is at 0); dotted lines and grey bands: "
        "predicted crossovers N* and the range one standard error of the LLC gap spans. "
        "Middle: the share of posterior draws (replica-exchange SGLD at β = 1) in each k-gon "
        "at each training-set size N; hollow markers where chains started in different phases "
        "disagree, so the share there reflects the starts, not the posterior. Right: the share "
        f"of seeds in each k-gon during SGD training. Sequences: {journeys}.",
        "free energy, posterior occupancy and SGD k-gon shares, side by side")


def write_stage_figure(run: RunDir) -> Path:
    """Draw the figure into RUN_DIR/bayes/ as PNG and PDF (atomically). -> the PNG's path"""
    tables = load_bayes(run)
    folder = run.path / store.BAYES_DIR
    rendered = render(bayes_job(tables, "", run.config.name))
    store.write_bytes_atomic(folder / f"{FIGURE_STEM}.pdf", rendered.pdf)
    store.write_bytes_atomic(folder / f"{FIGURE_STEM}.png", rendered.png)
    return folder / f"{FIGURE_STEM}.png"
