"""devtms study: train -> llc -> analyze -> report in one resumable command."""

from __future__ import annotations

import argparse
import sys
import time
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
from devtms.commands.analyze import add_setting

if TYPE_CHECKING:
    from devtms.config import RunConfig

DESCRIPTION = """\
Run a whole study on a config or preset: train every instance, estimate the LLC at every
checkpoint, analyze geometry and phase transitions, and write the HTML report.

Each stage skips what is already done, so the command resumes after any interruption (run it
again) and is cheap to re-run: a finished study only re-renders its report. The run directory
holds everything (see README: the run directory).
"""

EPILOG = """\
examples:
  devtms study quick                         # all 27 variants + 2 controls, a few minutes on 2 cores
  devtms study chen2023 --out runs/chen      # k-gon transitions of Chen et al. 2023, 16 seeds
  devtms study my_study.toml
  devtms study runs/quick                    # continue (or re-report) an existing run
  devtms study longer.toml --out runs/quick  # extend it to more train.steps (devtms train --help)
  devtms study quick --scheduler dask        # train shards and LLC chunks on a LocalCluster

The stages separately: devtms train, devtms llc, devtms analyze, devtms report. The LLC stage
computes the run's active LLC setting (the config's [llc] section until `devtms calibrate RUN
--auto` replaces it); analyze and report read it, or the setting --setting names.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "study", help="train -> llc -> analyze -> report in one resumable command",
        description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", metavar="CONFIG_OR_PRESET",
                   help="a TOML file, a preset name, or an existing run directory")
    p.add_argument("--out", type=Path, help="run directory (default: runs/<config name>)")
    p.add_argument("--force", action="store_true",
                   help="replace an existing run in --out and start over")
    add_setting(p)
    add_device(p)
    add_scheduler(p)
    add_threads(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from devtms.commands.train import ResumeAdvice, open_run_dir, prepare_run_dir
    from devtms.options import check_device
    from devtms.store import lock_dir
    from devtms.study import run_study
    from devtms.threads import check_threads

    config, out, action = prepare_run_dir(args.config, args.out, resume=not args.force,
                                          force=args.force)
    if args.setting and action in ("create", "replace"):
        check_new_run_setting(args.setting, config, out)
    device = check_device(args.device)
    threads = check_threads(args.threads)
    start = time.perf_counter()
    setting = ["--setting", args.setting] if args.setting else []
    advice = ResumeAdvice(args, out, action, continue_command("study", out, args, *setting))
    with on_interrupt(advice), open_executor(args.scheduler) as executor, \
            lock_dir(out, "devtms study"):
        run_dir = open_run_dir(out, config, action, args.scheduler)
        advice.opened = True
        print(f"study {config.name}: {len(run_dir.instances)} instances -> {out}")
        result = run_study(run_dir, device=device, executor=executor, llc_setting=args.setting,
                           threads=threads)
    for note in run_dir.notes:  # repairs of damaged files
        print(f"note: {note}", file=sys.stderr)
    print(f"done in {time.perf_counter() - start:.0f} s; open {result.report}")
    return 0


def check_new_run_setting(setting_id: str, config: RunConfig, out: Path) -> None:
    """--setting on a run this study starts: only the config's own setting can exist once the
    LLC stage has run, so any other id fails here, before anything is written (an existing
    run's ids are checked against its llc.csv by run_study)."""
    from devtms.errors import UserError
    from devtms.llc.active import config_settings

    own = config_settings(config).id
    if setting_id != own:
        raise UserError(f"--setting {setting_id!r} names no setting of {out}, a new run: its "
                        f"LLC stage computes the config's setting, {own}")
