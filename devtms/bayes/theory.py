"""The k-gon phases of a TMS with m = 2, ReLU and single-feature data, in closed form.

Chen et al. 2023's setup: one of the c features is on, chosen uniformly, with magnitude
t ~ U[0, 1]; the loss is the importance-weighted squared error summed over the c outputs. Its
population loss (the N -> infinity limit of the training loss) is an exact integral:

    L(W, b) = 1/c sum_i sum_j I_j E_t[(delta_ij t - ReLU(t a_ij + b_j))^2],   a_ij = W_j . W_i

Each term is a piecewise quadratic in t with one kink, at t = -b_j / a_ij, so
`population_loss` integrates it exactly (no sampling) and torch differentiates it.

A phase is named by its k-gon label ("6", "5+", "4+-"; devtms.geometry): k features on a
regular k-gon, the others at W_i = 0 with a positive bias (the constant that is best for
them, 1 / (2c), "+") or a negative one (a dead ReLU, "-"). `critical_point(label)` builds it
and minimizes the loss over the three numbers the symmetry leaves free: the polygon's radius,
the vertices' shared bias and the positive features' bias. `llc_count(label)` is the
parameter count of the learning coefficient at such a point: d = 3c parameters, minus 1 for
the rotation, minus the 3 of each dead feature (W_i and b_i are locally irrelevant), halved.
Chen et al. derive it for c = 6: 6-gon 8.5, 5+ 8.5, 5- 7.0. (The best 3- and 4-gons have a
vertex bias of exactly 0, every vertex's ReLU on its kink; the count is given for them too,
but it is unverified there. The exact loss's Hessian rank / 2 agrees with it at 6, 5+, 5- and
4++, and exceeds it at 4+- (8.0 against 7.0) and 4-- (7.5 against 5.5): with the vertex
biases at 0, a dead feature's W_i is not locally irrelevant. devtms's SGLD estimates at the
4-gons fall far below both: 4.5-4.9 at 4++, tests/test_bayes.py.)

Shapes: W (..., 2, c), b (..., c), importance (c,) or (..., c).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

Tensor = torch.Tensor

LABEL = re.compile(r"^(?P<k>\d+)(?P<marks>[+\-o]*)$")


def piece_integral(a: Tensor, b: Tensor, delta: Tensor) -> Tensor:
    """int_0^1 (delta t - ReLU(a t + b))^2 dt, exactly, elementwise (any broadcast shapes).

    = delta^2 / 3 + int over S of [((delta - a) t - b)^2 - delta^2 t^2] dt, where
    S = {t in [0, 1] : a t + b > 0} is one interval [lo, hi].
    """
    safe_a = torch.where(a == 0, torch.ones_like(a), a)
    root = -b / safe_a  # where the ReLU switches
    zero, one = torch.zeros_like(a), torch.ones_like(a)
    lo = torch.where(a > 0, root.clamp(0, 1), zero)
    hi = torch.where(a < 0, root.clamp(0, 1), one)
    flat_on = (a == 0) & (b > 0)  # a = 0: on everywhere or nowhere
    lo = torch.where(a == 0, zero, lo)
    hi = torch.where(a == 0, torch.where(flat_on, one, zero), hi)
    hi = torch.maximum(hi, lo)  # an empty interval
    quad = (delta - a).square() - delta.square()
    lin = -2.0 * b * (delta - a)
    const = b.square()
    on = quad * (hi**3 - lo**3) / 3 + lin * (hi**2 - lo**2) / 2 + const * (hi - lo)
    return delta.square() / 3 + on


def population_loss(W: Tensor, b: Tensor, importance: Tensor | None = None) -> Tensor:
    """The exact single-feature population loss (summed over outputs) of ReLU TMS. -> (...)"""
    c = W.shape[-1]
    a = W.transpose(-1, -2) @ W  # a[i, j] = W_i . W_j: input feature i, output j
    bias = b[..., None, :].expand_as(a)
    delta = torch.eye(c, dtype=W.dtype, device=W.device).expand_as(a)
    terms = piece_integral(a, bias, delta)  # (..., c, c)
    if importance is not None:
        terms = terms * importance[..., None, :]
    return terms.sum((-1, -2)) / c


@dataclass(frozen=True)
class Phase:
    """A label's marks: k vertices, then the off-polygon features by the sign of their bias."""

    label: str
    k: int
    plus: int
    minus: int
    zero: int

    @property
    def n_features(self) -> int:
        return self.k + self.plus + self.minus + self.zero


def parse_label(label: str) -> Phase | None:
    """"5+-" -> Phase(k=5, plus=1, minus=1); None for labels that are no k-gon ("diverged")."""
    match = LABEL.match(str(label))
    if not match:
        return None
    marks = match["marks"]
    return Phase(str(label), int(match["k"]), marks.count("+"), marks.count("-"), marks.count("o"))


def llc_count(label: str, n_features: int) -> float:
    """(3c - 1 - 3 x dead features) / 2 for a k-gon with k >= 3 of all c features; NaN where
    the count does not apply (k < 3, zero biases, another number of features)."""
    phase = parse_label(label)
    if phase is None or phase.k < 3 or phase.zero or phase.n_features != n_features:
        return math.nan
    return (3 * n_features - 1 - 3 * phase.minus) / 2


@dataclass(frozen=True)
class CriticalPoint:
    label: str
    W: Tensor  # (2, c)
    b: Tensor  # (c,)
    loss: float  # population loss
    radius: float
    vertex_bias: float
    plus_bias: float


def regular_kgon(phase: Phase, radius: float, vertex_bias: float, plus_bias: float,
                 rotation: float = 0.0, minus_bias: float = -0.1) -> tuple[Tensor, Tensor]:
    """The regular k-gon of a phase: features 0..k-1 on the polygon (counter-clockwise from
    `rotation`), then the "+" features, then the "-" ones, at W = 0. -> W (2, c), b (c,)"""
    c = phase.n_features
    angles = rotation + torch.arange(phase.k, dtype=torch.float64) * (2 * math.pi / phase.k)
    W = torch.zeros(2, c, dtype=torch.float64)
    W[0, : phase.k], W[1, : phase.k] = radius * torch.cos(angles), radius * torch.sin(angles)
    b = torch.full((c,), minus_bias, dtype=torch.float64)
    b[: phase.k] = vertex_bias
    b[phase.k : phase.k + phase.plus] = plus_bias
    return W, b


def critical_point(label: str, n_features: int, steps: int = 200) -> CriticalPoint | None:
    """The regular k-gon critical point of a label, its three free numbers fitted to the
    population loss by L-BFGS; None for labels it cannot build (k < 3, zero biases, a feature
    count that does not add up to `n_features`)."""
    phase = parse_label(label)
    if phase is None or phase.k < 3 or phase.zero or phase.n_features != n_features:
        return None
    free = torch.tensor([1.0, -0.1, 0.5 / n_features], dtype=torch.float64, requires_grad=True)

    def loss_of(x: Tensor) -> Tensor:
        W, b = _kgon_tensors(phase, x)
        return population_loss(W, b)

    opt = torch.optim.LBFGS([free], max_iter=steps, tolerance_grad=1e-12,
                            tolerance_change=1e-15, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        value = loss_of(free)
        value.backward()
        return value

    opt.step(closure)
    with torch.no_grad():
        W, b = _kgon_tensors(phase, free)
        radius, vertex_bias, plus_bias = (float(v) for v in free)
        return CriticalPoint(label, W, b, float(population_loss(W, b)), abs(radius), vertex_bias,
                             plus_bias if phase.plus else math.nan)


def _kgon_tensors(phase: Phase, free: Tensor) -> tuple[Tensor, Tensor]:
    """regular_kgon with (radius, vertex bias, plus bias) as differentiable tensors."""
    c = phase.n_features
    angles = torch.arange(phase.k, dtype=torch.float64) * (2 * math.pi / phase.k)
    unit = torch.zeros(2, c, dtype=torch.float64)
    unit[0, : phase.k], unit[1, : phase.k] = torch.cos(angles), torch.sin(angles)
    is_vertex = torch.zeros(c, dtype=torch.float64)
    is_vertex[: phase.k] = 1.0
    is_plus = torch.zeros(c, dtype=torch.float64)
    is_plus[phase.k : phase.k + phase.plus] = 1.0
    is_minus = 1.0 - is_vertex - is_plus
    b = free[1] * is_vertex + free[2] * is_plus - 0.1 * is_minus
    return free[0] * unit, b
