"""devtms activations: the registry as a table."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "activations", help="list the activation variants and their properties",
        description="The 27 activation variants of the activation-function studies (numbered "
                    "as in docs/science.md) and the two controls, with their properties.",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from devtms.activation_properties import PROPERTIES  # not devtms.activations: no torch

    def yes(flag: bool) -> str:
        return "yes" if flag else "-"

    header = (f"{'#':>2}  {'name':<13}{'above':<7}{'below':<7}{'smooth':<8}{'monotone':<10}"
              f"{'features':<10}definition")
    print("bounded above / below, smooth (C^1 everywhere), monotone (non-decreasing in its own "
          "input),\nfeatures: normalises over the feature axis (else elementwise)\n")
    print(header)
    print("-" * (len(header) + 24))
    for i, (name, act) in enumerate(PROPERTIES.items(), start=1):
        number = "" if act.control else str(i)
        print(f"{number:>2}  {name:<13}{yes(act.bounded_above):<7}{yes(act.bounded_below):<7}"
              f"{yes(act.smooth):<8}{yes(act.monotone):<10}{yes(act.over_features):<10}"
              f"{act.definition}")
    return 0
