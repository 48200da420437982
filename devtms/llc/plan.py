"""Planning an LLC job: how big its chunks are, how they are cut, and whether it compiles.

Chunks are rectangles instances x steps. They are planned over the whole request, never over
what is pending, so that a rerun after a kill and every executor cut the same chunks (which,
for the over-features activations, fixes an estimate's last float32 bits; devtms.llc.batched).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import TypeVar

from devtms.compiling import compile_available
from devtms.config import RunConfig
from devtms.llc.batched import NOISE_BLOCK
from devtms.llc.params import LLCParams
from devtms.schedule import checkpoint_steps

T = TypeVar("T")

MEMORY_BUDGET = 512 * 2**20  # bytes a chunk may use (auto chunk size)
COMPILE_MIN_WORK = 1e9  # auto: compile when a run's LLC job is this many loss terms per activation
# (the calibrated defaults make activations27's 2.4e9: eager, its LLC stage took 13 min)


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


def first_compiles_first(chunks: list[T], kernel_of: Callable[[T], str]) -> list[T]:
    """`chunks` reordered so that each compiled kernel is first needed by one worker at a time:
    the first chunk of every kernel, then the second of each, and so on (stable).

    Workers take chunks in order. In instance order, two workers start the same activation
    at the same moment, both miss torch's disk cache and compile the same kernel twice; in this
    order they compile different kernels side by side. The order of the work, not its chunks:
    every estimate's numbers, and llc.csv (sorted), stay the same.
    """
    seen: dict[str, int] = {}
    ranks = []
    for chunk in chunks:
        kernel = kernel_of(chunk)
        ranks.append(seen.get(kernel, 0))
        seen[kernel] = ranks[-1] + 1
    order = sorted(range(len(chunks)), key=lambda k: (ranks[k], k))
    return [chunks[k] for k in order]


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
    c = config
    steps = len(checkpoint_steps(c.train.steps, c.checkpoints.log_points,
                                 c.checkpoints.linear_every))
    per_activation = (len(c.data.sparsity) * len(c.data.importance_ratio) * len(c.train.seeds)
                      * steps * params.chains * (params.burnin + params.draws)
                      * params.batch_size * c.model.n_features)
    return per_activation >= COMPILE_MIN_WORK and compile_available()
