"""What an engine receives and returns: a chunk of estimates (instances x checkpoint steps).

`ChunkTask` carries the tensors and hyperparameters of a chunk and nothing else (no file
handles), so an executor can send it to another process or machine; `ChunkResult` carries
llc.csv's rows and the loss traces back. Both engines (devtms.llc.batched and
devtms.llc.reference) share `init_losses` and `make_result` (which also reads the loss's
gradient and curvature at each checkpoint, devtms.llc.curvature), so they differ only in
sampling.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from devtms import model as tms
from devtms.activations import contiguous_groups
from devtms.llc.curvature import Slopes, hessian_min, slopes
from devtms.llc.health import is_critical, join_reasons, summarize, which_point
from devtms.llc.params import LLCParams, num_parameters

Tensor = torch.Tensor


@dataclass
class ChunkTask:
    """Everything an engine needs for the estimates instances x steps. Picklable.

    W0: (I, S, m, n), b0: (I, S, n): the checkpoints; data: (I, N, n): each instance's LLC
    dataset; importance: (I, n).
    """

    engine: str
    instances: list[int]
    seeds: list[int]
    activations: list[str]
    steps: list[int]
    W0: Tensor
    b0: Tensor
    data: Tensor
    importance: Tensor
    bias: bool
    reduction: str
    params: LLCParams
    compiled: bool = False
    device: str = "cpu"

    @property
    def num_estimates(self) -> int:
        return len(self.instances) * len(self.steps)


@dataclass
class ChunkResult:
    """Rows for llc.csv (one per estimate, instance-major) and their loss traces.

    traces: instance (E,), step (E,), loss (E, chains, draws) with NaN for diverged chains,
    init_loss (E,), mala (E, chains) mean acceptance per chain (NaN where not computed).
    """

    engine: str
    params: LLCParams
    rows: list[dict[str, Any]]
    traces: dict[str, Tensor] = field(default_factory=dict)

    def only(self, wanted: set[tuple[int, int]]) -> ChunkResult:
        """The estimates (instance, step) in `wanted`, rows and traces alike."""
        keep = [e for e, r in enumerate(self.rows) if (r["instance"], r["step"]) in wanted]
        if len(keep) == len(self.rows):
            return self
        index = torch.tensor(keep, dtype=torch.long)
        return ChunkResult(self.engine, self.params, [self.rows[e] for e in keep],
                           {k: v[index] for k, v in self.traces.items()})


def init_losses(task: ChunkTask) -> Tensor:
    """L_N(w*) of every estimate on its instance's full LLC dataset, float64. -> (I, S)

    Computed one estimate at a time with model.loss (the same shapes every time, so the same
    bits whatever the chunk); both engines use these numbers.
    """
    I, S = task.W0.shape[:2]
    out = torch.empty(I, S, dtype=torch.float64)
    with torch.no_grad():
        for i in range(I):
            groups = contiguous_groups([task.activations[i]])
            x, imp = task.data[i : i + 1], task.importance[i : i + 1]
            for s in range(S):
                out[i, s] = tms.loss(task.W0[i, s][None], task.b0[i, s][None], x, imp, groups,
                                     task.reduction)[0].item()
    return out


def make_result(task: ChunkTask, init: Tensor, loss: Tensor, mala: Tensor,
                reported: dict[tuple[int, int], tuple[float, float, str]] | None = None
                ) -> ChunkResult:
    """Rows and traces of a chunk from its sampled losses.

    init: (I, S); loss: (I, S, chains, draws); mala: (I, S, chains). `reported`: the reference
    engine's own (llc_mean, llc_std, error) per (i, s), which replace the statistics.
    """
    I, S, m, n = task.W0.shape
    d = num_parameters(m, n, task.bias)
    flat_loss = loss.reshape(I * S, *loss.shape[2:])
    flat_mala = mala.reshape(I * S, -1)
    stats = summarize(flat_loss, init.reshape(-1), task.params.n_beta, d, flat_mala)
    slope = slopes(task)
    rows = []
    for e, (i, s) in enumerate(np.ndindex(I, S)):
        row = dict(instance=task.instances[i], step=task.steps[s],
                   setting=task.params.tag(task.engine), **task.params.identity(task.engine),
                   init_loss=float(init[i, s]), **stats[e])
        if reported is not None:  # the reference engine reports devinterp's own numbers
            mean, std, error = reported[(i, s)]
            row.update(llc_mean=mean, llc_std=std, llc_sem=std / math.sqrt(task.params.chains))
            if error:
                row.update(healthy=False, reason=join_reasons(row["reason"], error),
                           state="diverged" if row["state"] == "healthy" else row["state"])
        rows.append(row | _point(task, i, s, row, slope))
    traces = dict(
        instance=torch.tensor(task.instances, dtype=torch.int64).repeat_interleave(S),
        step=torch.tensor(task.steps, dtype=torch.int64).repeat(I),
        loss=flat_loss.contiguous(), init_loss=init.reshape(-1).contiguous(),
        mala=flat_mala.contiguous(),
    )
    return ChunkResult(task.engine, task.params, rows, traces)


def _point(task: ChunkTask, i: int, s: int, row: dict[str, Any], slope: Slopes
           ) -> dict[str, Any]:
    """llc.csv's grad_norm, grad_shift and hess_min of one estimate, and for a not_at_minimum
    one its reason with what explains the descent (devtms.llc.health.which_point): the
    Hessian is computed only where that needs it."""
    p = task.params
    norm, shift = float(slope.grad_norm[i, s]), float(slope.grad_shift[i, s])
    out = dict(grad_norm=norm, grad_shift=shift, hess_min=math.nan)  # one NaN: rows compare equal
    if row["state"] == "not_at_minimum":
        if is_critical(row["llc_mean"], shift):
            out["hess_min"] = hessian_min(task, i, s)
        out["reason"] = join_reasons(row["reason"], which_point(
            row["llc_mean"], shift, out["hess_min"], p.n_beta, p.gamma))
    return out
