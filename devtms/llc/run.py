"""The LLC stage's driver: estimate what a request asks and llc.csv lacks, chunk by chunk.

    request.parts(...)      -> one request per setting (activations may have their own)
    plan_chunks(wanted)     -> each part's chunks (instances x steps rectangles; devtms.llc.plan)
    RunInputs.task(...)     -> ChunkTask: tensors + hyperparameters, picklable, no file handles
    estimate_chunk(task)    -> ChunkResult: rows + loss traces; pure (devtms.llc.engines)
    run_llc(run, request)   maps every part's tasks through one executor, writes llc_traces/
                            then llc.csv after every chunk (atomically), and records the
                            stage in run.json
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import pandas as pd

from devtms.executors import AutoExecutor, Executor, LocalExecutor
from devtms.llc import check
from devtms.llc import table as llc_table
from devtms.llc.active import ActivationSettings, active_setting
from devtms.llc.engines import estimate_chunk
from devtms.llc.params import LLCParams, num_parameters
from devtms.llc.plan import auto_chunk_size, first_compiles_first, plan_chunks
from devtms.llc.request import LLCRequest, RunInputs
from devtms.llc.sgld import kernel_name
from devtms.progress import progress_bar
from devtms.store import CALIBRATION_DIR, RunDir, csv_bytes, write_bytes_atomic
from devtms.threads import threads_for, torch_threads


@dataclass
class LLCSummary:
    requested: int
    already_done: int
    computed: int
    unhealthy: int
    chunks: int
    states: dict[str, int] = field(default_factory=dict)  # state -> estimates computed
    executor: str = ""  # where the chunks ran when not in this process (the executor's label)
    check: LLCSummary | None = None  # the reference engine's part of the job (the self-check)

    @property
    def state_counts(self) -> str:
        return ", ".join(f"{n} {state}" for state, n in sorted(self.states.items()))


def run_llc(run: RunDir, request: LLCRequest, executor: Executor | None = None,
            progress: bool = True, threads: int | None = None, check: bool = False
            ) -> LLCSummary:
    """Estimate what `request` asks and llc.csv lacks, appending after every chunk, then record
    the stage in run.json ("done": llc.csv covers every instance x checkpoint at the run's
    active setting). Holds no lock: the caller holds `run.lock(...)`.

    threads: torch threads of the chunks run in this process (None: devtms.threads' policy;
    Dask workers always run one). check: then estimate each setting's sample with the
    reference engine and record the comparison (devtms.llc.check)."""
    executor = executor or LocalExecutor()
    table = llc_table.read_for_update(run)
    summary = _run_requests(run, table, request.parts(run.instances), executor, progress,
                            threads)  # one request a setting
    if check and request.engine in CHECKED_ENGINES:
        summary.check = _self_check(run, request.parts(run.instances), executor, progress,
                                    threads)
    run.set_stage("llc", done=default_job_complete(run))
    return summary


CHECKED_ENGINES = ("batched",)  # the SGLD engines the reference checks (devtms.llc.check)


def _self_check(run: RunDir, parts: list[LLCRequest], executor: Executor, progress: bool,
                threads: int | None) -> LLCSummary:
    """The reference engine on each setting's sample (devtms.llc.check), then the comparison:
    calibration/check.csv and run.json's record. -> what the reference computed"""
    table = llc_table.read_llc_table(run)
    jobs = []
    for part in parts:
        rows = _rows_of(table, part)
        pairs = check.check_pairs(rows, run.instances)
        if not pairs:
            continue
        reference = dataclasses.replace(part, engine=check.REFERENCE_ENGINE, compiled=False,
                                        params=check.reference_params(part.params),
                                        pairs=pairs, chunk_size=None, by_activation={})
        jobs.append(reference)
        jobs += [dataclasses.replace(reference, pairs=check.sensitivity_pairs(pairs),
                                     params=check.reference_params(
                                         part.params, part.params.gamma * factor))
                 for factor in check.SENSITIVITY]
    summary = _run_requests(run, table, jobs, executor, progress, threads)
    _record_check(run)
    return summary


def _run_requests(run: RunDir, table: pd.DataFrame, requests: list[LLCRequest],
                  executor: Executor, progress: bool, threads: int | None) -> LLCSummary:
    """What `requests` ask and llc.csv (`table`) lacks, through one executor.map."""
    plans = [_plan(run, table, request) for request in requests]
    summary = LLCSummary(sum(len(p.wanted) for p in plans),
                         sum(len(p.wanted) - len(p.todo) for p in plans), 0, 0,
                         sum(len(p.chunks) for p in plans))
    work = [p for p in plans if p.chunks]
    if work:
        _estimate(run, table, work, executor, summary, progress, threads)
    return summary


def check_lines(run: RunDir, settings: ActivationSettings) -> list[str]:
    """What the self-check found for each of `settings`, a line each (none if unchecked)."""
    records = run.meta.get(check.KEY, {})
    return [check.describe(s.id, records[s.id]) for s in settings.settings() if s.id in records]


def _rows_of(table: pd.DataFrame, request: LLCRequest) -> pd.DataFrame:
    """llc.csv's rows of the request's setting, for its instances."""
    rows = table[llc_table.done_mask(table, request.params, request.engine)]
    return rows[rows["instance"].isin(request.instances)]


def _record_check(run: RunDir) -> None:
    """calibration/check.csv (every setting of llc.csv the reference has checked) and
    run.json's "llc_check" record (per setting: bias, verdict, sensitivity to gamma)."""
    table = llc_table.read_llc_table(run)
    sgld = table[table["engine"] != check.REFERENCE_ENGINE]
    pairs = check.compare(sgld, table)
    if pairs.empty:
        return
    model = run.config.model
    d = num_parameters(model.n_hidden, model.n_features, model.bias)
    records = run.meta.get(check.KEY, {})
    for setting, record in check.summarize_check(pairs, d).items():
        mine = pairs[pairs["setting"] == setting]
        last = mine["step"].max()
        params = LLCParams.from_identity(sgld[sgld["setting"] == setting].iloc[0])
        record["sensitivity"] = check.sensitivity(
            table, params, sorted(zip(mine.loc[mine["step"] == last, "instance"],
                                      mine.loc[mine["step"] == last, "step"], strict=True)))
        record["reference"] = check.reference_params(params).tag(check.REFERENCE_ENGINE)
        records[setting] = record
    path = run.path / CALIBRATION_DIR / check.CHECK_CSV
    if not path.is_file() or path.read_bytes() != csv_bytes(pairs):  # a rerun rewrites nothing
        write_bytes_atomic(path, csv_bytes(pairs))
    run.meta[check.KEY] = records
    run.save_meta()


@dataclass
class _Plan:
    """One setting's part of a job: what it wants, what llc.csv lacks, and the chunks."""

    request: LLCRequest
    wanted: list[tuple[int, int]]
    todo: set[tuple[int, int]]  # pending (instance, step)
    chunks: list[tuple[list[int], list[int]]]
    size: int  # estimates per chunk


def _plan(run: RunDir, table: pd.DataFrame, request: LLCRequest) -> _Plan:
    done = llc_table.done_pairs(table, request.params, request.engine)
    wanted = request.wanted
    todo = {pair for pair in wanted if pair not in done}
    if not todo:
        return _Plan(request, wanted, todo, [], 0)
    m, n = run.config.model.n_hidden, run.config.model.n_features
    size = request.chunk_size or auto_chunk_size(len(wanted), len(request.steps),
                                                 request.params, m, n, request.compiled)
    # planned over the whole request, so a rerun cuts the chunks of the first run (see plan.py)
    chunks = [(instances, steps) for instances, steps in plan_chunks(wanted, size)
              if any((i, s) in todo for i in instances for s in steps)]
    return _Plan(request, wanted, todo, chunks, size)


def _estimate(run: RunDir, table: pd.DataFrame, plans: list[_Plan], executor: Executor,
              summary: LLCSummary, progress: bool, threads: int | None) -> None:
    """Every plan's chunks through one executor.map (so the workers share them), appending
    to llc.csv after every chunk."""
    # every checkpoint is loaded and verified before anything is written
    inputs = RunInputs(run, sorted({i for p in plans for c in p.chunks for i in c[0]}),
                       sorted({s for p in plans for c in p.chunks for s in c[1]}))
    llc_table.remove_orphan_traces(run, table)
    activation = dict(zip(inputs.table["instance"], inputs.table["activation"], strict=True))
    work = first_compiles_first([(p.request, chunk) for p in plans for chunk in p.chunks],
                                lambda job: kernel_name(activation[job[1][0][0]]))
    tasks = (inputs.task(instances, steps, request) for request, (instances, steps) in work)
    todo = set().union(*(p.todo for p in plans))  # instances differ between settings
    n = run.config.model.n_features
    first = plans[0].request
    if isinstance(executor, AutoExecutor) and first.device == "cpu":  # a GPU: stay here
        executor = executor.for_work(sum(  # the job's loss-term elements
            len(p.todo) * q.chains * (q.burnin + q.draws) * q.batch_size * n
            for p in plans for q in [p.request.params]))
    if not isinstance(executor, LocalExecutor):  # any object with map() will do: say what it is
        summary.executor = getattr(executor, "label", type(executor).__name__)
    bar = progress_bar(len(todo), f"llc ({first.engine})", "estimate", enabled=progress)
    # the largest op of a chunk: its estimates x chains x minibatch x features
    op_elements = max(p.size * p.request.params.chains * p.request.params.batch_size * n
                      for p in plans)
    with bar, torch_threads(threads_for(op_elements, threads)):
        for result in executor.map(estimate_chunk, tasks):
            result = result.only(todo)  # a chunk partly done by an earlier, other request
            llc_table.save_traces(run, result)  # traces first: a row always has its traces
            table = llc_table.append_rows(run, table, result.rows)
            summary.computed += len(result.rows)
            summary.unhealthy += sum(not row["healthy"] for row in result.rows)
            for row in result.rows:
                summary.states[row["state"]] = summary.states.get(row["state"], 0) + 1
            bar.update(len(result.rows))


def default_job_complete(run: RunDir) -> bool:
    """Whether llc.csv has every instance x checkpoint at the run's active setting."""
    table = llc_table.read_llc_table(run)
    steps = run.checkpoint_steps()
    for setting, instances in active_setting(run).groups(run.instances):
        pairs = llc_table.done_pairs(table, setting.params, setting.engine)
        if not all((i, s) in pairs for i in instances for s in steps):
            return False
    return True
