"""Writing a report: every figure as PNG and PDF in a figures directory, then the HTML.

    >>> out = default_out([Path("runs/quick")])          # runs/quick/report/index.html
    >>> check_out(out)                                   # UserError for an unusable --out
    >>> result = write_report([load_run(Path("runs/quick"))], out)

The figures go beside the HTML, in `figures/` for index.html and `<stem>_figures/` otherwise;
the HTML embeds a smaller copy of each PNG (figures/.page/). Every file is written atomically
and the HTML last. A manifest in the figures directory lists what the report wrote there and
each figure's input digest (devtms.report.rendering): the next report reads back the figures
whose inputs did not change instead of drawing them, and removes its own stale figures, never
any other file.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from devtms.errors import UserError
from devtms.report.bayes import bayes_job
from devtms.report.figures.render import FigureJob, Rendered
from devtms.report.format import slug
from devtms.report.html import page
from devtms.report.load import RunData
from devtms.report.rendering import input_digest, render_all
from devtms.report.run_figures import comparison_figures, condition_figures, cross_figures
from devtms.report.tables import runs_overview
from devtms.report.views import comparison_view, run_view
from devtms.store import REPORT_DIR, write_bytes_atomic

MANIFEST = ".devtms-report-figures"  # what the last report wrote into its figures directory
PAGE_DIR = ".page"  # in the figures directory: the smaller PNGs the HTML embeds


@dataclass
class ReportResult:
    html: Path
    figures: list[Path]  # PNG and PDF files
    drawn: int  # figures drawn; the others had unchanged inputs and were read back
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


def write_report(runs: list[RunData], out: Path, progress: bool = True) -> ReportResult:
    """Render the figures whose inputs changed, write them (PNG + PDF) and then the HTML, all
    atomically."""
    start = time.perf_counter()
    out = Path(out)
    names = _unique_names([r.name for r in runs])
    for data, name in zip(runs, names, strict=True):
        data.name = name  # before any figure: the comparison's legends name the runs too
    jobs: list[FigureJob] = []
    compared: list[FigureJob] = []
    if len(runs) > 1:
        compared = comparison_figures(runs)
        jobs += compared
    sections = []
    for data, name in zip(runs, names, strict=True):
        prefix = f"{slug(name)}-" if len(runs) > 1 else ""
        across = cross_figures(data, prefix)
        details = condition_figures(data, prefix)
        bayes = [bayes_job(data.bayes, prefix, name)] if data.bayes is not None else []
        jobs += across + [job for _, job in details] + bayes
        sections.append((data, prefix, name, across, details, bayes))
    fig_dir = figures_dir(out)
    rendered, drawn = _figures(fig_dir, jobs, progress)
    comparison = (comparison_view(runs_overview(runs, names), [rendered[j.stem] for j in compared])
                  if compared else None)
    views = [run_view(data, prefix, f"Run {name}", [rendered[j.stem] for j in across],
                      [(panel, rendered[j.stem]) for panel, j in details],
                      rendered[bayes[0].stem] if bayes else None)
             for data, prefix, name, across, details, bayes in sections]
    text = page("devtms report: " + ", ".join(names), views, comparison, fig_dir.name)
    write_bytes_atomic(out, text.encode())
    files = [fig_dir / f"{stem}.{ext}" for stem in rendered for ext in ("png", "pdf")]
    return ReportResult(out, files, drawn, time.perf_counter() - start)


def _unique_names(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}-{seen[n]}")
    return out


def _figures(fig_dir: Path, jobs: list[FigureJob], progress: bool
             ) -> tuple[dict[str, Rendered], int]:
    """Every job's figure by stem: read back where the last report drew it from the same
    inputs, else drawn and written. Also: how many were drawn.

    The manifest is rewritten without the figures about to be drawn before any file changes, so
    a kill part way never leaves a digest beside files it does not describe; files of the last
    report that this one does not make are removed (only those: never any other file)."""
    before = _read_manifest(fig_dir)
    digests = {job.stem: input_digest(job) for job in jobs}
    rendered = {job.stem: r for job in jobs if before.digests.get(job.stem) == digests[job.stem]
                and (r := _read_back(fig_dir, job)) is not None}
    todo = [job for job in jobs if job.stem not in rendered]
    kept = {stem: before.digests[stem] for stem in rendered}
    if todo:
        _write_manifest(fig_dir, before.files, kept)
        for fresh in render_all(todo, progress=progress):
            for path, data in _files(fig_dir, fresh):
                write_bytes_atomic(path, data)
            rendered[fresh.stem] = fresh
    names = {str(path.relative_to(fig_dir)) for r in rendered.values() for path, _ in
             _files(fig_dir, r)}
    for old in before.files - names:
        if _is_figure_file(old):
            (fig_dir / old).unlink(missing_ok=True)
    _write_manifest(fig_dir, names, digests)
    return {job.stem: rendered[job.stem] for job in jobs}, len(todo)


def _files(fig_dir: Path, r: Rendered) -> list[tuple[Path, bytes]]:
    """A figure's files: PNG and PDF, and the page's PNG in PAGE_DIR."""
    return [(fig_dir / f"{r.stem}.png", r.png), (fig_dir / f"{r.stem}.pdf", r.pdf),
            (fig_dir / PAGE_DIR / f"{r.stem}.png", r.page_png)]


def _read_back(fig_dir: Path, job: FigureJob) -> Rendered | None:
    """The job's figure as the last report wrote it; None if a file is missing."""
    try:
        png, pdf, small = ((fig_dir / name).read_bytes() for name in
                           (f"{job.stem}.png", f"{job.stem}.pdf", f"{PAGE_DIR}/{job.stem}.png"))
    except OSError:
        return None
    return Rendered(job.stem, png, pdf, small, job.caption, job.alt)


@dataclass
class _Manifest:
    files: set[str]  # relative to the figures directory
    digests: dict[str, str]  # stem -> input digest of its files


def _read_manifest(fig_dir: Path) -> _Manifest:
    """The last report's manifest; a plain list of files (devtms before 0.2): no digests."""
    path = fig_dir / MANIFEST
    if not path.is_file():
        return _Manifest(set(), {})
    text = path.read_text()
    try:
        saved = json.loads(text)
        return _Manifest(set(saved["files"]), dict(saved["digests"]))
    except (json.JSONDecodeError, KeyError, TypeError):
        return _Manifest({line for line in text.split("\n") if line}, {})


def _write_manifest(fig_dir: Path, files: set[str], digests: dict[str, str]) -> None:
    saved = {"files": sorted(files), "digests": dict(sorted(digests.items()))}
    write_bytes_atomic(fig_dir / MANIFEST, (json.dumps(saved, indent=1) + "\n").encode())


def _is_figure_file(name: str) -> bool:
    """A name a report writes: STEM.png|pdf, or PAGE_DIR/STEM.png."""
    parts = name.split("/")
    return (name.endswith((".png", ".pdf")) and ".." not in parts
            and (len(parts) == 1 or (len(parts) == 2 and parts[0] == PAGE_DIR)))
