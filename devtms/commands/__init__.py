"""One module per `devtms` subcommand, each with `register(subparsers)`. See devtms/cli.py.

Each handler wraps the part that writes in `on_interrupt`, so that Ctrl-C ends it with one line
naming the command that continues the work:

    with on_interrupt(lambda: f"llc.csv keeps every finished chunk: `{args.given}` computes the rest"):
        ...
"""

import argparse
import contextlib
import shlex
from collections.abc import Callable, Iterator
from pathlib import Path

from devtms.errors import Interrupted


def add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu",
                        help="torch device for the batched programs: cpu (default) or cuda[:i]")


def add_threads(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threads", type=int, metavar="N",
        help="torch threads in this process (default: 1 while the ops are as small as a "
             "TMS's, where more threads only wait on each other; one per core for large ones). "
             "More cores work through worker processes (--scheduler); results do not depend on "
             "it")


def add_scheduler(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--scheduler", default="auto", metavar="{auto,local,processes,dask,tcp://HOST:PORT}",
        help="where the work runs: auto (default: this process, except LLC jobs of more than "
             "a few seconds, which run in a worker process per core); local (this process "
             "only); processes (a worker process per core for every job but training, whose "
             "shards would change its numbers); dask (a Dask LocalCluster on this machine, one "
             "worker process per core); or the address of a running Dask scheduler, e.g. "
             "tcp://10.0.0.5:8786 from `dask scheduler` with `dask worker` processes on other "
             "machines, or a dask-jobqueue SLURMCluster's scheduler_address (dask needs `pip "
             "install 'devtms[dask]'`; workers need devtms, not the run directory). Results "
             "are the same numbers everywhere")


def open_executor(scheduler: str):
    """The executor --scheduler names (devtms.executors.make_executor), announced on stderr when
    it is not local. Raises UserError (nothing started) for a bad or unreachable scheduler."""
    import sys

    from devtms.executors import LocalExecutor, make_executor

    executor = make_executor(scheduler)
    if not isinstance(executor, LocalExecutor):
        print(f"executor: {executor.label}", file=sys.stderr)
    return executor


@contextlib.contextmanager
def on_interrupt(advice: Callable[[], str]) -> Iterator[None]:
    """Ctrl-C inside the block ends the command with `advice()`: what was kept and the command
    that continues, decided when it happens (from what is on disk then)."""
    try:
        yield
    except KeyboardInterrupt:
        raise Interrupted(advice()) from None


def continue_command(command: str, out: Path, args: argparse.Namespace, *flags: str) -> str:
    """`devtms COMMAND OUT FLAGS`, plus --device, --scheduler and --threads where they are not
    the defaults: the command line that goes on with the run in OUT."""
    words = ["devtms", command, str(out), *flags]
    if getattr(args, "device", "cpu") != "cpu":  # commands without --device run on the CPU
        words += ["--device", args.device]
    if args.scheduler != "auto":
        words += ["--scheduler", args.scheduler]
    if getattr(args, "threads", None) is not None:
        words += ["--threads", str(args.threads)]
    return shlex.join(words)
