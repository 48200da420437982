"""The run directory: every file a stage reads or writes goes through here.

    RUN_DIR/
      run.json            format, resolved config, package versions, status of each stage
      instances.csv       one row per instance (config.instance_table)
      checkpoints/        step_00001000.safetensors: all instances stacked (W, b, optimizer state)
      train_log.csv       step, instance, loss
      llc.csv, llc_traces/, geometry.csv, transitions.csv, summary.csv, report/   (later stages)
      calibration/        step_<S>.csv and .png of `devtms calibrate` (optional)

Guarantees:
- every write goes to a temporary file in the same directory, is fsynced, then renamed over
  the target: a kill at any moment leaves the old file or the new one, never half of one;
- checkpoints are safetensors (tensors and string metadata only, no pickle) and carry a
  sha256 of their tensor bytes, so truncation and alteration are both detected on load;
- JSON, CSV and safetensors are the only formats read: opening a run never executes code;
- one process writes a run at a time (`RunDir.lock()`: an flock the kernel drops when the
  holder dies, so a killed process never leaves the run locked).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import platform
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from devtms import __version__
from devtms.config import RunConfig, config_from_dict
from devtms.errors import RunDirError, UserError

FORMAT = "devtms-run"
FORMAT_VERSION = 1

RUN_JSON = "run.json"
INSTANCES_CSV = "instances.csv"
CHECKPOINTS = "checkpoints"
TRAIN_LOG = "train_log.csv"
LLC_CSV = "llc.csv"
LLC_TRACES = "llc_traces"
GEOMETRY_CSV = "geometry.csv"
TRANSITIONS_CSV = "transitions.csv"
SUMMARY_CSV = "summary.csv"
REPORT_DIR = "report"
CALIBRATION_DIR = "calibration"
BAYES_DIR = "bayes"  # devtms bayes: the files below, and posterior/N_<N>.json per N
BAYES_PHASES = "phases.csv"
BAYES_FREE_ENERGY = "free_energy.csv"
BAYES_OCCUPANCY = "occupancy.csv"
BAYES_OCCUPANCY_BY_START = "occupancy_by_start.csv"
BAYES_MIXING = "mixing.csv"
BAYES_CROSSOVERS = "crossovers.csv"
BAYES_SEQUENCES = "sequences.csv"
BAYES_SGD = "sgd_fractions.csv"
BAYES_POSTERIOR = "posterior"
LOCK = ".lock"

# The command that rewrites each run table: what the message about a damaged one says to run.
REWRITTEN_BY = {
    INSTANCES_CSV: "devtms train CONFIG --out {run} --force",
    TRAIN_LOG: "devtms train {run} --resume",
    LLC_CSV: "devtms llc {run}",
    GEOMETRY_CSV: "devtms analyze {run}",
    TRANSITIONS_CSV: "devtms analyze {run}",
    SUMMARY_CSV: "devtms analyze {run}",
}


# ---------------------------------------------------------------------------------------------
# Atomic writes


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # what open() would give; mkstemp alone gives 0600


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that a kill leaves either the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, _FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def check_writable(directory: Path, what: str) -> None:
    """Raise UserError unless files can be created in `directory` (or, where it does not exist
    yet, in the nearest directory above it, where it would be created). `what` names it in the
    message (e.g. "--out runs/x").

    The probe is an unnamed temporary file, deleted at once: nothing appears on disk. It asks
    the file system itself, which permission bits cannot answer (root on a read-only mount,
    /sys, a full quota).
    """
    directory = Path(directory)
    existing = next(p for p in (directory, *directory.parents) if p.exists())
    if not existing.is_dir():
        raise UserError(f"{what}: {existing} is not a directory")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        raise UserError(f"{what}: cannot write in {existing} ({e.strerror}); choose a "
                        "directory you can write to") from None


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_json_atomic(path: Path, obj: Any) -> None:
    write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def csv_bytes(table: pd.DataFrame) -> bytes:
    return table.to_csv(index=False, lineterminator="\n").encode()


def write_csv_atomic(path: Path, table: pd.DataFrame) -> None:
    write_bytes_atomic(path, csv_bytes(table))


# ---------------------------------------------------------------------------------------------
# The instance's conditions in every per-instance table

# Tables with one or more rows per instance: each is written with the instance's conditions
# (every column of instances.csv, the registry) right after `instance`, so that
# `pd.read_csv(RUN_DIR / "llc.csv").groupby("activation")` needs no merge.
PER_INSTANCE = (LLC_CSV, GEOMETRY_CSV, TRANSITIONS_CSV)


def condition_columns(instances: pd.DataFrame) -> list[str]:
    """What instances.csv says an instance is: all its columns but the `instance` id
    (activation, n_features, n_hidden, sparsity, ..., seed, data, n_samples)."""
    return [c for c in instances.columns if c != "instance"]


def with_conditions(table: pd.DataFrame, instances: pd.DataFrame) -> pd.DataFrame:
    """`table` with the registry's condition columns right after its `instance` column.

    Any condition columns `table` already carries are replaced by the registry's, so a table
    read back and written again never holds two versions of them. table: one row per (instance,
    ...), instances: instances.csv -> same rows, more columns
    """
    conditions = condition_columns(instances)
    own = [c for c in table.columns if c not in conditions]
    registry = instances.set_index("instance")[conditions]
    ids = pd.to_numeric(table["instance"]).astype(instances["instance"].dtype) \
        if len(table) else table["instance"]
    joined = registry.reindex(ids.to_numpy()).reset_index(drop=True)
    joined.index = table.index
    after = own.index("instance") + 1
    return pd.concat([table[own[:after]], joined, table[own[after:]]], axis=1)


def without_conditions(table: pd.DataFrame, instances: pd.DataFrame) -> pd.DataFrame:
    """`table` without the registry's condition columns: what a stage computes, for code that
    joins instances.csv itself."""
    return table.drop(columns=condition_columns(instances), errors="ignore")


# Columns that are names, never numbers, whatever they look like: a setting id such as
# "68e1082657" would otherwise be read as a float (inf), a k-gon label "6" or a polygon "3" (one
# vertex) as an int. Empty cells are read as NaN.
TEXT_COLUMNS = {name: str for name in ("setting", "k_gon_label", "polygon", "phase",
                                       "final_geometry")}


def read_csv(path: Path, what: str, stage: str) -> pd.DataFrame:
    """Read a run CSV, refusing a damaged one with the command (`stage`) that repairs it."""
    path = Path(path)
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        raise RunDirError(
            f"{path} ends in a torn line (a write was cut off): re-run `{stage}` to repair it"
        )
    try:
        return pd.read_csv(io.BytesIO(data), dtype=TEXT_COLUMNS)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RunDirError(f"{path} ({what}) is not a readable CSV ({reason}): re-run `{stage}`"
                          ) from None


def cut_torn_line(path: Path) -> bool:
    """Drop a CSV's torn last line (the file ends mid-line), atomically; a file left without a
    complete line is removed. Only the command that rewrites the file calls this, holding the
    lock: the rows it drops are computed again. -> whether there was a torn line"""
    path = Path(path)
    if not path.is_file():
        return False
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return False
    whole = data[: data.rfind(b"\n") + 1]
    if whole.count(b"\n") < 2:  # nothing but (part of) the header
        path.unlink()
    else:
        write_bytes_atomic(path, whole)
    return True


# ---------------------------------------------------------------------------------------------
# Checkpoints: safetensors with a content hash


def _content_hash(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())  # 0-d tensors too
    return h.hexdigest()


def checkpoint_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return st_save(tensors, metadata={**metadata, "sha256": _content_hash(tensors)})


def load_checkpoint_file(path: Path) -> dict[str, torch.Tensor]:
    """Load and verify one checkpoint file; damage of any kind raises RunDirError."""
    path = Path(path)
    try:
        data = path.read_bytes()
        tensors = st_load(data)
        header_len = int.from_bytes(data[:8], "little")
        metadata = json.loads(data[8 : 8 + header_len]).get("__metadata__", {})
    except (SafetensorError, ValueError, OSError, UnicodeDecodeError) as e:
        raise RunDirError(
            f"checkpoint {path} is damaged or not a safetensors file ({e}); run "
            f"`devtms train {path.parent.parent} --resume` to retrain it from the last good one"
        ) from None
    if metadata.get("sha256") != _content_hash(tensors):
        raise RunDirError(
            f"checkpoint {path} fails its content check (altered or damaged); run "
            f"`devtms train {path.parent.parent} --resume` to retrain it from the last good one"
        )
    return tensors


# ---------------------------------------------------------------------------------------------
# The run directory


def package_versions() -> dict[str, str]:
    import numpy

    versions = {"devtms": __version__, "torch": torch.__version__, "numpy": numpy.__version__,
                "pandas": pd.__version__, "python": platform.python_version()}
    try:
        from importlib.metadata import version

        versions["devinterp"] = version("devinterp")
    except Exception:  # devinterp is only needed by the reference engine
        versions["devinterp"] = "not installed"
    return versions


class RunDir:
    """A run directory on disk. `RunDir.create` makes one; `RunDir.open` validates one."""

    def __init__(self, path: Path, meta: dict[str, Any]):
        self.path = Path(path)
        self.meta = meta
        self.config: RunConfig = config_from_dict(meta["config"])
        self._instances: pd.DataFrame | None = None
        self.notes: list[str] = []  # repairs made while working on the run, for the user

    # -- creating and opening -------------------------------------------------------------

    @classmethod
    def create(cls, path: Path, config: RunConfig, instances: pd.DataFrame) -> RunDir:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "config": config.to_dict(),
            "versions": package_versions(),
            "stages": {},
        }
        # instances.csv first: run.json is what makes the directory a run, so it comes last.
        write_csv_atomic(path / INSTANCES_CSV, instances)
        write_json_atomic(path / RUN_JSON, meta)
        return cls(path, meta)

    @classmethod
    def open(cls, path: Path) -> RunDir:
        path = Path(path)
        if not path.is_dir():
            raise RunDirError(f"{path} is not a directory (expected a run directory from "
                              "`devtms train`)")
        meta_path = path / RUN_JSON
        if not meta_path.is_file():
            raise RunDirError(f"{path} is not a devtms run: it has no {RUN_JSON} "
                              "(create one with `devtms train CONFIG --out DIR`)")
        try:
            meta = json.loads(meta_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RunDirError(f"{meta_path} is not valid JSON ({e}); the run cannot be read: "
                              "re-create it with `devtms train CONFIG --out DIR --force`") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise RunDirError(f"{meta_path} is not a devtms run file")
        if meta.get("format_version") != FORMAT_VERSION:
            raise RunDirError(
                f"{meta_path} has run format version {meta.get('format_version')!r} but this "
                f"devtms ({__version__}) reads version {FORMAT_VERSION}: re-create the run with "
                "`devtms train CONFIG --out DIR --force`, or open it with the devtms that made it"
            )
        try:
            return cls(path, meta)
        except RunDirError:
            raise
        except Exception as e:  # a config this devtms cannot read
            raise RunDirError(f"{meta_path}: its config is not valid for this devtms ({e})") from None

    # -- metadata -------------------------------------------------------------------------

    def save_meta(self) -> None:
        write_json_atomic(self.path / RUN_JSON, self.meta)

    def stage(self, name: str) -> dict[str, Any]:
        return self.meta["stages"].get(name, {})

    def set_stage(self, name: str, **status: Any) -> None:
        self.meta["stages"][name] = {**self.stage(name), **status}
        self.save_meta()

    def stage_done(self, name: str) -> bool:
        return bool(self.stage(name).get("done"))

    @property
    def instances(self) -> pd.DataFrame:
        if self._instances is None:
            self._instances = read_csv(self.path / INSTANCES_CSV, "instances",
                                       REWRITTEN_BY[INSTANCES_CSV].format(run=self.path))
        return self._instances

    # -- locking --------------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, command: str) -> Iterator[None]:
        """Hold the run's write lock; a second writer gets a RunDirError at once."""
        with lock_dir(self.path, command):
            yield

    # -- checkpoints ----------------------------------------------------------------------

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / CHECKPOINTS

    def checkpoint_path(self, step: int) -> Path:
        return self.checkpoint_dir / f"step_{step:08d}.safetensors"

    def checkpoint_steps(self) -> list[int]:
        """Steps with a checkpoint file on disk (not verified), ascending."""
        if not self.checkpoint_dir.is_dir():
            return []
        steps = []
        for p in self.checkpoint_dir.glob("step_*.safetensors"):
            with contextlib.suppress(ValueError):
                steps.append(int(p.stem.removeprefix("step_")))
        return sorted(steps)

    def save_checkpoint(self, step: int, tensors: dict[str, torch.Tensor]) -> None:
        data = checkpoint_bytes(tensors, {"step": str(step), "format": FORMAT})
        write_bytes_atomic(self.checkpoint_path(step), data)

    def load_checkpoint(self, step: int) -> dict[str, torch.Tensor]:
        path = self.checkpoint_path(step)
        if not path.is_file():
            steps = self.checkpoint_steps()
            shown = ", ".join(map(str, steps[:8])) + (" ..." if len(steps) > 8 else "")
            raise RunDirError(f"{self.path} has no checkpoint at step {step}; "
                              f"steps with checkpoints: {shown or 'none'}")
        return load_checkpoint_file(path)

    def load_weights(self, steps: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """W: (steps, I, m, n), b: (steps, I, n) of the given checkpoints."""
        loaded = [self.load_checkpoint(s) for s in steps]
        return torch.stack([t["W"] for t in loaded]), torch.stack([t["b"] for t in loaded])

    # -- tables ---------------------------------------------------------------------------

    def read_table(self, name: str, stage: str | None = None) -> pd.DataFrame | None:
        """A run CSV (train_log.csv, llc.csv, ...) or None if the stage has not written it.

        A damaged one raises RunDirError naming the command that repairs it (REWRITTEN_BY; for
        another file, `stage`).
        """
        path = self.path / name
        if not path.is_file():
            return None
        command = REWRITTEN_BY[name].format(run=self.path) if name in REWRITTEN_BY else stage
        return read_csv(path, name, command or "the stage that wrote it")

    def cut_torn_line(self, name: str) -> bool:
        """Repair a run CSV whose last line is torn by dropping that line (the caller holds the
        lock and computes the dropped row again); noted in self.notes."""
        if not cut_torn_line(self.path / name):
            return False
        self.notes.append(f"{self.path / name} ended in a torn line (a write was cut off); "
                          "dropped that line, its row is computed again")
        return True

    def as_written(self, name: str, table: pd.DataFrame) -> pd.DataFrame:
        """A table as the run directory holds it: per-instance tables (PER_INSTANCE) carry
        the instance's conditions from instances.csv right after `instance`."""
        return with_conditions(table, self.instances) if name in PER_INSTANCE else table

    def write_table(self, name: str, table: pd.DataFrame) -> None:
        write_csv_atomic(self.path / name, self.as_written(name, table))

    def write_table_if_changed(self, name: str, table: pd.DataFrame) -> bool:
        """Write a run CSV only if its bytes change (a rerun leaves the file untouched)."""
        path, data = self.path / name, csv_bytes(self.as_written(name, table))
        if path.is_file() and path.read_bytes() == data:
            return False
        write_bytes_atomic(path, data)
        return True


def remove_temporaries(path: Path) -> None:
    """Delete the temporary files of interrupted atomic writes (only safe under the lock)."""
    for tmp in Path(path).rglob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def is_unfinished_creation(path: Path) -> bool:
    """A directory a killed `devtms train` left before run.json existed: safe to start over."""
    leftovers = {p.name for p in Path(path).iterdir()} - {LOCK, INSTANCES_CSV}
    return not (Path(path) / RUN_JSON).exists() and all(
        n.startswith(".") and n.endswith(".tmp") for n in leftovers)


@contextlib.contextmanager
def lock_dir(path: Path, command: str) -> Iterator[None]:
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd = os.open(path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:  # a read-only run directory, or one that cannot be made
        raise RunDirError(f"cannot write to {path} ({e.strerror}): {command} needs to write "
                          "there") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise RunDirError(
                f"{path} is in use by {holder}; wait for it to finish (the lock is released "
                "when that process exits, even if it is killed)"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"`{command}` (pid {os.getpid()})".encode(), 0)
        remove_temporaries(path)  # left by a writer that was killed mid-write
        yield
    finally:
        os.close(fd)
