"""Damaged or hostile run files are detected and named; nothing executes code from a run."""

import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from devtms.errors import RunDirError
from devtms.store import RunDir, load_checkpoint_file

from .conftest import STUDY, assert_runs_identical, run_cli, tiny_config


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


class _Payload:
    """Unpickling this object would create a marker file (it must never happen)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pickle_planted_as_a_checkpoint_is_rejected_without_running_it(tiny_run, tmp_path):
    run_dir = _copy(tiny_run, tmp_path / "run")
    marker = tmp_path / "pwned"
    target = run_dir / "checkpoints" / "step_00000100.safetensors"
    with open(target, "wb") as f:
        pickle.dump({"W": _Payload(str(marker))}, f)
    with pytest.raises(RunDirError, match="step_00000100.safetensors is damaged or not a "
                                          "safetensors file"):
        load_checkpoint_file(target)
    result = run_cli("train", run_dir, "--resume")  # verifies, retrains from step 89
    assert result.returncode == 0, result.stderr
    assert not marker.exists()
    assert_runs_identical(run_dir, tiny_run, files=["checkpoints/step_00000100.safetensors"])
    # a torch.save file (pickle inside a zip) is refused the same way
    torch.save({"W": torch.zeros(3)}, target)
    with pytest.raises(RunDirError, match="not a safetensors file"):
        load_checkpoint_file(target)


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_checkpoints_are_named_and_repaired_by_resume(tiny_run, tmp_path, damage):
    run_dir = _copy(tiny_run, tmp_path / "run")
    target = run_dir / "checkpoints" / "step_00000200.safetensors"
    data = bytearray(target.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[-5] ^= 0xFF  # one byte of a weight: still a valid safetensors file
    target.write_bytes(bytes(data))
    expected = "damaged or not a safetensors" if damage == "truncate" else "fails its content"
    with pytest.raises(RunDirError, match=expected):
        RunDir.open(run_dir).load_checkpoint(200)
    result = run_cli("train", run_dir, "--resume")
    assert result.returncode == 0, result.stderr
    assert_runs_identical(run_dir, tiny_run, files=[f"checkpoints/{target.name}"])


def test_run_json_from_an_incompatible_version_is_refused(tiny_run, tmp_path):
    run_dir = _copy(tiny_run, tmp_path / "run")
    meta = json.loads((run_dir / "run.json").read_text())
    meta["format_version"] = 99
    (run_dir / "run.json").write_text(json.dumps(meta))
    result = run_cli("train", run_dir, "--resume")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "format version 99" in result.stderr and "--force" in result.stderr


@pytest.mark.slow  # a SIGKILL; the fast tier has test_llc_is_refused_while_a_study_writes_...
def test_a_second_writer_is_refused_while_the_first_runs(tmp_path):
    long_config = tiny_config(train={"steps": 20000}).write(tmp_path / "long.toml")
    out = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "devtms.cli", "train", str(long_config),
                              "--out", str(out)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, env={**os.environ, "TQDM_DISABLE": "1"})
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not (out / "checkpoints").is_dir():
            time.sleep(0.05)
        second = run_cli("train", out, "--resume")
        assert second.returncode == 2
        assert "is in use by `devtms train`" in second.stderr
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # the killed holder leaves no stuck lock
    third = subprocess.run([sys.executable, "-c",
                            "from devtms.store import lock_dir; import sys\n"
                            "with lock_dir(sys.argv[1], 'probe'): print('locked')", str(out)],
                           capture_output=True, text=True)
    assert third.stdout.strip() == "locked", third.stderr


def test_no_run_file_is_a_pickle(tiny_run):
    for path in tiny_run.rglob("*"):
        if not path.is_file():
            continue
        data = path.read_bytes()
        if path.suffix == ".safetensors":  # 8-byte header length, then a JSON header
            assert data[8:9] == b"{" and int.from_bytes(data[:8], "little") < len(data), path
        else:
            assert data[:2] not in (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05", b"PK"), path


def test_adam_state_round_trips_through_a_checkpoint(tmp_path):
    """Adam's 0-d `step` tensor and moments survive the safetensors checkpoint exactly."""
    from devtms.config import config_from_dict, instance_table
    from devtms.store import checkpoint_bytes
    from devtms.train import BatchTrainer

    config = config_from_dict({"model": {"n_features": 4, "n_hidden": 2},
                               "train": {"optimizer": "adamw", "steps": 5}})
    trainer = BatchTrainer(config, instance_table(config))
    for _ in range(3):
        trainer.train_step()
    path = tmp_path / "c.safetensors"
    path.write_bytes(checkpoint_bytes(trainer.state_tensors(), {"step": "3"}))
    loaded = load_checkpoint_file(path)
    resumed = BatchTrainer(config, instance_table(config))
    resumed.load_state(loaded, 3)
    for trainer_ in (trainer, resumed):
        trainer_.train_step()
    assert torch.equal(trainer.W, resumed.W)


# ---------------------------------------------------------------------------------------------
# Damaged tables and run files, seen by every stage that reads them: one line naming the file
# and the command that repairs it; that command repairs it to exactly the undamaged result.


@pytest.fixture(scope="module")
def studied(tmp_path_factory):
    """A run through every stage (train, llc, analyze, report)."""
    root = tmp_path_factory.mktemp("studied")
    result = run_cli("study", STUDY.write(root / "study.toml"), "--out", root / "run")
    assert result.returncode == 0, result.stderr
    return root / "run"




def _tear(path):
    """Cut the file in the middle of its last line, as a crash in a non-atomic write would."""
    data = path.read_bytes()
    path.write_bytes(data[: data.rstrip(b"\n").rfind(b"\n") + 8])


def _set_version(path):
    meta = json.loads(path.read_text())
    meta["format_version"] = 99
    path.write_text(json.dumps(meta))


DAMAGED = [  # (file, damage, command that reads it, what its one line must say)
    ("llc.csv", _tear, ["analyze"], "llc.csv ends in a torn line"),
    ("llc.csv", _tear, ["report"], "llc.csv ends in a torn line"),
    ("train_log.csv", _tear, ["analyze"], "train_log.csv ends in a torn line"),
    ("train_log.csv", _tear, ["report"], "train_log.csv ends in a torn line"),
    ("geometry.csv", _tear, ["report"], "geometry.csv ends in a torn line"),
    ("summary.csv", _tear, ["report"], "summary.csv ends in a torn line"),
    ("instances.csv", _tear, ["llc"], "instances.csv ends in a torn line"),
    ("checkpoints/step_00000100.safetensors", lambda p: p.write_bytes(p.read_bytes()[:300]),
     ["llc", "--eps", "2e-3"], "step_00000100.safetensors is damaged"),
    ("checkpoints/step_00000100.safetensors", lambda p: p.write_bytes(p.read_bytes()[:-1] + b"!"),
     ["calibrate", "--step", "100"], "step_00000100.safetensors fails its content check"),
    ("run.json", _set_version, ["llc"], "run format version 99"),
    ("run.json", _set_version, ["analyze"], "run format version 99"),
    ("run.json", _set_version, ["report"], "run format version 99"),
    ("run.json", _set_version, ["calibrate", "--step", "last"], "run format version 99"),
    ("run.json", lambda p: p.write_text('{"format": "devtms-run", '), ["llc"], "not valid JSON"),
]
REPAIR = {  # the command each message names, for the files a stage rewrites
    "llc.csv": "devtms llc {run}", "train_log.csv": "devtms train {run} --resume",
    "geometry.csv": "devtms analyze {run}", "summary.csv": "devtms analyze {run}",
    "instances.csv": "--force", "checkpoints": "devtms train {run} --resume",
    "run.json": "--force",
}


def test_damage_is_named_in_one_line_with_the_command_that_repairs_it(studied, tmp_path):
    from .forkcli import run_many

    lines = []
    for k, (name, damage, argv, _) in enumerate(DAMAGED):
        run = _copy(studied, tmp_path / f"run{k}")
        damage(run / name)
        lines.append(([argv[0], run, *argv[1:]], tmp_path))
    for (name, _, argv, message), (line, _), result in zip(DAMAGED, lines, run_many(lines),
                                                        strict=True):
        run = line[1]
        assert result.returncode == 2, (name, argv, result.stderr)
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
        assert message in result.stderr, result.stderr
        repair = REPAIR[name.split("/")[0]].format(run=run)
        assert repair in result.stderr, (repair, result.stderr)


def test_a_torn_llc_csv_is_repaired_by_devtms_llc_to_the_undamaged_table(studied, tmp_path):
    run = _copy(studied, tmp_path / "run")
    _tear(run / "llc.csv")
    result = run_cli("llc", run)
    assert result.returncode == 0, result.stderr
    assert "llc.csv ended in a torn line" in result.stderr
    # the torn row, an SGLD estimate's or the self-check's, is the one computed again
    sgld = int(re.search(r"(\d+) estimated", result.stdout).group(1))
    reference = int(re.search(r"(\d+) reference estimate", result.stdout).group(1))
    assert sgld + reference == 1, result.stdout
    assert_runs_identical(run, studied, files=["llc.csv"])
    assert run_cli("analyze", run).returncode == 0
    assert_runs_identical(run, studied, files=["transitions.csv", "summary.csv"])


def test_a_torn_train_log_is_repaired_by_train_resume_to_the_undamaged_log(studied, tmp_path):
    run = _copy(studied, tmp_path / "run")
    _tear(run / "train_log.csv")
    result = run_cli("train", run, "--resume")
    assert result.returncode == 0, result.stderr
    assert "train_log.csv ended in a torn line" in result.stderr
    assert "training again from step 100" in result.stderr
    assert_runs_identical(run, studied,
                          files=["train_log.csv", "checkpoints/step_00000200.safetensors"])
    assert run_cli("train", run, "--resume").stderr == ""  # nothing left to repair


def test_a_train_log_missing_rows_is_refilled_by_train_resume(studied, tmp_path):
    """Rows lost at a line boundary (no torn line to see) are found by counting."""
    run = _copy(studied, tmp_path / "run")
    log = (run / "train_log.csv").read_bytes().splitlines(keepends=True)
    (run / "train_log.csv").write_bytes(b"".join(log[:300] + log[304:]))  # four rows gone
    result = run_cli("train", run, "--resume")
    assert result.returncode == 0, result.stderr
    assert "lacks rows after step" in result.stderr
    assert_runs_identical(run, studied,
                          files=["train_log.csv", "checkpoints/step_00000200.safetensors"])


def test_torn_analysis_tables_are_rewritten_by_analyze(studied, tmp_path):
    run = _copy(studied, tmp_path / "run")
    for name in ("geometry.csv", "transitions.csv", "summary.csv"):
        _tear(run / name)
    result = run_cli("analyze", run)
    assert result.returncode == 0, result.stderr
    assert_runs_identical(run, studied, files=["geometry.csv", "transitions.csv", "summary.csv"])


def test_a_pickle_planted_as_llc_traces_is_removed_without_running_it(studied, tmp_path):
    from devtms.llc import load_traces

    run = _copy(studied, tmp_path / "run")
    marker = tmp_path / "pwned"
    planted = run / "llc_traces" / "batched-0000000000-000000000000.safetensors"
    with open(planted, "wb") as f:
        pickle.dump({"loss": _Payload(str(marker))}, f)
    with pytest.raises(RunDirError, match="not a safetensors file"):
        load_traces(run)
    result = run_cli("llc", run, "--steps", "last", "--instances", "0", "--eps", "2e-3")
    assert result.returncode == 0, result.stderr
    assert not planted.exists() and not marker.exists()
    assert all(p.read_bytes()[8:9] == b"{" for p in (run / "llc_traces").iterdir())  # safetensors
    assert len(load_traces(run)) == len(list((run / "llc_traces").iterdir()))


def test_no_file_of_a_studied_run_is_a_pickle(studied):
    test_no_run_file_is_a_pickle(studied)


def test_llc_is_refused_while_a_study_writes_the_run_and_a_killed_study_leaves_no_lock(
        studied, tmp_path):
    from .forkcli import run_many
    from .killing import holds_lock, start_devtms, wait_until

    run = _copy(studied, tmp_path / "run")
    shutil.rmtree(run / "report")  # a finished study then draws its report's figures again
    study = start_devtms(["study", run])
    try:
        wait_until(study, lambda: holds_lock(study, run))
        assert study.poll() is None, "the study ended before the test could race it"
        (second,) = run_many([(["llc", run], tmp_path)])
        assert study.poll() is None, "the study ended before llc asked for the lock"
    finally:
        study.send_signal(signal.SIGKILL)
        study.wait()
    assert second.returncode == 2 and second.stderr.count("\n") == 1, second.stderr
    assert "is in use by `devtms study`" in second.stderr
    third = run_cli("llc", run)  # the kernel dropped the killed study's lock
    assert third.returncode == 0 and "0 estimated" in third.stdout, third.stderr
