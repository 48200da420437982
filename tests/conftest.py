"""Shared test helpers: the tiny config, a comparison of run directories, and a way to run the
real `devtms` CLI in a subprocess.

    tiny_config()                                   # today's tiny study: 4 activations x 2 seeds
    tiny_config(train={"steps": 40}).config         # a RunConfig
    tiny_config(model={"activations": ["relu"]}).raw            # the dict config_from_dict takes
    tiny_config(llc={"draws": 300}).write(tmp_path / "tiny.toml")  # a TOML file for the CLI
    STUDY.but(llc={"draws": 300})                   # overrides of overrides

    assert_runs_identical(reference, resumed, files=["train_log.csv", "checkpoints"])
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import torch

from devtms.config import RunConfig, config_from_dict
from devtms.store import LLC_TRACES, RunDir, load_checkpoint_file

REPO = Path(__file__).resolve().parents[1]

# Every tensor in these tests is tiny: a second thread only adds contention, and on a busy
# 2-core machine OpenMP's waiting makes tiny steps up to a few hundred times slower (the tiny
# study's 200 training steps in-process: 0.02 s on one thread, 1-8 s on two). One thread here
# and in every `devtms` these tests start, unless the environment says otherwise; no result
# may depend on the thread count.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 600,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run `python -m devtms.cli ARGS` as a user would, capturing output."""
    full_env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "devtms.cli", *map(str, args)],
        cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout,
    )


# ---------------------------------------------------------------------------------------------
# The tiny config

# 4 activations x 2 seeds = 8 instances, 300 steps, 11 checkpoints; trains in about a second.
TINY: dict[str, Any] = {
    "name": "tiny",
    "model": {"n_features": 5, "n_hidden": 2, "activations": ["relu", "gelu", "softmax", "tanh"]},
    "data": {"kind": "single-feature", "n_samples": 200},
    "train": {"steps": 300, "batch_size": 50, "optimizer": "sgd", "lr": 0.1, "momentum": 0.9,
              "seeds": [0, 1]},
    "checkpoints": {"log_points": 8, "linear_every": 100},
    "llc": {"chains": 2, "draws": 20, "burnin": 20, "batch_size": 50},
}


class TinyConfig:
    """TINY with overrides, as a dict (`raw`), a RunConfig (`config`), TOML text (`toml`) or a
    TOML file (`write(path)`). Immutable: `but(...)` gives a new one."""

    def __init__(self, raw: dict[str, Any]):
        self._raw = raw

    @property
    def raw(self) -> dict[str, Any]:
        """A fresh copy: editing it changes nothing here."""
        return copy.deepcopy(self._raw)

    @property
    def config(self) -> RunConfig:
        return config_from_dict(self.raw)

    @property
    def toml(self) -> str:
        return toml_text(self._raw)

    def write(self, path: Path) -> Path:
        path.write_text(self.toml)
        return path

    def but(self, **overrides: Any) -> TinyConfig:
        return TinyConfig(_merged(self._raw, overrides))


def tiny_config(**overrides: Any) -> TinyConfig:
    """The tiny config with overrides by section: `tiny_config(train={"steps": 40, "lr": 0.05})`
    replaces those two keys of [train] and keeps the rest. A value of None removes the key
    (`data={"kind": None}`) or the whole section (`model=None`); a section not in TINY is added
    as given, and so is a top-level key (`name="x"`)."""
    return TinyConfig(_merged(TINY, overrides))


def _merged(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(raw)
    for key, value in copy.deepcopy(overrides).items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            for k, v in value.items():
                if v is None:
                    out[key].pop(k, None)
                else:
                    out[key][k] = v
        else:
            out[key] = value
    return out


def toml_text(raw: dict[str, Any]) -> str:
    """TOML for a config dict: top-level keys, then one [section] per flat dict."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in raw.items() if not isinstance(v, dict)]
    for section, body in raw.items():
        if isinstance(body, dict):
            lines += ["", f"[{section}]", *(f"{k} = {_toml_value(v)}" for k, v in body.items())]
    return "\n".join(lines).lstrip("\n") + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)  # 0.1, 1e-05, inf, nan: all TOML
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(map(_toml_value, value)) + "]"
    raise TypeError(f"no TOML for {value!r} (sections must be flat)")


# A whole study (train -> llc -> analyze -> report) in seconds: 4 instances, 10 checkpoints.
STUDY = tiny_config(name="tiny-study", model={"activations": ["relu", "tanh"]},
                    data={"n_samples": 100}, train={"steps": 200}, checkpoints={"log_points": 6},
                    llc={"draws": 40, "burnin": 10})


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """The tiny config trained once through `devtms train`, for every module that needs a
    trained run. Read-only: copy it (shutil.copytree) before writing to it."""
    return trained_run(tmp_path_factory.mktemp("tiny_run"), tiny_config())


def trained_run(root: Path, config: TinyConfig) -> Path:
    """`config` trained through `devtms train` into root/run (its TOML beside it)."""
    result = run_cli("train", config.write(root / f"{config.raw['name']}.toml"),
                     "--out", root / "run")
    assert result.returncode == 0, result.stderr
    return root / "run"


def after_stages(run: Path, to: Path, *stages: str) -> Path:
    """A copy of `run` at `to` after `devtms STAGE RUN` for each of `stages`, in order."""
    shutil.copytree(run, to)
    for stage in stages:
        result = run_cli(stage, to)
        assert result.returncode == 0, result.stderr
    return to


# ---------------------------------------------------------------------------------------------
# Comparing runs


def assert_runs_identical(a: Path | RunDir, b: Path | RunDir, *, files: Iterable[str]) -> None:
    """The two run directories hold the same results in `files` (paths relative to the run),
    checked in the order given; the assertion names the first that differs.

    A file must be byte for byte the same, except a .safetensors file, whose tensors must be
    (the header's order may vary). A directory must hold the same file names, each the same.
    `llc_traces` is compared by estimate: every (setting, instance, step) has the same
    sampled losses, whichever chunk's file holds them (a rerun may chunk them otherwise).
    """
    a, b = (Path(r.path if isinstance(r, RunDir) else r) for r in (a, b))
    for name in files:
        problem = _difference(a, b, name)
        assert problem is None, f"runs differ at {name}: {problem} ({a} vs {b})"


def _difference(a: Path, b: Path, name: str) -> str | None:
    x, y = a / name, b / name
    for path in (x, y):
        if not path.exists():
            return f"{path} does not exist"
    if name.rstrip("/") == LLC_TRACES:
        return _traces_difference(a, b)
    if x.is_dir() or y.is_dir():
        names = [sorted(p.name for p in d.iterdir()) if d.is_dir() else None for d in (x, y)]
        if names[0] != names[1]:
            return f"different files: {_symmetric(names[0] or [], names[1] or [])}"
        for child in names[0]:
            problem = _difference(a, b, f"{name.rstrip('/')}/{child}")
            if problem is not None:
                return f"{child}: {problem}"
        return None
    if x.suffix == ".safetensors":
        return _tensors_difference(load_checkpoint_file(x), load_checkpoint_file(y))
    bx, by = x.read_bytes(), y.read_bytes()
    if bx == by:
        return None
    lx, ly = bx.splitlines(), by.splitlines()
    k = next((k for k, (p, q) in enumerate(zip(lx, ly, strict=False)) if p != q),
             min(len(lx), len(ly)))
    return f"line {k + 1}: {_line(lx, k)!r} vs {_line(ly, k)!r}"


def _line(lines: list[bytes], k: int) -> str:
    return lines[k].decode(errors="replace")[:200] if k < len(lines) else "<end of file>"


def _symmetric(x: list[str], y: list[str]) -> str:
    return f"only in the first {sorted(set(x) - set(y))}, only in the second {sorted(set(y) - set(x))}"


def _tensors_difference(x: dict[str, torch.Tensor], y: dict[str, torch.Tensor]) -> str | None:
    if x.keys() != y.keys():
        return f"different tensors: {_symmetric(list(x), list(y))}"
    for key in x:
        p, q = x[key], y[key]
        if p.dtype != q.dtype or p.shape != q.shape:
            return f"{key}: {p.dtype} {tuple(p.shape)} vs {q.dtype} {tuple(q.shape)}"
        if p.is_floating_point():  # NaN (a diverged instance or chain) equals NaN here
            if not torch.equal(p.isnan(), q.isnan()):
                return f"{key}: NaN in different places"
            p, q = p.masked_fill(p.isnan(), 0.0), q.masked_fill(q.isnan(), 0.0)
        if not torch.equal(p, q):
            return f"{key}: different values"
    return None


def _traces_difference(a: Path, b: Path) -> str | None:
    x, y = _traces_by_estimate(a), _traces_by_estimate(b)
    if x.keys() != y.keys():
        return f"different estimates: {_symmetric(list(map(str, x)), list(map(str, y)))}"
    return next((f"estimate {key}: {problem}" for key in x
                 if (problem := _tensors_difference({"loss": x[key]}, {"loss": y[key]}))), None)


def _traces_by_estimate(run: Path) -> dict[tuple, torch.Tensor]:
    """(setting, instance, step) -> sampled losses; every estimate in exactly one file. The
    setting is the file's engine and hyperparameters, in a fixed order."""
    from devtms.llc import load_traces

    out = {}
    for params, tensors in load_traces(run):
        for e, (i, s) in enumerate(zip(tensors["instance"].tolist(), tensors["step"].tolist(),
                                       strict=True)):
            key = (tuple(sorted(params.items())), i, s)
            assert key not in out, f"{run}: estimate {key} has traces in two files"
            out[key] = tensors["loss"][e]
    return out
