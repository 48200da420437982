"""Ground truth for the LLC estimator: models whose learning coefficient is known exactly.

The estimator (devtms.llc.health) is lambda_hat = n_beta * (mean draw loss - init loss) over
SGLD chains localized at w* (devtms.llc.sgld). For a loss K >= 0 that vanishes at w* and a
posterior exp(-n_beta K(w) - gamma/2 |w - w*|^2), n_beta E[K] -> lambda, the learning
coefficient at w*, as n_beta -> oo with gamma fixed (multiplicity 1; a log log term otherwise).
A model with lambda < d/2 tells the sampler's conventions apart from "any d/2-ish number":
sampling at the wrong temperature (noise sqrt(2 eps) instead of sqrt(eps), n_beta on a
different scale than the estimate's) moves the estimate by a factor, far outside 10%.

1. Reduced-rank regression (Aoyagi & Watanabe 2005): devtms's `sgld_update` and `summarize`
   on the closed-form lambda of a singular model, far below d/2.
2. An overcomplete linear TMS with bias at W^T W = I: the real batched engine on a minimally
   singular model (smooth fibres), lambda = rank(Hessian) / 2 < d/2.
"""

from __future__ import annotations

import pytest
import torch

from devtms import llc
from devtms import model as tms
from devtms.activations import contiguous_groups
from devtms.data import sample_features
from devtms.llc.sgld import sgld_update
from devtms.rng import generator

# ---------------------------------------------------------------------------------------------
# (1) reduced-rank regression


def aoyagi_watanabe_lambda(M: int, N: int, H: int, r: int) -> float:
    """The learning coefficient of y = B A x, A: (H, M), B: (N, H), at a true BA of rank r
    (Aoyagi & Watanabe 2005, Main Theorem, the case M + r <= N + H, N + r <= M + H,
    H + r <= M + N with M + N + H + r even, where the multiplicity is 1)."""
    assert M + r <= N + H and N + r <= M + H and H + r <= M + N
    assert (M + N + H + r) % 2 == 0, "odd case: multiplicity 2 (log log n), not used here"
    return (2 * (H + r) * (M + N) - (M - N) ** 2 - (H + r) ** 2) / 8


def rank_r_truth(M: int, N: int, H: int, r: int, gen: torch.Generator
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(A0, B0) with B0 A0 of rank r: A0's first r rows and B0's first r columns orthonormal,
    the rest zero (rank(A0) = rank(B0) = r, the most singular points of the true set
    {BA = B0 A0}, where the local coefficient is Aoyagi-Watanabe's). A rotation of the input,
    output or hidden space maps any such pair to any other and leaves K and the isotropic
    localizing prior unchanged, so this is general position."""
    A0 = torch.zeros(H, M, dtype=torch.float64)
    B0 = torch.zeros(N, H, dtype=torch.float64)
    if r:
        A0[:r] = torch.linalg.qr(torch.randn(M, r, generator=gen, dtype=torch.float64))[0].T
        B0[:, :r] = torch.linalg.qr(torch.randn(N, r, generator=gen, dtype=torch.float64))[0]
    return A0, B0


def rrr_draws(A0: torch.Tensor, B0: torch.Tensor, *, n_beta: float, eps: float, gamma: float,
              chains: int, burnin: int, draws: int, gen: torch.Generator) -> torch.Tensor:
    """SGLD chains (batched on a leading axis) with devtms's update on the population loss

        K(A, B) = E_x 1/2 |(B A - B0 A0) x|^2 = 1/2 ||B A - B0 A0||_F^2,   x ~ N(0, I_M),

    (the Gaussian regression's KL divergence, no data noise, so the gradient is exact),
    all started at and localized to (A0, B0). -> K at each draw, before that step's update
    (as the engines record), (chains, draws)."""
    C0 = B0 @ A0
    A = A0.expand(chains, *A0.shape).clone()
    B = B0.expand(chains, *B0.shape).clone()
    out = torch.empty(chains, draws, dtype=torch.float64)
    for t in range(burnin + draws):
        R = B @ A - C0  # (chains, N, M)
        if t >= burnin:
            out[:, t - burnin] = 0.5 * R.square().sum((1, 2))
        grad_A, grad_B = B.transpose(1, 2) @ R, R @ A.transpose(1, 2)
        noise_A = torch.randn(A.shape, generator=gen, dtype=torch.float64)
        noise_B = torch.randn(B.shape, generator=gen, dtype=torch.float64)
        A, _ = sgld_update(A, grad_A, A0, noise_A, eps, gamma, n_beta)
        B, _ = sgld_update(B, grad_B, B0, noise_B, eps, gamma, n_beta)
    return out


@pytest.mark.parametrize("M, N, H, r, gamma, burnin", [
    (3, 3, 3, 1, 10.0, 20_000),  # lambda = 4,   d = 18
    (3, 3, 2, 0, 1.0, 40_000),  # lambda = 5/2, d = 12
])
def test_reduced_rank_regression_lands_within_10_percent_of_aoyagi_watanabe(M, N, H, r, gamma,
                                                                             burnin):
    """Reduced-rank regression y = B A x is singular: (A, B) -> (G A, B G^-1) leaves BA
    unchanged, and where A and B lose rank the fibre {BA = C0} branches. Aoyagi & Watanabe's
    lambda = [2 (H + r)(M + N) - (M - N)^2 - (H + r)^2] / 8:
      M = N = H = 3, r = 1: [2*4*6 - 0 - 16] / 8 = 4   (d/2 = 9; a generic point of the
          fibre, A invertible, would be regular in its 9 normal directions: 4.5);
      M = N = 3, H = 2, r = 0: [2*2*6 - 0 - 4] / 8 = 5/2   (d/2 = 6; a generic point of
          {A = 0}, B of rank 2, would give 6/2 = 3).

    Settings (n_beta = 1e4, eps = 1e-5, 128 chains, 10^4 draws). eps n_beta times the curvature
    of the stiff directions (~1 at |A0| = |B0| = 1) is 0.1: discretization adds about +1%.
    gamma must localize the chains in the fibre's flat, unbounded directions, which the
    posterior otherwise fills out to the prior's scale gamma^-1/2: for r = 1 the most singular
    point (rank A = rank B = 1) must keep dominating the generic points 4.5 of the fibre around
    it, so gamma^-1/2 ~ 0.3 < |A0| = 1 (gamma = 1 gave 4.16-4.6 depending on burn-in); for r = 0
    K is homogeneous of degree 4, so the estimate depends on gamma / sqrt(n_beta) only and
    approaches 5/2 as that shrinks (0.1: 2.31, 0.03: 2.43, 0.01: 2.49), at the price of a burn-in
    of ~1/(eps gamma) steps to fill the prior. Measured: r = 1 3.94 (twice the draws: 3.95;
    eps -> 0: ~3.89), r = 0 2.48 (twice the draws: 2.49), sem 0.02."""
    n_beta, eps, chains, draws = 1e4, 1e-5, 128, 10_000
    lam, d = aoyagi_watanabe_lambda(M, N, H, r), H * (M + N)
    assert lam < 0.5 * d / 2  # the case is singular enough to tell lambda from d/2
    A0, B0 = rank_r_truth(M, N, H, r, generator("llc-truth", "rrr", M, N, H, r))
    loss = rrr_draws(A0, B0, n_beta=n_beta, eps=eps, gamma=gamma, chains=chains, burnin=burnin,
                     draws=draws, gen=generator("llc-truth", "rrr-noise", M, N, H, r))
    row = llc.summarize(loss[None], torch.zeros(1, dtype=torch.float64), n_beta, d)[0]
    assert abs(row["llc_mean"] - lam) / lam < 0.10, (row["llc_mean"], lam, row)
    assert row["llc_mean"] < 0.6 * d / 2, (row["llc_mean"], d / 2)
    assert row["healthy"], row


# ---------------------------------------------------------------------------------------------
# (2) a minimally singular TMS through the real batched engine


@pytest.mark.parametrize("precond, eps, gamma", [("none", 2e-6, 1.0), ("rmsprop", 1e-6, 1.0),
                                                ("curvature", 0.05, 100.0)])
def test_overcomplete_linear_tms_at_identity_lands_within_10_percent_of_hessian_rank_over_2(
        precond, eps, gamma):
    """x' = W^T W x + b, n = 3 features, m = 4 >= n hidden dimensions, at W^T W = I, b = 0
    (W = 3 orthonormal columns): the model reproduces every x, loss 0 (realizable).

    With reduction "sum" and importance 1 the loss is L = mean_x |dG x + db|^2 with
    dG = W^T W - I and db = b: a positive-definite quadratic in (dG, db) when z = (x, 1) has
    a positive-definite second moment (checked below). (W, b) -> (W^T W, b) is a submersion
    at full-column-rank W onto Sym(3) x R^3, dimension 3*4/2 + 3 = 9; its fibre through W*
    is the orbit O(4) W* (the Stiefel manifold V_3(R^4), compact, dimension 12 - 6 = 6). So L
    is a nondegenerate quadratic in 9 normal coordinates and flat along a smooth 6-manifold:
    lambda = 9/2 = 4.5 with multiplicity 1 (checked below: the Hessian at w* has rank 9),
    while d/2 = (12 + 3)/2 = 7.5.

    Data: sparse-uniform, p = 0.1, scaled by 2, which makes the 9 nonzero Hessian eigenvalues
    0.8 to 2.5 (p = 0.5 spreads them 0.6 to 11 and needs 4x smaller steps). n_beta = 1e4:
    n_beta x curvature >= 8000 >> gamma = 1; eps = 2e-6: eps n_beta x curvature <= 0.05 (the
    discretization bias is about half that, per direction); the slowest direction relaxes in
    ~2 / (eps n_beta 0.8) ~ 120 steps, so 500 burn-in steps and 4000 draws. Measured: 4.59
    (sem 0.05, 32 chains; twice the draws: 4.54, sem 0.04).

    RMSProp-preconditioned (pSGLD) at eps = 1e-6, the same steps: 4.58 (sem 0.05). Its
    squared gradients here are ~1e-4, far below the running mean's start at 1, so for the
    whole run G ~ sqrt((1 - beta2^t) / beta2^t) (0.03 at the first step, 0.8 at the end of the
    burn-in, 9.4 at the last draw): eps G grows through the draws, and eps is chosen for the
    last (eps G n_beta x curvature <= 0.25; eps = 1e-5 drifts up to 5.3, 3e-7 with 500 steps
    of burn-in is still climbing at 4.4).

    Curvature-preconditioned at eps = 0.05 (dimensionless) needs gamma = 100: 4.64 (8 chains;
    the exact engine gives 4.45-4.47 at this gamma, tests/test_llc_mala.py). At gamma = 1 its
    chains diverge: the preconditioner gives the 6 flat directions steps of 1/sqrt(gamma), and
    along the curved orbit they reach where the stiff directions' gradient, n_beta = 1e4
    times it, acts through those large steps (eps 0.002 survives, unconverged). It is made
    for n_beta x curvature / gamma of tens to hundreds, as in the TMS presets."""
    n, m, N = 3, 4, 1000
    x = sample_features("sparse-uniform", N, n, 0.1, generator("llc-truth", "tms-data")) * 2.0
    orthogonal = torch.linalg.qr(torch.randn(m, m, generator=generator("llc-truth", "tms-W")))[0]
    W_star, b_star, imp = orthogonal[:, :n].contiguous(), torch.zeros(n), torch.ones(n)
    torch.testing.assert_close(W_star.T @ W_star, torch.eye(n))
    lam, d = (n * (n + 1) / 2 + n) / 2, m * n + n

    # the derivation's premises: z = (x, 1) spans R^{n+1}, and the Hessian has rank 2 lambda
    z = torch.cat([x, torch.ones(N, 1)], 1).double()
    assert torch.linalg.eigvalsh(z.T @ z / N).min() > 0.05

    def loss(v: torch.Tensor) -> torch.Tensor:
        W, b = v[: m * n].reshape(1, m, n), v[m * n :].reshape(1, n)
        return tms.loss(W, b, x.double()[None], imp.double()[None],
                        contiguous_groups(["linear"]), "sum")[0]

    v_star = torch.cat([W_star.flatten(), b_star]).double()
    eig = torch.linalg.eigvalsh(torch.autograd.functional.hessian(loss, v_star))
    assert int((eig > 1e-6 * eig.max()).sum()) == 2 * lam

    params = llc.LLCParams(eps=eps, gamma=gamma, n_beta=1e4, chains=32, draws=4000, burnin=500,
                           batch_size=100, seed=0, n_samples=N, precond=precond)
    task = llc.ChunkTask("batched", [0], [0], ["linear"], [0], W_star[None, None],
                         b_star[None, None], x[None], imp[None], bias=True, reduction="sum",
                         params=params)
    row = llc.estimate_chunk(task).rows[0]
    assert row["init_loss"] < 1e-10, row
    assert abs(row["llc_mean"] - lam) / lam < 0.10, (row["llc_mean"], lam, row)
    assert row["llc_mean"] < 0.75 * d / 2, (row["llc_mean"], d / 2)
    assert row["healthy"], row
