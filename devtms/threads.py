"""How many torch threads a tensor program runs with: one, unless its ops are large.

A TMS op is small (activations27 trains 145 instances x 100 samples x 5 features: 72,500
elements per op). Splitting such an op over threads costs more than it saves: every op
becomes a parallel region that ends at a barrier, and on a machine where anything else runs,
the barrier waits for a thread the OS has descheduled. Measured on 2 cores with another
process busy, activations27 training ran 3x slower at 2 threads than at 1, in torch's eager
ops and in inductor's OpenMP kernels alike; `devtms llc` on the quick run 2.1x slower.

So the default is one thread below PARALLEL_MIN_ELEMENTS elements in the largest op, and
one per core above it; more cores are used by running independent work in separate
processes (`--scheduler auto` does for large LLC jobs; `processes` and `dask` for everything:
a worker per core at one thread each). `--threads N` on every compute command overrides the
choice.

    >>> n = threads_for(op_elements=145 * 100 * 5)          # 1
    >>> with torch_threads(n):
    ...     train_run(run)
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from devtms.errors import UserError

PARALLEL_MIN_ELEMENTS = 2_000_000  # elements in an op before splitting it over threads pays


def usable_cores() -> int:
    """Cores this process may run on (a SLURM allocation or taskset may be fewer than the box)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def threads_for(op_elements: int, requested: int | None = None) -> int:
    """Torch threads for a program whose largest op has `op_elements` elements; `requested`
    (--threads) wins."""
    if requested is not None:
        return requested
    return usable_cores() if op_elements >= PARALLEL_MIN_ELEMENTS else 1


def check_threads(value: int | None) -> int | None:
    """--threads: None (the default policy) or a positive count."""
    if value is not None and value < 1:
        raise UserError(f"--threads {value}: give a positive number of threads")
    return value


@contextmanager
def torch_threads(n: int) -> Iterator[int]:
    """Run the block with n torch intra-op threads, then restore the caller's count."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(before)
