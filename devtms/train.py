"""The batched trainer: all instances of a run as one tensor program, checkpointed on a schedule.

`BatchTrainer` is the pure core: it holds the stacked parameters and optimizer of a set of
instances and yields a `Checkpoint` at every scheduled step. It touches no files, so the
same code trains a whole run in-process or a shard of instances on a Dask worker.
`train_run` is the local driver: it writes the run directory and resumes an interrupted run.

    W: (I, m, n), b: (I, n) as in devtms.model. Step t's checkpoint holds the weights after
    t optimizer updates (step 0 is the initialisation).

Resume is exact: data and minibatches are pure functions of (seed, step) (devtms.data), the
learning rate is a pure function of the step, and the optimizer state is saved in every
checkpoint, so a resumed run reaches bit-identical weights on the same machine.

Extending is resuming towards a larger train.steps (`extension_problem` says when a config may
extend a run, `extend_run` records it): with a constant learning rate the longer run passes
through every checkpoint of the shorter one, so the extended run's weights are those of the
longer run trained in one go, bit for bit. The steps already trained keep their checkpoints;
the longer schedule's checkpoints follow beyond them (`run_schedule`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from devtms import model as tms
from devtms.activations import contiguous_groups
from devtms.compiling import compile_available
from devtms.config import RunConfig
from devtms.data import importance_weights, training_data
from devtms.errors import RunDirError
from devtms.executors import Executor, LocalExecutor
from devtms.progress import progress_bar
from devtms.schedule import checkpoint_steps, log_steps_default_every
from devtms.store import TRAIN_LOG, RunDir
from devtms.threads import threads_for, torch_threads

Tensor = torch.Tensor


@dataclass
class Checkpoint:
    step: int
    tensors: dict[str, Tensor]  # "W", "b" and "optim/<param>/<name>" optimizer state, on CPU
    log: pd.DataFrame  # step, instance, loss for the logged steps in (previous checkpoint, step]


def lr_factor(schedule: str, step: int, total: int) -> float:
    """Multiplier of the base learning rate at `step` (decays to 0 at `total`)."""
    if schedule == "constant":
        return 1.0
    if schedule == "linear":
        return 1.0 - step / total
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * step / total))
    raise ValueError(f"unknown lr schedule {schedule!r}")


COMPILE_MIN_STEPS = 10_000  # auto: compile training this long ...
COMPILE_MIN_ACTIVATIONS = 4  # ... of this many activations


def use_compile(config: RunConfig) -> bool:
    """Whether training runs `model.loss_and_grad` through torch.compile (train.compile).

    "auto": when torch.compile works here and the run repays the compile (~1 s per activation
    cold, a fraction once torch's disk cache holds it): eagerly a step costs a few small ops
    per activation, compiled a few loops in all (activations27: 3-4x faster steps). Decided by
    the config alone, never by a shard's instances, so every shard and every resume of a run
    uses the same kernels and numbers.
    """
    setting = config.train.compile
    if setting == "off":
        return False
    long_and_varied = (config.train.steps >= COMPILE_MIN_STEPS
                       and len(config.model.activations) >= COMPILE_MIN_ACTIVATIONS)
    return (setting == "on" or long_and_varied) and compile_available()


def log_every(config: RunConfig) -> int:
    return config.train.log_every or log_steps_default_every(config.train.steps)


class BatchTrainer:
    """Trains a set of instances (rows of instances.csv) together."""

    def __init__(self, config: RunConfig, instances: pd.DataFrame, device: str = "cpu",
                 schedule: list[int] | None = None):
        self.config, self.device = config, torch.device(device)
        self.instance_ids = instances["instance"].to_numpy()
        self.groups = contiguous_groups(list(instances["activation"]))
        self.importance = importance_weights(instances["importance_ratio"],
                                             config.model.n_features).to(self.device)
        self.batches, eval_set = training_data(config, instances)
        self.eval_set = eval_set.to(self.device)
        t, m = config.train, config.model
        W, b = tms.init_params(
            [int(s) for s in instances["seed"]], m.n_features, m.n_hidden, init=t.init,
            kgon_k=t.init_kgon_k, kgon_length=t.init_kgon_length, noise=t.init_noise,
            bias_std=t.init_bias_std,
        )
        self.W = W.to(self.device).requires_grad_(True)
        self.b = b.to(self.device).requires_grad_(m.bias)
        self.params = [self.W, self.b] if m.bias else [self.W]
        self.optimizer = self._make_optimizer()
        # (W, b, x, importance) -> (loss, dW, db): torch.compile's fused kernel or the eager ops
        self.compiled = use_compile(config)
        self.loss_and_grad = (tms.compiled_loss_and_grad(self.groups, m.reduction,
                                                        m.n_features)
                              if self.compiled else
                              functools.partial(tms.loss_and_grad, groups=self.groups,
                                                reduction=m.reduction))
        self.step = 0
        # the checkpoint steps (default: the config's; an extended run's: `run_schedule`)
        self.schedule = schedule or checkpoint_steps(t.steps, config.checkpoints.log_points,
                                                     config.checkpoints.linear_every)

    def _make_optimizer(self) -> torch.optim.Optimizer:
        t = self.config.train
        # fused: one kernel per parameter tensor instead of a Python loop of small ops
        if t.optimizer == "sgd":
            return torch.optim.SGD(self.params, lr=t.lr, momentum=t.momentum,
                                   weight_decay=t.weight_decay, fused=True)
        cls = torch.optim.Adam if t.optimizer == "adam" else torch.optim.AdamW
        return cls(self.params, lr=t.lr, weight_decay=t.weight_decay, fused=True)

    # -- state ----------------------------------------------------------------------------

    def state_tensors(self) -> dict[str, Tensor]:
        tensors = {"W": self.W.detach().cpu().clone(), "b": self.b.detach().cpu().clone()}
        for index, state in self.optimizer.state_dict()["state"].items():
            for name, value in state.items():
                tensors[f"optim/{index}/{name}"] = torch.as_tensor(value).cpu().clone()
        return tensors

    def load_state(self, tensors: dict[str, Tensor], step: int) -> None:
        with torch.no_grad():
            self.W.copy_(tensors["W"])
            self.b.copy_(tensors["b"])
        state: dict[int, dict[str, Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith("optim/"):
                _, index, name = key.split("/", 2)
                state.setdefault(int(index), {})[name] = value.to(self.device)
        full = self.optimizer.state_dict()
        full["state"] = state
        self.optimizer.load_state_dict(full)
        self.step = step

    # -- training -------------------------------------------------------------------------

    @torch.no_grad()
    def eval_loss(self) -> Tensor:
        """Loss of every instance on its fixed set (the training set for finite data). -> (I,)"""
        return tms.loss(self.W, self.b, self.eval_set, self.importance, self.groups,
                        self.config.model.reduction)

    def train_step(self) -> None:
        t = self.config.train
        for group in self.optimizer.param_groups:
            group["lr"] = t.lr * lr_factor(t.lr_schedule, self.step, t.steps)
        x = self.batches.batch(self.step).to(self.device)
        # Exact gradients of each instance's own loss (instances never interact), formed
        # without an autograd graph; the optimizer then steps all instances at once.
        _, dW, db = self.loss_and_grad(self.W.detach(), self.b.detach(), x, self.importance)
        self.W.grad = dW
        self.b.grad = db if self.config.model.bias else None
        self.optimizer.step()
        self.step += 1

    def run(self, progress=None, stop: int | None = None) -> Iterator[Checkpoint]:
        """Train, yielding a Checkpoint at every scheduled step from self.step up to `stop`
        (a scheduled step; default the last)."""
        total, every = self.config.train.steps, log_every(self.config)
        stop = total if stop is None else stop
        schedule = set(self.schedule)
        logged: list[tuple[int, np.ndarray]] = []
        while True:
            step = self.step
            if step % every == 0 or step in schedule:
                logged.append((step, self.eval_loss().cpu().numpy()))
            if step in schedule:
                yield Checkpoint(step, self.state_tensors(), self._log_rows(logged))
                logged = []
            if step >= stop:
                return
            self.train_step()
            if progress is not None:
                progress.update(1)

    def _log_rows(self, logged: list[tuple[int, np.ndarray]]) -> pd.DataFrame:
        k = len(self.instance_ids)
        return pd.DataFrame({
            "step": np.repeat([s for s, _ in logged], k).astype(np.int64),
            "instance": np.tile(self.instance_ids, len(logged)),
            # float64 so the CSV holds the same text whether or not a run was resumed
            "loss": np.concatenate([losses for _, losses in logged]).astype(np.float64)
            if logged else np.zeros(0),
        })


# ---------------------------------------------------------------------------------------------
# Extending a run: more steps of the same training


def run_schedule(config: RunConfig, earlier_steps: Sequence[int] = ()) -> list[int]:
    """The checkpoint steps of a run. One trained to a single length: its config's schedule.
    One extended from earlier lengths (run.json: stages.train.earlier_steps): the schedule of
    its first length, then for each later one, that length's schedule beyond the previous
    length (the steps already trained keep the checkpoints they have).

        >>> run_schedule(tiny_300_steps, earlier_steps=[150])   # [0, 1, ..., 150, 200, 300]
    """
    c = config.checkpoints
    steps, previous = set(), -1
    for length in [*earlier_steps, config.train.steps]:
        steps |= {s for s in checkpoint_steps(length, c.log_points, c.linear_every)
                  if s > previous}
        previous = length
    return sorted(steps)


def _with_train(config: RunConfig, **fields) -> RunConfig:
    return dataclasses.replace(config, train=dataclasses.replace(config.train, **fields))


def extension_problem(old: RunConfig, new: RunConfig) -> str | None:
    """Why a run trained with config `old` cannot go on with `new`; None when `new` differs
    only in more train.steps (and the checkpoints that follow from them) and extending changes
    nothing already trained. The text names the field and the way out."""
    n, m = old.train.steps, new.train.steps
    # log_every and compile may be spelled out where the old config left them to the length
    same = _with_train(new, steps=n, log_every=old.train.log_every, compile=old.train.compile)
    if same != old or m == n:
        differs = config_difference(old, _with_train(new, steps=n) if m != n else new)
        return (f"holds a run with a different config ({differs}); use "
                "another --out, or --force to replace it")
    if m < n:
        return (f"holds a run of {n} steps; train.steps = {m} would shorten it, and a run is "
                "never shortened: use another --out, or --force to replace it")
    if old.train.lr_schedule != "constant":
        return (f"cannot be extended: train.lr_schedule = {old.train.lr_schedule!r} decays to 0 "
                f"over train.steps, so {m} steps would change the learning rate of the {n} "
                "already trained: only a constant schedule extends; train a new run (another "
                "--out)")
    if log_every(old) != log_every(new):
        return (f"cannot be extended: train.log_every = 0 logs the loss every steps / 200 steps: every "
                f"{log_every(old)} for this run's {n} steps, every {log_every(new)} for {m}; "
                f"set train.log_every = {log_every(old)} in the config to extend the run")
    if use_compile(old) != use_compile(new):
        return (f"cannot be extended: train.compile = 'auto' decides by length: {n} steps train "
                f"{'compiled' if use_compile(old) else 'eagerly'}, {m} would not (other kernels, "
                f"other last bits); set train.compile = "
                f"{'on' if use_compile(old) else 'off'!r} in the config to extend the run")
    return None


def config_difference(old: RunConfig, new: RunConfig) -> str:
    """The first field that differs, as "section.field: old -> new"."""
    a, b = old.to_dict(), new.to_dict()
    for key in a:
        if a[key] == b[key]:
            continue
        if not isinstance(a[key], dict):
            return f"{key}: {a[key]!r} -> {b[key]!r}"
        field = next(f for f in a[key] if a[key][f] != b[key][f])
        return f"{key}.{field}: {a[key][field]!r} -> {b[key][field]!r}"
    return "none"


def extend_run(run: RunDir, config: RunConfig) -> None:
    """Record in run.json, in one atomic write, that `run` now trains to config.train.steps
    (`extension_problem(run.config, config)` must be None; the caller holds the lock): the new
    config, the earlier length, and the later stages no longer done (new checkpoints)."""
    earlier = [*run.stage("train").get("earlier_steps", []), run.config.train.steps]
    run.meta["config"] = config.to_dict()
    run.meta["stages"]["train"] = {**run.stage("train"), "done": False,
                                   "earlier_steps": earlier}
    for stage in ("llc", "analyze"):
        if stage in run.meta["stages"]:
            run.meta["stages"][stage]["done"] = False
    run.save_meta()
    run.config = config


# ---------------------------------------------------------------------------------------------
# The local driver


def resume_point(run: RunDir, schedule: list[int], limit: int | None = None
                 ) -> tuple[int, dict[str, Tensor] | None]:
    """The last checkpoint (at most `limit`) that verifies and has only verified ones before it.

    Checkpoints after it (damaged, beyond a damaged one, or beyond the limit) are deleted:
    training from the resume point writes them again, identically.
    """
    good_step, good = -1, None
    on_disk = run.checkpoint_steps()
    for step in on_disk:
        if step not in schedule:
            continue
        if limit is not None and step > limit:
            break
        try:
            tensors = run.load_checkpoint(step)
        except RunDirError:
            break
        good_step, good = step, tensors
    for step in on_disk:
        if step > good_step:
            run.checkpoint_path(step).unlink(missing_ok=True)
    return good_step, good


def logged_through(log: pd.DataFrame | None, schedule: list[int], every: int,
                   n_instances: int) -> int:
    """The last checkpoint step up to which train_log.csv has every row (-1: not even step 0's).

    Training logs all instances at every `every`-th step and at every checkpoint, and writes
    the rows up to a checkpoint before the checkpoint, so a log with rows missing (a damaged or
    hand-edited file) means resuming from an earlier checkpoint, which writes them again.
    """
    if log is None or log.empty:
        return -1
    counts = log.drop_duplicates(["step", "instance"]).groupby("step")["instance"].size()
    have = {int(step): int(k) for step, k in counts.items()}
    checkpoints = sorted(schedule)
    logged = sorted(set(range(0, checkpoints[-1] + 1, every)) | set(checkpoints))
    good, at = -1, set(checkpoints)
    for step in logged:
        if have.get(step, 0) != n_instances:
            break
        if step in at:
            good = step
    return good


@dataclass
class ShardTask:
    """What a worker needs to train one shard of instances from one checkpoint to another."""

    shard: int
    config: RunConfig
    instances: pd.DataFrame  # the shard's rows of instances.csv
    start: int  # the step `state` is at (-1: not started; initialise)
    stop: int  # train up to this scheduled step
    state: dict[str, Tensor] | None  # the shard's checkpoint tensors at `start`
    device: str = "cpu"
    schedule: list[int] | None = None  # the run's checkpoint steps (run_schedule)


def train_shard(task: ShardTask) -> tuple[int, list[Checkpoint]]:
    """Train one shard from task.start to task.stop. -> (shard, its new checkpoints)"""
    trainer = BatchTrainer(task.config, task.instances, task.device, task.schedule)
    if task.state is not None:
        trainer.load_state(task.state, task.start)
    return task.shard, [c for c in trainer.run(stop=task.stop) if c.step > task.start]


def shard_bounds(n_instances: int, shard_size: int) -> list[tuple[int, int]]:
    """[start, stop) row ranges of the shards (shard_size 0: one shard)."""
    size = shard_size or n_instances
    return [(lo, min(lo + size, n_instances)) for lo in range(0, n_instances, size)]


def split_state(tensors: dict[str, Tensor], lo: int, hi: int) -> dict[str, Tensor]:
    """A shard's rows of stacked checkpoint tensors (0-d optimizer counters are shared)."""
    return {k: v if v.dim() == 0 else v[lo:hi] for k, v in tensors.items()}


def merge_checkpoints(parts: list[Checkpoint]) -> Checkpoint:
    """Shards' checkpoints of one step, in shard order, as one checkpoint of the whole run."""
    tensors = {k: v if v.dim() == 0 else torch.cat([p.tensors[k] for p in parts])
               for k, v in parts[0].tensors.items()}
    log = pd.concat([p.log for p in parts]).sort_values(["step", "instance"], kind="stable")
    return Checkpoint(parts[0].step, tensors, log.reset_index(drop=True))


def train_run(run: RunDir, *, device: str = "cpu", executor: Executor | None = None,
              threads: int | None = None) -> int:
    """Train (or finish training) every instance of `run`, writing checkpoints and the log.

    Verifies every checkpoint on disk first and resumes after the last good one. Instances
    train in shards of train.shard_size (one shard by default); a Dask executor runs the shards
    of each checkpoint interval in parallel, in-process (None or a LocalExecutor) training
    steps them in lockstep. Both compute exactly the same numbers; only this process writes
    the run directory. threads: torch threads in this process (None: devtms.threads' policy,
    one for ops as small as a TMS's).
    -> the number of steps trained (0: the run was already complete and intact).
    """
    config, instances = run.config, run.instances
    shard = min(config.train.shard_size or len(instances), len(instances))
    n = threads_for(shard * config.train.batch_size * config.model.n_features, threads)
    with torch_threads(n):
        return _train(run, device, executor, n)


def _train(run: RunDir, device: str, executor: Executor | None, threads: int) -> int:
    config, instances = run.config, run.instances
    schedule = run_schedule(config, run.stage("train").get("earlier_steps", []))
    log = None
    if run.checkpoint_steps():
        run.cut_torn_line(TRAIN_LOG)
        log = run.read_table(TRAIN_LOG)
    through = logged_through(log, schedule, log_every(config), len(instances))
    last_on_disk = max([s for s in run.checkpoint_steps() if s in schedule], default=-1)
    step, tensors = resume_point(run, schedule, limit=through)
    if through < last_on_disk:
        run.notes.append(f"{run.path / TRAIN_LOG} lacks rows after step {max(through, 0)}: "
                         f"training again from step {max(step, 0)} to write them")
    resumed_from = max(step, 0)
    if step == config.train.steps and run.stage_done("train"):
        return 0
    if log is not None:
        log = log[log["step"] <= step] if step >= 0 else None  # later rows are written again
    bounds = shard_bounds(len(instances), config.train.shard_size)

    def task(shard: int, stop: int) -> ShardTask:
        lo, hi = bounds[shard]
        state = None if tensors is None else split_state(tensors, lo, hi)
        return ShardTask(shard, config, instances.iloc[lo:hi], step, stop, state, device,
                         schedule)

    run.set_stage("train", done=False)
    # compiled: the first step waits for torch.compile (~30 s cold, seconds once cached)
    compiled = use_compile(config)
    label = "train (compiled)" if compiled else "train"
    bar = progress_bar(config.train.steps, label, unit="step", initial=max(step, 0))
    with bar:
        if executor is None or isinstance(executor, LocalExecutor):
            # in-process: one live trainer per shard, stepped in lockstep
            streams = [_live_shard(task(k, config.train.steps), bar if k == 0 else None)
                       for k in range(len(bounds))]
            rounds = (list(parts) for parts in zip(*streams, strict=True))
        else:  # one task per shard per checkpoint interval
            rounds = _executor_rounds(executor, task, schedule, step, len(bounds), bar)
        for parts in rounds:
            checkpoint = merge_checkpoints(parts)
            log = checkpoint.log if log is None else pd.concat([log, checkpoint.log])
            # the log first: a checkpoint on disk always has its log rows
            run.write_table(TRAIN_LOG, log)
            run.save_checkpoint(checkpoint.step, checkpoint.tensors)
            step, tensors = checkpoint.step, checkpoint.tensors  # the next round starts here
            final = checkpoint.log[checkpoint.log["step"] == checkpoint.step]["loss"].to_numpy()
            if np.isfinite(final).any():
                bar.set_postfix(median_loss=f"{np.median(final[np.isfinite(final)]):.3g}",
                                refresh=False)
    final = run.load_checkpoint(config.train.steps)
    diverged = non_finite_instances(final["W"], final["b"], instances["instance"].to_numpy())
    run.set_stage("train", done=True, last_step=config.train.steps, diverged=diverged,
                  compiled=compiled, threads=threads)
    return config.train.steps - resumed_from


def _live_shard(task: ShardTask, bar) -> Iterator[Checkpoint]:
    trainer = BatchTrainer(task.config, task.instances, task.device, task.schedule)
    if task.state is not None:
        trainer.load_state(task.state, task.start)
    return (c for c in trainer.run(progress=bar) if c.step > task.start)


def _executor_rounds(executor: Executor, task, schedule: list[int], step: int, n_shards: int,
                     bar) -> Iterator[list[Checkpoint]]:
    """Each interval between consecutive checkpoints: all shards as tasks, merged in order."""
    for stop in [s for s in schedule if s > step]:
        results = dict(executor.map(train_shard, [task(k, stop) for k in range(n_shards)]))
        parts = [results[k] for k in range(n_shards)]  # each: [the checkpoint at `stop`]
        bar.update(stop - max(bar.n, 0))
        yield [p[0] for p in parts]


def non_finite_instances(W: Tensor, b: Tensor, ids: np.ndarray) -> list[int]:
    """Instances whose parameters hold NaN or inf (training diverged)."""
    bad = ~(torch.isfinite(W).flatten(1).all(1) & torch.isfinite(b).all(1))
    return [int(i) for i in ids[bad.numpy()]]
