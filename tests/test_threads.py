"""Torch threads: the default policy (devtms.threads) and `--threads N` on the compute commands.

The numbers never depend on the thread count: a run trained and estimated at two threads has
the same checkpoints and llc.csv, byte for byte, as one at the default (one thread for a TMS's
small ops). Speed is the business of benchmarks/train_throughput.py, not of a timed test.
"""

from __future__ import annotations

import json
from pathlib import Path

from devtms.store import load_checkpoint_file
from devtms.threads import PARALLEL_MIN_ELEMENTS, threads_for, usable_cores

from .conftest import run_cli, tiny_config

CONFIG = tiny_config(name="threads", train={"steps": 200})


def test_small_ops_run_on_one_thread_large_ones_on_every_core_and_the_user_decides_last():
    assert threads_for(145 * 100 * 5) == 1  # activations27's training step
    assert threads_for(PARALLEL_MIN_ELEMENTS) == usable_cores()
    assert threads_for(PARALLEL_MIN_ELEMENTS, requested=1) == 1
    assert threads_for(10, requested=3) == 3


def test_two_threads_and_the_default_give_the_same_files(tmp_path: Path):
    config = tmp_path / "threads.toml"
    config.write_text(CONFIG.toml)
    runs = {}
    for name, flags in (("default", []), ("two", ["--threads", "2"])):
        out = tmp_path / name
        for command in (["train", config, "--out", out], ["llc", out]):
            result = run_cli(*command, *flags)
            assert result.returncode == 0, result.stderr
        runs[name] = out
    stages = {name: json.loads((out / "run.json").read_text())["stages"]["train"]
              for name, out in runs.items()}
    assert stages["default"]["threads"] == 1 and stages["two"]["threads"] == 2
    default, two = runs["default"], runs["two"]
    checkpoints = sorted(p.name for p in (default / "checkpoints").iterdir())
    assert checkpoints == sorted(p.name for p in (two / "checkpoints").iterdir())
    for name in checkpoints:  # the tensors' bytes (safetensors orders its header at random)
        a = load_checkpoint_file(default / "checkpoints" / name)
        b = load_checkpoint_file(two / "checkpoints" / name)
        assert a.keys() == b.keys()
        for key in a:
            assert a[key].numpy().tobytes() == b[key].numpy().tobytes(), (name, key)
    assert (default / "llc.csv").read_bytes() == (two / "llc.csv").read_bytes()
    assert (default / "train_log.csv").read_bytes() == (two / "train_log.csv").read_bytes()
