"""The trainer: it learns, writes the run-directory contract, resumes exactly, and its
instances are independent (a shard trains exactly as it would in the whole batch)."""

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from devtms import model as tms
from devtms.config import config_from_dict, instance_table, load_config
from devtms.store import RunDir
from devtms.train import BatchTrainer, train_run

from .conftest import assert_runs_identical, run_cli, tiny_config


def test_cli_trains_and_writes_the_contract_files(tmp_path):
    toml = tiny_config().write(tmp_path / "tiny.toml")
    out = tmp_path / "run"
    result = run_cli("train", toml, "--out", out)
    assert result.returncode == 0, result.stderr
    meta = json.loads((out / "run.json").read_text())
    assert meta["format"] == "devtms-run" and meta["stages"]["train"]["done"] is True
    assert set(meta["versions"]) >= {"devtms", "torch", "devinterp"}
    instances = pd.read_csv(out / "instances.csv")
    assert list(instances.columns[:8]) == ["instance", "activation", "n_features", "n_hidden",
                                           "sparsity", "feature_probability", "importance_ratio",
                                           "seed"]
    assert len(instances) == 8
    config = load_config(toml)
    steps = sorted(int(p.stem[5:]) for p in (out / "checkpoints").glob("step_*.safetensors"))
    assert steps[0] == 0 and steps[-1] == 300 and {100, 200} <= set(steps)
    final = load_file(out / "checkpoints" / "step_00000300.safetensors")
    assert final["W"].shape == (8, 2, 5) and final["b"].shape == (8, 5)
    log = pd.read_csv(out / "train_log.csv")
    assert list(log.columns) == ["step", "instance", "loss"]
    assert set(steps) <= set(log["step"]) and len(log) == log["step"].nunique() * 8
    # it learns: every instance's loss falls from initialisation
    first = log[log.step == 0].set_index("instance")["loss"]
    last = log[log.step == 300].set_index("instance")["loss"]
    assert (last < 0.7 * first).all(), (first, last)
    assert config.train.steps == 300
    # no temporary files left behind
    assert not list(out.rglob("*.tmp"))


def test_logged_loss_is_the_training_set_loss_of_the_checkpoint(tiny_run):
    run = RunDir.open(tiny_run)
    trainer = BatchTrainer(run.config, run.instances)
    ckpt = run.load_checkpoint(100)
    log = run.read_table("train_log.csv", "train")
    expected = log[log.step == 100]["loss"].to_numpy()
    for i, name in enumerate(run.instances["activation"]):
        module = tms.TMS(ckpt["W"][i], ckpt["b"][i], name, trainer.importance[i])
        assert module.loss(trainer.eval_set[i]).item() == pytest.approx(expected[i], rel=1e-5)


def test_batched_training_equals_a_loop_of_single_models():
    config = tiny_config(train={"steps": 40}).config
    instances = instance_table(config)
    trainer = BatchTrainer(config, instances)
    W0, b0 = trainer.W.detach().clone(), trainer.b.detach().clone()
    batches = [trainer.batches.batch(s) for s in range(40)]
    for _ in range(40):
        trainer.train_step()
    for i, name in enumerate(instances["activation"]):
        module = tms.TMS(W0[i], b0[i], name, trainer.importance[i])
        opt = torch.optim.SGD(module.parameters(), lr=0.1, momentum=0.9)
        for s in range(40):
            opt.zero_grad()
            module.loss(batches[s][i]).backward()
            opt.step()
        torch.testing.assert_close(module.W.detach(), trainer.W.detach()[i], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(module.b.detach(), trainer.b.detach()[i], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_a_shard_of_instances_trains_exactly_as_in_the_whole_batch(optimizer):
    config = tiny_config(train={"steps": 60, "optimizer": optimizer, "lr": 0.05,
                                "momentum": 0.9 if optimizer == "sgd" else 0.0,
                                "lr_schedule": "cosine"}).config
    instances = instance_table(config)
    whole = BatchTrainer(config, instances)
    shard = BatchTrainer(config, instances.iloc[3:6])
    for _ in range(60):
        whole.train_step()
        shard.train_step()
    torch.testing.assert_close(shard.W.detach(), whole.W.detach()[3:6], rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # a SIGKILL mid-training and two 3000-step runs: ~15 s
def test_resume_after_a_kill_gives_identical_weights(tmp_path):
    toml = tiny_config(train={"steps": 3000}).write(tmp_path / "tiny.toml")
    reference, killed = tmp_path / "ref", tmp_path / "killed"
    assert run_cli("train", toml, "--out", reference).returncode == 0
    proc = subprocess.Popen([sys.executable, "-m", "devtms.cli", "train", str(toml),
                             "--out", str(killed)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    ckpts = killed / "checkpoints"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(ckpts.glob("step_*"))) < 8:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "checkpoints" / "step_00003000.safetensors").exists()
    assert run_cli("train", toml, "--out", killed).returncode == 2  # needs --resume
    result = run_cli("train", toml, "--out", killed, "--resume")
    assert result.returncode == 0, result.stderr
    assert_runs_identical(reference, killed, files=["checkpoints", "train_log.csv"])


def test_diverging_instances_are_flagged_and_the_others_unaffected(tmp_path):
    raw = {
        "name": "blowup",
        "model": {"n_features": 5, "n_hidden": 2, "activations": ["relu", "exp"]},
        "data": {"kind": "one-hot-binary", "n_samples": 100},
        "train": {"steps": 200, "batch_size": 20, "optimizer": "sgd", "lr": 1.0,
                  "init_bias_std": 20.0, "seeds": [0]},
        "checkpoints": {"log_points": 5},
    }
    run = RunDir.create(tmp_path / "run", config_from_dict(raw),
                        instance_table(config_from_dict(raw)))
    train_run(run)
    assert run.stage("train")["diverged"] == [1]  # exp blows up; relu does not
    # relu's weights are what a relu-only run gives
    alone = dict(raw, model={**raw["model"], "activations": ["relu"]})
    run2 = RunDir.create(tmp_path / "alone", config_from_dict(alone),
                         instance_table(config_from_dict(alone)))
    train_run(run2)
    assert torch.equal(run.load_checkpoint(200)["W"][0], run2.load_checkpoint(200)["W"][0])


def test_existing_runs_are_protected(tiny_run, tmp_path):
    toml = tiny_config().write(tmp_path / "tiny.toml")
    out = shutil.copytree(tiny_run, tmp_path / "run")  # trained by `devtms train` from that config
    again = run_cli("train", toml, "--out", out)
    assert again.returncode == 2 and "already holds a run (complete)" in again.stderr
    assert run_cli("train", toml, "--out", out, "--resume").returncode == 0
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    refused = run_cli("train", toml, "--out", other)
    assert refused.returncode == 2 and "not a devtms run" in refused.stderr
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]


def test_shards_give_the_same_numbers_in_process_and_through_an_executor(tmp_path):
    """The shards, not the executor, fix the numbers: lockstep in-process training and one
    task per shard per checkpoint interval write identical checkpoints and logs."""
    from devtms.executors import LocalExecutor

    config = tiny_config(train={"steps": 120, "shard_size": 3}).config
    runs = []
    for name, executor in (("lockstep", None), ("tasks", LocalExecutor())):
        run = RunDir.create(tmp_path / name, config, instance_table(config))
        assert train_run(run, executor=executor) == 120
        runs.append(run)
    assert runs[0].checkpoint_steps() == runs[1].checkpoint_steps()
    assert_runs_identical(*runs, files=["checkpoints", "train_log.csv"])


def test_training_compiles_only_when_it_repays_the_compile():
    from devtms.compiling import compile_available
    from devtms.train import use_compile

    assert use_compile(load_config("activations27")) == compile_available()  # 29 x 20,000 steps
    assert not use_compile(load_config("quick"))  # 3,000 steps: the compile would not pay
    assert not use_compile(load_config("chen2023"))  # one activation
    full = load_config("activations27")
    off = dataclasses.replace(full, train=dataclasses.replace(full.train, compile="off"))
    assert not use_compile(off)
    assert use_compile(tiny_config(train={"compile": "on"}).config) == compile_available()


@pytest.mark.slow
def test_compiled_training_matches_eager_and_resumes_exactly():
    """torch.compile's kernel (train.compile = "on") trains as the eager ops do (to rounding),
    resumes bit-identically, and a shard trains as in the whole batch. ~15 s cold."""
    config = tiny_config(train={"steps": 40, "compile": "on"}).config
    instances = instance_table(config)
    compiled = BatchTrainer(config, instances)
    eager = BatchTrainer(tiny_config(train={"steps": 40}).config, instances)
    assert compiled.compiled and not eager.compiled
    half = BatchTrainer(config, instances)
    shard = BatchTrainer(config, instances.iloc[3:6])
    for step in range(40):
        compiled.train_step()
        eager.train_step()
        shard.train_step()
        if step < 20:
            half.train_step()
    torch.testing.assert_close(compiled.W, eager.W, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(shard.W, compiled.W[3:6], rtol=1e-5, atol=1e-6)
    resumed = BatchTrainer(config, instances)
    resumed.load_state(half.state_tensors(), 20)
    for _ in range(20):
        resumed.train_step()
    assert torch.equal(resumed.W, compiled.W) and torch.equal(resumed.b, compiled.b)


@pytest.mark.slow
def test_compiled_kernels_are_kept_in_the_users_cache_directory(tmp_path):
    """The compile cache leaves the temp directory (emptied at boot on many systems) for
    $XDG_CACHE_HOME/devtms/torchinductor, and TORCHINDUCTOR_CACHE_DIR, where set, wins.
    Two cold compiles: ~25 s."""
    from devtms.compiling import compile_available

    if not compile_available():
        pytest.skip("torch.compile needs a C++ compiler")
    program = ("import os, torch\n"
               "from devtms.compiling import compile_once\n"
               "f = compile_once('test-cache', lambda: torch.compile(lambda x: x * 2 + 1))\n"
               "assert f(torch.ones(3)).tolist() == [3.0, 3.0, 3.0]\n"
               "print(os.environ['TORCHINDUCTOR_CACHE_DIR'])\n")
    env = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"}
    env["XDG_CACHE_HOME"] = str(tmp_path / "xdg")
    out = subprocess.run([sys.executable, "-c", program], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    kept = tmp_path / "xdg" / "devtms" / "torchinductor"
    assert out.stdout.strip() == str(kept)
    assert any(kept.rglob("*.so")), "no compiled kernel in the cache directory"

    env["TORCHINDUCTOR_CACHE_DIR"] = str(tmp_path / "chosen")
    out = subprocess.run([sys.executable, "-c", program], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(tmp_path / "chosen")
    assert any((tmp_path / "chosen").rglob("*.so"))


def test_the_kernel_cache_directory_follows_xdg_and_ignores_a_relative_one(tmp_path, monkeypatch):
    from devtms.compiling import CACHE_ENV, kernel_cache_dir

    monkeypatch.delenv(CACHE_ENV, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert kernel_cache_dir() == tmp_path / "xdg" / "devtms" / "torchinductor"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")  # the XDG spec: ignore it
    assert kernel_cache_dir() == tmp_path / "home" / ".cache" / "devtms" / "torchinductor"
    assert kernel_cache_dir().is_dir()
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "chosen"))
    assert kernel_cache_dir() == tmp_path / "chosen"
