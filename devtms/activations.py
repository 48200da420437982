"""The activation registry: the 27 variants of the activation-function studies plus two controls.

Every function maps preactivations to outputs with the features on the last axis:
`(..., n)` in, `(..., n)` out. Elementwise variants ignore the axis; "over features"
variants (softmax, solu, log_softmax, softmin, solu_ln) normalise along it, so they act
on each sample of each instance separately, never across the batch or across instances.

The names, groups and properties (bounded, smooth, monotone, over features, control) are in
devtms/activation_properties.py, which needs no torch; this module adds each activation's
function, vjp and slope, and re-exports the names and groups.

    >>> from devtms.activations import get_activation
    >>> get_activation("gelu").fn(torch.zeros(3))
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from devtms.activation_properties import (  # noqa: F401 - re-exported
    ALL,
    CONTROLS,
    GROUPS,
    PROPERTIES,
    VARIANTS,
    check_name,
    expand_activation_names,
)

Tensor = torch.Tensor


# vjp(grad_out, pre, out) -> grad_pre: the activation's vector-Jacobian product, so batched
# code can form gradients without building an autograd graph per activation group. Most use
# torch's own backward kernels (the ones autograd would call); None means: ask autograd.
Vjp = Callable[[Tensor, Tensor, Tensor], Tensor]
# slope(pre, out) -> f'(pre), elementwise activations only: the same derivative in plain tensor
# ops that torch.compile traces (aten's backward kernels, fastest eagerly, do not all trace:
# hardshrink_backward does not), at the conventions of torch's autograd (its subgradient at kinks).
Slope = Callable[[Tensor, Tensor], Tensor]


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
    slope: Slope | None = None  # elementwise activations: f' in traceable ops
    family: Family | None = None  # the formula compiled code computes it by (see `Family`)
    constants: tuple[float, ...] = ()  # its constants in that formula

    def pullback(self, pre: Tensor, out: Tensor, traceable: bool = False
                 ) -> Callable[[Tensor], Tensor]:
        """grad_out -> d<grad_out, fn(pre)>/d pre, with out = fn(pre) already computed.

        The one place that chooses how an activation is differentiated: traceable (for code
        torch.compile traces) and elementwise: grad_out * slope(pre, out), the slope computed
        once here; else the registry's vjp (the over-features ones are plain tensor ops, so
        they trace too); else autograd (torch.func.vjp, for an activation with neither).
        """
        if traceable and self.slope is not None:
            slope = self.slope(pre, out)
            return lambda grad_out: grad_out * slope
        if self.vjp_fn is not None:
            vjp_fn = self.vjp_fn
            return lambda grad_out: vjp_fn(grad_out, pre, out)
        _, vjp = torch.func.vjp(self.fn, pre)
        return lambda grad_out: vjp(grad_out)[0]

    def vjp(self, grad_out: Tensor, pre: Tensor, out: Tensor) -> Tensor:
        """d<grad_out, fn(pre)>/d pre (torch's backward kernels where the registry has them)."""
        return self.pullback(pre, out)(grad_out)

    def traceable_vjp(self, grad_out: Tensor, pre: Tensor, out: Tensor) -> Tensor:
        """The same product in plain tensor ops, for torch.compile (see `pullback`)."""
        return self.pullback(pre, out, traceable=True)(grad_out)


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


# ---------------------------------------------------------------------------------------------
# Slopes of the elementwise activations that need more than one line (see `Slope`)

_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


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


def _step(z: Tensor, lo: float, hi: float) -> Tensor:
    """1 on the open interval (lo, hi), else 0: the slope of a clamp."""
    return ((z > lo) & (z < hi)).to(z.dtype)


def _outside(z: Tensor, lam: float) -> Tensor:
    """1 where |z| > lam, else 0: the slope of the shrinks."""
    return ((z < -lam) | (z > lam)).to(z.dtype)


def _elu_slope(z: Tensor, out: Tensor) -> Tensor:
    return torch.where(z > 0, 1.0, torch.exp(z))


# ---------------------------------------------------------------------------------------------
# Families: elementwise activations that one compiled kernel computes, their constants as data


@dataclass(frozen=True)
class Family:
    """Elementwise activations that one formula computes, each member only its constants.

    Compiled code (the SGLD step) builds one kernel per family, the member's constants an
    input tensor, instead of one kernel per activation: each kernel costs seconds to compile
    from a cold cache. Each formula is the one torch.compile lowers its members to (torch's
    own decompositions), so a member's numbers are those of its own kernel, bit for bit
    (tests/test_activations.py compiles both). Eager code keeps each activation's own `fn`.

    At z = +-inf a flat piece gives NaN (0 * inf) where torch gives its constant: a chain with
    an infinite preactivation has diverged either way, and NaN makes the step mark it so.
    """

    name: str
    fn: Callable[[Tensor, Tensor], Tensor]  # (z, c) -> f(z); c: (k,) the member's constants
    slope: Callable[[Tensor, Tensor, Tensor], Tensor]  # (z, out, c) -> f'(z), torch's conventions


def _piecewise_linear(z: Tensor, c: Tensor) -> Tensor:
    # c = (below, a_lo, b_lo, above, a_hi, b_hi, a_mid, b_mid): a_lo z + b_lo where z < below,
    # a_hi z + b_hi where z > above, a_mid z + b_mid between
    return torch.where(z < c[0], c[1] * z + c[2],
                       torch.where(z > c[3], c[4] * z + c[5], c[6] * z + c[7]))


def _piecewise_linear_slope(z: Tensor, out: Tensor, c: Tensor) -> Tensor:
    return torch.where(z < c[0], c[1], torch.where(z > c[3], c[4], c[6]))


def _float32_after(t: float, toward: float) -> float:
    """The float32 next to `t` toward `toward`: for float32 z, `z < after(t, inf)` is `z <= t`.
    So one strict comparison serves a piece that is closed at its end (a clamp's flat part)."""
    return torch.nextafter(torch.tensor(t), torch.tensor(toward)).item()


def _elu_family(z: Tensor, c: Tensor) -> Tensor:
    # c = (positive scale, negative scale, shift, slope above 0, slope scale below 0): torch's
    # elu decomposition, where(z > 0, scale z, alpha scale expm1(z)), plus a shift
    return torch.where(z > 0, c[0] * z, c[1] * torch.expm1(z)) + c[2]


def _elu_family_slope(z: Tensor, out: Tensor, c: Tensor) -> Tensor:
    return torch.where(z > 0, c[3], c[4] * torch.exp(z))


PIECEWISE_LINEAR = Family("piecewise_linear", _piecewise_linear, _piecewise_linear_slope)
ELU_FAMILY = Family("elu_family", _elu_family, _elu_family_slope)
_AT_0 = _float32_after(0.0, math.inf)  # "z < _AT_0" is "z <= 0"
_SELU_NEGATIVE = _SELU_SCALE * _SELU_ALPHA

# Each member's constants: its pieces at torch's conventions at the kinks (a relu's slope at 0
# is 0, a hardtanh's at +-1 is 0, a hardshrink is 0 at +-lambda). linear stays on its own: its
# own kernel is 3x faster than the family's, where the rest cost the same within noise.
FAMILY_MEMBERS: dict[str, tuple[Family, tuple[float, ...]]] = {
    "relu": (PIECEWISE_LINEAR, (_AT_0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0)),
    "leaky_relu": (PIECEWISE_LINEAR, (_AT_0, 0.01, 0.0, 0.0, 1.0, 0.0, 0.01, 0.0)),
    "hardtanh": (PIECEWISE_LINEAR, (_float32_after(-1.0, math.inf), 0.0, -1.0,
                                    _float32_after(1.0, -math.inf), 0.0, 1.0, 1.0, 0.0)),
    "relu6": (PIECEWISE_LINEAR, (_AT_0, 0.0, 0.0, _float32_after(6.0, -math.inf), 0.0, 6.0,
                                 1.0, 0.0)),
    "hardshrink": (PIECEWISE_LINEAR, (-0.5, 1.0, 0.0, 0.5, 1.0, 0.0, 0.0, 0.0)),
    "softshrink": (PIECEWISE_LINEAR, (-0.5, 1.0, 0.5, 0.5, 1.0, -0.5, 0.0, 0.0)),
    "elu": (ELU_FAMILY, (1.0, 1.0, 0.0, 1.0, 1.0)),
    "celu": (ELU_FAMILY, (1.0, 1.0, 0.0, 1.0, 1.0)),
    "selu": (ELU_FAMILY, (_SELU_SCALE, _SELU_NEGATIVE, 0.0, _SELU_SCALE, _SELU_NEGATIVE)),
    "exp_linear": (ELU_FAMILY, (1.0, 1.0, 1.0, 1.0, 1.0)),
}


def _entry(name, fn, *, vjp, slope=None):
    family, constants = FAMILY_MEMBERS.get(name, (None, ()))
    return Activation(name, fn, **dataclasses.asdict(PROPERTIES[name]), vjp_fn=vjp, slope=slope,
                      family=family, constants=constants)


# One row per activation: name, function; its vjp (torch's backward kernel where there is one)
# and, for the elementwise ones, its slope. The rows of activation_properties.PROPERTIES, in
# their order (the numbering of docs/science.md; the controls last).
_ACTIVATIONS: tuple[Activation, ...] = (
    _entry("relu", F.relu, vjp=lambda g, x, y: _aten.threshold_backward(g, y, 0),
           slope=lambda z, out: (z > 0).to(z.dtype)),
    _entry("leaky_relu", F.leaky_relu, vjp=lambda g, x, y: _aten.leaky_relu_backward(g, x, 0.01, False),
           slope=lambda z, out: torch.where(z > 0, 1.0, torch.full_like(z, 0.01))),
    _entry("selu", F.selu,
           vjp=lambda g, x, y: _aten.elu_backward(g, _SELU_ALPHA, _SELU_SCALE, 1.0, False, x),
           slope=lambda z, out: torch.where(z > 0, _SELU_SCALE,
                                            _SELU_SCALE * _SELU_ALPHA * torch.exp(z))),
    _entry("celu", F.celu, vjp=_elu_vjp, slope=_elu_slope),
    _entry("gelu", F.gelu, vjp=lambda g, x, y: _aten.gelu_backward(g, x), slope=_gelu_slope),
    _entry("sigmoid", torch.sigmoid, vjp=lambda g, x, y: _aten.sigmoid_backward(g, y),
           slope=lambda z, out: out * (1.0 - out)),
    _entry("hardsigmoid", F.hardsigmoid, vjp=lambda g, x, y: _aten.hardsigmoid_backward(g, x),
           slope=lambda z, out: _step(z, -3.0, 3.0) / 6.0),
    _entry("silu", F.silu, vjp=lambda g, x, y: _aten.silu_backward(g, x), slope=_silu_slope),
    _entry("hardswish", F.hardswish, vjp=lambda g, x, y: _aten.hardswish_backward(g, x),
           slope=lambda z, out: torch.where(
               z <= -3.0, 0.0, torch.where(z < 3.0, z / 3.0 + 0.5, 1.0)).to(z.dtype)),
    _entry("mish", F.mish, vjp=lambda g, x, y: _aten.mish_backward(g, x), slope=_mish_slope),
    # softplus' slope sigmoid(z) = 1 - e^-softplus(z): one expm1 of the output instead of an
    # exp of z and a division
    _entry("softplus", F.softplus, vjp=lambda g, x, y: _aten.softplus_backward(g, x, 1.0, 20.0),
           slope=lambda z, out: torch.where(z > 20.0, 1.0, -torch.expm1(-out))),
    _entry("tanh", torch.tanh,
           vjp=lambda g, x, y: _aten.tanh_backward(g, y), slope=lambda z, out: 1.0 - out * out),
    _entry("hardtanh", F.hardtanh, vjp=lambda g, x, y: _aten.hardtanh_backward(g, x, -1.0, 1.0),
           slope=lambda z, out: _step(z, -1.0, 1.0)),
    _entry("elu", F.elu, vjp=_elu_vjp, slope=_elu_slope),
    _entry("hardshrink", F.hardshrink, vjp=lambda g, x, y: _aten.hardshrink_backward(g, x, 0.5),
           slope=lambda z, out: _outside(z, 0.5)),
    _entry("softmax", _softmax, vjp=lambda g, x, y: _softmax_vjp(g, y)),
    _entry("solu", _solu, vjp=_solu_vjp),
    _entry("log_softmax", _log_softmax, vjp=lambda g, x, y: g - y.exp() * g.sum(-1, keepdim=True)),
    # logsigmoid's slope sigmoid(-z) = 1 - e^logsigmoid(z)
    _entry("logsigmoid", F.logsigmoid,
           vjp=lambda g, x, y: g * torch.sigmoid(-x), slope=lambda z, out: -torch.expm1(out)),
    _entry("exp", torch.exp, vjp=lambda g, x, y: g * y, slope=lambda z, out: out),
    _entry("exp_linear", _exp_linear, vjp=_elu_vjp, slope=_elu_slope),
    # tanhshrink's slope tanh(z)^2 = (z - out)^2, without a second tanh
    _entry("tanhshrink", F.tanhshrink, vjp=lambda g, x, y: g * torch.tanh(x).square(),
           slope=lambda z, out: (z - out).square()),
    _entry("relu6", F.relu6, vjp=lambda g, x, y: _aten.hardtanh_backward(g, x, 0.0, 6.0),
           slope=lambda z, out: _step(z, 0.0, 6.0)),
    _entry("relu_squared", lambda x: F.relu(x).square(),
           vjp=lambda g, x, y: g * 2.0 * F.relu(x), slope=lambda z, out: 2.0 * F.relu(z)),
    _entry("softshrink", F.softshrink, vjp=lambda g, x, y: _aten.softshrink_backward(g, x, 0.5),
           slope=lambda z, out: _outside(z, 0.5)),
    _entry("softsign", F.softsign, vjp=lambda g, x, y: g / (1.0 + x.abs()).square(),
           slope=lambda z, out: (1.0 + z.abs()).reciprocal().square()),
    _entry("softmin", lambda x: _softmax(-x), vjp=lambda g, x, y: -_softmax_vjp(g, y)),
    _entry("linear", lambda x: x, vjp=lambda g, x, y: g, slope=lambda z, out: torch.ones_like(z)),
    _entry("solu_ln", _solu_ln, vjp=_solu_ln_vjp),
)

REGISTRY: dict[str, Activation] = {a.name: a for a in _ACTIVATIONS}
assert list(REGISTRY) == list(PROPERTIES), "activations.py and activation_properties.py differ"


def get_activation(name: str) -> Activation:
    """The registry entry for `name`; an unknown name is a user error listing the valid ones."""
    return REGISTRY[check_name(name)]


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
