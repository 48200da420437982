"""Writing a report: every figure as PNG and PDF in a figures directory, then the HTML.

    >>> out = default_out([Path("runs/quick")])          # runs/quick/report/index.html
    >>> check_out(out)                                   # UserError for an unusable --out
    >>> result = write_report([load_run(Path("runs/quick"))], out)

The figures go beside the HTML, in `figures/` for index.html and `<stem>_figures/` otherwise.
Every file is written atomically and the HTML last. A manifest in the figures directory lists
what the report wrote there, so the next report removes its own stale figures and never any
other file.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from devtms.errors import UserError
from devtms.report.figures.render import Rendered
from devtms.report.format import slug
from devtms.report.html import page
from devtms.report.load import RunData
from devtms.report.run_figures import comparison_figures, condition_figures, cross_figures
from devtms.report.tables import runs_overview
from devtms.report.views import comparison_view, run_view
from devtms.store import REPORT_DIR, write_bytes_atomic

MANIFEST = ".devtms-report-figures"  # what the last report wrote into its figures directory


@dataclass
class ReportResult:
    html: Path
    figures: list[Path]  # PNG and PDF files
    seconds: float


def default_out(paths: Sequence[Path]) -> Path:
    """RUN_DIR/report/index.html for one run; several runs need an explicit --out."""
    if len(paths) != 1:
        raise UserError("several RUN_DIRs make one comparison report that belongs to none of "
                        "them: pass --out FILE.html")
    return Path(paths[0]) / REPORT_DIR / "index.html"


def check_out(out: Path) -> None:
    """Raise UserError unless `out` can be the report's HTML file."""
    if out.suffix.lower() not in (".html", ".htm"):
        raise UserError(f"--out {out}: the report is one HTML file; give a name ending in .html")
    if out.exists() and not out.is_file():
        raise UserError(f"--out {out} exists and is not a file")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"--out {out}: {parent} is not a directory")
            break


def figures_dir(out: Path) -> Path:
    return out.parent / ("figures" if out.name == "index.html" else f"{out.stem}_figures")


def write_report(runs: list[RunData], out: Path) -> ReportResult:
    """Render every figure, write them (PNG + PDF) and then the HTML, all atomically."""
    start = time.perf_counter()
    out = Path(out)
    names = _unique_names([r.name for r in runs])
    figs: list[Rendered] = []
    comparison = None
    if len(runs) > 1:
        compared = comparison_figures(runs)
        figs += compared
        comparison = comparison_view(runs_overview(runs, names), compared)
    views = []
    for data, name in zip(runs, names, strict=True):
        data.name = name
        prefix = f"{slug(name)}-" if len(runs) > 1 else ""
        across = cross_figures(data, prefix)
        details = condition_figures(data, prefix)
        figs += across + [fig for _, fig in details]
        views.append(run_view(data, prefix, f"Run {name}", across, details))
    fig_dir = figures_dir(out)
    written = _write_figures(fig_dir, figs)
    text = page("devtms report: " + ", ".join(names), views, comparison, fig_dir.name)
    write_bytes_atomic(out, text.encode())
    return ReportResult(out, written, time.perf_counter() - start)


def _unique_names(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}-{seen[n]}")
    return out


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
