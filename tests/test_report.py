"""devtms report: one self-contained HTML file whose every figure decodes, PNG + PDF beside it,
a summary row per activation, diverged and unhealthy entries visible, and bad input refused.

One tiny run is trained once through the real CLI (3 activations x 2 seeds, an lr at which
`exp` diverges), then reported on before and after the later stages.
"""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
from markupsafe import escape
from PIL import Image

from .conftest import after_stages, run_cli, tiny_config, trained_run

ACTIVATIONS = ["relu", "exp", "linear"]
# lr 2.5: exp diverges, so the report has a diverged instance and unhealthy estimates to show
CONFIG = tiny_config(name="reporttiny", model={"activations": ACTIVATIONS},
                     train={"steps": 200, "lr": 2.5}, checkpoints={"linear_every": None})


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A trained run, no later stages; tests copy it before adding to it."""
    return trained_run(tmp_path_factory.mktemp("report"), CONFIG)


@pytest.fixture(scope="module")
def analyzed(trained: Path, tmp_path_factory) -> Path:
    """The run after every later stage (llc, analyze)."""
    return after_stages(trained, tmp_path_factory.mktemp("analyzed") / "run", "llc", "analyze")


@pytest.fixture(scope="module")
def full_report(analyzed: Path) -> Path:
    """The default report of the run after every later stage."""
    result = run_cli("report", analyzed)
    assert result.returncode == 0, result.stderr
    return analyzed / "report" / "index.html"


class Page(HTMLParser):
    """What the self-containment checks need from an HTML page."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.tables: list[list[list[str]]] = []  # tables -> body rows -> cell texts
        self._cell: list[str] | None = None
        self._in_body = False

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "table":
            self.tables.append([])
        elif tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body:
            self.tables[-1].append([])
        elif tag == "td" and self._in_body:
            self._cell = []

    def handle_endtag(self, tag):
        if tag == "tbody":
            self._in_body = False
        elif tag == "td" and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def parse(path: Path) -> tuple[str, Page]:
    text = path.read_text()
    page = Page()
    page.feed(text)
    return text, page


def assert_self_contained(text: str, page: Page) -> None:
    assert "http://" not in text and "https://" not in text
    assert not re.search(r"url\(\s*['\"]?(?!data:)", text), "CSS url() to a file"
    assert "@import" not in text
    for tag, attrs in page.tags:
        assert tag not in ("link", "iframe", "object", "embed"), tag
        for name in ("src", "href", "data"):
            value = attrs.get(name)
            if value is None:
                continue
            assert value.startswith(("data:", "#")), f"<{tag} {name}={value[:60]!r}>"
        if tag == "script":
            assert "src" not in attrs


def assert_figures(out: Path, page: Page) -> list[str]:
    """Every <img> is an embedded PNG that decodes; its PNG and PDF files exist beside."""
    images = [attrs["src"] for tag, attrs in page.tags if tag == "img"
              and not attrs.get("alt", "").startswith("calibration")]
    assert images
    for src in images:
        assert src.startswith("data:image/png;base64,")
        img = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        img.load()
        assert img.width > 200 and img.height > 100
    stems = [attrs["id"].removeprefix("fig-") for tag, attrs in page.tags
             if tag == "figure" and attrs.get("id", "").startswith("fig-")]
    assert len(stems) == len(images) == len(set(stems))
    fig_dir = out.parent / ("figures" if out.name == "index.html" else f"{out.stem}_figures")
    for stem in stems:
        png, pdf = fig_dir / f"{stem}.png", fig_dir / f"{stem}.pdf"
        Image.open(png).load()
        assert pdf.read_bytes().startswith(b"%PDF")
    assert len(list(fig_dir.glob("*.png"))) == len(stems)
    assert not list(out.parent.rglob("*.tmp"))
    return stems


def summary_rows(page: Page) -> list[list[str]]:
    """The first table of the page is the summary table."""
    return page.tables[0]


def test_full_report_is_self_contained_and_shows_every_activation(analyzed: Path,
                                                                   full_report: Path):
    out = full_report
    text, page = parse(out)
    assert_self_contained(text, page)
    stems = assert_figures(out, page)
    assert {"loss_grid", "final_geometry"} <= set(stems)
    assert {f"condition_{a}" for a in ACTIVATIONS} <= set(stems)
    rows = summary_rows(page)
    assert sorted(r[0] for r in rows) == sorted(ACTIVATIONS)  # one row per activation
    # diverged training instances are listed in the health section, by id and activation
    diverged = json.loads((analyzed / "run.json").read_text())["stages"]["train"]["diverged"]
    assert diverged, "the test config should make exp diverge"
    health = text[text.index("Health"):text.index("Across activations")]
    assert f"{len(diverged)} training instance(s) diverged" in health
    for i in diverged:
        assert re.search(rf"<td data-v=\"{float(i)!r}\">{i}</td>", health)
    assert "from summary.csv" in text
    assert "llc_grid" in stems and "llc_vs_loss" in stems
    assert "LLC hyperparameters that produced the estimates" in text


def test_every_caption_of_a_figure_with_k_gon_labels_explains_the_notation(analyzed: Path):
    from devtms.geometry import LABEL_NOTATION
    from devtms.report.load import load_run
    from devtms.report.run_figures import condition_figures, cross_figures

    data = load_run(analyzed)
    figures = [*cross_figures(data, ""), *(r for _, r in condition_figures(data, ""))]
    with_labels = [r for r in figures if r.stem == "final_geometry"
                   or r.stem.startswith("condition_")]
    assert len(with_labels) == 1 + len(data.panels)
    for r in with_labels:
        assert LABEL_NOTATION in r.caption, r.stem
    assert '"o" exactly zero' in LABEL_NOTATION and '"3ooo"' in LABEL_NOTATION


def test_unhealthy_llc_estimates_are_listed_with_their_reason(analyzed: Path, full_report: Path):
    text = full_report.read_text()
    llc = pd.read_csv(analyzed / "llc.csv")
    llc = llc[llc["engine"] == "batched"]  # the self-check's reference estimates are apart
    healthy = llc["healthy"].astype(str).str.lower().isin(["true", "1"])
    # the diverged exp instance has non-finite weights: its chains diverge, its estimates are
    # flagged; the report lists every flagged estimate with its reason
    assert not healthy.all()
    assert f"{int((~healthy).sum())} of {len(llc)} LLC estimates are flagged unhealthy" in text
    for reason in llc.loc[~healthy, "reason"].dropna().unique():
        assert escape(str(reason)) in text
    listing = text[text.index("Every unhealthy estimate"):]
    listing = listing[:listing.index("</details>")]
    assert listing.count("<tr>") == 1 + int((~healthy).sum())  # header + one row each


def test_several_runs_make_one_comparison_report_then_one_run_replaces_it(
        trained: Path, analyzed: Path, tmp_path):
    out = tmp_path / "compare.html"
    figures = tmp_path / "compare_figures"
    figures.mkdir()
    (tmp_path / "mine.png").write_bytes(b"not the report's")
    result = run_cli("report", trained, analyzed, "--out", out)
    assert result.returncode == 0, result.stderr
    text, page = parse(out)
    assert_self_contained(text, page)
    stems = assert_figures(out, page)
    assert "Comparison across runs" in text
    assert {"compare_finals", "compare_loss_grid"} <= set(stems)
    assert any(s.startswith("run-") for s in stems) and any(s.startswith("run-2-") for s in stems)

    # the same file from the run before its later stages: it says what to run, its summary is
    # provisional; the figures only the comparison wrote are gone, a file it did not write stays
    (tmp_path / "mine.png").rename(figures / "mine.png")
    result = run_cli("report", trained, "--out", out)
    assert result.returncode == 0, result.stderr
    (figures / "mine.png").rename(tmp_path / "mine.png")
    text, page = parse(out)
    assert_self_contained(text, page)
    stems = assert_figures(out, page)
    assert not any(s.startswith(("run-", "compare_")) for s in stems)
    assert "no LLC estimates yet: run `devtms llc" in text
    assert "run `devtms analyze" in text and "provisional" in text
    assert sorted(r[0] for r in summary_rows(page)) == sorted(ACTIVATIONS)
    assert not (trained / "report").exists()  # --out elsewhere: nothing written into the run


def figure_files(fig_dir: Path) -> dict[str, bytes]:
    """Every figure file (PNG, PDF and the page's PNGs) by its path in the figures directory;
    PDFs without their creation date, the one thing that differs between two drawings."""
    files = {}
    for path in sorted(fig_dir.rglob("*.p[dn][fg]")):
        data = path.read_bytes()
        files[str(path.relative_to(fig_dir))] = re.sub(rb"/CreationDate \(.*?\)", b"", data)
    return files


def test_a_second_report_draws_only_what_changed(analyzed: Path, tmp_path):
    """Unchanged inputs: nothing drawn, the same files. One condition's LLC changed: its detail
    figure and the cross-condition LLC figures are drawn again, nothing else."""
    run = tmp_path / "run"
    shutil.copytree(analyzed, run, ignore=shutil.ignore_patterns("report"))
    first = run_cli("report", run)
    assert first.returncode == 0, first.stderr
    fig_dir = run / "report" / "figures"
    before = figure_files(fig_dir)
    n = len([f for f in before if f.endswith(".pdf")])
    assert f"{n} drawn" in first.stdout

    again = run_cli("report", run)
    assert again.returncode == 0, again.stderr
    assert ", 0 drawn" in again.stdout
    assert figure_files(fig_dir) == before

    llc = pd.read_csv(run / "llc.csv", dtype={"setting": str})
    relu = pd.read_csv(run / "instances.csv").query("activation == 'relu'")["instance"]
    llc.loc[llc["instance"].isin(relu), "llc_mean"] += 1.0
    llc.to_csv(run / "llc.csv", index=False)
    third = run_cli("report", run)
    assert third.returncode == 0, third.stderr
    after = figure_files(fig_dir)
    changed = {name.split("/")[-1].rsplit(".", 1)[0] for name in before
               if after[name] != before[name]}
    assert changed == {"condition_relu", "llc_grid", "llc_vs_loss"}
    assert f", {len(changed)} drawn" in third.stdout


def test_the_page_embeds_a_smaller_copy_of_each_png(full_report: Path):
    """The HTML's image is the figure's PNG with a palette: the same size, nearly the same
    pixels, fewer bytes."""
    import numpy as np

    _, page = parse(full_report)
    fig_dir = full_report.parent / "figures"
    embedded = {attrs["alt"]: attrs["src"] for tag, attrs in page.tags if tag == "img"}
    stems = [attrs["id"].removeprefix("fig-") for tag, attrs in page.tags
             if tag == "figure" and attrs.get("id", "").startswith("fig-")]
    srcs = [attrs["src"] for tag, attrs in page.tags if tag == "img"]
    assert len(srcs) == len(stems) and embedded
    for stem, src in zip(stems, srcs, strict=True):
        small = base64.b64decode(src.split(",", 1)[1])
        full = (fig_dir / f"{stem}.png").read_bytes()
        assert len(small) < len(full)
        a = np.asarray(Image.open(io.BytesIO(small)).convert("RGB"), dtype=float)
        b = np.asarray(Image.open(fig_dir / f"{stem}.png").convert("RGB"), dtype=float)
        assert a.shape == b.shape
        assert np.abs(a - b).mean() < 2.0  # of 255


def test_figures_drawn_in_worker_processes_equal_those_drawn_here(analyzed: Path):
    from devtms.report import load_run
    from devtms.report.rendering import render_all
    from devtms.report.run_figures import cross_figures

    jobs = cross_figures(load_run(analyzed), "")
    here = render_all(jobs, n_workers=1, progress=False)
    workers = render_all(jobs, n_workers=2, progress=False)
    assert [r.stem for r in workers] == [j.stem for j in jobs]
    assert [r.png for r in workers] == [r.png for r in here]
    assert [r.page_png for r in workers] == [r.page_png for r in here]


def test_text_from_the_run_is_escaped_not_interpreted(analyzed: Path, tmp_path, capsys):
    """A run directory's name and an LLC reason are data: shown as written, never markup."""
    from devtms.cli import main

    name = "<img src=x onerror=alert(1)>"
    reason = '<script>alert("reason")</script> & more'
    run = tmp_path / name
    shutil.copytree(analyzed, run, ignore=shutil.ignore_patterns("report"))
    llc = pd.read_csv(run / "llc.csv")
    llc.loc[(~llc["healthy"]).idxmax(), "reason"] = reason
    llc.to_csv(run / "llc.csv", index=False)
    assert main(["report", str(run)]) == 0, capsys.readouterr().err
    text, page = parse(run / "report" / "index.html")
    assert_self_contained(text, page)
    assert name not in text and reason not in text
    assert escape(name) in text and escape(reason) in text
    assert [tag for tag, _ in page.tags].count("script") == 1  # the table-sorting script only
    assert not any(tag == "img" and attrs.get("src") == "x" for tag, attrs in page.tags)
    cells = {cell for table in page.tables for row in table for cell in row}
    assert reason in cells  # shown as written


def test_importing_and_drawing_leave_matplotlib_state_alone():
    """The house style is applied per figure (rc_context), never at import: rcParams and the
    backend stay as the importer had them, and pyplot is never imported."""
    code = """
import sys
import matplotlib
import pandas as pd

def raw_rc():  # rcParams._get: reading "backend" through [] would choose a backend
    return {key: matplotlib.rcParams._get(key) for key in matplotlib.rcParams}

before = raw_rc()
import devtms.calibrate
import devtms.report
from devtms.report.figures import calibration, compare, condition, geometry, trajectories
from devtms.report.figures.grids import loss_grid
from devtms.report.figures.layout import Panel
from devtms.report.figures.render import figure_bytes

assert raw_rc() == before, "importing changed rcParams"
curves = pd.DataFrame({"condition": "relu", "seed": 0, "step": [0, 10, 100],
                       "loss": [1.0, 0.5, 0.1]})
fig = loss_grid(curves, [Panel("relu", "relu", "relu", [0])], 100, "title")
assert figure_bytes(fig, "png", creator="test").startswith(b"\\x89PNG")
assert raw_rc() == before, "drawing changed rcParams (or chose a backend)"
assert "matplotlib.pyplot" not in sys.modules
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("case", ["missing", "not_a_run", "untrained", "file", "bad_out",
                                  "several_without_out", "same_twice"])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(case, trained: Path, tmp_path, capsys):
    """In-process (the same `main` the console script runs), to keep the suite fast."""
    from devtms.cli import main

    untrained = tmp_path / "untrained"
    untrained.mkdir()
    for name in ("run.json", "instances.csv"):
        shutil.copy(trained / name, untrained / name)
    (tmp_path / "empty").mkdir()
    (tmp_path / "afile").write_text("x")
    args = {
        "missing": [tmp_path / "nope"],
        "not_a_run": [tmp_path / "empty"],
        "untrained": [untrained],
        "file": [tmp_path / "afile"],
        "bad_out": [trained, "--out", tmp_path / "report.txt"],
        "several_without_out": [trained, tmp_path / "empty"],
        "same_twice": [trained, trained, "--out", tmp_path / "x.html"],
    }[case]
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    trained_before = sorted(trained.rglob("*"))
    assert main(["report", *map(str, args)]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("devtms report: error:"), err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert sorted(trained.rglob("*")) == trained_before


def test_help_explains_stages_outputs_and_several_runs(capsys):
    from devtms.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["report", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for words in ("self-contained", "PNG and PDF", "devtms llc", "devtms analyze", "--out",
                  "several runs", "unhealthy"):
        assert words in text
