"""The LLC engines behind one call: `estimate_chunk(task)`, what an executor maps over chunks."""

from __future__ import annotations

from collections.abc import Callable

from devtms.llc.batched import batched_chunk
from devtms.llc.mala import mala_chunk
from devtms.llc.reference import devinterp_chunk
from devtms.llc.task import ChunkResult, ChunkTask

# engine name (llc.csv's `engine`, `devtms llc --engine`) -> its estimator; the first is the default
ENGINES: dict[str, Callable[[ChunkTask], ChunkResult]] = {
    "batched": batched_chunk,  # every chain of a chunk in one tensor program (devtms.llc.batched)
    "mala": mala_chunk,  # full-batch MALA: exact, no step-size bias (devtms.llc.mala)
    "devinterp": devinterp_chunk,  # devinterp's estimator, for cross-checks (devtms.llc.reference)
}


def estimate_chunk(task: ChunkTask) -> ChunkResult:
    """Estimate the LLC of every (instance, step) of the task. Pure: no file I/O."""
    if task.engine not in ENGINES:
        raise ValueError(f"unknown engine {task.engine!r}")
    return ENGINES[task.engine](task)
