"""devtms bayes: the free energy's crossovers, the closed-form loss and k-gon critical points,
the posterior sampler's classifier, the stage's files, kill safety and bad input."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.special import lambertw

from devtms import model as tms
from devtms.activations import contiguous_groups
from devtms.bayes import free_energy, occupancy, theory
from devtms.bayes.posterior import PosteriorTask, sample_posterior
from devtms.bayes.settings import SamplerSettings
from devtms.data import sample_features
from tests.conftest import run_cli, tiny_config
from tests.killing import integrity_problems, kill_after, start_devtms, wait_until

# ---------------------------------------------------------------------------------------------
# The free energy


def lambert_crossover(loss_gap: float, llc_gap: float) -> float:
    """The larger root of N dL = dlam log N in closed form: N = -(dlam/dL) W_-1(-dL/dlam)."""
    return float((-(llc_gap / loss_gap) * lambertw(-loss_gap / llc_gap, k=-1)).real)


def two_phases(loss_a=0.1, llc_a=2.0, loss_b=0.05, llc_b=5.0, sem=0.0) -> pd.DataFrame:
    return pd.DataFrame({"k_gon_label": ["a", "b"], "loss": [loss_a, loss_b],
                         "llc": [llc_a, llc_b], "llc_sem": [sem, sem]})


def test_two_phase_crossover_is_found_exactly():
    table = free_energy.crossovers(two_phases())
    assert table[["from_phase", "to_phase"]].values.tolist() == [["a", "b"]]
    exact = lambert_crossover(0.05, 3.0)
    assert table["n_star_free_energy"].iloc[0] == pytest.approx(exact, rel=1e-9)
    n = table["n_star_free_energy"].iloc[0]
    assert n * 0.05 == pytest.approx(3.0 * math.log(n), rel=1e-9)  # F_a = F_b there


def test_crossover_range_follows_the_llc_standard_error():
    sem = 0.2
    row = free_energy.crossovers(two_phases(sem=sem)).iloc[0]
    gap_se = math.hypot(sem, sem)
    assert row["n_star_low"] == pytest.approx(lambert_crossover(0.05, 3.0 - gap_se), rel=1e-9)
    assert row["n_star_high"] == pytest.approx(lambert_crossover(0.05, 3.0 + gap_se), rel=1e-9)
    assert row["n_star_low"] < row["n_star_free_energy"] < row["n_star_high"]


def test_no_crossover_when_the_lower_loss_phase_is_not_more_complex():
    # b has lower loss and lower LLC: it wins at every N, nothing changes
    assert free_energy.crossovers(two_phases(llc_b=1.0)).empty
    assert (free_energy.dominant(two_phases(llc_b=1.0), np.geomspace(10, 1e5, 50)) == "b").all()


def test_three_phases_in_order_of_falling_loss_and_rising_llc():
    phases = pd.DataFrame({"k_gon_label": ["x", "y", "z"], "loss": [0.2, 0.1, 0.05],
                           "llc": [1.0, 4.0, 8.0], "llc_sem": [0.0, 0.0, 0.0]})
    table = free_energy.crossovers(phases)
    assert table[["from_phase", "to_phase"]].values.tolist() == [["x", "y"], ["y", "z"]]
    assert table["n_star_free_energy"].iloc[0] == pytest.approx(lambert_crossover(0.1, 3.0))
    assert table["n_star_free_energy"].iloc[1] == pytest.approx(lambert_crossover(0.05, 4.0))


# ---------------------------------------------------------------------------------------------
# The closed form and the k-gon critical points


def test_population_loss_matches_a_large_sample():
    g = torch.Generator().manual_seed(3)
    W = torch.randn(4, 2, 6, generator=g, dtype=torch.float64)
    b = torch.randn(4, 6, generator=g, dtype=torch.float64) * 0.3
    x = sample_features("single-feature", 400_000, 6, 1 / 6, g).double()
    sampled = tms.loss(W, b, x[None].expand(4, -1, -1), torch.ones(4, 6, dtype=torch.float64),
                       contiguous_groups(["relu"] * 4), "sum")
    exact = theory.population_loss(W, b)
    # the sample mean's standard error is about 0.3% of these losses
    torch.testing.assert_close(exact, sampled, rtol=0.015, atol=0.0)


@pytest.mark.parametrize("label", ["6", "5+", "5-", "4++"])
def test_regular_kgons_are_critical_points_of_the_full_loss(label):
    point = theory.critical_point(label, 6)
    W = point.W.clone().requires_grad_(True)
    b = point.b.clone().requires_grad_(True)
    theory.population_loss(W, b).backward()
    assert W.grad.abs().max() < 1e-6 and b.grad.abs().max() < 1e-6  # every direction, not
    # only the three the fit moved


def test_critical_points_order_and_count():
    losses = {s: theory.critical_point(s, 6).loss for s in ("6", "5+", "5-", "4++")}
    assert losses["6"] < losses["5+"] < losses["5-"] < losses["4++"]
    # a positive-bias feature beats a dead one by exactly 1 / (4 c^2)
    assert losses["5-"] - losses["5+"] == pytest.approx(1 / 144, abs=1e-9)
    assert [theory.llc_count(s, 6) for s in ("6", "5+", "5-")] == [8.5, 8.5, 7.0]
    assert theory.llc_count("4+-", 6) == 7.0 and math.isnan(theory.llc_count("3ooo", 6))
    assert theory.critical_point("2++++", 6) is None


@pytest.mark.parametrize("label, rank", [("6", 17), ("5+", 17), ("5-", 14), ("4++", 17),
                                         ("4+-", 16), ("4--", 15)])
def test_hessian_rank_at_the_critical_points(label, rank):
    """What the quadratic picture says, beside the count (3c - 1 - 3 dead) / 2: the rank of the
    exact loss's Hessian (symmetric differences of its exact gradient; the 4-gons sit on ReLU
    kinks). 6, 5+, 5- and 4++ agree with the count (rank / 2 = 8.5, 8.5, 7.0, 8.5). At 4+- and
    4-- they do not (8.0 and 7.5 against 7.0 and 5.5): the vertices' biases are exactly 0
    there, so moving a dead feature's W_i moves the vertices' outputs off their kink, and W_i
    is not locally irrelevant as the count assumes."""
    point = theory.critical_point(label, 6)
    x0 = torch.cat([point.W.flatten(), point.b])

    def grad(x: torch.Tensor) -> torch.Tensor:
        x = x.clone().requires_grad_(True)
        loss = theory.population_loss(x[:12].reshape(2, 6), x[12:])
        return torch.autograd.grad(loss, x)[0]

    h = 1e-5
    H = torch.stack([(grad(x0 + h * e) - grad(x0 - h * e)) / (2 * h)
                     for e in torch.eye(18, dtype=x0.dtype)])
    eig = torch.linalg.eigvalsh((H + H.T) / 2)
    assert int((eig < -1e-6).sum()) == 0  # a minimum to second order
    assert int((eig > 1e-6).sum()) == rank
    assert eig[eig > 1e-6].min() > 1e-2  # the gap: nothing is nearly flat


# ---------------------------------------------------------------------------------------------
# The sampler and its classifier


def start_at(label: str, chains: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    point = theory.critical_point(label, 6)
    g = torch.Generator().manual_seed(seed)
    Ws = []
    for _ in range(chains):
        a = float(torch.rand(1, generator=g)) * 2 * math.pi
        rot = torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]],
                           dtype=torch.float64)
        Ws.append(rot @ point.W)
    return torch.stack(Ws).float(), point.b.float()[None].expand(chains, 6).clone()


@pytest.mark.parametrize("label", ["6", "5+"])
def test_posterior_draws_near_a_regular_kgon_are_classified_as_it(label):
    """At N = 20000 with one rung the posterior around a stable k-gon is narrow: every draw
    must be classified as that k-gon."""
    n = 20000
    W, b = start_at(label, 4)
    data = sample_features("single-feature", n, 6, 1 / 6, torch.Generator().manual_seed(1))
    s = SamplerSettings(chains=4, steps=400, burnin=200, hot_n=n, thin=10)
    result = sample_posterior(PosteriorTask(n, data, "relu", torch.ones(6), True, [label] * 4,
                                            W, b, s))
    assert len(result.betas) == 1 and result.diverged == 0
    for counts in result.counts:
        assert counts == {label: s.draws()}


def test_the_ladder_carries_chains_out_of_a_phase_the_posterior_does_not_hold():
    """A 5- start at N = 300: a replica-exchange ladder from beta N = 50 must let the chains
    leave it (5- is not the dominant phase there: the free energy prefers the 6-gon)."""
    n = 300
    W, b = start_at("5-", 8)
    data = sample_features("single-feature", n, 6, 1 / 6, torch.Generator().manual_seed(2))
    s = SamplerSettings(chains=8, steps=3000, burnin=1500, hot_n=50)
    result = sample_posterior(PosteriorTask(n, data, "relu", torch.ones(6), True, ["5-"] * 8,
                                            W, b, s))
    assert len(result.betas) > 1 and min(result.swap_acceptance) > 0.1
    draws = sum(sum(c.values()) for c in result.counts)
    stayed = sum(c.get("5-", 0) for c in result.counts) / draws
    assert stayed < 0.8


# ---------------------------------------------------------------------------------------------
# Occupancy tables from hand-made records


def record(n: int, starts: list[str], counts: list[dict]) -> dict:
    return {"N": n, "start_labels": starts, "betas": [0.5, 1.0], "swap_acceptance": [0.4],
            "diverged": 0, "counts": counts}


def test_occupancy_majority_and_agreement():
    starts = ["a"] * 10 + ["b"] * 10
    mixed = [{"x": 3, "y": 1}] * 5 + [{"x": 4}] * 5 + [{"x": 4}] * 4 + [{"y": 3, "x": 1}] * 6
    apart = [{"x": 4}] * 10 + [{"y": 4}] * 10
    records = [record(100, starts, mixed), record(300, starts, apart)]
    occ = occupancy.occupancy(records)
    at100 = occ[occ["N"] == 100].set_index("k_gon_label")
    assert at100.loc["x", "fraction"] == pytest.approx((15 + 20 + 16 + 6) / 80)
    assert at100.loc["x", "chains"] == 14 and at100.loc["y", "chains"] == 6
    mix = occupancy.mixing(records).set_index("N")
    # a: x 0.875, b: x 0.55 on average: 0.325 apart, about what 10 chains a side give by chance
    assert mix.loc[100, "max_start_distance"] == pytest.approx(0.325)
    assert bool(mix.loc[100, "agree"]) and mix.loc[100, "start_p_value"] > 0.01
    assert not bool(mix.loc[300, "agree"]) and mix.loc[300, "start_p_value"] <= 0.001
    assert mix.loc[300, "max_start_distance"] == pytest.approx(1.0)


def test_sampled_crossover_is_interpolated_in_log_n():
    occ = pd.DataFrame({"N": [100, 100, 1000, 1000], "k_gon_label": ["a", "b", "a", "b"],
                        "fraction": [0.8, 0.2, 0.2, 0.8], "chains": [1, 1, 1, 1]})
    n, how = occupancy.crossing_n(occupancy.fractions(occ), "a", "b")
    assert how == "crosses" and n == pytest.approx(math.sqrt(100 * 1000))


# ---------------------------------------------------------------------------------------------
# The stage through the CLI

# A chen2023-like run in seconds: 6 features, 2 hidden, a bias, single-feature data, 2 seeds.
BAYES_RUN = tiny_config(
    name="tiny-bayes", model={"n_features": 6, "activations": ["relu"], "reduction": "sum"},
    data={"n_samples": 500},
    train={"steps": 4000, "batch_size": 100, "lr": 0.005, "seeds": [0, 1]},
    checkpoints={"log_points": 30, "linear_every": 0},
    llc={"eps": 3e-3, "gamma": 5.0, "chains": 4, "draws": 200, "burnin": 200, "batch_size": 100})
FAST = ["--grid", "100,300,1000", "--chains", "2", "--steps", "600", "--burnin", "300",
        "--scheduler", "local"]


@pytest.fixture(scope="module")
def studied(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bayes")
    result = run_cli("study", BAYES_RUN.write(root / "tiny-bayes.toml"), "--out", root / "run",
                     "--scheduler", "local")
    assert result.returncode == 0, result.stderr
    return root / "run"


def bayes_files(run: Path) -> dict[str, bytes]:
    folder = run / "bayes"
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.name.startswith(".") and p.suffix != ".pdf"
            and p.suffix != ".png"}


def test_bayes_writes_every_table(studied, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(studied, run)
    result = run_cli("bayes", run, *FAST)
    assert result.returncode == 0, result.stderr
    folder = run / "bayes"
    occ = pd.read_csv(folder / "occupancy.csv", dtype={"k_gon_label": str})
    assert list(occ.columns) == ["N", "k_gon_label", "fraction", "chains"]
    assert occ.groupby("N")["fraction"].sum().round(9).eq(1.0).all()
    assert sorted(occ["N"].unique()) == [100, 300, 1000]
    cross = pd.read_csv(folder / "crossovers.csv")
    assert list(cross.columns)[:6] == ["from_phase", "to_phase", "n_star_free_energy",
                                       "n_star_low", "n_star_high", "n_star_sampled"]
    phases = pd.read_csv(folder / "phases.csv", dtype={"k_gon_label": str})
    assert len(phases) >= 1 and phases["llc_critical"].notna().any()
    for name in ("bayes.png", "bayes.pdf", "mixing.csv", "sequences.csv", "free_energy.csv",
                 "sgd_fractions.csv", "occupancy_by_start.csv"):
        assert (folder / name).is_file(), name
    assert json.loads((run / "run.json").read_text())["stages"]["bayes"]["done"]
    assert "crossovers N*" in result.stdout
    again = run_cli("bayes", run, *FAST)  # every N is on disk: nothing is sampled again
    assert again.returncode == 0 and "0 N sampled" in again.stdout and "3 already done" in \
        again.stdout
    report = run_cli("report", run)
    assert report.returncode == 0, report.stderr
    html = (run / "report" / "index.html").read_text()
    assert "Dynamical versus Bayesian" in html


def test_a_kill_during_sampling_resumes_to_identical_files(studied, tmp_path):
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    shutil.copytree(studied, reference)
    shutil.copytree(studied, killed)
    assert run_cli("bayes", reference, *FAST).returncode == 0
    proc = start_devtms(["bayes", killed, *FAST])
    posterior = killed / "bayes" / "posterior"
    wait_until(proc, lambda: posterior.is_dir() and any(posterior.glob("N_*.json")))
    assert kill_after(proc, 0.0), "the job finished before it could be killed"
    assert not integrity_problems(killed)
    assert len(list(posterior.glob("N_*.json"))) < 3  # the kill landed before the end
    resumed = run_cli("bayes", killed, *FAST)
    assert resumed.returncode == 0, resumed.stderr
    assert "already done" in resumed.stdout
    assert bayes_files(killed) == bayes_files(reference)


@pytest.mark.parametrize("args, message", [
    (["--grid", "1,100"], "must be > 1"),
    (["--grid", "100,abc"], "comma-separated integers"),
    (["--chains", "0"], "--chains 0"),
    (["--burnin", "9000"], "--burnin 9000"),
])
def test_bad_options_get_one_line_and_exit_2(studied, tmp_path, args, message):
    run = tmp_path / "run"
    shutil.copytree(studied, run)
    result = run_cli("bayes", run, *args)
    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (run / "bayes").exists()


def test_a_run_without_llcs_or_with_m_not_2_is_refused(tmp_path, tiny_run):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)  # trained and analyzed, but no llc.csv
    assert run_cli("analyze", run).returncode == 0
    result = run_cli("bayes", run)
    assert result.returncode == 2 and "no healthy LLC estimates" in result.stderr
    assert not (run / "bayes").exists()
    wide = tiny_config(name="m3", model={"n_hidden": 3, "activations": ["relu"]},
                       train={"steps": 20})
    assert run_cli("train", wide.write(tmp_path / "m3.toml"), "--out", tmp_path / "m3"
                   ).returncode == 0
    result = run_cli("bayes", tmp_path / "m3")
    assert result.returncode == 2 and "m = 2" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------------------------------------
# The LLC at exact critical points: a closed-form check of the calibrated setting


def test_chen2023_setting_agrees_with_the_exact_engine_at_exact_kgon_critical_points():
    """At the regular k-gon critical points themselves (not at trained checkpoints, which only
    approach them), the chen2023 preset's setting must agree with the exact engine (mala, long
    chains) at the same gamma and n_beta within 2 combined sem + 5%, and lie within 20% of Chen
    et al.'s learning coefficients (6-gon 8.5, 5+ 8.5, 5- 7.0; a wrong n_beta or init loss is
    off by far more): at N = 1000 and gamma 5 the estimator's own value is 7-13% below them
    (docs/science.md, section 4.10). The plain SGLD setting the preset had until 2026-12-08
    met them within 10% (8.90, 8.02, 6.90) partly through its step-size bias. Measured: setting
    7.97, 7.12, 6.51; exact 7.94, 7.40, 6.18 (2026-12-08)."""
    import dataclasses

    from devtms.bayes.stage import llcs_at
    from devtms.config import load_config
    from devtms.data import DataKeys, fixed_sets
    from devtms.llc.active import Setting
    from devtms.llc.params import LLCParams

    config = load_config("chen2023")
    points = {s: (p.W, p.b) for s in ("6", "5+", "5-") if (p := theory.critical_point(s, 6))}
    data = fixed_sets("single-feature", DataKeys([0], [1 / 6]), 1000, 6, "train")[0]
    params = LLCParams.of_run(config)
    found = llcs_at(points, data, torch.ones(6), Setting(params), "relu", True)
    exact_params = dataclasses.replace(params, chains=8, burnin=500, draws=3000, eps=1e-3,
                                       batch_size=params.n_samples, precond="none")
    exact = llcs_at(points, data, torch.ones(6), Setting(exact_params, "mala"), "relu", True)
    for label, expected in (("6", 8.5), ("5+", 8.5), ("5-", 7.0)):
        got, ref = found[label], exact[label]
        assert got["llc_critical_state"] == "healthy", got
        assert ref["llc_critical_state"] == "healthy", ref
        se = math.hypot(got["llc_critical_sem"], ref["llc_critical_sem"])
        assert abs(got["llc_critical"] - ref["llc_critical"]) <= 2 * se + 0.05 * ref[
            "llc_critical"], (label, got, ref)
        assert got["llc_critical"] == pytest.approx(expected, rel=0.20), (label, found, exact)
