"""The SGLD sampler behind devtms's LLC estimates: one update rule and one batched TMS step.

The update (docs/science.md, the LLC and SGLD; devinterp's SGLD, Lau et al. 2023), for every parameter w:

    w <- w - eps/2 * (n_beta * grad L_batch(w) + gamma * (w - w*)) + sqrt(eps) * Normal(0, 1)

`sgld_update` is that rule and the only place it is written; `tms_sgld_step` combines it with the
TMS loss and its hand-written gradient so that thousands of chains advance in one tensor program.

RMSProp-preconditioned SGLD (pSGLD, Li et al. 2016, as Hitchcock and Hoogland 2025, appendix
D.3, prescribe for LLC estimates; the setting's precond = "rmsprop") gives every parameter its
own step eps G, from a running mean v of its squared minibatch loss gradient g (the loss's
only, not the localization's), at SGLD step t = 1, 2, ...:

    v <- beta2 v + (1 - beta2) g^2                  (v = 1 before the first step)
    G = 1 / (sqrt(v / (1 - beta2^t)) + delta)       (bias-corrected; Li et al.'s G)
    w <- w - eps G/2 * (n_beta g + gamma * (w - w*)) + sqrt(eps G) * Normal(0, 1)

with beta2 = RMSPROP_BETA2 and delta = RMSPROP_DELTA (`psgld_update`, `tms_sgld_step_rmsprop`).

Curvature-preconditioned SGLD (precond = "curvature") takes the same unadjusted step in the
coordinates z where the posterior near w* is about a unit Gaussian: w = w* + L z with
L L^T = (n_beta H+ + gamma)^-1 from the Hessian at w* (devtms.llc.curvature.whitening, the
exact engine's preconditioner). In w, with P = L L^T fixed per estimate:

    w <- w - eps/2 * P (n_beta grad L_batch(w) + gamma * (w - w*)) + sqrt(eps) * L Normal(0, 1)

Its eps is dimensionless: the step's size relative to the posterior's width in every
direction, so its bias (about eps/4 of the llc on a quadratic basin, plus the minibatch's
share) does not grow with n_beta, the number of features or the data, and a calibrated eps
carries to another run (`sgld_move_curvature`, `tms_sgld_step_curvature`).

Chain layout. A step advances every chain of a group of instances that share one activation.
The chain axis comes LAST, because it is the axis that vectorises (it is long; m and n are tiny):

    W: (I, m, n, P)   b: (I, n, P)   instance i, chain slot p (P = checkpoints x chains)
    x: (I, B, n)      the minibatch, shared by all P chains of instance i
    imp: (I, n)       importance

This is model.py's axis order with a trailing chain axis: `W[i, :, :, p]` is an ordinary (m, n)
weight. Activations are always called with the features on the last axis (`_features_last`).

Why the step is written the way it is:
- The forward is h = W x (I, B, m, P), pre = W^T h + b (I, B, n, P), and the gradient is
  dL/dW = sum_b h g^T + q x^T with g = dL/dpre and q = W g (the two uses of W): 3 m n B
  multiply-adds per chain instead of the n^2 B of forming W^T W. Every contraction is an
  elementwise product summed by `fixed_sum`, whose order depends only on the summed axis, so
  every chain's arithmetic is the same whichever other chains share the tensor: an estimate's
  numbers do not depend on its chunk (a batched matmul's would: its blocking and threading
  depend on the whole shape).
- dL/dpre is hand-written: each elementwise activation's `slope` and the over-features
  activations' (softmax, solu, ...) vjp in the registry, plain tensor ops, checked against
  autograd in tests/test_activations.py.
- Under torch.compile the step is two kernels: `loss_and_grad` (forward and gradient, one per
  activation, or one per family of activations that differ only in constants) and `sgld_move`
  (update, health mask and MALA terms, one for all activations), so a new activation costs a
  small compile or none (`step_function`).
  Without torch.compile the same code runs eagerly.
- A chain whose minibatch loss is not finite or exceeds its `limit` is marked dead, reset to w*
  and frozen: its slot keeps computing finite numbers, so it cannot poison any other chain.

MALA acceptance (devinterp's `mala_acceptance_probability`, Metropolis-adjusted Langevin) of
the transition w_t -> w_{t+1} uses the potential U = n_beta L_batch + gamma/2 |w - w*|^2 and its
gradient dws = n_beta grad L + gamma (w - w*) at both ends, as devinterp's callback does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from devtms.activations import Activation, get_activation
from devtms.compiling import compile_once, with_own_code

Tensor = torch.Tensor


# ---------------------------------------------------------------------------------------------
# The update rule


def sgld_update(w: Tensor, grad: Tensor, w_star: Tensor, noise: Tensor, eps: Tensor | float,
                gamma: Tensor | float, n_beta: Tensor | float) -> tuple[Tensor, Tensor]:
    """One SGLD step for one parameter tensor (any shape). -> (new w, drift dws)

    dws = n_beta grad + gamma (w - w*) is returned because MALA needs it.
    """
    dws = n_beta * grad + gamma * (w - w_star)
    return w - (0.5 * eps) * dws + (eps ** 0.5) * noise, dws


# pSGLD's constants: part of the method, not settings (Li et al. 2016; lambda_hat's defaults)
RMSPROP_BETA2 = 0.999  # decay of the running mean of squared gradients: it averages ~1000 steps
RMSPROP_DELTA = 1e-8  # added to its root: G stays finite where v -> 0 (a gradient always 0)


def psgld_update(w: Tensor, grad: Tensor, w_star: Tensor, noise: Tensor, eps: Tensor | float,
                 gamma: Tensor | float, n_beta: Tensor | float, G: Tensor
                 ) -> tuple[Tensor, Tensor]:
    """`sgld_update` with the step eps G of each parameter (G: w's shape, the preconditioner,
    `rmsprop_preconditioner`). -> (new w, drift dws), dws unpreconditioned, as there."""
    dws = n_beta * grad + gamma * (w - w_star)
    step = eps * G
    return w - (0.5 * step) * dws + torch.sqrt(step) * noise, dws


def rmsprop_average(v: Tensor, grad: Tensor) -> Tensor:
    """RMSProp's running mean of squared gradients after one more gradient (any shape)."""
    return RMSPROP_BETA2 * v + (1.0 - RMSPROP_BETA2) * grad.square()


def rmsprop_preconditioner(v: Tensor, t: Tensor | float) -> Tensor:
    """G = 1 / (sqrt(v_hat) + delta), v_hat = v / (1 - beta2^t): the preconditioner of the
    running mean v (any shape) after t >= 1 gradients. At t = 0 (no gradient yet) G is 0."""
    return 1.0 / (torch.sqrt(v / (1.0 - RMSPROP_BETA2 ** t)) + RMSPROP_DELTA)


def value_and_vjp(act: Activation, constants: Tensor | None = None
                  ) -> Callable[[Tensor], tuple[Tensor, Callable[[Tensor], Tensor],
                                                tuple[Tensor, ...]]]:
    """act -> (z -> (f(z), v -> v^T df/dz, reused)) for preactivations z in chain layout
    (I, B, n, P), differentiated as `Activation.pullback` chooses (traceable form).

    constants: a family member's constants as a tensor (`activations.Family`): f is then
    computed by its family's formula, so one compiled kernel serves the whole family.

    Elementwise activations: v * f'(z), and `reused` = (f(z),), which more than one of the
    step's loops reads: materialized under torch.compile, it is computed once instead of in
    each loop (mish 1.9x, silu 1.5x faster; materializing f'(z) as well was slower). The
    over-features ones act along the features, which chain layout keeps second to last: they
    see them moved last. Neither has anything else to reuse.
    """
    if constants is not None:
        family = act.family

        def member(z: Tensor):
            out = family.fn(z, constants)
            slope = family.slope(z, out, constants)
            return out, lambda v: v * slope, (out,)
        return member

    if not act.over_features:
        def elementwise(z: Tensor):
            out = act.fn(z)
            return out, act.pullback(z, out, traceable=True), (out,)
        return elementwise

    def over_features(z: Tensor):
        z_last = z.transpose(-1, -2)  # (I, B, P, n)
        out = act.fn(z_last)
        back = act.pullback(z_last, out, traceable=True)
        return (out.transpose(-1, -2),
                lambda v: back(v.transpose(-1, -2)).transpose(-1, -2), ())
    return over_features


# ---------------------------------------------------------------------------------------------
# The step


@dataclass
class ChainState:
    """Everything a group of chains carries from one step to the next (chain layout).

    W, b: current parameters; W0, b0: the checkpoint w* they are localized at; alive: (I, P)
    False once a chain diverged; limit: (I, P) the loss above which a chain counts as diverged;
    dws_W, dws_b, xi, U: the previous step's drift, noise and potential (for MALA).
    RMSProp-preconditioned chains only (None otherwise): v: (I, m n + n, P) the running mean of
    squared loss gradients (W flattened, then b, as xi), t: () the steps taken so far.
    Curvature-preconditioned chains only (None otherwise): L: (I, m n + n, m n + n, P) each
    chain's preconditioner (b's rows and columns 0 without a bias); their dws_W, dws_b hold the
    whitened drift L^T dws, which is what their MALA term reads.
    """

    W: Tensor
    b: Tensor
    W0: Tensor
    b0: Tensor
    alive: Tensor
    limit: Tensor
    dws_W: Tensor
    dws_b: Tensor
    xi: Tensor
    U: Tensor
    v: Tensor | None = None
    t: Tensor | None = None
    L: Tensor | None = None

    @classmethod
    def start(cls, W0: Tensor, b0: Tensor, limit: Tensor, precond: str = "none",
              L: Tensor | None = None) -> ChainState:
        """All chains at w*. W0: (I, m, n, P), b0: (I, n, P), limit: (I, P); precond: the
        step's (`step_function`); L: precond "curvature"'s preconditioner, (I, D, D, P)."""
        I, m, n, P = W0.shape
        zeros = W0.new_zeros
        alive = torch.ones(I, P, dtype=torch.bool, device=W0.device)
        state = cls(W0.clone(), b0.clone(), W0, b0, alive, limit, zeros(I, m, n, P),
                    zeros(I, n, P), zeros(I, m * n + n, P), zeros(I, P))
        if precond == "rmsprop":
            state.v, state.t = W0.new_ones(I, m * n + n, P), zeros(())
        if precond == "curvature":
            if L is None or L.shape != (I, m * n + n, m * n + n, P):
                raise ValueError("precond 'curvature' needs L of shape (I, m n + n, m n + n, P)")
            state.L = L
        return state

    def tensors(self) -> tuple[Tensor, ...]:
        plain = (self.W, self.b, self.W0, self.b0, self.alive, self.limit, self.dws_W,
                 self.dws_b, self.xi, self.U)
        if self.L is not None:
            return (*plain, self.L)
        return plain if self.v is None else (*plain, self.v, self.t)

    def advance(self, x: Tensor, imp: Tensor, noise: Tensor, hp: Tensor,
                step: Callable[..., tuple[Tensor, ...]]) -> tuple[Tensor, Tensor]:
        """Run `step` (from `step_function`) once; -> (loss, mala) of this step, both (I, P)."""
        if self.v is None:
            (self.W, self.b, self.alive, self.dws_W, self.dws_b, self.xi, self.U, loss,
             mala) = step(*self.tensors(), x, imp, noise, hp)
        else:
            (self.W, self.b, self.alive, self.dws_W, self.dws_b, self.xi, self.U, self.v,
             self.t, loss, mala) = step(*self.tensors(), x, imp, noise, hp)
        return loss, mala


def fixed_sum(t: Tensor, dim: int) -> Tensor:
    """Sum over `dim` in an order that depends only on that axis's length, never on the others.

    Compiled, inductor's reduction loop is sequential per chain (the chain axis is the
    vectorised one). Eagerly, ATen's reduction kernels choose their accumulation order from the
    shape of the whole tensor, so the same chain would get different last bits in different
    chunks; a pairwise tree of elementwise adds instead (about the same work).
    """
    if torch.compiler.is_compiling():
        return t.sum(dim)
    t = t.movedim(dim, 1)
    while t.shape[1] > 1:
        half = t.shape[1] // 2
        paired = t[:, :half] + t[:, half : 2 * half]
        t = torch.cat([paired, t[:, 2 * half :]], dim=1) if t.shape[1] % 2 else paired
    return t[:, 0]


def loss_and_grad(act: Activation, W: Tensor, b: Tensor, x: Tensor, imp: Tensor, hp: Tensor,
                  materialize: bool = False, constants: Tensor | None = None
                  ) -> tuple[Tensor, ...]:
    """The activation's half of a step: every chain's minibatch loss and its gradient. Pure.

    W: (I, m, n, P); b: (I, n, P); x: (I, B, n); imp: (I, n); hp as in `tms_sgld_step`;
    constants: as in `value_and_vjp`.
    -> loss (I, P), dW (I, m, n, P), db (I, n, P)

    materialize=True also returns dL/dpre, h, the per-sample error and what
    `value_and_vjp` reuses. Under torch.compile that makes inductor compute each of them once
    into a buffer that the reductions over the minibatch read back, instead of recomputing the
    forward inside every reduction (2-3x faster for activations with transcendentals); the
    caller drops them.
    """
    grad_scale, loss_scale = hp[3], hp[4]
    x5 = x[:, :, None, :, None]  # (I, B, 1, n, 1)
    h = fixed_sum(x5 * W[:, None], 3)  # h = W x: (I, B, m, P)
    pre = b[:, None] + fixed_sum(h[:, :, :, None] * W[:, None], 2)  # W^T h + b: (I, B, n, P)
    out, vjp, reused = value_and_vjp(act, constants)(pre)
    diff = out - x[..., None]  # (I, B, n, P)
    wdiff = imp[:, None, :, None] * diff
    err = fixed_sum(wdiff * diff, 2)  # weighted squared error per sample: (I, B, P)
    g = vjp(grad_scale * wdiff)  # dL/dpre: (I, B, n, P)
    q = fixed_sum(W[:, None] * g[:, :, None], 3)  # W g: (I, B, m, P)
    dW = fixed_sum(h[:, :, :, None] * g[:, :, None] + q[:, :, :, None] * x5, 1)  # (I, m, n, P)
    db = fixed_sum(g, 1)  # (I, n, P)
    loss = fixed_sum(err, 1) * loss_scale  # (I, P)
    return (loss, dW, db, g, h, err, *reused) if materialize else (loss, dW, db)


def sgld_move(bias: bool, W: Tensor, b: Tensor, W0: Tensor, b0: Tensor, alive: Tensor,
              limit: Tensor, dws_W: Tensor, dws_b: Tensor, xi: Tensor, U: Tensor, loss: Tensor,
              dW: Tensor, db: Tensor, noise: Tensor, hp: Tensor) -> tuple[Tensor, ...]:
    """The half of a step that no activation changes: the SGLD update, MALA and the health
    mask. Pure. Arguments as in `tms_sgld_step`, with loss, dW and db from `loss_and_grad` (db
    unused without a bias). -> (W, b, alive, dws_W, dws_b, U, loss, mala): `tms_sgld_step`'s
    results without the noise (the next step's xi), which the caller passes on itself (a
    compiled function returning one of its inputs pays for it on every call)."""
    eps, gamma, n_beta = hp[0], hp[1], hp[2]
    I, m, n, P = W.shape
    noise_W, noise_b = noise[:, : m * n].unflatten(1, (m, n)), noise[:, m * n :]
    xi_W, xi_b = xi[:, : m * n].unflatten(1, (m, n)), xi[:, m * n :]

    W_new, dws_W_new = sgld_update(W, dW, W0, noise_W, eps, gamma, n_beta)
    dist = fixed_sum((W - W0).square().flatten(1, 2), 1)  # |w - w*|^2: (I, P)
    if bias:
        b_new, dws_b_new = sgld_update(b, db, b0, noise_b, eps, gamma, n_beta)
        dist = dist + fixed_sum((b - b0).square(), 1)
    else:
        b_new, dws_b_new = b, dws_b
    U_new = n_beta * loss + 0.5 * gamma * dist  # (I, P)

    # MALA: acceptance of the move (w_{t-1} -> w_t) that brought each chain here. The proposal
    # residual uses w_t - w_{t-1} = -eps/2 dws_{t-1} + sqrt(eps) xi_{t-1}.
    def back_residual(prev_dws: Tensor, dws: Tensor, prev_xi: Tensor) -> Tensor:
        return (0.5 * eps) * (prev_dws + dws) - (eps ** 0.5) * prev_xi

    rW = back_residual(dws_W, dws_W_new, xi_W)
    back = fixed_sum(rW.square().flatten(1, 2), 1)  # (I, P)
    fwd = fixed_sum(xi_W.square().flatten(1, 2), 1)
    if bias:
        rb = back_residual(dws_b, dws_b_new, xi_b)
        back = back + fixed_sum(rb.square(), 1)
        fwd = fwd + fixed_sum(xi_b.square(), 1)
    log_accept = -back / (2.0 * eps) + 0.5 * fwd + U - U_new
    mala = torch.exp(torch.clamp(log_accept, max=0.0))

    alive_new, W_new, b_new, loss, mala = _health(bias, alive, limit, loss, mala, W_new, W0,
                                                  b_new, b0)
    return W_new, b_new, alive_new, dws_W_new, dws_b_new, U_new, loss, mala


def _health(bias: bool, alive: Tensor, limit: Tensor, loss: Tensor, mala: Tensor,
            W_new: Tensor, W0: Tensor, b_new: Tensor, b0: Tensor) -> tuple[Tensor, ...]:
    """A chain whose loss is not finite or explodes dies here; it restarts at w* and is frozen
    there (finite numbers in its slot from now on, so nothing can spread).
    -> (alive, W, b, loss, mala) with the dead chains' loss and mala NaN."""
    alive_new = alive & torch.isfinite(loss) & (loss <= limit)
    W_new = torch.where(alive_new[:, None, None, :], W_new, W0)
    if bias:
        b_new = torch.where(alive_new[:, None, :], b_new, b0)
    nan = torch.full_like(loss, float("nan"))
    return (alive_new, W_new, b_new, torch.where(alive_new, loss, nan),
            torch.where(alive_new & alive, mala, nan))


def sgld_move_rmsprop(bias: bool, W: Tensor, b: Tensor, W0: Tensor, b0: Tensor, alive: Tensor,
                      limit: Tensor, dws_W: Tensor, dws_b: Tensor, xi: Tensor, U: Tensor,
                      v: Tensor, t: Tensor, loss: Tensor, dW: Tensor, db: Tensor, noise: Tensor,
                      hp: Tensor) -> tuple[Tensor, ...]:
    """`sgld_move` preconditioned by RMSProp (pSGLD, the module's docstring). Pure.

    v: (I, m n + n, P) the running mean of squared loss gradients (1 at the start), t: () the
    steps taken before this one; the rest as in `sgld_move`. -> (W, b, alive, dws_W, dws_b, U,
    v, t, loss, mala): `sgld_move`'s, with v and t after this step.

    MALA: the acceptance of the preconditioned Langevin proposal N(w - eps G/2 dws(w), eps G)
    that made the move w_{t-1} -> w_t, with that step's G at both ends (so the proposals'
    normalizations cancel). G changes between steps (the reverse move would be proposed with
    the next step's), so this is an approximation, which becomes exact as v settles.

    A diverged chain is reset and frozen as in `sgld_move`, and its v restarts at 1, so
    that its slot keeps finite numbers.
    """
    eps, gamma, n_beta = hp[0], hp[1], hp[2]
    I, m, n, P = W.shape
    noise_W, noise_b = noise[:, : m * n].unflatten(1, (m, n)), noise[:, m * n :]
    xi_W, xi_b = xi[:, : m * n].unflatten(1, (m, n)), xi[:, m * n :]
    v_W, v_b = v[:, : m * n].unflatten(1, (m, n)), v[:, m * n :]
    t_new = t + 1

    # G_prev: the preconditioner of the move that brought each chain here, for MALA (the same
    # expression on the same v and t as that step's G; 0 before the first move)
    G_W_prev = rmsprop_preconditioner(v_W, t)
    v_W_new = rmsprop_average(v_W, dW)
    W_new, dws_W_new = psgld_update(W, dW, W0, noise_W, eps, gamma, n_beta,
                                    rmsprop_preconditioner(v_W_new, t_new))
    dist = fixed_sum((W - W0).square().flatten(1, 2), 1)  # |w - w*|^2: (I, P)
    if bias:
        G_b_prev = rmsprop_preconditioner(v_b, t)
        v_b_new = rmsprop_average(v_b, db)
        b_new, dws_b_new = psgld_update(b, db, b0, noise_b, eps, gamma, n_beta,
                                        rmsprop_preconditioner(v_b_new, t_new))
        dist = dist + fixed_sum((b - b0).square(), 1)
    else:
        b_new, dws_b_new, v_b_new = b, dws_b, v_b
    U_new = n_beta * loss + 0.5 * gamma * dist  # (I, P)

    # MALA: the reverse proposal's standard normal residual. With w_t - w_{t-1} =
    # -eps G/2 dws_{t-1} + sqrt(eps G) xi_{t-1} it is sqrt(eps G)/2 (dws_{t-1} + dws_t) - xi_{t-1}
    # (sgld_move's residual divided by sqrt(eps G): no division by G, which is 0 at the start).
    def back_residual(prev_dws: Tensor, dws: Tensor, prev_xi: Tensor, prev_G: Tensor
                      ) -> Tensor:
        return (0.5 * torch.sqrt(eps * prev_G)) * (prev_dws + dws) - prev_xi

    rW = back_residual(dws_W, dws_W_new, xi_W, G_W_prev)
    back = fixed_sum(rW.square().flatten(1, 2), 1)  # (I, P)
    fwd = fixed_sum(xi_W.square().flatten(1, 2), 1)
    if bias:
        rb = back_residual(dws_b, dws_b_new, xi_b, G_b_prev)
        back = back + fixed_sum(rb.square(), 1)
        fwd = fwd + fixed_sum(xi_b.square(), 1)
    log_accept = 0.5 * (fwd - back) + U - U_new
    mala = torch.exp(torch.clamp(log_accept, max=0.0))

    alive_new, W_new, b_new, loss, mala = _health(bias, alive, limit, loss, mala, W_new, W0,
                                                  b_new, b0)
    v_new = torch.where(alive_new[:, None, :], torch.cat([v_W_new.flatten(1, 2), v_b_new], 1),
                        1.0)  # a dead chain's v restarts too
    return W_new, b_new, alive_new, dws_W_new, dws_b_new, U_new, v_new, t_new, loss, mala


def sgld_move_curvature(bias: bool, W: Tensor, b: Tensor, W0: Tensor, b0: Tensor,
                        alive: Tensor, limit: Tensor, gz_W: Tensor, gz_b: Tensor, xi: Tensor,
                        U: Tensor, L: Tensor, loss: Tensor, dW: Tensor, db: Tensor,
                        noise: Tensor, hp: Tensor) -> tuple[Tensor, ...]:
    """`sgld_move` preconditioned by the curvature at w* (the module's docstring). Pure.

    L: (I, D, D, P), D = m n + n, each chain's preconditioner (b's rows 0 without a bias, so b
    stays at b*); gz_W, gz_b: the previous step's whitened drift L^T dws (W's part, b's part);
    the rest as in `sgld_move`. -> (W, b, alive, gz_W, gz_b, U, loss, mala): `sgld_move`'s,
    with the whitened drift in place of the drift.

    MALA: with P = L L^T fixed, the reverse proposal's standard normal residual is
    sqrt(eps)/2 L^T (dws_{t-1} + dws_t) - xi_{t-1}: exact, as for plain SGLD.
    """
    eps, gamma, n_beta = hp[0], hp[1], hp[2]
    I, m, n, P = W.shape
    w = torch.cat([W.flatten(1, 2), b], 1)  # (I, D, P)
    w0 = torch.cat([W0.flatten(1, 2), b0], 1)
    dws = n_beta * torch.cat([dW.flatten(1, 2), db], 1) + gamma * (w - w0)  # (I, D, P)
    gz = fixed_sum(L * dws[:, :, None], 1)  # L^T dws: (I, D, P)
    step = (eps ** 0.5) * noise - (0.5 * eps) * gz  # the move in z
    w_new = w + fixed_sum(L * step[:, None], 2)  # w + L (sqrt(eps) xi - eps/2 L^T dws)
    W_new = w_new[:, : m * n].unflatten(1, (m, n))
    b_new = w_new[:, m * n :] if bias else b
    U_new = n_beta * loss + 0.5 * gamma * fixed_sum((w - w0).square(), 1)  # (I, P)

    gz_prev = torch.cat([gz_W.flatten(1, 2), gz_b], 1)
    back = fixed_sum(((0.5 * eps ** 0.5) * (gz_prev + gz) - xi).square(), 1)  # (I, P)
    log_accept = 0.5 * (fixed_sum(xi.square(), 1) - back) + U - U_new
    mala = torch.exp(torch.clamp(log_accept, max=0.0))

    alive_new, W_new, b_new, loss, mala = _health(bias, alive, limit, loss, mala, W_new, W0,
                                                  b_new, b0)
    return (W_new, b_new, alive_new, gz[:, : m * n].unflatten(1, (m, n)), gz[:, m * n :], U_new,
            loss, mala)


def tms_sgld_step_curvature(act: Activation, bias: bool, W: Tensor, b: Tensor, W0: Tensor,
                            b0: Tensor, alive: Tensor, limit: Tensor, gz_W: Tensor,
                            gz_b: Tensor, xi: Tensor, U: Tensor, L: Tensor, x: Tensor,
                            imp: Tensor, noise: Tensor, hp: Tensor) -> tuple[Tensor, ...]:
    """`tms_sgld_step` preconditioned by the curvature: `loss_and_grad` then
    `sgld_move_curvature`. Pure. L as in `ChainState`, the rest as in `tms_sgld_step`.
    -> (W, b, alive, gz_W, gz_b, xi, U, loss, mala)"""
    loss, dW, db = loss_and_grad(act, W, b, x, imp, hp)
    moved = sgld_move_curvature(bias, W, b, W0, b0, alive, limit, gz_W, gz_b, xi, U, L, loss,
                                dW, db, noise, hp)
    return *moved[:5], noise, *moved[5:]


def tms_sgld_step(act: Activation, bias: bool, W: Tensor, b: Tensor, W0: Tensor, b0: Tensor,
                  alive: Tensor, limit: Tensor, dws_W: Tensor, dws_b: Tensor, xi: Tensor, U: Tensor,
                  x: Tensor, imp: Tensor, noise: Tensor, hp: Tensor) -> tuple[Tensor, ...]:
    """One SGLD step of every chain of a group of instances sharing `act`. Pure; no in-place.

    W, W0, dws_W: (I, m, n, P); b, b0, dws_b: (I, n, P); alive, limit, U: (I, P);
    xi, noise: (I, m n + n, P) the previous step's and this step's standard normal noise (W
    flattened, then b); x: (I, B, n) the minibatch; imp: (I, n);
    hp: (5,) = eps, gamma, n_beta, grad_scale (2 / (B * features averaged)), loss_scale.

    Returns (W, b, alive, dws_W, dws_b, xi, U, loss, mala): the state after the step, the
    minibatch loss of every chain at its parameters BEFORE the update (what devinterp records as
    a draw; NaN for dead chains) and the MALA acceptance probability of the move that brought
    each chain to those parameters (I, P).

    The step is `loss_and_grad` (everything the activation touches) then `sgld_move`
    (everything else); compiled, each half is its own kernel (`step_function`).
    """
    loss, dW, db = loss_and_grad(act, W, b, x, imp, hp)
    moved = sgld_move(bias, W, b, W0, b0, alive, limit, dws_W, dws_b, xi, U, loss, dW, db, noise,
                      hp)
    return *moved[:5], noise, *moved[5:]


def tms_sgld_step_rmsprop(act: Activation, bias: bool, W: Tensor, b: Tensor, W0: Tensor,
                          b0: Tensor, alive: Tensor, limit: Tensor, dws_W: Tensor, dws_b: Tensor,
                          xi: Tensor, U: Tensor, v: Tensor, t: Tensor, x: Tensor, imp: Tensor,
                          noise: Tensor, hp: Tensor) -> tuple[Tensor, ...]:
    """`tms_sgld_step` preconditioned by RMSProp: `loss_and_grad` then `sgld_move_rmsprop`.
    Pure. v: (I, m n + n, P), t: () as in `ChainState`, the rest as in `tms_sgld_step`.
    -> (W, b, alive, dws_W, dws_b, xi, U, v, t, loss, mala)"""
    loss, dW, db = loss_and_grad(act, W, b, x, imp, hp)
    moved = sgld_move_rmsprop(bias, W, b, W0, b0, alive, limit, dws_W, dws_b, xi, U, v, t, loss,
                              dW, db, noise, hp)
    return *moved[:5], noise, *moved[5:]


# ---------------------------------------------------------------------------------------------
# Compiled or eager: one step function per (activation, bias)


PRECONDITIONERS = ("none", "rmsprop", "curvature")  # config.Precond


def step_function(activation: str, bias: bool, compiled: bool, precond: str = "none"
                  ) -> Callable[..., tuple[Tensor, ...]]:
    """The step for one activation: `fn(*state, x, imp, noise, hp)` (state: `ChainState`'s
    tensors, started with the same `precond`).

    compiled=True runs the step's two halves through torch.compile, each built once per
    process and cached on disk by torch across processes (dynamic shapes: one compile per n and
    m, reused for every chunk):
    - `loss_and_grad` once per `kernel_name`: the activation's own, or one for all members of
      its family (`activations.Family`, their constants an input): 3-5 s from a cold cache
      (activations27's 29 activations: 21 kernels; the llc_throughput warm-up 155 s -> 124 s,
      and a family member's step runs within a few percent of its own kernel's);
    - the move (`sgld_move`, or the preconditioned `sgld_move_rmsprop`, `sgld_move_curvature`)
      once for all activations (per bias), when first asked for.
    One kernel fusing the whole step cost 13-16 s per activation to compile (activations27's
    29 kernels: 445 s against 141 s split, benchmarks/llc_throughput.py's warm-up, 2026-12-03);
    the halves exchange only (I, P)-sized tensors and the gradient, and give that kernel's
    numbers bit for bit. The price is a second call per step: ~75 us, about 4.5% of a step
    over the 29 activations at the engine's tile size.
    """
    if precond not in PRECONDITIONERS:
        raise ValueError(f"unknown SGLD preconditioner {precond!r}")  # config validates it
    act = get_activation(activation)
    eager_step, move, dynamic, outputs = _STEPS[precond]
    if not compiled:
        return lambda *args: eager_step(act, bias, *args)

    first = loss_and_grad_function(activation, compiled=True)

    def bound(*args: Tensor) -> tuple[Tensor, ...]:
        return move(bias, *args)

    second = compile_once((move.__name__, bias), lambda: _compiled(
        with_own_code(bound, f"{move.__name__}_{int(bias)}"), dynamic, outputs))

    def step(*args: Tensor) -> tuple[Tensor, ...]:
        # args: W, b, the rest of the state, x, imp, noise, hp
        W, b, state, (x, imp, noise, hp) = args[0], args[1], args[2:-4], args[-4:]
        loss, dW, db = first(W, b, x, imp, hp)
        moved = second(W, b, *state, loss, dW, db, noise, hp)
        return *moved[:5], noise, *moved[5:]

    return step


def loss_and_grad_function(activation: str, compiled: bool) -> Callable[..., tuple[Tensor, ...]]:
    """The loss-and-gradient half of a step for one activation: `fn(W, b, x, imp, hp)` ->
    (loss, dW, db), shapes as in `loss_and_grad`. Any minibatch size (x's second axis): the
    SGLD step's minibatch, or a whole dataset (devtms.llc.mala).

    compiled=True: the activation's kernel (`kernel_name`), built once per process."""
    act = get_activation(activation)
    if not compiled:
        return lambda W, b, x, imp, hp: loss_and_grad(act, W, b, x, imp, hp)
    family = act.family

    def first_half(W: Tensor, b: Tensor, x: Tensor, imp: Tensor, hp: Tensor, c: Tensor
                   ) -> tuple[Tensor, ...]:
        return loss_and_grad(act, W, b, x, imp, hp, materialize=True,
                             constants=None if family is None else c)

    kernel = kernel_name(activation)
    first = compile_once(("sgld_loss_and_grad", kernel), lambda: _compiled(
        with_own_code(first_half, f"sgld_loss_and_grad_{kernel}"), FIRST_DYNAMIC, outputs=3))
    constants: dict[torch.device, Tensor] = {}  # act.constants on each device it runs on

    def run(W: Tensor, b: Tensor, x: Tensor, imp: Tensor, hp: Tensor) -> tuple[Tensor, ...]:
        c = constants.get(W.device)
        if c is None:
            c = constants[W.device] = torch.tensor(act.constants, dtype=W.dtype, device=W.device)
        return first(W, b, x, imp, hp, c)

    return run


def kernel_name(activation: str) -> str:
    """The compiled loss-and-gradient kernel `activation` runs on: its family's, else its own."""
    family = get_activation(activation).family
    return activation if family is None else family.name


# The axes of each argument that vary between calls: instances (first), chains (last) and the
# minibatch (x's second). m and n stay fixed, so inductor unrolls the small contractions over
# them. hp and the constants: none.
_CHAINS = (0, -1)
FIRST_DYNAMIC = (_CHAINS, _CHAINS, (0, 1), (0,), (), ())  # W, b, x, imp, hp, constants
MOVE_DYNAMIC = (*[_CHAINS] * 14, ())  # W, ..., U, loss, dW, db, noise; hp
MOVE_RMSPROP_DYNAMIC = (*[_CHAINS] * 11, (), *[_CHAINS] * 4, ())  # W, ..., U, v; t; loss, ...
MOVE_CURVATURE_DYNAMIC = (*[_CHAINS] * 15, ())  # W, ..., U, L, loss, dW, db, noise; hp

# per preconditioner: (eager step, move, the move's dynamic axes, the move's outputs)
_STEPS = {
    "none": (tms_sgld_step, sgld_move, MOVE_DYNAMIC, 8),
    "rmsprop": (tms_sgld_step_rmsprop, sgld_move_rmsprop, MOVE_RMSPROP_DYNAMIC, 10),
    "curvature": (tms_sgld_step_curvature, sgld_move_curvature, MOVE_CURVATURE_DYNAMIC, 8),
}


def _compiled(fn: Callable[..., tuple[Tensor, ...]], dynamic: tuple[tuple[int, ...], ...],
              outputs: int) -> Callable[..., tuple[Tensor, ...]]:
    """torch.compile with the axes `dynamic` names dynamic (one per argument) and no "duck
    sizing" (which would tie equal sizes together and recompile when a later chunk breaks the
    tie). -> the first `outputs` results."""
    from torch.fx.experimental import _config as fx_config

    compiled = torch.compile(fn, dynamic=False)
    seen: set[tuple[tuple[torch.Size, tuple[int, ...]], ...]] = set()

    def run(*args: Tensor) -> tuple[Tensor, ...]:
        # Only a call with shapes (and strides: dynamo guards both) not seen before can trace
        # and compile: mark its dynamic axes and switch duck sizing off for it alone (marking
        # every tensor and patching the config on every call cost ~15 us of a ~300 us call).
        shapes = tuple((t.shape, t.stride()) for t in args)
        if shapes in seen:
            return compiled(*args)[:outputs]
        for t, dims in zip(args, dynamic, strict=True):
            for d in dims:
                torch._dynamo.maybe_mark_dynamic(t, d % t.dim())
        duck = fx_config.use_duck_shape
        fx_config.use_duck_shape = False
        try:
            result = compiled(*args)[:outputs]
        finally:
            fx_config.use_duck_shape = duck
        seen.add(shapes)
        return result

    return run
