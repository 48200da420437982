"""Calibrating SGLD: an eps x gamma (x n_beta) grid of LLC estimates at one checkpoint step.

devinterp's calibration guidance, which the table and figure are made to answer:
- a healthy loss trace rises from the checkpoint's loss and settles into a flat band;
- eps too large: traces blow up (diverged chains) or sink below the start (negative LLC);
- gamma too large pins the chains near w* and biases the LLC low; too small lets them wander;
- MALA acceptance near 0.9 suggests a well-sized eps.

    job = build_job(run, step="last")          # validated; writes nothing
    table, traces = calibrate(inputs, job)     # pure: runs the batched engine per grid cell
    run_calibration(run, job)                  # both, plus calibration/*.csv and *.png

Every cell runs with burn-in folded into the recorded draws so the figure can show the whole
trace from the checkpoint on; the table's LLC uses only the draws after the burn-in, exactly as
`devtms llc` would.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from devtms import llc
from devtms.errors import UserError
from devtms.report.figures.calibration import calibration_figure
from devtms.report.figures.render import PNG_DPI, figure_bytes
from devtms.store import CALIBRATION_DIR, RunDir, write_bytes_atomic, write_csv_atomic

Tensor = torch.Tensor

DEFAULT_EPS = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3)
DEFAULT_GAMMA = (1.0, 10.0, 100.0, 1000.0)
MAX_DEFAULT_INSTANCES = 4


@dataclass
class CalibrationJob:
    step: int
    instances: list[int]
    cells: list[llc.LLCParams]  # one per (eps, gamma, n_beta), same chains/draws/burnin/...
    compiled: bool
    device: str


def parse_grid(spec: str | None, default: tuple[float, ...] | None, flag: str) -> list[float]:
    if spec is None:
        return list(default or ())
    values = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            value = float(part)
        except ValueError:
            raise UserError(f"{flag}: {part!r} is not a number") from None
        if not math.isfinite(value) or value <= 0:
            raise UserError(f"{flag}: {part!r} is not allowed: must be a positive number")
        values.append(value)
    if not values:
        raise UserError(f"{flag}: empty list")
    return sorted(set(values))


def build_job(run: RunDir, *, step: str, instances: str | None = None,
              eps_grid: str | None = None, gamma_grid: str | None = None,
              n_beta_grid: str | None = None, overrides: dict[str, Any] | None = None,
              device: str = "cpu", compile_setting: str = "auto") -> CalibrationJob:
    """Validate a calibration against the run; raises UserError. Writes nothing."""
    request = llc.build_request(run, instances=instances, steps=str(step), engine="batched",
                                overrides=overrides, device=device)
    if len(request.steps) != 1:
        raise UserError(f"--step {step}: give one checkpoint step, not a range")
    chosen = request.instances
    if instances is None and len(chosen) > MAX_DEFAULT_INSTANCES:
        picks = np.linspace(0, len(chosen) - 1, MAX_DEFAULT_INSTANCES).round().astype(int)
        chosen = [chosen[k] for k in sorted(set(picks.tolist()))]
    base = request.params
    n_betas = parse_grid(n_beta_grid, (base.n_beta,), "--n-beta-grid")
    cells = [dataclasses.replace(base, eps=e, gamma=g, n_beta=nb)
             for nb in n_betas
             for g in parse_grid(gamma_grid, DEFAULT_GAMMA, "--gamma-grid")
             for e in parse_grid(eps_grid, DEFAULT_EPS, "--eps-grid")]
    compiled = llc.use_compile(run.config, base, "batched", compile_setting) and \
        len(cells) * len(chosen) * base.chains * (base.burnin + base.draws) > 2e6
    return CalibrationJob(step=request.steps[0], instances=chosen, cells=cells,
                          compiled=compiled, device=request.device)


def calibrate(inputs: llc.RunInputs, job: CalibrationJob
              ) -> tuple[pd.DataFrame, dict[tuple[float, float, float], Tensor]]:
    """Run every cell. -> (table, traces) with traces[(eps, gamma, n_beta)]: (I, chains, T)
    the loss of every chain at every SGLD step from the checkpoint on (T = burnin + draws)."""
    rows, traces = [], {}
    for cell in job.cells:
        full = dataclasses.replace(cell, draws=cell.burnin + cell.draws, burnin=0)
        request = llc.LLCRequest(job.instances, [job.step], "batched", full, job.compiled,
                                 job.device)
        result = llc.estimate_chunk(inputs.task(job.instances, [job.step], request))
        loss = result.traces["loss"]  # (I, C, T), instances in job order (one step)
        init = result.traces["init_loss"]
        d = llc.num_parameters(inputs.config.model.n_hidden, inputs.config.model.n_features,
                               inputs.config.model.bias)
        stats = llc.summarize(loss[..., cell.burnin :], init, cell.n_beta, d,
                              result.traces["mala"])
        for k, instance in enumerate(job.instances):
            rows.append(dict(eps=cell.eps, gamma=cell.gamma, n_beta=cell.n_beta,
                             instance=instance,
                             activation=inputs.table.set_index("instance").loc[instance,
                                                                               "activation"],
                             step=job.step, **stats[k],
                             init_loss=float(init[k]), chains=cell.chains, draws=cell.draws,
                             burnin=cell.burnin, batch_size=cell.batch_size, seed=cell.seed))
        traces[(cell.eps, cell.gamma, cell.n_beta)] = loss
    return pd.DataFrame(rows), traces


def run_calibration(run: RunDir, job: CalibrationJob) -> tuple[Path, Path]:
    """Compute the grid and write calibration/step_<S>.csv and .png (one figure per n_beta)."""
    inputs = llc.RunInputs(run, job.instances, [job.step])
    table, traces = calibrate(inputs, job)
    out = run.path / CALIBRATION_DIR
    table_path = out / f"step_{job.step:08d}.csv"
    write_csv_atomic(table_path, table)
    figure_path = out / f"step_{job.step:08d}.png"
    model = inputs.config.model
    d = llc.num_parameters(model.n_hidden, model.n_features, model.bias)
    n_betas = sorted(table["n_beta"].unique())
    for k, n_beta in enumerate(n_betas):
        path = figure_path if k == 0 else out / f"step_{job.step:08d}_nbeta_{n_beta:.4g}.png"
        figure = calibration_figure(table[table["n_beta"] == n_beta], traces, d)
        write_bytes_atomic(path, figure_bytes(figure, "png", creator="devtms calibrate",
                                              dpi=PNG_DPI))
    return table_path, figure_path
