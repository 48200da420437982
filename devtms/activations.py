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

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from devtms.errors import UserError

Tensor = torch.Tensor


# vjp(grad_out, pre, out) -> grad_pre: the activation's vector-Jacobian product, so batched
# code can form gradients without building an autograd graph per activation group. Most use
# torch's own backward kernels (the ones autograd would call); None means: ask autograd.
Vjp = Callable[[Tensor, Tensor, Tensor], Tensor]


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
    vjp_fn: Vjp | None = None

    def vjp(self, grad_out: Tensor, pre: Tensor, out: Tensor) -> Tensor:
        """d<grad_out, fn(pre)>/d pre, with out = fn(pre) already computed."""
        if self.vjp_fn is not None:
            return self.vjp_fn(grad_out, pre, out)
        with torch.enable_grad():
            leaf = pre.detach().requires_grad_(True)
            return torch.autograd.grad(self.fn(leaf), leaf, grad_out)[0]

    def traceable_vjp(self, grad_out: Tensor, pre: Tensor, out: Tensor) -> Tensor:
        """The same product in plain tensor ops, for torch.compile: grad_out * f'(pre) from
        `ELEMENTWISE_SLOPES` for an elementwise activation, else `vjp` (whose over-features
        vjps are plain ops already)."""
        slope = ELEMENTWISE_SLOPES.get(self.name)
        if slope is not None and not self.over_features:
            return grad_out * slope(pre, out)
        return self.vjp(grad_out, pre, out)


_aten = torch.ops.aten
_SELU_ALPHA, _SELU_SCALE = 1.6732632423543772, 1.0507009873554805  # torch's constants


def _softmax(x: Tensor) -> Tensor:
    # The same function as torch.softmax(x, -1), written out: torch's kernel is several times
    # slower when the feature axis is as short as a TMS's (n ~ 5-20).
    e = (x - x.amax(-1, keepdim=True)).exp()
    return e / e.sum(-1, keepdim=True)


def _softmax_vjp(g: Tensor, s: Tensor) -> Tensor:
    """VJP of softmax given its output s."""
    return s * (g - (g * s).sum(-1, keepdim=True))


def _log_softmax(x: Tensor) -> Tensor:
    shifted = x - x.amax(-1, keepdim=True)
    return shifted - shifted.exp().sum(-1, keepdim=True).log()


def _exp_linear(x: Tensor) -> Tensor:
    # devtms's reading of the study's "Exp linear": e^x below 0, x + 1 above (= ELU(x) + 1).
    # The source gives only the name; this is the continuous, C^1 function that matches it.
    return F.elu(x) + 1.0


def _solu(x: Tensor) -> Tensor:
    # SoLU (Elhage et al. 2022): x * softmax(x) over the features of each sample.
    return x * _softmax(x)


def _solu_vjp(g: Tensor, x: Tensor, out: Tensor) -> Tensor:
    return _solu_vjp_given(g, x, _softmax(x))


def _solu_vjp_given(g: Tensor, x: Tensor, s: Tensor) -> Tensor:
    """VJP of solu given s = softmax(x)."""
    return g * s + _softmax_vjp(g * x, s)


LN_EPS = 1e-5  # torch's LayerNorm default


def _solu_ln(x: Tensor) -> Tensor:
    # SoLU followed by a LayerNorm over features without learned gain or bias,
    # as the SoLU paper deploys it (the gain and bias would add parameters to the TMS).
    y = _solu(x)
    return F.layer_norm(y, y.shape[-1:], eps=LN_EPS)


def _solu_ln_vjp(g: Tensor, x: Tensor, out: Tensor) -> Tensor:
    # LayerNorm's backward (out = (u - mean) / sigma, u = solu(x)), then SoLU's
    s = _softmax(x)
    sigma = ((x * s).var(-1, unbiased=False, keepdim=True) + LN_EPS).sqrt()
    mean = lambda t: t.mean(-1, keepdim=True)  # noqa: E731
    return _solu_vjp_given((g - mean(g) - out * mean(g * out)) / sigma, x, s)


def _elu_vjp(g: Tensor, x: Tensor, out: Tensor) -> Tensor:
    return _aten.elu_backward(g, 1.0, 1.0, 1.0, False, x)


def _entry(name, fn, vjp, definition, above, below, smooth, monotone, over=False, control=False):
    return Activation(name, fn, definition, above, below, smooth, monotone, over, control, vjp)


# The order is the numbering of SCIENCE.md section 2; the controls come last.
_ACTIVATIONS: tuple[Activation, ...] = (
    _entry("relu", F.relu, lambda g, x, y: _aten.threshold_backward(g, y, 0),
           "max(0, x)", False, True, False, True),
    _entry("leaky_relu", F.leaky_relu, lambda g, x, y: _aten.leaky_relu_backward(g, x, 0.01, False),
           "x if x > 0 else 0.01 x", False, False, False, True),
    _entry("selu", F.selu,
           lambda g, x, y: _aten.elu_backward(g, _SELU_ALPHA, _SELU_SCALE, 1.0, False, x),
           "torch SELU", False, True, False, True),
    _entry("celu", F.celu, _elu_vjp, "CELU, alpha 1", False, True, True, True),
    _entry("gelu", F.gelu, lambda g, x, y: _aten.gelu_backward(g, x),
           "exact (erf) GELU", False, True, True, False),
    _entry("sigmoid", torch.sigmoid, lambda g, x, y: _aten.sigmoid_backward(g, y),
           "1 / (1 + e^-x)", True, True, True, True),
    _entry("hardsigmoid", F.hardsigmoid, lambda g, x, y: _aten.hardsigmoid_backward(g, x),
           "torch Hardsigmoid", True, True, False, True),
    _entry("silu", F.silu, lambda g, x, y: _aten.silu_backward(g, x),
           "x sigmoid(x) (Swish)", False, True, True, False),
    _entry("hardswish", F.hardswish, lambda g, x, y: _aten.hardswish_backward(g, x),
           "torch Hardswish", False, True, False, False),
    _entry("mish", F.mish, lambda g, x, y: _aten.mish_backward(g, x),
           "x tanh(softplus(x))", False, True, True, False),
    _entry("softplus", F.softplus, lambda g, x, y: _aten.softplus_backward(g, x, 1.0, 20.0),
           "log(1 + e^x)", False, True, True, True),
    _entry("tanh", torch.tanh, lambda g, x, y: _aten.tanh_backward(g, y),
           "tanh(x)", True, True, True, True),
    _entry("hardtanh", F.hardtanh, lambda g, x, y: _aten.hardtanh_backward(g, x, -1.0, 1.0),
           "clamp(x, -1, 1)", True, True, False, True),
    _entry("elu", F.elu, _elu_vjp, "ELU, alpha 1", False, True, True, True),
    _entry("hardshrink", F.hardshrink, lambda g, x, y: _aten.hardshrink_backward(g, x, 0.5),
           "x if |x| > 0.5 else 0", False, False, False, True),
    _entry("softmax", _softmax, lambda g, x, y: _softmax_vjp(g, y),
           "softmax over features", True, True, True, True, over=True),
    _entry("solu", _solu, _solu_vjp, "x * softmax(x) over features", False, True, True, False,
           over=True),
    _entry("log_softmax", _log_softmax,
           lambda g, x, y: g - y.exp() * g.sum(-1, keepdim=True),
           "log-softmax over features", True, False, True, True, over=True),
    _entry("logsigmoid", F.logsigmoid, lambda g, x, y: g * torch.sigmoid(-x),
           "log sigmoid(x)", True, False, True, True),
    _entry("exp", torch.exp, lambda g, x, y: g * y, "e^x", False, True, True, True),
    _entry("exp_linear", _exp_linear, _elu_vjp, "e^x if x < 0 else x + 1 (devtms's reading)",
           False, True, True, True),
    _entry("tanhshrink", F.tanhshrink, lambda g, x, y: g * torch.tanh(x).square(),
           "x - tanh(x)", False, False, True, True),
    _entry("relu6", F.relu6, lambda g, x, y: _aten.hardtanh_backward(g, x, 0.0, 6.0),
           "min(max(0, x), 6)", True, True, False, True),
    _entry("relu_squared", lambda x: F.relu(x).square(), lambda g, x, y: g * 2.0 * F.relu(x),
           "max(0, x)^2", False, True, True, True),
    _entry("softshrink", F.softshrink, lambda g, x, y: _aten.softshrink_backward(g, x, 0.5),
           "torch Softshrink, lambda 0.5", False, False, False, True),
    _entry("softsign", F.softsign, lambda g, x, y: g / (1.0 + x.abs()).square(),
           "x / (1 + |x|)", True, True, True, True),
    _entry("softmin", lambda x: _softmax(-x), lambda g, x, y: -_softmax_vjp(g, y),
           "softmin over features", True, True, True, False, over=True),
    _entry("linear", lambda x: x, lambda g, x, y: g, "identity (control)", False, False, True,
           True, control=True),
    _entry("solu_ln", _solu_ln, _solu_ln_vjp, "LayerNorm(x * softmax(x)) over features (control)",
           True, True, True, False, over=True, control=True),
)

# ---------------------------------------------------------------------------------------------
# d activation / d preactivation for the elementwise activations, at the conventions of torch's
# autograd (the subgradient chosen at kinks), as functions of (z, f(z)): plain tensor ops that
# torch.compile traces (the registry's vjps call aten's backward kernels, which are the fastest
# eagerly but do not all trace: hardshrink_backward does not).

_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _one(z: Tensor) -> Tensor:
    return torch.ones_like(z)


def _mish_slope(z: Tensor, out: Tensor) -> Tensor:
    # t = tanh(softplus(z)) and sigmoid(z) from one exp: with e = e^z, t = u / (u + 2) where
    # u = e (e + 2), and 1 - t^2 = (1 - t)(1 + t) = 2 (1 + t) / (u + 2) without cancellation.
    # (Two fewer transcendentals than tanh(softplus(z)) and sigmoid(z); the forward's exp,
    # log1p and tanh still make mish the slowest elementwise activation.)
    e = torch.exp(torch.clamp(z, max=20.0))
    u = e * (e + 2.0)
    t = u / (u + 2.0)
    slope = t + z * (e / (1.0 + e)) * (2.0 * (1.0 + t) / (u + 2.0))
    return torch.where(z > 20.0, 1.0, slope)  # torch's softplus is z itself above 20


def _silu_slope(z: Tensor, out: Tensor) -> Tensor:
    s = torch.sigmoid(z)
    return s * (1.0 + z * (1.0 - s))


def _gelu_slope(z: Tensor, out: Tensor) -> Tensor:
    cdf = 0.5 * (1.0 + torch.erf(z * _INV_SQRT_2))
    return cdf + z * torch.exp(-0.5 * z * z) * _INV_SQRT_2PI


ELEMENTWISE_SLOPES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "relu": lambda z, out: (z > 0).to(z.dtype),
    "leaky_relu": lambda z, out: torch.where(z > 0, 1.0, torch.full_like(z, 0.01)),
    "selu": lambda z, out: torch.where(z > 0, _SELU_SCALE, _SELU_SCALE * _SELU_ALPHA * torch.exp(z)),
    "celu": lambda z, out: torch.where(z > 0, 1.0, torch.exp(z)),
    "gelu": _gelu_slope,
    "sigmoid": lambda z, out: out * (1.0 - out),
    "hardsigmoid": lambda z, out: ((z > -3.0) & (z < 3.0)).to(z.dtype) / 6.0,
    "silu": _silu_slope,
    "hardswish": lambda z, out: torch.where(
        z <= -3.0, 0.0, torch.where(z < 3.0, z / 3.0 + 0.5, 1.0)).to(z.dtype),
    "mish": _mish_slope,
    # sigmoid(z) = 1 - e^-softplus(z): one expm1 of the output instead of an exp of z and a division
    "softplus": lambda z, out: torch.where(z > 20.0, 1.0, -torch.expm1(-out)),
    "tanh": lambda z, out: 1.0 - out * out,
    "hardtanh": lambda z, out: ((z > -1.0) & (z < 1.0)).to(z.dtype),
    "elu": lambda z, out: torch.where(z > 0, 1.0, torch.exp(z)),
    "hardshrink": lambda z, out: ((z < -0.5) | (z > 0.5)).to(z.dtype),
    "logsigmoid": lambda z, out: -torch.expm1(out),  # sigmoid(-z) = 1 - e^logsigmoid(z)
    "exp": lambda z, out: out,
    "exp_linear": lambda z, out: torch.where(z > 0, 1.0, torch.exp(z)),
    "tanhshrink": lambda z, out: (z - out).square(),  # tanh(z)^2, without a second tanh
    "relu6": lambda z, out: ((z > 0.0) & (z < 6.0)).to(z.dtype),
    "relu_squared": lambda z, out: 2.0 * F.relu(z),
    "softshrink": lambda z, out: ((z < -0.5) | (z > 0.5)).to(z.dtype),
    "softsign": lambda z, out: (1.0 + z.abs()).reciprocal().square(),
    "linear": lambda z, out: _one(z),
}


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
    # One split (its backward is a single cat), not one slice per group (each slice's
    # backward would materialise a zero tensor the size of `pre`).
    parts = pre.split([stop - start for _, start, stop in groups], dim=0)
    return torch.cat([act.fn(part) for (act, _, _), part in zip(groups, parts, strict=True)], dim=0)


def vjp_grouped(grad_out: Tensor, pre: Tensor, out: Tensor,
                groups: list[tuple[Activation, int, int]], traceable: bool = False) -> Tensor:
    """Each group's vjp on its slice of the leading (instance) axis. All (instances, ..., n).

    traceable: through `Activation.traceable_vjp`, for code that torch.compile traces.
    """
    vjp = Activation.traceable_vjp if traceable else Activation.vjp
    if len(groups) == 1:
        return vjp(groups[0][0], grad_out, pre, out)
    sizes = [stop - start for _, start, stop in groups]
    parts = zip(groups, grad_out.split(sizes), pre.split(sizes), out.split(sizes), strict=True)
    return torch.cat([vjp(act, g, x, y) for (act, _, _), g, x, y in parts], dim=0)
