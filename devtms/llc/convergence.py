"""Have the chains of an estimate forgotten w* and mixed? R-hat and ESS of loss traces.

An LLC estimate is the mean of the sampled loss after burn-in, so the quantity whose
convergence matters is the loss trace itself (chains x draws), not the parameters:

    rhat      rank-normalized split R-hat over chains (Vehtari et al. 2021), through ArviZ:
              near 1 when every half-chain samples the same distribution. A trace still
              climbing from L(w*) after burn-in gives first halves below second halves: R-hat > 1.
    ess_bulk  bulk effective sample size of the pooled draws (ArviZ): how many independent
              draws the mean is worth; the llc's sem is only trustworthy when it is large.
    llc_drift n_beta x (mean loss of the second half of the draws - mean of the first half),
              averaged over chains (devtms.llc.health.summarize): on the llc's own scale, how
              much the estimate was still moving during the draws.

Traces longer than MAX_DIAGNOSTIC_DRAWS are thinned (every k-th draw) before R-hat and ESS:
thinning a chain never raises its ESS, so the numbers are conservative, and it keeps the cost
at a few milliseconds per estimate. ArviZ is the field's implementation of these diagnostics;
devtms does not re-derive them.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

Tensor = torch.Tensor

MAX_DIAGNOSTIC_DRAWS = 500  # per chain, after thinning
MIN_DRAWS = 8  # fewer draws per chain: R-hat and ESS are not defined (NaN)


def rhat_ess(loss: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Split R-hat and bulk ESS of every estimate's loss trace. loss: (E, chains, draws), finite
    -> (rhat (E,), ess (E,)), NaN where there are fewer than MIN_DRAWS draws or one chain."""
    E, C, T = loss.shape
    if C < 2 or T < MIN_DRAWS or E == 0:
        return np.full(E, np.nan), np.full(E, np.nan)
    thin = math.ceil(T / MAX_DIAGNOSTIC_DRAWS)
    x = loss[..., ::thin].double().numpy()
    import xarray as xr

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ArviZ's import notice; constant traces' divide warnings
        import arviz as az

        dataset = xr.Dataset({"loss": (("estimate", "chain", "draw"), x)})
        rhat = az.rhat(dataset, method="rank")["loss"].to_numpy()
        ess = az.ess(dataset, method="bulk")["loss"].to_numpy()
    return rhat, ess

