"""One command for a whole study: train -> llc -> analyze -> report, each stage resumable.

Every stage skips what is already done (training resumes from its last good checkpoint, the
LLC job computes only the estimates llc.csv lacks, analyze only new checkpoints), so the study
can be killed at any moment and run again, and re-running after a finished study only
re-renders the report.

    >>> run_study("quick", Path("runs/quick"))
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from devtms.executors import Executor
from devtms.store import RunDir


@dataclass
class StudyResult:
    run: RunDir
    report: Path
    seconds: dict[str, float] = field(default_factory=dict)  # stage -> wall time
    notes: list[str] = field(default_factory=list)  # one line per stage, for the user


def run_study(run: RunDir, *, device: str = "cpu", executor: Executor | None = None,
              progress: bool = True, say: Callable[[str], None] = print,
              llc_setting: str | None = None, threads: int | None = None, check: bool = True
              ) -> StudyResult:
    """Run every stage on `run` (the caller holds the run lock). llc_setting: the id of the LLC
    setting analyze and report read (default: the run's active one); checked first. threads:
    torch threads of train and llc (None: devtms.threads' policy). check: the LLC stage's
    self-check against the exact engine (devtms.llc.check)."""
    from devtms.analyze import analyze_run
    from devtms.llc import build_request, check_lines, choose, read_llc_table, run_llc
    from devtms.report import default_out, load_run, write_report
    from devtms.train import train_run

    result = StudyResult(run, default_out([run.path]))
    if llc_setting is not None:  # a bad id fails before any stage writes
        choose(run, read_llc_table(run, check_settings=False), llc_setting)

    def stage(name: str, fn: Callable[[], str]) -> None:
        start = time.perf_counter()
        note = fn()
        result.seconds[name] = time.perf_counter() - start
        line = f"{name:8s} {result.seconds[name]:7.1f} s  {note}"
        result.notes.append(line)
        say(line)

    def train() -> str:
        trained = train_run(run, device=device, executor=executor, threads=threads)
        diverged = run.stage("train").get("diverged", [])
        done = f"trained {trained} steps" if trained else "already complete"
        return done + (f"; {len(diverged)} instance(s) diverged" if diverged else "")

    def llc() -> str:
        request = build_request(run, device=device)
        summary = run_llc(run, request, executor, progress=progress, threads=threads,
                          check=check)
        states = f" ({summary.state_counts})" if summary.unhealthy else ""
        # the health of what was computed now (the rest is in llc.csv)
        health = f", {summary.unhealthy} of them not healthy{states}" if summary.computed else ""
        where = f"; in {summary.executor}" if summary.executor else ""
        checked = f"; self-check: {summary.check.computed} reference estimates computed" \
            if summary.check and summary.check.computed else ""
        for line in check_lines(run, request.settings):
            say(f"         {line}")
        return (f"setting {request.settings.id}: {summary.computed} estimates "
                f"computed{health}, {summary.already_done} already done{where}{checked}")

    def analyze() -> str:
        analyzed = analyze_run(run, progress=progress, llc_setting=llc_setting)
        return f"wrote {', '.join(analyzed.written) or 'nothing (up to date)'}"

    def report() -> str:
        written = write_report([load_run(run.path, llc_setting)], result.report,
                               progress=progress)
        return (f"{result.report} ({len(written.figures) // 2} figures, {written.drawn} drawn, "
                f"the others unchanged)")

    for name, fn in (("train", train), ("llc", llc), ("analyze", analyze), ("report", report)):
        stage(name, fn)
    return result
