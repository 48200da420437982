"""devtms calibrate: an eps x gamma (x n_beta) grid of SGLD runs, to choose LLC hyperparameters."""

from __future__ import annotations

import argparse
from pathlib import Path

from devtms.commands import add_device
from devtms.commands.llc import add_hyperparameters, overrides

DESCRIPTION = """\
Run the batched LLC estimator over a grid of step sizes eps and localizations gamma (and, if
asked, inverse temperatures n_beta) at one checkpoint step, and write a table and a figure to
RUN_DIR/calibration/: the mean loss trace of every grid cell against the loss at the
checkpoint, and the LLC of every cell.

How to read it (devinterp's calibration guidance): a healthy cell's trace rises from the
checkpoint's loss and settles into a flat band; eps too large makes it blow up (diverged) or
sink below the start (negative LLC); gamma too large pins the chains and biases the LLC low,
too small lets them wander. Choose the largest eps whose traces settle, with a gamma where
the LLC no longer depends on it much, and MALA acceptance near 0.9.
"""

EPILOG = """\
examples:
  devtms calibrate runs/quick --step 3000
  devtms calibrate runs/quick --step 3000 --instances 0,10,20 --eps-grid 1e-4,3e-4,1e-3
  devtms calibrate runs/quick --step 3000 --gamma-grid 10,100,1000 --n-beta-grid 50,144

defaults: eps-grid 1e-5,3e-5,1e-4,3e-4,1e-3 (devinterp's range), gamma-grid 1,10,100,1000,
n_beta the run's default; up to 4 instances spread over the run unless --instances is given.
Nothing is added to llc.csv: put the hyperparameters you choose into the config's [llc]
section or pass them to `devtms llc`.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "calibrate", help="eps x gamma grid for SGLD, with a table and a figure",
        description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", metavar="RUN_DIR", type=Path, help="a run directory from `devtms train`")
    p.add_argument("--step", required=True, metavar="STEP",
                   help="the checkpoint step to calibrate on (a step number, or last)")
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
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from devtms import calibrate
    from devtms.store import RunDir

    run_dir = RunDir.open(args.run_dir)
    job = calibrate.build_job(
        run_dir, step=args.step, instances=args.instances, eps_grid=args.eps_grid,
        gamma_grid=args.gamma_grid, n_beta_grid=args.n_beta_grid, overrides=overrides(args),
        device=args.device, compile_setting=args.compile)
    with run_dir.lock("devtms calibrate"):
        table_path, figure_path = calibrate.run_calibration(run_dir, job)
    print(f"calibration at step {job.step}: {len(job.cells)} cells x {len(job.instances)} "
          f"instance(s) -> {table_path} and {figure_path}")
    return 0
