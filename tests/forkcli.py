"""Run many `devtms` command lines as real processes, fast: a fork server.

A fresh interpreter spends about 2 CPU-seconds importing torch before `devtms` parses its
arguments, so a table of dozens of bad invocations would spend minutes starting up. Here one
interpreter imports devtms once, then forks a child per command line; the child runs
`python -m devtms.cli ARGS` exactly as the interpreter would (runpy, as __main__), in its own
working directory, with its own stdout, stderr and exit status. Nothing is shared between
commands but the imported modules.

    results = run_many([(["llc", "runs/x"], Path("/tmp/ws"))])   # CompletedProcess per line

Set DEVTMS_FRESH_CLI=1 to run every line in a fresh `python -m devtms.cli` instead (threads
waiting on subprocesses), e.g. to check the two ways agree.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .conftest import run_cli

SERVER = r"""
import json, os, runpy, sys, traceback

# the expensive imports, once; devtms.cli itself runs afresh in every child, as with -m
import devtms.cli, devtms.analyze, devtms.calibrate, devtms.llc, devtms.report, devtms.study
import devtms.train
sys.modules.pop("devtms.cli")

def child(argv, cwd, out, err):
    os.chdir(cwd)
    for fd, path in ((1, out), (2, err)):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(target, fd)
        os.close(target)
    sys.argv = ["devtms", *argv]
    try:
        runpy.run_module("devtms.cli", run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as e:  # what the interpreter does with it
        if e.code is None or isinstance(e.code, int):
            code = e.code or 0
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)

jobs, lines = json.load(sys.stdin)
pending, running, codes = list(enumerate(lines)), {}, {}
while pending or running:
    while pending and len(running) < jobs:
        k, line = pending.pop(0)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            child(*line)
        running[pid] = k
    pid, status = os.wait()
    codes[running.pop(pid)] = os.waitstatus_to_exitcode(status)
json.dump([codes[k] for k in range(len(lines))], sys.stdout)
"""


def run_many(lines: list[tuple[list[str], Path]], env: dict[str, str] | None = None,
             jobs: int = 4, timeout: float = 600) -> list[subprocess.CompletedProcess]:
    """Run each (argv, cwd) as `devtms ARGV` in cwd. -> results in the order given"""
    if os.environ.get("DEVTMS_FRESH_CLI") == "1":
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            return list(pool.map(lambda line: run_cli(*line[0], cwd=line[1], env=env,
                                                      timeout=timeout), lines))
    full_env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    with tempfile.TemporaryDirectory(prefix="devtms-forkcli-") as tmp:
        spec = [[list(map(str, argv)), str(cwd), f"{tmp}/{k}.out", f"{tmp}/{k}.err"]
                for k, (argv, cwd) in enumerate(lines)]
        server = subprocess.run([sys.executable, "-c", SERVER], input=json.dumps([jobs, spec]),
                                capture_output=True, text=True, env=full_env, timeout=timeout)
        assert server.returncode == 0, server.stderr
        codes = json.loads(server.stdout)
        return [subprocess.CompletedProcess(["devtms", *argv], code, Path(out).read_text(),
                                            Path(err).read_text())
                for (argv, _, out, err), code in zip(spec, codes, strict=True)]
