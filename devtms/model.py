"""The toy model of superposition, batched over instances.

    h  = W x                 hidden: (m,)
    x' = f(W^T W x + b)      output: (n,)

Axis order, used everywhere in devtms (run files, geometry, LLC, reports):

    W: (instances, m, n)     column W[i, :, j] is feature j's embedding in instance i
    b: (instances, n)        output bias
    x: (instances, B, n)     a batch of B samples per instance
    importance: (instances, n)

This is the transpose of Anthropic's notebook (which stores (instances, n, m)) and matches
`nn.Linear(n, m).weight` of devinterp's TMS example, so a single instance's W drops into
an ordinary module unchanged.

Loss per instance: the importance-weighted squared error, reduced over the n features by
`reduction` ("mean" = torch's MSELoss on one instance and Anthropic's notebook, "sum" = the
squared norm of the error, as Chen et al. 2023 write it), then averaged over the batch. (The
LLC is always measured on the summed loss: devtms.llc.params.LLC_REDUCTION.) Instances never
interact: the gradient of `loss(...).sum()` with respect to instance i's parameters is the
gradient of its own loss.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable

import torch
from torch import nn

from devtms.activations import Activation, apply_grouped, get_activation, vjp_grouped
from devtms.compiling import compile_once, vector_options, with_own_code
from devtms.rng import generator

Tensor = torch.Tensor
Groups = list[tuple[Activation, int, int]]  # from activations.contiguous_groups


def forward(W: Tensor, b: Tensor, x: Tensor, groups: Groups) -> Tensor:
    """x: (I, B, n) -> x': (I, B, n)"""
    h = torch.bmm(x, W.transpose(1, 2))  # (I, B, m)
    pre = torch.baddbmm(b[:, None, :], h, W)  # (I, B, n)
    return apply_grouped(pre, groups)


def weighted_error(x: Tensor, out: Tensor, importance: Tensor, reduction: str) -> Tensor:
    """Per-sample importance-weighted squared error. (..., B, n) -> (..., B)

    importance broadcasts against x: (I, 1, n) for a batch of instances, (n,) for one.
    """
    err = importance * (x - out).square()
    return err.mean(-1) if reduction == "mean" else err.sum(-1)


def loss(W: Tensor, b: Tensor, x: Tensor, importance: Tensor, groups: Groups,
         reduction: str) -> Tensor:
    """Mean loss over the batch, per instance. -> (I,)"""
    out = forward(W, b, x, groups)
    return weighted_error(x, out, importance[:, None, :], reduction).mean(-1)


def loss_and_grad(W: Tensor, b: Tensor, x: Tensor, importance: Tensor, groups: Groups,
                  reduction: str, traceable: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """Per-instance loss and its exact gradients, without an autograd graph.

    The same numbers as `loss(...)` and autograd's gradients of `loss(...).sum()`, in fewer
    tensor ops, each activation's backward kernel called directly (activations.vjp_grouped).
    Two routes to the same products, chosen by cost: eagerly, for the small models of the
    presets (n <= 4 m), the Gram matrix G = W^T W turns the two products into one batched
    matmul (3 matmuls in all, each mostly call overhead); for wide ones (n = 200, m = 20), and
    always when compiled, the factored route through h = W x costs O(B m n) arithmetic instead
    of O(B n^2) (5 contractions, which inductor fuses into its loops: on activations27 the
    compiled step takes 0.63 ms against 0.88 ms through G).
    traceable: in ops torch.compile fuses (`compiled_loss_and_grad`), see `_bmm`.
    -> loss: (I,), dW: (I, m, n), db: (I, n)
    """
    B, m, n = x.shape[1], W.shape[1], x.shape[2]
    gram = n <= 4 * m and not traceable
    Wt = W.transpose(1, 2)  # (I, n, m)
    if gram:
        G = _bmm(Wt, W, traceable)  # (I, n, n)
        pre = _bmm(x, G, traceable) + b[:, None, :]  # (I, B, n)
    else:
        h = _bmm(x, Wt, traceable)  # (I, B, m)
        pre = _bmm(h, W, traceable) + b[:, None, :]  # (I, B, n)
    out = apply_grouped(pre, groups)
    weight = importance[:, None, :] / (B * n if reduction == "mean" else B)  # (I, 1, n)
    residual = out - x  # (I, B, n)
    weighted = residual * weight
    loss_i = (weighted * residual).sum((1, 2))  # (I,)
    grad_pre = vjp_grouped(2.0 * weighted, pre, out, groups, traceable)  # dL_i/dpre: (I, B, n)
    if gram:
        dG = _bmm(x.transpose(1, 2), grad_pre, traceable)  # (I, n, n)
        dW = _bmm(W, dG + dG.transpose(1, 2), traceable)  # d(W^T W)/dW: (I, m, n)
    else:
        q = _bmm(grad_pre, Wt, traceable)  # W g: (I, B, m)
        dW = (_bmm(h.transpose(1, 2), grad_pre, traceable)
              + _bmm(q.transpose(1, 2), x, traceable))
    return loss_i, dW, grad_pre.sum(1)


def _bmm(a: Tensor, b: Tensor, traceable: bool) -> Tensor:
    """(I, p, q) @ (I, q, r) -> (I, p, r).

    Traceable: as a broadcast product summed over q, which inductor turns into loops fused
    with their neighbours. A TMS's q and r are tiny, so aten's bmm is mostly call overhead
    (90 us for activations27's (145, 100, 8) @ (145, 8, 8)); compiled, the whole loss and
    gradient of such a batch take about as long as one bmm did.
    """
    if not traceable:
        return torch.bmm(a, b)
    return (a[:, :, :, None] * b[:, None, :, :]).sum(2)


LossAndGrad = Callable[[Tensor, Tensor, Tensor, Tensor], tuple[Tensor, Tensor, Tensor]]


def compiled_loss_and_grad(groups: Groups, reduction: str, n_features: int) -> LossAndGrad:
    """`loss_and_grad` for these activation groups through torch.compile: (W, b, x, importance)
    -> (loss, dW, db). Static shapes: one compile per set of groups and shapes (about 1 s per
    activation; cached on disk by torch across processes). Inductor fuses the elementwise ops
    of all groups and the small contractions into a few C++ loops, vectorized to fit
    n_features (`compiling.vector_options`)."""
    key = ("loss_and_grad", tuple((act.name, start, stop) for act, start, stop in groups),
           reduction, n_features)

    def build() -> LossAndGrad:
        def step(W: Tensor, b: Tensor, x: Tensor, importance: Tensor):
            return loss_and_grad(W, b, x, importance, groups, reduction, traceable=True)

        name = "loss_and_grad_" + hashlib.blake2b(repr(key).encode(), digest_size=4).hexdigest()
        return torch.compile(with_own_code(step, name), dynamic=False,
                             options=vector_options(n_features))

    return compile_once(key, build)


class TMS(nn.Module):
    """One TMS instance as an ordinary nn.Module (the oracle, and what devinterp samples).

    W: (m, n), b: (n,). Call `.loss(x)` for the same loss the batched code computes.
    """

    def __init__(self, W: Tensor, b: Tensor, activation: str, importance: Tensor,
                 reduction: str = "mean", bias: bool = True):
        super().__init__()
        self.W = nn.Parameter(W.detach().clone())
        self.b = nn.Parameter(b.detach().clone(), requires_grad=bias)
        self.activation: Activation = get_activation(activation)
        self.register_buffer("importance", importance.detach().clone())
        self.reduction = reduction

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, n) -> (B, n)"""
        return self.activation.fn(x @ self.W.T @ self.W + self.b)

    def loss(self, x: Tensor) -> Tensor:
        return weighted_error(x, self(x), self.importance, self.reduction).mean()


# ---------------------------------------------------------------------------------------------
# Initialisation: a function of each instance's seed only (instances sharing a seed start equal).


def init_params(
    seeds: list[int], n: int, m: int, *, init: str = "xavier", kgon_k: int = 2,
    kgon_length: float = 1.0, noise: float = 0.0, bias_std: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """-> W: (I, m, n), b: (I, n)

    xavier: W ~ Normal(0, 2 / (m + n)), torch's xavier_normal_ on one (m, n) instance
            (Anthropic's notebook applies it to the stacked tensor, which ties the scale to
            the number of instances; devtms does not).
    kgon:   devinterp's TMS example: the first k columns on a regular k-gon of radius
            `kgon_length` at a random rotation, the rest zero, plus Normal(0, noise) everywhere.
    b:      Normal(0, bias_std) (0 by default).
    """
    Ws, bs = [], []
    for seed in seeds:
        g = generator(seed, "init")
        if init == "xavier":
            W = torch.randn(m, n, generator=g) * math.sqrt(2.0 / (m + n))
        elif init == "kgon":
            angles = torch.arange(kgon_k) * (2 * math.pi / kgon_k) + torch.rand(1, generator=g) * (
                2 * math.pi
            )
            W = torch.zeros(m, n)
            W[0, :kgon_k], W[1, :kgon_k] = torch.cos(angles), torch.sin(angles)
            W = W * kgon_length + torch.randn(m, n, generator=g) * noise
        else:
            raise ValueError(f"unknown init {init!r}")
        Ws.append(W)
        bs.append(torch.randn(n, generator=g) * bias_std)
    return torch.stack(Ws), torch.stack(bs)
