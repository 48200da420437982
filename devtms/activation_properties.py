"""The activations' names, groups and properties: the half of the registry that needs no torch.

`devtms activations` lists this table, and configs are validated against it, without importing
torch (a second of start-up); devtms/activations.py adds each activation's function, vjp and
slope, row for row (it checks that both tables name the same activations in the same order).

Properties, as used in the comparison tables:
- bounded_above / bounded_below: the output range has a finite upper / lower bound
- smooth: continuously differentiable everywhere (C^1), so ReLU is not and ELU(alpha=1) is
- monotone: each output is non-decreasing in its own input (softmin is decreasing: False)
- over_features: normalises along the feature axis (else elementwise)
- control: not one of the 27 variants, a baseline every comparison wants

    >>> PROPERTIES["gelu"].smooth
    True
    >>> expand_activation_names(["controls", "relu"])
    ["linear", "solu_ln", "relu"]
"""

from __future__ import annotations

from dataclasses import dataclass

from devtms.errors import UserError


@dataclass(frozen=True)
class Properties:
    definition: str
    bounded_above: bool
    bounded_below: bool
    smooth: bool  # C^1 everywhere
    monotone: bool  # non-decreasing in its own input
    over_features: bool = False  # normalises along the feature axis
    control: bool = False  # not one of the 27 variants


# One row per activation: definition, bounded above, bounded below, smooth, monotone. The order
# is the numbering of docs/science.md; the controls come last.
PROPERTIES: dict[str, Properties] = {
    "relu": Properties("max(0, x)", False, True, False, True),
    "leaky_relu": Properties("x if x > 0 else 0.01 x", False, False, False, True),
    "selu": Properties("torch SELU", False, True, False, True),
    "celu": Properties("CELU, alpha 1", False, True, True, True),
    "gelu": Properties("exact (erf) GELU", False, True, True, False),
    "sigmoid": Properties("1 / (1 + e^-x)", True, True, True, True),
    "hardsigmoid": Properties("torch Hardsigmoid", True, True, False, True),
    "silu": Properties("x sigmoid(x) (Swish)", False, True, True, False),
    "hardswish": Properties("torch Hardswish", False, True, False, False),
    "mish": Properties("x tanh(softplus(x))", False, True, True, False),
    "softplus": Properties("log(1 + e^x)", False, True, True, True),
    "tanh": Properties("tanh(x)", True, True, True, True),
    "hardtanh": Properties("clamp(x, -1, 1)", True, True, False, True),
    "elu": Properties("ELU, alpha 1", False, True, True, True),
    "hardshrink": Properties("x if |x| > 0.5 else 0", False, False, False, True),
    "softmax": Properties("softmax over features", True, True, True, True,
                          over_features=True),
    "solu": Properties("x * softmax(x) over features", False, True, True, False,
                       over_features=True),
    "log_softmax": Properties("log-softmax over features", True, False, True, True,
                              over_features=True),
    "logsigmoid": Properties("log sigmoid(x)", True, False, True, True),
    "exp": Properties("e^x", False, True, True, True),
    "exp_linear": Properties("e^x if x < 0 else x + 1 (devtms's reading)", False, True, True, True),
    "tanhshrink": Properties("x - tanh(x)", False, False, True, True),
    "relu6": Properties("min(max(0, x), 6)", True, True, False, True),
    "relu_squared": Properties("max(0, x)^2", False, True, True, True),
    "softshrink": Properties("torch Softshrink, lambda 0.5", False, False, False, True),
    "softsign": Properties("x / (1 + |x|)", True, True, True, True),
    "softmin": Properties("softmin over features", True, True, True, False,
                          over_features=True),
    "linear": Properties("identity (control)", False, False, True, True, control=True),
    "solu_ln": Properties("LayerNorm(x * softmax(x)) over features (control)", True, True, True,
                          False, over_features=True, control=True),
}

VARIANTS: tuple[str, ...] = tuple(n for n, p in PROPERTIES.items() if not p.control)  # the 27
CONTROLS: tuple[str, ...] = tuple(n for n, p in PROPERTIES.items() if p.control)
ALL: tuple[str, ...] = VARIANTS + CONTROLS

# Group names a config may use in place of a list of activations.
GROUPS: dict[str, tuple[str, ...]] = {"variants": VARIANTS, "controls": CONTROLS, "all": ALL}

assert len(VARIANTS) == 27, VARIANTS


def check_name(name: str) -> str:
    """`name` if it is an activation; an unknown name is a user error listing the valid ones."""
    if name not in PROPERTIES:
        raise UserError(
            f"unknown activation {name!r}; valid: {', '.join(ALL)} "
            f"(or a group: {', '.join(GROUPS)})"
        )
    return name


def expand_activation_names(names: list[str]) -> list[str]:
    """Expand group names ("all", "variants", "controls") in order, dropping repeats."""
    expanded: list[str] = []
    for name in names:
        for member in GROUPS.get(name, (name,)):
            if check_name(member) not in expanded:
                expanded.append(member)
    return expanded
