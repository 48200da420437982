"""The posterior over a training set of N samples, sampled with replica-exchange SGLD.

The posterior at N (a Gaussian prior of precision gamma, temperature 1):

    p(w | D_N) ~ exp(-N L_N(w) - gamma |w|^2 / 2),   L_N the summed-over-features loss on D_N

SGLD (devtms.llc.sgld.sgld_update, localized at 0: the prior) samples it, but at large N its
chains stay in the k-gon they start in: moving a feature onto or off the polygon climbs a
barrier of height N x (a loss gap), and chains started in different phases would report
different "posteriors". So every chain is a ladder of replicas (parallel tempering, Swendsen
and Wang 1986): rung r samples p_r ~ exp(-beta_r N L_N(w)) x prior, with beta rising
geometrically by `rung_ratio` from beta_0 N = `hot_n` (where chains cross between phases
freely) to beta = 1. Every `swap_every` steps neighbouring rungs propose to exchange their
states, accepted with probability min(1, exp((beta_r - beta_r+1) N (L_N(w_r) - L_N(w_r+1))))
on the full training set, which keeps every rung's distribution exact; mixed states travel
down to beta = 1. Only the beta = 1 rung is classified.

Batching: rungs x chains are stacked as instances of one (R S, m, n) tensor and advanced by
devtms.model.loss_and_grad on one shared minibatch per step; rung r's step size is
eps / (beta_r N), so eps x n_beta, the drift's scale, is the same on every rung.

A task is one N (its own training set, drawn by the caller) and is pure: every random number
comes from generators keyed by (seed, N), so any executor gives the same counts.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import torch

from devtms import model as tms
from devtms.activations import contiguous_groups
from devtms.bayes.settings import SamplerSettings
from devtms.geometry import kgon
from devtms.llc.sgld import sgld_update
from devtms.rng import generator

Tensor = torch.Tensor

DIVERGED = "diverged"  # the label of a chain whose loss stopped being finite


@dataclass
class PosteriorTask:
    """One N: its training set and the chains' starting points. Picklable.

    data: (N, n); importance: (n,); W_starts: (S, m, n), b_starts: (S, n), one per chain;
    start_labels: (S,) the phase each chain starts in ("random" for a random one)."""

    n: int
    data: Tensor
    activation: str
    importance: Tensor
    bias: bool
    start_labels: list[str]
    W_starts: Tensor
    b_starts: Tensor
    settings: SamplerSettings

    @property
    def work(self) -> float:
        """Loss-term elements the task computes (for executors.AutoExecutor)."""
        s = self.settings
        rungs = len(s.betas(self.n))
        batch = min(s.batch_size, self.n) + self.n / s.swap_every
        return float(s.steps * rungs * len(self.start_labels) * batch * self.data.shape[1])


@dataclass
class PosteriorResult:
    """The beta = 1 rung's k-gon labels: per chain, how many classified draws had each."""

    n: int
    start_labels: list[str]
    counts: list[dict[str, int]]  # per chain: label -> draws
    betas: list[float]
    swap_acceptance: list[float]  # per neighbouring pair of rungs, hottest first
    diverged: int  # chains whose loss stopped being finite (their draws are labelled so)


def sample_posterior(task: PosteriorTask) -> PosteriorResult:
    """Run the ladder of every chain to the end and classify the beta = 1 draws."""
    s, n = task.settings, task.n
    betas = torch.tensor(s.betas(n), dtype=torch.float32)
    R, S = len(betas), len(task.start_labels)
    m, c = task.W_starts.shape[1:]
    W = task.W_starts.float()[None].expand(R, S, m, c).reshape(R * S, m, c).clone()
    b = task.b_starts.float()[None].expand(R, S, c).reshape(R * S, c).clone()
    n_beta = (betas * n).repeat_interleave(S)  # (R S,): rung-major
    eps = s.eps / n_beta
    groups = contiguous_groups([task.activation] * (R * S))
    imp = task.importance.float()[None].expand(R * S, c)
    data = task.data.float()
    B = min(s.batch_size, n)
    g = generator("bayes-posterior", s.seed, n)
    alive = torch.ones(R * S, dtype=torch.bool)
    swaps = torch.zeros(max(R - 1, 0), 2)  # accepted, proposed
    kept_W, kept_b = [], []
    with torch.no_grad():
        for t in range(s.steps):
            x = data[torch.randint(n, (B,), generator=g)][None].expand(R * S, B, c)
            loss, dW, db = tms.loss_and_grad(W, b, x, imp, groups, "sum")
            alive &= torch.isfinite(loss)
            W_new, _ = sgld_update(W, dW, 0.0, torch.randn(W.shape, generator=g),
                                   eps[:, None, None], s.gamma, n_beta[:, None, None])
            W = torch.where(alive[:, None, None], W_new, W)
            if task.bias:
                b_new, _ = sgld_update(b, db, 0.0, torch.randn(b.shape, generator=g),
                                       eps[:, None], s.gamma, n_beta[:, None])
                b = torch.where(alive[:, None], b_new, b)
            if R > 1 and (t + 1) % s.swap_every == 0:
                full = tms.loss(W, b, data[None].expand(R * S, n, c), imp, groups, "sum")
                _swap(W, b, full.view(R, S), betas * n, (t // s.swap_every) % 2, g, swaps)
            if t >= s.burnin and (t - s.burnin) % s.thin == 0:
                kept_W.append(W.view(R, S, m, c)[-1].clone())
                kept_b.append(b.view(R, S, c)[-1].clone())
    cold_alive = alive.view(R, S)[-1]
    labels = kgon(torch.stack(kept_W), torch.stack(kept_b) if task.bias else None).label  # (D, S)
    counts = [dict(Counter(labels[:, k].tolist())) if cold_alive[k] else {DIVERGED: len(labels)}
              for k in range(S)]
    rate = (swaps[:, 0] / swaps[:, 1].clamp_min(1)).tolist()
    return PosteriorResult(n, list(task.start_labels), counts, betas.tolist(), rate,
                           int((~alive.view(R, S)).any(0).sum()))


def _swap(W: Tensor, b: Tensor, full_loss: Tensor, n_beta: Tensor, parity: int,
          g: torch.Generator, swaps: Tensor) -> None:
    """Propose exchanges between rungs (r, r+1), r = parity, parity + 2, ...; in place.

    W: (R S, m, n), b: (R S, n) rung-major; full_loss: (R, S) on the whole training set;
    n_beta: (R,); swaps: (R - 1, 2) accepted and proposed counts, updated."""
    R, S = full_loss.shape
    Wv, bv = W.view(R, S, *W.shape[1:]), b.view(R, S, -1)
    for r in range(parity, R - 1, 2):
        log_accept = (n_beta[r] - n_beta[r + 1]) * (full_loss[r] - full_loss[r + 1])  # (S,)
        accept = torch.rand(S, generator=g).log() < log_accept.nan_to_num(-math.inf)
        swaps[r, 0] += accept.sum()
        swaps[r, 1] += S
        for t in (Wv, bv):
            upper, lower = t[r][accept].clone(), t[r + 1][accept].clone()
            t[r][accept], t[r + 1][accept] = lower, upper
