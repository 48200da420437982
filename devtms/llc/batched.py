"""The batched engine: every chain of every estimate in a chunk advances in one tensor program.

A chunk's estimates are grouped by activation; each group runs in tiles of about TILE_CHAINS
chains (devtms.llc.sgld's fused step, compiled or eager), one SGLD step for all of a tile's
chains at a time.

Randomness is keyed by the estimate, never by its position in a chunk:
- SGLD noise of estimate (instance, step) comes in blocks of NOISE_BLOCK SGLD steps, block k
  from a generator seeded by (instance, instance seed, checkpoint step, llc.seed, k), shaped
  (NOISE_BLOCK, chains, m n + n). One generator per estimate per 64 steps costs ~0.02 us per
  chain-step; one per chain per step would cost more than the step itself.
- Minibatches are shared by all chains and checkpoints of an instance (that is what lets one
  fused step serve them all): instance i's order is devtms.data.FiniteBatches over its LLC
  dataset, keyed by (instance, instance seed, llc.seed). Chains of one estimate therefore see the
  same minibatches and differ only in their noise (devinterp gives each chain its own shuffle);
  tests/test_llc.py checks the two engines agree within their standard errors.
- For elementwise activations the arithmetic of each chain does not depend on which chains
  share its tensors (see devtms.llc.sgld), so an estimate's numbers are identical in any
  chunking. The over-features activations (softmax, solu, ...) reduce over features with
  torch's kernels, whose order follows the whole tensor's shape: their last float32 bits depend
  on the chunk. So chunks are planned over the whole request (devtms.llc.plan), never over what
  is pending: a rerun after a kill, and any executor, cut the same chunks and give the same
  bits (given the same kernel, compiled or eager).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from devtms.activations import contiguous_groups
from devtms.allocator import keep_freed_memory
from devtms.data import DataKeys, FiniteBatches
from devtms.llc import sgld
from devtms.llc.curvature import whitening
from devtms.llc.health import divergence_limit
from devtms.llc.params import LLCParams
from devtms.llc.task import ChunkResult, ChunkTask, init_losses, make_result
from devtms.rng import derive_seed, generator

Tensor = torch.Tensor

NOISE_BLOCK = 64  # SGLD steps of noise drawn per generator; part of the algorithm (fixes numbers)
TILE_CHAINS = {False: 2048, True: 384}  # chains per kernel call, eager / compiled (cache-sized)


def noise_block(instance: int, seed: int, step: int, params: LLCParams, block: int,
                dim: int) -> Tensor:
    """Standard normal SGLD noise of one estimate for SGLD steps [64 k, 64 (k+1)). -> (64, C, dim)"""
    g = generator("llc-noise", instance, seed, step, params.seed, block)
    return torch.randn(NOISE_BLOCK, params.chains, dim, generator=g)


def minibatch_keys(instances: Sequence[int], seeds: Sequence[int], params: LLCParams) -> list[int]:
    """Per-instance keys of the minibatch order (shared by the instance's chains and steps)."""
    return [derive_seed("llc-batches", int(i), int(s), params.seed)
            for i, s in zip(instances, seeds, strict=True)]


def batched_chunk(task: ChunkTask) -> ChunkResult:
    """Estimate every (instance, step) of the task with the batched sampler. No file I/O."""
    keep_freed_memory()  # every step allocates megabytes: reuse them, do not page-fault them in
    p = task.params
    init = init_losses(task)  # (I, S)
    I, S, m, n = task.W0.shape
    L = preconditioner(task) if p.precond == "curvature" else None  # (I, S, D, D)
    loss = torch.empty(I, S, p.chains, p.draws)
    mala = torch.empty(I, S, p.chains)
    for act, start, stop in contiguous_groups(task.activations):
        sl = slice(start, stop)
        loss[sl], mala[sl] = run_chains(
            act.name, task.W0[sl], task.b0[sl], task.data[sl], task.importance[sl],
            task.instances[sl], task.seeds[sl], task.steps, init[sl], p, bias=task.bias,
            reduction=task.reduction, compiled=task.compiled, device=task.device,
            L=None if L is None else L[sl])
    return make_result(task, init, loss, mala)


def preconditioner(task: ChunkTask) -> Tensor:
    """precond "curvature"'s L of every estimate over all of W and b, float32: the whitening
    (devtms.llc.curvature) with b's rows and columns 0 where the model has no bias (b is not
    sampled). -> (I, S, D, D), D = m n + n"""
    I, S, m, n = task.W0.shape
    L = whitening(task).float()  # (I, S, d, d)
    if task.bias:
        return L
    full = L.new_zeros(I, S, m * n + n, m * n + n)
    full[:, :, : m * n, : m * n] = L
    return full


def run_chains(activation: str, W0: Tensor, b0: Tensor, data: Tensor, importance: Tensor,
               instances: Sequence[int], seeds: Sequence[int], steps: Sequence[int],
               init_loss: Tensor, params: LLCParams, *, bias: bool, reduction: str,
               compiled: bool = False, device: str = "cpu", L: Tensor | None = None
               ) -> tuple[Tensor, Tensor]:
    """Run every chain of the estimates instances x steps (one activation) to the end.

    W0: (I, S, m, n), b0: (I, S, n), data: (I, N, n), importance: (I, n), init_loss: (I, S);
    L: (I, S, D, D), precond "curvature"'s preconditioner (`preconditioner`).
    -> draws (I, S, chains, draws): minibatch loss before each recorded update (NaN once a chain
       diverged), and mean MALA acceptance over the draws (I, S, chains).

    The estimates run in tiles of about TILE_CHAINS chains, one after another: a tile's
    temporaries stay in cache, which matters more than the per-step call overhead it adds.
    Tiles never change numbers (each chain's arithmetic is its own).
    """
    I, S = W0.shape[:2]
    draws = torch.empty(I, S, params.chains, params.draws)
    mala = torch.empty(I, S, params.chains)
    for si, ss in tiles(I, S, *tile_shape(I, S, params.chains, compiled)):
        draws[si, ss], mala[si, ss] = _run_tile(
            activation, W0[si, ss], b0[si, ss], data[si], importance[si], instances[si],
            seeds[si], steps[ss], init_loss[si, ss], params, bias=bias,
            reduction=reduction, compiled=compiled, device=device,
            L=None if L is None else L[si, ss])
    return draws, mala


def tiles(I: int, S: int, i_tile: int, s_tile: int) -> list[tuple[slice, slice]]:
    """The tiles of an (instances, steps) rectangle, instance-major: (instances, steps) slices."""
    return [(slice(i0, i0 + i_tile), slice(s0, s0 + s_tile))
            for i0 in range(0, I, i_tile) for s0 in range(0, S, s_tile)]


def tile_shape(I: int, S: int, chains: int, compiled: bool, tile: int | None = None
               ) -> tuple[int, int]:
    """Instances x steps per tile: about `tile` chains (default TILE_CHAINS), tiles of equal
    size. Every instance of the group in each tile when they fit, else about equal groups of
    instances with all their steps, and never one instance alone when compiled (that would
    run a twin, see _run_tile). Steps are split last, into equal parts.
    """
    tile = tile or TILE_CHAINS[compiled]
    if I * chains <= tile:
        i_tile = I
    else:
        i_tile = max(2 if compiled else 1, tile // (S * chains))
        i_tile = math.ceil(I / math.ceil(I / i_tile))  # equal groups
    parts = max(1, round(i_tile * S * chains / tile))
    return i_tile, math.ceil(S / parts)


def _run_tile(activation: str, W0: Tensor, b0: Tensor, data: Tensor, importance: Tensor,
              instances: Sequence[int], seeds: Sequence[int], steps: Sequence[int],
              init_loss: Tensor, params: LLCParams, *, bias: bool, reduction: str,
              compiled: bool, device: str, L: Tensor | None = None) -> tuple[Tensor, Tensor]:
    if compiled and W0.shape[0] == 1:  # size-1 axes would make torch.compile specialize and
        two = [torch.cat([t, t]) for t in (W0, b0, data, importance, init_loss)]  # recompile:
        draws, mala = _run_tile(activation, *two[:4], list(instances) * 2, list(seeds) * 2,
                                steps, two[4], params, bias=bias, reduction=reduction,
                                compiled=True, device=device,
                                L=None if L is None else torch.cat([L, L]))  # run a twin, drop it
        return draws[:1], mala[:1]
    if compiled and W0.shape[1] * params.chains == 1:
        two = [torch.cat([t, t], dim=1) for t in (W0, b0, init_loss)]
        draws, mala = _run_tile(activation, two[0], two[1], data, importance, instances, seeds,
                                list(steps) * 2, two[2], params, bias=bias, reduction=reduction,
                                compiled=True, device=device,
                                L=None if L is None else torch.cat([L, L], dim=1))
        return draws[:, :1], mala[:, :1]
    p, dev = params, torch.device(device)
    I, S, m, n = W0.shape
    C, P = p.chains, S * p.chains
    d = m * n + n

    def chain_layout(t: Tensor) -> Tensor:  # (I, S, *shape) -> (I, *shape, S * C)
        t = t[:, :, None].expand(I, S, C, *t.shape[2:]).reshape(I, P, *t.shape[2:])
        return t.movedim(1, -1).contiguous().to(dev)

    limit = divergence_limit(init_loss)  # (I, S)
    state = sgld.ChainState.start(chain_layout(W0), chain_layout(b0), chain_layout(limit),
                                  p.precond, None if L is None else chain_layout(L))
    features = n if reduction == "mean" else 1
    B = p.batch_size
    hp = torch.tensor([p.eps, p.gamma, p.n_beta, 2.0 / (B * features), 1.0 / (B * features)],
                      device=dev)
    imp = importance.to(dev)
    keys = DataKeys(minibatch_keys(instances, seeds, p), [0.0] * I)  # one key per instance
    batches = FiniteBatches(data.to(dev), keys, B)
    step = sgld.step_function(activation, bias, compiled, p.precond)

    draws = torch.empty(p.draws, I, P, device=dev)
    mala_sum = torch.zeros(I, P, dtype=torch.float64, device=dev)
    mala_count = 0
    noise = block = torch.empty(0)
    with torch.no_grad():
        for t in range(p.burnin + p.draws):
            k, offset = divmod(t, NOISE_BLOCK)
            if offset == 0:  # (64, I, d, P): block k of every estimate, in chain layout
                noise = torch.stack([
                    torch.stack([noise_block(int(i), int(s), int(st), p, k, d) for st in steps])
                    for i, s in zip(instances, seeds, strict=True)
                ])  # (I, S, 64, C, d)
                noise = noise.permute(2, 0, 4, 1, 3).reshape(NOISE_BLOCK, I, d, P)
                noise = noise.contiguous().to(dev)
                count = min(NOISE_BLOCK, p.burnin + p.draws - t)
                block = batches.batches(t, count)  # (count, I, B, n): this block's minibatches
            x = block[offset].contiguous()  # (I, B, n)
            loss, accept = state.advance(x, imp, noise[offset].clone(), hp, step)  # (I, P)
            if t >= p.burnin:
                draws[t - p.burnin] = loss
                if t >= 1:  # acceptance of the move into this draw
                    mala_sum += accept
                    mala_count += 1
    draws = draws.reshape(p.draws, I, S, C).permute(1, 2, 3, 0).cpu()  # (I, S, C, D)
    mala = (mala_sum / max(mala_count, 1)).float().reshape(I, S, C).cpu()
    if mala_count == 0:
        mala.fill_(float("nan"))
    return draws, mala
