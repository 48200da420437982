"""From loss traces to an estimate: the LLC statistics, their diagnostics and the state of every
estimate.

    lambda_hat(w*) = n_beta * (mean over draws of L_batch(w_t) - L_N(w*)),   per chain

averaged over the chains that did not diverge. Every estimate gets one `state` (llc.csv), the
first that applies, in this order:

    diverged        the checkpoint's loss is not finite, or a chain's minibatch loss became
                    non-finite or exceeded DIVERGENCE_FACTOR x max(init loss, LOSS_FLOOR) (the
                    engines freeze such a chain at w* and record NaN draws; the llc is over the
                    remaining chains)
    not_at_minimum  the chains descend below the checkpoint's loss by more than the LLC's
                    resolution (llc mean + 2 sem < -LLC_RESOLUTION): w* is not a local minimum,
                    so there is no basin to measure. The report draws these apart and the
                    transition detector skips them. A smaller descent is an LLC of 0 to within
                    the resolution (a flat basin: a dead or saturated model). The reason says
                    what explains the descent (`which_point`, from devtms.llc.curvature): the
                    gradient (training had not settled), negative curvature (a saddle), or
                    neither (a plateau's edge).
    implausible     llc mean - 2 sem > d/2, above the largest learning coefficient a
                    d-parameter model can have: eps too large, or chains escaped the basin
    unconverged     the loss trace after burn-in has not settled (devtms.llc.convergence):
                    split R-hat > RHAT_MAX, bulk ESS < ESS_MIN, a drift between the halves of
                    the draws larger than DRIFT_MAX x |llc| (and 3 of its sems), or MALA
                    acceptance below MALA_MIN (eps far too large for the basin's curvature)
    healthy         none of the above; `healthy` = (state == "healthy")

`reason` says which numbers tripped the state, all of them when several apply.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from devtms.llc.convergence import rhat_ess

Tensor = torch.Tensor

DIVERGENCE_FACTOR = 1e6  # a chain diverged once its minibatch loss exceeds this x init loss ...
LOSS_FLOOR = 1e-6  # ... or this x DIVERGENCE_FACTOR, whichever is larger
LLC_RESOLUTION = 0.05  # a tenth of the smallest step between learning coefficients (1/2, one
# regular parameter): a descent below w*'s loss worth less than this is no evidence of a saddle
ABOVE_MAX_FACTOR = 1.0  # flag an llc above d/2 by more than 2 sem: no tolerance above the bound
# (SGLD's step-size bias is no excuse: the self-check measures it, devtms.llc.check)
RHAT_MAX = 1.05  # split R-hat of the loss trace over chains
ESS_MIN = 100.0  # bulk effective sample size of the loss trace, all chains pooled
DRIFT_MAX = 0.10  # |second-half llc - first-half llc| relative to |llc|
MALA_MIN = 0.3  # mean MALA acceptance below this: eps too large (minibatch noise alone keeps
# it near 0.6 on the presets at every eps from 3e-5 to 3e-3, so only a collapse says something)

GRADIENT_SHARE = 0.5  # a descent of which the gradient at w* explains at least this share is
# the gradient's ("w* is not a critical point"); else a Hessian that curves down more steeply
# than the localization holds (`curved_down`) makes it negative curvature's, and anything else
# a plateau's edge

STATES = ("healthy", "not_at_minimum", "implausible", "unconverged", "diverged")


def divergence_limit(init_loss: Tensor) -> Tensor:
    """The minibatch loss above which a chain counts as diverged, per estimate. float32"""
    return DIVERGENCE_FACTOR * init_loss.clamp(min=LOSS_FLOOR).float()


def summarize(loss: Tensor, init_loss: Tensor, n_beta: float, n_params: int,
              mala: Tensor | None = None) -> list[dict[str, Any]]:
    """Per-estimate LLC statistics, diagnostics and state from loss traces.

    loss: (E, chains, draws), NaN in the draws of diverged chains; init_loss: (E,);
    mala: (E, chains) mean acceptance per chain, or None.
    llc per chain = n_beta * (mean draw loss - init loss); mean over healthy chains, std with
    torch's unbiased .std() (as devinterp), sem = std / sqrt(healthy chains). R-hat, ESS and
    drift are over the healthy chains too.
    """
    E, C, T = loss.shape
    loss64 = loss.double()
    diverged = ~torch.isfinite(loss64).all(-1)  # (E, C)
    per_chain = n_beta * (loss64.mean(-1) - init_loss.double()[:, None])  # (E, C)
    half = T // 2
    drift_chain = n_beta * (loss64[..., T - half :].mean(-1) - loss64[..., :half].mean(-1)) \
        if half else torch.full((E, C), float("nan"), dtype=torch.float64)  # (E, C)
    rhat, ess = _convergence(loss, diverged)
    rows = []
    for e in range(E):
        good = ~diverged[e]
        k = int(good.sum())
        mean, std, sem = _mean_std_sem(per_chain[e][good])
        drift, drift_sem = _mean_std_sem(drift_chain[e][good])[::2]
        accept = float("nan")
        if mala is not None and k:
            chains_ok = mala[e][good]
            chains_ok = chains_ok[torch.isfinite(chains_ok)]
            if chains_ok.numel():
                accept = float(chains_ok.double().mean())
        state, reasons = _state(float(init_loss[e]), k, C, mean, sem, n_params, rhat[e], ess[e],
                                drift, drift_sem, accept)
        rows.append(dict(llc_mean=mean, llc_std=std, llc_sem=sem, num_diverged=C - k,
                         mala_acceptance=accept, rhat=float(rhat[e]), ess_bulk=float(ess[e]),
                         llc_drift=drift, state=state, healthy=state == "healthy",
                         reason="; ".join(reasons)))
    return rows


def _mean_std_sem(values: Tensor) -> tuple[float, float, float]:
    k = int(values.numel())
    mean = float(values.mean()) if k else float("nan")
    std = float(values.std()) if k > 1 else float("nan")
    return mean, std, std / math.sqrt(k) if k > 1 else float("nan")


def _convergence(loss: Tensor, diverged: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """R-hat and ESS per estimate over its healthy chains: one ArviZ call for the estimates
    whose chains all survived, one per estimate for the others. -> ((E,), (E,))"""
    E = loss.shape[0]
    rhat, ess = np.full(E, np.nan), np.full(E, np.nan)
    whole = (~diverged.any(-1)).nonzero().flatten()
    if whole.numel():
        rhat[whole.numpy()], ess[whole.numpy()] = rhat_ess(loss[whole])
    for e in diverged.any(-1).nonzero().flatten().tolist():
        good = ~diverged[e]
        if int(good.sum()) >= 2:
            r, s = rhat_ess(loss[e, good][None])
            rhat[e], ess[e] = r[0], s[0]
    return rhat, ess


def _state(init: float, k: int, C: int, mean: float, sem: float, n_params: int, rhat: float,
           ess: float, drift: float, drift_sem: float, accept: float) -> tuple[str, list[str]]:
    """(state, reasons): the first state in the module docstring's order that applies."""
    if not math.isfinite(init):
        return "diverged", ["the checkpoint's loss is not finite (its training diverged)"]
    if k < C:
        return "diverged", [f"diverged: {C - k} of {C} chains (non-finite or exploding "
                            f"loss){'; llc over the rest' if k else ''}"]
    if k > 1 and mean + 2 * sem < -LLC_RESOLUTION:
        return "not_at_minimum", ["not at a local minimum: the chains descend below the "
                                  f"checkpoint's loss (llc mean + 2 sem < -{LLC_RESOLUTION:g})"]
    if k > 1 and mean - 2 * sem > ABOVE_MAX_FACTOR * n_params / 2:
        return "implausible", [f"llc above d/2 = {n_params / 2:g}, the largest possible: eps "
                               "too large or chains escaped"]
    reasons = []
    if not rhat <= RHAT_MAX:
        reasons.append(f"unconverged: R-hat {rhat:.3f} > {RHAT_MAX:g}" if math.isfinite(rhat)
                       else "unconverged: too few draws for R-hat")
    if not ess >= ESS_MIN:
        reasons.append(f"unconverged: ESS {ess:.0f} < {ESS_MIN:g}" if math.isfinite(ess)
                       else "unconverged: too few draws for ESS")
    if abs(drift) > DRIFT_MAX * abs(mean) and abs(drift) > 3 * drift_sem:
        reasons.append(f"unconverged: the llc drifts by {drift:+.3g} between the halves of the "
                       "draws")
    if accept < MALA_MIN:
        reasons.append(f"unconverged: MALA acceptance {accept:.2f} < {MALA_MIN:g} (eps too "
                       "large)")
    return ("unconverged", reasons) if reasons else ("healthy", [])


def is_critical(llc: float, shift: float) -> bool:
    """Whether w* counts as a critical point for a descent to `llc`: its gradient's shift
    (devtms.llc.curvature.gradient_shift) is finite and explains less than GRADIENT_SHARE."""
    return math.isfinite(shift) and shift < GRADIENT_SHARE * abs(llc)


def which_point(llc: float, shift: float, hess_min: float, n_beta: float, gamma: float
                ) -> str:
    """The second half of a not_at_minimum reason: what explains the descent at w*
    (devtms.llc.curvature), in fixed words (the report counts estimates by reason; the numbers
    are llc.csv's grad_norm, grad_shift and hess_min). hess_min NaN: unknown."""
    if not math.isfinite(shift):
        return "the gradient at w* is not finite"
    if not is_critical(llc, shift):
        return "the gradient at w* explains the descent (w* is not a critical point: training " \
               "had not settled)"
    if not math.isfinite(hess_min):
        return "the gradient at w* explains less than half the descent (its curvature is not " \
               "known)"
    if curved_down(hess_min, n_beta, gamma):
        return "negative curvature at w* explains the descent (a saddle, or a slope curving " \
               "down)"
    return "neither the gradient nor the curvature at w* explains the descent: lower loss lies " \
           "within the chains' reach beyond them (the edge of a plateau)"


def curved_down(hess_min: float, n_beta: float, gamma: float) -> bool:
    """gamma + n_beta x hess_min < 0: along the Hessian's lowest eigenvector the localized
    posterior exp(-n_beta L - gamma/2 |w - w*|^2) of the quadratic model is not normalizable.
    False where hess_min is unknown.

    Not a state rule by itself: the loss's higher-order terms can hold the chains all the same
    (docs/science.md, section 4.5: on chen2023 chains 5 times longer at such checkpoints
    reproduce their llc and never descend). It only names the cause of a descent."""
    return math.isfinite(hess_min) and gamma + n_beta * hess_min < 0


def join_reasons(a: str, b: str) -> str:
    return f"{a}; {b}" if a else b
