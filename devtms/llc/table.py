"""llc.csv and llc_traces/: their only reader and writer.

llc.csv holds one row per estimate: an (instance, checkpoint step) under one setting
(devtms.llc.params.SETTING_COLUMNS). On disk each row also carries the instance's conditions
from instances.csv right after `instance` (RunDir.write_table adds them; they are not part of
an estimate's identity). Rows are kept in a canonical order (`sort_table`) so
the file's bytes do not depend on the order chunks finished. llc_traces/ holds, per chunk, the
sampled minibatch losses of every chain (safetensors: tensors only).

`read_llc_table` is how every stage reads llc.csv: `healthy` is a bool column and `reason` text
however the file spells them, so no caller parses them again.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from devtms.errors import UserError
from devtms.llc.params import FLOAT_SETTING_COLUMNS, LEGACY_NAMES, SETTING_COLUMNS, LLCParams
from devtms.llc.task import ChunkResult
from devtms.store import (
    LLC_CSV,
    LLC_TRACES,
    RunDir,
    checkpoint_bytes,
    load_checkpoint_file,
    with_conditions,
    write_bytes_atomic,
)

Tensor = torch.Tensor

# llc.csv: the contract columns (docs/design.md), then devtms's additions; the file has the
# instance's conditions between `instance` and `step` (devtms.store.with_conditions).
CONTRACT_COLUMNS = ["instance", "step", "setting", "llc_mean", "llc_std", "init_loss",
                    "num_chains", "num_draws", "eps", "gamma", "n_beta", "engine", "healthy"]
EXTRA_COLUMNS = ["burnin", "batch_size", "llc_seed", "llc_n_samples", "loss_reduction",
                 "precond", "llc_sem", "state", "rhat", "ess_bulk", "llc_drift", "num_diverged",
                 "mala_acceptance", "grad_norm", "grad_shift", "hess_min", "reason"]
COLUMNS = CONTRACT_COLUMNS + EXTRA_COLUMNS
# What identifies an estimate (and the table's sort order): a row with these values is never
# computed again.
IDENTITY = ["instance", "step", *SETTING_COLUMNS]
TRUE_TEXT = ("true", "1", "yes")  # how a hand-edited `healthy` column may spell True


# ---------------------------------------------------------------------------------------------
# llc.csv


def empty_table() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in COLUMNS})


def read_llc_table(run: RunDir, *, check_settings: bool = True) -> pd.DataFrame:
    """llc.csv with typed columns (healthy: bool, reason: str) and the instance's conditions
    after `instance`; an empty table (with those columns) if absent.

    An llc.csv written before it carried the conditions names the SGLD seed and the LLC
    dataset's size `seed` and `n_samples`: they are read as `llc_seed` and `llc_n_samples`.
    One written before SGLD had a preconditioner lacks `precond`: its rows are plain SGLD's
    ("none"), as their setting ids say (`LLCParams.tag`).
    check_settings: raise UserError when a setting column is missing (the LLC stage, which
    must know what each row was made with, asks for this; analyze and report read what there is).
    """
    table = run.read_table(LLC_CSV)
    if table is None:
        return with_conditions(empty_table(), run.instances)
    if not any(new in table.columns for new in LEGACY_NAMES):
        table = table.rename(columns={old: new for new, old in LEGACY_NAMES.items()})
    if "precond" not in table:
        table["precond"] = "none"
    if "instance" in table:
        table = with_conditions(table, run.instances)
    missing = [c for c in IDENTITY if c not in table.columns]
    if check_settings and missing:
        raise UserError(f"{run.path / LLC_CSV} lacks column(s) {', '.join(missing)}: it was not "
                        "written by this devtms; move it away and re-run `devtms llc`")
    healthy = table["healthy"] if "healthy" in table else pd.Series(True, index=table.index)
    if healthy.dtype != bool:
        healthy = healthy.astype(str).str.strip().str.lower().isin(TRUE_TEXT)
    table["healthy"] = healthy
    table["reason"] = table["reason"].fillna("").astype(str) if "reason" in table else ""
    return table


def read_for_update(run: RunDir) -> pd.DataFrame:
    """llc.csv as the LLC stage resumes it: a torn last row (damage from outside devtms) is
    dropped first, so that its estimate is computed again; a file of an earlier layout
    (without the instance's conditions) is written again in this one, rows unchanged."""
    run.cut_torn_line(LLC_CSV)
    table = read_llc_table(run)
    if len(table) and set(COLUMNS) <= set(table.columns):
        run.write_table_if_changed(LLC_CSV, sort_table(table))
    return table


def done_mask(table: pd.DataFrame, params: LLCParams, engine: str) -> pd.Series:
    """Rows of llc.csv computed with exactly these hyperparameters and engine."""
    if table.empty:
        return pd.Series(False, index=table.index)
    mask = pd.Series(True, index=table.index)
    for key, value in params.identity(engine).items():
        column = table[key]
        if key in FLOAT_SETTING_COLUMNS:
            mask &= np.isclose(column.astype(float), value, rtol=1e-12, atol=0.0)
        else:
            mask &= column.astype(str) == str(value)
    return mask


def done_pairs(table: pd.DataFrame, params: LLCParams, engine: str) -> set[tuple[int, int]]:
    """The (instance, step) estimates llc.csv holds for this setting."""
    done = table[done_mask(table, params, engine)]
    return set(zip(done["instance"].astype(int), done["step"].astype(int), strict=True))


def sort_table(table: pd.DataFrame) -> pd.DataFrame:
    """Canonical row order, so the file's bytes do not depend on the order chunks finished."""
    return table.sort_values(IDENTITY, kind="mergesort").reset_index(drop=True)[COLUMNS]


def append_rows(run: RunDir, table: pd.DataFrame, rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Write llc.csv with `rows` added (atomically) and return the new table."""
    new = pd.DataFrame(rows)[COLUMNS]
    table = sort_table(pd.concat([table, new], ignore_index=True) if len(table) else new)
    run.write_table(LLC_CSV, table)
    return table


# ---------------------------------------------------------------------------------------------
# llc_traces/


def traces_path(run: RunDir, result: ChunkResult) -> Path:
    instances = result.traces["instance"].tolist()
    steps = result.traces["step"].tolist()
    digest = hashlib.blake2b(repr((instances, steps)).encode(), digest_size=6).hexdigest()
    name = f"{result.engine}-{result.params.tag(result.engine)}-{digest}.safetensors"
    return run.path / LLC_TRACES / name


def save_traces(run: RunDir, result: ChunkResult) -> Path:
    """llc_traces/<engine>-<hyperparameter tag>-<chunk digest>.safetensors (tensors only)."""
    path = traces_path(run, result)
    metadata = {"engine": result.engine, "params": json.dumps(asdict(result.params)),
                "format": "devtms-llc-traces"}
    write_bytes_atomic(path, checkpoint_bytes(result.traces, metadata))
    return path


def _read_traces(path: Path) -> tuple[dict[str, str], dict[str, Tensor]]:
    """(metadata, tensors) of one traces file, verified; UserError if damaged."""
    from safetensors import safe_open

    tensors = load_checkpoint_file(path)
    with safe_open(str(path), framework="pt") as f:
        return f.metadata() or {}, tensors


def load_traces(run_path: Path | str) -> list[tuple[dict[str, Any], dict[str, Tensor]]]:
    """Every traces file of a run: (hyperparameters + engine, tensors) pairs, verified.

    tensors: instance (E,), step (E,), loss (E, chains, draws), init_loss (E,), mala (E, chains).
    """
    out = []
    for path in sorted((Path(run_path) / LLC_TRACES).glob("*.safetensors")):
        meta, tensors = _read_traces(path)
        out.append(({"engine": meta.get("engine"), **json.loads(meta.get("params", "{}"))},
                    tensors))
    return out


def remove_orphan_traces(run: RunDir, table: pd.DataFrame) -> int:
    """Delete trace files none of whose estimates are in llc.csv (a kill between the two writes).

    The driver writes a chunk's traces before its rows, so such a file is the only leftover a
    kill can leave; the rerun computes those estimates again, identically.
    """
    directory = run.path / LLC_TRACES
    if not directory.is_dir():
        return 0
    removed = 0
    for path in directory.glob("*.safetensors"):
        try:
            meta, tensors = _read_traces(path)
            params = LLCParams(**json.loads(meta["params"]))
            engine = meta["engine"]
        except (UserError, KeyError, TypeError, ValueError):
            path.unlink()  # damaged or foreign: its estimates are recomputed if they are asked for
            removed += 1
            continue
        pairs = done_pairs(table, params, engine)
        mine = zip(tensors["instance"].tolist(), tensors["step"].tolist(), strict=True)
        if not any(pair in pairs for pair in mine):
            path.unlink()
            removed += 1
    for tmp in directory.glob(".*.tmp"):
        tmp.unlink()
    return removed
