"""SIGKILL at random moments, then rerun: nothing lost, nothing corrupt, same results."""

import torch

from devtms.store import load_checkpoint_file

from .conftest import run_cli
from .killing import integrity_problems, kill_repeatedly


def _same_run_files(a, b, names):
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_train_survives_ten_kills(tmp_path, tiny_config):
    tiny_config.write_text(tiny_config.read_text().replace("steps = 300", "steps = 2500"))
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    assert run_cli("train", tiny_config, "--out", reference).returncode == 0
    landed = kill_repeatedly(["train", tiny_config, "--out", killed, "--resume"], killed,
                             kills=10, seed=7, min_delay=0.3, max_delay=5.0)
    assert landed >= 8
    result = run_cli("train", tiny_config, "--out", killed, "--resume")
    assert result.returncode == 0, result.stderr
    assert not integrity_problems(killed)
    assert not list(killed.rglob(".*.tmp"))
    _same_run_files(reference, killed, ["train_log.csv", "instances.csv"])
    ref_ckpts = sorted(p.name for p in (reference / "checkpoints").iterdir())
    assert ref_ckpts == sorted(p.name for p in (killed / "checkpoints").iterdir())
    for name in ref_ckpts:
        a = load_checkpoint_file(reference / "checkpoints" / name)
        b = load_checkpoint_file(killed / "checkpoints" / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name
