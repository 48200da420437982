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
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from devtms import llc
from devtms.errors import UserError
from devtms.store import RunDir, write_bytes_atomic, write_csv_atomic

Tensor = torch.Tensor

CALIBRATION_DIR = "calibration"
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
        half = loss[..., cell.burnin :]
        first, second = half[..., : half.shape[-1] // 2], half[..., half.shape[-1] // 2 :]
        drift = cell.n_beta * (second.double().mean((-1, -2)) - first.double().mean((-1, -2)))
        for k, instance in enumerate(job.instances):
            rows.append(dict(eps=cell.eps, gamma=cell.gamma, n_beta=cell.n_beta,
                             instance=instance,
                             activation=inputs.table.set_index("instance").loc[instance,
                                                                               "activation"],
                             step=job.step, **stats[k], llc_drift=float(drift[k]),
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
    n_betas = sorted(table["n_beta"].unique())
    for k, n_beta in enumerate(n_betas):
        path = figure_path if k == 0 else out / f"step_{job.step:08d}_nbeta_{n_beta:.4g}.png"
        figure = plot_calibration(table[table["n_beta"] == n_beta], traces, job, inputs)
        write_bytes_atomic(path, _png_bytes(figure))
    return table_path, figure_path


def plot_calibration(table: pd.DataFrame, traces: dict[tuple[float, float, float], Tensor],
                     job: CalibrationJob, inputs: llc.RunInputs):
    """Top: one panel per (gamma, eps) with n_beta (mean chain loss - init loss) over SGLD steps
    per instance; bottom: LLC per cell as a heatmap per instance. -> matplotlib Figure"""
    with warnings.catch_warnings():  # all-diverged cells: means of empty slices are NaN, fine
        warnings.simplefilter("ignore", RuntimeWarning)
        return _plot(table, traces, job, inputs)


def _plot(table: pd.DataFrame, traces: dict[tuple[float, float, float], Tensor],
          job: CalibrationJob, inputs: llc.RunInputs):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epss = sorted(table["eps"].unique())
    gammas = sorted(table["gamma"].unique())
    n_beta = float(table["n_beta"].iloc[0])
    instances = job.instances
    cell0 = job.cells[0]
    colors = plt.get_cmap("tab10")
    acts = inputs.table.set_index("instance")["activation"]
    d = llc.num_parameters(inputs.config.model.n_hidden, inputs.config.model.n_features,
                           inputs.config.model.bias)

    n_rows, n_cols = len(gammas), len(epss)
    heat_cols = len(instances)
    fig = plt.figure(figsize=(max(2.6 * n_cols, 3.2 * heat_cols) + 1.0, 2.1 * n_rows + 3.4),
                     layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[2.1 * n_rows, 3.0])
    axes = np.atleast_2d(top.subplots(n_rows, n_cols, sharex=True, squeeze=False))
    init = {}
    for r, gamma in enumerate(reversed(gammas)):
        for c, eps in enumerate(epss):
            ax = axes[r, c]
            loss = traces[(eps, gamma, n_beta)]  # (I, C, T)
            cells = table[(table["eps"] == eps) & (table["gamma"] == gamma)].set_index("instance")
            for k, instance in enumerate(instances):
                init[instance] = float(cells.loc[instance, "init_loss"])
                mean = np.nanmean(loss[k].double().numpy(), axis=0)  # (T,)
                y = n_beta * (mean - init[instance])
                ax.plot(np.arange(len(y)), y, color=colors(k % 10), lw=1.0,
                        label=f"{instance} ({acts[instance]})")
            ax.axhline(0.0, color="black", ls="--", lw=0.8)
            ax.axvspan(0, cell0.burnin, color="0.9", zorder=0)
            bad = cells[~cells["healthy"].astype(bool)]
            title = f"eps={eps:g}, gamma={gamma:g}"
            if len(bad):
                title += f"  [{len(bad)} unhealthy]"
            ax.set_title(title, fontsize=8, color="firebrick" if len(bad) else "black")
            ax.tick_params(labelsize=7)
            finite = np.concatenate([
                n_beta * (np.nanmean(traces[(eps, gamma, n_beta)][k].double().numpy(), axis=0)
                          - init[i]) for k, i in enumerate(instances)])
            finite = finite[np.isfinite(finite)]
            if finite.size:
                lo, hi = np.percentile(finite, [1, 99])
                span = max(hi - lo, 1e-3)
                ax.set_ylim(min(lo, 0) - 0.1 * span, max(hi, 0) + 0.1 * span)
            if r == n_rows - 1:
                ax.set_xlabel("SGLD step", fontsize=8)
            if c == 0:
                ax.set_ylabel("n_beta (loss - init)", fontsize=8)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    top.legend(handles, labels, loc="outside upper right", fontsize=8, ncols=len(instances),
               title="instance (activation); dashed: init loss, grey: burn-in",
               title_fontsize=8)
    top.suptitle(f"mean loss trace per cell, step {job.step}, n_beta={n_beta:.4g}, "
                 f"{cell0.chains} chains", fontsize=10)

    hax = np.atleast_1d(bottom.subplots(1, heat_cols, squeeze=False)[0])
    for k, instance in enumerate(instances):
        ax = hax[k]
        sub = table[table["instance"] == instance]
        grid = sub.pivot(index="gamma", columns="eps", values="llc_mean").reindex(
            index=list(reversed(gammas)), columns=epss)
        healthy = sub.pivot(index="gamma", columns="eps", values="healthy").reindex(
            index=list(reversed(gammas)), columns=epss)
        values = grid.to_numpy(dtype=float)
        finite = values[np.isfinite(values)]
        vmax = max(float(np.percentile(np.abs(finite), 95)) if finite.size else 1.0, 1e-6)
        im = ax.imshow(np.clip(values, -vmax, vmax), cmap="RdBu_r", vmin=-vmax, vmax=vmax,
                       aspect="auto")
        for (r, c), v in np.ndenumerate(values):
            ok = bool(healthy.iloc[r, c]) if not pd.isna(healthy.iloc[r, c]) else False
            text = "nan" if not np.isfinite(v) else f"{v:.3g}"
            ax.text(c, r, text + ("" if ok else "\n(x)"), ha="center", va="center", fontsize=7,
                    color="black" if ok else "firebrick")
        ax.set_xticks(range(len(epss)), [f"{e:g}" for e in epss], fontsize=7, rotation=30)
        ax.set_yticks(range(len(gammas)), [f"{g:g}" for g in reversed(gammas)], fontsize=7)
        ax.set_xlabel("eps", fontsize=8)
        if k == 0:
            ax.set_ylabel("gamma", fontsize=8)
        ax.set_title(f"LLC, instance {instance} ({acts[instance]}); d/2 = {d / 2:g}", fontsize=8)
        bottom.colorbar(im, ax=ax, shrink=0.8)
    bottom.suptitle("LLC per cell ((x): unhealthy: diverged, negative or above d/2)",
                    fontsize=10)
    return fig


def _png_bytes(figure) -> bytes:
    import io

    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return buffer.getvalue()
