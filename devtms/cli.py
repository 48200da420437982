"""The `devtms` command: a thin parser over the stage commands in devtms/commands/.

Each module in devtms/commands/ defines `register(subparsers)`, adding one subcommand whose
handler validates all input before writing anything.

Exit status: 0 success, 2 bad input (one line on stderr, nothing written), 130 interrupted
(one line naming the command that continues the work), 1 when stdout was closed early
(`devtms activations | head`: quietly, as Python's documented recipe for SIGPIPE does).

Handlers get `args.given`, the command line as typed, for the messages that name it.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shlex
import sys
from collections.abc import Sequence

from devtms import __version__
from devtms.errors import Interrupted, UserError

# In the order `devtms --help` lists them.
COMMANDS = ["activations", "train", "llc", "calibrate", "analyze", "report", "study", "bayes"]


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error (exit status 2) instead of a usage dump."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="devtms",
        description="Developmental interpretability for toy models of superposition: train "
                    "27 activation variants as one batched job, estimate the local learning "
                    "coefficient at every checkpoint, analyze geometry and phase transitions, "
                    "and report.",
    )
    parser.add_argument("--version", action="version", version=f"devtms {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    for name in COMMANDS:
        importlib.import_module(f"devtms.commands.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        try:
            return run_command(list(sys.argv[1:] if argv is None else argv))
        finally:
            sys.stdout.flush()  # so that a closed pipe shows here, not at the interpreter's exit
    except BrokenPipeError:
        # The reader went away (`| head`). Python's recipe (docs of the signal module, "Note on
        # SIGPIPE"): send the rest of stdout to devnull, so the exit's flush cannot fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


def run_command(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    args.given = shlex.join(["devtms", *argv])
    try:
        return args.func(args)
    except UserError as e:
        print(f"devtms {args.command}: error: {e}", file=sys.stderr)
        return 2
    except Interrupted as e:  # Ctrl-C where the command says how to go on
        print(f"devtms {args.command}: interrupted; {e}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:  # Ctrl-C before the command wrote anything
        print(f"devtms {args.command}: interrupted before anything was written; run "
              f"`{args.given}` again", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
