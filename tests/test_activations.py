"""Every activation against its torch.nn counterpart (or the formula in docs/science.md), and its
vjp against autograd."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from devtms.activations import (
    ALL,
    CONTROLS,
    REGISTRY,
    VARIANTS,
    apply_grouped,
    contiguous_groups,
    expand_activation_names,
    get_activation,
    vjp_grouped,
)
from devtms.compiling import compile_available, with_own_code
from devtms.errors import UserError

# torch.nn modules (the oracle), applied to (..., n) with features on the last axis.
ORACLES = {
    "relu": nn.ReLU(),
    "leaky_relu": nn.LeakyReLU(0.01),
    "selu": nn.SELU(),
    "celu": nn.CELU(alpha=1.0),
    "gelu": nn.GELU(approximate="none"),
    "sigmoid": nn.Sigmoid(),
    "hardsigmoid": nn.Hardsigmoid(),
    "silu": nn.SiLU(),
    "hardswish": nn.Hardswish(),
    "mish": nn.Mish(),
    "softplus": nn.Softplus(),
    "tanh": nn.Tanh(),
    "hardtanh": nn.Hardtanh(-1.0, 1.0),
    "elu": nn.ELU(alpha=1.0),
    "hardshrink": nn.Hardshrink(0.5),
    "softmax": nn.Softmax(dim=-1),
    "solu": lambda x: x * nn.Softmax(dim=-1)(x),
    "log_softmax": nn.LogSoftmax(dim=-1),
    "logsigmoid": nn.LogSigmoid(),
    "exp": torch.exp,
    # docs/science.md: e^x for x < 0, x + 1 for x >= 0, written piecewise (independent of ELU)
    "exp_linear": lambda x: torch.where(x < 0, torch.exp(x), x + 1.0),
    "tanhshrink": nn.Tanhshrink(),
    "relu6": nn.ReLU6(),
    "relu_squared": lambda x: torch.clamp(x, min=0) ** 2,
    "softshrink": nn.Softshrink(0.5),
    "softsign": nn.Softsign(),
    "softmin": nn.Softmin(dim=-1),
    "linear": nn.Identity(),
    "solu_ln": lambda x: nn.LayerNorm(x.shape[-1], elementwise_affine=False)(
        x * nn.Softmax(dim=-1)(x)),
}


def test_registry_holds_the_27_variants_and_two_controls():
    assert len(VARIANTS) == 27
    assert VARIANTS[0] == "relu" and VARIANTS[-1] == "softmin"
    assert CONTROLS == ("linear", "solu_ln")
    assert set(ORACLES) == set(ALL)


@pytest.mark.parametrize("name", ALL)
def test_activation_matches_torch_on_random_inputs(name):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 64, 7, generator=g, dtype=torch.float64) * 4  # (instances, batch, n)
    torch.testing.assert_close(REGISTRY[name].fn(x), ORACLES[name](x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", [a for a in ALL if REGISTRY[a].over_features])
def test_over_features_activations_act_per_sample(name):
    """Each sample's output depends on that sample's features only, never on the batch."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 10, 6, generator=g, dtype=torch.float64)
    act = REGISTRY[name]
    whole = act.fn(x)
    for i in range(4):
        for j in range(10):
            torch.testing.assert_close(whole[i, j], act.fn(x[i, j][None])[0])


@pytest.mark.parametrize("traceable", [False, True], ids=["vjp", "traceable_vjp"])
@pytest.mark.parametrize("name", ALL)
def test_vjp_matches_autograd(name, traceable):
    g = torch.Generator().manual_seed(2)
    x = (torch.randn(5, 9, generator=g, dtype=torch.float64) * 3).requires_grad_(True)
    act = REGISTRY[name]
    y = act.fn(x)
    grad_out = torch.randn(y.shape, generator=g, dtype=torch.float64)
    expected, = torch.autograd.grad(y, x, grad_out)
    vjp = act.traceable_vjp if traceable else act.vjp
    # the slopes are exact in float64; torch's own backward of hardsigmoid uses a float32 1/6
    rtol = 1e-7 if traceable else 1e-10
    torch.testing.assert_close(vjp(grad_out, x.detach(), y.detach()), expected,
                               rtol=rtol, atol=1e-12)


ELEMENTWISE = [a for a in ALL if not REGISTRY[a].over_features]
KINKS = torch.tensor([-6.0, -3.0, -1.0, -0.5, 0.0, 0.5, 1.0, 3.0, 6.0], dtype=torch.float64)


@pytest.mark.parametrize("name", ELEMENTWISE)
def test_declared_properties_hold(name):
    act = REGISTRY[name]
    x = torch.linspace(-50, 50, 100001, dtype=torch.float64)
    y = act.fn(x)
    assert bool((y.diff() >= 0).all()) == act.monotone
    # bounded: still growing in magnitude between |x| = 100 and |x| = 1000 means unbounded
    far = act.fn(torch.tensor([-1000.0, -100.0, 100.0, 1000.0], dtype=torch.float64))
    assert bool(far[3] - far[2] < 0.5) == act.bounded_above
    assert bool(far[0] - far[1] > -0.5) == act.bounded_below
    # smooth (C^1): left and right derivatives agree at every kink candidate
    def slope(at):
        return act.vjp(torch.ones_like(at), at, act.fn(at))
    jump = (slope(KINKS + 1e-9) - slope(KINKS - 1e-9)).abs().max()
    assert bool(jump < 1e-5) == act.smooth, f"derivative jump {jump}"


def test_groups_apply_each_activation_to_its_slice():
    names = ["relu", "relu", "gelu", "softmax", "softmax", "relu"]
    groups = contiguous_groups(names)
    assert [(a.name, s, e) for a, s, e in groups] == [
        ("relu", 0, 2), ("gelu", 2, 3), ("softmax", 3, 5), ("relu", 5, 6)]
    x = torch.randn(6, 4, 5)
    out = apply_grouped(x, groups)
    for i, name in enumerate(names):
        torch.testing.assert_close(out[i], REGISTRY[name].fn(x[i]))
    g = torch.randn_like(x)
    for traceable in (False, True):
        grads = vjp_grouped(g, x, out, groups, traceable)
        for i, name in enumerate(names):
            torch.testing.assert_close(grads[i], REGISTRY[name].vjp(g[i], x[i], out[i]))


def test_unknown_activation_names_the_valid_ones():
    with pytest.raises(UserError, match="unknown activation 'rleu'.*relu.*softmin"):
        get_activation("rleu")


def test_groups_expand_in_order_without_repeats():
    assert expand_activation_names(["gelu", "all"]) == ["gelu"] + [a for a in ALL if a != "gelu"]
    assert expand_activation_names(["controls"]) == list(CONTROLS)


def test_exp_linear_is_elu_plus_one():
    x = torch.linspace(-5, 5, 101)
    torch.testing.assert_close(REGISTRY["exp_linear"].fn(x), F.elu(x) + 1)


def test_every_elementwise_activation_and_only_those_has_a_hand_written_slope():
    assert [a for a in ALL if REGISTRY[a].slope is not None] == ELEMENTWISE


@pytest.mark.parametrize("name", ELEMENTWISE)
def test_hand_written_slope_equals_autograd_including_kinks(name):
    act = get_activation(name)
    kinks = torch.tensor([0.0, 0.5, -0.5, 1.0, -1.0, 3.0, -3.0, 6.0, 20.0, 25.0, -25.0])
    z = torch.cat([torch.linspace(-8, 8, 4001), kinks]).double().requires_grad_()
    out = act.fn(z)
    (expected,) = torch.autograd.grad(out.sum(), z)
    got = act.slope(z.detach(), out.detach())
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-9)


def test_the_activations_command_lists_every_variant_with_its_properties(capsys):
    from devtms.cli import main

    assert main(["activations"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[5:]]
    assert [row[0] for row in rows[:27]] == [str(k) for k in range(1, 28)]  # numbered variants
    rows = [row[1:] if row[0].isdigit() else row for row in rows]
    assert [row[0] for row in rows] == list(REGISTRY) and len(rows) == len(ALL)
    for name, *flags in rows:
        act = REGISTRY[name]
        expected = [act.bounded_above, act.bounded_below, act.smooth, act.monotone,
                    act.over_features]
        assert flags[:5] == ["yes" if f else "-" for f in expected], name
        assert " ".join(flags[5:]) == " ".join(act.definition.split()), name


# z at every kink and boundary of the family members (both zeros, the float32 neighbours of the
# closed ends), far out, and a dense grid. Finite: see `Family` on infinities.
_FAMILY_POINTS = torch.cat([
    torch.tensor([0.0, -0.0, 0.5, -0.5, 1.0, -1.0, 6.0, 20.0, -20.0, 1e30, -1e30]),
    torch.nextafter(torch.tensor([0.0, -1.0, 1.0, 6.0, 0.5, -0.5]), torch.tensor(float("inf"))),
    torch.nextafter(torch.tensor([0.0, -1.0, 1.0, 6.0, 0.5, -0.5]), torch.tensor(float("-inf"))),
    torch.linspace(-8, 8, 4001),
])


def test_every_family_member_computes_its_own_function_and_slope():
    members = [a for a in REGISTRY.values() if a.family is not None]
    assert {a.name for a in members} == {"relu", "leaky_relu", "hardtanh", "relu6", "hardshrink",
                                         "softshrink", "elu", "celu", "selu", "exp_linear"}
    z = _FAMILY_POINTS[:-2001]  # the points and half the grid
    for act in members:
        c = torch.tensor(act.constants)
        out = act.family.fn(z, c)
        torch.testing.assert_close(out, act.fn(z), rtol=1e-6, atol=0, msg=act.name)
        torch.testing.assert_close(act.family.slope(z, out, c), act.slope(z, act.fn(z)),
                                   rtol=1e-6, atol=0, equal_nan=True, msg=act.name)


@pytest.mark.skipif(not compile_available(), reason="torch.compile needs a C++ compiler")
def test_a_family_kernel_computes_each_members_own_kernels_numbers_bit_for_bit():
    """What the SGLD step relies on: compiled, a family's formula with a member's constants
    gives the member's own function and slope exactly (one kernel per family, one per member
    as the reference: ~1 s each from a cold compile cache)."""
    z = _FAMILY_POINTS
    for family in {a.family for a in REGISTRY.values() if a.family is not None}:
        def shared(z, c, family=family):
            out = family.fn(z, c)
            return out, family.slope(z, out, c)
        shared = torch.compile(with_own_code(shared, f"test_{family.name}"), dynamic=False)
        for act in (a for a in REGISTRY.values() if a.family is family):
            def own(z, act=act):
                out = act.fn(z)
                return out, act.slope(z, out)
            own = torch.compile(with_own_code(own, f"test_own_{act.name}"), dynamic=False)
            for got, expected in zip(shared(z, torch.tensor(act.constants)), own(z), strict=True):
                assert torch.equal(got, expected), act.name
