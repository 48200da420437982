"""Scale-out: the same LLC job in-process and on a Dask LocalCluster, and where the time goes.

    python benchmarks/study_scaling.py                  # trains a shortened activations27 run
    python benchmarks/study_scaling.py --run runs/activations27 --chunk-size auto 6

The job: every instance of an activations27 run (29 activations x 2 seeds, 8 features, 2 hidden)
at --steps checkpoints, --chains x (--burnin + --draws) SGLD steps per estimate, run by
devtms.llc.run_llc (the driver `devtms llc` uses: it writes llc.csv and llc_traces/ after every
chunk) on
  - the local executor with 1 torch thread (one core: the unit a Dask worker has),
  - the local executor with every core as torch threads (what `devtms llc` does by default),
  - a Dask LocalCluster of --workers processes x 1 thread (`--scheduler dask`),
  - and, as the machine's ceiling, the same chunks on --workers plain processes
    (concurrent.futures, no Dask, nothing written): what perfect scale-out would reach here.
Each runs on a fresh copy of the run; they take turns, --repeats times, and the best wall time of
each is reported (other processes on a shared machine slow whichever runs with them). The
Dask llc.csv is checked to be byte-identical to the local one.

Where the Dask overhead goes, measured in the same script:
  - startup: starting the cluster, and each worker's first import of torch and devtms;
  - task and result size (pickled) and the time to pickle them;
  - per-task latency: a no-op task's round trip through the scheduler;
  - compute balance: the sum of the chunks' compute times on the workers against
    workers x wall (idle = the last chunks leave workers waiting, or the driver is slow);
  - the driver's own time per chunk (writing traces and llc.csv) while workers compute.
  - compile: with --compile on, the first chunk on each worker compiles its kernels (torch's
    on-disk cache makes the second process faster).
"""

from __future__ import annotations

import argparse
import os
import pickle
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from _shared import train_short


def timed_call(fn, task):
    """Runs on a worker: fn(task) and its compute time there."""
    start = time.perf_counter()
    result = fn(task)
    return result, time.perf_counter() - start


@dataclass
class Probe:
    """Wraps an executor: records task/result sizes, compute time per task, driver time."""

    executor: object
    task_bytes: list[int] = field(default_factory=list)
    result_bytes: list[int] = field(default_factory=list)
    pickle_seconds: float = 0.0
    compute: list[float] = field(default_factory=list)
    driver: float = 0.0  # time between receiving a result and asking for the next

    def map(self, fn, tasks):
        from functools import partial

        def measured(tasks):
            for task in tasks:
                t = time.perf_counter()
                self.task_bytes.append(len(pickle.dumps(task, protocol=5)))
                self.pickle_seconds += time.perf_counter() - t
                yield task

        for result, seconds in self.executor.map(partial(timed_call, fn), measured(tasks)):
            self.compute.append(seconds)
            t = time.perf_counter()
            self.result_bytes.append(len(pickle.dumps(result, protocol=5)))
            self.pickle_seconds += time.perf_counter() - t
            back = time.perf_counter()
            yield result
            self.driver += time.perf_counter() - back


def run_job(source: Path, work: Path, name: str, request, executor) -> tuple[float, Probe, bytes]:
    from devtms import llc
    from devtms.store import LLC_CSV, RunDir

    dest = work / name
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns("llc.csv", "llc_traces"))
    run = RunDir.open(dest)
    probe = Probe(executor)
    start = time.perf_counter()
    llc.run_llc(run, request, probe, progress=False)
    wall = time.perf_counter() - start
    return wall, probe, (dest / LLC_CSV).read_bytes()


def warm(_):
    import devtms.llc  # noqa: F401

    time.sleep(0.5)  # long enough that every pool process gets one


def plain_processes(run, request, workers: int) -> float:
    """The machine's ceiling: the same chunks on `workers` plain processes of 1 torch thread,
    handed out one at a time (no Dask, no files written). -> wall seconds of the chunks."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from devtms import llc

    pending = [(i, s) for i in request.instances for s in request.steps]
    m, n = run.config.model.n_hidden, run.config.model.n_features
    size = request.chunk_size or llc.auto_chunk_size(len(pending), len(request.steps),
                                                     request.params, m, n, request.compiled)
    inputs = llc.RunInputs(run, request.instances, request.steps)
    tasks = [inputs.task(i, s, request) for i, s in llc.plan_chunks(pending, size)]
    from devtms.executors import prepare_worker

    # the processes start as the Dask workers do (the nanny left MALLOC_TRIM_THRESHOLD_ in this
    # process's environment) and are prepared the same way (1 torch thread, malloc thresholds)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=prepare_worker) as pool:
        list(pool.map(warm, range(workers)))
        start = time.perf_counter()
        list(pool.map(llc.estimate_chunk, tasks))
        return time.perf_counter() - start


def local_name(threads: int) -> str:
    return f"local, {threads} thread{'s' if threads > 1 else ''}"


def noop(x):
    return x


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, help="an activations27 run (default: train a short one)")
    ap.add_argument("--steps", type=int, default=6, help="checkpoint steps per instance")
    ap.add_argument("--instances", help="a subset, as `devtms llc --instances` (default: all)")
    ap.add_argument("--chains", type=int, default=8)
    ap.add_argument("--draws", type=int, default=200)
    ap.add_argument("--burnin", type=int, default=100)
    ap.add_argument("--chunk-size", nargs="+", default=["auto"],
                    help="estimates per chunk; several values compare them (auto: as devtms llc)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--compile", choices=("on", "off"), default="off")
    ap.add_argument("--local-threads", type=int, nargs="+", default=[1],
                    help="torch threads of the local runs (default 1; `devtms llc` itself uses "
                         "torch's default, one per core: add it with --local-threads 1 2)")
    args = ap.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")

    from devtms import llc
    from devtms.executors import DaskExecutor, LocalExecutor
    from devtms.store import RunDir
    from devtms.threads import usable_cores

    tmp = tempfile.TemporaryDirectory(prefix="scaling_bench_")
    work = Path(tmp.name)
    if args.run is None:
        args.run = train_short(work / "source", steps=2000, seeds=[0, 1])
    run = RunDir.open(args.run)
    all_steps = run.checkpoint_steps()
    steps = all_steps[-args.steps:]
    hp = dict(chains=args.chains, draws=args.draws, burnin=args.burnin)
    job = dict(steps=",".join(map(str, steps)), overrides=hp, instances=args.instances,
               compile_setting=args.compile)
    base = llc.build_request(run, **job)
    n_est = len(base.instances) * len(base.steps)
    chain_steps = n_est * args.chains * (args.burnin + args.draws)
    cores = usable_cores()
    print(f"job: {len(base.instances)} instances x {len(steps)} checkpoints = {n_est} estimates, "
          f"{args.chains} chains x ({args.burnin} + {args.draws}) steps = {chain_steps:,} "
          f"chain-steps; compiled: {base.compiled}; machine: {cores} cores, load average "
          f"{os.getloadavg()[0]:.1f}")

    t = time.perf_counter()
    dask = DaskExecutor.local(n_workers=args.workers)
    started = time.perf_counter() - t
    t = time.perf_counter()
    dask.client.run(lambda: __import__("devtms.llc") and None)
    imported = time.perf_counter() - t
    latencies = []
    for k in range(30):
        t = time.perf_counter()
        dask.client.submit(noop, k, pure=False).result()
        latencies.append(time.perf_counter() - t)
    t = time.perf_counter()
    assert sorted(dask.map(noop, range(200))) == list(range(200))
    noop_rate = 200 / (time.perf_counter() - t)
    print(f"dask: LocalCluster of {args.workers} workers started in {started:.1f} s; first import "
          f"of torch + devtms on the workers {imported:.1f} s; no-op task round trip median "
          f"{statistics.median(latencies) * 1e3:.1f} ms; no-op throughput through "
          f"DaskExecutor.map {noop_rate:.0f} tasks/s")

    if base.compiled:  # time the first chunk per worker (compiles), then a second (cached)
        from functools import partial

        from devtms.executors import run_on_worker

        inputs = llc.RunInputs(run, base.instances, base.steps)
        one = inputs.task(base.instances[:2], base.steps[:1], base)
        first_chunk = partial(timed_call, llc.estimate_chunk)
        firsts = [dask.client.submit(run_on_worker, first_chunk, one, workers=[worker],
                                     pure=False).result()[1]
                  for worker in dask.client.nthreads()]
        warm = dask.client.submit(run_on_worker, first_chunk, one, pure=False).result()[1]
        compile_note = (f"compile: first chunk (2 instances) on each worker "
                        f"{', '.join(f'{s:.1f}' for s in firsts)} s, again {warm:.2f} s "
                        f"(it compiles its activation, {one.activations[0]}; each worker "
                        "process compiles every activation it meets once, and this job has "
                        f"{len(set(inputs.table['activation']))})")
        llc.estimate_chunk(one)  # and warm this process's cache
        print(compile_note)

    rows = []
    for size in args.chunk_size:
        chunk = None if size == "auto" else int(size)
        request = llc.build_request(run, **job, chunk_size=chunk)
        best: dict[str, tuple[float, Probe]] = {}
        reference = None
        for _ in range(args.repeats):
            runs = [(local_name(t), t, LocalExecutor()) for t in args.local_threads]
            runs.append((f"dask, {args.workers} workers x 1", 1, dask))
            for name, threads, executor in runs:
                torch.set_num_threads(threads)
                wall, probe, table = run_job(args.run, work, "job", request, executor)
                print(f"  chunk {size}, {name}: {wall:.1f} s", flush=True)
                reference = reference or table
                assert table == reference, f"{name}: llc.csv differs from the local one"
                if name not in best or wall < best[name][0]:
                    best[name] = (wall, probe)
            wall = plain_processes(run, request, args.workers)
            name = f"ceiling: {args.workers} processes"
            print(f"  chunk {size}, {name}: {wall:.1f} s (compute only)", flush=True)
            if name not in best or wall < best[name][0]:
                best[name] = (wall, Probe(None))
        rows.append((size, best))

    print("\nsame llc.csv bytes from every executor: yes")
    print(f"\n{'chunk':>6} {'executor':22} {'chunks':>6} {'wall s':>7} {'est/s':>7} "
          f"{'chain-steps/s':>13} {'speed-up':>8}   (against {local_name(args.local_threads[0])})")
    for size, best in rows:
        baseline = best[local_name(args.local_threads[0])][0]
        for name, (wall, probe) in best.items():
            print(f"{size:>6} {name:22} {len(probe.compute) or '':>6} {wall:7.1f} "
                  f"{n_est / wall:7.1f} "
                  f"{chain_steps / wall:13,.0f} {baseline / wall:7.2f}x")
    print("\nwhere the time goes on dask (best repeat of each chunk size):")
    for size, best in rows:
        wall, probe = best[f"dask, {args.workers} workers x 1"]
        busy = sum(probe.compute)
        local_compute = sum(best[local_name(args.local_threads[0])][1].compute)
        print(f"  chunk {size}: {len(probe.compute)} tasks of "
              f"{statistics.mean(probe.task_bytes) / 1e6:.2f} MB (results "
              f"{statistics.mean(probe.result_bytes) / 1e6:.2f} MB), pickled in "
              f"{probe.pickle_seconds * 1e3:.0f} ms in all; compute on workers {busy:.1f} s "
              f"(in-process: {local_compute:.1f} s) = {busy / (args.workers * wall):.0%}"
              f" of {args.workers} workers x {wall:.1f} s wall; driver writing files "
              f"{probe.driver:.1f} s; task compute min/max {min(probe.compute):.1f}/"
              f"{max(probe.compute):.1f} s")
    dask.close()
    tmp.cleanup()


if __name__ == "__main__":
    main()
