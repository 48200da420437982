"""The LLC stage's driver: estimate what a request asks and llc.csv lacks, chunk by chunk.

    plan_chunks(wanted)     -> chunks (instances x steps rectangles; devtms.llc.plan)
    RunInputs.task(...)     -> ChunkTask: tensors + hyperparameters, picklable, no file handles
    estimate_chunk(task)    -> ChunkResult: rows + loss traces; pure (devtms.llc.engines)
    run_llc(run, request)   maps tasks through an executor, writes llc_traces/ then llc.csv after
                            every chunk (atomically), and records the stage in run.json
"""

from __future__ import annotations

from dataclasses import dataclass, field

from devtms.executors import AutoExecutor, Executor, LocalExecutor
from devtms.llc import table as llc_table
from devtms.llc.active import active_setting
from devtms.llc.engines import estimate_chunk
from devtms.llc.plan import auto_chunk_size, plan_chunks
from devtms.llc.request import LLCRequest, RunInputs
from devtms.progress import progress_bar
from devtms.store import RunDir
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

    def add(self, other: LLCSummary) -> None:
        """Count `other` (another part of the same job) in this one."""
        self.requested += other.requested
        self.already_done += other.already_done
        self.computed += other.computed
        self.unhealthy += other.unhealthy
        self.chunks += other.chunks
        for state, n in other.states.items():
            self.states[state] = self.states.get(state, 0) + n
        self.executor = self.executor or other.executor

    @property
    def state_counts(self) -> str:
        return ", ".join(f"{n} {state}" for state, n in sorted(self.states.items()))


def run_llc(run: RunDir, request: LLCRequest, executor: Executor | None = None,
            progress: bool = True, threads: int | None = None) -> LLCSummary:
    """Estimate what `request` asks and llc.csv lacks, appending after every chunk, then record
    the stage in run.json ("done": llc.csv covers every instance x checkpoint at the run's
    active setting). Holds no lock: the caller holds `run.lock(...)`.

    threads: torch threads of the chunks run in this process (None: devtms.threads' policy;
    Dask workers always run one)."""
    summary = LLCSummary(0, 0, 0, 0, 0)
    for part in request.parts(run.instances):  # one per setting
        summary.add(_estimate_pending(run, part, executor or LocalExecutor(), progress, threads))
    run.set_stage("llc", done=default_job_complete(run))
    return summary


def _estimate_pending(run: RunDir, request: LLCRequest, executor: Executor,
                      progress: bool, threads: int | None) -> LLCSummary:
    table = llc_table.read_for_update(run)
    done = llc_table.done_pairs(table, request.params, request.engine)
    wanted = [(i, s) for i in request.instances for s in request.steps]
    pending = [pair for pair in wanted if pair not in done]
    summary = LLCSummary(len(wanted), len(wanted) - len(pending), 0, 0, 0)
    if not pending:
        return summary
    m, n = run.config.model.n_hidden, run.config.model.n_features
    size = request.chunk_size or auto_chunk_size(len(wanted), len(request.steps),
                                                 request.params, m, n, request.compiled)
    # planned over the whole request, so a rerun cuts the chunks of the first run (see plan.py)
    todo = set(pending)
    chunks = [(instances, steps) for instances, steps in plan_chunks(wanted, size)
              if any((i, s) in todo for i in instances for s in steps)]
    summary.chunks = len(chunks)
    # every checkpoint is loaded and verified before anything is written
    inputs = RunInputs(run, sorted({i for c in chunks for i in c[0]}),
                       sorted({s for c in chunks for s in c[1]}))
    llc_table.remove_orphan_traces(run, table)
    tasks = (inputs.task(instances, steps, request) for instances, steps in chunks)
    p = request.params
    if isinstance(executor, AutoExecutor) and request.device == "cpu":  # a GPU: stay here
        executor = executor.for_work(len(pending) * p.chains * (p.burnin + p.draws)
                                     * p.batch_size * n)  # the job's loss-term elements
    if not isinstance(executor, LocalExecutor):  # any object with map() will do: say what it is
        summary.executor = getattr(executor, "label", type(executor).__name__)
    bar = progress_bar(len(pending), f"llc ({request.engine})", "estimate", enabled=progress)
    # the largest op of a chunk: its estimates x chains x minibatch x features
    op_elements = size * p.chains * p.batch_size * n
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
    return summary


def default_job_complete(run: RunDir) -> bool:
    """Whether llc.csv has every instance x checkpoint at the run's active setting."""
    table = llc_table.read_llc_table(run)
    steps = run.checkpoint_steps()
    for setting, instances in active_setting(run).groups(run.instances):
        pairs = llc_table.done_pairs(table, setting.params, setting.engine)
        if not all((i, s) in pairs for i in instances for s in steps):
            return False
    return True
