"""The Dask executor on a real LocalCluster (2 worker processes): the same numbers as local,
a killed worker costs nothing but time, and bad schedulers are one-line errors.

The oracle everywhere is the local executor: a task's numbers depend on the task alone, so
llc.csv, checkpoints and train_log.csv must be byte-identical whichever executor ran them.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch

from devtms import llc
from devtms.config import config_from_dict, instance_table
from devtms.errors import UserError
from devtms.executors import DaskExecutor, LocalExecutor, make_executor
from devtms.store import LLC_CSV, TRAIN_LOG, RunDir
from devtms.train import train_run

from .conftest import TINY_TOML, run_cli

distributed = pytest.importorskip("distributed")

ENV = {"OMP_NUM_THREADS": "1"}


def tiny_config(**train):
    raw = tomllib.loads(TINY_TOML)
    raw["train"].update(train)
    return config_from_dict(raw)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A tiny trained run (8 instances, 11 checkpoints) and its llc.csv from the local executor."""
    root = tmp_path_factory.mktemp("dask")
    config = tiny_config()
    run = RunDir.create(root / "run", config, instance_table(config))
    train_run(run)
    reference = root / "reference"
    shutil.copytree(run.path, reference)
    local = RunDir.open(reference)
    llc.run_llc(local, llc.build_request(local), LocalExecutor(), progress=False)
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
    result = run_cli("llc", run, "--scheduler", "dask", env=ENV)
    assert result.returncode == 0, result.stderr
    assert "executor: dask LocalCluster (" in result.stderr
    assert "88 estimated" in result.stdout
    # both took the same kernel (auto picks eager for a job this small), so the same bits
    assert not llc.build_request(RunDir.open(run)).compiled
    assert (run / LLC_CSV).read_bytes() == (trained / "reference" / LLC_CSV).read_bytes()


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
    summary = llc.run_llc(run, request, executor, progress=False)
    assert executor.killed_pid is not None and executor.lost_tasks  # it was running a chunk
    assert summary.computed == summary.requested == 88 and summary.chunks == 8
    assert (run.path / LLC_CSV).read_bytes() == (trained / "reference" / LLC_CSV).read_bytes()
    client.wait_for_workers(2, timeout=60)  # the nanny restarted the worker
    assert executor.killed_pid not in client.run(os.getpid).values()


def test_training_shards_through_dask_equal_local_shards(tmp_path, client):
    """The shards fix the numbers: in-process lockstep and Dask tasks write the same bits."""
    config = tiny_config(steps=120, shard_size=3)
    runs = []
    for name, executor in (("local", None), ("dask", DaskExecutor(client))):
        run = RunDir.create(tmp_path / name, config, instance_table(config))
        assert train_run(run, executor=executor) == 120
        runs.append(run)
    local, dask = runs
    assert local.checkpoint_steps() == dask.checkpoint_steps()
    for step in local.checkpoint_steps():
        a, b = local.load_checkpoint(step), dask.load_checkpoint(step)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), step
    assert (local.path / TRAIN_LOG).read_bytes() == (dask.path / TRAIN_LOG).read_bytes()


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


@pytest.mark.parametrize("command", ["train", "llc", "study"])
def test_an_unreachable_scheduler_is_one_line_exit_2_and_nothing_written(command, trained,
                                                                          tmp_path, capsys,
                                                                          monkeypatch):
    from devtms.cli import main

    if command == "llc":
        target = [str(copy_run(trained, tmp_path / "run"))]
    else:
        (tmp_path / "tiny.toml").write_text(TINY_TOML)
        target = [str(tmp_path / "tiny.toml"), "--out", str(tmp_path / "out")]
    before = sorted(tmp_path.rglob("*"))
    monkeypatch.setenv("DEVTMS_SCHEDULER_TIMEOUT", "1")
    assert main([command, *target, "--scheduler", "tcp://127.0.0.1:1"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"devtms {command}: error: --scheduler tcp://127.0.0.1:1: no Dask scheduler answered "
        "within 1 s; start one with `dask scheduler` (and workers with `dask worker ADDRESS`) "
        "or pass --scheduler dask for a cluster on this machine"]
    assert sorted(tmp_path.rglob("*")) == before


@pytest.mark.parametrize("scheduler", ["tcp://host", "slurm", "", "tcp://:8786"])
def test_a_scheduler_that_is_neither_local_dask_nor_an_address_is_refused(scheduler):
    with pytest.raises(UserError, match="choose local, dask or the address"):
        make_executor(scheduler)


def test_without_dask_installed_the_error_says_how_to_get_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed -> ImportError
    with pytest.raises(UserError, match=r"pip install 'devtms\[dask\]'"):
        make_executor("dask")
    assert isinstance(make_executor("local"), LocalExecutor)
    assert isinstance(make_executor(None), LocalExecutor)


def test_the_local_default_never_imports_dask():
    code = ("import sys, devtms.cli, devtms.executors, devtms.llc, devtms.train, devtms.study\n"
            "devtms.executors.make_executor('local').close()\n"
            "assert not any(m.split('.')[0] in ('dask', 'distributed') for m in sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
