"""What the page shows, as plain values the templates lay out (devtms/report/templates/).

    TableView    a DataFrame as cells: text, the value the table-sorting script sorts by, class
    RunView      one run's sections: SummaryView, HealthView, figures, ProvenanceView
    ComparisonView   the section comparing several runs

Everything here is data; the escaping is the templates' (autoescape), so no value here is
HTML.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from devtms.report.figures.layout import Panel
from devtms.report.figures.render import Rendered
from devtms.report.figures.style import style
from devtms.report.format import MISSING, fmt, slug
from devtms.report.load import RunData
from devtms.report.tables import (
    Shown,
    diverged_rows,
    llc_check,
    llc_health,
    llc_settings,
    summary_table,
)
from devtms.store import CALIBRATION_DIR

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MAX_CALIBRATION_PNGS = 6
MAX_CALIBRATION_BYTES = 8 * 2**20  # embed calibration figures up to this size only


# ---------------------------------------------------------------------------------------------
# Table cells


@dataclass(frozen=True)
class Cell:
    """One <td>: its text, the value the sorting script sorts by (None: the text), its CSS
    class ("t": text, left-aligned) and an activation's colour swatch."""

    text: str
    sort: str | None = None
    cls: str | None = None
    swatch: str | None = None


def cell(column: str, v: Any) -> Cell:
    """How a value is shown in a table: numbers formatted (sorted by their value), text
    left-aligned, an activation with its colour, missing as —."""
    if isinstance(v, Shown):
        return Cell(v.text, sort=str(v.sort))
    text = fmt(v)
    numeric = isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool)
    if column == "activation":
        return Cell(text, sort=str(v), cls="t", swatch=style(str(v)).color)
    if numeric:
        fv = float(v)
        return Cell(text, sort="" if not np.isfinite(fv) else repr(fv))
    if v is None or (isinstance(v, float) and np.isnan(v)) or pd.isna(v):
        return Cell(MISSING, sort="")
    return Cell(text, cls="t")


@dataclass(frozen=True)
class TableView:
    """A DataFrame as the page shows it: column names, rows of cells, the <table> class."""

    columns: list[str]
    rows: list[list[Cell]]
    classes: str


def table_view(df: pd.DataFrame, sortable: bool = True) -> TableView:
    rows = [[cell(c, v) for c, v in zip(df.columns, row, strict=True)]
            for row in df.itertuples(index=False)]
    return TableView([str(c) for c in df.columns], rows, "sortable" if sortable else "")


# ---------------------------------------------------------------------------------------------
# One run


@dataclass(frozen=True)
class SummaryView:
    table: TableView
    per: str  # "activation" or "condition": what one row is
    source: str  # where the table comes from, in words
    from_analyze: bool  # summary.csv exists: its columns are explained under the table


@dataclass(frozen=True)
class HealthView:
    n_instances: int
    n_diverged: int
    diverged: TableView  # the diverged training instances
    run_path: str
    llc_estimates: int | None  # estimates in llc.csv; None: no LLC estimates yet
    n_unhealthy: int
    n_plotted: int  # estimates at the plotted setting
    n_biased: int  # ... of them flagged biased by the self-check
    unhealthy_by_reason: TableView | None
    unhealthy: TableView | None  # one row per unhealthy estimate


@dataclass(frozen=True)
class CalibrationPNG:
    name: str
    stem: str
    data: bytes


@dataclass(frozen=True)
class ProvenanceView:
    run_path: str
    resolved_path: str
    n_instances: int
    n_checkpoints: int
    max_step: int
    geometry_from_analyze: bool
    llc_settings: TableView | None  # None: no LLC estimates yet
    llc_check: TableView | None  # the self-check per setting; None: not run
    llc_config: str  # the config's [llc] section as JSON
    calibration: list[CalibrationPNG] | None  # None: no calibration/*.png
    calibration_dir: str
    versions: TableView
    stages_json: str
    config_json: str


@dataclass(frozen=True)
class DetailView:
    """One condition's section: its anchor, title and figure."""

    anchor: str
    title: str
    figure: Rendered


@dataclass(frozen=True)
class BayesView:
    """The run's `devtms bayes` section: the figure, the three journeys, the tables."""

    figure: Rendered
    activation: str
    journeys: list[tuple[str, str]]  # (journey, its phase sequence)
    phases: TableView
    crossovers: TableView
    disagree: list[int]  # N where chains from different starts disagree


@dataclass(frozen=True)
class RunView:
    """One run's sections (run.html.j2 and the templates it includes)."""

    anchor: str  # the id of its heading; its sections' ids start with it
    heading: str
    notes: list[str]  # stages not run, with what to do
    summary: SummaryView
    health: HealthView
    across: list[Rendered]  # the figures across activations
    details: list[DetailView]  # one per condition
    provenance: ProvenanceView
    bayes: BayesView | None = None  # None: `devtms bayes` has not run


def run_view(data: RunData, prefix: str, heading: str, across: list[Rendered],
             details: list[tuple[Panel, Rendered]], bayes: Rendered | None = None) -> RunView:
    """prefix: the run's slug and "-" in a report of several runs, else ""."""
    anchor = slug(prefix or "run")
    return RunView(
        anchor, heading, data.notes, _summary_view(data), _health_view(data), across,
        [DetailView(f"{anchor}-c-{slug(p.key)}", p.title, fig) for p, fig in details],
        _provenance_view(data), _bayes_view(data, bayes) if bayes is not None else None)


PHASE_COLUMNS = {"k_gon_label": "phase", "seeds": "seeds", "loss_run": "loss (run)",
                 "llc_run": "LLC (run)", "loss_critical": "loss (critical point)",
                 "llc_critical": "LLC (critical point)", "llc_count": "LLC (count)",
                 "source": "free energy uses"}
CROSSOVER_COLUMNS = {"from_phase": "from", "to_phase": "to",
                     "n_star_free_energy": "N* predicted", "n_star_low": "low",
                     "n_star_high": "high", "n_star_count": "N* (count)",
                     "n_star_sampled": "N* sampled", "sampled": "sampled crossing",
                     "chains_agree": "starts agree", "found_by": "found by"}


def _bayes_view(data: RunData, figure: Rendered) -> BayesView:
    b = data.bayes
    phases = b.phases[[c for c in PHASE_COLUMNS if c in b.phases]].rename(columns=PHASE_COLUMNS)
    crossovers = b.crossovers[list(CROSSOVER_COLUMNS)].rename(columns=CROSSOVER_COLUMNS)
    disagree = [int(n) for n in b.mixing.loc[~b.mixing["agree"].astype(bool), "N"]]
    return BayesView(figure, b.activation, list(b.journeys().items()), table_view(phases),
                     table_view(crossovers), disagree)


def _summary_view(data: RunData) -> SummaryView:
    summary, source = summary_table(data)
    per = "activation" if len(summary) == data.instances["activation"].nunique() else "condition"
    return SummaryView(table_view(summary), per, source, data.summary is not None)


def _health_view(data: RunData) -> HealthView:
    health = llc_health(data)
    common = dict(n_instances=len(data.instances), n_diverged=len(data.diverged),
                  diverged=table_view(diverged_rows(data)), run_path=str(data.run.path))
    plotted = data.llc if data.llc is not None else pd.DataFrame()
    common["n_plotted"] = len(plotted)
    common["n_biased"] = int(plotted["biased"].sum()) if "biased" in plotted else 0
    if health is None:
        return HealthView(**common, llc_estimates=None, n_unhealthy=0, unhealthy_by_reason=None,
                          unhealthy=None)
    return HealthView(**common, llc_estimates=health.total, n_unhealthy=len(health.listing),
                      unhealthy_by_reason=table_view(health.by_reason),
                      unhealthy=table_view(health.listing))


def _provenance_view(data: RunData) -> ProvenanceView:
    settings = llc_settings(data)
    meta = data.run.meta
    calibration_dir = data.run.path / CALIBRATION_DIR
    return ProvenanceView(
        run_path=str(data.run.path), resolved_path=str(data.run.path.resolve()),
        n_instances=len(data.instances), n_checkpoints=len(data.steps), max_step=data.max_step,
        geometry_from_analyze=data.geometry_source == "analyze",
        llc_settings=None if settings is None else table_view(settings, sortable=False),
        llc_check=None if (check := llc_check(data)) is None else table_view(check,
                                                                              sortable=False),
        llc_config=json.dumps(meta["config"].get("llc", {})),
        calibration=_calibration_pngs(calibration_dir), calibration_dir=str(calibration_dir),
        versions=table_view(pd.DataFrame([meta.get("versions", {})]), sortable=False),
        stages_json=json.dumps(meta.get("stages", {}), indent=2),
        config_json=json.dumps(meta["config"], indent=2))


def _calibration_pngs(folder: Path) -> list[CalibrationPNG] | None:
    """The figures `devtms calibrate` left (embedded as they are: only PNGs, not huge ones)."""
    pngs = sorted(folder.glob("*.png")) if folder.is_dir() else []
    if not pngs:
        return None
    out = []
    for png in pngs[:MAX_CALIBRATION_PNGS]:
        raw = png.read_bytes()
        if raw.startswith(PNG_MAGIC) and len(raw) <= MAX_CALIBRATION_BYTES:
            out.append(CalibrationPNG(png.name, png.stem, raw))
    return out


# ---------------------------------------------------------------------------------------------
# Several runs


@dataclass(frozen=True)
class ComparisonView:
    overview: TableView  # one row per run
    figures: list[Rendered]


def comparison_view(overview: pd.DataFrame, figures: list[Rendered]) -> ComparisonView:
    return ComparisonView(table_view(overview, sortable=False), figures)
