"""Shared helpers for the analysis scripts: run devtms stages resumably, and draw/save figures.

Every script trains through devtms's Python API (`devtms.train.train_run` on a `RunDir`), runs
`devtms.analyze.analyze_run`, and calls `devtms llc` through the CLI (a subprocess). Rerunning a
script skips whatever is complete: a run whose train stage is done is not retrained, analyze
only measures new checkpoints, and the LLC stage is skipped once `run.json` marks it done.

Figures are written as PNG (and PDF) into `<out>/figures/`, beside the run directories.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402

from devtms.config import RunConfig, config_from_dict, instance_table, load_config  # noqa: E402
from devtms.store import RUN_JSON, RunDir, lock_dir  # noqa: E402

# One intra-op thread: these models are tiny, and on a shared machine torch's thread pool
# oversubscribes the cores. Measured with 2 cores under load from other jobs: chen2023 2.8 vs
# 62 ms/step, activations27 15 vs 405 ms/step, the n = 200 sweep 102 vs 429 ms/step (1 vs 2
# threads). Subprocesses (`devtms llc`) get OMP_NUM_THREADS=1 for the same reason.
torch.set_num_threads(1)
SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}

REPO = Path(__file__).resolve().parent.parent
RUNS = REPO / "runs"

# The seven activations of Lad & Kostolansky (2023), in their order.
LAD_KOSTOLANSKY = ("relu", "gelu", "silu", "sigmoid", "tanh", "solu", "linear")

plt.rcParams.update({
    "figure.dpi": 110, "savefig.dpi": 150, "font.size": 9, "axes.titlesize": 9.5,
    "axes.labelsize": 9, "xtick.labelsize": 8, "ytick.labelsize": 8, "legend.fontsize": 8,
    "axes.spines.top": False, "axes.spines.right": False,
})


# ---------------------------------------------------------------------------------------------
# Command line


def parser(doc: str, name: str, full: bool = False) -> argparse.ArgumentParser:
    """The shared command line: a size flag (--smoke, --small, and --full when the script has a
    larger published size than its default), --out (default runs/<name>[-<size>]), --no-pdf.

    The parsed namespace carries `size`: "smoke", "small", "default" or "full".
    """
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    size = p.add_mutually_exclusive_group()
    size.add_argument("--smoke", dest="size", action="store_const", const="smoke",
                      help="the tiniest size that runs every stage and draws every figure, in "
                           "seconds (for tests; the numbers mean nothing)")
    size.add_argument("--small", dest="size", action="store_const", const="small",
                      help="a reduced size that finishes in about a minute (a quick look; the "
                           "numbers are not the study's)")
    if full:
        size.add_argument("--full", dest="size", action="store_const", const="full",
                          help="the published size (slower than the default; see the docstring)")
    p.add_argument("--out", type=Path, default=None,
                   help=f"output root (default: runs/{name}, or runs/{name}-<size> with a size "
                        "flag); run directories and figures/ go under it")
    p.add_argument("--no-pdf", action="store_true", help="write PNG figures only")
    p.set_defaults(study=name, size="default")
    return p


def output_root(args: argparse.Namespace) -> Path:
    """The output root (created, with figures/). At --smoke size figures are drawn at low
    resolution: at that size they only show that the drawing code runs."""
    if args.size == "smoke":
        plt.rcParams["savefig.dpi"] = 60
    suffix = "" if args.size == "default" else f"-{args.size}"
    out = args.out or RUNS / (args.study + suffix)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    return out


class Clock:
    """Prints timestamped progress lines (stdout, flushed)."""

    def __init__(self) -> None:
        self.start = time.time()

    def __call__(self, msg: str) -> None:
        print(f"[{time.time() - self.start:7.1f}s] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------
# Configs and stages


def config(name: str, *, base: str | None = None, **sections: dict[str, Any]) -> RunConfig:
    """A validated RunConfig: a preset's dict (if `base`) with sections' fields replaced."""
    raw: dict[str, Any] = load_config(base).to_dict() if base else {}
    raw["name"] = name
    for section, fields in sections.items():
        raw[section] = {**raw.get(section, {}), **fields}
    return config_from_dict(raw)


def train(cfg: RunConfig, path: Path, log: Clock | None = None) -> RunDir:
    """Train `cfg` into `path`, or resume it there; a complete run is only opened.

    A run directory holding a different config is an error (the scripts never overwrite a
    run): pass another --out or delete the directory.
    """
    from devtms.train import train_run

    path = Path(path)
    if (path / RUN_JSON).is_file():
        run = RunDir.open(path)
        if run.config != cfg:
            sys.exit(f"{path} holds a run with a different config (made by another version of "
                     "this script or another size); delete it or choose another --out")
        if run.stage_done("train"):
            if log:
                log(f"{path.name}: training complete, skipped")
            return run
    n = len(instance_table(cfg))
    if log:
        log(f"{path.name}: training {n} instances x {cfg.train.steps} steps")
    t0 = time.time()
    with lock_dir(path, "analysis script"):
        run = RunDir.open(path) if (path / RUN_JSON).is_file() else \
            RunDir.create(path, cfg, instance_table(cfg))
        train_run(run)
    if log:
        log(f"{path.name}: trained in {time.time() - t0:.0f}s")
    return run


def analyze(run: RunDir):
    """devtms's analyze stage (incremental) -> devtms.analyze.AnalyzeResult."""
    from devtms.analyze import analyze_run

    with run.lock("analysis script: analyze"):
        return analyze_run(run, progress=False)


def llc(run: RunDir, log: Clock, extra: Sequence[str] = ()) -> pd.DataFrame:
    """`devtms llc RUN_DIR` at the run's own [llc] settings -> those rows of llc.csv.

    The command computes only the estimates missing from llc.csv; it is not started at all when
    devtms says the job is complete.
    """
    from devtms.llc import default_job_complete

    if default_job_complete(run):
        log(f"{run.path.name}: LLC complete, skipped")
    else:
        run_llc_command(run, log, extra)
    return default_llc_rows(RunDir.open(run.path))


def run_llc_command(run: RunDir, log: Clock, extra: Sequence[str] = ()) -> None:
    """`devtms llc RUN_DIR EXTRA...` in a subprocess (it computes only what llc.csv lacks);
    the script exits with its status if it fails."""
    log(f"{run.path.name}: devtms llc {' '.join(extra)}")
    t0 = time.time()
    env = {**SUBPROCESS_ENV, "TQDM_DISABLE": os.environ.get("TQDM_DISABLE", "1")}
    r = subprocess.run([sys.executable, "-m", "devtms.cli", "llc", str(run.path), *extra],
                       env=env)
    if r.returncode != 0:
        sys.exit(f"`devtms llc {run.path} {' '.join(extra)}` failed with status {r.returncode}")
    log(f"{run.path.name}: LLC estimated in {time.time() - t0:.0f}s")


def default_llc_rows(run: RunDir) -> pd.DataFrame:
    """The llc.csv rows of the run's own [llc] settings and the batched engine (llc.csv may also
    hold estimates at other hyperparameters, e.g. from calibration)."""
    from devtms.llc import LLCParams, done_mask, read_llc_table

    table = read_llc_table(run)
    rows = table[done_mask(table, LLCParams.of_run(run.config), "batched")]
    return rows.sort_values(["instance", "step"]).reset_index(drop=True)


def report(run: RunDir, log: Clock) -> None:
    """`devtms report RUN_DIR`: the HTML report in RUN_DIR/report (separate from the figures)."""
    env = {**SUBPROCESS_ENV, "TQDM_DISABLE": "1"}
    r = subprocess.run([sys.executable, "-m", "devtms.cli", "report", str(run.path)], env=env,
                       capture_output=True, text=True)
    if r.returncode == 0:
        log(f"{run.path.name}: devtms report -> {run.path / 'report'}")
    else:
        log(f"{run.path.name}: devtms report failed ({r.stderr.strip().splitlines()[-1:]}); "
            "figures of this script are unaffected")


def final_weights(run: RunDir) -> tuple[torch.Tensor, torch.Tensor]:
    """W: (I, m, n), b: (I, n) at the last checkpoint."""
    W, b = run.load_weights([run.config.train.steps])
    return W[0], b[0]


def checkpoint_losses(run: RunDir) -> pd.DataFrame:
    """instance, step, loss at every checkpoint step (from train_log.csv)."""
    from devtms.analyze import checkpoint_losses as at_checkpoints

    return at_checkpoints(run.read_table("train_log.csv", "devtms train"), run.checkpoint_steps())


# ---------------------------------------------------------------------------------------------
# Figures


def grid(n: int, cols: int, w: float, h: float, *, top: float = 0.55, bottom: float = 0.5,
         left: float = 0.5, right: float = 0.15, wspace: float = 0.15, hspace: float = 0.45,
         **kw) -> tuple[plt.Figure, np.ndarray]:
    """A figure of n panels in rows of `cols`, each w x h inches, margins in inches.

    Fixed margins instead of tight_layout: on figures of 20-30 log-scaled panels tight_layout
    costs several seconds (most of a --smoke run). -> (fig, axes (rows, cols)); the panels past n
    are hidden, and the panel above each hidden one gets its x tick labels back (sharex hides
    them).
    """
    rows = math.ceil(n / cols)
    width, height = w * cols + left + right, h * rows + top + bottom
    fig, axes = plt.subplots(rows, cols, figsize=(width, height), squeeze=False, **kw)
    fig.subplots_adjust(left=left / width, right=1 - right / width, bottom=bottom / height,
                        top=1 - top / height, wspace=wspace, hspace=hspace)
    for k, ax in enumerate(axes.flat):
        if k >= n:
            ax.set_visible(False)
            if k - cols >= 0 and kw.get("sharex"):
                axes.flat[k - cols].xaxis.set_tick_params(labelbottom=True)
    return fig, axes


def bottom_row(axes: np.ndarray, n: int) -> list[plt.Axes]:
    """The lowest visible panel of each column of a `grid` of n panels."""
    rows, cols = axes.shape
    return [axes[max(r for r in range(rows) if r * cols + c < n), c] for c in range(min(n, cols))]


def save(fig: plt.Figure, out: Path, name: str, pdf: bool = True) -> Path:
    """Write figures/<name>.png (and .pdf); close the figure. -> the PNG path"""
    path = out / "figures" / f"{name}.png"
    fig.savefig(path, bbox_inches="tight")
    if pdf:
        fig.savefig(path.with_suffix(".pdf"), bbox_inches="tight")
    plt.close(fig)
    return path


def write_csv(table: pd.DataFrame, out: Path, name: str) -> Path:
    path = out / "figures" / f"{name}.csv"
    table.to_csv(path, index=False, float_format="%.6g")
    return path


def features_2d(ax: plt.Axes, W: np.ndarray, colors: Sequence, radius: float,
                b: np.ndarray | None = None, polygon: Sequence[int] = ()) -> None:
    """Feature columns of an m = 2 W (2, n) as lines from the origin ending in dots.

    `polygon`: vertex features (counter-clockwise) whose hull is shaded; `b`: bias, whose sign
    marks each dot's edge (none when b is None).
    """
    if not np.isfinite(W).all() or not np.isfinite(radius) or radius <= 0:
        ax.text(0.5, 0.5, "diverged", transform=ax.transAxes, ha="center", va="center",
                color="#cb181d")
        ax.set_xticks([])
        ax.set_yticks([])
        return
    if len(polygon) >= 3:
        ax.fill(W[0, list(polygon)], W[1, list(polygon)], color="0.9", zorder=0, lw=0)
    for j in range(W.shape[1]):
        ax.plot([0, W[0, j]], [0, W[1, j]], color=colors[j], lw=1.6, zorder=2,
                solid_capstyle="round")
        edge = "none" if b is None else ("k" if b[j] > 0 else "0.6")
        ax.plot(W[0, j], W[1, j], "o", color=colors[j], ms=4.5, mec=edge, mew=0.6, zorder=3)
    ax.plot(0, 0, "+", color="0.4", ms=5, zorder=1)
    ax.set_xlim(-radius, radius)
    ax.set_ylim(-radius, radius)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    for side in ("top", "right", "bottom", "left"):
        ax.spines[side].set_visible(True)
        ax.spines[side].set_color("0.8")


def polygon(geometry_row) -> list[int]:
    """The k-gon vertex features of a geometry.csv row ([] when none or diverged)."""
    text = str(geometry_row["polygon"])
    return [] if text in ("", "-", "diverged", "nan") else [int(v) for v in text.split()]


def gram_heatmap(ax: plt.Axes, W: np.ndarray, vmax: float = 1.0):
    """W^T W as Anthropic draws it (red positive, blue negative, symmetric scale)."""
    G = W.T @ W
    im = ax.imshow(G, cmap="RdBu_r", vmin=-vmax, vmax=vmax, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for side in ax.spines.values():
        side.set_visible(True)
        side.set_color("0.75")
        side.set_linewidth(0.6)
    return im


def norm_bars(ax: plt.Axes, W: np.ndarray, xmax: float) -> None:
    """Feature norms ||W_i|| as horizontal bars coloured by sqrt(interference): Anthropic's
    superposition colouring (black: the feature has its dimension alone; yellow: it shares)."""
    from devtms.geometry import feature_norms, interference

    Wt = torch.as_tensor(W, dtype=torch.float64)
    norms = feature_norms(Wt).numpy()
    inter = interference(Wt).sqrt().clamp(max=1).numpy()
    cmap = plt.get_cmap("viridis")
    ax.barh(np.arange(len(norms)), norms, color=cmap(inter), height=0.8)
    ax.set_ylim(len(norms) - 0.5, -0.5)
    ax.set_xlim(0, xmax)
    ax.set_yticks([])
    ax.tick_params(axis="x", labelsize=6.5, length=2, pad=1)
    ax.spines["left"].set_color("0.6")
    ax.spines["bottom"].set_visible(False)


PHASE_COLORS = {"not_learned": "#e8e8e8", "superposition": "#d6604d", "dedicated": "#4393c3"}
PHASE_LABELS = {"not_learned": "extra feature not learned", "superposition": "superposition",
                "dedicated": "extra feature dedicated"}
PHASE_CMAP = ListedColormap([PHASE_COLORS[p] for p in PHASE_COLORS])


def clear(path: Path) -> None:
    """Remove a directory tree (used only for the scripts' own figure directories)."""
    if path.is_dir():
        shutil.rmtree(path)
