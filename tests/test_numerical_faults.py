"""Numerical faults end to end: instances whose training diverges, SGLD chains that blow up.

The affected instances and estimates are flagged in the tables (run.json, llc.csv, geometry.csv,
summary.csv) and in the report, every command succeeds, and everything else is bit for bit what
it would be without the faulty instance or chain.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from devtms.store import load_checkpoint_file

from .conftest import STUDY, run_cli
from .forkcli import run_many

# exp overflows at this learning rate (instance 2, seed 0, diverges); relu trains normally.
# Instances train in shards of 2 (relu, exp): the numbers of a shard depend on the shard only
# (a batch of another composition may differ in the last float32 bit, diverged or not), so the
# relu shard must be bit for bit the run without exp.
FAULTY = STUDY.but(model={"activations": ["relu", "exp"]}, train={"lr": 3.0, "shard_size": 2})
HEALTHY = FAULTY.but(model={"activations": ["relu"]})  # the same run without the exp instances


@pytest.fixture(scope="module")
def studies(tmp_path_factory) -> tuple[Path, Path]:
    """The faulty study and the same study without its exp instances, run side by side."""
    root = tmp_path_factory.mktemp("faults")
    FAULTY.write(root / "faulty.toml")
    HEALTHY.write(root / "healthy.toml")
    results = run_many([(["study", "faulty.toml", "--out", "faulty"], root),
                        (["study", "healthy.toml", "--out", "healthy"], root)])
    for result in results:
        assert result.returncode == 0, result.stderr
    return root / "faulty", root / "healthy"


CONFIG_EPS = HEALTHY.config.llc.eps  # the study's own setting, beside the wild one


def _rows(table: pd.DataFrame, instances) -> list[str]:
    """Rows of a table as CSV text, for bit-for-bit comparison."""
    return table[table["instance"].isin(instances)].to_csv(index=False).splitlines()


def _lines(path: Path, instances) -> list[str]:
    """The lines of a run CSV (instance first) for these instances, as written."""
    lines = path.read_text().splitlines()[1:]
    return [line for line in lines if int(line.split(",")[0]) in instances]


def test_diverged_training_is_flagged_and_leaves_the_other_instances_bit_identical(studies):
    faulty, healthy = studies
    diverged = json.loads((faulty / "run.json").read_text())["stages"]["train"]["diverged"]
    assert diverged == [2]  # exp, seed 0; exp seed 1 survives at this lr
    relu = [0, 1]
    assert json.loads((healthy / "run.json").read_text())["stages"]["train"]["diverged"] == []
    for name in sorted(p.name for p in (healthy / "checkpoints").iterdir()):
        a = load_checkpoint_file(faulty / "checkpoints" / name)
        b = load_checkpoint_file(healthy / "checkpoints" / name)
        for key in ("W", "b"):
            assert torch.equal(a[key][relu], b[key]), (name, key)
    final = load_checkpoint_file(sorted((faulty / "checkpoints").iterdir())[-1])
    assert not torch.isfinite(final["W"][2]).all() and torch.isfinite(final["W"][[0, 1, 3]]).all()
    log = pd.read_csv(faulty / "train_log.csv")[["instance", "step", "loss"]]
    other = pd.read_csv(healthy / "train_log.csv")[["instance", "step", "loss"]]
    assert _rows(log, relu) == _rows(other, relu)
    assert not np.isfinite(log[log["instance"] == 2]["loss"].iloc[-1])


def test_llc_analyze_flag_the_diverged_instance_and_match_the_healthy_run_elsewhere(studies):
    faulty, healthy = studies
    llc = [pd.read_csv(r / "llc.csv") for r in (faulty, healthy)]
    assert _lines(faulty / "llc.csv", [0, 1]) == _lines(healthy / "llc.csv", [0, 1])  # bit for bit
    bad = llc[0][(llc[0]["instance"] == 2) & ~llc[0]["healthy"]]
    assert len(bad) and bad["reason"].str.contains("training diverged").any()
    last = llc[0][(llc[0]["instance"] == 2) & (llc[0]["step"] == llc[0]["step"].max())].iloc[0]
    assert not last["healthy"] and np.isnan(last["llc_mean"])
    assert _lines(faulty / "geometry.csv", [0, 1]) == _lines(healthy / "geometry.csv", [0, 1])
    geometry = pd.read_csv(faulty / "geometry.csv")
    final = geometry[(geometry["instance"] == 2)].iloc[-1]
    assert final["k_gon_label"] == "diverged"
    summary = pd.read_csv(faulty / "summary.csv").set_index("activation")
    assert summary.loc["exp", "n_diverged"] == 1 and summary.loc["relu", "n_diverged"] == 0
    assert np.isfinite(summary.loc["exp", "final_loss_mean"])  # over the surviving seed


def sgld_rows(path: Path) -> pd.DataFrame:
    """llc.csv's SGLD estimates (not the self-check's reference estimates beside them)."""
    table = pd.read_csv(path)
    return table[table["engine"] == "batched"]


def test_the_report_names_the_diverged_instance_and_the_flagged_estimates(studies):
    faulty, _ = studies
    html = (faulty / "report" / "index.html").read_text()
    assert "1 training instance(s) diverged" in html
    flagged = int((~sgld_rows(faulty / "llc.csv")["healthy"]).sum())
    assert f"{flagged} of 32 LLC estimates are flagged unhealthy" in html
    assert "its training diverged" in html


def test_sgld_that_diverges_on_some_chains_is_flagged_and_spares_the_rest(studies, tmp_path):
    """A huge eps blows up chains of some estimates; the command succeeds, llc.csv and the
    report flag exactly those, and the other estimates are the numbers they would be alone."""
    _, healthy = studies
    run, alone = tmp_path / "run", [tmp_path / "alone0", tmp_path / "alone1"]
    for copy in (run, *alone):
        shutil.copytree(healthy, copy)
    args = ["--eps", "0.1", "--gamma", "100", "--steps", "100,200"]
    # the whole job, and each instance's estimates alone (in other chunks), side by side
    result, *alone_results = run_many(
        [(["llc", run, *args], tmp_path)]
        + [(["llc", copy, *args, "--instances", str(i)], tmp_path) for i, copy in enumerate(alone)])
    assert result.returncode == 0, result.stderr
    assert all(r.returncode == 0 for r in alone_results)
    warnings = [line for line in result.stderr.splitlines() if "unhealthy" in line]
    assert len(warnings) == 1, result.stderr  # one line (the self-check may add its own)
    table = sgld_rows(run / "llc.csv")
    wild = table[np.isclose(table["eps"], 0.1)]
    assert len(wild) == 4
    flagged = wild[wild["state"] == "diverged"]
    assert len(flagged) and flagged["reason"].str.contains("diverged: [12] of 2 chains").all()
    assert (flagged["num_diverged"] > 0).all() and not flagged["healthy"].any()
    # exactly those: no estimate of the config's eps is diverged (its short chains may be
    # honestly unconverged, but none blew up)
    assert (wild["num_diverged"] > 0).sum() == len(flagged)
    assert (table.loc[np.isclose(table["eps"], CONFIG_EPS), "state"] != "diverged").all()
    assert (table.loc[np.isclose(table["eps"], CONFIG_EPS), "num_diverged"] == 0).all()
    assert wild.loc[wild["num_diverged"] == 2, "llc_mean"].isna().all()
    # the new rows leave the old ones as they were, and each estimate alone gives the same row
    old = sgld_rows(healthy / "llc.csv")
    assert _rows(table[np.isclose(table["eps"], CONFIG_EPS)], [0, 1]) == _rows(old, [0, 1])
    for i, copy in enumerate(alone):
        mine = sgld_rows(copy / "llc.csv")
        assert _rows(mine[np.isclose(mine["eps"], 0.1)], [i]) == _rows(wild, [i])
    report = run_cli("report", run)
    assert report.returncode == 0, report.stderr
    html = (run / "report" / "index.html").read_text()
    # the health section counts the unhealthy estimates of every setting in llc.csv
    unhealthy = int((~table["healthy"]).sum())
    assert unhealthy >= len(flagged)
    assert f"{unhealthy} of {len(table)} LLC estimates are flagged unhealthy" in html
    assert "2 of 2 chains" in html or "1 of 2 chains" in html


def test_in_one_batch_a_diverging_instance_leaves_the_others_finite_and_unchanged():
    """Unsharded, the batch shape may move the last float32 bit, but nothing more."""
    from devtms.config import instance_table
    from devtms.train import BatchTrainer

    def train(activations):
        config = FAULTY.but(model={"activations": activations}, train={"shard_size": 0}).config
        trainer = BatchTrainer(config, instance_table(config))
        for _ in range(config.train.steps):
            trainer.train_step()
        return trainer.W.detach(), trainer.b.detach()

    (W, b), (W_relu, b_relu) = train(["relu", "exp"]), train(["relu"])
    assert not torch.isfinite(W[2]).all()
    torch.testing.assert_close(W[:2], W_relu, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(b[:2], b_relu, rtol=1e-5, atol=1e-6)
