"""LLC settings: what names one in llc.csv, which one a run reads (its active setting), how it
changes (`devtms llc --activate`, `devtms calibrate --auto`), and the state of an estimate.

One small run (the tiny study, 8 chains x 200 draws: long enough for some estimates to be
healthy) is trained once through the real CLI and its config setting computed once; tests copy
it before writing to it.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from devtms import llc
from devtms.llc.health import STATES
from devtms.llc.params import LLC_REDUCTION, SETTING_COLUMNS, LLCParams
from devtms.store import RunDir

from .conftest import STUDY, after_stages, run_cli, trained_run
from .test_bad_input import tree

CONFIG = STUDY.but(name="settings", llc={"chains": 8, "draws": 200, "burnin": 100})
OTHER_EPS = "0.0003"  # a second setting: the config's with this eps


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """CONFIG trained, no later stage. Read-only."""
    return trained_run(tmp_path_factory.mktemp("settings"), CONFIG)


@pytest.fixture(scope="module")
def computed(trained: Path, tmp_path_factory) -> Path:
    """The trained run after `devtms llc` at its config setting. Read-only."""
    return after_stages(trained, tmp_path_factory.mktemp("computed") / "run", "llc")


def copy_run(run: Path, to: Path) -> Path:
    shutil.copytree(run, to)
    return to


def meta(run: Path) -> dict:
    return json.loads((run / "run.json").read_text())


def raw_rows(run: Path, engine: str = "batched") -> list[dict[str, str]]:
    """llc.csv's rows of one engine as written (the SGLD engine's: the self-check adds the
    reference engine's beside them): every value the text in the file."""
    with (run / "llc.csv").open(newline="") as f:
        return [row for row in csv.DictReader(f) if row["engine"] == engine]


def params_of(row: dict[str, str]) -> LLCParams:
    return LLCParams(eps=float(row["eps"]), gamma=float(row["gamma"]),
                     n_beta=float(row["n_beta"]), chains=int(row["num_chains"]),
                     draws=int(row["num_draws"]), burnin=int(row["burnin"]),
                     batch_size=int(row["batch_size"]), seed=int(row["llc_seed"]),
                     n_samples=int(row["llc_n_samples"]))


# ---------------------------------------------------------------------------------------------
# (a) what llc.csv says about a setting


def test_llc_csv_names_the_setting_of_every_row_and_its_diagnostics(computed: Path):
    """Every row of llc.csv carries its setting's id (LLCParams.tag of the row's own setting
    columns, the run's active setting here), loss_reduction "sum", a state among STATES with
    healthy exactly when the state is healthy, and the diagnostics rhat, ess_bulk, llc_drift."""
    rows = raw_rows(computed)
    assert len(rows) == 4 * len(RunDir.open(computed).checkpoint_steps())
    for column in ("setting", *SETTING_COLUMNS, "state", "rhat", "ess_bulk", "llc_drift"):
        assert column in rows[0], column
    active = llc.active_setting(RunDir.open(computed))
    for row in rows:
        assert row["setting"] == params_of(row).tag(row["engine"]) == active.id
        assert row["loss_reduction"] == LLC_REDUCTION == "sum"
        assert row["state"] in STATES
        assert row["healthy"] == str(row["state"] == "healthy")
        if row["state"] != "diverged":
            assert all(math.isfinite(float(row[c])) for c in ("rhat", "ess_bulk", "llc_drift"))
    states = {row["state"] for row in rows}
    assert "healthy" in states  # 8 chains x 200 draws: some estimates converge on this run


def numeric_looking_seed(params: LLCParams) -> int:
    """An llc seed whose setting id (ten hex digits) also reads as a number, e.g. "68e1082657"
    = 6.8 x 10^1082657 = inf: about 2% of ids do."""
    for seed in range(10_000):
        tag = dataclasses.replace(params, seed=seed).tag("batched")
        try:
            float(tag)
        except ValueError:
            continue
        return seed
    raise AssertionError("no numeric-looking id among 10,000 seeds")


def test_a_setting_id_that_reads_as_a_number_is_read_back_as_written(tiny_run: Path, tmp_path):
    """A setting id that also reads as a float: llc.csv must be read back with the id as
    text, so that analyze finds the active setting's rows and --setting names it."""
    run = copy_run(tiny_run, tmp_path / "run")
    seed = numeric_looking_seed(llc.active_setting(RunDir.open(run)).default.params)
    result = run_cli("llc", run, "--steps", "last", "--seed", str(seed), "--activate")
    assert result.returncode == 0, result.stderr
    tag = llc.active_setting(RunDir.open(run)).id
    float(tag)  # the premise: a CSV reader that guesses types would take it for a number
    table = llc.read_llc_table(RunDir.open(run), check_settings=False)
    assert tag in set(table["setting"])
    table = table[table["setting"] == tag]
    assert tag in {row["setting"] for row in raw_rows(run)}
    setting, rows = llc.choose(RunDir.open(run), llc.read_llc_table(RunDir.open(run)))
    assert setting.id == tag and len(rows) == len(table)
    result = run_cli("analyze", run, "--setting", tag)
    assert result.returncode == 0, result.stderr
    assert meta(run)["stages"]["analyze"]["llc_setting"]["id"] == tag


# ---------------------------------------------------------------------------------------------
# (b) the LLC's loss is summed over features, whatever the training reduction


def test_the_same_weights_give_the_same_llc_whatever_the_models_reduction(tiny_run: Path,
                                                                          tmp_path):
    """The LLC is measured on the per-sample loss summed over features, whatever
    model.reduction the run trained with. Two copies of one run (the same checkpoints, trained
    with reduction "mean"), one with its run.json saying reduction "sum", give the same
    estimates: the same setting id, loss_reduction "sum", and llc_mean within 10% (in fact
    byte for byte: the model's reduction does not enter the estimator at all). Were the model's
    reduction used, the "mean" copy's posterior would be n_features times hotter and its
    llc.csv would differ."""
    mean_run = copy_run(tiny_run, tmp_path / "mean")
    sum_run = copy_run(tiny_run, tmp_path / "sum")
    assert meta(mean_run)["config"]["model"]["reduction"] == "mean"
    edited = meta(sum_run)
    edited["config"]["model"]["reduction"] = "sum"
    (sum_run / "run.json").write_text(json.dumps(edited, indent=2))
    assert RunDir.open(sum_run).config.model.reduction == "sum"
    for run in (mean_run, sum_run):
        result = run_cli("llc", run, "--steps", "0,100,last")
        assert result.returncode == 0, result.stderr
    a, b = raw_rows(mean_run), raw_rows(sum_run)
    assert len(a) == len(b) == 3 * 8
    for x, y in zip(a, b, strict=True):
        assert (x["instance"], x["step"], x["setting"]) == (y["instance"], y["step"], y["setting"])
        assert x["loss_reduction"] == y["loss_reduction"] == "sum"
        assert float(x["llc_mean"]) == pytest.approx(float(y["llc_mean"]), rel=0.10)
    assert (mean_run / "llc.csv").read_bytes() == (sum_run / "llc.csv").read_bytes()


# ---------------------------------------------------------------------------------------------
# (c) the active setting flows to analyze and report


@pytest.mark.slow  # two llc jobs, three analyses and a report: ~40 s at one thread
def test_an_activated_setting_is_what_analyze_and_report_read_and_setting_reads_another(
        computed: Path, tmp_path):
    """`devtms llc RUN --eps E --activate` computes a second setting and makes it the run's
    active one: analyze records it and report names it. `analyze RUN --setting FIRST` (a
    prefix) gives the bytes of analyzing a copy of the run whose active setting is the first,
    and those differ from the second setting's."""
    run = copy_run(computed, tmp_path / "run")
    assert "llc_setting" not in meta(run)  # the config's setting, implicitly
    first = llc.active_setting(RunDir.open(run)).id

    # a copy whose active setting is made the first one explicitly (nothing left to compute)
    ref = copy_run(computed, tmp_path / "ref")
    result = run_cli("llc", ref, "--eps", repr(CONFIG.config.llc.eps), "--activate")
    assert result.returncode == 0, result.stderr
    assert "0 estimated" in result.stdout and meta(ref)["llc_setting"]["id"] == first

    result = run_cli("llc", run, "--eps", OTHER_EPS, "--activate")
    assert result.returncode == 0, result.stderr
    record = meta(run)["llc_setting"]
    second = record["id"]
    assert second != first and record["source"] == "devtms llc --activate"
    assert record["params"]["eps"] == float(OTHER_EPS)
    table = pd.read_csv(run / "llc.csv", dtype={"setting": str})
    table = table[table["engine"] == "batched"]  # not the self-check's reference estimates
    assert set(table["setting"]) == {first, second}
    assert (table["setting"] == second).sum() == (table["setting"] == first).sum()

    def analyze(path: Path, *args: str) -> dict[str, bytes]:
        result = run_cli("analyze", path, *args)
        assert result.returncode == 0, result.stderr
        return {name: (path / name).read_bytes() for name in ("summary.csv", "transitions.csv")}

    at_second = analyze(run)
    assert meta(run)["stages"]["analyze"]["llc_setting"]["id"] == second
    at_first = analyze(run, "--setting", first[:6])
    assert meta(run)["stages"]["analyze"]["llc_setting"]["id"] == first
    assert at_first == analyze(ref)
    assert at_first["summary.csv"] != at_second["summary.csv"]  # the setting read matters

    result = run_cli("report", run)
    assert result.returncode == 0, result.stderr
    html = (run / "report" / "index.html").read_text()
    assert f"the figures show {second}" in html
    assert f"the figures show {first}" not in html


# ---------------------------------------------------------------------------------------------
# (d) bad input


BAD = {
    "analyze an unknown setting": (["analyze", "{run}", "--setting", "nosuch"],
                                   "'nosuch' names no setting"),
    "report an unknown setting": (["report", "{run}", "--setting", "nosuch"],
                                  "'nosuch' names no setting"),
    "calibrate --auto before training finished": (["calibrate", "{partial}", "--auto"],
                                                  "training has not finished"),
    "calibrate --auto where no candidate passes": (
        ["calibrate", "{run}", "--auto", "--eps-grid", "10", "--gamma-grid", "1",
         "--instances", "0"], "the closest is [0]"),
}
SLOW_BAD = {"calibrate --auto where no candidate passes"}  # 4 candidate lengths: ~35 s


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow) if c in SLOW_BAD
                                  else c for c in BAD], ids=list(BAD))
def test_bad_setting_input_exits_2_with_one_line_and_changes_nothing(case, computed, tmp_path):
    """Exit status 2, one line on stderr naming the problem, and every file of the run byte for
    byte as before (but .lock, which records the last command that held it: calibrate --auto
    holds it while it measures). An eps of 10 blows up every chain of every candidate: no
    candidate passes, so nothing is written (no calibration/auto.csv) and the active setting
    stays."""
    argv, message = BAD[case]
    run, partial = tmp_path / "run", tmp_path / "partial"
    copy_run(computed, run)
    copy_run(computed, partial)
    record = meta(partial)
    record["stages"]["train"]["done"] = False  # as test_bad_input's runs interrupted in training
    (partial / "run.json").write_text(json.dumps(record))
    before = tree(tmp_path)
    result = run_cli(*[a.format(run=run, partial=partial) for a in argv], cwd=tmp_path)
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    after = tree(tmp_path)
    for t in (before, after):
        t.pop("run/.lock", None)
    assert after == before, {k: (before.get(k), after.get(k))
                             for k in set(before) | set(after) if before.get(k) != after.get(k)}
    assert not (run / "calibration" / "auto.csv").exists()
    if "candidate" in case:
        assert "closest" in lines[0] and "Nothing was changed" in lines[0]
        assert "-> fails health" in result.stdout  # the evidence, printed


# ---------------------------------------------------------------------------------------------
# (e) calibrate --auto that finds a setting


@pytest.mark.slow  # one candidate and its three checks on 2 instances: ~20 s at one thread
def test_calibrate_auto_writes_its_evidence_and_activates_the_setting_that_passes(
        trained: Path, tmp_path):
    """On two instances, eps 0.03 and gamma 1 (a setting that converges on this run with a
    wide margin: R-hat ~1.01, ESS > 1000, < 2% change with doubled draws, ~12% with gamma x or
    / 3) pass at the cheapest length: calibration/auto.csv holds the four measurements, all
    passed, and run.json's active setting is that candidate, from `devtms calibrate --auto`."""
    run = copy_run(trained, tmp_path / "run")
    result = run_cli("calibrate", run, "--auto", "--instances", "0,1", "--eps-grid", "0.03",
                     "--gamma-grid", "1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "-> PASS" in result.stdout and "chosen:" in result.stdout
    evidence = pd.read_csv(run / "calibration" / "auto.csv", dtype={"setting": str})
    assert list(evidence["check"]) == ["health", "stability", "localization", "localization"]
    assert evidence["passed"].all() and (evidence["candidate"] == 0).all()
    assert (evidence["estimates"] == 2).all()
    record = meta(run)["llc_setting"]
    assert record["source"] == "devtms calibrate --auto" and record["engine"] == "batched"
    p = record["params"]
    assert (p["eps"], p["gamma"], p["burnin"], p["draws"]) == (0.03, 1.0, 500, 1000)
    assert p["chains"] == CONFIG.raw["llc"]["chains"]  # the rest is the active setting's
    assert record["id"] == LLCParams(**p).tag("batched") == evidence["setting"].iloc[0]
    assert not (run / "llc.csv").exists()  # it chooses; `devtms llc` computes


# ---------------------------------------------------------------------------------------------
# (f) the state of an estimate from its traces


def test_a_trace_still_climbing_through_the_draws_is_unconverged():
    """Chains whose loss climbs steadily through the draws (burn-in too short) have first halves
    below their second halves: unconverged, with R-hat or the drift named in the reason."""
    g = torch.Generator().manual_seed(0)
    climb = torch.linspace(0.0, 0.05, 400)
    loss = 1.0 + climb + 0.002 * torch.randn(1, 4, 400, generator=g)
    (row,) = llc.summarize(loss, torch.tensor([1.0], dtype=torch.float64), 100.0, 18)
    assert row["state"] == "unconverged" and not row["healthy"]
    assert "R-hat" in row["reason"] or "drift" in row["reason"]
    assert row["rhat"] > 1.05 and row["llc_drift"] > 0


def test_a_long_stationary_trace_is_healthy_with_rhat_near_one_and_a_large_ess():
    g = torch.Generator().manual_seed(0)
    loss = 1.02 + 0.005 * torch.randn(2, 4, 2000, generator=g)
    rows = llc.summarize(loss, torch.tensor([1.0, 1.0], dtype=torch.float64), 100.0, 18)
    for row in rows:
        assert row["state"] == "healthy" and row["healthy"] and row["reason"] == ""
        assert row["rhat"] == pytest.approx(1.0, abs=0.01)
        assert row["ess_bulk"] > 100
        assert row["llc_mean"] == pytest.approx(2.0, abs=0.1)
        assert abs(row["llc_drift"]) < 0.1
    assert np.isfinite([r["llc_drift"] for r in rows]).all()
