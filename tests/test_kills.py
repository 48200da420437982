"""SIGKILL at random moments, then rerun: nothing lost, nothing corrupt, same results."""

import json
import os
import random
import shutil
import subprocess
import sys
import time

import pytest

from .conftest import STUDY, assert_runs_identical, run_cli, tiny_config
from .killing import (
    holds_lock,
    integrity_problems,
    kill_after,
    kill_repeatedly,
    start_devtms,
    wait_until,
)

pytestmark = pytest.mark.slow  # 30 kills of real processes: minutes



def _timed_run(args, run_dir):
    """Run `devtms ARGS` uninterrupted. -> seconds from taking the run lock to exiting, stdout"""
    proc = subprocess.Popen([sys.executable, "-m", "devtms.cli", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "TQDM_DISABLE": "1"})
    wait_until(proc, lambda: holds_lock(proc, run_dir))
    start = time.monotonic()
    out, err = proc.communicate()
    assert proc.returncode == 0, err
    return time.monotonic() - start, out


def test_train_survives_ten_kills(tmp_path):
    """Kills land between checkpoints, during checkpoint writes, during the log's appends, ..."""
    config = tiny_config(train={"steps": 2500}).write(tmp_path / "tiny.toml")
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    work, _ = _timed_run(["train", config, "--out", reference], reference)
    # about 40 % of the job in kills (at most 60 %: a reference slowed by a busy machine must
    # not leave kills beyond the end), timed from the lock so start-up speed does not matter
    landed = kill_repeatedly(["train", config, "--out", killed, "--resume"], killed,
                             kills=10, seed=7, min_delay=0.02 * work, max_delay=0.06 * work,
                             from_lock=True, max_starts=14)
    assert landed == 10
    result = run_cli("train", config, "--out", killed, "--resume")
    assert result.returncode == 0, result.stderr
    assert not integrity_problems(killed)
    assert not list(killed.rglob(".*.tmp"))
    assert_runs_identical(reference, killed, files=["train_log.csv", "instances.csv", "checkpoints"])


def test_llc_survives_ten_kills(tmp_path):
    """Kills land while chunks are estimated, between a chunk's traces and its rows, ..."""
    config = STUDY.write(tmp_path / "study.toml")
    trained = tmp_path / "trained"
    assert run_cli("train", config, "--out", trained).returncode == 0
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    shutil.copytree(trained, reference)
    shutil.copytree(trained, killed)
    args = ["--draws", "600", "--chunk-size", "2"]  # 16 chunks of 2 estimates
    work, _ = _timed_run(["llc", reference, *args], reference)
    # about half the job in kills (each also loses the chunk it was in)
    landed = kill_repeatedly(["llc", killed, *args], killed, kills=10, seed=11,
                             min_delay=0.02 * work, max_delay=0.08 * work, from_lock=True,
                             max_starts=14)
    assert landed == 10
    result = run_cli("llc", killed, *args)
    assert result.returncode == 0, result.stderr
    assert not integrity_problems(killed) and not list(killed.rglob(".*.tmp"))
    assert_runs_identical(reference, killed, files=["llc.csv", "llc_traces"])
    stages = [json.loads((r / "run.json").read_text())["stages"] for r in (reference, killed)]
    assert stages[0] == stages[1]


STAGES = ["train", "llc", "analyze", "report"]


def _stage(run_dir):
    """The stage a study is in: the first one run.json does not record as done."""
    try:
        stages = json.loads((run_dir / "run.json").read_text())["stages"]
    except FileNotFoundError:
        return "train"
    return next((s for s in STAGES[:3] if not stages.get(s, {}).get("done")), "report")


def _reached(proc, run_dir, target):
    """The process holds the lock and the study is at `target` or past it."""
    return lambda: (holds_lock(proc, run_dir)
                    and STAGES.index(_stage(run_dir)) >= STAGES.index(target))


def test_study_survives_ten_kills(tmp_path):
    """Each kill aims at a stage (in study order, as a study progresses): once the study
    reaches it, a random moment within the time the stage took in an uninterrupted run."""
    config = STUDY.but(llc={"draws": 300}).write(tmp_path / "study.toml")
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    _, out = _timed_run(["study", config, "--out", reference], reference)
    took = {line.split()[0]: float(line.split()[1]) for line in out.splitlines()
            if line.split() and line.split()[0] in STAGES}
    rng = random.Random(5)
    targets = sorted(STAGES * 2 + rng.choices(STAGES, k=2), key=STAGES.index)  # 10 kills
    seen, starts = [], 0
    while len(seen) < len(targets) and starts < 2 * len(targets):
        target, starts = targets[len(seen)], starts + 1
        proc = start_devtms(["study", config, "--out", killed])
        wait_until(proc, _reached(proc, killed, target))
        at = _stage(killed)
        if kill_after(proc, rng.uniform(0.05, 0.9) * max(took[at], 0.05)):
            now = _stage(killed)
            seen.append(at if now == at else f"{at}/{now}")  # e.g. killed in llc/analyze
        problems = integrity_problems(killed)
        assert not problems, problems
    print("kills by stage:", seen, "stage seconds:", took)
    assert len(seen) == 10, (seen, took)
    assert {"train", "llc", "report"} <= {s.split("/")[0] for s in seen}, (seen, took)
    result = run_cli("study", config, "--out", killed)
    assert result.returncode == 0, result.stderr
    assert not integrity_problems(killed) and not list(killed.rglob(".*.tmp"))
    assert_runs_identical(reference, killed, files=[
        "instances.csv", "train_log.csv", "llc.csv", "geometry.csv", "transitions.csv",
        "summary.csv", "checkpoints", "llc_traces"])
    meta = [json.loads((r / "run.json").read_text()) for r in (reference, killed)]
    assert meta[0]["stages"] == meta[1]["stages"] and meta[0]["config"] == meta[1]["config"]
    figures = [sorted(p.name for p in (r / "report" / "figures").iterdir())
               for r in (reference, killed)]
    assert figures[0] == figures[1] and figures[0]
