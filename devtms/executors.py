"""Where chunks of work run: a tiny interface, so the drivers do not care.

An executor maps a pure function over picklable tasks and yields results as they complete
(in any order; every result says what it is for). The drivers (devtms.llc.run_llc) build tasks
lazily, consume results one by one and do all the writing, so a backend only has to move tasks
and results around:

    executor = LocalExecutor()
    for result in executor.map(estimate_chunk, tasks):
        ...

`LocalExecutor` runs tasks in this process, in order, one at a time (memory holds one task).
A Dask backend (a LocalCluster or a scheduler address) implements the same `map`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Protocol, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Executor(Protocol):
    def map(self, fn: Callable[[T], R], tasks: Iterable[T]) -> Iterator[R]:
        """Apply fn to every task; yield each result as soon as it is ready (any order)."""
        ...

    def close(self) -> None:
        ...


class LocalExecutor:
    """In-process, sequential: nothing to start, nothing to install."""

    def map(self, fn: Callable[[T], R], tasks: Iterable[T]) -> Iterator[R]:
        for task in tasks:
            yield fn(task)

    def close(self) -> None:
        pass

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
