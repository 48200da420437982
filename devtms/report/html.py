"""The report's HTML page: jinja2 templates (devtms/report/templates/) filled with views
(devtms.report.views).

Every value reaches the page through a template with autoescape on, so text from a run
(directory names, reasons, config values) can never inject markup; `Markup` marks only what
is built here and safe as it is. The page is self-contained: the CSS and the table-sorting
script (devtms/report/static/) are inlined and every image is a data URI; there are no
external URLs.

    >>> text = page("devtms report: quick", [run_view(data, "", "Run quick", across, details)],
    ...             None, "figures")
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from importlib import resources

import jinja2
from markupsafe import Markup

from devtms import __version__
from devtms.report.views import ComparisonView, RunView


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
