"""devtms bayes: the posterior's k-gon phases as N grows, predicted and sampled, beside SGD's."""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

from devtms.commands import (
    add_scheduler,
    add_threads,
    continue_command,
    on_interrupt,
    open_executor,
)
from devtms.errors import UserError

DESCRIPTION = """\
Chen et al. 2023's second question on a trained run: which k-gon phase dominates the Bayesian
posterior as the number of training samples N grows, and does that journey match the one SGD
takes in training?

1. free energy: for each phase training reaches (a k-gon label held on a plateau of the run,
   e.g. 4++, 5+, 6), its loss and LLC give F_N = N L + lambda log N; the phase of least F_N
   dominates. With ReLU and single-feature data the loss is exact (the regular k-gon critical
   point, built and fitted) and the LLC is estimated at that point at the run's active LLC
   setting; otherwise both come from the run's plateaus. Crossovers N* carry the range that
   one standard error of the LLC gap moves them over.
2. posterior: at each N of --grid, a training set of N samples and the posterior
   exp(-N L_N(w)) x Normal(0, 1/gamma) prior, sampled by replica-exchange SGLD (a ladder of
   temperatures from beta N = --hot-n down to beta = 1, batched over rungs x chains), from
   --chains chains started in each phase and as many random ones; the beta = 1 draws after
   burn-in are classified by their k-gon. Chains from different starts must agree (a
   permutation test over chains, p >= 0.01) for an occupancy to be the posterior's.
3. side by side: the three journeys (predicted, sampled, SGD) per phase.
"""

EPILOG = """\
what it writes into RUN_DIR/bayes/:
  phases.csv              each phase: the run's plateau loss and LLC, the critical point's
                          exact loss and estimated LLC, the parameter count, what F_N uses
  free_energy.csv         F_N of every phase over N = 10 .. 1e5
  occupancy.csv           N, k_gon_label, fraction of the draws, chains (majority label)
  occupancy_by_start.csv  the same per starting phase;  mixing.csv: whether starts agree
  crossovers.csv          from_phase, to_phase, n_star_free_energy, n_star_low, n_star_high,
                          n_star_sampled (+ how it was found, whether the chains agreed),
                          n_star_count (with the parameter count's LLCs), found_by
  sequences.csv           each phase's place in the predicted, sampled and SGD journeys
  sgd_fractions.csv       the share of seeds in each k-gon at every checkpoint
  bayes.png, bayes.pdf    the three journeys side by side (also in `devtms report`)
  posterior/N_<N>.json    each N's classified draws: a rerun skips the N already sampled

Needs a run with m = 2 that has been through `devtms study` (or train, llc and analyze).
Kill it at any time: each N is saved when it finishes and the same command resumes.

examples:
  devtms bayes chen2023                       # the run of `devtms study chen2023`
  devtms bayes runs/chen2023 --grid 100,300,1000,3000
  devtms bayes runs/quick --activation gelu --chains 4 --steps 3000
"""


# The sampler's options: (flag, SamplerSettings field, type, help, the allowed values' test and
# their description). register, settings_from and the continue command all read this table.
SAMPLER_OPTIONS = [
    ("--chains", "chains", int, "chains per starting phase", lambda v: v >= 1, ">= 1"),
    ("--steps", "steps", int, "SGLD steps per chain, burn-in included", lambda v: v >= 1,
     ">= 1"),
    ("--burnin", "burnin", int, "steps before the draws are classified", lambda v: v >= 0,
     ">= 0 and < --steps"),
    ("--eps", "eps", float, "step size x n_beta: each rung steps eps / (beta N)",
     lambda v: math.isfinite(v) and v > 0, "> 0"),
    ("--gamma", "gamma", float, "precision of the Normal prior on every parameter",
     lambda v: math.isfinite(v) and v > 0, "> 0"),
    ("--batch-size", "batch_size", int, "minibatch of the SGLD gradient", lambda v: v >= 1,
     ">= 1"),
    ("--hot-n", "hot_n", float, "beta N of the hottest rung",
     lambda v: math.isfinite(v) and v > 1, "> 1"),
    ("--rung-ratio", "rung_ratio", float, "largest beta ratio between neighbouring rungs",
     lambda v: math.isfinite(v) and v > 1, "> 1"),
    ("--seed", "seed", int, "seed of the data, the starts and the noise", lambda v: True, ""),
]


def register(sub: argparse._SubParsersAction) -> None:
    from devtms.bayes.settings import DEFAULT_GRID, SamplerSettings

    defaults = SamplerSettings().to_dict()
    p = sub.add_parser(
        "bayes", help="the posterior's k-gon phases as N grows, beside SGD's (Chen et al. 2023)",
        description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("target", metavar="RUN_OR_CONFIG",
                   help="a run directory, or the config / preset it was made from (its run is "
                        "runs/<config name>, or --out)")
    p.add_argument("--out", type=Path, help="the run directory of a config (default: "
                                             "runs/<config name>)")
    p.add_argument("--activation", help="the activation whose instances are studied (default: "
                                        "relu when the run has it, else its first)")
    p.add_argument("--grid", default=",".join(map(str, DEFAULT_GRID)), metavar="LIST",
                   help="the training-set sizes N to sample, comma-separated integers > 1 "
                        "(default %(default)s)")
    for flag, field, kind, text, _, _ in SAMPLER_OPTIONS:
        p.add_argument(flag, type=kind, default=defaults[field], dest=field,
                       help=f"{text} (default {defaults[field]:g})")
    add_scheduler(p)
    add_threads(p)
    p.set_defaults(func=run)


def parse_grid(text: str) -> list[int]:
    try:
        grid = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise UserError(f"--grid {text!r}: expected comma-separated integers, e.g. "
                        "100,300,1000") from None
    if not grid:
        raise UserError("--grid is empty: give at least one N, e.g. --grid 100,1000")
    if grid[0] <= 1:
        raise UserError(f"--grid {text}: every N must be > 1 (log N is the LLC's weight)")
    return grid


def settings_from(args: argparse.Namespace):
    from devtms.bayes.settings import SamplerSettings

    for flag, field, _, _, ok, allowed in SAMPLER_OPTIONS:
        value = getattr(args, field)
        if not ok(value) or (field == "burnin" and value >= args.steps):
            raise UserError(f"{flag} {value}: must be {allowed}")
    return SamplerSettings(**{field: getattr(args, field) for _, field, *_ in SAMPLER_OPTIONS})


def resolve_run(target: str, out: Path | None) -> Path:
    """A run directory, or a config / preset's run directory (which must exist)."""
    from devtms.commands.train import DEFAULT_RUNS
    from devtms.config import load_config
    from devtms.store import RUN_JSON

    given = Path(target)
    if given.is_dir():
        if out is not None and out.resolve() != given.resolve():
            raise UserError(f"{given} is a directory; --out {out} would name a second run")
        return given
    config = load_config(target)
    path = out if out is not None else DEFAULT_RUNS / config.name
    if not (path / RUN_JSON).is_file():
        raise UserError(f"{path} is not a run yet: make it with `devtms study {target}"
                        f"{'' if out is None else f' --out {out}'}` first")
    return path


def check_run(run, activation: str | None) -> str:
    """The activation studied; raises UserError for a run bayes cannot use. Writes nothing."""
    from devtms.bayes.stage import study_inputs

    cfg = run.config
    if cfg.model.n_hidden != 2:
        raise UserError(f"{run.path}: bayes needs m = 2 hidden dimensions (k-gons), this run "
                        f"has m = {cfg.model.n_hidden}")
    if not run.stage_done("train"):
        raise UserError(f"{run.path}: training is not complete; finish it with `devtms study "
                        f"{run.path}` first")
    names = list(dict.fromkeys(run.instances["activation"]))
    chosen = activation or ("relu" if "relu" in names else names[0])
    if chosen not in names:
        raise UserError(f"--activation {chosen}: the run has {', '.join(names)}")
    conditions = run.instances[run.instances["activation"] == chosen][
        ["sparsity", "importance_ratio"]].drop_duplicates()
    if len(conditions) > 1:
        raise UserError(f"{run.path}: {chosen} has {len(conditions)} conditions (sparsity x "
                        "importance ratio); bayes studies one: make a run of one")
    try:
        study_inputs(run, chosen)
    except ValueError as e:
        raise UserError(str(e)) from None
    return chosen


def run(args: argparse.Namespace) -> int:
    from devtms.bayes.stage import run_bayes
    from devtms.report.bayes import write_stage_figure
    from devtms.store import RunDir
    from devtms.threads import check_threads, threads_for, torch_threads

    grid = parse_grid(args.grid)
    settings = settings_from(args)
    threads = threads_for(0, check_threads(args.threads))  # a ladder's ops are small
    path = resolve_run(args.target, args.out)
    run_dir = RunDir.open(path)
    activation = check_run(run_dir, args.activation)
    start = time.perf_counter()
    advice = ("every N sampled is kept in bayes/posterior/; "
              f"`{continue_command('bayes', path, args, *_flags(args))}` samples the rest")
    with on_interrupt(lambda: advice), open_executor(args.scheduler) as executor, \
            run_dir.lock("devtms bayes"), torch_threads(threads):
        summary = run_bayes(run_dir, activation, grid, settings, executor)
        figure = write_stage_figure(run_dir)
    print_summary(run_dir, summary, figure, time.perf_counter() - start)
    return 0


def _flags(args: argparse.Namespace) -> list[str]:
    """The options given that change what is sampled, for the continue command."""
    from devtms.bayes.settings import DEFAULT_GRID, SamplerSettings

    defaults = SamplerSettings().to_dict()
    words = [] if args.activation is None else ["--activation", args.activation]
    if args.grid != ",".join(map(str, DEFAULT_GRID)):
        words += ["--grid", args.grid]
    for flag, field, *_ in SAMPLER_OPTIONS:
        if getattr(args, field) != defaults[field]:
            words += [flag, str(getattr(args, field))]
    return words


def print_summary(run_dir, summary, figure: Path, seconds: float) -> None:
    import pandas as pd

    from devtms import store

    out = run_dir.path / store.BAYES_DIR
    phases = pd.read_csv(out / store.BAYES_PHASES, dtype={"k_gon_label": str})
    print(f"phases training reaches ({len(phases)}):")
    for p in phases.itertuples(index=False):
        count = "" if math.isnan(p.llc_count) else f", count {p.llc_count:g}"
        print(f"  {p.k_gon_label:6s} loss {p.loss:.4f}  LLC {p.llc:.2f} ± {p.llc_sem:.2f}"
              f"{count}  ({p.source})")
    cross = pd.read_csv(out / store.BAYES_CROSSOVERS, dtype={"from_phase": str, "to_phase": str})
    print("crossovers N* (predicted with the estimated LLCs [± 1 se of their gap]; with the "
          "parameter count; sampled):")
    for c in cross.itertuples(index=False):
        predicted = ("—" if math.isnan(c.n_star_free_energy) else
                     f"{c.n_star_free_energy:.0f} [{c.n_star_low:.0f}, {c.n_star_high:.0f}]")
        count = "—" if math.isnan(c.n_star_count) else f"{c.n_star_count:.0f}"
        sampled = (f"{c.n_star_sampled:.0f}" if not math.isnan(c.n_star_sampled)
                   else c.sampled)
        print(f"  {c.from_phase:>5s} -> {c.to_phase:5s} predicted {predicted}; count {count}; "
              f"sampled {sampled}")
    mixing = pd.read_csv(out / store.BAYES_MIXING)
    bad = mixing[~mixing["agree"].astype(bool)]["N"].tolist()
    print("chains from different starts agree at every N" if not bad else
          f"chains from different starts disagree at N = {', '.join(map(str, bad))} "
          "(there the occupancy is not the posterior's: more --steps, a smaller --rung-ratio)")
    where = f" in {summary.executor}" if summary.executor else ""
    print(f"{summary.sampled} N sampled{where}, {summary.already_done} already done, in "
          f"{seconds:.0f} s; wrote {out}/ ({figure.name})")
