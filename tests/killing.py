"""A harness that SIGKILLs real `devtms` processes at random moments and checks what is left."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

from devtms.store import load_checkpoint_file, read_csv


def integrity_problems(run_dir: Path) -> list[str]:
    """Every run file must be whole: checkpoints verify, CSVs have no torn line, JSON parses.

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
                read_csv(path, path.name, "check")
            elif path.suffix == ".json":
                json.loads(path.read_text())
        except Exception as e:  # noqa: BLE001 - any failure is a finding
            problems.append(f"{path}: {e}")
    return problems


def kill_repeatedly(args: list[str], run_dir: Path, kills: int, seed: int,
                    min_delay: float, max_delay: float) -> int:
    """Start `devtms ARGS` `kills` times, SIGKILL each after a random delay. -> kills that landed

    After every kill the run directory must pass `integrity_problems`.
    """
    rng = random.Random(seed)
    landed = 0
    env = {**os.environ, "TQDM_DISABLE": "1"}
    for _ in range(kills):
        proc = subprocess.Popen([sys.executable, "-m", "devtms.cli", *map(str, args)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        try:
            _, err = proc.communicate(timeout=rng.uniform(min_delay, max_delay))
            assert proc.returncode == 0, err.decode()
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            landed += 1
        problems = integrity_problems(run_dir)
        assert not problems, problems
    return landed
