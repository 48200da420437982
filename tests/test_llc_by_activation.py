"""A setting per activation: [llc.by_activation.NAME] (or `calibrate --auto`) gives one
activation's estimates their own hyperparameters. `devtms llc` computes each activation at its
own setting, with the same numbers as a job asking for that setting alone; analyze and report
read each activation's rows at its own setting; `--setting ID` still reads one setting for all.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from devtms import llc
from devtms.llc.params import LLCParams
from devtms.store import RunDir

from .conftest import STUDY, run_cli, trained_run

CONFIG = STUDY.but(name="by-activation", llc={"chains": 4, "draws": 60, "burnin": 20})
OWN = {"eps": 0.001, "draws": 80}  # tanh's own values
OWN_TOML = "\n[llc.by_activation.tanh]\neps = 0.001\ndraws = 80\n"


def settings_of(config_text: str, tmp_path: Path) -> llc.ActivationSettings:
    path = tmp_path / "config.toml"
    path.write_text(config_text)
    from devtms.config import load_config

    return llc.config_settings(load_config(path))


def test_each_row_of_llc_csv_is_read_at_its_own_activations_setting(tmp_path):
    """ActivationSettings.rows keeps an estimate when its setting is its activation's, so a
    relu row at tanh's setting (or a tanh row at the default) is not read; groups splits the
    instances by setting; the id names the default and, after "+", the overrides."""
    settings = settings_of(CONFIG.toml + OWN_TOML, tmp_path)
    default, tanh = settings.default.id, settings.of("tanh").id
    assert default != tanh and settings.id.startswith(default + "+")
    instances = pd.DataFrame({"instance": [0, 1, 2, 3],
                              "activation": ["relu", "relu", "tanh", "tanh"]})
    table = pd.DataFrame({"instance": [0, 0, 1, 2, 2, 3],
                          "setting": [default, tanh, default, tanh, default, tanh]})
    kept = settings.rows(table, instances)
    assert list(zip(kept["instance"], kept["setting"], strict=True)) == [
        (0, default), (1, default), (2, tanh), (3, tanh)]
    assert [(s.id, ids) for s, ids in settings.groups(instances)] == [(default, [0, 1]),
                                                                     (tanh, [2, 3])]
    assert "tanh: " in settings.describe() and "eps 0.001" in settings.describe()
    alone = llc.ActivationSettings(settings.default)
    assert alone.id == default and len(alone.rows(table, instances)) == 3


@pytest.mark.slow  # train, three llc jobs, two analyses and a report: ~40 s at one thread
def test_llc_computes_each_activation_at_its_own_setting_and_analyze_and_report_read_them(
        tmp_path):
    config = tmp_path / "config.toml"
    config.write_text(CONFIG.toml + OWN_TOML)
    run = tmp_path / "run"
    for args in (("train", config, "--out", run), ("llc", run)):
        result = run_cli(*args)
        assert result.returncode == 0, result.stderr
    table = llc.read_llc_table(RunDir.open(run))
    table = table[table["engine"] == "batched"]  # not the self-check's reference estimates
    settings = llc.active_setting(RunDir.open(run))
    for activation, rows in table.groupby("activation"):
        params = settings.of(activation).params
        assert set(rows["setting"]) == {params.tag("batched")}
        assert set(rows["eps"]) == {params.eps} and set(rows["num_draws"]) == {params.draws}
    tanh = table[table["activation"] == "tanh"]
    assert set(tanh["eps"]) == {OWN["eps"]} and set(tanh["num_draws"]) == {OWN["draws"]}
    assert table["activation"].nunique() == 2 and len(table) == 4 * len(set(table["step"]))
    meta = json.loads((run / "run.json").read_text())
    assert meta["stages"]["llc"]["done"]

    # the oracle: a job asking for tanh's values alone, on tanh's instances, gives its numbers
    alone = tmp_path / "alone"
    shutil.copytree(run, alone)
    (alone / "llc.csv").unlink()
    shutil.rmtree(alone / "llc_traces")
    ids = ",".join(str(i) for i in sorted(set(tanh["instance"])))
    result = run_cli("llc", alone, "--instances", ids, "--eps", str(OWN["eps"]),
                     "--draws", str(OWN["draws"]))
    assert result.returncode == 0, result.stderr
    direct = llc.read_llc_table(RunDir.open(alone))
    direct = direct[direct["engine"] == "batched"]
    assert direct[["instance", "step", "setting", "llc_mean", "rhat"]].reset_index(drop=True) \
        .equals(tanh[["instance", "step", "setting", "llc_mean", "rhat"]].reset_index(drop=True))

    # analyze reads each activation at its own setting; --setting the default reads relu only
    result = run_cli("analyze", run)
    assert result.returncode == 0, result.stderr
    record = json.loads((run / "run.json").read_text())["stages"]["analyze"]["llc_setting"]
    assert record["id"] == settings.id and record["by_activation"]["tanh"]["eps"] == OWN["eps"]
    result = run_cli("analyze", run, "--setting", settings.default.id)
    assert result.returncode == 0, result.stderr
    record = json.loads((run / "run.json").read_text())["stages"]["analyze"]["llc_setting"]
    assert record["id"] == settings.default.id and "by_activation" not in record

    result = run_cli("report", run)
    assert result.returncode == 0, result.stderr
    assert "tanh: " + settings.of("tanh").id in result.stdout + result.stderr
    assert LLCParams.of_run(RunDir.open(run).config) == settings.default.params

    # a flag replaces one value in each activation's setting; --activate keeps them apart
    result = run_cli("llc", run, "--steps", "last", "--draws", "30", "--activate")
    assert result.returncode == 0, result.stderr
    active = llc.active_setting(RunDir.open(run))
    assert active.default.params == dataclasses.replace(settings.default.params, draws=30)
    assert active.of("tanh").params == dataclasses.replace(settings.of("tanh").params, draws=30)
    assert active.source == "devtms llc --activate"
    rows = llc.read_llc_table(RunDir.open(run))
    rows = rows[rows["num_draws"] == 30]
    assert dict(zip(rows["activation"], rows["eps"], strict=True)) == {
        "relu": settings.default.params.eps, "tanh": OWN["eps"]}


@pytest.mark.slow  # two candidates, their checks, and tanh's four alone: ~40 s at one thread
def test_calibrate_auto_gives_an_activation_unhealthy_at_the_choice_its_own_setting(tmp_path):
    """At eps 0.1 and gamma 1 this run's relu estimates are healthy and its tanh estimates above
    d/2 (implausible). With a health threshold of 50% the run-wide choice is eps 0.1, and tanh,
    calibrated alone, gets the next candidate, eps 0.01, which passes all four checks on it
    (measured: R-hat <= 1.014, doubling -1.4%, gamma x 3 -14%, / 3 +11%, eps / 2 -2.6%). The
    evidence says which rows are whose, and run.json's active setting carries tanh's own."""
    from devtms.calibrate.auto import ALL, GROUP_CHECKS, Criteria, build_auto_job, run_auto

    run = trained_run(tmp_path, STUDY.but(name="auto-by-activation",
                                          llc={"chains": 8, "draws": 200, "burnin": 100}))
    job = build_auto_job(RunDir.open(run), instances="0-3", eps_grid=[0.1, 0.01],
                         gamma_grid=[1.0])
    job.criteria = Criteria(healthy_min=0.5)
    lines: list[str] = []
    result = run_auto(RunDir.open(run), job, lines.append)
    assert result.chosen is not None and result.failing == ["tanh"] and not result.unresolved
    assert result.chosen.default.params.eps == 0.1
    assert set(result.chosen.by_activation) == {"tanh"}
    own = result.chosen.of("tanh").params
    assert dataclasses.replace(own, eps=0.1) == result.chosen.default.params
    assert own.eps == 0.01 and lines[-1].startswith("  tanh alone: [1]") and "PASS" in lines[-1]
    evidence = pd.read_csv(run / "calibration" / "auto.csv")
    mine = evidence[evidence["group"] == "tanh"]
    assert list(mine["check"]) == ["health", "stability", "localization", "localization",
                                   "step size"] and list(GROUP_CHECKS)[-1] == "step size"
    assert mine["passed"].all() and (mine["estimates"] == 2).all()
    assert (evidence.loc[evidence["group"] == ALL, "estimates"] == 4).all()
    record = json.loads((run / "run.json").read_text())["llc_setting"]
    assert record["id"] == result.chosen.id
    assert record["by_activation"]["tanh"]["params"]["eps"] == 0.01
    assert llc.active_setting(RunDir.open(run)) == result.chosen
