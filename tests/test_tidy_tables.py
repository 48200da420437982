"""The per-instance tables carry the instance's conditions: llc.csv, geometry.csv and
transitions.csv can be grouped by activation, sparsity, seed, ... without a merge, and
summary.csv has one row per condition. Checked on a real run (train -> llc -> analyze through
the CLI) against instances.csv, the registry."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pandas as pd
import pytest

from devtms.llc.params import LLCParams
from devtms.llc.table import read_llc_table
from devtms.store import LLC_CSV, RunDir

from .conftest import STUDY, after_stages, run_cli, trained_run

# 2 activations x 2 sparsities x 2 seeds = 8 instances on sparse data
SWEEP = STUDY.but(name="tidy", data={"kind": "sparse-uniform", "sparsity": [0.5, 0.9],
                                     "n_samples": 100})
PER_INSTANCE = ("llc.csv", "geometry.csv", "transitions.csv")


@pytest.fixture(scope="module")
def studied(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tidy")
    return after_stages(trained_run(root, SWEEP), root / "studied", "llc", "analyze")


@pytest.mark.parametrize("name", PER_INSTANCE)
def test_every_row_carries_its_instances_conditions_right_after_instance(studied, name):
    instances = pd.read_csv(studied / "instances.csv")
    conditions = list(instances.columns[1:])
    table = pd.read_csv(studied / name)
    assert len(table) > 0
    assert list(table.columns[: 1 + len(conditions)]) == ["instance", *conditions]
    expected = instances.set_index("instance").loc[table["instance"], conditions]
    pd.testing.assert_frame_equal(table[conditions].reset_index(drop=True),
                                  expected.reset_index(drop=True))


def test_llc_csv_groups_by_activation_and_sparsity_without_a_merge(studied):
    llc = pd.read_csv(studied / "llc.csv")
    assert {"setting", "llc_seed", "llc_n_samples"} <= set(llc.columns)
    means = llc.groupby(["activation", "sparsity"])["llc_mean"].mean()
    # the oracle: the same means through the merge every analysis needed before
    instances = pd.read_csv(studied / "instances.csv")
    merged = llc[["instance", "llc_mean"]].merge(instances, on="instance")
    oracle = merged.groupby(["activation", "sparsity"])["llc_mean"].mean()
    assert len(means) == 4
    pd.testing.assert_series_equal(means, oracle)
    assert llc.groupby("seed")["instance"].nunique().to_dict() == {0: 4, 1: 4}


def test_summary_has_one_row_per_condition_with_its_columns(studied):
    summary = pd.read_csv(studied / "summary.csv")
    instances = pd.read_csv(studied / "instances.csv")
    keys = [c for c in instances.columns[1:] if c != "seed"]
    assert list(summary.columns[: len(keys)]) == keys
    expected = instances[keys].drop_duplicates().reset_index(drop=True)
    pd.testing.assert_frame_equal(summary[keys], expected)
    assert summary["n_instances"].tolist() == [2, 2, 2, 2]


def test_reruns_of_llc_and_analyze_leave_the_tables_as_they_are(studied, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(studied, run)
    before = {n: (run / n).read_bytes() for n in (*PER_INSTANCE, "summary.csv")}
    for stage in ("llc", "analyze"):
        result = run_cli(stage, run)
        assert result.returncode == 0, result.stderr
    assert {n: (run / n).read_bytes() for n in before} == before


def test_an_llc_csv_of_the_earlier_layout_is_read_and_resumed(studied, tmp_path):
    """Written before the conditions were added: no conditions, the SGLD seed and LLC dataset
    size named `seed` and `n_samples`, no `precond` (plain SGLD). Its estimates count as done,
    and `devtms llc` writes it again in this layout."""
    run = tmp_path / "run"
    shutil.copytree(studied, run)
    new = pd.read_csv(run / LLC_CSV)
    conditions = list(pd.read_csv(run / "instances.csv").columns[1:])
    old = new.drop(columns=[*conditions, "precond"]).rename(
        columns={"llc_seed": "seed", "llc_n_samples": "n_samples"})
    old.to_csv(run / LLC_CSV, index=False, lineterminator="\n")
    traces = sorted(p.name for p in (run / "llc_traces").iterdir())
    for stage in ("llc", "analyze"):
        result = run_cli(stage, run)
        assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (run / "llc_traces").iterdir()) == traces  # nothing recomputed
    assert (run / LLC_CSV).read_bytes() == (studied / LLC_CSV).read_bytes()  # this layout
    table = read_llc_table(RunDir.open(run))
    assert table["llc_seed"].tolist() == new["llc_seed"].tolist()
    assert table[conditions].reset_index(drop=True).equals(new[conditions])


def test_setting_ids_are_those_of_the_earlier_column_names():
    """The id hashes the setting under the names llc.csv used before (seed, n_samples)."""
    params = LLCParams(eps=1e-3, gamma=100.0, n_beta=14.4, chains=4, draws=100, burnin=50,
                       batch_size=50, seed=7, n_samples=100)
    earlier = dict(engine="batched", eps=1e-3, gamma=100.0, n_beta=14.4, num_chains=4,
                   num_draws=100, burnin=50, batch_size=50, seed=7, n_samples=100,
                   loss_reduction="sum")
    oracle = hashlib.blake2b(repr(sorted(earlier.items())).encode(), digest_size=5).hexdigest()
    assert params.tag("batched") == oracle
    assert params.identity("batched")["llc_seed"] == 7
