"""Damaged or hostile run files are detected and named; nothing executes code from a run."""

import json
import os
import pickle
import signal
import subprocess
import sys
import time

import pytest
import torch

from devtms.errors import RunDirError
from devtms.store import RunDir, load_checkpoint_file

from .conftest import run_cli


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from .conftest import TINY_TOML

    root = tmp_path_factory.mktemp("safety")
    config = root / "tiny.toml"
    config.write_text(TINY_TOML)
    out = root / "run"
    assert run_cli("train", config, "--out", out).returncode == 0
    return config, out


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


class _Payload:
    """Unpickling this object would create a marker file (it must never happen)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pickle_planted_as_a_checkpoint_is_rejected_without_running_it(trained, tmp_path):
    _, out = trained
    run_dir = _copy(out, tmp_path / "run")
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
    torch.testing.assert_close(RunDir.open(run_dir).load_checkpoint(100)["W"],
                               RunDir.open(out).load_checkpoint(100)["W"], rtol=0, atol=0)
    # a torch.save file (pickle inside a zip) is refused the same way
    torch.save({"W": torch.zeros(3)}, target)
    with pytest.raises(RunDirError, match="not a safetensors file"):
        load_checkpoint_file(target)


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_checkpoints_are_named_and_repaired_by_resume(trained, tmp_path, damage):
    _, out = trained
    run_dir = _copy(out, tmp_path / "run")
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
    repaired = load_checkpoint_file(target)
    original = load_checkpoint_file(out / "checkpoints" / target.name)
    assert repaired.keys() == original.keys()
    assert all(torch.equal(repaired[k], original[k]) for k in original)


def test_run_json_from_an_incompatible_version_is_refused(trained, tmp_path):
    _, out = trained
    run_dir = _copy(out, tmp_path / "run")
    meta = json.loads((run_dir / "run.json").read_text())
    meta["format_version"] = 99
    (run_dir / "run.json").write_text(json.dumps(meta))
    result = run_cli("train", run_dir, "--resume")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "format version 99" in result.stderr and "--force" in result.stderr


def test_a_second_writer_is_refused_while_the_first_runs(trained, tmp_path):
    config, _ = trained
    text = config.read_text().replace("steps = 300", "steps = 20000")
    long_config = tmp_path / "long.toml"
    long_config.write_text(text)
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


def test_no_run_file_is_a_pickle(trained):
    _, out = trained
    for path in out.rglob("*"):
        if path.is_file():
            head = path.read_bytes()[:2]
            assert head not in (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05", b"PK"), path


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
