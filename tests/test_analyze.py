"""`devtms analyze` end to end on a small chen2023-like run trained through the CLI."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from devtms import cli, geometry, transitions
from devtms.analyze import SUMMARY_COLUMNS
from devtms.llc import active_setting as llc_active_setting
from devtms.store import RunDir

# Chen et al.'s setup shortened: 6 features, 2 hidden, single-feature data, N = 1000, SGD
# lr 0.1 momentum 0.9, xavier init (the chen2023 preset's [train]); 1000 steps is past the
# last k-gon change of every seed. Seed 3 passes 4-gon -> 5-gon -> 6-gon.
CONFIG = """\
name = "chen-short"
[model]
n_features = 6
n_hidden = 2
activations = ["relu"]
[data]
kind = "single-feature"
n_samples = 1000
[train]
steps = 1000
batch_size = 100
optimizer = "sgd"
lr = 0.1
momentum = 0.9
init = "xavier"
seeds = [0, 1, 2, 3, 4, 5, 6, 7]
[checkpoints]
log_points = 40
"""
OUTPUTS = ["geometry.csv", "transitions.csv", "summary.csv", "run.json"]


def devtms(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TQDM_DISABLE": "1"}
    return subprocess.run([sys.executable, "-m", "devtms.cli", *args], capture_output=True,
                          text=True, env=env, timeout=600)


def devtms_in_process(capsys, *args: str) -> tuple[int, str, str]:
    """The same CLI in this process (no interpreter start-up): -> (status, stdout, stderr)"""
    status = cli.main(list(args))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("analyze")
    (root / "chen.toml").write_text(CONFIG)
    out = root / "run"
    result = devtms("train", str(root / "chen.toml"), "--out", str(out))
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def analyzed(trained, tmp_path_factory) -> tuple[Path, str]:
    run = tmp_path_factory.mktemp("analyzed") / "run"
    shutil.copytree(trained, run)
    result = devtms("analyze", str(run))
    assert result.returncode == 0, result.stderr
    return run, result.stdout


def snapshot(run: Path) -> dict[str, bytes]:
    return {name: (run / name).read_bytes() for name in OUTPUTS}


def test_analyze_writes_the_three_tables_with_their_documented_columns(analyzed):
    run, _ = analyzed
    conditions = list(pd.read_csv(run / "instances.csv").columns[1:])  # all but `instance`
    geo = pd.read_csv(run / "geometry.csv")
    assert list(geo.columns) == ["instance", *conditions, *geometry.GEOMETRY_COLUMNS[1:]]
    steps = RunDir.open(run).checkpoint_steps()
    assert len(geo) == 8 * len(steps)  # every (instance, checkpoint)
    assert set(zip(geo["instance"], geo["step"], strict=True)) == {(i, s) for i in range(8)
                                                                   for s in steps}
    events = pd.read_csv(run / "transitions.csv")
    assert list(events.columns) == ["instance", *conditions, *transitions.EVENT_COLUMNS[1:]]
    assert set(events["kind"]) <= set(transitions.KINDS)
    summary = pd.read_csv(run / "summary.csv")
    assert list(summary.columns) == [*(c for c in conditions if c != "seed"), *SUMMARY_COLUMNS]
    assert summary["activation"].tolist() == ["relu"] and summary["n_instances"].tolist() == [8]
    assert RunDir.open(run).stage("analyze")["done"] is True


def test_a_second_run_changes_nothing_on_disk(analyzed):
    run, _ = analyzed
    before = snapshot(run)
    result = devtms("analyze", str(run))
    assert result.returncode == 0, result.stderr
    assert "0 new geometry rows; written: nothing changed" in result.stdout
    assert snapshot(run) == before


def test_only_missing_geometry_rows_are_computed(analyzed, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    run = tmp_path / "run"
    shutil.copytree(analyzed[0], run)
    before = snapshot(run)
    geo = pd.read_csv(run / "geometry.csv")
    last = geo["step"].max()
    geo[geo["step"] != last].to_csv(run / "geometry.csv", index=False, lineterminator="\n")
    status, out, err = devtms_in_process(capsys, "analyze", str(run))
    assert status == 0, err
    assert "8 new geometry rows; written: geometry.csv ->" in out
    assert snapshot(run) == before


def printed_sequences(stdout: str) -> dict[int, list[tuple[str, int]]]:
    out = {}
    for line in stdout.splitlines():
        match = re.match(r"\s+instance (\d+) \(relu, seed (\d+)\): (.*)$", line)
        if match:
            assert match.group(1) == match.group(2)  # instance i has seed i in this config
            out[int(match.group(1))] = [(label, int(step)) for label, step in
                                        re.findall(r"(\S+) \((\d+)\)", match.group(3))]
    return out


def k_of(label: str) -> int:
    return int(label.rstrip("+-0"))


def test_k_gon_sequences_are_printed_and_loss_drops_line_up_with_k_changes(analyzed):
    run, stdout = analyzed
    geo = pd.read_csv(run / "geometry.csv", dtype={"k_gon_label": str})
    events = pd.read_csv(run / "transitions.csv")
    sequences = printed_sequences(stdout)
    assert sorted(sequences) == list(range(8))

    for instance, seq in sequences.items():
        g = geo[geo["instance"] == instance].set_index("step")["k_gon_label"]
        # each printed label is geometry.csv's label at the printed step, the last one is the
        # final geometry, and the printed steps increase
        assert [g[step] for _, step in seq] == [label for label, _ in seq]
        assert seq[-1][0] == g.iloc[-1]
        assert [step for _, step in seq] == sorted({step for _, step in seq})

    # some seed goes 4-gon -> 5-gon -> 6-gon in that order (Chen et al.'s dynamical transitions)
    ks = {i: [k_of(label) for label, _ in seq] for i, seq in sequences.items()}
    assert any(k[-3:] == [4, 5, 6] for k in ks.values()), ks

    # the change into each instance's final polygon, when that is a 5- or 6-gon, happens within
    # the alignment tolerance (in log10 step) of a detected loss drop
    tolerance = transitions.default_tolerance(RunDir.open(run).checkpoint_steps())
    checked = 0
    for instance, seq in sequences.items():
        label, step = seq[-1]
        if k_of(label) < 5:
            continue
        drops = events[(events["instance"] == instance) & (events["kind"] == "loss_drop")]
        lags = np.abs(np.log10(drops["step"].to_numpy()) - np.log10(step))
        assert len(lags) and lags.min() <= tolerance, (instance, seq, drops["step"].tolist())
        checked += 1
    assert checked >= 4  # most seeds end in a 5- or 6-gon


def test_llc_csv_is_picked_up_and_loss_drops_meet_planted_llc_rises(analyzed, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(analyzed[0], run)
    before = snapshot(run)
    # an LLC that steps up by 1.5 at every detected loss drop (error bars 0.02): each drop must
    # then be matched to that LLC rise, within the alignment tolerance
    geo = pd.read_csv(run / "geometry.csv")
    drops = pd.read_csv(run / "transitions.csv").query("kind == 'loss_drop'")
    rng = np.random.default_rng(0)
    llc_mean = 3.0 + rng.normal(0, 0.02, len(geo))
    for drop in drops.itertuples():
        llc_mean += 1.5 * ((geo["instance"] == drop.instance) & (geo["step"] >= drop.step))
    active = llc_active_setting(RunDir.open(run)).default  # planted at the setting analyze reads
    llc = pd.DataFrame({
        "instance": geo["instance"], "step": geo["step"], "llc_mean": llc_mean,
        "llc_std": 0.06, "llc_sem": 0.02, "init_loss": 0.01, "healthy": True, "state": "healthy",
        "reason": "", "setting": active.id, **active.params.identity(active.engine),
    })
    RunDir.open(run).write_table("llc.csv", llc)
    result = devtms("analyze", str(run))
    assert result.returncode == 0, result.stderr
    after = snapshot(run)
    assert after["geometry.csv"] == before["geometry.csv"]
    assert after["transitions.csv"] != before["transitions.csv"]
    assert after["summary.csv"] != before["summary.csv"]
    events = pd.read_csv(run / "transitions.csv")
    assert (events["kind"] == "llc_rise").sum() == len(drops)
    assert (events["kind"] == "llc_fall").sum() == 0
    new_drops = events[events["kind"] == "loss_drop"]
    assert new_drops["step"].tolist() == drops["step"].tolist()
    tolerance = transitions.default_tolerance(RunDir.open(run).checkpoint_steps())
    assert (new_drops["llc_lag"].abs() <= tolerance).all(), new_drops["llc_lag"].tolist()
    assert new_drops["llc_size"].to_numpy() == pytest.approx(1.5, abs=0.2)
    assert new_drops["coincides_llc_rise"].astype(bool).all()
    summary = pd.read_csv(run / "summary.csv")
    assert summary["drops_with_llc_rise"].item() == 1.0
    assert summary["final_llc_mean"].item() == pytest.approx(
        3.0 + 1.5 * drops.groupby("instance").size().reindex(range(8), fill_value=0).mean(),
        abs=0.05)


def test_bad_run_dir_is_one_line_and_exit_2(tmp_path, capsys):
    status, _, err = devtms_in_process(capsys, "analyze", str(tmp_path / "nowhere"))
    assert status == 2
    assert len(err.strip().splitlines()) == 1 and "not a directory" in err
    (tmp_path / "empty").mkdir()
    status, _, err = devtms_in_process(capsys, "analyze", str(tmp_path / "empty"))
    assert status == 2 and "not a devtms run" in err and len(err.strip().splitlines()) == 1


def test_training_must_be_complete(trained, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    RunDir.open(run).set_stage("train", done=False)
    status, _, err = devtms_in_process(capsys, "analyze", str(run))
    assert status == 2
    assert "training is not complete" in err
    assert len(err.strip().splitlines()) == 1
    assert not (run / "geometry.csv").exists()
