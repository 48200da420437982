"""The batched LLC estimator against its oracles: devinterp's estimator, a closed-form learning
coefficient, and itself (chunk independence, isolation of diverging chains)."""

from __future__ import annotations

import dataclasses
import math
import tomllib
from importlib import resources
from pathlib import Path

import pandas as pd
import pytest
import torch

from devtms import llc
from devtms import model as tms
from devtms.config import config_from_dict, instance_table
from devtms.data import sample_features
from devtms.rng import generator
from devtms.store import RunDir
from devtms.train import train_run

ACTIVATIONS = ["relu", "gelu", "tanh"]


def train_short(path: Path, preset: str, steps: int, activations: list[str], seeds: list[int],
                log_points: int = 4) -> RunDir:
    """A preset's setup, trained for fewer steps on a few activations."""
    raw = tomllib.loads(resources.files("devtms.presets").joinpath(f"{preset}.toml").read_text())
    raw["model"]["activations"] = activations
    raw["train"].update(steps=steps, seeds=seeds)
    raw["checkpoints"] = {"log_points": log_points}
    config = config_from_dict(raw)
    run = RunDir.create(path, config, instance_table(config))
    train_run(run)
    return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, RunDir]:
    root = tmp_path_factory.mktemp("llc_runs")
    return {
        "devinterp-tms": train_short(root / "dtms", "devinterp-tms", 1000, ACTIVATIONS, [1]),
        "chen2023": train_short(root / "chen", "chen2023", 1000, ACTIVATIONS, [0]),
    }


def task_for(run: RunDir, instances: list[int], steps: list[int], engine: str = "batched",
             **overrides) -> llc.ChunkTask:
    request = llc.build_request(run, instances=",".join(map(str, instances)),
                                steps=",".join(map(str, steps)), engine=engine,
                                overrides=overrides, compile_setting="off")
    return llc.RunInputs(run, request.instances, request.steps).task(request.instances,
                                                                     request.steps, request)


# ---------------------------------------------------------------------------------------------
# (1) agreement with devinterp


@pytest.mark.parametrize("preset", ["devinterp-tms", "chen2023"])
def test_batched_and_devinterp_engines_agree_within_combined_standard_error(runs, preset):
    """Same checkpoints, hyperparameters, LLC dataset and init loss through both engines.

    Tolerance: |a - b| <= 3 sqrt(sem_a^2 + sem_b^2), sem = std over chains / sqrt(chains). The
    engines use different random streams, so their means differ by a draw from a distribution
    with about that spread; 3 combined standard errors keeps a false alarm under 1% per
    comparison while a wrong n_beta factor, init loss or gradient (errors of 10-100%) fails.
    The batched engine's chains share minibatches (devinterp's do not), which correlates them
    a little; the comparison checks that this does not move the estimate.
    """
    run = runs[preset]
    last = run.checkpoint_steps()[-1]
    hp = dict(chains=8, draws=100, burnin=100, eps=1e-4, gamma=100.0, precond="none")
    instances = list(range(len(ACTIVATIONS)))
    rows = {}
    for engine in llc.ENGINES:
        result = llc.estimate_chunk(task_for(run, instances, [last], engine, **hp))
        rows[engine] = pd.DataFrame(result.rows).set_index("instance")
    a, b = rows["batched"], rows["devinterp"]
    assert (a["init_loss"] == b["init_loss"]).all()
    for i in instances:
        se = math.sqrt(a.loc[i, "llc_sem"] ** 2 + b.loc[i, "llc_sem"] ** 2)
        assert abs(a.loc[i, "llc_mean"] - b.loc[i, "llc_mean"]) <= 3 * se, (preset, i, a.loc[i],
                                                                           b.loc[i])
        assert a.loc[i, "llc_mean"] > 0.05  # a real estimate, not two zeros agreeing
        assert abs(a.loc[i, "mala_acceptance"] - b.loc[i, "mala_acceptance"]) < 0.1


# ---------------------------------------------------------------------------------------------
# (2) a known learning coefficient


def test_regular_tms_instance_lands_within_10_percent_of_d_over_2():
    """A linear TMS with one hidden dimension and no bias, x' = w w^T x, w in R^n, at its exact
    empirical minimum (w* = the top eigenvector of the data's second moment, an isolated
    minimum up to the sign of w) is a regular model: the map w -> w w^T has full rank n at
    w != 0 and the loss is a positive-definite quadratic in w w^T, so the Hessian is
    nondegenerate and lambda = d / 2 = n / 2. The features are scaled so that n_beta times the
    curvature dwarfs gamma and the higher-order terms of the loss.

    No tolerance above d/2 (`implausible`), so SGLD's step-size bias must be small: at
    eps n_beta = 0.03 this stiff basin reads 2.18 +- 0.02 (implausible), at 0.007 2.04. The
    exact engine (mala) lands on 2.0 without a step-size bias (measured 2.007 +- 0.012)."""
    n, N = 4, 1000
    x = sample_features("sparse-uniform", N, n, 0.5, generator(0, "theory")) \
        * 3.0 * torch.tensor([1.0, 0.6, 0.4, 0.3])
    second_moment = x.double().T @ x.double() / N
    w_star = torch.linalg.eigh(second_moment).eigenvectors[:, -1].float()  # (n,)
    params = llc.LLCParams(eps=5e-5, gamma=0.1, n_beta=N / math.log(N), chains=16, draws=6000,
                           burnin=2000, batch_size=250, seed=0, n_samples=N)
    for engine in ("batched", "mala"):
        task = llc.ChunkTask(engine, [0], [0], ["linear"], [0], w_star[None, None, None],
                             torch.zeros(1, 1, n), x[None], torch.ones(1, n), bias=False,
                             reduction="sum", params=params)
        row = llc.estimate_chunk(task).rows[0]
        assert row["healthy"], (engine, row)
        assert abs(row["llc_mean"] - n / 2) / (n / 2) < (0.10 if engine == "batched" else 0.03), \
            (engine, row)


# ---------------------------------------------------------------------------------------------
# (4) divergence is flagged and isolated


def test_diverging_estimate_is_flagged_and_leaves_the_others_untouched(runs):
    run = runs["chen2023"]
    steps = run.checkpoint_steps()[-2:]
    hp = dict(chains=6, draws=40, burnin=20, eps=3e-3, precond="none")
    clean = llc.estimate_chunk(task_for(run, [0, 1], steps, **hp))
    task = task_for(run, [0, 1], steps, **hp)
    # a third instance: instance 1's checkpoints blown up and run through exp: its loss explodes
    wild = dataclasses.replace(
        task, instances=[0, 1, 99], seeds=task.seeds + [5], activations=task.activations + ["exp"],
        W0=torch.cat([task.W0, 4.0 * task.W0[1:2]]), b0=torch.cat([task.b0, task.b0[1:2]]),
        data=torch.cat([task.data, task.data[1:2]]),
        importance=torch.cat([task.importance, task.importance[1:2]]))
    mixed = llc.estimate_chunk(wild)
    wild_rows = [r for r in mixed.rows if r["instance"] == 99]
    assert wild_rows and all(not r["healthy"] and "diverged" in r["reason"] for r in wild_rows)
    assert all(r["num_diverged"] > 0 for r in wild_rows)
    kept = [r for r in mixed.rows if r["instance"] != 99]
    assert kept == clean.rows  # bit for bit: the diverged chains touched nothing else
    assert all(r["state"] != "diverged" and r["num_diverged"] == 0 for r in clean.rows)


def test_summary_excludes_diverged_chains_and_flags_the_estimate():
    g = torch.Generator().manual_seed(0)
    loss = 1.0 + 0.01 * torch.rand(2, 8, 50, generator=g)
    loss[0, [2, 5], 30:] = float("nan")  # two chains of estimate 0 diverged during the draws
    init = torch.tensor([1.0, 1.0], dtype=torch.float64)
    a, b = llc.summarize(loss, init, n_beta=100.0, n_params=18)
    good = 100.0 * (loss[0, [0, 1, 3, 4, 6, 7]].double().mean(-1) - 1.0)
    assert a["num_diverged"] == 2 and not a["healthy"] and "2 of 8" in a["reason"]
    assert a["llc_mean"] == pytest.approx(float(good.mean()))
    assert a["llc_std"] == pytest.approx(float(good.std()))
    assert b["healthy"] and b["num_diverged"] == 0 and b["reason"] == ""


def test_clearly_negative_and_impossibly_large_llcs_are_flagged():
    loss = torch.stack([torch.full((4, 10), 0.5), torch.full((4, 10), 10.0)])
    loss = loss + 1e-3 * torch.arange(4.0)[:, None]
    rows = llc.summarize(loss, torch.tensor([1.0, 1.0], dtype=torch.float64), 100.0, 18)
    assert rows[0]["state"] == "not_at_minimum" and not rows[0]["healthy"]
    assert "below the checkpoint's loss" in rows[0]["reason"]
    assert rows[1]["state"] == "implausible" and not rows[1]["healthy"]
    assert "above d/2" in rows[1]["reason"]


def test_a_descent_below_the_llcs_resolution_is_a_flat_basin_not_a_saddle():
    """A saturated model (activations27's softmax and solu_ln ends) barely moves its loss: chains
    1e-6 below w*'s loss give an llc of -1e-4 with a tinier sem. That is an LLC of 0 within
    LLC_RESOLUTION, healthy; a descent just past the resolution is still not_at_minimum."""
    g = torch.Generator().manual_seed(1)
    noise = 1e-7 * torch.randn(3, 8, 400, generator=g, dtype=torch.float64)
    # n_beta 100: -1e-6 -> llc -1e-4; -1e-3 -> llc -0.1 (twice the resolution)
    loss = 1.0 + torch.tensor([-1e-6, -1e-3, 0.0])[:, None, None] + noise
    rows = llc.summarize(loss, torch.ones(3, dtype=torch.float64), 100.0, 18)
    assert rows[0]["llc_mean"] == pytest.approx(-1e-4, rel=0.05)
    assert rows[0]["llc_mean"] + 2 * rows[0]["llc_sem"] < 0  # below w*, beyond its noise ...
    assert rows[0]["state"] == "healthy"  # ... but not by a measurable LLC
    assert rows[1]["state"] == "not_at_minimum"
    assert "-0.05" in rows[1]["reason"]
    assert rows[2]["state"] == "healthy"


def test_the_curvature_at_each_checkpoint_matches_autograd(runs):
    """llc.csv's grad_norm, grad_shift and hess_min against autograd through the one-instance
    nn.Module (the oracle devinterp samples) at every checkpoint: |grad L_N(w*)| over W and b,
    the shift n_beta^2 |g|^2 / (gamma + n_beta u^T H u) along u = g / |g|, and the smallest
    eigenvalue of H."""
    run = runs["chen2023"]
    task = task_for(run, [0, 1, 2], run.checkpoint_steps())
    slope = llc.slopes(task)  # (I, S) each
    p = task.params
    for i, activation in enumerate(task.activations):
        x = task.data[i].double()
        for s in range(len(task.steps)):
            model = tms.TMS(task.W0[i, s].double(), task.b0[i, s].double(), activation,
                            task.importance[i].double(), task.reduction, task.bias)

            def oracle(W: torch.Tensor, b: torch.Tensor, model=model, x=x) -> torch.Tensor:
                out = torch.func.functional_call(model, {"W": W, "b": b}, (x,))  # TMS.loss:
                return tms.weighted_error(x, out, model.importance, model.reduction).mean()

            W, b = model.W.detach().requires_grad_(), model.b.detach().requires_grad_()
            grads = torch.autograd.grad(oracle(W, b), (W, b), create_graph=True)
            g = torch.cat([t.flatten() for t in grads])
            H = torch.stack([torch.cat([t.flatten() for t in torch.autograd.grad(
                g_k, (W, b), retain_graph=True)]) for g_k in g]).detach()
            g = g.detach()
            u = g / g.norm()
            shift = p.n_beta**2 * g.norm() ** 2 / (p.gamma + p.n_beta * max(float(u @ H @ u), 0))
            assert float(slope.grad_norm[i, s]) == pytest.approx(float(g.norm()), rel=1e-9)
            assert float(slope.grad_shift[i, s]) == pytest.approx(float(shift), rel=1e-4)
            assert llc.hessian_min(task, i, s) == pytest.approx(
                float(torch.linalg.eigvalsh(H)[0]), rel=1e-4, abs=1e-6)
    assert (slope.grad_norm[:, 0] > 3 * slope.grad_norm[:, -1]).all()  # training shrinks it


def test_a_descent_is_read_as_an_unfinished_step_a_saddle_or_a_plateau_edge():
    """An llc of -50 at n_beta 100, gamma 100: a gradient shift of 100 explains it (not a
    critical point); with none, a Hessian eigenvalue of -2 (gamma + n_beta x -2 < 0) makes it
    negative curvature's, and a Hessian >= 0 (or one of -0.4) a plateau's edge."""
    assert "w* is not a critical point" in llc.which_point(-50.0, 100.0, 0.0, 100.0, 100.0)
    assert "negative curvature" in llc.which_point(-50.0, 0.0, -2.0, 100.0, 100.0)
    assert "the edge of a plateau" in llc.which_point(-50.0, 0.0, 0.0, 100.0, 100.0)
    assert "the edge of a plateau" in llc.which_point(-50.0, 20.0, -0.4, 100.0, 100.0)
    # the shift along g: n_beta^2 |g|^2 / (gamma + n_beta max(c, 0))
    assert float(llc.gradient_shift(5.0, 1.0, 10.0, 4.0)) == pytest.approx(100 * 25 / 14)
    assert float(llc.gradient_shift(5.0, -1.0, 10.0, 4.0)) == pytest.approx(100 * 25 / 4)


def test_sgld_at_a_dead_relu_model_finds_a_plateau_edge(runs):
    """W = 0, b = -0.05 with ReLU: every pre-activation is negative, where ReLU is flat, so
    gradient and Hessian vanish; yet a small positive bias, within the chains' reach, lowers
    the loss of the (non-negative) data. A critical point that is no minimum, as in
    activations27's dead ReLU models: the chains descend and the reason says why."""
    run = runs["chen2023"]
    task = task_for(run, [0], [run.checkpoint_steps()[0]], chains=4, burnin=100, draws=200)
    dead = dataclasses.replace(task, W0=torch.zeros_like(task.W0),
                               b0=torch.full_like(task.b0, -0.05))
    (row,) = llc.estimate_chunk(dead).rows
    assert row["grad_norm"] == row["grad_shift"] == row["hess_min"] == 0.0
    assert row["state"] == "not_at_minimum"
    assert "the edge of a plateau" in row["reason"]


# ---------------------------------------------------------------------------------------------
# (5) chunk independence


def test_an_estimate_is_identical_in_any_chunking(runs):
    run = runs["devinterp-tms"]
    steps = run.checkpoint_steps()[-3:]
    hp = dict(chains=4, draws=70, burnin=30)  # 100 steps: crosses a noise block boundary
    whole = llc.estimate_chunk(task_for(run, [0, 1, 2], steps, **hp))
    by_row = {(r["instance"], r["step"]): r for r in whole.rows}
    pieces = [([1], [steps[1]]), ([0, 2], steps[:2]), ([2], steps), ([0, 1], [steps[2]])]
    for instances, chunk_steps in pieces:
        part = llc.estimate_chunk(task_for(run, instances, chunk_steps, **hp))
        for e, row in enumerate(part.rows):
            assert row == by_row[(row["instance"], row["step"])]
            k = [(i, s) for i in [0, 1, 2] for s in steps].index((row["instance"], row["step"]))
            assert torch.equal(part.traces["loss"][e], whole.traces["loss"][k])


@pytest.mark.slow
def test_compiled_estimates_are_identical_in_any_chunking(runs):
    run = runs["chen2023"]
    steps = run.checkpoint_steps()[-2:]
    hp = dict(chains=4, draws=40, burnin=10)

    def compiled(task):
        return llc.estimate_chunk(dataclasses.replace(task, compiled=True))

    whole = compiled(task_for(run, [0, 1, 2], steps, **hp))
    by_row = {(r["instance"], r["step"]): r for r in whole.rows}
    for instances, chunk_steps in [([1], [steps[0]]), ([0, 2], steps)]:
        for row in compiled(task_for(run, instances, chunk_steps, **hp)).rows:
            assert row == by_row[(row["instance"], row["step"])]


def test_chunk_plan_covers_every_pending_estimate_once():
    pending = [(i, s) for i in range(5) for s in (0, 10, 20)] + [(7, 10)]
    for size in (1, 2, 3, 4, 7, 100):
        chunks = llc.plan_chunks(pending, size)
        covered = [(i, s) for instances, steps in chunks for i in instances for s in steps]
        assert sorted(covered) == sorted(pending)
        assert all(len(i) * len(s) <= max(size, 1) for i, s in chunks)


def test_workers_meet_each_kernel_first_in_different_chunks():
    from devtms.llc.plan import first_compiles_first

    chunks = [("relu", 0), ("relu", 1), ("gelu", 2), ("gelu", 3), ("gelu", 4), ("tanh", 5)]
    ordered = first_compiles_first(chunks, lambda chunk: chunk[0])
    assert ordered == [("relu", 0), ("gelu", 2), ("tanh", 5), ("relu", 1), ("gelu", 3),
                       ("gelu", 4)]
