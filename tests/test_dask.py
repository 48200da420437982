"""The Dask executor on a real LocalCluster (2 worker processes): the same numbers as local,
and a killed worker costs nothing but time. (Bad schedulers and the local default without a
cluster: tests/test_executors.py.)

The oracle everywhere is the local executor: a task's numbers depend on the task alone, so
llc.csv, checkpoints and train_log.csv must be byte-identical whichever executor ran them.
"""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest

from devtms import llc
from devtms.config import instance_table
from devtms.executors import DaskExecutor, LocalExecutor
from devtms.store import LLC_CSV, TRAIN_LOG, RunDir
from devtms.train import train_run

from .conftest import assert_runs_identical, run_cli, tiny_config

pytestmark = pytest.mark.slow  # a LocalCluster of 2 worker processes: about a minute



@pytest.fixture(scope="module")
def trained(tiny_run, tmp_path_factory) -> Path:
    """The tiny run (8 instances, 11 checkpoints) and its llc.csv from the local executor."""
    root = tmp_path_factory.mktemp("dask")
    shutil.copytree(tiny_run, root / "run")
    reference = root / "reference"
    shutil.copytree(tiny_run, reference)
    local = RunDir.open(reference)
    llc.run_llc(local, llc.build_request(local), LocalExecutor(), progress=False,
                check=True)  # as `devtms llc` does: the self-check's reference rows too
    return root


@pytest.fixture(scope="module")
def client():
    """A LocalCluster as `--scheduler dask` starts it, with 2 worker processes of 1 thread."""
    with DaskExecutor.local(n_workers=2) as executor:
        assert sorted(executor.client.nthreads().values()) == [1, 1]
        yield executor.client


def copy_run(trained: Path, dest: Path) -> Path:
    shutil.copytree(trained / "run", dest)
    return dest


def test_llc_on_a_dask_local_cluster_writes_exactly_the_local_rows(trained, tmp_path):
    run = copy_run(trained, tmp_path / "run")
    result = run_cli("llc", run, "--scheduler", "dask")
    assert result.returncode == 0, result.stderr
    assert "executor: dask LocalCluster (" in result.stderr
    assert "88 estimated" in result.stdout
    # both took the same kernel (auto picks eager for a job this small), so the same bits
    assert not llc.build_request(RunDir.open(run)).compiled
    assert_runs_identical(run, trained / "reference", files=[LLC_CSV])


class KillAWorkerAfterTheFirstResult:
    """Wraps a DaskExecutor: once the first result is in, SIGKILLs a worker that holds tasks."""

    def __init__(self, executor: DaskExecutor):
        self.executor, self.killed_pid, self.lost_tasks = executor, None, ()

    def map(self, fn, tasks):
        for k, result in enumerate(self.executor.map(fn, tasks)):
            if k == 0:
                self.kill_a_busy_worker()
            yield result

    def kill_a_busy_worker(self) -> None:
        client = self.executor.client
        pids = client.run(os.getpid)  # worker address -> pid
        busy = {w: keys for w, keys in client.processing().items() if keys}
        victim = next(iter(busy), next(iter(pids)))
        self.lost_tasks, self.killed_pid = busy.get(victim, ()), pids[victim]
        os.kill(self.killed_pid, signal.SIGKILL)


def test_a_job_survives_a_killed_worker_and_still_writes_every_row(trained, tmp_path, client):
    run = RunDir.open(copy_run(trained, tmp_path / "run"))
    # the reference's chunks (auto: 8 of one instance x 11 steps; 4 in flight, so the kill
    # lands mid-job). Chunking itself may move the last float32 bits of some activations.
    request = llc.build_request(run)
    executor = KillAWorkerAfterTheFirstResult(DaskExecutor(client))
    summary = llc.run_llc(run, request, executor, progress=False, check=True)
    assert executor.killed_pid is not None and executor.lost_tasks  # it was running a chunk
    assert summary.computed == summary.requested == 88 and summary.chunks == 8
    assert_runs_identical(run, trained / "reference", files=[LLC_CSV])
    client.wait_for_workers(2, timeout=60)  # the nanny restarted the worker
    assert executor.killed_pid not in client.run(os.getpid).values()


def test_training_shards_through_dask_equal_local_shards(tmp_path, client):
    """The shards fix the numbers: in-process lockstep and Dask tasks write the same bits."""
    config = tiny_config(train={"steps": 120, "shard_size": 3}).config
    runs = []
    for name, executor in (("local", None), ("dask", DaskExecutor(client))):
        run = RunDir.create(tmp_path / name, config, instance_table(config))
        assert train_run(run, executor=executor) == 120
        runs.append(run)
    assert runs[0].checkpoint_steps() == runs[1].checkpoint_steps()
    assert_runs_identical(*runs, files=["checkpoints", TRAIN_LOG])


def test_map_keeps_a_bounded_number_of_tasks_in_flight(client):
    executor = DaskExecutor(client)
    assert executor.capacity() == 4  # 2 per worker thread
    drawn = []

    def tasks():
        for k in range(12):
            drawn.append(k)
            yield k

    seen = []
    for result in executor.map(abs, tasks()):
        seen.append(result)
        assert len(drawn) - len(seen) <= executor.capacity()
    assert sorted(seen) == list(range(12))
