"""Where chunks of work run: a tiny interface, so the drivers do not care.

An executor maps a pure function over picklable tasks and yields results as they complete
(in any order; every result says what it is for). The drivers (devtms.llc.run_llc,
devtms.train.train_run) build tasks lazily, consume results one by one and do all the writing,
so a backend only has to move tasks and results around:

    with make_executor("dask") as executor:        # or None / "local", or "tcp://host:8786"
        for result in executor.map(estimate_chunk, tasks):
            ...

`LocalExecutor` runs tasks in this process, in order, one at a time (memory holds one task).
`ProcessExecutor` runs them in a worker process per core on this machine (nothing to install).
`AutoExecutor` (`--scheduler auto`, the default) is a LocalExecutor that hands an LLC job large
enough to repay starting workers to a ProcessExecutor (`for_work`); training stays in-process,
because its shards, and so a machine's core count, would change its numbers.
`DaskExecutor` sends them to the workers of a Dask cluster: a LocalCluster it starts on this
machine (`--scheduler dask`: a worker process per core) or any running scheduler
(`--scheduler tcp://HOST:PORT`: `dask scheduler` + `dask worker` on several machines, or a
dask-jobqueue SLURMCluster). A task carries the tensors it needs and its result carries the
numbers back; workers never touch the run directory, so they need devtms installed but no
shared file system.

Results do not depend on the executor: a task's numbers are a function of the task alone
(every random stream is keyed by what it is for, never by where it runs). Dask is optional
(`pip install 'devtms[dask]'`); it is imported only when a Dask executor is made.
"""

from __future__ import annotations

import gc
import multiprocessing
import multiprocessing.forkserver
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Protocol, TypeVar

from devtms.allocator import keep_freed_memory
from devtms.errors import UserError
from devtms.threads import usable_cores

T = TypeVar("T")
R = TypeVar("R")

CONNECT_TIMEOUT = 10.0  # seconds to wait for a scheduler to answer (env DEVTMS_SCHEDULER_TIMEOUT)
RETRIES = 1  # extra attempts of a task that raised (a lost worker's task is re-run regardless)
IN_FLIGHT_PER_THREAD = 2  # tasks submitted per worker thread: one running, one queued behind it
SCHEDULER_CHOICES = ("auto, local, processes, dask or the address of a running Dask scheduler "
                     "(tcp://HOST:PORT)")
PARALLEL_MIN_WORK = 5e8  # auto: loss-term elements of an LLC job (~10 s on one core) before
# it goes to worker processes; starting them (a forkserver, torch imported) costs seconds


class Executor(Protocol):
    def map(self, fn: Callable[[T], R], tasks: Iterable[T]) -> Iterator[R]:
        """Apply fn to every task; yield each result as soon as it is ready (any order)."""
        ...

    def close(self) -> None:
        ...


class LocalExecutor:
    """In-process, sequential: nothing to start, nothing to install."""

    label = "local (in-process)"

    def map(self, fn: Callable[[T], R], tasks: Iterable[T]) -> Iterator[R]:
        for task in tasks:
            yield fn(task)

    def close(self) -> None:
        pass

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ProcessExecutor:
    """Tasks in worker processes on this machine, one per core, each at one torch thread.

    Started by a forkserver (forking a process that has run torch's thread pools is not safe);
    at most IN_FLIGHT_PER_THREAD tasks per worker are submitted and not yet consumed. Workers
    ignore SIGINT: Ctrl-C reaches the driver, which stops them. A worker that dies (killed, out
    of memory) ends the job with one line; the same command resumes it.
    """

    def __init__(self, n_workers: int | None = None):
        self.n_workers = n_workers or usable_cores()
        self.pool = ProcessPoolExecutor(self.n_workers, mp_context=forkserver(),
                                        initializer=_start_process_worker,
                                        initargs=(os.getpid(),))
        self.label = f"local processes ({self.n_workers} workers x 1 thread)"

    def map(self, fn: Callable[[T], R], tasks: Iterable[T]) -> Iterator[R]:
        todo = iter(tasks)
        running: set[Future] = set()

        def top_up() -> None:
            while len(running) < IN_FLIGHT_PER_THREAD * self.n_workers:
                task = next(todo, _NO_TASK)
                if task is _NO_TASK:
                    return
                running.add(self.pool.submit(fn, task))

        finished = False
        try:
            top_up()
            while running:
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    running.discard(future)
                    result = self._result(future)
                    top_up()
                    yield result
            finished = True
        finally:  # an error or Ctrl-C in the driver: stop the workers now, not after their tasks
            if not finished:
                self._stop_workers()

    def _result(self, future: Future) -> Any:
        try:
            return future.result()
        except BrokenProcessPool:
            raise UserError("a worker process died (killed, or out of memory?); run the same "
                            "command again to resume (llc: a smaller --chunk-size needs less "
                            "memory; --scheduler local runs in this process)") from None

    def _stop_workers(self) -> None:
        processes = list(getattr(self.pool, "_processes", {}).values())
        self.pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            process.terminate()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> ProcessExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# what the forkserver imports once, before it forks any worker: the code of every pool devtms
# starts (a process has one forkserver, started by its first pool, so one list for all)
WORKER_PRELOAD = ["devtms.llc.engines", "devtms.report.run_figures", "devtms.bayes.posterior"]


def forkserver() -> multiprocessing.context.ForkServerContext:
    """The multiprocessing context of devtms's worker pools: a forkserver that has imported
    WORKER_PRELOAD. Not fork: forking a process that has run torch's thread pools is unsafe."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(WORKER_PRELOAD)
    return context


def start_forkserver() -> None:
    """Start the forkserver now, where a pool will be wanted soon on several cores.

    The forkserver's imports (torch, matplotlib) take ~2 s. Started first thing, they run on
    another core while this process does its own; the pool started later forks its workers
    at once. `devtms report` starts it so. Where it would be wasted (every figure unchanged,
    bad input) it exits with this process. Nothing to do on one core, or where it runs.
    """
    if usable_cores() > 1:
        forkserver()  # the preload list
        multiprocessing.forkserver.ensure_running()


def _start_process_worker(driver: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    exit_with(driver)
    prepare_worker()
    # The imported modules (torch, matplotlib: millions of objects) never become garbage:
    # out of the collector's sight, its full passes over each task's own objects are cheap
    # (a report's figures draw 10% faster).
    gc.freeze()


DRIVER_POLL = 0.5  # seconds between a worker's checks that its driver still runs


def exit_with(driver: int) -> None:
    """In a worker process: exit as soon as the driver process goes (killed, say).

    A pool's workers hold both ends of their task queue, so they never see it close and would
    wait for tasks forever, each a process holding its memory; their parent is the forkserver,
    not the driver, so the OS does not tell them either. A daemon thread watches the driver.
    """

    def gone() -> bool:
        try:  # Linux: a zombie has ended too
            with open(f"/proc/{driver}/stat", "rb") as stat:
                return stat.read().rsplit(b")", 1)[1].split()[0] in (b"Z", b"X")
        except FileNotFoundError:
            return True
        except OSError:  # no /proc: ask the OS whether the pid exists
            try:
                os.kill(driver, 0)
            except ProcessLookupError:
                return True
            except PermissionError:
                pass
            return False

    def watch() -> None:
        while not gone():
            time.sleep(DRIVER_POLL)
        os._exit(1)

    threading.Thread(target=watch, name="devtms-exit-with-driver", daemon=True).start()


class AutoExecutor(LocalExecutor):
    """--scheduler auto: in this process, except LLC jobs of at least PARALLEL_MIN_WORK loss-term
    elements on a machine with several cores, which `for_work` hands to a ProcessExecutor
    (started once, stopped by close())."""

    label = "auto (in-process; large LLC jobs in a worker process per core)"

    def __init__(self) -> None:
        self._processes: ProcessExecutor | None = None

    def for_work(self, work: float) -> Executor:
        """The executor for a job of `work` loss-term elements: this one, or worker processes."""
        if work < PARALLEL_MIN_WORK or usable_cores() < 2:
            return self
        if self._processes is None:
            self._processes = ProcessExecutor()
        return self._processes

    def close(self) -> None:
        if self._processes is not None:
            self._processes.close()
            self._processes = None

    def __enter__(self) -> AutoExecutor:
        return self


class DaskExecutor:
    """Tasks on the workers of a Dask cluster, a bounded number in flight.

    `map` submits tasks as the driver's iterator produces them, keeping at most
    IN_FLIGHT_PER_THREAD x (worker threads) of them submitted and not yet consumed, so the
    driver holds only that many tasks and results however long the job is; each result is
    released on the cluster as soon as it is yielded.

    Failures: when a worker dies (killed, out of memory, its node gone), the scheduler runs its
    tasks again on the others (up to distributed.scheduler.allowed-failures times per task);
    a task that raises is retried RETRIES more times before its error reaches the driver.

    Build one with `DaskExecutor.local()` or `DaskExecutor.connect(address)`, or from a
    distributed.Client of your own: `DaskExecutor(client)` (it closes the client on close(),
    and the cluster too when given `cluster=`).
    """

    def __init__(self, client: Any, cluster: Any = None, label: str = "dask",
                 retries: int = RETRIES):
        self.client, self.cluster, self.label, self.retries = client, cluster, label, retries

    @classmethod
    def local(cls, n_workers: int | None = None) -> DaskExecutor:
        """Start a LocalCluster on this machine: n_workers processes (default: one per core this
        process may use), one thread each."""
        distributed = _import_distributed("dask")
        n = n_workers or usable_cores()
        # Processes, not threads: the SGLD loop is Python between tensor ops, so threads would
        # serialize on the GIL. No dashboard: it needs bokeh and a free port.
        cluster = distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                           dashboard_address=None)
        try:
            client = distributed.Client(cluster)
        except BaseException:
            cluster.close()
            raise
        return cls(client, cluster, f"dask LocalCluster ({n} worker processes x 1 thread)")

    @classmethod
    def connect(cls, address: str, timeout: float | None = None) -> DaskExecutor:
        """Connect to a running scheduler (`dask scheduler`, a dask-jobqueue cluster ...), waiting
        at most `timeout` seconds (default: $DEVTMS_SCHEDULER_TIMEOUT, else CONNECT_TIMEOUT)."""
        distributed = _import_distributed(address)
        timeout = timeout if timeout is not None else connect_timeout()
        try:
            client = distributed.Client(address, timeout=timeout)
        except (OSError, TimeoutError, ValueError):
            raise UserError(f"--scheduler {address}: no Dask scheduler answered within "
                            f"{timeout:g} s; start one with `dask scheduler` "
                            "(and workers with `dask worker ADDRESS`) or pass --scheduler dask "
                            "for a cluster on this machine") from None
        workers = len(client.nthreads())
        note = "" if workers else "; no workers yet: tasks wait until some join"
        return cls(client, label=f"dask scheduler {address} ({workers} workers{note})")

    def capacity(self) -> int:
        """Tasks to keep submitted: IN_FLIGHT_PER_THREAD per worker thread now (clusters grow and
        shrink), at least 2."""
        threads = sum(self.client.nthreads().values())
        return max(2, IN_FLIGHT_PER_THREAD * threads)

    def map(self, fn: Callable[[T], R], tasks: Iterable[T]) -> Iterator[R]:
        from distributed import as_completed

        todo = iter(tasks)
        running = as_completed()
        submitted: set[Any] = set()
        name = getattr(fn, "__name__", "task")

        def top_up() -> None:
            want = self.capacity()
            while running.count() < want:
                task = next(todo, _NO_TASK)
                if task is _NO_TASK:
                    return
                future = self.client.submit(run_on_worker, fn, task, retries=self.retries,
                                            key=f"{name}-{uuid.uuid4().hex}", pure=False)
                submitted.add(future)
                running.add(future)

        try:
            top_up()
            for future in running:
                result = self._result(future)
                submitted.discard(future)
                future.release()
                top_up()
                yield result
        finally:  # the driver stopped early (an error, Ctrl-C): cancel what is still queued
            if submitted:
                self.client.cancel(list(submitted))

    def _result(self, future: Any) -> Any:
        from concurrent.futures import CancelledError

        from distributed.scheduler import KilledWorker

        try:
            return future.result()
        except KilledWorker:
            raise UserError(
                "a task was lost with every worker that ran it (each died, e.g. out of memory); "
                "make tasks smaller (llc: --chunk-size; train: train.shard_size) or give workers "
                "more memory, then run the same command again to resume") from None
        except CancelledError:
            raise UserError("the Dask scheduler cancelled a task (the scheduler or the connection "
                            "to it was lost?); run the same command again to resume") from None

    def close(self) -> None:
        """Disconnect; stop the LocalCluster if this executor started it.

        A worker that takes more than 4 s to exit (a busy machine) is killed by its nanny with a
        warning; here that is the intended end of a worker that holds nothing, so it is quiet.
        """
        import logging

        self.client.close()
        if self.cluster is not None:
            nanny = logging.getLogger("distributed.nanny")
            level = nanny.level
            nanny.setLevel(logging.ERROR)
            try:
                self.cluster.close()
            finally:
                nanny.setLevel(level)

    def __enter__(self) -> DaskExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_NO_TASK = object()


def run_on_worker(fn: Callable[[T], R], task: T) -> R:
    """fn(task) in a worker process made ready for devtms's tensor programs (`prepare_worker`)."""
    prepare_worker()
    return fn(task)


_PREPARED = False


def prepare_worker() -> None:
    """Once per worker process: one torch thread, and glibc's malloc fit for tensor temporaries.

    Threads: a worker per core, each task on one core. LocalCluster workers start with
    OMP_NUM_THREADS=1; workers started by hand or by a batch system may not, and torch's own
    threads would then oversubscribe the cores.

    malloc: Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536 (so freed memory goes
    back to the OS promptly). Setting it also pins glibc's mmap threshold at 128 KiB, so every
    tensor temporary above that size is a fresh mmap, zeroed page by page and unmapped after
    use: the SGLD chunks ran about 3x slower than in-process. Here the thresholds are set as
    in-process runs set them (devtms.allocator).
    """
    global _PREPARED
    if _PREPARED:
        return
    import torch

    torch.set_num_threads(1)
    if "MALLOC_TRIM_THRESHOLD_" in os.environ:
        keep_freed_memory()
    _PREPARED = True


def connect_timeout() -> float:
    value = os.environ.get("DEVTMS_SCHEDULER_TIMEOUT", "")
    try:
        return float(value) if value else CONNECT_TIMEOUT
    except ValueError:
        raise UserError(f"DEVTMS_SCHEDULER_TIMEOUT={value!r} is not a number of seconds") from None


def _import_distributed(scheduler: str):
    try:
        import distributed
    except ImportError:
        raise UserError(f"--scheduler {scheduler} needs Dask: pip install 'devtms[dask]' "
                        "(or pass --scheduler local)") from None
    return distributed


def is_address(scheduler: str) -> bool:
    """tcp://HOST:PORT (or tls://, ucx://, ...) or HOST:PORT, with a numeric port."""
    rest = scheduler.split("://", 1)[1] if "://" in scheduler else scheduler
    host, _, port = rest.rpartition(":")
    return bool(host) and port.isdigit() and "/" not in rest


def make_executor(scheduler: str | None) -> LocalExecutor | ProcessExecutor | DaskExecutor:
    """The executor --scheduler asks for: None or "auto" -> AutoExecutor; "local" -> in-process;
    "processes" -> a worker process per core; "dask" -> a LocalCluster on this machine
    (stopped again by close()); an address -> that running scheduler.

    Raises UserError for a string that is none of these, a scheduler that does not answer
    within CONNECT_TIMEOUT, or Dask not installed. Use it as a context manager.
    """
    if scheduler is None or scheduler == "auto":
        return AutoExecutor()
    if scheduler == "local":
        return LocalExecutor()
    if scheduler == "processes":
        return ProcessExecutor()
    if scheduler == "dask":
        return DaskExecutor.local()
    if is_address(scheduler):
        return DaskExecutor.connect(scheduler)
    raise UserError(f"--scheduler {scheduler!r}: choose {SCHEDULER_CHOICES}")
