"""devtms calibrate: choose LLC hyperparameters: an eps x gamma (x n_beta) grid to read, or
--auto, which picks a setting from explicit convergence criteria and makes it active."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from devtms.commands import add_device, add_threads, on_interrupt
from devtms.commands.llc import add_hyperparameters, overrides
from devtms.errors import UserError

DESCRIPTION = """\
--auto: try candidate settings (eps, gamma, burn-in, draws; cheapest first) at the last
checkpoint on a sample of instances (up to 48, spread over the conditions), and choose the
first whose estimates are >= 90% healthy (split R-hat <= 1.05, bulk ESS >= 100, no drift, MALA
acceptance >= 0.3, none diverged or above d/2), whose mean LLC moves by < 5% when burn-in and
draws double, and by < 25% when gamma is multiplied or divided by 3. Checkpoints not at a local
minimum are left out and counted. It prints the evidence, writes it to
RUN_DIR/calibration/auto.csv and makes the choice the run's active LLC setting: `devtms llc
RUN` then computes it at every checkpoint and analyze/report show it. When no candidate
passes it names the closest, exits with status 2 and changes nothing. An activation with
unhealthy estimates at the choice is then calibrated alone (the other candidates, then larger
eps), and the first setting that passes the same checks on it becomes that activation's own.

Without --auto: run the batched LLC estimator over a grid of step sizes eps and localizations
gamma (and, if asked, inverse temperatures n_beta) at one checkpoint step, and write a table
and a figure to RUN_DIR/calibration/: the mean loss trace of every grid cell against the loss at the
checkpoint, and the LLC of every cell.

How to read it (devinterp's calibration guidance): a healthy cell's trace rises from the
checkpoint's loss and settles into a flat band; eps too large makes it blow up (diverged) or
sink below the start (negative LLC); gamma too large pins the chains and biases the LLC low,
too small lets them wander. Choose the largest eps whose traces settle, with a gamma where
the LLC no longer depends on it much. (MALA acceptance near 0.9 is devinterp's sign of a good
eps; with minibatches of 100 on these models it stays near 0.6 at every eps.)
"""

EPILOG = """\
examples:
  devtms calibrate runs/quick --auto && devtms llc runs/quick && devtms report runs/quick
  devtms calibrate runs/quick --step 3000
  devtms calibrate runs/quick --step 3000 --instances 0,10,20 --eps-grid 1e-4,3e-4,1e-3
  devtms calibrate runs/quick --step 3000 --gamma-grid 10,100,1000 --n-beta-grid 50,144

defaults: eps-grid 1e-5,3e-5,1e-4,3e-4,1e-3 (devinterp's range), gamma-grid 1,10,100,1000,
n_beta the run's default; up to 4 instances spread over the run unless --instances is given.
The grid adds nothing to llc.csv: make the hyperparameters you choose active with
`devtms llc RUN --eps E --gamma G ... --activate`. With --auto, --eps-grid and --gamma-grid
replace the candidates' eps and gamma values.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "calibrate", help="eps x gamma grid for SGLD, with a table and a figure",
        description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", metavar="RUN_DIR", type=Path, help="a run directory from `devtms train`")
    p.add_argument("--auto", action="store_true",
                   help="choose a setting from the convergence criteria above and make it the "
                        "run's active LLC setting")
    p.add_argument("--step", metavar="STEP",
                   help="the checkpoint step to calibrate on (a step number, or last); "
                        "required without --auto, which always uses the last")
    p.add_argument("--instances", metavar="SPEC",
                   help="instances: a list/range 0,3,5-9, or all (default: up to 4, spread out)")
    p.add_argument("--eps-grid", metavar="LIST", help="comma-separated step sizes")
    p.add_argument("--gamma-grid", metavar="LIST", help="comma-separated localizations")
    p.add_argument("--n-beta-grid", metavar="LIST",
                   help="comma-separated inverse temperatures (default: the run's n_beta only)")
    add_hyperparameters(p, grid=True)
    p.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                   help="run the step through torch.compile (auto: for large grids)")
    add_device(p)
    add_threads(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from devtms.store import RunDir
    from devtms.threads import check_threads, threads_for, torch_threads

    threads = threads_for(0, check_threads(args.threads))  # a calibration's tiles are small
    run_dir = RunDir.open(args.run_dir)
    with torch_threads(threads):
        return _calibrate(run_dir, args)


def _calibrate(run_dir, args: argparse.Namespace) -> int:
    from devtms import calibrate

    if args.auto:
        return run_auto(run_dir, args)
    if args.step is None:
        raise UserError("--step is required without --auto (a step number, or last)")
    job = calibrate.build_job(
        run_dir, step=args.step, instances=args.instances, eps_grid=args.eps_grid,
        gamma_grid=args.gamma_grid, n_beta_grid=args.n_beta_grid, overrides=overrides(args),
        device=args.device, compile_setting=args.compile)
    with on_interrupt(lambda: start_over(args)), run_dir.lock("devtms calibrate"):
        table_path, figure_path = calibrate.run_calibration(run_dir, job)
    print(f"calibration at step {job.step}: {len(job.cells)} cells x {len(job.instances)} "
          f"instance(s) -> {table_path} and {figure_path}")
    return 0


def start_over(args: argparse.Namespace) -> str:
    """What Ctrl-C says: a calibration writes its results only at the end."""
    return f"a calibration keeps nothing partial; start it again with `{args.given}`"


def run_auto(run_dir, args: argparse.Namespace) -> int:
    from devtms import calibrate
    from devtms.calibrate.auto import AUTO_CSV
    from devtms.store import CALIBRATION_DIR

    if args.step not in (None, "last") or args.n_beta_grid or overrides(args):
        raise UserError("--auto chooses eps, gamma, burn-in and draws at the last checkpoint: "
                        "it takes --instances, --eps-grid and --gamma-grid, not --step, "
                        "--n-beta-grid or single hyperparameters")
    job = calibrate.build_auto_job(
        run_dir, instances=args.instances,
        eps_grid=None if args.eps_grid is None else calibrate.parse_grid(args.eps_grid, None,
                                                                         "--eps-grid"),
        gamma_grid=None if args.gamma_grid is None else calibrate.parse_grid(
            args.gamma_grid, None, "--gamma-grid"),
        device=args.device, compile_setting=args.compile)
    print(f"calibrating at step {job.step} on {len(job.instances)} instance(s), "
          f"{len(job.candidates)} candidate(s), cheapest first:")
    with on_interrupt(lambda: start_over(args)), run_dir.lock("devtms calibrate --auto"):
        result = calibrate.run_auto(run_dir, job)
    if result.chosen is None:
        worst = f"; unhealthy there: {', '.join(result.failing)}" if result.failing else ""
        print(f"devtms calibrate: error: no candidate meets the criteria; the closest is "
              f"[{result.closest}]{worst}. Nothing was changed: try --eps-grid/--gamma-grid, "
              "or `devtms calibrate RUN --step last` to read the grid", file=sys.stderr)
        return 2
    if result.unresolved:
        print(f"warning: no candidate passed on {', '.join(result.unresolved)} alone: "
              "their estimates use the run-wide choice, and some are unhealthy",
              file=sys.stderr)
    print(f"chosen: {result.chosen.describe()}\nevidence -> "
          f"{run_dir.path / CALIBRATION_DIR / AUTO_CSV}; now the run's active LLC setting: "
          f"`devtms llc {run_dir.path}` computes it at every checkpoint")
    return 0
