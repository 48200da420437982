"""Oracle tests of the exact reference engine, devtms.llc.mala (full-batch MALA on the
localized tempered posterior, Hessian-preconditioned, step tuned by dual averaging).

Each test checks a number against something the engine does not compute itself:

1. a Gaussian posterior's closed form, through MALAState + DualAveraging, where unadjusted
   Langevin (devtms's `sgld_update`) at the same step is biased by +43%;
2. a bimodal, curved 2-d density's moments by quadrature on a grid;
3. the learning coefficient 9/2 of an overcomplete linear TMS at W^T W = I (the model of
   tests/test_llc_truth.py), through the real engine;
4. the batched SGLD engine at k-gon points: agreement where its step is small, and the
   step-size bias (above MALA by 17-18%, as the quadratic model predicts) where it is large;
5. itself: an estimate's numbers do not depend on its chunk, and do on the llc seed;
6. Chen et al. 2023's 8.5 at the exact 6-gon critical point (slow tier).

Monte Carlo tolerances use standard errors over chains, which are independent (their own
noise; the engine's chains share nothing else at full batch).
"""

from __future__ import annotations

import math

import pytest
import torch

from devtms import llc
from devtms import model as tms
from devtms.activations import contiguous_groups
from devtms.bayes import theory
from devtms.data import sample_features
from devtms.llc import mala
from devtms.llc.curvature import hessian
from devtms.llc.sgld import sgld_update
from devtms.rng import generator

KEY = "test-llc-mala"


def adapted_mala(potential, theta0: torch.Tensor, burnin: int, draws: int,
                 gen: torch.Generator, observe):
    """Chains of mala.MALAState run as the engine runs them: the step of every chain tuned by
    mala.DualAveraging from mala.H0 during burn-in, its final (averaged) value frozen for the
    draws. theta0: (d, P). -> (observe(state) at each draw stacked (draws, ...), mean
    acceptance probability over the draws (P,), the frozen steps (P,) float64)"""
    P = theta0.shape[-1]
    state = mala.MALAState(theta0, *potential(theta0))
    step = mala.DualAveraging(torch.full((P,), mala.H0, dtype=torch.float64))
    h = step.current()
    seen, accept = [], torch.zeros(P, dtype=torch.float64)
    for t in range(burnin + draws):
        xi = torch.randn(theta0.shape, generator=gen, dtype=theta0.dtype)
        u = torch.rand(P, generator=gen, dtype=theta0.dtype)
        alpha = state.advance(potential, h.to(theta0.dtype), xi, u)
        if t < burnin:
            step.update(alpha)
            h = step.final() if t == burnin - 1 else step.current()
        else:
            seen.append(observe(state))
            accept += alpha
    return torch.stack(seen), accept / draws, h


def mean_and_sem(per_chain: torch.Tensor) -> tuple[float, float]:
    """Mean over the last axis (chains) and its standard error."""
    return float(per_chain.mean(-1)), float(per_chain.std(-1) / math.sqrt(per_chain.shape[-1]))


# ---------------------------------------------------------------------------------------------
# (1) a Gaussian posterior in closed form


def test_mala_samples_a_gaussian_posterior_exactly_where_unadjusted_langevin_is_biased():
    """L(theta) = 1/2 theta^T A theta, A SPD in d = 8 with eigenvalues 1, 1, 0.8, 0.6, 0.3,
    0.1, 0.03, 0.01 (condition number 100) in a random basis; n_beta = 100, gamma = 1. The
    posterior exp(-n_beta L - gamma/2 |theta|^2) is Gaussian with precision
    Lambda = n_beta A + gamma I (eigenvalues 2 to 101), so exactly

        n_beta E[L] = n_beta/2 tr(A Lambda^-1) = 3.5391.

    Unadjusted Langevin at step h (sgld_update, full gradient, no minibatch) is a linear
    recursion whose stationary covariance is (Lambda (I - h Lambda / 4))^-1: its n_beta E[L]
    is also in closed form, and above the truth.

    No preconditioner: dual averaging tunes one h per chain to h ~ 0.019 (h lambda_max ~ 1.9),
    where the unadjusted chain's bias is +43%. Measured (512 chains, 1000 burn-in, 2000 draws,
    two noise keys): MALA 3.547 and 3.544 (sem 0.006: +0.2%, 1.3 and 0.7 sem), unadjusted
    5.075 and 5.070 (sem 0.007) against its closed form 5.069, mean acceptance 0.617 (target
    0.6). 1.6 s."""
    d, n_beta, gamma, chains, burnin, draws = 8, 100.0, 1.0, 512, 1000, 2000
    a = torch.tensor([1.0, 1.0, 0.8, 0.6, 0.3, 0.1, 0.03, 0.01], dtype=torch.float64)
    Q = torch.linalg.qr(torch.randn(d, d, generator=generator(KEY, "gaussian-A"),
                                    dtype=torch.float64))[0]
    A = (Q * a) @ Q.T
    precision = n_beta * a + gamma  # Lambda's eigenvalues (it shares A's eigenvectors)
    exact = float((0.5 * n_beta * a / precision).sum())
    assert float(a.max() / a.min()) == pytest.approx(100.0)
    A32 = A.float()

    def potential(theta: torch.Tensor):  # theta (d, P) float32 -> (L, U float64, grad U)
        At = A32 @ theta
        loss = 0.5 * (theta.double() * (A @ theta.double())).sum(0)
        U = n_beta * loss + 0.5 * gamma * theta.double().square().sum(0)
        return loss, U, n_beta * At + gamma * theta

    gen = generator(KEY, "gaussian-noise")
    theta0 = torch.zeros(d, chains)
    losses, accept, h = adapted_mala(potential, theta0, burnin, draws, gen,
                                     lambda s: s.loss.clone())
    mala_mean, mala_sem = mean_and_sem(n_beta * losses.mean(0))

    # unadjusted Langevin at the same per-chain steps, through devtms's update rule
    w, ula = theta0.clone(), []
    for t in range(burnin + draws):
        noise = torch.randn(w.shape, generator=gen)
        w, _ = sgld_update(w, A32 @ w, torch.zeros(()), noise, h.float(), gamma, n_beta)
        if t >= burnin:
            ula.append(0.5 * (w.double() * (A @ w.double())).sum(0))
    ula_mean, ula_sem = mean_and_sem(n_beta * torch.stack(ula).mean(0))
    ula_exact = float((0.5 * n_beta * a / (precision * (1 - h[:, None] * precision / 4)))
                      .sum(1).mean())

    assert mala_sem < 0.005 * exact  # precise enough to tell a few percent
    assert abs(mala_mean - exact) <= 4 * mala_sem, (mala_mean, mala_sem, exact)
    assert abs(accept.mean() - mala.TARGET_ACCEPTANCE) < 0.05, float(accept.mean())
    # the step is one where the correction matters: unadjusted Langevin is off by > 10% ...
    assert ula_mean > 1.10 * exact + 4 * ula_sem, (ula_mean, ula_sem, exact)
    # ... by the amount its own closed form says (so this harness runs Langevin correctly)
    assert abs(ula_mean - ula_exact) <= 4 * ula_sem, (ula_mean, ula_sem, ula_exact)


# ---------------------------------------------------------------------------------------------
# (2) a non-Gaussian density against quadrature


MIX_MEANS, MIX_VAR, MIX_WEIGHTS, VALLEY = (-1.2, 1.2), 0.25, (0.7, 0.3), 10.0


def mixture_potential(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """U(x, y) = -log(0.7 N(x; -1.2, 0.5^2) + 0.3 N(x; 1.2, 0.5^2)) + 5 (y - sin 2x)^2 and its
    gradient (2, ...): two modes of unequal mass joined by a curved valley, float64."""
    mu = torch.tensor(MIX_MEANS, dtype=torch.float64).view(2, *[1] * x.dim())
    log_w = torch.tensor(MIX_WEIGHTS, dtype=torch.float64).log().view(2, *[1] * x.dim())
    parts = log_w - (x - mu).square() / (2 * MIX_VAR)
    residual = y - torch.sin(2 * x)
    U = -torch.logsumexp(parts, 0) + 0.5 * VALLEY * residual.square()
    dx = (torch.softmax(parts, 0) * (x - mu)).sum(0) / MIX_VAR \
        - VALLEY * residual * 2 * torch.cos(2 * x)
    return U, torch.stack([dx, VALLEY * residual])


def moments(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.stack([x, x * x, y, y * y, x * y])


def test_mala_matches_quadrature_on_a_bimodal_curved_density():
    """Invariance of the MALA kernel (detailed balance) on a non-Gaussian target: the density
    exp(-U) of `mixture_potential`, 2-d, with modes of mass 0.7 / 0.3 at x = -/+1.2 and y
    following sin 2x. Oracle: E[x], E[x^2], E[y], E[y^2], E[xy] by a Riemann sum on a
    1001 x 801 grid over [-5, 5] x [-4, 4] (the density is below 3e-13 of its peak on the
    border; for a smooth, decaying integrand the sum is spectrally accurate): -0.4800, 1.6900,
    -0.1639, 0.5941, 0.2680.

    The chains start at 0, their steps tuned by dual averaging (h ~ 0.1, acceptance 0.60).
    Measured (1024 chains, 1000 burn-in, 4000 draws; two noise keys): every moment within
    1.7 sem (sem 0.001-0.017). Unadjusted Langevin at the same steps puts ~0.64 instead of 0.7
    of the mass in the heavier mode: E[x] -0.335 and -0.319, 20 sem off (asserted, so the test
    tells the two apart). The potential's `loss` output is x: state.loss must follow the
    accepted moves. The sem bound matters: MALA with its accept step removed sends a few
    chains far out, and their spread alone would hide the error from a z-test. 5 s."""
    chains, burnin, draws = 1024, 1000, 4000
    xs = torch.linspace(-5, 5, 1001, dtype=torch.float64)
    ys = torch.linspace(-4, 4, 801, dtype=torch.float64)
    X, Y = torch.meshgrid(xs, ys, indexing="ij")
    U, _ = mixture_potential(X, Y)
    weight = torch.exp(-(U - U.min()))
    border = torch.cat([weight[0], weight[-1], weight[:, 0], weight[:, -1]])
    assert float(border.max()) < 1e-12
    exact = (moments(X, Y) * weight).sum((-1, -2)) / weight.sum()

    def potential(theta: torch.Tensor):  # (2, P) float32
        U, grad = mixture_potential(theta[0].double(), theta[1].double())
        return theta[0].clone(), U, grad.float()

    def observe(state: mala.MALAState) -> torch.Tensor:
        assert torch.equal(state.loss, state.theta[0])
        return moments(state.theta[0].double(), state.theta[1].double())

    gen = generator(KEY, "mixture-noise")
    theta0 = torch.zeros(2, chains)
    seen, accept, h = adapted_mala(potential, theta0, burnin, draws, gen, observe)
    per_chain = seen.mean(0)  # (5, chains)
    sem = per_chain.std(-1) / math.sqrt(chains)
    z = (per_chain.mean(-1) - exact) / sem
    assert (sem < 0.03).all(), sem  # measured 0.001-0.017: no chain strayed
    assert (z.abs() < 4).all(), (per_chain.mean(-1), exact, z)
    assert abs(accept.mean() - mala.TARGET_ACCEPTANCE) < 0.05

    w, ula = theta0.clone(), torch.zeros(chains, dtype=torch.float64)
    for t in range(burnin + draws):
        _, grad = mixture_potential(w[0].double(), w[1].double())
        w, _ = sgld_update(w, grad.float(), torch.zeros(()), torch.randn(w.shape, generator=gen),
                           h.float(), 0.0, 1.0)
        if t >= burnin:
            ula += w[0].double() / draws
    ula_mean, ula_sem = mean_and_sem(ula)
    assert abs(ula_mean - float(exact[0])) > 10 * ula_sem, (ula_mean, ula_sem, exact[0])


# ---------------------------------------------------------------------------------------------
# (3) the real engine at a known learning coefficient


def overcomplete_linear_tms():
    """tests/test_llc_truth.py's overcomplete linear TMS (same data and W*): n = 3 features,
    m = 4 hidden, bias, at W^T W = I, b = 0; lambda = 9/2, d/2 = 15/2.
    -> x (N, n), W* (m, n), b* (n,), importance (n,)"""
    n, m, N = 3, 4, 1000
    x = sample_features("sparse-uniform", N, n, 0.1, generator("llc-truth", "tms-data")) * 2.0
    orthogonal = torch.linalg.qr(torch.randn(m, m, generator=generator("llc-truth", "tms-W")))[0]
    return x, orthogonal[:, :n].contiguous(), torch.zeros(n), torch.ones(n)


def tms_hessian_eigenvalues(x, W_star, b_star, imp) -> torch.Tensor:
    """Autograd's Hessian of L_N at (W*, b*) (the summed loss), its eigenvalues, float64."""
    m, n = W_star.shape

    def loss(v: torch.Tensor) -> torch.Tensor:
        W, b = v[: m * n].reshape(1, m, n), v[m * n :].reshape(1, n)
        return tms.loss(W, b, x.double()[None], imp.double()[None],
                        contiguous_groups(["linear"]), "sum")[0]

    v_star = torch.cat([W_star.flatten(), b_star]).double()
    return torch.linalg.eigvalsh(torch.autograd.functional.hessian(loss, v_star))


def linear_tms_row(gamma: float, chains: int, burnin: int, draws: int, seed: int = 0) -> dict:
    x, W_star, b_star, imp = overcomplete_linear_tms()
    params = llc.LLCParams(eps=2e-6, gamma=gamma, n_beta=1e4, chains=chains, draws=draws,
                           burnin=burnin, batch_size=len(x), seed=seed, n_samples=len(x))
    task = llc.ChunkTask("mala", [0], [0], ["linear"], [0], W_star[None, None],
                         b_star[None, None], x[None], imp[None], bias=True, reduction="sum",
                         params=params)
    return llc.estimate_chunk(task).rows[0]


def test_mala_engine_on_the_overcomplete_linear_tms_lands_on_hessian_rank_over_2():
    """The real engine (ChunkTask engine "mala") on test_llc_truth's minimally singular TMS:
    lambda = 9/2 = 4.5 (the Hessian at w* has rank 9, checked), d/2 = 7.5. n_beta = 1e4.

    gamma = 100, not the SGLD test's 1. The 6 flat directions are the orbit O(4) W*, a curved
    manifold of radius ~1; the loss is exactly invariant along it. At gamma = 1 the localized
    posterior spreads ~1 along the orbit, where the stiff directions have turned away from
    those of the fixed preconditioner (the Hessian at w*), so dual averaging must shrink the
    whitened step from ~0.4 to ~0.004 and the loss trace decorrelates in ~1000 steps
    (measured, 16 chains x 4000 draws: R-hat 1.12-1.14, ESS 79-93, llc 4.30-4.95,
    unconverged; the slow test below runs it long enough). SGLD's test does not meet this
    because its chains, at eps gamma = 2e-6, move only ~0.1 along the orbit in its 4500 steps.
    gamma = 100 keeps the posterior within ~0.1 of w* along the orbit, as those SGLD chains
    are, and costs the estimate only gamma / (n_beta x curvature) <= 1.2% in the stiff
    directions (the quadratic value n_beta/2 sum c / (n_beta c + gamma), 4.457, is asserted
    to be within 2% of 4.5).

    Measured (8 chains, 500 burn-in, 2000 draws; llc seeds 0, 1, 2): 4.45, 4.47, 4.46 (sem
    0.02-0.05), healthy, acceptance 0.61-0.65, ESS > 2000. 4 s."""
    lam, d, gamma, n_beta = 4.5, 15, 100.0, 1e4
    eig = tms_hessian_eigenvalues(*overcomplete_linear_tms())
    assert int((eig > 1e-6 * eig.max()).sum()) == 2 * lam
    curvature = eig.clamp(min=0.0)
    quadratic = float((0.5 * n_beta * curvature / (n_beta * curvature + gamma)).sum())
    assert lam * 0.98 < quadratic < lam

    row = linear_tms_row(gamma, chains=8, burnin=500, draws=2000)
    assert row["init_loss"] < 1e-10, row
    assert abs(row["llc_mean"] - lam) / lam < 0.10, row
    assert row["llc_mean"] < 0.75 * d / 2, row
    assert row["healthy"], row
    assert abs(row["mala_acceptance"] - mala.TARGET_ACCEPTANCE) < 0.1, row


@pytest.mark.slow
def test_mala_engine_on_the_overcomplete_linear_tms_at_gamma_1_lands_on_4_5_given_time():
    """The same model at test_llc_truth's gamma = 1 (n_beta = 1e4): the sampler is exact, so
    given enough steps it must land on 4.5 all the same, although it mixes slowly there (the
    fast test's docstring says why). Measured (32 chains, 2000 burn-in, 12000 draws, 21-25 s):
    llc seed 1 4.50 (sem 0.09), seed 0 4.53 (sem 0.09), both unconverged (R-hat 1.057,
    1.062; ESS 355, 386), mean acceptance during the draws 0.42, 0.46 against the target 0.6
    (3000 + 16000 steps: 4.45, R-hat 1.048, per-chain acceptance 0.17-0.78: the step tuned in
    burn-in does not fit where a chain goes next). Only the value is asserted."""
    row = linear_tms_row(1.0, chains=32, burnin=2000, draws=12000, seed=1)
    assert abs(row["llc_mean"] - 4.5) / 4.5 < 0.10, row
    assert row["llc_sem"] < 0.03 * 4.5, row  # the 10% is > 3 sem: a real check
    assert row["state"] in ("healthy", "unconverged"), row


# ---------------------------------------------------------------------------------------------
# (4) agreement with SGLD where its step is small, its bias where it is large


KGON_LABELS = ("6", "5+")  # Chen et al.'s 8.5 both; 5- is left out: its dead feature's
# positive-bias side lies within the chains' reach (the 5+ phase, 1 nat lower at N = 1000)
KGON_N, KGON_GAMMA = 1000, 5.0  # chen2023's N and gamma; n_beta = N / log N = 144.8


@pytest.fixture(scope="module")
def kgons() -> dict:
    """Chen et al.'s regular 6-gon and 5+ critical points (devtms.bayes.theory, of the
    population loss) with single-feature data of N = 1000, as chen2023's LLC dataset is, and
    the mala engine's rows there (16 chains, 500 burn-in, 3000 draws; 7-9 s)."""
    c = 6
    x = sample_features("single-feature", KGON_N, c, 1 / c, generator(KEY, "kgon-data"))
    points = [theory.critical_point(label, c) for label in KGON_LABELS]
    K = len(points)
    W0 = torch.stack([p.W for p in points]).float()[:, None]  # (K, 1, 2, c)
    b0 = torch.stack([p.b for p in points]).float()[:, None]
    n_beta = KGON_N / math.log(KGON_N)

    def task(engine: str, eps: float, chains: int, burnin: int, draws: int,
             batch_size: int) -> llc.ChunkTask:
        params = llc.LLCParams(eps=eps, gamma=KGON_GAMMA, n_beta=n_beta, chains=chains,
                               draws=draws, burnin=burnin, batch_size=batch_size, seed=0,
                               n_samples=KGON_N)
        return llc.ChunkTask(engine, list(range(K)), [0] * K, ["relu"] * K, [0], W0, b0,
                             x[None].expand(K, -1, -1).contiguous(), torch.ones(K, c),
                             bias=True, reduction="sum", params=params)

    mala_task = task("mala", 1e-3, 16, 500, 3000, KGON_N)
    rows = llc.estimate_chunk(mala_task).rows
    # the quadratic model's unadjusted-Langevin bias at step eps, from the Hessian at w*
    curvature = [torch.linalg.eigvalsh(hessian(mala_task, k, 0)).clamp(min=0.0)
                 for k in range(K)]

    def quadratic_bias(eps: float) -> list[float]:
        out = []
        for c_k in curvature:
            lam = n_beta * c_k + KGON_GAMMA
            exact = (0.5 * n_beta * c_k / lam).sum()
            out.append(float((0.5 * n_beta * c_k / (lam * (1 - eps * lam / 4))).sum() / exact
                             - 1))
        return out

    return dict(task=task, mala=rows, n_beta=n_beta, quadratic_bias=quadratic_bias)


def sgld_rows(kgons: dict, eps_n_beta: float, chains: int, burnin: int, draws: int) -> list:
    eps = eps_n_beta / kgons["n_beta"]
    return llc.estimate_chunk(kgons["task"]("batched", eps, chains, burnin, draws, 100)).rows


def test_sgld_at_a_large_step_lies_above_mala_by_its_step_size_bias(kgons):
    """At eps n_beta = 0.8 (eps = 5.5e-3, twice chen2023's 3e-3; batch 100 as chen2023) the
    batched SGLD engine's estimate at the 6-gon and 5+ must lie above MALA's by more than 5%
    (and 3 combined sem): the step-size bias the reference exists to catch. The quadratic
    model (unadjusted Langevin's stationary covariance (Lambda (I - eps Lambda/4))^-1 with
    Lambda = n_beta H + gamma, from the Hessian at w*) predicts +17.7% and +17.8%; the excess
    must be within a factor 2 of that (so it is the step's bias, not something else).

    Measured (MALA 16 chains x 3000 draws; SGLD 8 chains, 300 burn-in, 2000 draws): 6-gon
    MALA 7.86 (sem 0.075), SGLD 9.29 (+18.2%; predicted +17.5%; the SGLD row is `implausible`,
    above d/2 = 9); 5+ MALA 7.33 (sem 0.09), SGLD 8.56 (+16.7%; predicted +17.4%); the MALA
    rows healthy, acceptance 0.60-0.62. 12 s with the fixture (MALA 9 s)."""
    for row in kgons["mala"]:
        assert row["healthy"], row
        assert abs(row["mala_acceptance"] - mala.TARGET_ACCEPTANCE) < 0.1, row
    sgld = sgld_rows(kgons, 0.8, chains=8, burnin=300, draws=2000)
    predicted = kgons["quadratic_bias"](0.8 / kgons["n_beta"])
    for label, m, s, bias in zip(KGON_LABELS, kgons["mala"], sgld, predicted, strict=True):
        se = math.hypot(m["llc_sem"], s["llc_sem"])
        excess = s["llc_mean"] / m["llc_mean"] - 1
        assert excess > 0.05 and s["llc_mean"] - m["llc_mean"] > 3 * se, (label, m, s)
        assert 0.5 * bias < excess < 2 * bias, (label, excess, bias, m, s)


@pytest.mark.slow
def test_sgld_at_a_small_step_agrees_with_mala(kgons):
    """At eps n_beta = 0.05 (eps = 3.5e-4, batch 100) the batched SGLD engine and the mala
    engine must agree at the 6-gon and 5+ within 2 combined sem + 2% of MALA's value. The 2%:
    the quadratic model's unadjusted-Langevin bias at this step is +0.9% at both points
    (asserted < 1%, from the Hessian at w*), doubled for what the quadratic model leaves out
    (the loss's higher orders and the minibatch noise, which adds eps^2 n_beta^2 Var(g) / 4
    per step against the injected eps).

    Measured (SGLD 32 chains, 2000 burn-in, 8000 draws; MALA as the fixture): 6-gon SGLD
    7.71 (sem 0.12) against MALA 7.86 (sem 0.075), -1.1 combined sem; 5+ SGLD 7.37 (sem 0.09)
    against 7.33 (sem 0.09); predicted step bias +0.86%, +0.84%. Other draws/data keys while
    writing this (2000-20000 draws): differences within 1.5 combined sem either way. 20 s +
    the fixture's 7-9 s."""
    predicted = kgons["quadratic_bias"](0.05 / kgons["n_beta"])
    assert all(0 < b < 0.01 for b in predicted), predicted
    sgld = sgld_rows(kgons, 0.05, chains=32, burnin=2000, draws=8000)
    for label, m, s in zip(KGON_LABELS, kgons["mala"], sgld, strict=True):
        se = math.hypot(m["llc_sem"], s["llc_sem"])
        assert abs(s["llc_mean"] - m["llc_mean"]) <= 2 * se + 0.02 * m["llc_mean"], (label, m, s)
        assert s["llc_sem"] < 0.03 * m["llc_mean"], s  # precise enough to mean something


# ---------------------------------------------------------------------------------------------
# (5) chunk independence and keys


CHUNK_ACTIVATIONS = ["relu", "relu", "tanh"]  # two groups, elementwise
CHUNK_STEPS = [10, 20, 30]
CHUNK_N, CHUNK_C = 200, 5


def chunk_task(instances: list[int], steps: list[int], seed: int = 0) -> llc.ChunkTask:
    """Hand-built checkpoints: the regular pentagon critical point (5 features, bias)
    perturbed by 0.02 noise keyed by (instance, step), and each instance's own
    single-feature data. 4 chains, 30 + 70 steps: the draws cross a noise block."""
    base = theory.critical_point("5", CHUNK_C)

    def checkpoint(i: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = generator(KEY, "checkpoint", i, step)
        return ((base.W + 0.02 * torch.randn(2, CHUNK_C, generator=g, dtype=torch.float64))
                .float(), (base.b + 0.02 * torch.randn(CHUNK_C, generator=g,
                                                       dtype=torch.float64)).float())

    points = [[checkpoint(i, s) for s in steps] for i in instances]
    params = llc.LLCParams(eps=1e-3, gamma=5.0, n_beta=CHUNK_N / math.log(CHUNK_N), chains=4,
                           draws=70, burnin=30, batch_size=CHUNK_N, seed=seed,
                           n_samples=CHUNK_N)
    data = torch.stack([sample_features("single-feature", CHUNK_N, CHUNK_C, 1 / CHUNK_C,
                                        generator(KEY, "chunk-data", i)) for i in instances])
    return llc.ChunkTask(
        "mala", list(instances), [100 + i for i in instances],
        [CHUNK_ACTIVATIONS[i] for i in instances], list(steps),
        torch.stack([torch.stack([W for W, _ in row]) for row in points]),
        torch.stack([torch.stack([b for _, b in row]) for row in points]),
        data, torch.ones(len(instances), CHUNK_C), bias=True, reduction="sum", params=params)


def test_mala_estimates_are_identical_in_any_chunking_and_keyed_by_the_llc_seed():
    """Eager, elementwise activations (relu, tanh): every row and trace (loss draws, per-chain
    acceptance) of an estimate is bit for bit the same alone, with other steps, with other
    instances, or with another activation group; a different llc seed changes every
    estimate. (The tanh instance's checkpoints are no minimum of its loss, which changes
    nothing here.)"""
    whole = llc.estimate_chunk(chunk_task([0, 1, 2], CHUNK_STEPS))
    where = {(r["instance"], r["step"]): e for e, r in enumerate(whole.rows)}
    assert len(where) == 9
    for instances, steps in [([1], [20]), ([0, 2], [10, 20]), ([2], CHUNK_STEPS),
                             ([0, 1], [30])]:
        part = llc.estimate_chunk(chunk_task(instances, steps))
        for e, row in enumerate(part.rows):
            k = where[(row["instance"], row["step"])]
            assert row == whole.rows[k], (instances, steps, row, whole.rows[k])
            for name in ("loss", "mala"):
                assert torch.equal(part.traces[name][e], whole.traces[name][k]), name
    assert torch.isfinite(whole.traces["loss"]).all()

    other = llc.estimate_chunk(chunk_task([0, 1, 2], CHUNK_STEPS, seed=1))
    for a, b in zip(whole.rows, other.rows, strict=True):
        assert (a["instance"], a["step"]) == (b["instance"], b["step"])
        assert a["init_loss"] == b["init_loss"]  # the same checkpoint ...
        assert a["llc_mean"] != b["llc_mean"]  # ... other draws
    assert not torch.equal(whole.traces["loss"], other.traces["loss"])


# ---------------------------------------------------------------------------------------------
# (6) the k-gon learning coefficient at the exact critical point


def quadrature_single_feature_data(c: int, M: int) -> torch.Tensor:
    """A single-feature dataset whose empirical loss is the population loss up to O(1/M^2):
    each feature on, alone, at the midpoints t = (j + 1/2) / M of [0, 1]. -> (c M, c)"""
    t = (torch.arange(M, dtype=torch.float64) + 0.5) / M
    x = torch.zeros(c * M, c, dtype=torch.float64)
    for i in range(c):
        x[i * M : (i + 1) * M, i] = t
    return x.float()


@pytest.mark.slow
def test_mala_at_the_exact_6gon_critical_point_lands_on_chen_et_al_8_5():
    """Chen et al. 2023: lambda = 8.5 at the regular 6-gon (c = 6, m = 2, bias, d = 18: 3c
    minus the hidden rotation, halved). At the exact critical point of the population loss
    (devtms.bayes.theory.critical_point), in the limit N -> oo: the LLC dataset is a midpoint
    quadrature of the single-feature distribution (100 magnitudes per feature, N = 600), whose
    loss is the population loss to O(1/M^2) (6e-5 relative at w*, checked < 1e-3), so w* is a
    critical point of it, and n_beta = 1e4 (N / log N at N ~ 1.2e5).

    gamma: the Hessian at w* has 17 nonzero eigenvalues, the smallest 0.030 (then 0.052,
    0.113, ...); the localization lowers the quadratic value n_beta/2 sum c / (n_beta c + gamma)
    only to 8.49, 8.48, 8.47 at gamma = 1, 3, 5, so any of them measures 8.5; what gamma
    changes is how far the chains spread along the hidden rotation's orbit (|W| ~ 2.7), where
    the fixed preconditioner fits worse: dual averaging's whitened step (median over chains)
    is 0.035, 0.11, 0.18 at gamma 1, 3, 5. gamma = 5 (chen2023's) mixes best at no visible
    cost, and is asserted.

    Measured (16 chains, 1000 burn-in, 4000 draws; llc seeds 0 and 1):
      gamma 5: 8.45 (sem 0.12), 8.42 (sem 0.07), healthy (ESS 940, 2160)
      gamma 3: 8.68 (sem 0.14), 8.42 (sem 0.05), healthy
      gamma 1: 8.71 (sem 0.18, unconverged: R-hat 1.063), 8.51 (sem 0.10, healthy)
    16 s."""
    c, label, expected = 6, "6", 8.5
    x = quadrature_single_feature_data(c, 100)
    point = theory.critical_point(label, c)
    empirical = float(tms.loss(point.W[None], point.b[None], x.double()[None],
                               torch.ones(1, c, dtype=torch.float64),
                               contiguous_groups(["relu"]), "sum")[0])
    assert abs(empirical / point.loss - 1) < 1e-3
    rows = {}
    for gamma in (1.0, 3.0, 5.0):
        params = llc.LLCParams(eps=1e-3, gamma=gamma, n_beta=1e4, chains=16, draws=4000,
                               burnin=1000, batch_size=len(x), seed=0, n_samples=len(x))
        task = llc.ChunkTask("mala", [0], [0], ["relu"], [0], point.W.float()[None, None],
                             point.b.float()[None, None], x[None], torch.ones(1, c),
                             bias=True, reduction="sum", params=params)
        rows[gamma] = llc.estimate_chunk(task).rows[0]
        curvature = torch.linalg.eigvalsh(hessian(task, 0, 0)).clamp(min=0.0)
        quadratic = float((0.5 * 1e4 * curvature / (1e4 * curvature + gamma)).sum())
        assert abs(quadratic / expected - 1) < 0.01, (gamma, quadratic)
    row = rows[5.0]
    assert abs(row["llc_mean"] - expected) / expected < 0.10, rows
    assert row["healthy"], row
