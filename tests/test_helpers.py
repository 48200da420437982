"""The test helpers themselves: tiny_config's dict, RunConfig and TOML agree, and
assert_runs_identical fails on any difference, naming the first differing file."""

from __future__ import annotations

import tomllib

import pytest
import torch

from devtms.config import instance_table, load_config
from devtms.store import checkpoint_bytes

from .conftest import STUDY, TINY, assert_runs_identical, tiny_config


def test_tiny_config_defaults_are_the_tiny_study():
    config = tiny_config().config
    assert len(instance_table(config)) == 8 and config.train.steps == 300
    assert tiny_config().toml.startswith('name = "tiny"\n\n[model]\nn_features = 5\n')


@pytest.mark.parametrize("tiny", [
    tiny_config(),
    STUDY,
    STUDY.but(llc={"draws": 300, "eps": 1e-05}, train={"compile": "off", "lr": 0.05}),
    tiny_config(name='a "quoted" name', model={"bias": False}, data={"kind": None}),
    tiny_config(model=None, modle={"n_features": 5}),
], ids=["tiny", "study", "study-but", "edits", "renamed-section"])
def test_the_dict_and_the_toml_are_the_same_config(tiny, tmp_path):
    assert tomllib.loads(tiny.toml) == tiny.raw
    if "modle" not in tiny.raw:
        assert load_config(tiny.write(tmp_path / "c.toml")) == tiny.config


def test_overrides_replace_keys_remove_them_and_leave_the_base_alone():
    raw = tiny_config(train={"steps": 40, "momentum": None}, llc=None, extra={"k": 1}).raw
    assert raw["train"]["steps"] == 40 and "momentum" not in raw["train"]
    assert raw["train"]["lr"] == TINY["train"]["lr"]  # the rest of the section is kept
    assert "llc" not in raw and raw["extra"] == {"k": 1}
    raw["model"]["n_features"] = 99  # a copy: editing it changes nothing
    assert tiny_config().raw == TINY and STUDY.raw["model"]["n_features"] == 5
    assert STUDY.but(train={"steps": 7}).raw["model"]["activations"] == ["relu", "tanh"]


def _run(path, *, log="step,loss\n0,1.0\n1,0.5\n", W=(1.0, 2.0)):
    (path / "checkpoints").mkdir(parents=True)
    (path / "train_log.csv").write_text(log)
    (path / "checkpoints" / "step_00000000.safetensors").write_bytes(
        checkpoint_bytes({"W": torch.tensor(W), "b": torch.zeros(2)}, {"step": "0"}))
    return path


def test_identical_runs_pass_and_nan_equals_nan(tmp_path):
    nan = (1.0, float("nan"))
    a, b = _run(tmp_path / "a", W=nan), _run(tmp_path / "b", W=nan)
    assert_runs_identical(a, b, files=["train_log.csv", "checkpoints"])


@pytest.mark.parametrize("change, message", [
    (dict(log="step,loss\n0,1.0\n1,0.4\n"), "runs differ at train_log.csv: line 3: '1,0.5' vs '1,0.4'"),
    (dict(log="step,loss\n0,1.0\n"), "line 3: '1,0.5' vs '<end of file>'"),
    (dict(W=(1.0, 2.5)), "runs differ at checkpoints: step_00000000.safetensors: W: different"),
    (dict(W=(1.0, float("nan"))), "W: NaN in different places"),
])
def test_a_difference_fails_naming_the_first_differing_file(tmp_path, change, message):
    a, b = _run(tmp_path / "a"), _run(tmp_path / "b", **change)
    with pytest.raises(AssertionError, match="runs differ at") as info:
        assert_runs_identical(a, b, files=["train_log.csv", "checkpoints"])
    assert message in str(info.value)


def test_a_missing_or_extra_file_fails(tmp_path):
    a, b = _run(tmp_path / "a"), _run(tmp_path / "b")
    (b / "checkpoints" / "step_00000001.safetensors").write_bytes(
        (b / "checkpoints" / "step_00000000.safetensors").read_bytes())
    with pytest.raises(AssertionError, match=r"checkpoints: different files: .*step_00000001"):
        assert_runs_identical(a, b, files=["train_log.csv", "checkpoints"])
    with pytest.raises(AssertionError, match=r"runs differ at llc.csv: .* does not exist"):
        assert_runs_identical(a, b, files=["llc.csv"])
