"""devtms train: a config or preset into a run directory, resumable."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from devtms.commands import (
    add_device,
    add_scheduler,
    add_threads,
    continue_command,
    on_interrupt,
    open_executor,
)
from devtms.errors import UserError

if TYPE_CHECKING:
    from devtms.store import RunDir

DEFAULT_RUNS = Path("runs")

EPILOG = """\
examples:
  devtms train quick                      # a packaged preset, into runs/quick
  devtms train my_study.toml --out runs/s1
  devtms train quick --resume             # continue an interrupted run in runs/quick
  devtms train runs/quick --resume        # the same, naming the run directory
  devtms train longer.toml --out runs/s1 --resume   # extend runs/s1 to more train.steps

presets: {presets}

A run trains every combination activation x sparsity x importance_ratio x seed as one
batched job and saves all instances at each checkpoint step (log-spaced and/or linear).
Write your own config by copying a preset from devtms/presets/: it needs [model], [data] and
[train]. Set TQDM_DISABLE=1 to silence progress bars.

Extending a run: a config that differs from the run's only in more train.steps, with --resume,
trains on from the run's last step; the steps already trained keep their checkpoints and the
longer schedule's follow. The learning rate: only lr_schedule = "constant" extends, and then
the run equals the longer run trained in one go, bit for bit; "linear" and "cosine" decay to 0
over train.steps, so extending would change the rates of steps already trained: refused (as is
any other change). llc and analyze then add the new checkpoints.

On Dask (--scheduler), training runs as shards of train.shard_size instances, one task per
shard per checkpoint interval; set train.shard_size in the config (e.g. instances / workers)
to train shards in parallel. The shards, not the scheduler, fix the numbers: a run with
shard_size 4 gives the same bits locally and on any cluster (one with shard_size 0, all
instances in one batch, may differ from it in the last float32 digits).

Long runs of many activations (train.compile = "auto": >= 10,000 steps and >= 4 activations)
fuse each step's elementwise work with torch.compile: about 30 s of compiling on the first
run (a few seconds once torch's cache holds it), then steps 3-4x faster. Set train.compile
to "on" or "off" to decide yourself; run.json records which was used.
"""


def register(sub: argparse._SubParsersAction) -> None:
    from devtms.config import preset_names

    p = sub.add_parser(
        "train", help="train a config or preset into a run directory",
        description="Train every instance of a config as one batched job, checkpointing on a "
                    "schedule into a run directory (run.json, instances.csv, checkpoints/, "
                    "train_log.csv).",
        epilog=EPILOG.format(presets=", ".join(preset_names())),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", metavar="CONFIG_OR_PRESET",
                   help="a TOML file, a preset name, or (with --resume) a run directory")
    p.add_argument("--out", type=Path, help="run directory (default: runs/<config name>)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from its last good checkpoint (every "
                        "checkpoint is verified; damaged ones are retrained), or extend it to "
                        "the larger train.steps of CONFIG (see below)")
    p.add_argument("--force", action="store_true", help="replace an existing run in --out")
    add_device(p)
    add_scheduler(p)
    add_threads(p)
    p.set_defaults(func=run)


def prepare_run_dir(config_arg: str, out: Path | None, resume: bool, force: bool):
    """Validate the config (or existing run) and the output directory; writes nothing.

    CONFIG_OR_PRESET may also be an existing run directory, which is then resumed (or, with
    --force, retrained from scratch with its own config). With --resume, a config that differs
    from the run's only in more train.steps extends the run (devtms.train.extension_problem).
    -> (config, out, action) with action "create", "replace", "resume" or "extend".
    """
    from devtms.config import load_config
    from devtms.store import RUN_JSON, RunDir, check_writable, is_unfinished_creation

    if resume and force:
        raise UserError("--resume and --force contradict each other: pick one")
    given = Path(config_arg)
    if given.is_dir() and (given / RUN_JSON).is_file():
        if out is not None and out.resolve() != given.resolve():
            raise UserError(f"{given} is a run directory; --out {out} would be a second one")
        if not (resume or force):
            raise UserError(f"{given} is a run directory: pass --resume to continue it or "
                            "--force to retrain it from scratch")
        run = RunDir.open(given)
        return run.config, given, "replace" if force else "resume"
    config = load_config(config_arg)
    out = out if out is not None else DEFAULT_RUNS / config.name
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")
    check_writable(out, f"--out {out}")
    is_run = (out / RUN_JSON).is_file()
    if out.is_dir() and not is_run and not is_unfinished_creation(out):
        raise UserError(f"--out {out} is a non-empty directory that is not a devtms run; "
                        "refusing to write into it")
    if not is_run:
        return config, out, "create"
    if force:
        return config, out, "replace"
    run = RunDir.open(out)
    if run.config != config:
        from devtms.train import extension_problem

        problem = extension_problem(run.config, config)
        if problem is not None:
            raise UserError(f"{out} {problem}")
        if not resume:
            raise UserError(f"{out} holds this run trained to {run.config.train.steps} steps; "
                            f"pass --resume to extend it to {config.train.steps}, or --force to "
                            "replace it")
        return config, out, "extend"
    if not resume:
        state = "complete" if run.stage_done("train") else "interrupted"
        raise UserError(f"{out} already holds a run ({state}); pass --resume to continue it "
                        "or --force to replace it")
    return config, out, "resume"


def open_run_dir(out: Path, config, action: str, scheduler: str) -> RunDir:
    """The run directory `prepare_run_dir` decided on: opened to resume, or (re)created; says
    when a scheduler cannot parallelize training (the caller holds the run lock)."""
    from devtms.config import instance_table
    from devtms.store import RunDir
    from devtms.train import extend_run

    if action == "replace":
        clear_run_dir(out)
    if action in ("resume", "extend"):
        run_dir = RunDir.open(out)
        if action == "extend" and run_dir.config != config:  # (not already, by another)
            extend_run(run_dir, config)
    else:
        run_dir = RunDir.create(out, config, instance_table(config))
    note = shard_note(config, scheduler, len(run_dir.instances))
    if note and not run_dir.stage_done("train"):
        print(note, file=sys.stderr)
    return run_dir


class ResumeAdvice:
    """What Ctrl-C during `devtms train` or `study` says. Once this process has opened the run
    it trains (`opened`), or a run of this config exists in `out`: `resume`, the command that
    continues it. Before that, the command as given: it makes the run afresh (or, extending,
    extends the unchanged run).

        advice = ResumeAdvice(args, out, action, "devtms train runs/x --resume")
        with on_interrupt(advice): ...
    """

    def __init__(self, args: argparse.Namespace, out: Path, action: str, resume: str):
        self.given, self.out, self.action, self.resume = args.given, out, action, resume
        self.opened = action == "resume"

    def __call__(self) -> str:
        from devtms.store import RUN_JSON

        # "replace" and "extend" wait for `opened`: until then run.json is the old run's
        if self.opened or (self.action == "create" and (self.out / RUN_JSON).is_file()):
            return f"everything written is kept; continue with `{self.resume}`"
        if self.action == "extend":
            return f"the run is as it was; extend it with `{self.given}`"
        return f"nothing was trained yet; start again with `{self.given}`"


def clear_run_dir(path: Path) -> None:
    """Remove a run directory's contents (called only on a directory holding run.json).

    run.json goes last: a kill part way leaves a run that says what it is (and that --force
    clears again), never a directory no command recognises."""
    from devtms.store import RUN_JSON

    children = sorted(path.iterdir(), key=lambda child: child.name == RUN_JSON)
    for child in children:
        if child.name == ".lock":
            continue
        if child.is_dir():
            shutil.rmtree(child)
        else:
            child.unlink()


def shard_note(config, scheduler: str, n_instances: int) -> str | None:
    """A note for training on workers without shards (it would run as one task at a time)."""
    if scheduler in ("auto", "local") or config.train.shard_size:
        return None
    return (f"note: train.shard_size is 0, so the {n_instances} instances train as one task per "
            "checkpoint interval on one worker; set train.shard_size in the config (e.g. "
            "instances / workers) to train shards in parallel")


def run(args: argparse.Namespace) -> int:
    from devtms.options import check_device
    from devtms.store import lock_dir
    from devtms.threads import check_threads
    from devtms.train import train_run

    config, out, action = prepare_run_dir(args.config, args.out, args.resume, args.force)
    device = check_device(args.device)  # before anything is written
    threads = check_threads(args.threads)
    advice = ResumeAdvice(args, out, action, continue_command("train", out, args, "--resume"))
    with on_interrupt(advice), open_executor(args.scheduler) as executor, \
            lock_dir(out, "devtms train"):
        run_dir = open_run_dir(out, config, action, args.scheduler)
        advice.opened = True
        trained = train_run(run_dir, device=device, executor=executor, threads=threads)
    for note in run_dir.notes:  # repairs of damaged files
        print(f"note: {note}", file=sys.stderr)
    if trained == 0:
        print(f"{out}: training already complete ({config.train.steps} steps; checkpoints verified)")
        return 0
    diverged = run_dir.stage("train").get("diverged", [])
    print(f"trained {len(run_dir.instances)} instances for {config.train.steps} steps -> {out}")
    if diverged:
        shown = ", ".join(map(str, diverged[:20])) + (" ..." if len(diverged) > 20 else "")
        print(f"warning: {len(diverged)} instance(s) diverged (non-finite weights; flagged in "
              f"run.json and the report): {shown}", file=sys.stderr)
    return 0
