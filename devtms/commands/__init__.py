"""One module per `devtms` subcommand, each with `register(subparsers)`. See devtms/cli.py."""

import argparse


def add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu",
                        help="torch device for the batched programs: cpu (default) or cuda[:i]")
