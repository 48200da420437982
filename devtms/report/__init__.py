"""The HTML report: one self-contained file comparing training dynamics across activations.

    >>> runs = [load_run(Path("runs/quick"))]        # validates; reads tables, never writes
    >>> result = write_report(runs, Path("runs/quick/report/index.html"))

`write_report` renders every figure, saves each as PNG and PDF in a figures directory beside
the HTML (`figures/` for index.html, `<stem>_figures/` otherwise), embeds the PNGs as base64 in
the HTML and writes the HTML last, every file atomically. The HTML needs nothing else: CSS and
the table-sorting script are inline, there are no external URLs, scripts or fonts.

What comes from where (a stage that has not run leaves its part out, with the command to run):

| part | source |
|---|---|
| loss curves | train_log.csv |
| LLC curves, hyperparameters, unhealthy estimates | llc.csv (`devtms llc`) |
| geometry over training, k-gons | geometry.csv (`devtms analyze`), else computed by analyze's code |
| transitions | transitions.csv (`devtms analyze`) |
| summary table | summary.csv (`devtms analyze`), else a provisional one from the above |
| diverged instances | run.json, stage "train" |
| calibration figures | calibration/*.png (`devtms calibrate`), embedded as they are |

The modules, in the order a report is made:

    load          RunData, load_run: a run's tables, validated
    tables        the tables the figures draw and the page shows
    snapshots     which checkpoints to picture, and their weights
    figures/      matplotlib figures, one module per family, and render (figure -> bytes)
    run_figures   every figure of a report, with its caption
    html          the page: jinja2 templates (templates/), CSS and JS (static/)
    write         write_report: figures, then the HTML; default_out, check_out
"""

from devtms.report.load import RunData, load_run
from devtms.report.write import ReportResult, check_out, default_out, write_report

__all__ = ["ReportResult", "RunData", "check_out", "default_out", "load_run", "write_report"]
