"""A `devtms llc` job: what to estimate and how (validated against the run), and the tensors
its chunks are cut from."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch

from devtms.data import importance_weights, llc_data
from devtms.errors import UserError
from devtms.llc.active import ActivationSettings, Setting, active_setting
from devtms.llc.check import REFERENCE_ENGINE, reference_params
from devtms.llc.engines import ENGINES
from devtms.llc.params import LLC_REDUCTION, LLCParams
from devtms.llc.plan import use_compile
from devtms.llc.task import ChunkTask
from devtms.options import check_device, parse_instances, parse_steps
from devtms.store import RunDir


@dataclass
class LLCRequest:
    """A validated `devtms llc` job: which estimates, how."""

    instances: list[int]
    steps: list[int]
    engine: str
    params: LLCParams
    compiled: bool
    device: str
    chunk_size: int | None = None
    # activation -> its hyperparameters where they are not `params` (the run's active setting
    # per activation, with the job's explicit values)
    by_activation: dict[str, LLCParams] = field(default_factory=dict)
    # the (instance, step) estimates wanted, where they are not instances x steps (the
    # self-check's sample: devtms.llc.check)
    pairs: list[tuple[int, int]] | None = None

    @property
    def wanted(self) -> list[tuple[int, int]]:
        if self.pairs is not None:
            return list(self.pairs)
        return [(i, s) for i in self.instances for s in self.steps]

    @property
    def settings(self) -> ActivationSettings:
        return ActivationSettings(Setting(self.params, self.engine), {
            a: Setting(p, self.engine) for a, p in self.by_activation.items()})

    def parts(self, table: pd.DataFrame) -> list[LLCRequest]:
        """The job as one request per setting, each with the instances it serves (`table`:
        instances.csv); just this one when every instance has `params`."""
        if not self.by_activation:
            return [self]
        chosen = table[table["instance"].isin(self.instances)]
        return [dataclasses.replace(self, instances=instances, params=setting.params,
                                    by_activation={})
                for setting, instances in self.settings.groups(chosen)]


def build_request(run: RunDir, *, instances: str | None = None, steps: str | None = None,
                  engine: str | None = None, overrides: dict[str, Any] | None = None,
                  device: str = "cpu", chunk_size: int | None = None,
                  compile_setting: str = "auto") -> LLCRequest:
    """Validate a job against the run; raises UserError naming the problem. Writes nothing.

    The hyperparameters are the run's active setting (devtms.llc.active), each activation's
    own, with `overrides` replacing some of them in each. engine None: the active setting's
    engine; the reference engine (mala) gets the self-check's values for each activation's
    posterior (devtms.llc.check.reference_params); another engine gets the default's values
    for every activation.
    """
    active = active_setting(run)
    engine = engine or active.engine
    if engine not in ENGINES:
        raise UserError(f"--engine {engine!r}: choose one of {', '.join(ENGINES)}")
    if not run.stage_done("train"):
        raise UserError(f"{run.path}: training is not complete; finish it first with "
                        "`devtms train CONFIG --out RUN_DIR --resume`")
    if chunk_size is not None and chunk_size < 1:
        raise UserError(f"--chunk-size {chunk_size} is not allowed: must be an integer >= 1")
    config = run.config.with_llc(**(overrides or {}))  # validates the values

    def of(setting: LLCParams) -> LLCParams:  # the job's values from an active setting's
        if engine == REFERENCE_ENGINE:  # what the self-check runs, unless told otherwise
            setting = reference_params(setting)
        return dataclasses.replace(setting, **(overrides or {}))

    params = of(active.default.params)
    own = {a: of(s.params) for a, s in active.by_activation.items()} \
        if engine in (active.engine, REFERENCE_ENGINE) else {}
    by_activation = {a: p for a, p in own.items() if p != params}
    if engine == REFERENCE_ENGINE and params.batch_size != params.n_samples:
        raise UserError(f"--engine {REFERENCE_ENGINE} reads the whole LLC dataset at every step: "
                        f"--batch-size must be N = {params.n_samples} or left out")
    if params.batch_size > params.n_samples:
        raise UserError(f"--batch-size {params.batch_size} is larger than the LLC dataset "
                        f"(N = {params.n_samples})")
    if engine == "devinterp" and any(p.precond != "none"
                                     for p in (params, *by_activation.values())):
        raise UserError("--engine devinterp cannot run a preconditioned setting (devinterp's "
                        "SGLD has no preconditioner): pass --precond none, or use --engine "
                        "batched")
    if engine == "devinterp":
        try:
            import devinterp  # noqa: F401
        except ImportError:
            raise UserError("--engine devinterp needs devinterp: pip install 'devinterp>=1.3.2,<2'"
                            ) from None
    return LLCRequest(
        instances=parse_instances(instances, run.instances["instance"].tolist()),
        steps=parse_steps(steps, run.checkpoint_steps()),
        engine=engine, params=params, compiled=use_compile(config, params, engine, compile_setting),
        device=check_device(device), chunk_size=chunk_size, by_activation=by_activation)


class RunInputs:
    """The tensors tasks are cut from: checkpoints (verified), LLC datasets, importance."""

    def __init__(self, run: RunDir, instances: list[int], steps: list[int]):
        table = run.instances.set_index("instance").loc[instances].reset_index()
        self.config = run.config
        self.table = table
        self.row = {int(i): k for k, i in enumerate(table["instance"])}
        self.col = {int(s): k for k, s in enumerate(steps)}
        W, b = run.load_weights(steps)  # (S, I_all, m, n): every checkpoint verified here
        index = torch.tensor(instances, dtype=torch.long)
        self.W = W.index_select(1, index).transpose(0, 1).contiguous()  # (I, S, m, n)
        self.b = b.index_select(1, index).transpose(0, 1).contiguous()  # (I, S, n)
        self.data = llc_data(run.config, table)  # (I, N, n)
        self.importance = importance_weights(table["importance_ratio"],
                                             run.config.model.n_features)

    def task(self, instances: list[int], steps: list[int], request: LLCRequest) -> ChunkTask:
        rows = torch.tensor([self.row[i] for i in instances], dtype=torch.long)
        cols = torch.tensor([self.col[s] for s in steps], dtype=torch.long)
        t = self.table.iloc[rows.numpy()]
        return ChunkTask(
            engine=request.engine, instances=list(instances), seeds=[int(s) for s in t["seed"]],
            activations=list(t["activation"]), steps=list(steps),
            W0=self.W[rows][:, cols].contiguous(), b0=self.b[rows][:, cols].contiguous(),
            data=self.data[rows].contiguous(), importance=self.importance[rows].contiguous(),
            bias=self.config.model.bias, reduction=LLC_REDUCTION,
            params=request.params, compiled=request.compiled, device=request.device)
