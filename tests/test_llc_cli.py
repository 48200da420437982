"""`devtms llc` and `devtms calibrate` as a user runs them: files, resumption, kills, bad input."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from devtms.llc import COLUMNS, CONTRACT_COLUMNS
from devtms.store import LLC_CSV, LLC_TRACES, RunDir

from .conftest import REPO, assert_runs_identical, run_cli
from .forkcli import run_many


def snapshot(path: Path) -> dict[str, tuple[int, int]]:
    """Every file under path with its size and mtime: equal snapshots mean nothing was written."""
    return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(path.rglob("*")) if p.is_file() and p.name != ".lock"}


@pytest.fixture
def run_copy(tiny_run, tmp_path) -> Path:
    """The tiny run (conftest), to write to."""
    dest = tmp_path / "run"
    shutil.copytree(tiny_run, dest)
    return dest


def test_llc_writes_the_contract_columns_and_a_second_run_adds_nothing(run_copy):
    first = run_cli("llc", run_copy)
    assert first.returncode == 0, first.stderr
    table = pd.read_csv(run_copy / LLC_CSV)
    run = RunDir.open(run_copy)
    conditions = list(run.instances.columns[1:])  # the instance's, from instances.csv
    assert list(table.columns) == ["instance", *conditions, *COLUMNS[1:]]
    assert list(table.drop(columns=conditions).columns[: len(CONTRACT_COLUMNS)]) \
        == CONTRACT_COLUMNS
    sgld = table[table["engine"] == "batched"]
    assert len(sgld) == len(run.instances) * len(run.checkpoint_steps())
    assert not sgld.duplicated(["instance", "step"]).any() and (sgld["num_chains"] == 2).all()
    # the self-check: the exact engine on a sample of them, its own rows beside them
    reference = table[table["engine"] == "mala"]
    assert len(reference) and set(table["engine"]) == {"batched", "mala"}
    assert (reference["batch_size"] == reference["llc_n_samples"]).all()  # full batch
    assert (run_copy / "calibration" / "check.csv").is_file()
    assert set(run.meta["llc_check"]) == set(sgld["setting"])
    assert "self-check of" in first.stdout + first.stderr
    assert sorted((run_copy / LLC_TRACES).glob("*.safetensors"))
    assert run.stage_done("llc")
    before = snapshot(run_copy)
    second = run_cli("llc", run_copy)
    assert second.returncode == 0, second.stderr
    assert "0 estimated" in second.stdout
    after = snapshot(run_copy)
    assert after[LLC_CSV] == before[LLC_CSV]  # llc.csv not even rewritten


def test_new_hyperparameters_add_rows_beside_the_old_ones(run_copy):
    assert run_cli("llc", run_copy, "--steps", "last", "--instances", "0-1").returncode == 0
    more = run_cli("llc", run_copy, "--steps", "last", "--instances", "0-1", "--eps", "3e-4")
    assert more.returncode == 0
    table = pd.read_csv(run_copy / LLC_CSV)
    table = table[table["engine"] == "batched"]  # not the self-check's reference estimates
    assert sorted(table["eps"].unique()) == [3e-4, 3e-3]  # the new one and the config's
    assert len(table) == 4


def test_precond_rmsprop_writes_rows_of_its_own_setting(run_copy):
    """`--precond rmsprop`: rows that say so under a setting id of their own, beside the plain
    rows of the same hyperparameters; asked again, nothing is computed."""
    assert run_cli("llc", run_copy, "--steps", "last").returncode == 0
    result = run_cli("llc", run_copy, "--steps", "last", "--precond", "rmsprop")
    assert result.returncode == 0, result.stderr
    assert "rmsprop-preconditioned" in result.stdout
    table = pd.read_csv(run_copy / LLC_CSV)
    table = table[table["engine"] == "batched"]
    instances = len(RunDir.open(run_copy).instances)
    assert table["precond"].value_counts().to_dict() == {"none": instances, "rmsprop": instances}
    rms = table[table["precond"] == "rmsprop"]
    assert rms["setting"].nunique() == 1
    assert not set(rms["setting"]) & set(table.loc[table["precond"] == "none", "setting"])
    assert rms["llc_mean"].notna().all()
    again = run_cli("llc", run_copy, "--steps", "last", "--precond", "rmsprop")
    assert again.returncode == 0 and "0 estimated" in again.stdout


BAD = [  # the table-driven sweep of every command lives in the reliability tests; these are llc's
    (["llc", "{notrun}"], "not a devtms run"),
    (["llc", "{run}", "--instances", "99"], "unknown instance 99"),
    (["llc", "{run}", "--steps", "7"], "no checkpoint at step 7"),
    (["llc", "{run}", "--steps", "5000-6000"], "no checkpoint in that range"),
    (["llc", "{run}", "--eps", "-1"], "llc.eps"),
    (["llc", "{run}", "--chains", "0"], "llc.chains"),
    (["llc", "{run}", "--batch-size", "5000"], "--batch-size"),
    (["llc", "{run}", "--chunk-size", "0"], "--chunk-size"),
    (["llc", "{run}", "--device", "cuda"], "CUDA"),
    (["calibrate", "{run}", "--step", "last", "--eps-grid", "1e-3,-1"], "--eps-grid"),
]


@pytest.fixture(scope="module")
def bad_outcomes(tiny_run, tmp_path_factory) -> list[tuple]:
    """Every BAD line at once, each on its own copy of the run, as real processes forked from
    one interpreter (tests/forkcli.py). -> (result, snapshot before, snapshot after) per line"""
    root = tmp_path_factory.mktemp("llc_bad")
    lines, runs, befores = [], [], []
    for k, (argv, _) in enumerate(BAD):
        ws = root / f"case{k:02d}"
        run, notrun = shutil.copytree(tiny_run, ws / "run"), ws / "notrun"
        notrun.mkdir()
        lines.append(([a.format(run=run, missing=ws / "missing", notrun=notrun) for a in argv], ws))
        runs.append(run)
        befores.append(snapshot(run))
    results = run_many(lines)
    return [(result, before, snapshot(run))
            for result, before, run in zip(results, befores, runs, strict=True)]


@pytest.mark.parametrize("k", range(len(BAD)), ids=[" ".join(a[2:]) or a[0] for a, _ in BAD])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(bad_outcomes, k):
    message = BAD[k][1]
    result, before, after = bad_outcomes[k]
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert after == before


def test_llc_refuses_a_run_whose_training_is_not_complete(run_copy):
    run = RunDir.open(run_copy)
    run.set_stage("train", done=False)
    before = snapshot(run_copy)
    result = run_cli("llc", run_copy)
    assert result.returncode == 2 and "training is not complete" in result.stderr
    assert snapshot(run_copy) == before


@pytest.mark.slow  # a SIGKILL mid-job: ~17 s
def test_killed_llc_resumes_to_exactly_the_uninterrupted_result(tiny_run, tmp_path):
    """SIGKILL after some chunks are written, rerun: the same llc.csv, byte for byte."""
    args = ["--chunk-size", "3", "--draws", "60"]
    clean = tmp_path / "clean"
    shutil.copytree(tiny_run, clean)
    assert run_cli("llc", clean, *args).returncode == 0

    killed = tmp_path / "killed"
    shutil.copytree(tiny_run, killed)
    env = {**os.environ, "TQDM_DISABLE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "devtms.cli", "llc", str(killed), *args],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        csv = killed / LLC_CSV
        if csv.exists() and len(csv.read_bytes().splitlines()) > 7:  # two chunks in
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the job finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = pd.read_csv(killed / LLC_CSV)
    assert 0 < len(partial) < len(pd.read_csv(clean / LLC_CSV))
    resumed = run_cli("llc", killed, *args)
    assert resumed.returncode == 0, resumed.stderr
    assert_runs_identical(clean, killed, files=[LLC_CSV])
    assert f"{len(partial)} already in" in resumed.stdout


def test_an_estimate_redone_alone_keeps_the_bits_of_its_chunk(run_copy, tmp_path):
    """Softmax's feature sums follow the chunk's shape, so a rerun must cut the first run's
    chunks: rows missing from one chunk are computed in that chunk again, not on their own."""
    args = ["--chunk-size", "40", "--draws", "30", "--chains", "4"]  # two instances per chunk
    assert run_cli("llc", run_copy, *args).returncode == 0
    first = shutil.copytree(run_copy, tmp_path / "first")
    run = RunDir.open(run_copy)
    softmax = int(run.instances.loc[run.instances["activation"] == "softmax", "instance"].iloc[0])
    table = pd.read_csv(run_copy / LLC_CSV)
    late = table["step"] == table["step"].max()
    run.write_table(LLC_CSV, table[(table["instance"] != softmax) | ~late])
    redo = run_cli("llc", run_copy, *args)
    assert redo.returncode == 0, redo.stderr
    assert_runs_identical(first, run_copy, files=[LLC_CSV])


def test_calibrate_writes_a_table_and_a_figure(run_copy):
    result = run_cli("calibrate", run_copy, "--step", "last", "--instances", "0,2",
                     "--eps-grid", "1e-4,1e-2", "--gamma-grid", "10,1000")
    assert result.returncode == 0, result.stderr
    table = pd.read_csv(next((run_copy / "calibration").glob("*.csv")))
    assert len(table) == 2 * 2 * 2
    assert {"eps", "gamma", "llc_mean", "healthy", "mala_acceptance", "llc_drift"} <= set(table)
    png = next((run_copy / "calibration").glob("*.png")).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    assert not (run_copy / LLC_CSV).exists()  # calibration never touches llc.csv
