"""The loss around a checkpoint, to second order: what explains a descent below it, and the
preconditioner (`whitening`) that makes the posterior there about a unit Gaussian.

An LLC estimate needs w* at a local minimum. When the chains descend below L_N(w*) instead
(`not_at_minimum`), the loss's gradient g and Hessian H at w* say what explains the descent
(devtms.llc.health.which_point):

    the gradient          w* is not a critical point: training had not settled, and the
                          chains finish its step
    negative curvature    a saddle, or a slope that curves down
    neither               lower loss lies within the chains' reach beyond what g and H see:
                          the edge of a plateau (dead or saturated units: training cannot
                          leave, the noise can)

SGLD samples exp(-n_beta L(w) - gamma/2 |w - w*|^2). Along the gradient's direction u = g/|g|,
with the loss's curvature there c = u^T H u, L is L(w*) + |g| t + c t^2 / 2: a Gaussian in t
of precision gamma + n_beta c centred at -n_beta |g| / (gamma + n_beta c), so the gradient
alone moves the mean of n_beta (L - L(w*)) by

    grad_shift = -n_beta^2 |g|^2 / (gamma + n_beta max(c, 0))        (reported as its size)

Every estimate gets g exactly (model.loss_and_grad, float64: a critical point's gradient is
near 0, below float32's resolution of the loss) and c from one forward difference of it:
two gradients per checkpoint. The whole Hessian (d + 1 gradients) is computed only where its
smallest eigenvalue decides a reason: a not_at_minimum estimate whose descent the gradient
does not explain. No health rule reads these numbers (docs/science.md, section 4.5, says why).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from devtms import model as tms
from devtms.activations import contiguous_groups
from devtms.llc.params import num_parameters

if TYPE_CHECKING:  # task.py assembles rows with these functions
    from devtms.llc.task import ChunkTask

Tensor = torch.Tensor

PRECISION_FLOOR = 1e-6  # of the largest: a direction the preconditioner cannot see stays finite
MAX_HESSIAN_PARAMS = 512  # larger models get no Hessian (hess_min NaN)
GRADIENT_BLOCK = 2**22  # float64 elements of data copies per batched gradient call (32 MiB)
FD_STEP = 1e-6  # forward differences of the exact gradient, relative to max(1, |w*|): in
# float64, truncation ~1e-6 and round-off ~1e-10 of the curvature's scale; against autograd's
# Hessian on chen2023's 512 checkpoints after step 100 the smallest eigenvalue is off by at
# most 5e-6. A larger step is worse at ReLU's kink: 1e-4 crosses it for some sample at 28 of
# them (errors up to 6), 1e-2 smooths it (errors up to 0.03)


@dataclass
class Slopes:
    """The gradient at every checkpoint of a chunk and what it does to the llc. (I, S) float64.

    grad_norm: |grad L_N(w*)| over the sampled parameters; grad_shift: its llc shift at the
    chunk's n_beta and gamma (module docstring), 0 where the gradient is exactly 0.
    """

    grad_norm: Tensor
    grad_shift: Tensor


def gradient_shift(grad_norm: Tensor | float, curvature: Tensor | float, n_beta: float,
                   gamma: float) -> Tensor:
    """n_beta^2 |g|^2 / (gamma + n_beta max(c, 0)): how far the gradient alone lowers an llc."""
    g, c = torch.as_tensor(grad_norm, dtype=torch.float64), torch.as_tensor(curvature)
    return n_beta**2 * g.square() / (gamma + n_beta * c.clamp(min=0.0))


def slopes(task: ChunkTask) -> Slopes:
    """grad_norm and grad_shift of every checkpoint of a ChunkTask (each checkpoint's numbers
    come from its own rows of each batched call, so they do not depend on the chunk)."""
    I, S = task.W0.shape[:2]
    p = task.params
    grad_norm = torch.empty(I, S, dtype=torch.float64)
    shift = torch.empty(I, S, dtype=torch.float64)
    with torch.no_grad():
        for i in range(I):
            gradient = gradient_function(task, i)
            theta = parameters(task, i)  # (S, m n + n)
            g = gradient(theta)  # (S, d)
            norm = g.norm(dim=1)  # (S,)
            u = torch.where(norm[:, None] > 0, g / norm[:, None], 0.0)
            u = torch.nn.functional.pad(u, (0, theta.shape[1] - u.shape[1]))  # b stays put
            h = FD_STEP * theta.abs().amax(1).clamp(min=1.0)  # (S,)
            curvature = ((gradient(theta + h[:, None] * u) - g) * u[:, : g.shape[1]]).sum(1) / h
            grad_norm[i] = norm
            shift[i] = gradient_shift(norm, curvature, p.n_beta, p.gamma)
    return Slopes(grad_norm, shift)


def hessian_min(task: ChunkTask, i: int, s: int) -> float:
    """The smallest eigenvalue of the Hessian of L_N at checkpoint (i, s). NaN where the
    Hessian is not finite, and for models of more than MAX_HESSIAN_PARAMS parameters."""
    H = hessian(task, i, s)
    return float("nan") if H is None else float(torch.linalg.eigvalsh(H)[0])


def hessian(task: ChunkTask, i: int, s: int) -> Tensor | None:
    """The Hessian of L_N over the sampled parameters at checkpoint (i, s), float64 (d, d):
    forward differences of the exact gradient, symmetrized (the d displaced copies in batched
    calls). None where not finite, and for models of more than MAX_HESSIAN_PARAMS parameters."""
    m, n = task.W0.shape[2:]
    d = num_parameters(m, n, task.bias)
    if d > MAX_HESSIAN_PARAMS:
        return None
    with torch.no_grad():
        theta = parameters(task, i)[s]  # (m n + n,)
        gradient = gradient_function(task, i)
        g = gradient(theta[None])[0]  # (d,)
        h = FD_STEP * max(1.0, float(theta.abs().max()))
        H = (gradient(theta + h * torch.eye(d, theta.shape[0], dtype=torch.float64)) - g) / h
        H = (H + H.T) / 2
        return H if torch.isfinite(H).all() else None


def parameters(task: ChunkTask, i: int) -> Tensor:
    """Instance i's checkpoints as parameter vectors (W flattened, b), float64: (S, m n + n)."""
    return torch.cat([task.W0[i].double().flatten(1), task.b0[i].double()], 1)


def gradient_function(task: ChunkTask, i: int) -> Callable[[Tensor], Tensor]:
    """grad L_N of instance i at a batch of parameter vectors, float64: theta (k, m n + n) ->
    (k, d), the sampled parameters' gradient (b's only where the model has a bias), in calls
    of at most GRADIENT_BLOCK data elements (each row's numbers do not depend on the call)."""
    m, n = task.W0.shape[2:]
    groups = contiguous_groups([task.activations[i]])
    x, imp = task.data[i].double(), task.importance[i].double()
    rows = max(1, GRADIENT_BLOCK // x.numel())

    def block(theta: Tensor) -> Tensor:
        k = theta.shape[0]
        W, b = theta[:, : m * n].reshape(k, m, n), theta[:, m * n :].contiguous()
        _, dW, db = tms.loss_and_grad(W, b, x.expand(k, *x.shape), imp.expand(k, n), groups,
                                      task.reduction)
        return torch.cat([dW.flatten(1), db], 1) if task.bias else dW.flatten(1)

    return lambda theta: torch.cat([block(part) for part in theta.split(rows)])


def whitening(task: ChunkTask) -> Tensor:
    """The fixed preconditioner of every estimate: L with L L^T = (n_beta H+ + gamma)^-1, where
    H+ is the Hessian of L_N at w* with its negative eigenvalues set to 0. -> (I, S, d, d)

    It makes the posterior about isotropic near w* (the stiff directions n_beta x curvature,
    the flat ones gamma), so one step size serves every direction: the exact engine's
    (devtms.llc.mala; MALA with a fixed preconditioner is as exact as without one) and SGLD's
    under precond = "curvature" (devtms.llc.sgld), whose eps is then dimensionless. Where the
    Hessian is not known (not finite, or a model too large for it): the identity, scaled to
    gamma alone.
    """
    p = task.params
    I, S, m, n = task.W0.shape
    d = num_parameters(m, n, task.bias)
    out = torch.empty(I, S, d, d, dtype=torch.float64)
    for i, s in np.ndindex(I, S):
        H = hessian(task, i, s)
        if H is None:
            out[i, s] = torch.eye(d, dtype=torch.float64) / math.sqrt(max(p.gamma, 1.0))
            continue
        curvature, V = torch.linalg.eigh(H)
        precision = p.n_beta * curvature.clamp(min=0.0) + p.gamma
        precision = precision.clamp(min=PRECISION_FLOOR * float(precision.max()))
        out[i, s] = V * precision.rsqrt()  # V diag(precision^-1/2)
    return out
