"""The local learning coefficient at every checkpoint: a batched SGLD estimator and devinterp's.

    lambda_hat(w*) = n_beta * (mean over draws of L_batch(w_t) - L_N(w*)),   per chain

averaged over chains (SCIENCE.md section 4). One *estimate* is one (instance, checkpoint step)
under one set of hyperparameters and one engine; llc.csv holds one row per estimate.

Engines:
- "batched" (default): every chain of every estimate in a chunk advances in one tensor
  program (devtms.sgld): one fused step per activation group and SGLD step.
- "devinterp": devinterp's public `estimate_learning_coeff_with_summary` with its SGLD, one
  checkpoint at a time, the same hyperparameters, a DataLoader over the same LLC dataset and the
  same init loss. It exists for cross-checks.

Work flows in three layers, so that an executor can run chunks anywhere:

    plan_chunks(pending)   -> chunks (instances x steps rectangles)
    build_task(...)        -> ChunkTask: tensors + hyperparameters, picklable, no file handles
    estimate_chunk(task)   -> ChunkResult: rows + loss traces; pure, no file I/O
    run_llc(run, ...)      the driver: validates, maps tasks through an executor, writes
                           llc_traces/ then llc.csv after every chunk (atomically)

Randomness is keyed by the estimate, never by position in a chunk:
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
  share its tensors (see devtms.sgld), so an estimate's numbers are identical in any chunking.
  The over-features activations (softmax, solu, ...) reduce over features with torch's kernels,
  whose order follows the whole tensor's shape: their last float32 bits depend on the chunk.
  So chunks are planned over the whole request, never over what is pending: a rerun after a
  kill, and any executor, cut the same chunks and give the same bits (given the same kernel,
  compiled or eager; see `use_compile`).

Health of every estimate (`summarize`): a chain whose minibatch loss becomes non-finite or
exceeds DIVERGENCE_FACTOR x max(init loss, LOSS_FLOOR) is diverged: it is frozen at w* and its
draws are NaN; the estimate's LLC is over the remaining chains and the row says healthy = false
with the reason. An LLC whose mean + 2 sem < 0 (not at a local minimum, or eps too large) or
mean - 2 sem > 1.1 d/2 (d/2 is the largest learning coefficient a d-parameter model can have;
beyond SGLD's discretization bias this means eps too large or escaped chains) is flagged too.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from devtms import model as tms
from devtms import sgld
from devtms.activations import contiguous_groups
from devtms.allocator import keep_freed_memory
from devtms.compiling import compile_available
from devtms.config import LLCConfig, RunConfig
from devtms.data import DataKeys, FiniteBatches, importance_weights
from devtms.errors import UserError
from devtms.rng import derive_seed, generator
from devtms.store import (
    LLC_CSV,
    LLC_TRACES,
    RunDir,
    checkpoint_bytes,
    load_checkpoint_file,
    write_bytes_atomic,
)

Tensor = torch.Tensor

ENGINES = ("batched", "devinterp")
NOISE_BLOCK = 64  # SGLD steps of noise drawn per generator; part of the algorithm (fixes numbers)
DIVERGENCE_FACTOR = 1e6  # a chain diverged once its minibatch loss exceeds this x init loss ...
LOSS_FLOOR = 1e-6  # ... or this x DIVERGENCE_FACTOR, whichever is larger
TILE_CHAINS = {False: 2048, True: 384}  # chains per kernel call, eager / compiled (cache-sized)
MEMORY_BUDGET = 512 * 2**20  # bytes a chunk may use (auto chunk size)
ABOVE_MAX_FACTOR = 1.1  # flag an llc more than 10% (and 2 sem) above d/2 (SGLD's bias is smaller)
COMPILE_MIN_WORK = 3e9  # auto: compile when a run's LLC job is this many loss terms per activation

# llc.csv: the DESIGN.md contract columns first, then devtms's additions.
CONTRACT_COLUMNS = ["instance", "step", "llc_mean", "llc_std", "init_loss", "num_chains",
                    "num_draws", "eps", "gamma", "n_beta", "engine", "healthy"]
EXTRA_COLUMNS = ["burnin", "batch_size", "seed", "n_samples", "llc_sem", "num_diverged",
                 "mala_acceptance", "reason"]
COLUMNS = CONTRACT_COLUMNS + EXTRA_COLUMNS
# What identifies an estimate: a row with these values is never computed again.
IDENTITY = ["instance", "step", "engine", "eps", "gamma", "n_beta", "num_chains", "num_draws",
            "burnin", "batch_size", "seed", "n_samples"]
_FLOAT_IDENTITY = ("eps", "gamma", "n_beta")


# ---------------------------------------------------------------------------------------------
# Hyperparameters, tasks, results


@dataclass(frozen=True)
class LLCParams:
    """Resolved hyperparameters of a set of estimates (n_beta is a number here, never None)."""

    eps: float
    gamma: float
    n_beta: float
    chains: int
    draws: int
    burnin: int
    batch_size: int
    seed: int
    n_samples: int  # N: the size of the LLC dataset the losses are measured on

    @classmethod
    def resolve(cls, llc: LLCConfig, n_samples: int) -> LLCParams:
        """n_beta None -> N / log N of the LLC dataset (devtms's default; devinterp's is B / log B)."""
        n_beta = llc.n_beta if llc.n_beta is not None else n_samples / math.log(n_samples)
        return cls(eps=float(llc.eps), gamma=float(llc.gamma), n_beta=float(n_beta),
                   chains=llc.chains, draws=llc.draws, burnin=llc.burnin,
                   batch_size=llc.batch_size, seed=llc.seed, n_samples=n_samples)

    def identity(self, engine: str) -> dict[str, Any]:
        """The llc.csv identity columns (without instance and step)."""
        return dict(engine=engine, eps=self.eps, gamma=self.gamma, n_beta=self.n_beta,
                    num_chains=self.chains, num_draws=self.draws, burnin=self.burnin,
                    batch_size=self.batch_size, seed=self.seed, n_samples=self.n_samples)

    def tag(self, engine: str) -> str:
        """A short stable name for these hyperparameters (trace file names)."""
        return hashlib.blake2b(repr(sorted(self.identity(engine).items())).encode(),
                               digest_size=5).hexdigest()


@dataclass
class ChunkTask:
    """Everything `estimate_chunk` needs for the estimates instances x steps. Picklable.

    W0: (I, S, m, n), b0: (I, S, n): the checkpoints; data: (I, N, n): each instance's LLC
    dataset; importance: (I, n).
    """

    engine: str
    instances: list[int]
    seeds: list[int]
    activations: list[str]
    steps: list[int]
    W0: Tensor
    b0: Tensor
    data: Tensor
    importance: Tensor
    bias: bool
    reduction: str
    params: LLCParams
    compiled: bool = False
    device: str = "cpu"

    @property
    def num_estimates(self) -> int:
        return len(self.instances) * len(self.steps)


@dataclass
class ChunkResult:
    """Rows for llc.csv (one per estimate, instance-major) and their loss traces.

    traces: instance (E,), step (E,), loss (E, chains, draws) with NaN for diverged chains,
    init_loss (E,), mala (E, chains) mean acceptance per chain (NaN where not computed).
    """

    engine: str
    params: LLCParams
    rows: list[dict[str, Any]]
    traces: dict[str, Tensor] = field(default_factory=dict)

    def only(self, wanted: set[tuple[int, int]]) -> ChunkResult:
        """The estimates (instance, step) in `wanted`, rows and traces alike."""
        keep = [e for e, r in enumerate(self.rows) if (r["instance"], r["step"]) in wanted]
        if len(keep) == len(self.rows):
            return self
        index = torch.tensor(keep, dtype=torch.long)
        return ChunkResult(self.engine, self.params, [self.rows[e] for e in keep],
                           {k: v[index] for k, v in self.traces.items()})


# ---------------------------------------------------------------------------------------------
# Estimating one chunk (pure)


def estimate_chunk(task: ChunkTask) -> ChunkResult:
    """Estimate the LLC of every (instance, step) of the task. No file I/O."""
    if task.engine == "batched":
        return _batched_chunk(task)
    if task.engine == "devinterp":
        return _devinterp_chunk(task)
    raise ValueError(f"unknown engine {task.engine!r}")


def init_losses(task: ChunkTask) -> Tensor:
    """L_N(w*) of every estimate on its instance's full LLC dataset, float64. -> (I, S)

    Computed one estimate at a time with model.loss (the same shapes every time, so the same
    bits whatever the chunk); both engines use these numbers.
    """
    I, S = task.W0.shape[:2]
    out = torch.empty(I, S, dtype=torch.float64)
    with torch.no_grad():
        for i in range(I):
            groups = contiguous_groups([task.activations[i]])
            x, imp = task.data[i : i + 1], task.importance[i : i + 1]
            for s in range(S):
                out[i, s] = tms.loss(task.W0[i, s][None], task.b0[i, s][None], x, imp, groups,
                                     task.reduction)[0].item()
    return out


def num_parameters(m: int, n: int, bias: bool) -> int:
    """d: the number of sampled parameters of one TMS instance."""
    return m * n + (n if bias else 0)


def noise_block(instance: int, seed: int, step: int, params: LLCParams, block: int,
                dim: int) -> Tensor:
    """Standard normal SGLD noise of one estimate for SGLD steps [64 k, 64 (k+1)). -> (64, C, dim)"""
    g = generator("llc-noise", instance, seed, step, params.seed, block)
    return torch.randn(NOISE_BLOCK, params.chains, dim, generator=g)


def minibatch_keys(instances: Sequence[int], seeds: Sequence[int], params: LLCParams) -> list[int]:
    """Per-instance keys of the minibatch order (shared by the instance's chains and steps)."""
    return [derive_seed("llc-batches", int(i), int(s), params.seed)
            for i, s in zip(instances, seeds, strict=True)]


def _batched_chunk(task: ChunkTask) -> ChunkResult:
    keep_freed_memory()  # every step allocates megabytes: reuse them, do not page-fault them in
    p = task.params
    init = init_losses(task)  # (I, S)
    I, S, m, n = task.W0.shape
    loss = torch.empty(I, S, p.chains, p.draws)
    mala = torch.empty(I, S, p.chains)
    for act, start, stop in contiguous_groups(task.activations):
        sl = slice(start, stop)
        loss[sl], mala[sl] = run_chains(
            act.name, task.W0[sl], task.b0[sl], task.data[sl], task.importance[sl],
            task.instances[sl], task.seeds[sl], task.steps, init[sl], p, bias=task.bias,
            reduction=task.reduction, compiled=task.compiled, device=task.device)
    return _result(task, init, loss, mala)


def run_chains(activation: str, W0: Tensor, b0: Tensor, data: Tensor, importance: Tensor,
               instances: Sequence[int], seeds: Sequence[int], steps: Sequence[int],
               init_loss: Tensor, params: LLCParams, *, bias: bool, reduction: str,
               compiled: bool = False, device: str = "cpu") -> tuple[Tensor, Tensor]:
    """Run every chain of the estimates instances x steps (one activation) to the end.

    W0: (I, S, m, n), b0: (I, S, n), data: (I, N, n), importance: (I, n), init_loss: (I, S).
    -> draws (I, S, chains, draws): minibatch loss before each recorded update (NaN once a chain
       diverged), and mean MALA acceptance over the draws (I, S, chains).

    The estimates run in tiles of about TILE_CHAINS chains, one after another: a tile's
    temporaries stay in cache, which matters more than the per-step call overhead it adds.
    Tiles never change numbers (each chain's arithmetic is its own).
    """
    I, S = W0.shape[:2]
    i_tile, s_tile = tile_shape(I, S, params.chains, compiled)
    draws = torch.empty(I, S, params.chains, params.draws)
    mala = torch.empty(I, S, params.chains)
    for i0 in range(0, I, i_tile):
        for s0 in range(0, S, s_tile):
            si, ss = slice(i0, i0 + i_tile), slice(s0, s0 + s_tile)
            draws[si, ss], mala[si, ss] = _run_tile(
                activation, W0[si, ss], b0[si, ss], data[si], importance[si], instances[si],
                seeds[si], steps[ss], init_loss[si, ss], params, bias=bias,
                reduction=reduction, compiled=compiled, device=device)
    return draws, mala


def tile_shape(I: int, S: int, chains: int, compiled: bool) -> tuple[int, int]:
    """Instances x steps per tile: about TILE_CHAINS chains, tiles of equal size. Every instance
    of the group in each tile when they fit, else about equal groups of instances with all
    their steps, and never one instance alone when compiled (that would run a twin, see
    _run_tile). Steps are split last, into equal parts.
    """
    tile = TILE_CHAINS[compiled]
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
              compiled: bool, device: str) -> tuple[Tensor, Tensor]:
    if compiled and W0.shape[0] == 1:  # size-1 axes would make torch.compile specialize and
        two = [torch.cat([t, t]) for t in (W0, b0, data, importance, init_loss)]  # recompile:
        draws, mala = _run_tile(activation, *two[:4], list(instances) * 2, list(seeds) * 2,
                                steps, two[4], params, bias=bias, reduction=reduction,
                                compiled=True, device=device)  # run a twin, drop it
        return draws[:1], mala[:1]
    if compiled and W0.shape[1] * params.chains == 1:
        two = [torch.cat([t, t], dim=1) for t in (W0, b0, init_loss)]
        draws, mala = _run_tile(activation, two[0], two[1], data, importance, instances, seeds,
                                list(steps) * 2, two[2], params, bias=bias, reduction=reduction,
                                compiled=True, device=device)
        return draws[:, :1], mala[:, :1]
    p, dev = params, torch.device(device)
    I, S, m, n = W0.shape
    C, P = p.chains, S * p.chains
    d = m * n + n

    def chain_layout(t: Tensor) -> Tensor:  # (I, S, *shape) -> (I, *shape, S * C)
        t = t[:, :, None].expand(I, S, C, *t.shape[2:]).reshape(I, P, *t.shape[2:])
        return t.movedim(1, -1).contiguous().to(dev)

    limit = DIVERGENCE_FACTOR * init_loss.clamp(min=LOSS_FLOOR).float()  # (I, S)
    state = sgld.ChainState.start(chain_layout(W0), chain_layout(b0), chain_layout(limit))
    features = n if reduction == "mean" else 1
    B = p.batch_size
    hp = torch.tensor([p.eps, p.gamma, p.n_beta, 2.0 / (B * features), 1.0 / (B * features)],
                      device=dev)
    imp = importance.to(dev)
    keys = DataKeys(minibatch_keys(instances, seeds, p), [0.0] * I)  # one key per instance
    batches = FiniteBatches(data.to(dev), keys, B)
    step = sgld.step_function(activation, bias, compiled)

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


def _devinterp_chunk(task: ChunkTask) -> ChunkResult:
    """The reference engine: devinterp's estimator, one checkpoint at a time."""
    from devinterp.optim.sgld import SGLD
    from devinterp.slt.mala import MalaAcceptanceRate
    from devinterp.slt.sampler import estimate_learning_coeff_with_summary
    from torch.utils.data import DataLoader, TensorDataset

    p = task.params
    init = init_losses(task)
    I, S, m, n = task.W0.shape
    loss = torch.empty(I, S, p.chains, p.draws)
    mala = torch.full((I, S, p.chains), float("nan"))
    reported: dict[tuple[int, int], tuple[float, float, str]] = {}

    def evaluate(model: tms.TMS, batch: list[Tensor]) -> Tensor:
        return model.loss(batch[0])

    for i in range(I):
        dataset = TensorDataset(task.data[i])
        for s in range(S):
            model = tms.TMS(task.W0[i, s], task.b0[i, s], task.activations[i],
                            task.importance[i], task.reduction, task.bias)
            loader = DataLoader(dataset, batch_size=p.batch_size, shuffle=True)
            mask = None if task.bias else {"W": torch.ones(m, n), "b": torch.zeros(n)}
            callback = MalaAcceptanceRate(num_chains=p.chains, num_draws=p.draws,
                                          learning_rate=p.eps, nbeta=p.n_beta, device=task.device)
            # devinterp recomputes the init loss when it is falsy (exactly 0.0); the smallest
            # positive double changes no float32 number.
            init_loss = float(init[i, s]) or 5e-324
            key = derive_seed("llc-devinterp", task.instances[i], task.seeds[i], task.steps[s],
                              p.seed)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    res = estimate_learning_coeff_with_summary(
                        model, loader, evaluate=evaluate, sampling_method=SGLD,
                        optimizer_kwargs=dict(lr=p.eps, localization=p.gamma, nbeta=p.n_beta),
                        num_chains=p.chains, num_draws=p.draws, num_burnin_steps=p.burnin,
                        init_loss=init_loss, seed=key, device=task.device, verbose=False,
                        optimize_over_per_model_param=mask, callbacks=[callback])
            except RuntimeError as e:  # devinterp raises on a NaN loss
                loss[i, s] = float("nan")
                reported[(i, s)] = (float("nan"), float("nan"), f"devinterp: {e}")
                continue
            loss[i, s] = torch.as_tensor(res["loss/trace"]).float()
            reported[(i, s)] = (float(res["llc/mean"]), float(res["llc/std"]), "")
            # devinterp's trace leaves index 0 at 0 (it records from the second draw on)
            accept = torch.as_tensor(res["mala_accept/trace"]).float()[:, 1:]
            if accept.shape[1] > 0:
                mala[i, s] = accept.mean(1)
    return _result(task, init, loss, mala, reported)


def _result(task: ChunkTask, init: Tensor, loss: Tensor, mala: Tensor,
            reported: dict[tuple[int, int], tuple[float, float, str]] | None = None
            ) -> ChunkResult:
    I, S, m, n = task.W0.shape
    d = num_parameters(m, n, task.bias)
    flat_loss = loss.reshape(I * S, *loss.shape[2:])
    flat_mala = mala.reshape(I * S, -1)
    stats = summarize(flat_loss, init.reshape(-1), task.params.n_beta, d, flat_mala)
    rows = []
    for e, (i, s) in enumerate(np.ndindex(I, S)):
        row = dict(instance=task.instances[i], step=task.steps[s],
                   **task.params.identity(task.engine), init_loss=float(init[i, s]), **stats[e])
        if reported is not None:  # the reference engine reports devinterp's own numbers
            mean, std, error = reported[(i, s)]
            row.update(llc_mean=mean, llc_std=std, llc_sem=std / math.sqrt(task.params.chains))
            if error:
                row.update(healthy=False, reason=_join(row["reason"], error))
        rows.append(row)
    traces = dict(
        instance=torch.tensor(task.instances, dtype=torch.int64).repeat_interleave(S),
        step=torch.tensor(task.steps, dtype=torch.int64).repeat(I),
        loss=flat_loss.contiguous(), init_loss=init.reshape(-1).contiguous(),
        mala=flat_mala.contiguous(),
    )
    return ChunkResult(task.engine, task.params, rows, traces)


# ---------------------------------------------------------------------------------------------
# From traces to numbers (pure)


def summarize(loss: Tensor, init_loss: Tensor, n_beta: float, n_params: int,
              mala: Tensor | None = None) -> list[dict[str, Any]]:
    """Per-estimate LLC statistics and health from loss traces.

    loss: (E, chains, draws), NaN in the draws of diverged chains; init_loss: (E,).
    llc per chain = n_beta * (mean draw loss - init loss); mean over healthy chains, std with
    torch's unbiased .std() (as devinterp), sem = std / sqrt(healthy chains).
    """
    loss64 = loss.double()
    diverged = ~torch.isfinite(loss64).all(-1)  # (E, C)
    per_chain = n_beta * (loss64.mean(-1) - init_loss.double()[:, None])  # (E, C)
    rows = []
    for e in range(loss.shape[0]):
        good = per_chain[e][~diverged[e]]
        k = int(good.numel())
        mean = float(good.mean()) if k else float("nan")
        std = float(good.std()) if k > 1 else float("nan")
        sem = std / math.sqrt(k) if k > 1 else float("nan")
        reasons = []
        if not math.isfinite(float(init_loss[e])):
            reasons.append("the checkpoint's loss is not finite (its training diverged)")
        elif k < loss.shape[1]:
            reasons.append(
                f"diverged: {loss.shape[1] - k} of {loss.shape[1]} chains (non-finite or exploding "
                f"loss){'; llc over the rest' if k else ''}")
        if k > 1 and mean + 2 * sem < 0:
            reasons.append("negative llc (mean + 2 sem < 0): not at a local minimum, or eps "
                           "too large")
        if k > 1 and mean - 2 * sem > ABOVE_MAX_FACTOR * n_params / 2:
            reasons.append(f"llc above d/2 = {n_params / 2:g}, the largest possible: eps too "
                           "large or chains escaped")
        accept = float("nan")
        if mala is not None and k:
            chains_ok = mala[e][~diverged[e]]
            chains_ok = chains_ok[torch.isfinite(chains_ok)]
            if chains_ok.numel():
                accept = float(chains_ok.double().mean())
        rows.append(dict(llc_mean=mean, llc_std=std, llc_sem=sem, num_diverged=loss.shape[1] - k,
                         mala_acceptance=accept, healthy=not reasons, reason="; ".join(reasons)))
    return rows


def _join(a: str, b: str) -> str:
    return f"{a}; {b}" if a else b


# ---------------------------------------------------------------------------------------------
# Planning


def plan_chunks(pending: Iterable[tuple[int, int]], chunk_size: int
                ) -> list[tuple[list[int], list[int]]]:
    """Cut pending (instance, step) estimates into rectangles instances x steps of <= chunk_size.

    Consecutive instances with the same pending steps share chunks; an instance's steps are
    split only when they alone exceed chunk_size.
    """
    by_instance: dict[int, list[int]] = {}
    for i, s in pending:
        by_instance.setdefault(int(i), []).append(int(s))
    blocks: list[tuple[list[int], tuple[int, ...]]] = []
    for i in sorted(by_instance):
        steps = tuple(sorted(set(by_instance[i])))
        if blocks and blocks[-1][1] == steps:
            blocks[-1][0].append(i)
        else:
            blocks.append(([i], steps))
    chunks: list[tuple[list[int], list[int]]] = []
    for instances, steps in blocks:
        if len(steps) >= chunk_size:
            for i in instances:
                for j in range(0, len(steps), chunk_size):
                    chunks.append(([i], list(steps[j : j + chunk_size])))
        else:
            per = chunk_size // len(steps)
            for j in range(0, len(instances), per):
                chunks.append((instances[j : j + per], list(steps)))
    return chunks


def bytes_per_estimate(params: LLCParams, m: int, n: int, compiled: bool) -> int:
    """Memory one estimate needs while its chunk runs (state, noise block, draws, temporaries)."""
    d = m * n + n
    temporaries = params.batch_size * ((4 if compiled else 12) * n + 4 * m + 4)
    return 4 * params.chains * (params.draws + NOISE_BLOCK * d + 16 * d + temporaries)


def auto_chunk_size(n_pending: int, steps_per_instance: int, params: LLCParams, m: int, n: int,
                    compiled: bool, budget: int = MEMORY_BUDGET) -> int:
    """Estimates per chunk: within the memory budget, else about 8 chunks, and at least one
    instance's steps (so activation groups stay long)."""
    cap = max(1, budget // bytes_per_estimate(params, m, n, compiled))
    return max(1, min(cap, max(steps_per_instance, math.ceil(n_pending / 8))))


def use_compile(config: RunConfig, params: LLCParams, engine: str, setting: str = "auto") -> bool:
    """Whether the batched engine runs its step through torch.compile.

    "auto": when torch.compile works here and the run's whole LLC job (all instances and
    checkpoints at these hyperparameters) is large enough to repay the ~2-5 s compile per
    activation. The decision depends on the run and the hyperparameters only, never on which
    estimates are pending, so a resumed job uses the same kernel (and numbers) as the first.
    """
    if engine != "batched" or setting == "off":
        return False
    if setting == "on":
        return compile_available()
    from devtms.schedule import checkpoint_steps

    c = config
    steps = len(checkpoint_steps(c.train.steps, c.checkpoints.log_points,
                                 c.checkpoints.linear_every))
    per_activation = (len(c.data.sparsity) * len(c.data.importance_ratio) * len(c.train.seeds)
                      * steps * params.chains * (params.burnin + params.draws)
                      * params.batch_size * c.model.n_features)
    return per_activation >= COMPILE_MIN_WORK and compile_available()


# ---------------------------------------------------------------------------------------------
# The run directory side: llc.csv and llc_traces/


def empty_table() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in COLUMNS})


def read_llc_table(run: RunDir) -> pd.DataFrame:
    table = run.read_table(LLC_CSV)
    if table is None:
        return empty_table()
    missing = [c for c in IDENTITY if c not in table.columns]
    if missing:
        raise UserError(f"{run.path / LLC_CSV} lacks column(s) {', '.join(missing)}: it was not "
                        "written by this devtms; move it away and re-run `devtms llc`")
    table["reason"] = table.get("reason", pd.Series(dtype=object)).fillna("")
    return table


def done_mask(table: pd.DataFrame, params: LLCParams, engine: str) -> pd.Series:
    """Rows of llc.csv computed with exactly these hyperparameters and engine."""
    if table.empty:
        return pd.Series(False, index=table.index)
    mask = pd.Series(True, index=table.index)
    for key, value in params.identity(engine).items():
        column = table[key]
        if key in _FLOAT_IDENTITY:
            mask &= np.isclose(column.astype(float), value, rtol=1e-12, atol=0.0)
        else:
            mask &= column.astype(str) == str(value)
    return mask


def sort_table(table: pd.DataFrame) -> pd.DataFrame:
    """Canonical row order, so the file's bytes do not depend on the order chunks finished."""
    order = ["instance", "step", "engine", "eps", "gamma", "n_beta", "num_chains", "num_draws",
             "burnin", "batch_size", "seed", "n_samples"]
    return table.sort_values(order, kind="mergesort").reset_index(drop=True)[COLUMNS]


def traces_path(run: RunDir, result: ChunkResult) -> Path:
    instances = result.traces["instance"].tolist()
    steps = result.traces["step"].tolist()
    digest = hashlib.blake2b(repr((instances, steps)).encode(), digest_size=6).hexdigest()
    name = f"{result.engine}-{result.params.tag(result.engine)}-{digest}.safetensors"
    return run.path / LLC_TRACES / name


def save_traces(run: RunDir, result: ChunkResult) -> Path:
    """llc_traces/<engine>-<hyperparameter tag>-<chunk digest>.safetensors (tensors only)."""
    path = traces_path(run, result)
    metadata = {"engine": result.engine, "params": json.dumps(asdict(result.params)),
                "format": "devtms-llc-traces"}
    write_bytes_atomic(path, checkpoint_bytes(result.traces, metadata))
    return path


def load_traces(run_path: Path | str) -> list[tuple[dict[str, Any], dict[str, Tensor]]]:
    """Every traces file of a run: (hyperparameters + engine, tensors) pairs, verified.

    tensors: instance (E,), step (E,), loss (E, chains, draws), init_loss (E,), mala (E, chains).
    """
    from safetensors import safe_open

    out = []
    for path in sorted((Path(run_path) / LLC_TRACES).glob("*.safetensors")):
        tensors = load_checkpoint_file(path)
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        out.append(({"engine": meta.get("engine"), **json.loads(meta.get("params", "{}"))},
                    tensors))
    return out


def remove_orphan_traces(run: RunDir, table: pd.DataFrame) -> int:
    """Delete trace files none of whose estimates are in llc.csv (a kill between the two writes).

    The driver writes a chunk's traces before its rows, so such a file is the only leftover a
    kill can leave; the rerun computes those estimates again, identically.
    """
    from safetensors import safe_open

    directory = run.path / LLC_TRACES
    if not directory.is_dir():
        return 0
    removed = 0
    for path in directory.glob("*.safetensors"):
        try:
            tensors = load_checkpoint_file(path)
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
            params = LLCParams(**json.loads(meta["params"]))
            engine = meta["engine"]
        except (UserError, KeyError, TypeError, ValueError):
            path.unlink()  # damaged or foreign: its estimates are recomputed if they are asked for
            removed += 1
            continue
        done = table[done_mask(table, params, engine)]
        pairs = set(zip(done["instance"].astype(int), done["step"].astype(int), strict=True))
        mine = zip(tensors["instance"].tolist(), tensors["step"].tolist(), strict=True)
        if not any(pair in pairs for pair in mine):
            path.unlink()
            removed += 1
    for tmp in directory.glob(".*.tmp"):
        tmp.unlink()
    return removed


# ---------------------------------------------------------------------------------------------
# The driver


@dataclass
class LLCRequest:
    """A validated `devtms llc` job: which estimates, how."""

    instances: list[int]
    steps: list[int]
    engine: str
    params: LLCParams
    compiled: bool
    device: str
    chunk_size: int | None = None


def parse_instances(spec: str | None, available: Sequence[int]) -> list[int]:
    """"0,3,5-9" -> [0, 3, 5, 6, 7, 8, 9]; None or "all" -> every instance."""
    if spec is None or spec.strip() == "all":
        return list(available)
    chosen = []
    valid = set(available)
    for part in _parts(spec, "--instances"):
        lo, hi = _range(part, "--instances")
        for i in range(lo, hi + 1):
            if i not in valid:
                raise UserError(f"--instances: unknown instance {i}; this run has instances "
                                f"0-{max(available)}")
            chosen.append(i)
    return sorted(set(chosen))


def parse_steps(spec: str | None, available: Sequence[int]) -> list[int]:
    """"0,100,1000" exact checkpoint steps; "100-1000" every checkpoint in that range;
    "last"; None or "all" -> every checkpoint."""
    if not available:
        raise UserError("the run has no checkpoints")
    if spec is None or spec.strip() == "all":
        return list(available)
    shown = ", ".join(map(str, available[:12])) + (" ..." if len(available) > 12 else "")
    chosen = []
    for part in _parts(spec, "--steps"):
        if part == "last":
            chosen.append(available[-1])
            continue
        lo, hi = _range(part, "--steps")
        if "-" in part:
            inside = [s for s in available if lo <= s <= hi]
            if not inside:
                raise UserError(f"--steps {part}: no checkpoint in that range; checkpoints: {shown}")
            chosen.extend(inside)
        elif lo not in available:
            raise UserError(f"--steps: no checkpoint at step {lo}; checkpoints: {shown}")
        else:
            chosen.append(lo)
    return sorted(set(chosen))


def _parts(spec: str, flag: str) -> list[str]:
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    if not parts:
        raise UserError(f"{flag}: empty list")
    return parts


def _range(part: str, flag: str) -> tuple[int, int]:
    """"7" -> (7, 7); "3-9" -> (3, 9)."""
    try:
        lo, _, hi = part.partition("-")
        lo_i, hi_i = int(lo), int(hi or lo)
    except ValueError:
        raise UserError(f"{flag}: {part!r} is not a non-negative integer or a range a-b") from None
    if hi_i < lo_i:
        raise UserError(f"{flag}: {part!r} is not a valid range (need a <= b)")
    return lo_i, hi_i


def check_device(device: str) -> str:
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UserError(f"--device {device!r} is not a torch device (cpu, cuda, cuda:1)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {device}: CUDA is not available on this machine")
    if dev.type not in ("cpu", "cuda"):
        raise UserError(f"--device {device}: only cpu and cuda are supported")
    return str(dev)


def llc_dataset_size(config: RunConfig) -> int:
    return config.data.n_samples if config.data.finite else config.llc.n_samples


def build_request(run: RunDir, *, instances: str | None = None, steps: str | None = None,
                  engine: str = "batched", overrides: dict[str, Any] | None = None,
                  device: str = "cpu", chunk_size: int | None = None,
                  compile_setting: str = "auto") -> LLCRequest:
    """Validate a job against the run; raises UserError naming the problem. Writes nothing."""
    if engine not in ENGINES:
        raise UserError(f"--engine {engine!r}: choose one of {', '.join(ENGINES)}")
    if not run.stage_done("train"):
        raise UserError(f"{run.path}: training is not complete; finish it first with "
                        "`devtms train CONFIG --out RUN_DIR --resume`")
    if chunk_size is not None and chunk_size < 1:
        raise UserError(f"--chunk-size {chunk_size} is not allowed: must be an integer >= 1")
    config = run.config.with_llc(**(overrides or {}))
    params = LLCParams.resolve(config.llc, llc_dataset_size(config))
    if params.batch_size > params.n_samples:
        raise UserError(f"--batch-size {params.batch_size} is larger than the LLC dataset "
                        f"(N = {params.n_samples})")
    if engine == "devinterp":
        try:
            import devinterp  # noqa: F401
        except ImportError:
            raise UserError("--engine devinterp needs devinterp: pip install 'devinterp>=1.3.2,<2'"
                            ) from None
    return LLCRequest(
        instances=parse_instances(instances, run.instances["instance"].tolist()),
        steps=parse_steps(steps, run.checkpoint_steps()),
        engine=engine, params=params, compiled=use_compile(config, params, engine, compile_setting),
        device=check_device(device), chunk_size=chunk_size)


class RunInputs:
    """The tensors tasks are cut from: checkpoints (verified), LLC datasets, importance."""

    def __init__(self, run: RunDir, instances: list[int], steps: list[int]):
        from devtms.train import llc_data

        table = run.instances.set_index("instance").loc[instances].reset_index()
        self.config = run.config
        self.table = table
        self.row = {int(i): k for k, i in enumerate(table["instance"])}
        self.col = {int(s): k for k, s in enumerate(steps)}
        W, b = run.load_weights(steps)  # (S, I_all, m, n): every checkpoint verified here
        index = torch.tensor(instances, dtype=torch.long)
        self.W = W.index_select(1, index).transpose(0, 1).contiguous()  # (I, S, m, n)
        self.b = b.index_select(1, index).transpose(0, 1).contiguous()  # (I, S, n)
        self.data = llc_data(run.config, table)  # (I, N, n)
        self.importance = importance_weights(table["importance_ratio"],
                                             run.config.model.n_features)

    def task(self, instances: list[int], steps: list[int], request: LLCRequest) -> ChunkTask:
        rows = torch.tensor([self.row[i] for i in instances], dtype=torch.long)
        cols = torch.tensor([self.col[s] for s in steps], dtype=torch.long)
        t = self.table.iloc[rows.numpy()]
        return ChunkTask(
            engine=request.engine, instances=list(instances), seeds=[int(s) for s in t["seed"]],
            activations=list(t["activation"]), steps=list(steps),
            W0=self.W[rows][:, cols].contiguous(), b0=self.b[rows][:, cols].contiguous(),
            data=self.data[rows].contiguous(), importance=self.importance[rows].contiguous(),
            bias=self.config.model.bias, reduction=self.config.model.reduction,
            params=request.params, compiled=request.compiled, device=request.device)


@dataclass
class LLCSummary:
    requested: int
    already_done: int
    computed: int
    unhealthy: int
    chunks: int


def run_llc(run: RunDir, request: LLCRequest, executor=None, progress: bool = True
            ) -> LLCSummary:
    """Estimate what `request` asks and llc.csv lacks; append after every chunk. Holds no lock:
    the caller holds `run.lock(...)`."""
    from devtms.executors import LocalExecutor
    from devtms.progress import progress_bar

    executor = executor or LocalExecutor()
    run.cut_torn_line(LLC_CSV)  # a torn row (damage from outside devtms) is estimated again
    table = read_llc_table(run)
    done = table[done_mask(table, request.params, request.engine)]
    done_pairs = set(zip(done["instance"].astype(int), done["step"].astype(int), strict=True))
    wanted = [(i, s) for i in request.instances for s in request.steps]
    pending = [pair for pair in wanted if pair not in done_pairs]
    summary = LLCSummary(len(wanted), len(wanted) - len(pending), 0, 0, 0)
    if not pending:
        return summary
    m, n = run.config.model.n_hidden, run.config.model.n_features
    size = request.chunk_size or auto_chunk_size(len(wanted), len(request.steps),
                                                 request.params, m, n, request.compiled)
    # planned over the whole request, so a rerun cuts the chunks of the first run (see top)
    todo = set(pending)
    chunks = [(instances, steps) for instances, steps in plan_chunks(wanted, size)
              if any((i, s) in todo for i in instances for s in steps)]
    summary.chunks = len(chunks)
    # every checkpoint is loaded and verified before anything is written
    inputs = RunInputs(run, sorted({i for c in chunks for i in c[0]}),
                       sorted({s for c in chunks for s in c[1]}))
    remove_orphan_traces(run, table)
    tasks = (inputs.task(instances, steps, request) for instances, steps in chunks)
    bar = progress_bar(len(pending), f"llc ({request.engine})", "estimate", enabled=progress)
    with bar:
        for result in executor.map(estimate_chunk, tasks):
            result = result.only(todo)  # a chunk partly done by an earlier, other request
            save_traces(run, result)  # traces first: a row in llc.csv always has its traces
            new = pd.DataFrame(result.rows)[COLUMNS]
            table = sort_table(pd.concat([table, new], ignore_index=True) if len(table) else new)
            run.write_table(LLC_CSV, table)
            summary.computed += len(new)
            summary.unhealthy += int((~new["healthy"].astype(bool)).sum())
            bar.update(len(new))
    return summary


def default_job_complete(run: RunDir) -> bool:
    """Whether llc.csv has every instance x checkpoint at the run's own [llc] settings (batched)."""
    table = read_llc_table(run)
    params = LLCParams.resolve(run.config.llc, llc_dataset_size(run.config))
    done = table[done_mask(table, params, "batched")]
    pairs = set(zip(done["instance"].astype(int), done["step"].astype(int), strict=True))
    return all((int(i), s) in pairs for i in run.instances["instance"]
               for s in run.checkpoint_steps())
