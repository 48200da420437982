"""devtms llc: the local learning coefficient at every checkpoint of a run, resumable."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from devtms.commands import add_device, add_scheduler, add_threads, on_interrupt, open_executor

ENGINE_NAMES = ("batched", "mala", "devinterp")  # devtms.llc.ENGINES (not imported: --help
# starts without torch)

DESCRIPTION = """\
Estimate the local learning coefficient (LLC) of every instance at every checkpoint.

The LLC measures the effective number of parameters of the loss basin a checkpoint sits in
(d/2 for a regular model with d parameters, less for singular ones): SGLD chains sample a
tempered posterior localized at the checkpoint, and
    llc = n_beta * (mean sampled minibatch loss - loss at the checkpoint).

Results go to RUN_DIR/llc.csv (one row per instance x step x setting, where a setting is the
engine and its hyperparameters, named by a short id in the `setting` column; with llc_mean,
llc_std over chains, llc_sem, the convergence diagnostics rhat, ess_bulk, llc_drift and
mala_acceptance, the loss's slope and curvature at the checkpoint grad_norm, grad_shift and
hess_min, and a state: healthy, not_at_minimum, implausible, unconverged or diverged; for
not_at_minimum the reason says whether the slope, downward curvature or neither explains the
chains' descent) and the sampled loss traces to RUN_DIR/llc_traces/. Only estimates missing
from llc.csv are computed, and rows are appended after every chunk, so a killed job resumes
where it stopped when you run the same command again.
"""

EPILOG = """\
defaults: the run's active LLC setting: the config's [llc] section (eps, gamma, chains, draws,
burnin, batch_size, seed) until `devtms calibrate RUN --auto` or `devtms llc RUN --activate ...`
replaces it, each activation at its own values where the config's [llc.by_activation.NAME]
or `calibrate --auto` gives it some; the flags below change single values of it (of each
activation's). n_beta defaults to N / log N of the
LLC dataset (N = data.n_samples of a finite-data run) on the loss SUMMED over features, whatever
the model's training reduction: the LLC is measured on that loss (docs/science.md).
`analyze`, `report` and `study` read the active setting's rows of llc.csv (or --setting ID).

examples:
  devtms llc runs/quick                            # every instance, every checkpoint
  devtms llc runs/quick --steps last --instances 0-3
  devtms llc runs/quick --steps 100-1000 --eps 3e-4 --gamma 300 --draws 400
  devtms llc runs/quick --eps 2e-4 --burnin 2000 --activate   # compute it and make it active
  devtms llc runs/quick --engine devinterp --steps last --instances 0   # the reference engine
  devtms llc runs/quick --scheduler dask           # chunks on a LocalCluster, a worker per core
  devtms llc runs/quick --scheduler tcp://HOST:8786  # on a running Dask cluster (SLURM ...)

engines: batched (default) runs every chain of a chunk of estimates as one SGLD tensor program;
mala is the exact reference, full-batch Metropolis-adjusted Langevin (no step-size bias, about
N / batch_size times the cost per step: for samples of checkpoints); devinterp runs devinterp's
estimate_learning_coeff_with_summary one checkpoint at a time, for cross-checks (hundreds of
times slower). Pick eps and gamma with `devtms calibrate`.

the self-check: after a batched setting is computed, a sample of its estimates at a local
minimum (up to 32 instances spread over the conditions, at 3 log-spread checkpoints ending at
the last) is also estimated with mala at the same gamma and n_beta, and at gamma / 2 and
2 gamma on the last checkpoint. The comparison goes to RUN_DIR/calibration/check.csv and
run.json; an estimate whose step-size bias is more than 5% and more than 2 standard errors
(its own, or its activation's at its setting) is flagged `biased` wherever the run's estimates are read
(analyze, report, devtms.llc.choose). --no-check skips it.

On Dask (--scheduler), chunks run in parallel, one per worker at a time. The default chunking
cuts the job into about 8 chunks, whatever the cluster (chunking is part of what fixes the
numbers, in their last float32 bits, so a run gives the same llc.csv on every executor): with
more than a few workers, pass --chunk-size (e.g. estimates / (4 x workers)).
Set TQDM_DISABLE=1 to silence the progress bar.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "llc", help="estimate the local learning coefficient at every checkpoint",
        description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", metavar="RUN_DIR", type=Path, help="a run directory from `devtms train`")
    add_selection(p)
    p.add_argument("--engine", choices=ENGINE_NAMES,
                   help="batched (SGLD, the default), mala (the exact reference: full-batch "
                        "Metropolis-adjusted Langevin) or devinterp (devinterp's own, slow)")
    p.add_argument("--no-check", action="store_true",
                   help="skip the self-check: by default a sample of the setting's estimates "
                        "is also estimated with the exact engine (mala) and the setting's "
                        "step-size bias recorded (calibration/check.csv, the `biased` flag)")
    add_hyperparameters(p)
    p.add_argument("--activate", action="store_true",
                   help="make this job's setting the run's active one (what analyze, report "
                        "and study read), once its estimates are computed")
    p.add_argument("--chunk-size", type=int, metavar="K",
                   help="estimates per chunk (default: from a 512 MB memory budget)")
    p.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                   help="run the batched step through torch.compile: auto (default: when the "
                        "run's LLC job is large enough to repay compiling), on, off")
    add_device(p)
    add_scheduler(p)
    add_threads(p)
    p.set_defaults(func=run)


def add_selection(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", metavar="SPEC",
                   help="checkpoint steps: all (default), last, a list 0,100,1000, or a range "
                        "100-1000 (every checkpoint inside it)")
    p.add_argument("--instances", metavar="SPEC",
                   help="instances (rows of instances.csv): all (default), or a list/range 0,3,5-9")


def add_hyperparameters(p: argparse.ArgumentParser, grid: bool = False) -> None:
    g = p.add_argument_group("SGLD hyperparameters (default: the run's [llc] section)")
    if not grid:
        g.add_argument("--eps", type=float, help="step size epsilon")
        g.add_argument("--gamma", type=float, help="localization strength")
        g.add_argument("--n-beta", type=float, help="inverse temperature (default N / log N)")
    g.add_argument("--chains", type=int, help="chains per estimate")
    g.add_argument("--draws", type=int, help="recorded draws per chain (after burn-in)")
    g.add_argument("--burnin", type=int, help="SGLD steps discarded at the start of every chain")
    g.add_argument("--batch-size", type=int, help="SGLD minibatch size")
    g.add_argument("--seed", type=int, help="seed of the SGLD noise and minibatch order")
    g.add_argument("--precond", choices=("none", "rmsprop", "curvature"),
                   help="SGLD's preconditioner (batched engine only): none (plain SGLD), rmsprop "
                        "(pSGLD: per-parameter steps eps / (sqrt(mean squared gradient) + 1e-8)) "
                        "or curvature (steps shaped by the Hessian at w*, so that eps is "
                        "dimensionless and carries to another N or model: try eps 0.05)")


def overrides(args: argparse.Namespace) -> dict:
    keys = ("eps", "gamma", "n_beta", "chains", "draws", "burnin", "batch_size", "seed",
            "precond")
    return {k: getattr(args, k, None) for k in keys if getattr(args, k, None) is not None}


def run(args: argparse.Namespace) -> int:
    from devtms import llc
    from devtms.store import LLC_CSV, RunDir
    from devtms.threads import check_threads

    threads = check_threads(args.threads)
    run_dir = RunDir.open(args.run_dir)
    request = llc.build_request(
        run_dir, instances=args.instances, steps=args.steps, engine=args.engine,
        overrides=overrides(args), device=args.device, chunk_size=args.chunk_size,
        compile_setting=args.compile)
    advice = f"llc.csv keeps every finished chunk; compute the rest with `{args.given}`"
    with on_interrupt(lambda: advice), open_executor(args.scheduler) as executor, \
            run_dir.lock("devtms llc"):
        if args.activate:  # first, so that the stage's record counts this setting
            llc.activate(run_dir, request.settings.with_source("devtms llc --activate"))
        summary = llc.run_llc(run_dir, request, executor, threads=threads,
                              check=not args.no_check)
    for note in run_dir.notes:  # repairs of damaged files
        print(f"note: {note}", file=sys.stderr)
    setting = request.settings
    active = llc.active_setting(run_dir)
    where = f" ({summary.executor})" if summary.executor else ""
    print(f"llc, setting {setting.describe()}: {summary.computed} estimated{where}, "
          f"{summary.already_done} already in {args.run_dir / LLC_CSV}")
    print(f"the run's active setting: {active.id}" + (
        " (this one)" if active.id == setting.id else
        f"; pass --activate to make {setting.id} active, or --setting {setting.id} to analyze "
        "and report"))
    if summary.unhealthy:
        print(f"warning: {summary.unhealthy} of {summary.computed} estimate(s) unhealthy "
              f"({summary.state_counts}); see the state and reason columns; "
              "consider `devtms calibrate RUN --auto`", file=sys.stderr)
    if summary.check is not None:
        print(f"self-check (mala): {summary.check.computed} reference estimate(s) computed, "
              f"{summary.check.already_done} already in llc.csv")
    for line in llc.check_lines(run_dir, setting):
        print(line, file=sys.stderr if "BIASED" in line else sys.stdout)
    return 0
