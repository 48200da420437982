"""The batched SGLD step against its oracles: torch autograd, devinterp's SGLD and MALA, closed forms."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from devtms import model as tms
from devtms.activations import ALL, contiguous_groups
from devtms.llc import sgld


def _chain_layout_problem(I=2, m=2, n=5, P=3, B=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(I, m, n, P, generator=g) * 0.7
    b = torch.randn(I, n, P, generator=g) * 0.3
    x = torch.rand(I, B, n, generator=g)
    imp = torch.rand(I, n, generator=g) + 0.5
    return W, b, x, imp


def _step(name, bias, W, b, W0, b0, x, imp, noise, eps, gamma, n_beta, reduction="mean",
          state=None):
    I, m, n, P = W.shape
    B = x.shape[1]
    features = n if reduction == "mean" else 1
    hp = torch.tensor([eps, gamma, n_beta, 2.0 / (B * features), 1.0 / (B * features)],
                      dtype=W.dtype)
    st = state or sgld.ChainState.start(W0, b0, torch.full((I, P), 1e30, dtype=W.dtype))
    st.W, st.b = W, b
    loss, mala = st.advance(x, imp, noise, hp, sgld.step_function(name, bias, False))
    return st, loss, mala


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_fused_gradient_and_loss_equal_autograd_of_model_loss(name, reduction):
    W, b, x, imp = (t.double() for t in _chain_layout_problem())
    I, m, n, P = W.shape
    zero = torch.zeros(I, m * n + n, P, dtype=torch.float64)
    # gamma = 0 and n_beta = 1: the drift dws is the gradient itself
    st, loss, _ = _step(name, True, W, b, W, b, x, imp, zero, 1e-3, 0.0, 1.0, reduction)
    Wr = W.permute(3, 0, 1, 2).reshape(P * I, m, n).clone().requires_grad_()
    br = b.permute(2, 0, 1).reshape(P * I, n).clone().requires_grad_()
    ref = tms.loss(Wr, br, x.repeat(P, 1, 1), imp.repeat(P, 1), contiguous_groups([name] * P * I),
                   reduction)
    ref.sum().backward()
    torch.testing.assert_close(st.dws_W, Wr.grad.reshape(P, I, m, n).permute(1, 2, 3, 0))
    torch.testing.assert_close(st.dws_b, br.grad.reshape(P, I, n).permute(1, 2, 0))
    torch.testing.assert_close(loss, ref.detach().reshape(P, I).T)


@pytest.mark.parametrize("name", ["relu", "gelu", "tanh", "softmax", "solu_ln", "softmin", "sigmoid"])
@pytest.mark.parametrize("bias", [True, False])
def test_fused_update_equals_devinterp_sgld_step_for_step(name, bias):
    """Same start, same minibatches, same noise (devinterp's generator, replayed): same weights."""
    from devinterp.optim.sgld import SGLD

    m, n, B, steps = 2, 6, 20, 6
    eps, gamma, n_beta = 1e-3, 50.0, 30.0
    g = torch.Generator().manual_seed(1)
    W0 = torch.randn(m, n, generator=g) * 0.8
    b0 = torch.randn(n, generator=g) * 0.2 if bias else torch.zeros(n)
    imp = torch.rand(n, generator=g) + 0.5
    batches = [torch.rand(B, n, generator=g) for _ in range(steps)]

    model = tms.TMS(W0, b0, name, imp, "mean", bias)
    params = [model.W, model.b] if bias else [model.W]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt = SGLD(params, lr=eps, localization=gamma, nbeta=n_beta)
    noise_gen = torch.Generator().manual_seed(123)
    replay = torch.Generator().manual_seed(123)

    W, b = W0[None, :, :, None].clone(), b0[None, :, None].clone()
    state = None
    for t in range(steps):
        opt.zero_grad()
        model.loss(batches[t]).backward()
        opt.step(noise_generator=noise_gen)
        xi_W = torch.normal(0.0, 1.0, size=(m, n), generator=replay)
        xi_b = torch.normal(0.0, 1.0, size=(n,), generator=replay) if bias else torch.zeros(n)
        noise = torch.cat([xi_W.flatten(), xi_b])[None, :, None]
        state, _, _ = _step(name, bias, W, b, W0[None, :, :, None], b0[None, :, None],
                            batches[t][None], imp[None], noise, eps, gamma, n_beta, state=state)
        W, b = state.W, state.b
        torch.testing.assert_close(W[0, :, :, 0], model.W.detach(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(b[0, :, 0], model.b.detach(), rtol=1e-5, atol=1e-6)
    assert not torch.equal(W[0, :, :, 0], W0)  # it moved


def test_mala_acceptance_equals_devinterps_formula():
    from devinterp.slt.mala import mala_acceptance_probability

    name, eps, gamma, n_beta = "gelu", 3e-3, 20.0, 40.0
    W, b, x, imp = _chain_layout_problem(I=1, P=1, n=4, B=9, seed=3)
    I, m, n, P = W.shape
    W0, b0 = W.clone(), b.clone()
    g = torch.Generator().manual_seed(5)
    noises = [torch.randn(I, m * n + n, P, generator=g) for _ in range(3)]
    state, points, losses, dws = None, [], [], []
    for t in range(3):
        points.append((state.W.clone(), state.b.clone()) if state else (W0.clone(), b0.clone()))
        state, loss, mala = _step(name, True, *points[-1], W0, b0, x, imp, noises[t], eps, gamma,
                                  n_beta, state=state)
        losses.append(loss)
        dws.append((state.dws_W.clone(), state.dws_b.clone()))
    # the acceptance reported at step 2 is that of the move w_1 -> w_2
    def potential(t):
        dist = ((points[t][0] - W0) ** 2).sum() + ((points[t][1] - b0) ** 2).sum()
        return n_beta * losses[t].squeeze() + gamma / 2 * dist

    expected = mala_acceptance_probability(
        [points[1][0].squeeze(), points[1][1].squeeze()], [d.squeeze() for d in dws[1]],
        potential(1), [points[2][0].squeeze(), points[2][1].squeeze()],
        [d.squeeze() for d in dws[2]], potential(2), eps)
    assert float(mala.squeeze()) == pytest.approx(float(expected), rel=1e-3, abs=1e-5)
    assert 0.0 < float(expected) < 1.0  # a transition that can be rejected, so the test bites


def test_sgld_on_a_quadratic_matches_the_closed_form_stationary_mean():
    """Discretized Langevin on L = L0 + h/2 w^2 with localization gamma has stationary variance
    1 / (a (1 - eps a / 4)), a = n_beta h + gamma, so n_beta E[L - L0] is exactly
    sum_i n_beta h_i / (2 a_i (1 - eps a_i / 4)) (-> d/2 when n_beta h >> gamma and eps a small)."""
    torch.manual_seed(0)
    h = torch.tensor([0.5, 1.0, 2.0, 4.0], dtype=torch.float64)
    eps, gamma, n_beta, chains, steps, burnin = 4e-4, 1.0, 100.0, 64, 6000, 500
    a = n_beta * h + gamma
    exact = float((n_beta * h / (2 * a * (1 - eps * a / 4))).sum())
    w = torch.zeros(chains, len(h), dtype=torch.float64)
    total = torch.zeros(chains, dtype=torch.float64)
    g = torch.Generator().manual_seed(7)
    for t in range(steps):
        noise = torch.randn(chains, len(h), generator=g, dtype=torch.float64)
        if t >= burnin:
            total += n_beta * 0.5 * (h * w * w).sum(1)
        w, _ = sgld.sgld_update(w, h * w, torch.zeros_like(w), noise, eps, gamma, n_beta)
    estimate = float((total / (steps - burnin)).mean())
    assert abs(estimate - exact) / exact < 0.03
    assert abs(exact - len(h) / 2) / (len(h) / 2) < 0.05  # and this regime is near d/2


def test_a_diverging_chain_is_frozen_at_w_star_and_reported_nan():
    W, b, x, imp = _chain_layout_problem(I=1, P=3)
    I, m, n, P = W.shape
    st = sgld.ChainState.start(W, b, torch.tensor([[1e30, 1e-12, 1e30]]))  # chain 1: tiny limit
    hp = torch.tensor([1e-3, 10.0, 20.0, 2.0 / (7 * n), 1.0 / (7 * n)])
    noise = torch.randn(I, m * n + n, P)
    loss, _ = st.advance(x, imp, noise, hp, sgld.step_function("relu", True, False))
    assert torch.isnan(loss[0, 1]) and torch.isfinite(loss[0, [0, 2]]).all()
    assert st.alive.tolist() == [[True, False, True]]
    torch.testing.assert_close(st.W[..., 1], W[..., 1])  # reset to w*
    assert not torch.equal(st.W[..., 0], W[..., 0])


@pytest.mark.slow
@pytest.mark.parametrize(("name", "bias"), [(name, True) for name in ALL]
                         + [("relu", False), ("softmax", False)])
def test_compiled_step_equals_eager_step(name, bias):
    """Every activation's compiled kernels (its own loss-and-gradient kernel, traced by
    torch.compile, then the update kernel all activations share) against the same step run
    eagerly. 3-5 s per activation with a cold compile cache."""
    W, b, x, imp = _chain_layout_problem(I=3, P=20, n=8, B=50)
    I, m, n, P = W.shape
    hp = torch.tensor([1e-3, 100.0, 144.0, 2.0 / (50 * n), 1.0 / (50 * n)])
    noise = torch.randn(I, m * n + n, P, generator=torch.Generator().manual_seed(1))
    out = {}
    for compiled in (False, True):
        st = sgld.ChainState.start(W, b, torch.full((I, P), 1e30))
        fn = sgld.step_function(name, bias, compiled)
        for _ in range(2):  # the second step also reads the first's MALA state
            loss, mala = st.advance(x, imp, noise, hp, fn)
        out[compiled] = (st.W, loss, mala)
        assert torch.equal(st.b, b) != bias  # without a bias, b stays at w*
    # rounding differs (fused loops); a wrong slope or vjp would differ at O(1). SGLD at
    # n_beta = 144 amplifies rounding, most where chains run away (exp, relu_squared), and
    # MALA's acceptance is exp of a difference of two large potentials (solu_ln: 1e-4).
    (W_c, loss_c, mala_c), (W_e, loss_e, mala_e) = out[True], out[False]
    torch.testing.assert_close(W_c, W_e, rtol=1e-4, atol=1e-6, equal_nan=True)
    torch.testing.assert_close(loss_c, loss_e, rtol=1e-4, atol=1e-6, equal_nan=True)
    torch.testing.assert_close(mala_c, mala_e, rtol=0, atol=1e-3, equal_nan=True)


def test_noise_is_keyed_by_the_estimate():
    from devtms.llc import LLCParams, noise_block

    p = LLCParams(1e-3, 100.0, 10.0, 4, 10, 10, 10, 0, 100)
    a = noise_block(3, 0, 100, p, 0, 6)
    assert torch.equal(a, noise_block(3, 0, 100, p, 0, 6))
    assert not torch.equal(a, noise_block(3, 0, 101, p, 0, 6))  # another checkpoint
    assert not torch.equal(a, noise_block(4, 0, 100, p, 0, 6))  # another instance
    assert not torch.equal(a, noise_block(3, 0, 100, p, 1, 6))  # the next block
    assert math.isclose(float(a.std()), 1.0, rel_tol=0.1)


def test_family_members_share_one_compiled_kernel_and_the_rest_have_their_own():
    kernels = {name: sgld.kernel_name(name) for name in ALL}
    assert kernels["relu"] == kernels["softshrink"] == "piecewise_linear"
    assert kernels["selu"] == kernels["exp_linear"] == "elu_family"
    assert kernels["gelu"] == "gelu" and kernels["linear"] == "linear"
    assert len(ALL) == 29 and len(set(kernels.values())) == 21
