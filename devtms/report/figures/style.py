"""The house style: matplotlib settings, and one colour and marker per activation.

- `RC`: the rcParams every figure is drawn and saved with. They are applied with
  `matplotlib.rc_context(RC)` around each figure builder (`@styled`) and around saving
  (devtms.report.figures.render), never globally: importing devtms changes no matplotlib state.
- one colour and one marker per activation, fixed by name (`style(name)`), grouped by family
  (`FAMILIES`): each family has one hue, its members shades of it; seeds of one activation
  share its colour and differ by line style (`SEED_DASHES`); in a figure of several
  conditions that differ in more than the activation (sparsity, importance ratio, ...), the
  marker and line style name those (`condition_styles`);
- transitions: vertical lines coloured by kind (`EVENT_STYLE`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, ParamSpec, TypeVar

import matplotlib
import numpy as np
from matplotlib import colormaps
from matplotlib.colors import to_hex, to_rgb

RC = {
    "font.size": 9, "axes.titlesize": 9.5, "axes.labelsize": 9, "xtick.labelsize": 8,
    "ytick.labelsize": 8, "legend.fontsize": 8, "figure.titlesize": 12, "axes.spines.top": False,
    "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.25, "grid.linewidth": 0.6,
    "pdf.fonttype": 42, "ps.fonttype": 42, "svg.fonttype": "none", "figure.dpi": 100,
    "axes.titlelocation": "left",
}

P = ParamSpec("P")
R = TypeVar("R")


def styled(build: Callable[P, R]) -> Callable[P, R]:
    """Run a figure builder inside `rc_context(RC)`: the style reaches every artist it creates
    and is undone when it returns."""

    @functools.wraps(build)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with matplotlib.rc_context(RC):
            return build(*args, **kwargs)

    return wrapper


# family -> (colormap, members, in docs/science.md order within the family)
FAMILIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "ReLU-like": ("Blues", ("relu", "leaky_relu", "relu6", "relu_squared", "hardswish")),
    "smooth ReLU-like": ("Greens", ("gelu", "silu", "mish", "softplus", "elu", "celu", "selu")),
    "sigmoid/tanh-like": ("Oranges", ("sigmoid", "hardsigmoid", "tanh", "hardtanh", "softsign",
                                      "logsigmoid")),
    "shrink": ("Purples", ("hardshrink", "softshrink", "tanhshrink")),
    "softmax family": ("RdPu", ("softmax", "solu", "log_softmax", "softmin")),
    "exp family": ("Reds", ("exp", "exp_linear")),
    "controls": ("Greys", ("linear", "solu_ln")),
}
MARKERS = ("o", "s", "^", "D", "v", "P", "X")
SEED_DASHES = ("-", "--", ":", "-.", (0, (5, 1, 1, 1)), (0, (1, 1)), (0, (8, 2)),
               (0, (3, 1, 1, 1, 1, 1)))
EVENT_STYLE = {
    "loss_drop": dict(color="black", ls="-", lw=1.0),
    "llc": dict(color="#c0392b", ls="-", lw=1.1),
    "geometry": dict(color="#7b3294", ls="-", lw=0.8),
}
BIAS_COLOR = {"+": "#c0392b", "-": "#2166ac", "o": "#777777"}  # by devtms.geometry.bias_mark
DIVERGED_COLOR = "#c0392b"


@dataclass(frozen=True)
class Style:
    color: str
    marker: str
    family: str
    dash: str | tuple = "-"  # line style of a condition's curve (condition_styles)


def _build_styles() -> dict[str, Style]:
    styles = {}
    for family, (cmap, members) in FAMILIES.items():
        shades = np.linspace(0.92, 0.5, len(members)) if len(members) > 1 else [0.8]
        for i, name in enumerate(members):
            styles[name] = Style(to_hex(colormaps[cmap](shades[i])), MARKERS[i % len(MARKERS)],
                                 family)
    styles["linear"] = Style("#222222", "o", "controls")
    styles["solu_ln"] = Style("#8c8c8c", "s", "controls")
    return styles


STYLES = _build_styles()
FAMILY_ORDER = [name for _, members in FAMILIES.values() for name in members]


def style(activation: str) -> Style:
    """The fixed colour, marker and family of an activation (grey for an unknown name)."""
    return STYLES.get(activation, Style("#999999", "o", "other"))


# Line styles of the variants of a condition (sparsity, importance ratio, ...) in
# cross-condition figures; markers are MARKERS.
VARIANT_DASHES = ("-", "--", ":", "-.", (0, (5, 1, 1, 1)), (0, (1, 1)), (0, (8, 2)))


def condition_styles(panels: Sequence[Any]) -> dict[str, Style]:
    """The style of each condition (Panel.key) in a figure that shows several at once.

    Colour: the activation's. Where the conditions differ in more than their activation
    (Panel.variant: sparsity, importance ratio, ...), the marker and line style tell the
    variants apart, the same for every activation (S=0.9 has one marker throughout); else the
    activation's own marker. panels: Panel (key, activation, variant)."""
    variants = list(dict.fromkeys(p.variant for p in panels))
    out = {}
    for p in panels:
        st = style(p.activation)
        if len(variants) > 1:
            i = variants.index(p.variant)
            st = replace(st, marker=MARKERS[i % len(MARKERS)],
                         dash=VARIANT_DASHES[i % len(VARIANT_DASHES)])
        out[p.key] = st
    return out


def activation_order(names: Sequence[str]) -> list[str]:
    """Names sorted by family, then as listed in FAMILIES; unknown names last."""
    rank = {n: i for i, n in enumerate(FAMILY_ORDER)}
    return sorted(dict.fromkeys(names), key=lambda n: (rank.get(n, len(rank)), n))


def seed_dash(i: int) -> str | tuple:
    return SEED_DASHES[i % len(SEED_DASHES)]


def feature_colors(n: int) -> list[str]:
    """Categorical colours for the n features of a polygon plot."""
    cmap = colormaps["tab10"] if n <= 10 else colormaps["turbo"]
    return [to_hex(cmap(i if n <= 10 else i / max(n - 1, 1))) for i in range(n)]


def title_color(color: str) -> str:
    """Titles in an activation's colour, darkened if too light to read on white."""
    r, g, b = to_rgb(color)
    lum = 0.2126 * r + 0.7152 * g + 0.0722 * b
    return to_hex((r * 0.6, g * 0.6, b * 0.6)) if lum > 0.45 else color
