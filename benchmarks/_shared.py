"""What several benchmarks share: a shortened activations27 run to measure on.

Benchmarks run as scripts (`python benchmarks/NAME.py`), so this directory is on sys.path.
"""

from __future__ import annotations

import time
import tomllib
from importlib import resources
from pathlib import Path


def train_short(out: Path, steps: int, seeds: list[int], log_points: int = 12) -> Path:
    from devtms.config import config_from_dict, instance_table
    from devtms.store import RunDir
    from devtms.train import train_run

    raw = tomllib.loads(resources.files("devtms.presets").joinpath("activations27.toml").read_text())
    raw["train"].update(steps=steps, seeds=seeds)
    raw["checkpoints"] = {"log_points": log_points}
    config = config_from_dict(raw)
    run = RunDir.create(out, config, instance_table(config))
    t = time.perf_counter()
    train_run(run)
    print(f"trained a shortened activations27 run ({len(run.instances)} instances, {steps} steps) "
          f"in {time.perf_counter() - t:.0f} s -> {out}")
    return out
