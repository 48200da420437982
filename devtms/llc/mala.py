"""The exact engine: full-batch Metropolis-adjusted Langevin (MALA) on the localized posterior.

SGLD (devtms.llc.sgld) takes unadjusted steps on minibatches, so it samples the posterior only
as eps -> 0: at a finite eps its estimate carries a step-size bias that grows with eps x n_beta
x the basin's curvature (and with the minibatch's gradient noise), and no convergence diagnostic
sees it: a biased chain mixes as well as an unbiased one. This engine samples the same
localized, tempered posterior

    p(w) ∝ exp(-U(w)),   U(w) = n_beta L_N(w) + gamma/2 |w - w*|^2

on the whole LLC dataset, with a Metropolis accept/reject step after every Langevin proposal,
so its draws have p as their exact stationary law whatever the step: there is no step-size
bias. The estimate is the LLC's definition, n_beta (E_p[L_N(w)] - L_N(w*)): the mean of the
full-batch loss over the draws after burn-in, mean over chains (devtms.llc.health).

Two things make it affordable and make one step size serve every direction:
- **A fixed preconditioner** (`devtms.llc.curvature.whitening`): the chains move in z, w = w* + L z, with
  L L^T = (n_beta H+ + gamma)^-1 from the Hessian at w* (negative curvature clipped to 0), in
  which the posterior near w* is about a unit Gaussian. MALA with any fixed preconditioner is
  as exact as without one. In z, with h the step:

      z' = z - h/2 grad_z U(z) + sqrt(h) xi,   accepted with min(1, exp(log_alpha)),
      log_alpha = U(z) - U(z') + |xi|^2 / 2 - |z - z' + h/2 grad_z U(z')|^2 / (2 h)

- **A step tuned per chain** during burn-in by dual averaging (Hoffman and Gelman 2014, as
  NUTS does) to a mean acceptance of TARGET_ACCEPTANCE, from H0, then frozen for the draws, so
  the draws are a time-homogeneous Markov chain with the exact stationary law. Where the flat
  directions curve (a TMS's hidden rotations are an exactly flat, curved orbit) and gamma is
  small, the chains spread beyond where the Hessian at w* describes them: the tuned step
  shrinks and mixing slows. R-hat and ESS then say so; the estimate stays unbiased.

The loss and its gradient are model.loss_and_grad (the trainer's, checked against autograd),
with the chains as instances: batched matmuls, no compiling. The setting's eps is not used
(the step is tuned), nor its batch_size (every step reads the whole dataset; llc.csv records
batch_size = N: `reference_params` in devtms.llc.check). Randomness is keyed by the estimate
(the proposal noise and the accept step's uniforms, in blocks of NOISE_BLOCK steps), so an
estimate's numbers do not depend on its chunk. A step costs about N / batch_size SGLD steps:
affordable on samples of checkpoints (the self-check, devtms.llc.check).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from devtms import model as tms
from devtms.activations import contiguous_groups
from devtms.allocator import keep_freed_memory
from devtms.llc.batched import NOISE_BLOCK, tile_shape, tiles
from devtms.llc.curvature import whitening
from devtms.llc.params import LLC_REDUCTION, LLCParams
from devtms.llc.task import ChunkResult, ChunkTask, init_losses, make_result
from devtms.rng import generator

Tensor = torch.Tensor

ENGINE = "mala"
TARGET_ACCEPTANCE = 0.6  # near MALA's optimal 0.574 (Roberts and Rosenthal 1998)
# dual averaging's constants (Hoffman and Gelman 2014, section 3.2): shrinkage towards
# log(10 h0), its strength, the iterations it is damped over, the averaging's decay
DA_SHRINK, DA_GAMMA, DA_T0, DA_KAPPA = 10.0, 0.05, 10.0, 0.75
H0 = 0.5  # the step the adaptation starts from, in the preconditioned (whitened) coordinates
TILE_SAMPLES = 160_000  # chains x dataset samples per kernel call (larger tiles pay less of
# the update's per-call overhead; 4x the SGLD tile)


def mala_chunk(task: ChunkTask) -> ChunkResult:
    """Estimate every (instance, step) of the task with full-batch MALA. No file I/O."""
    keep_freed_memory()
    p = task.params
    init = init_losses(task)  # (I, S)
    I, S, m, n = task.W0.shape
    L = whitening(task)  # (I, S, d, d)
    loss = torch.empty(I, S, p.chains, p.draws)
    accept = torch.empty(I, S, p.chains)
    for act, start, stop in contiguous_groups(task.activations):
        sl = slice(start, stop)
        loss[sl], accept[sl] = run_mala(
            act.name, task.W0[sl], task.b0[sl], L[sl], task.data[sl], task.importance[sl],
            task.instances[sl], task.seeds[sl], task.steps, p, bias=task.bias,
            reduction=task.reduction, device=task.device)
    return make_result(task, init, loss, accept)


def run_mala(activation: str, W0: Tensor, b0: Tensor, L: Tensor, data: Tensor,
             importance: Tensor, instances: Sequence[int], seeds: Sequence[int],
             steps: Sequence[int], params: LLCParams, *, bias: bool,
             reduction: str = LLC_REDUCTION, device: str = "cpu") -> tuple[Tensor, Tensor]:
    """Every chain of the estimates instances x steps (one activation), in tiles.

    W0: (I, S, m, n), b0: (I, S, n), L: (I, S, d, d) (`whitening`), data: (I, N, n),
    importance: (I, n).
    -> draws (I, S, chains, draws): the full-batch loss (summed over features) at each draw,
       and the mean acceptance probability over the draws (I, S, chains).
    """
    I, S = W0.shape[:2]
    N = data.shape[1]
    tile = max(2 * params.chains, TILE_SAMPLES // N)
    draws = torch.empty(I, S, params.chains, params.draws)
    accept = torch.empty(I, S, params.chains)
    for si, ss in tiles(I, S, *tile_shape(I, S, params.chains, False, tile)):
        draws[si, ss], accept[si, ss] = _run_tile(
            activation, W0[si, ss], b0[si, ss], L[si, ss], data[si], importance[si],
            instances[si], seeds[si], steps[ss], params, bias=bias, reduction=reduction,
            device=device)
    return draws, accept


def _run_tile(activation: str, W0: Tensor, b0: Tensor, L: Tensor, data: Tensor,
              importance: Tensor, instances: Sequence[int], seeds: Sequence[int],
              steps: Sequence[int], params: LLCParams, *, bias: bool, reduction: str,
              device: str) -> tuple[Tensor, Tensor]:
    p, dev = params, torch.device(device)
    I, S, m, n = W0.shape
    C, P = p.chains, S * p.chains

    def chain_layout(t: Tensor) -> Tensor:  # (I, S, *shape) -> (I, *shape, S * C)
        t = t[:, :, None].expand(I, S, C, *t.shape[2:]).reshape(I, P, *t.shape[2:])
        return t.movedim(1, -1).contiguous().to(dev)

    # the chains as instances of model.loss_and_grad: row i P + p is chain p of instance i
    x = data.to(dev)[:, None].expand(I, P, *data.shape[1:]).reshape(I * P, *data.shape[1:])
    x = x.contiguous()  # (I P, N, n): read by every step, copied once
    imp = importance.to(dev)[:, None].expand(I, P, n).reshape(I * P, n)
    groups = contiguous_groups([activation] * (I * P))
    W_star, b_star = chain_layout(W0), chain_layout(b0)
    ds = L.shape[-1]  # the sampled parameters: W flattened, then b where the model has one
    L_chain = chain_layout(L.float())  # (I, ds, ds, P)
    w_star = torch.cat([W_star.flatten(1, 2), b_star], 1)  # (I, m n + n, P)

    def potential(z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """z (I, ds, P) -> (L_N (I, P), U (I, P) float64, grad_z U (I, ds, P)), at w = w* + L z"""
        dw = torch.einsum("idep,iep->idp", L_chain, z)
        w = torch.cat([w_star[:, :ds] + dw, w_star[:, ds:]], 1)  # (I, m n + n, P)
        w = w.permute(0, 2, 1).reshape(I * P, m * n + n)
        loss, dW, db = tms.loss_and_grad(w[:, : m * n].unflatten(1, (m, n)), w[:, m * n :],
                                         x, imp, groups, reduction)  # (I P,), ...
        grad = torch.cat([dW.flatten(1), db], 1)[:, :ds].reshape(I, P, ds).permute(0, 2, 1)
        grad_w = p.n_beta * grad + p.gamma * dw  # (I, ds, P)
        loss = loss.reshape(I, P)
        U = p.n_beta * loss.double() + 0.5 * p.gamma * dw.double().square().sum(1)
        return loss, U, torch.einsum("idep,idp->iep", L_chain, grad_w)

    z = torch.zeros(I, ds, P, device=dev)
    state = MALAState(z, *potential(z))
    step = DualAveraging(torch.full((I, P), H0, dtype=torch.float64, device=dev))
    h = step.current().float()  # (I, P)
    draws = torch.empty(p.draws, I, P, device=dev)
    accept_sum = torch.zeros(I, P, dtype=torch.float64, device=dev)
    normal = uniform = torch.empty(0)
    with torch.no_grad():
        for t in range(p.burnin + p.draws):
            k, offset = divmod(t, NOISE_BLOCK)
            if offset == 0:
                normal, uniform = _noise_block(instances, seeds, steps, p, k, ds, dev)
            alpha = state.advance(potential, h, normal[offset], uniform[offset])  # (I, P)
            if t < p.burnin:
                step.update(alpha)
                h = (step.final() if t == p.burnin - 1 else step.current()).float()
            else:
                draws[t - p.burnin] = state.loss
                accept_sum += alpha
    draws = draws.reshape(p.draws, I, S, C).permute(1, 2, 3, 0).cpu()  # (I, S, C, D)
    accept = (accept_sum / p.draws).float().reshape(I, S, C).cpu()
    return draws, accept


class MALAState:
    """A batch of MALA chains on any potential: theta (..., d, P), and at theta the
    potential's value U (..., P) float64, its gradient grad (..., d, P) and the loss L (..., P)
    whose mean the estimate reads (`potential(theta)` returns (L, U, grad))."""

    def __init__(self, theta: Tensor, loss: Tensor, U: Tensor, grad: Tensor):
        self.theta, self.loss, self.U, self.grad = theta, loss, U, grad

    def advance(self, potential, h: Tensor, xi: Tensor, u: Tensor) -> Tensor:
        """One Metropolis-adjusted Langevin step of every chain (module docstring).

        h: (..., P) step sizes; xi: like theta, standard normal; u: (..., P) uniform in [0, 1).
        -> the acceptance probability of the proposal, (..., P). A proposal whose potential
        is not finite is rejected."""
        h_ = h[..., None, :]
        proposal = self.theta - 0.5 * h_ * self.grad + h_.sqrt() * xi
        loss, U, grad = potential(proposal)
        back = self.theta - proposal + 0.5 * h_ * grad  # the reverse move's residual
        log_alpha = (self.U - U + 0.5 * xi.double().square().sum(-2)
                     - back.double().square().sum(-2) / (2.0 * h.double()))
        log_alpha = torch.where(torch.isfinite(log_alpha), log_alpha, -math.inf)
        alpha = log_alpha.clamp(max=0.0).exp()
        take = u < alpha
        self.theta = torch.where(take[..., None, :], proposal, self.theta)
        self.grad = torch.where(take[..., None, :], grad, self.grad)
        self.loss = torch.where(take, loss, self.loss)
        self.U = torch.where(take, U, self.U)
        return alpha


def _noise_block(instances: Sequence[int], seeds: Sequence[int], steps: Sequence[int],
                 p: LLCParams, block: int, d: int, device: torch.device
                 ) -> tuple[Tensor, Tensor]:
    """Block `block` of every estimate's proposal noise and accept uniforms, in chain layout:
    -> normal (64, I, d, P), uniform (64, I, P). Keyed by the estimate, never its position."""
    normals, uniforms = [], []
    for i, s in zip(instances, seeds, strict=True):
        for st in steps:
            g = generator("llc-mala", int(i), int(s), int(st), p.seed, block)
            normals.append(torch.randn(NOISE_BLOCK, p.chains, d, generator=g))
            uniforms.append(torch.rand(NOISE_BLOCK, p.chains, generator=g))
    I, S = len(instances), len(steps)
    normal = torch.stack(normals).reshape(I, S, NOISE_BLOCK, p.chains, d)
    normal = normal.permute(2, 0, 4, 1, 3).reshape(NOISE_BLOCK, I, d, S * p.chains)
    uniform = torch.stack(uniforms).reshape(I, S, NOISE_BLOCK, p.chains)
    uniform = uniform.permute(2, 0, 1, 3).reshape(NOISE_BLOCK, I, S * p.chains)
    return normal.contiguous().to(device), uniform.contiguous().to(device)


class DualAveraging:
    """Step sizes tuned towards TARGET_ACCEPTANCE, one per chain (Hoffman and Gelman 2014,
    algorithm 5's adaptation). h0: any shape, float64, the starting steps.

    One per chain, not per estimate: a chain that wanders into a stiffer region would
    otherwise shrink the step of all its estimate's chains."""

    def __init__(self, h0: Tensor):
        self.mu = torch.log(DA_SHRINK * h0)
        self.log_h = torch.log(h0)
        self.log_h_bar = torch.zeros_like(h0)
        self.H_bar = torch.zeros_like(h0)
        self.t = 0

    def current(self) -> Tensor:
        return self.log_h.exp()

    def update(self, acceptance: Tensor) -> Tensor:
        """One adaptation step from this step's acceptance probability per chain. -> the next h"""
        self.t += 1
        t = self.t
        w = 1.0 / (t + DA_T0)
        self.H_bar = (1 - w) * self.H_bar + w * (TARGET_ACCEPTANCE - acceptance.double())
        self.log_h = self.mu - math.sqrt(t) / DA_GAMMA * self.H_bar
        decay = t ** -DA_KAPPA
        self.log_h_bar = decay * self.log_h + (1 - decay) * self.log_h_bar
        return self.current()

    def final(self) -> Tensor:
        """The averaged step, used (frozen) for the draws."""
        return self.log_h_bar.exp() if self.t else self.current()
