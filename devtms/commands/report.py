"""devtms report: one self-contained HTML report (and its figures as PNG + PDF) of one or more runs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from devtms.commands import on_interrupt
from devtms.commands.analyze import add_setting
from devtms.errors import UserError

if TYPE_CHECKING:
    from devtms.store import RunDir

DESCRIPTION = """\
Write one self-contained HTML report of a trained run: figures embedded as PNG, CSS and a
small table-sorting script inline, no external files or URLs, so it opens offline and can be
mailed as one file. Every figure is also saved as PNG and PDF beside the HTML, for papers
and slides.
"""

EPILOG = """\
what the report shows (each part appears once the stage that feeds it has run):
  summary table      one row per activation (per condition when a run sweeps sparsity etc.):
                     final loss, final LLC, dims per feature, k-gon, antipodal pairs,
                     transitions, and whether superposition follows the largest loss drop;
                     sortable. Provisional until `devtms analyze` has run.
  health             diverged training instances; every LLC estimate flagged unhealthy, with
                     its reason (unhealthy points are hollow markers in every LLC plot)
  across activations small multiples of loss and LLC over training on common axes; LLC
                     against loss trajectories; the final geometry of every condition
  each condition     loss, LLC and geometry over training with seeds overlaid and the
                     transitions of `devtms analyze` marked, then the geometry at each
                     transition (m = 2: the k-gon with its numbered features and the bias
                     signs of features off it; larger m: W^T W and feature norms coloured by
                     interference)
  provenance         the LLC hyperparameters that produced the estimates, package versions,
                     stage status and the resolved config

stages:
  needs `devtms train` (checkpoints and train_log.csv); without `devtms llc` the LLC parts
  are left out, without `devtms analyze` the geometry is computed from the checkpoints, no
  transitions are marked and the summary table is provisional. The report says which.

several runs:
  `devtms report RUN_A RUN_B --out compare.html` writes one report: a comparison section
  (runs side by side: final loss and LLC per activation, loss curves with runs overlaid),
  then each run's full sections. --out is required then.

output:
  default RUN_DIR/report/index.html with figures in RUN_DIR/report/figures/*.png|pdf;
  --out DIR/NAME.html puts the figures in DIR/NAME_figures/ (DIR/figures/ for index.html).
  Files are written atomically; figure files of an earlier report that this one did not
  produce are removed from that figures directory. Writing inside a run directory takes its
  lock: while another stage is writing that run, write the report elsewhere with --out.

examples:
  devtms report runs/quick
  devtms report runs/quick --out ~/talk/quick.html
  devtms report runs/seed_a runs/seed_b --out runs/compare.html
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report", help="write a self-contained HTML report (figures also as PNG and PDF)",
        description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dirs", metavar="RUN_DIR", nargs="+", type=Path,
                   help="a run directory made by `devtms train` (several: one comparison report)")
    p.add_argument("--out", type=Path, metavar="FILE.html",
                   help="the HTML file to write (default RUN_DIR/report/index.html; required "
                        "with several RUN_DIRs)")
    add_setting(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from devtms.executors import start_forkserver
    start_forkserver()  # the figure workers' imports, beside this process's own
    from devtms.report import check_out, default_out, load_run, write_report
    from devtms.store import check_writable, lock_dir

    out = args.out if args.out is not None else default_out(args.run_dirs)
    check_out(out)
    check_writable(out.parent, f"--out {out}")
    if len({p.resolve() for p in args.run_dirs}) != len(args.run_dirs):
        raise UserError("the same RUN_DIR is given twice")
    runs = [load_run(p, args.setting) for p in args.run_dirs]  # validates all before writing
    owner = _owning_run(out, [r.run for r in runs])
    advice = (f"the HTML is written last, so {out} is still the earlier report (or none); "
              f"write it with `{args.given}`")
    with on_interrupt(lambda: advice):
        if owner is None:
            result = write_report(runs, out)
        else:  # writing inside a run directory: hold its lock, as every writer does
            with lock_dir(owner.path, "devtms report"):
                result = write_report(runs, out)
    print(f"report -> {result.html} ({len(result.figures) // 2} figures as PNG + PDF in "
          f"{result.figures[0].parent if result.figures else '-'}, {result.drawn} drawn, the "
          f"others unchanged; {result.seconds:.1f} s)")
    for r in runs:
        for note in r.notes:
            print(f"note ({r.name}): {note}", file=sys.stderr)
    return 0


def _owning_run(out: Path, runs: list[RunDir]) -> RunDir | None:
    target = out.resolve()
    for r in runs:
        if target.is_relative_to(r.path.resolve()):
            return r
    return None
