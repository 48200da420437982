"""Executors without a cluster: --scheduler is parsed and refused in one line, an unreachable
scheduler writes nothing, the local default never imports Dask, and worker processes on this
machine (`--scheduler processes`, and `auto` for large LLC jobs) give the same numbers as the
driver's own process. (The Dask executor on a real LocalCluster: tests/test_dask.py, in the
slow tier.)"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from devtms.errors import UserError
from devtms.executors import (
    PARALLEL_MIN_WORK,
    AutoExecutor,
    LocalExecutor,
    ProcessExecutor,
    make_executor,
)
from devtms.threads import usable_cores

from .conftest import run_cli, tiny_config


@pytest.mark.parametrize("command", ["train", "llc", "study"])
def test_an_unreachable_scheduler_is_one_line_exit_2_and_nothing_written(command, tiny_run,
                                                                          tmp_path, capsys,
                                                                          monkeypatch):
    from devtms.cli import main

    if command == "llc":
        target = [str(shutil.copytree(tiny_run, tmp_path / "run"))]
    else:
        tiny_config().write(tmp_path / "tiny.toml")
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
    with pytest.raises(UserError, match="choose auto, local, processes, dask or the address"):
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


def test_llc_in_worker_processes_writes_the_same_files_as_in_this_process(tiny_run, tmp_path):
    runs = {}
    for scheduler in ("local", "processes"):
        run = shutil.copytree(tiny_run, tmp_path / scheduler)
        result = run_cli("llc", run, "--scheduler", scheduler, "--chunk-size", "5")
        assert result.returncode == 0, result.stderr
        assert ("local processes" in result.stdout) == (scheduler == "processes"), result.stdout
        runs[scheduler] = run
    assert (runs["local"] / "llc.csv").read_bytes() == (runs["processes"] / "llc.csv").read_bytes()
    traces = sorted(p.name for p in (runs["local"] / "llc_traces").iterdir())
    assert traces == sorted(p.name for p in (runs["processes"] / "llc_traces").iterdir())


def test_auto_keeps_small_jobs_in_this_process_and_sends_large_ones_to_workers():
    with make_executor(None) as auto:
        assert isinstance(auto, AutoExecutor) and isinstance(auto, LocalExecutor)
        assert auto.for_work(PARALLEL_MIN_WORK / 10) is auto
        large = auto.for_work(PARALLEL_MIN_WORK)
        if usable_cores() > 1:
            assert isinstance(large, ProcessExecutor)
            assert sorted(large.map(abs, [-3, 1, -2])) == [1, 2, 3]  # real worker processes
            assert auto.for_work(PARALLEL_MIN_WORK * 10) is large  # started once
        else:
            assert large is auto


def _children(pid: int) -> list[int]:
    """Processes whose parent is `pid` (from /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_bytes().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] not in (b"Z", b"X"):
            out.append(int(stat.parent.name))
    return out


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_worker_processes_end_when_their_driver_is_killed():
    """SIGKILL to the driver: its workers (children of its forkserver) exit within seconds
    instead of waiting on their task queue forever."""
    driver = subprocess.Popen(
        [sys.executable, "-c", "import time\nfrom devtms.executors import ProcessExecutor\n"
         "tasks = ProcessExecutor(2).map(time.sleep, [60, 60])\nprint('mapped', flush=True)\n"
         "next(tasks)"], stdout=subprocess.PIPE, text=True)
    try:
        assert driver.stdout.readline().strip() == "mapped"
        deadline = time.monotonic() + 60
        workers: list[int] = []
        while len(workers) < 2 and time.monotonic() < deadline:
            workers = [w for server in _children(driver.pid) for w in _children(server)]
            time.sleep(0.1)
        servers = _children(driver.pid)
        assert len(workers) == 2, "the driver never started its workers"
    finally:
        driver.kill()
        driver.wait()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists()
                                              for p in workers + servers):
        time.sleep(0.2)
    assert not any(Path(f"/proc/{p}").exists() for p in workers + servers)
