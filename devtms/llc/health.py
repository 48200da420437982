"""From loss traces to an estimate: the LLC statistics and the health of every estimate.

    lambda_hat(w*) = n_beta * (mean over draws of L_batch(w_t) - L_N(w*)),   per chain

averaged over the chains that did not diverge. Health (`summarize`): a chain whose minibatch
loss becomes non-finite or exceeds DIVERGENCE_FACTOR x max(init loss, LOSS_FLOOR) is diverged
(the engines freeze it at w* and record NaN draws); the estimate's LLC is over the remaining
chains and the row says healthy = false with the reason. An LLC whose mean + 2 sem < 0 (not
at a local minimum, or eps too large) or mean - 2 sem > 1.1 d/2 (d/2 is the largest learning
coefficient a d-parameter model can have; beyond SGLD's discretization bias this means eps too
large or escaped chains) is flagged too.
"""

from __future__ import annotations

import math
from typing import Any

import torch

Tensor = torch.Tensor

DIVERGENCE_FACTOR = 1e6  # a chain diverged once its minibatch loss exceeds this x init loss ...
LOSS_FLOOR = 1e-6  # ... or this x DIVERGENCE_FACTOR, whichever is larger
ABOVE_MAX_FACTOR = 1.1  # flag an llc more than 10% (and 2 sem) above d/2 (SGLD's bias is smaller)


def divergence_limit(init_loss: Tensor) -> Tensor:
    """The minibatch loss above which a chain counts as diverged, per estimate. float32"""
    return DIVERGENCE_FACTOR * init_loss.clamp(min=LOSS_FLOOR).float()


def summarize(loss: Tensor, init_loss: Tensor, n_beta: float, n_params: int,
              mala: Tensor | None = None) -> list[dict[str, Any]]:
    """Per-estimate LLC statistics and health from loss traces.

    loss: (E, chains, draws), NaN in the draws of diverged chains; init_loss: (E,).
    llc per chain = n_beta * (mean draw loss - init loss); mean over healthy chains, std with
    torch's unbiased .std() (as devinterp), sem = std / sqrt(healthy chains).
    """
    loss64 = loss.double()
    diverged = ~torch.isfinite(loss64).all(-1)  # (E, C)
    per_chain = n_beta * (loss64.mean(-1) - init_loss.double()[:, None])  # (E, C)
    rows = []
    for e in range(loss.shape[0]):
        good = per_chain[e][~diverged[e]]
        k = int(good.numel())
        mean = float(good.mean()) if k else float("nan")
        std = float(good.std()) if k > 1 else float("nan")
        sem = std / math.sqrt(k) if k > 1 else float("nan")
        reasons = []
        if not math.isfinite(float(init_loss[e])):
            reasons.append("the checkpoint's loss is not finite (its training diverged)")
        elif k < loss.shape[1]:
            reasons.append(
                f"diverged: {loss.shape[1] - k} of {loss.shape[1]} chains (non-finite or exploding "
                f"loss){'; llc over the rest' if k else ''}")
        if k > 1 and mean + 2 * sem < 0:
            reasons.append("negative llc (mean + 2 sem < 0): not at a local minimum, or eps "
                           "too large")
        if k > 1 and mean - 2 * sem > ABOVE_MAX_FACTOR * n_params / 2:
            reasons.append(f"llc above d/2 = {n_params / 2:g}, the largest possible: eps too "
                           "large or chains escaped")
        accept = float("nan")
        if mala is not None and k:
            chains_ok = mala[e][~diverged[e]]
            chains_ok = chains_ok[torch.isfinite(chains_ok)]
            if chains_ok.numel():
                accept = float(chains_ok.double().mean())
        rows.append(dict(llc_mean=mean, llc_std=std, llc_sem=sem, num_diverged=loss.shape[1] - k,
                         mala_acceptance=accept, healthy=not reasons, reason="; ".join(reasons)))
    return rows


def join_reasons(a: str, b: str) -> str:
    return f"{a}; {b}" if a else b
