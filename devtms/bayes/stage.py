"""The bayes stage: the free-energy prediction, the posterior sampled at each N, and SGD's
journey beside them, written to RUN_DIR/bayes/.

    study_inputs(run, activation)   -> Inputs: the instances, their geometry and LLC rows
    phase_table(inputs, ...)        -> phases.csv: each phase training reaches, its loss and LLC
    run_bayes(run, ...)             samples every N of the grid not yet on disk (one task per N,
                                    through an executor), then writes every table

Each N's result is a file of its own (posterior/N_<N>.json, atomic), written as it arrives;
a rerun skips the N whose file holds the same sampler settings and starts, so a kill loses
only the N in flight and the rerun writes the same bytes. The tables are derived from those
files and rewritten at the end.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from devtms import store
from devtms.bayes import free_energy, occupancy, phases, theory
from devtms.bayes.posterior import PosteriorResult, PosteriorTask, sample_posterior
from devtms.bayes.settings import SamplerSettings
from devtms.data import importance_weights, llc_data, sample_features
from devtms.executors import AutoExecutor, Executor, LocalExecutor
from devtms.llc import table as llc_table
from devtms.llc.active import Setting, active_setting
from devtms.llc.engines import estimate_chunk
from devtms.llc.params import LLC_REDUCTION
from devtms.llc.task import ChunkTask
from devtms.progress import progress_bar
from devtms.rng import generator
from devtms.store import RunDir

POSTERIOR_FORMAT = "devtms-bayes-posterior"
RANDOM_START = "random"


@dataclass
class Inputs:
    """What the stage reads from a run, for one activation's instances."""

    run: RunDir
    activation: str
    instances: pd.DataFrame  # the rows of instances.csv studied
    geometry: pd.DataFrame  # their geometry.csv rows
    llc: pd.DataFrame  # their llc.csv rows at the setting read
    setting: Setting


def study_inputs(run: RunDir, activation: str) -> Inputs:
    """The instances of `activation` and their tables. Raises ValueError naming what is missing
    (the command turns it into one line)."""
    inst = run.instances[run.instances["activation"] == activation]
    geometry = run.read_table(store.GEOMETRY_CSV, "devtms analyze")
    if geometry is None:
        raise ValueError(f"{run.path} has no {store.GEOMETRY_CSV}: run `devtms analyze "
                         f"{run.path}` first")
    setting = active_setting(run).of(activation)
    table = llc_table.read_llc_table(run)
    rows = table[(table["setting"] == setting.id) & table["instance"].isin(inst["instance"])]
    if not rows["healthy"].astype(bool).any():
        raise ValueError(f"{run.path} has no healthy LLC estimates of {activation} at its "
                         f"active setting {setting.id}: run `devtms llc {run.path}` first")
    ids = set(inst["instance"])
    return Inputs(run, activation, inst, geometry[geometry["instance"].isin(ids)].copy(),
                  rows.copy(), setting)


# ---------------------------------------------------------------------------------------------
# The phases and their free energy


def closed_form_applies(run: RunDir, activation: str) -> bool:
    """Whether theory.population_loss is this run's loss: ReLU, single-feature data, a bias."""
    cfg = run.config
    return (activation == "relu" and cfg.data.kind == "single-feature" and cfg.model.bias
            and cfg.model.n_hidden == 2)


def phase_table(inputs: Inputs, progress: bool = True) -> tuple[pd.DataFrame, dict]:
    """phases.csv: every label with a measured plateau, and the critical points built for them.

    Columns: k_gon_label, seeds, plateaus_measured, loss_run, llc_run, llc_run_sem (the run's
    plateaus); loss_critical, llc_critical, llc_critical_sem, llc_critical_state (the regular
    k-gon critical point: its exact population loss and its LLC estimated at the run's active
    setting, where the closed form applies); llc_count (theory.llc_count); loss, llc, llc_sem,
    source: what the free energy uses (the critical point where its estimate is healthy,
    else the run's plateaus). -> (table, {label: (W, b)} of the critical points built)
    """
    n = inputs.run.config.model.n_features
    plats = phases.plateaus(inputs.geometry)
    table = phases.run_phases(plats, inputs.llc)
    table = table[(table["plateaus_measured"] > 0) & (table["llc_run"] > 0)]
    table = table[table["k_gon_label"].map(lambda s: theory.parse_label(s) is not None)]
    table = table.sort_values("k_gon_label", key=lambda s: s.map(_label_order)).reset_index(
        drop=True)
    points: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    if closed_form_applies(inputs.run, inputs.activation):
        built = {label: theory.critical_point(label, n) for label in table["k_gon_label"]}
        points = {label: (p.W, p.b) for label, p in built.items() if p is not None}
        estimates = critical_llcs(inputs, points)
        table["loss_critical"] = table["k_gon_label"].map(
            lambda s: built[s].loss if built[s] is not None else np.nan)
        for column in ("llc_critical", "llc_critical_sem", "llc_critical_state"):
            table[column] = table["k_gon_label"].map(
                lambda s, c=column: estimates.get(s, {}).get(c, np.nan))
    else:
        for column in ("loss_critical", "llc_critical", "llc_critical_sem"):
            table[column] = np.nan
        table["llc_critical_state"] = ""
    table["llc_count"] = table["k_gon_label"].map(lambda s: theory.llc_count(s, n))
    built_loss = table["loss_critical"].notna()
    use_critical = table["llc_critical_state"].eq("healthy")
    table["loss"] = np.where(built_loss, table["loss_critical"], table["loss_run"])
    table["llc"] = np.where(use_critical, table["llc_critical"], table["llc_run"])
    table["llc_sem"] = np.where(use_critical, table["llc_critical_sem"], table["llc_run_sem"])
    table["source"] = np.select(
        [use_critical, built_loss], ["critical point",
                                     "critical point's loss, run plateaus' LLC"], "run plateaus")
    # a critical point the sampler walks away from is a saddle: no phase of the posterior
    saddle = table["llc_critical_state"].eq("not_at_minimum")
    table["in_prediction"] = ~saddle
    table.loc[saddle, "source"] = "excluded: its critical point is not a local minimum"
    return table, points


def critical_llcs(inputs: Inputs, points: dict[str, tuple[torch.Tensor, torch.Tensor]]
                  ) -> dict[str, dict]:
    """The LLC of each built critical point at the run's active setting, on the LLC dataset
    of the first instance studied."""
    first = inputs.instances.iloc[:1]
    run = inputs.run
    importance = importance_weights([float(first["importance_ratio"].iloc[0])],
                                    run.config.model.n_features)[0]
    return llcs_at(points, llc_data(run.config, first)[0], importance, inputs.setting,
                   inputs.activation, run.config.model.bias, int(first["seed"].iloc[0]))


def llcs_at(points: dict[str, tuple[torch.Tensor, torch.Tensor]], data: torch.Tensor,
            importance: torch.Tensor, setting: Setting, activation: str, bias: bool,
            seed: int = 0) -> dict[str, dict]:
    """Estimate the LLC at each point (W (m, n), b (n,)) with an LLC setting's engine, as one
    chunk. data: (N, n) the LLC dataset; importance: (n,).
    -> label -> llc_critical, llc_critical_sem, llc_critical_state"""
    if not points:
        return {}
    labels = list(points)
    K = len(labels)
    task = ChunkTask(
        engine=setting.engine, instances=list(range(K)), seeds=[seed] * K,
        activations=[activation] * K, steps=[0],
        W0=torch.stack([points[s][0] for s in labels]).float()[:, None],  # (K, 1, m, n)
        b0=torch.stack([points[s][1] for s in labels]).float()[:, None],
        data=data[None].expand(K, *data.shape).contiguous(),
        importance=importance[None].expand(K, -1).contiguous(), bias=bias,
        reduction=LLC_REDUCTION, params=setting.params)
    rows = estimate_chunk(task).rows
    return {label: {"llc_critical": row["llc_mean"], "llc_critical_sem": row["llc_sem"],
                    "llc_critical_state": row["state"]}
            for label, row in zip(labels, rows, strict=True)}


def _label_order(label: str) -> tuple[int, str]:
    phase = theory.parse_label(label)
    return (phase.k if phase else -1, label)


# ---------------------------------------------------------------------------------------------
# Sampling


@dataclass
class BayesSummary:
    grid: list[int]
    sampled: int  # N computed now
    already_done: int
    executor: str = ""
    written: list[str] = field(default_factory=list)


def posterior_path(run: RunDir, n: int) -> Path:
    return run.path / store.BAYES_DIR / store.BAYES_POSTERIOR / f"N_{n:06d}.json"


def starts(inputs: Inputs, table: pd.DataFrame, points: dict, settings: SamplerSettings,
           n: int) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """The chains' starting points at N: `settings.chains` per phase (its critical point, else
    the last checkpoint of its longest plateau in the run) and as many random ones (xavier W,
    zero bias), each turned by a random rotation of the hidden plane.
    -> labels (S,), W (S, m, n), b (S, n)"""
    run, cfg = inputs.run, inputs.run.config
    m, c = cfg.model.n_hidden, cfg.model.n_features
    g = generator("bayes-starts", settings.seed, n)
    plats = phases.plateaus(inputs.geometry)
    labels, Ws, bs = [], [], []
    for label in [*table.loc[table["in_prediction"], "k_gon_label"], RANDOM_START]:
        if label == RANDOM_START:
            base = None
        elif label in points:
            base = (points[label][0].float(), points[label][1].float())
        else:
            longest = plats[plats["k_gon_label"] == label].sort_values(
                "checkpoints", kind="stable").iloc[-1]
            W, b = run.load_weights([int(longest["last_step"])])
            base = (W[0, int(longest["instance"])], b[0, int(longest["instance"])])
        for _ in range(settings.chains):
            if base is None:
                W = torch.randn(m, c, generator=g) * math.sqrt(2.0 / (m + c))
                b = torch.zeros(c)
            else:
                angle = float(torch.rand(1, generator=g)) * 2 * math.pi
                rot = torch.tensor([[math.cos(angle), -math.sin(angle)],
                                    [math.sin(angle), math.cos(angle)]])
                W, b = rot @ base[0], base[1].clone()
            labels.append(label)
            Ws.append(W)
            bs.append(b)
    return labels, torch.stack(Ws), torch.stack(bs)


def training_set(inputs: Inputs, n: int, settings: SamplerSettings) -> torch.Tensor:
    """The N samples the posterior at N conditions on (the run's data distribution). -> (N, n)"""
    cfg, row = inputs.run.config, inputs.instances.iloc[0]
    return sample_features(cfg.data.kind, n, cfg.model.n_features,
                           float(row["feature_probability"]),
                           generator("bayes-data", settings.seed, n))


def run_bayes(run: RunDir, activation: str, grid: list[int], settings: SamplerSettings,
              executor: Executor | None = None, progress: bool = True) -> BayesSummary:
    """Predict, sample what is missing, and write every table of RUN_DIR/bayes/. The caller
    holds the run's lock and has validated the inputs."""
    inputs = study_inputs(run, activation)
    table, points = phase_table(inputs, progress)
    out = run.path / store.BAYES_DIR
    (out / store.BAYES_POSTERIOR).mkdir(parents=True, exist_ok=True)
    store.write_csv_atomic(out / store.BAYES_PHASES, table)
    summary = BayesSummary(list(grid), 0, 0)

    row = inputs.instances.iloc[0]
    importance = importance_weights([float(row["importance_ratio"])],
                                    run.config.model.n_features)[0]
    tasks, results = [], {}
    for n in grid:
        labels, W, b = starts(inputs, table, points, settings, n)
        stored = read_posterior(posterior_path(run, n))
        if stored is not None and stored["settings"] == settings.to_dict() \
                and stored["start_labels"] == labels and stored["activation"] == activation:
            results[n] = stored
            continue
        tasks.append(PosteriorTask(n, training_set(inputs, n, settings), activation, importance,
                                   run.config.model.bias, labels, W, b, settings))
    summary.already_done = len(results)
    if tasks:
        if isinstance(executor, AutoExecutor):
            executor = executor.for_work(max(t.work for t in tasks))
        executor = executor or LocalExecutor()
        if not isinstance(executor, LocalExecutor):
            summary.executor = getattr(executor, "label", type(executor).__name__)
        bar = progress_bar(len(tasks), "bayes (posterior at each N)", "N", enabled=progress)
        with bar:
            for result in executor.map(sample_posterior, tasks):
                record = posterior_record(result, activation, settings)
                store.write_json_atomic(posterior_path(run, result.n), record)
                results[result.n] = record
                summary.sampled += 1
                bar.update(1)
    summary.written = write_tables(run, inputs, table, [results[n] for n in sorted(grid)])
    run.set_stage("bayes", done=True, activation=activation, grid=sorted(grid),
                  settings=settings.to_dict(), llc_setting=inputs.setting.id)
    return summary


def posterior_record(result: PosteriorResult, activation: str, settings: SamplerSettings) -> dict:
    return {"format": POSTERIOR_FORMAT, "N": result.n, "activation": activation,
            "settings": settings.to_dict(), "start_labels": result.start_labels,
            "counts": result.counts, "betas": result.betas,
            "swap_acceptance": result.swap_acceptance, "diverged": result.diverged}


def read_posterior(path: Path) -> dict | None:
    """A stored N's record, or None when absent or not one (it is then sampled again)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("format") == POSTERIOR_FORMAT \
        else None


def write_tables(run: RunDir, inputs: Inputs, table: pd.DataFrame, records: list[dict]
                 ) -> list[str]:
    """Every derived table of bayes/ from phases.csv and the per-N records."""
    out = run.path / store.BAYES_DIR
    n_grid = np.geomspace(*free_energy.PREDICTION_RANGE, 200)
    occ = occupancy.occupancy(records)
    by_start = occupancy.by_start(records)
    mixing = occupancy.mixing(records)
    in_play = table[table["in_prediction"]]
    crossings = occupancy.with_sampled(in_play, records, mixing)
    plats = phases.plateaus(inputs.geometry)
    sgd = phases.sgd_order(plats[plats["k_gon_label"].isin(in_play["k_gon_label"])],
                           len(inputs.instances))
    files = {
        store.BAYES_FREE_ENERGY: free_energy.curves(in_play, n_grid),
        store.BAYES_OCCUPANCY: occ,
        store.BAYES_OCCUPANCY_BY_START: by_start,
        store.BAYES_MIXING: mixing,
        store.BAYES_CROSSOVERS: crossings,
        store.BAYES_SEQUENCES: occupancy.sequences(in_play, occ, sgd),
        store.BAYES_SGD: phases.sgd_fractions(inputs.geometry),
    }
    for name, frame in files.items():
        store.write_csv_atomic(out / name, frame)
    return [store.BAYES_PHASES, *files]
