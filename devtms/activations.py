"""The activation registry: the 27 variants of the activation-function studies plus two controls.

Every function maps preactivations to outputs with the features on the last axis:
`(..., n)` in, `(..., n)` out. Elementwise variants ignore the axis; "over features"
variants (softmax, solu, log_softmax, softmin, solu_ln) normalise along it, so they act
on each sample of each instance separately, never across the batch or across instances.

Properties, as used in the comparison tables:
- bounded_above / bounded_below: the output range has a finite upper / lower bound
- smooth: continuously differentiable everywhere (C^1), so ReLU is not and ELU(alpha=1) is
- monotone: each output is non-decreasing in its own input (softmin is decreasing: False)

    >>> from devtms.activations import get_activation
    >>> get_activation("gelu").fn(torch.zeros(3))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from devtms.errors import UserError

Tensor = torch.Tensor


@dataclass(frozen=True)
class Activation:
    name: str
    fn: Callable[[Tensor], Tensor]  # (..., n) -> (..., n)
    definition: str
    bounded_above: bool
    bounded_below: bool
    smooth: bool  # C^1 everywhere
    monotone: bool  # non-decreasing in its own input
    over_features: bool  # normalises along the feature axis
    control: bool = False  # not one of the 27 variants: a baseline every comparison wants


def _exp_linear(x: Tensor) -> Tensor:
    # devtms's reading of the study's "Exp linear": e^x below 0, x + 1 above (= ELU(x) + 1).
    # The source gives only the name; this is the continuous, C^1 function that matches it.
    return F.elu(x) + 1.0


def _solu(x: Tensor) -> Tensor:
    # SoLU (Elhage et al. 2022): x * softmax(x) over the features of each sample.
    return x * torch.softmax(x, dim=-1)


def _solu_ln(x: Tensor) -> Tensor:
    # SoLU followed by a LayerNorm over features without learned gain or bias,
    # as the SoLU paper deploys it (the gain and bias would add parameters to the TMS).
    y = _solu(x)
    return F.layer_norm(y, y.shape[-1:])


def _entry(name, fn, definition, above, below, smooth, monotone, over=False, control=False):
    return Activation(name, fn, definition, above, below, smooth, monotone, over, control)


# The order is the numbering of SCIENCE.md section 2; the controls come last.
_ACTIVATIONS: tuple[Activation, ...] = (
    _entry("relu", F.relu, "max(0, x)", False, True, False, True),
    _entry("leaky_relu", F.leaky_relu, "x if x > 0 else 0.01 x", False, False, False, True),
    _entry("selu", F.selu, "torch SELU", False, True, False, True),
    _entry("celu", F.celu, "CELU, alpha 1", False, True, True, True),
    _entry("gelu", F.gelu, "exact (erf) GELU", False, True, True, False),
    _entry("sigmoid", torch.sigmoid, "1 / (1 + e^-x)", True, True, True, True),
    _entry("hardsigmoid", F.hardsigmoid, "torch Hardsigmoid", True, True, False, True),
    _entry("silu", F.silu, "x sigmoid(x) (Swish)", False, True, True, False),
    _entry("hardswish", F.hardswish, "torch Hardswish", False, True, False, False),
    _entry("mish", F.mish, "x tanh(softplus(x))", False, True, True, False),
    _entry("softplus", F.softplus, "log(1 + e^x)", False, True, True, True),
    _entry("tanh", torch.tanh, "tanh(x)", True, True, True, True),
    _entry("hardtanh", F.hardtanh, "clamp(x, -1, 1)", True, True, False, True),
    _entry("elu", F.elu, "ELU, alpha 1", False, True, True, True),
    _entry("hardshrink", F.hardshrink, "x if |x| > 0.5 else 0", False, False, False, True),
    _entry(
        "softmax", lambda x: torch.softmax(x, -1), "softmax over features", True, True, True, True,
        over=True,
    ),
    _entry("solu", _solu, "x * softmax(x) over features", False, True, True, False, over=True),
    _entry(
        "log_softmax", lambda x: torch.log_softmax(x, -1), "log-softmax over features",
        True, False, True, True, over=True,
    ),
    _entry("logsigmoid", F.logsigmoid, "log sigmoid(x)", True, False, True, True),
    _entry("exp", torch.exp, "e^x", False, True, True, True),
    _entry("exp_linear", _exp_linear, "e^x if x < 0 else x + 1 (devtms's reading)",
           False, True, True, True),
    _entry("tanhshrink", F.tanhshrink, "x - tanh(x)", False, False, True, True),
    _entry("relu6", F.relu6, "min(max(0, x), 6)", True, True, False, True),
    _entry("relu_squared", lambda x: F.relu(x).square(), "max(0, x)^2", False, True, True, True),
    _entry("softshrink", F.softshrink, "torch Softshrink, lambda 0.5", False, False, False, True),
    _entry("softsign", F.softsign, "x / (1 + |x|)", True, True, True, True),
    _entry(
        "softmin", lambda x: F.softmin(x, -1), "softmin over features", True, True, True, False,
        over=True,
    ),
    _entry("linear", lambda x: x, "identity (control)", False, False, True, True, control=True),
    _entry("solu_ln", _solu_ln, "LayerNorm(x * softmax(x)) over features (control)",
           True, True, True, False, over=True, control=True),
)

REGISTRY: dict[str, Activation] = {a.name: a for a in _ACTIVATIONS}
VARIANTS: tuple[str, ...] = tuple(a.name for a in _ACTIVATIONS if not a.control)  # the 27
CONTROLS: tuple[str, ...] = tuple(a.name for a in _ACTIVATIONS if a.control)
ALL: tuple[str, ...] = VARIANTS + CONTROLS

# Group names a config may use in place of a list of activations.
GROUPS: dict[str, tuple[str, ...]] = {"variants": VARIANTS, "controls": CONTROLS, "all": ALL}

assert len(VARIANTS) == 27, VARIANTS


def get_activation(name: str) -> Activation:
    """The registry entry for `name`; an unknown name is a user error listing the valid ones."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise UserError(
            f"unknown activation {name!r}; valid: {', '.join(ALL)} "
            f"(or a group: {', '.join(GROUPS)})"
        ) from None


def expand_activation_names(names: list[str]) -> list[str]:
    """Expand group names ("all", "variants", "controls") in order, dropping repeats."""
    expanded: list[str] = []
    for name in names:
        for member in GROUPS.get(name, (name,)):
            get_activation(member)
            if member not in expanded:
                expanded.append(member)
    return expanded


def contiguous_groups(names: list[str]) -> list[tuple[Activation, int, int]]:
    """Runs of equal activation names as (activation, start, stop) slices of the instance axis.

    Batched code applies each activation once per run, so a batch sorted by activation
    costs one call per activation, not one per instance.
    """
    groups: list[tuple[Activation, int, int]] = []
    start = 0
    for i in range(1, len(names) + 1):
        if i == len(names) or names[i] != names[start]:
            groups.append((get_activation(names[start]), start, i))
            start = i
    return groups


def apply_grouped(pre: Tensor, groups: list[tuple[Activation, int, int]]) -> Tensor:
    """Apply each group's activation to its slice of the leading (instance) axis.

    pre: (instances, ..., n) -> (instances, ..., n)
    """
    if len(groups) == 1:
        return groups[0][0].fn(pre)
    return torch.cat([act.fn(pre[start:stop]) for act, start, stop in groups], dim=0)
