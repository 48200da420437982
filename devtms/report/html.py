"""The report's HTML: jinja2 templates (devtms/report/templates/) filled from views of the data.

Every value reaches the page through a template with autoescape on, so text from a run
(directory names, reasons, config values) can never inject markup. The page is
self-contained: the CSS and the table-sorting script (devtms/report/static/) are inlined and
every image is a data URI; there are no external URLs.

    >>> views = [run_view(data, "", "Run quick", cross, details)]
    >>> text = page("devtms report: quick", views, None, "figures")
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pandas as pd
from markupsafe import Markup

from devtms import __version__
from devtms.report.figures.layout import Panel
from devtms.report.figures.render import Rendered
from devtms.report.figures.style import style
from devtms.report.format import MISSING, fmt, slug
from devtms.report.load import RunData
from devtms.report.tables import (
    LLCHealth,
    Shown,
    diverged_rows,
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
# Views: what the templates show


@dataclass(frozen=True)
class DetailView:
    """One condition's section: its anchor, title and figure."""

    anchor: str
    title: str
    figure: Rendered


@dataclass(frozen=True)
class CalibrationPNG:
    name: str
    stem: str
    data: bytes


@dataclass(frozen=True)
class RunView:
    """One run's sections (run.html.j2, health.html.j2, provenance.html.j2)."""

    anchor: str
    heading: str
    notes: list[str]
    # summary
    per: str  # "activation" or "condition": what one summary row is
    summary: TableView
    summary_source: str
    from_analyze: bool  # summary.csv exists: its columns are explained under the table
    # health
    n_instances: int
    n_diverged: int
    diverged: TableView
    path: str
    llc_health: LLCHealth | None  # None: no LLC estimates
    n_unhealthy: int
    unhealthy_by_reason: TableView | None
    unhealthy: TableView | None
    # figures
    across: list[Rendered]
    details: list[DetailView]
    # provenance
    resolved_path: str
    n_checkpoints: int
    max_step: int
    geometry_from_analyze: bool
    llc_settings: TableView | None  # None: no LLC estimates
    llc_config: str  # the [llc] section as JSON
    calibration: list[CalibrationPNG] | None  # None: no calibration/*.png
    calibration_dir: str
    versions: TableView
    stages_json: str
    config_json: str


def run_view(data: RunData, prefix: str, heading: str, across: list[Rendered],
             details: list[tuple[Panel, Rendered]]) -> RunView:
    """prefix: the run's slug and "-" in a report of several runs, else ""."""
    anchor = slug(prefix or "run")
    summary, source = summary_table(data)
    health = llc_health(data)
    settings = llc_settings(data)
    meta = data.run.meta
    calibration_dir = data.run.path / CALIBRATION_DIR
    return RunView(
        anchor=anchor, heading=heading, notes=data.notes,
        per="activation" if len(summary) == data.instances["activation"].nunique()
        else "condition",
        summary=table_view(summary), summary_source=source,
        from_analyze=data.summary is not None,
        n_instances=len(data.instances), n_diverged=len(data.diverged),
        diverged=table_view(diverged_rows(data)), path=str(data.run.path),
        llc_health=health, n_unhealthy=0 if health is None else len(health.listing),
        unhealthy_by_reason=None if health is None else table_view(health.by_reason),
        unhealthy=None if health is None else table_view(health.listing),
        across=across,
        details=[DetailView(f"{anchor}-c-{slug(p.key)}", p.title, fig) for p, fig in details],
        resolved_path=str(data.run.path.resolve()), n_checkpoints=len(data.steps),
        max_step=data.max_step, geometry_from_analyze=data.geometry_source == "analyze",
        llc_settings=None if settings is None else table_view(settings, sortable=False),
        llc_config=json.dumps(meta["config"].get("llc", {})),
        calibration=_calibration_pngs(calibration_dir), calibration_dir=str(calibration_dir),
        versions=table_view(pd.DataFrame([meta.get("versions", {})]), sortable=False),
        stages_json=json.dumps(meta.get("stages", {}), indent=2),
        config_json=json.dumps(meta["config"], indent=2),
    )


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


@dataclass(frozen=True)
class ComparisonView:
    overview: TableView
    figures: list[Rendered]


def comparison_view(overview: pd.DataFrame, figures: list[Rendered]) -> ComparisonView:
    return ComparisonView(table_view(overview, sortable=False), figures)


# ---------------------------------------------------------------------------------------------
# The page


def _png_data_uri(png: bytes) -> Markup:
    # base64 has no character HTML would escape: safe as it is
    return Markup(f"data:image/png;base64,{base64.b64encode(png).decode()}")


def _static(name: str) -> Markup:
    # our own package file, inlined verbatim into <style> / <script> (escaping would break it)
    return Markup((resources.files("devtms.report") / "static" / name).read_text("utf-8"))


ENVIRONMENT = jinja2.Environment(
    loader=jinja2.PackageLoader("devtms.report", "templates"),
    autoescape=True, trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined,
)
ENVIRONMENT.filters["png_data_uri"] = _png_data_uri


def page(title: str, runs: list[RunView], comparison: ComparisonView | None,
         figures_dir: str) -> str:
    """The whole HTML page. figures_dir: the name of the directory beside it with the files."""
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return ENVIRONMENT.get_template("page.html.j2").render(
        title=title, generated=generated, version=__version__, figures_dir=figures_dir,
        css=_static("report.css"), js=_static("sort.js"), comparison=comparison, runs=runs)
