"""A harness that SIGKILLs real `devtms` processes at random moments and checks what is left."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from devtms.llc import IDENTITY
from devtms.store import load_checkpoint_file, read_csv

# The columns that identify a row of each run table: a duplicate means a row written twice.
ROW_KEYS = {"instances.csv": ["instance"], "train_log.csv": ["step", "instance"],
            "llc.csv": IDENTITY, "geometry.csv": ["instance", "step"]}


def integrity_problems(run_dir: Path) -> list[str]:
    """Every run file must be whole: checkpoints verify, CSVs have no torn line and no duplicate
    row, JSON parses, the report's HTML is complete.

    Temporary files of interrupted atomic writes (".name.XXXX.tmp") are not run files; the next
    command holding the lock deletes them.
    """
    problems = []
    if not run_dir.exists():
        return problems
    for path in sorted(run_dir.rglob("*")):
        if not path.is_file() or (path.name.startswith(".") and path.name.endswith(".tmp")):
            continue
        try:
            if path.suffix == ".safetensors":
                load_checkpoint_file(path)
            elif path.suffix == ".csv":
                table = read_csv(path, path.name, "check")
                keys = ROW_KEYS.get(path.name)
                if keys and table.duplicated(keys).any():
                    problems.append(f"{path}: duplicated rows")
            elif path.suffix == ".json":
                json.loads(path.read_text())
            elif path.suffix == ".html" and not path.read_bytes().rstrip().endswith(b"</html>"):
                problems.append(f"{path}: cut off")
        except Exception as e:  # noqa: BLE001 - any failure is a finding
            problems.append(f"{path}: {e}")
    return problems


def kill_repeatedly(args: list[str], run_dir: Path, kills: int, seed: int,
                    min_delay: float, max_delay: float, *, from_lock: bool = False,
                    max_starts: int | None = None, env: dict[str, str] | None = None) -> int:
    """Start `devtms ARGS` and SIGKILL it after a random delay, until `kills` kills have landed
    or `max_starts` processes were started (default `kills`). -> kills that landed

    The delay runs from the start of the process, or with `from_lock` from the moment it holds
    the run's lock (so every kill lands in the work, not in the interpreter's start-up). A
    process that ends before its kill must succeed. After every kill the run directory must
    pass `integrity_problems`.
    """
    rng = random.Random(seed)
    landed = starts = 0
    while landed < kills and starts < (max_starts or kills):
        starts += 1
        delay = rng.uniform(min_delay, max_delay)
        proc = start_devtms(args, env)
        if from_lock:
            wait_until(proc, lambda: holds_lock(proc, run_dir))  # noqa: B023 - used at once
        landed += kill_after(proc, delay)
        problems = integrity_problems(run_dir)
        assert not problems, problems
    return landed


# `python -m devtms.cli ARGS`, with Ctrl-C's default (KeyboardInterrupt) even when the tests
# themselves run as a background job, which starts with SIGINT ignored and passes that on
DEVTMS_WITH_SIGINT = ("import runpy, signal, sys\n"
                      "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
                      "sys.argv[0] = 'devtms'\n"
                      "runpy.run_module('devtms.cli', run_name='__main__', alter_sys=True)")


def start_devtms(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", DEVTMS_WITH_SIGINT, *map(str, args)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "TQDM_DISABLE": "1", **(env or {})})


def kill_after(proc: subprocess.Popen, delay: float) -> bool:
    """SIGKILL the process after `delay` seconds. -> whether it was still running (else it
    must have succeeded)"""
    try:
        _, err = proc.communicate(timeout=delay)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return True
    assert proc.returncode == 0, err.decode()
    return False


def holds_lock(proc: subprocess.Popen, run_dir: Path) -> bool:
    """Whether the process holds the run lock (the lock file names its pid)."""
    try:
        return f"(pid {proc.pid})".encode() in (run_dir / ".lock").read_bytes()
    except FileNotFoundError:
        return False


def wait_until(proc: subprocess.Popen, condition: Callable[[], bool], timeout: float = 120) -> None:
    """Poll until the condition holds or the process has exited."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline and not condition():
        time.sleep(0.005)
