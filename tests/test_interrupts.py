"""Ctrl-C: every stage that writes ends with one line, exit status 130, naming the exact command
that continues the work; that command, run as printed, does.

Real processes sent a real SIGINT once they hold the run's lock and have written part of their
work (tests/killing.py starts and watches them).
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import STUDY, run_cli, tiny_config
from .killing import holds_lock, start_devtms, wait_until

# Long enough to be caught mid-way (a few seconds), checkpointed every 250 steps.
LONG = tiny_config(train={"steps": 6000, "log_every": 100},
                   checkpoints={"log_points": 4, "linear_every": 250})


def interrupt(args: list, run_dir: Path, ready: Callable[[], bool]) -> str:
    """Start `devtms ARGS`, send SIGINT once it holds the lock of run_dir and `ready()`.
    -> its one line on stderr (it must exit with status 130)"""
    proc = start_devtms(args)
    try:
        wait_until(proc, lambda: holds_lock(proc, run_dir) and ready())
        assert proc.poll() is None, "the command finished before it could be interrupted"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = err.decode().splitlines()
    assert proc.returncode == 130 and len(lines) == 1, (proc.returncode, lines)
    assert "Traceback" not in lines[0]
    return lines[0]


def named(line: str) -> list[str]:
    """The command a message names between backquotes, as arguments of `devtms`."""
    words = shlex.split(re.search(r"`([^`]+)`", line).group(1))
    assert words[0] == "devtms", line
    return words[1:]


def stage(run_dir: Path, name: str) -> dict:
    """run.json's record of a stage ({} while there is no run.json)."""
    path = run_dir / "run.json"
    return json.loads(path.read_text())["stages"].get(name, {}) if path.is_file() else {}


def test_an_interrupted_train_names_the_resume_command_and_it_resumes(tmp_path):
    config = LONG.write(tmp_path / "long.toml")
    out = tmp_path / "run"
    line = interrupt(["train", config, "--out", out], out,
                     lambda: (out / "checkpoints" / "step_00000250.safetensors").is_file())
    assert line == (f"devtms train: interrupted; everything written is kept; continue with "
                    f"`devtms train {out} --resume`")
    # the command as given would refuse: the run exists now
    again = run_cli("train", config, "--out", out)
    assert again.returncode == 2 and "pass --resume" in again.stderr
    kept = max(int(p.stem[5:]) for p in (out / "checkpoints").iterdir())
    result = run_cli(*named(line))
    assert result.returncode == 0, result.stderr
    assert stage(out, "train")["done"] and stage(out, "train")["last_step"] == 6000
    assert kept >= 250 and (out / "checkpoints" / f"step_{kept:08d}.safetensors").is_file()

    # --force replaces the run; once the new run exists, continuing it needs --resume, not
    # --force (which would start it over)
    line = interrupt(["train", config, "--out", out, "--force"], out,
                     lambda: not stage(out, "train").get("done", True)
                     and (out / "checkpoints" / "step_00000250.safetensors").is_file())
    assert line.endswith(f"continue with `devtms train {out} --resume`"), line


def test_an_interrupted_llc_names_itself_and_computes_only_the_rest(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    args = ["llc", run, "--steps", "last", "--instances", "0-2", "--draws", "2000",
            "--chunk-size", "1"]
    line = interrupt(args, run, lambda: (run / "llc.csv").is_file())
    assert line == (f"devtms llc: interrupted; llc.csv keeps every finished chunk; compute the "
                    f"rest with `{shlex.join(['devtms', *map(str, args)])}`")
    result = run_cli(*named(line))
    assert result.returncode == 0, result.stderr
    estimated, kept = map(int, re.search(r"(\d+) estimated, (\d+) already", result.stdout).groups())
    assert kept >= 1 and estimated + kept == 3, result.stdout


def test_an_interrupted_calibration_keeps_nothing_and_says_it_starts_over(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    args = ["calibrate", run, "--step", "last", "--draws", "3000"]
    line = interrupt(args, run, lambda: True)
    assert line == (f"devtms calibrate: interrupted; a calibration keeps nothing partial; "
                    f"start it again with `{shlex.join(['devtms', *map(str, args)])}`")
    assert not (run / "calibration").exists() or not any((run / "calibration").iterdir())


def test_an_interrupted_analyze_names_itself_and_finishes(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    line = interrupt(["analyze", run], run, lambda: True)
    assert line == (f"devtms analyze: interrupted; the tables written are kept; finish with "
                    f"`devtms analyze {run}`")
    result = run_cli(*named(line))
    assert result.returncode == 0, result.stderr
    assert stage(run, "analyze")["done"]


@pytest.mark.slow  # a whole study after the interrupt
def test_an_interrupted_study_names_the_command_that_continues_it(tmp_path):
    config = STUDY.but(llc={"draws": 2000}).write(tmp_path / "study.toml")
    out = tmp_path / "run"
    line = interrupt(["study", config, "--out", out], out, lambda: (out / "llc.csv").is_file())
    assert line == (f"devtms study: interrupted; everything written is kept; continue with "
                    f"`devtms study {out}`")
    result = run_cli(*named(line))
    assert result.returncode == 0, result.stderr
    assert all(stage(out, s)["done"] for s in ("train", "llc", "analyze"))
