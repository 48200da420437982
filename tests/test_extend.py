"""Extending a run: `devtms train LONGER.toml --out RUN --resume`, where LONGER differs from the
run's config only in more train.steps, trains on from the run's last step. With a constant
learning rate the result is the longer run trained in one go, bit for bit."""

from __future__ import annotations

import json
import re
import signal

import pandas as pd
import pytest

from devtms.train import run_schedule

from .conftest import assert_runs_identical, run_cli, tiny_config, trained_run
from .killing import holds_lock, integrity_problems, start_devtms, wait_until
from .test_bad_input import tree

HALF = tiny_config(train={"steps": 150})  # the tiny config (300 steps) trained half as long


def checkpoints(run) -> list[int]:
    return sorted(int(p.stem[5:]) for p in (run / "checkpoints").glob("step_*.safetensors"))


def meta(run) -> dict:
    return json.loads((run / "run.json").read_text())


def test_a_run_extended_to_twice_its_steps_is_the_longer_run_trained_in_one_go(tiny_run,
                                                                               tmp_path):
    run = trained_run(tmp_path, HALF)
    assert run_cli("analyze", run).returncode == 0
    refused = run_cli("train", tiny_config().write(tmp_path / "tiny.toml"), "--out", run)
    assert refused.returncode == 2 and "pass --resume to extend it to 300" in refused.stderr

    result = run_cli("train", tmp_path / "tiny.toml", "--out", run, "--resume")
    assert result.returncode == 0, result.stderr
    # the steps already trained keep their checkpoints; the 300-step schedule follows beyond
    assert checkpoints(run) == run_schedule(tiny_config().config, earlier_steps=[150])
    common = sorted(set(checkpoints(run)) & set(checkpoints(tiny_run)))
    assert {0, 100, 200, 300} <= set(common)
    assert_runs_identical(run, tiny_run, files=[
        "train_log.csv", *(f"checkpoints/step_{s:08d}.safetensors" for s in common)])
    recorded = meta(run)
    assert recorded["config"] == meta(tiny_run)["config"]  # train.steps = 300, atomically
    assert recorded["stages"]["train"]["earlier_steps"] == [150]
    assert recorded["stages"]["train"]["done"] and recorded["stages"]["train"]["last_step"] == 300
    assert recorded["stages"]["analyze"]["done"] is False  # new checkpoints to analyze

    # later stages see the new checkpoints
    assert run_cli("analyze", run).returncode == 0
    geometry = pd.read_csv(run / "geometry.csv")
    assert sorted(set(geometry["step"])) == checkpoints(run)
    llc = run_cli("llc", run, "--steps", "last", "--instances", "0")
    assert llc.returncode == 0 and "1 estimated" in llc.stdout, llc.stderr


def test_a_decaying_learning_rate_refuses_to_extend_and_changes_nothing(tmp_path):
    run = trained_run(tmp_path, HALF.but(train={"lr_schedule": "cosine"}))
    longer = tiny_config(train={"lr_schedule": "cosine"}).write(tmp_path / "longer.toml")
    before = tree(tmp_path)
    result = run_cli("train", longer, "--out", run, "--resume")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "train.lr_schedule = 'cosine' decays to 0 over train.steps" in result.stderr
    assert tree(tmp_path) == before


@pytest.mark.slow  # a SIGKILL
def test_a_run_killed_while_it_is_extended_resumes_to_the_longer_run(tmp_path):
    long = tiny_config(train={"steps": 6000, "log_every": 100},
                       checkpoints={"log_points": 4, "linear_every": 250})
    (tmp_path / "one_go").mkdir()
    (tmp_path / "extended").mkdir()
    reference = trained_run(tmp_path / "one_go", long)
    run = trained_run(tmp_path / "extended", long.but(train={"steps": 3000}))
    config = long.write(tmp_path / "long.toml")
    proc = start_devtms(["train", config, "--out", run, "--resume"])
    try:  # killed once the extension is recorded and has trained past the old end
        wait_until(proc, lambda: holds_lock(proc, run)
                   and (run / "checkpoints" / "step_00003250.safetensors").is_file())
        assert proc.poll() is None, "the extension finished before the kill"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not integrity_problems(run)
    assert meta(run)["config"]["train"]["steps"] == 6000 and max(checkpoints(run)) < 6000
    result = run_cli("train", run, "--resume")
    assert result.returncode == 0, result.stderr
    assert re.search(r"trained 8 instances for 6000 steps", result.stdout)
    common = sorted(set(checkpoints(run)) & set(checkpoints(reference)))
    assert [s for s in checkpoints(reference) if s > 3000] == [s for s in common if s > 3000]
    assert_runs_identical(run, reference,
                          files=[f"checkpoints/step_{s:08d}.safetensors" for s in common])
    # the logs differ only in the steps each schedule added: the rest are the same text, and
    # beyond step 3000 there are the same steps
    log, one_go = (pd.read_csv(r / "train_log.csv", dtype={"loss": str}) for r in (run, reference))
    both = set(log["step"]) & set(one_go["step"])
    assert {s for s in one_go["step"] if s > 3000} <= both and len(both) > 60
    log, one_go = (t[t["step"].isin(both)].reset_index(drop=True) for t in (log, one_go))
    assert log.equals(one_go)
