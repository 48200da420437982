"""The batched TMS against a per-instance loop of ordinary nn.Module models."""

import pytest
import torch

from devtms import model as tms
from devtms.activations import ALL, contiguous_groups


def _batch(names, n=6, m=2, B=32, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    I = len(names)
    W = torch.randn(I, m, n, generator=g, dtype=dtype)
    b = torch.randn(I, n, generator=g, dtype=dtype) * 0.3
    x = torch.rand(I, B, n, generator=g, dtype=dtype)
    importance = torch.rand(I, n, generator=g, dtype=dtype) + 0.1
    return W, b, x, importance, contiguous_groups(names)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_batched_loss_equals_a_loop_over_single_modules(reduction):
    names = [a for a in ALL for _ in range(2)]
    W, b, x, importance, groups = _batch(names)
    batched = tms.loss(W, b, x, importance, groups, reduction)
    for i, name in enumerate(names):
        single = tms.TMS(W[i], b[i], name, importance[i], reduction)
        torch.testing.assert_close(batched[i], single.loss(x[i]), rtol=1e-12, atol=1e-12)


def test_single_module_matches_the_formula():
    W, b, x, importance, _ = _batch(["relu"], B=5)
    module = tms.TMS(W[0], b[0], "relu", importance[0], "sum")
    expected = (importance[0] * (x[0] - torch.relu(x[0] @ W[0].T @ W[0] + b[0])) ** 2).sum(1)
    torch.testing.assert_close(module.loss(x[0]), expected.mean())


@pytest.mark.parametrize("traceable", [False, True], ids=["eager", "traceable"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("n, m", [(6, 2), (40, 4)])  # the Gram route and the factored route
def test_loss_and_grad_equals_autograd(reduction, n, m, traceable):
    names = [a for a in ALL for _ in range(2)]
    W, b, x, importance, groups = _batch(names, n=n, m=m, seed=3)
    W.requires_grad_(True)
    b.requires_grad_(True)
    loss = tms.loss(W, b, x, importance, groups, reduction)
    dW, db = torch.autograd.grad(loss.sum(), (W, b))
    loss2, dW2, db2 = tms.loss_and_grad(W.detach(), b.detach(), x, importance, groups, reduction,
                                        traceable)
    # traceable: hardsigmoid's slope is exact, torch's own backward uses a float32 1/6
    rtol, atol = (1e-7, 1e-9) if traceable else (1e-9, 1e-10)
    torch.testing.assert_close(loss2, loss.detach(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(dW2, dW, rtol=rtol, atol=atol)
    torch.testing.assert_close(db2, db, rtol=rtol, atol=atol)


@pytest.mark.slow
@pytest.mark.parametrize("n, m, names", [
    (8, 2, ALL),  # every activation as activations27 trains them (8-float vectors; eager: Gram)
    (40, 4, ["relu", "gelu", "softmax"]),  # wide: both factored, the machine's own vectors
])
def test_compiled_loss_and_grad_equals_eager(n, m, names):
    """torch.compile's fused kernel against the eager ops, in float32 as training runs it.
    ~30 s with a cold compile cache."""
    names = [a for a in names for _ in range(3)]
    W, b, x, importance, groups = _batch(names, n=n, m=m, B=50, seed=5, dtype=torch.float32)
    eager = tms.loss_and_grad(W, b, x, importance, groups, "mean")
    compiled = tms.compiled_loss_and_grad(groups, "mean", n)(W, b, x, importance)
    for c, e in zip(compiled, eager, strict=True):  # loss, dW, db
        torch.testing.assert_close(c, e, rtol=1e-5, atol=1e-6)
    assert (tms.compiled_loss_and_grad(groups, "mean", n)
            is tms.compiled_loss_and_grad(groups, "mean", n))


def test_instances_never_interact():
    """A diverged (NaN) instance leaves every other instance's loss and gradient unchanged."""
    names = ["relu"] * 3 + ["exp"] * 3 + ["softmax"] * 3
    W, b, x, importance, groups = _batch(names, seed=4)
    clean = tms.loss_and_grad(W, b, x, importance, groups, "mean")
    W_bad = W.clone()
    W_bad[4] = float("nan")
    dirty = tms.loss_and_grad(W_bad, b, x, importance, groups, "mean")
    keep = [i for i in range(9) if i != 4]
    for a, c in zip(clean, dirty, strict=True):
        torch.testing.assert_close(c[keep], a[keep])
        assert torch.isnan(c[4]).any()


def test_xavier_init_has_the_xavier_scale_and_depends_only_on_the_seed():
    W, b = tms.init_params([0] * 2 + list(range(1, 400)), n=20, m=5)
    torch.testing.assert_close(W[0], W[1])  # same seed, same start
    assert W[1:].std().item() == pytest.approx((2 / 25) ** 0.5, rel=0.03)
    assert torch.count_nonzero(b) == 0
    W3, _ = tms.init_params([7, 0], n=20, m=5)
    torch.testing.assert_close(W3[1], W[0])  # independent of the neighbours


def test_kgon_init_places_the_first_k_columns_on_a_regular_polygon():
    W, _ = tms.init_params([0, 1], n=8, m=2, init="kgon", kgon_k=5, kgon_length=0.9)
    for Wi in W:
        cols = Wi[:, :5]
        torch.testing.assert_close(cols.norm(dim=0), torch.full((5,), 0.9))
        angles = torch.sort(torch.atan2(cols[1], cols[0]) % (2 * torch.pi)).values
        gaps = torch.diff(torch.cat([angles, angles[:1] + 2 * torch.pi]))
        torch.testing.assert_close(gaps, torch.full((5,), 2 * torch.pi / 5), atol=1e-5, rtol=0)
        assert torch.count_nonzero(Wi[:, 5:]) == 0
