"""Shared test helpers: small configs and a way to run the real `devtms` CLI in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 600,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run `python -m devtms.cli ARGS` as a user would, capturing output."""
    full_env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "devtms.cli", *map(str, args)],
        cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout,
    )


TINY_TOML = """\
name = "tiny"

[model]
n_features = 5
n_hidden = 2
activations = ["relu", "gelu", "softmax", "tanh"]

[data]
kind = "single-feature"
n_samples = 200

[train]
steps = 300
batch_size = 50
optimizer = "sgd"
lr = 0.1
momentum = 0.9
seeds = [0, 1]

[checkpoints]
log_points = 8
linear_every = 100

[llc]
chains = 2
draws = 20
burnin = 20
batch_size = 50
"""


@pytest.fixture
def tiny_config(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_TOML)
    return path


# A whole study (train -> llc -> analyze -> report) in seconds: 4 instances, 10 checkpoints.
STUDY_TOML = """\
name = "tiny-study"

[model]
n_features = 5
n_hidden = 2
activations = ["relu", "tanh"]

[data]
kind = "single-feature"
n_samples = 100

[train]
steps = 200
batch_size = 50
optimizer = "sgd"
lr = 0.1
momentum = 0.9
seeds = [0, 1]

[checkpoints]
log_points = 6
linear_every = 100

[llc]
chains = 2
draws = 40
burnin = 10
batch_size = 50
"""
