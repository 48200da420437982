"""Render a report's figures: in parallel, and only those whose inputs changed.

    >>> digests = {job.stem: input_digest(job) for job in jobs}
    >>> fresh = render_all([job for job in jobs if digests[job.stem] != previous.get(job.stem)])
    >>> fresh[0].png, fresh[0].pdf, fresh[0].page_png                 # in the jobs' order

A figure's input digest is the SHA-256 of its job's pickle (builder, arguments) together with
the source of the code that draws it (devtms/report/figures/) and the versions of devtms and
matplotlib: the same digest means the same files. `devtms.report.write` keeps each figure's
digest in the figures directory's manifest and reads the files back instead of drawing them
again.

Figures are drawn in devtms's worker processes, one per core (devtms.executors.ProcessExecutor:
a forkserver that has imported the drawing code once; workers leave Ctrl-C to the driver and
exit when it is killed).
"""

from __future__ import annotations

import functools
import hashlib
import pickle
from importlib import resources

import matplotlib
from tqdm.auto import tqdm

from devtms import __version__
from devtms.executors import ProcessExecutor
from devtms.progress import progress_bar
from devtms.report.figures.render import FigureJob, Rendered, render
from devtms.threads import usable_cores


@functools.cache
def _code_digest() -> bytes:
    """What else decides a figure's pixels: the drawing code and the library versions."""
    h = hashlib.sha256(f"devtms {__version__} matplotlib {matplotlib.__version__}".encode())
    folder = resources.files("devtms.report") / "figures"
    for source in sorted(folder.iterdir(), key=lambda p: p.name):
        if source.name.endswith(".py"):
            h.update(source.name.encode() + b"\0" + source.read_bytes())
    return h.digest()


def input_digest(job: FigureJob) -> str:
    """The hex SHA-256 of everything the job's files depend on (not its caption or alt text)."""
    h = hashlib.sha256(_code_digest())
    h.update(pickle.dumps((job.stem, job.build, job.args), protocol=5))
    return h.hexdigest()


def render_all(jobs: list[FigureJob], n_workers: int | None = None,
               progress: bool = True) -> list[Rendered]:
    """Render the jobs, in their order. n_workers None: one per core; 1 (or one job): in this
    process, else in devtms's worker processes (devtms.executors.ProcessExecutor)."""
    n_workers = min(n_workers or usable_cores(), len(jobs))
    with progress_bar(len(jobs), "figures", unit="fig", enabled=progress) as bar:
        if n_workers <= 1:
            return [_counted(render(job), bar) for job in jobs]
        with ProcessExecutor(n_workers) as workers:
            done = {r.stem: _counted(r, bar) for r in workers.map(render, jobs)}
        return [done[job.stem] for job in jobs]


def _counted(rendered: Rendered, bar: tqdm) -> Rendered:
    bar.update()
    return rendered
