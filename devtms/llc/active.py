"""The run's active LLC setting: the one setting of llc.csv that analyze, report and study read.

llc.csv can hold estimates of many settings (each row names its own in the `setting` column, a
short stable id of the engine and hyperparameters: `LLCParams.tag`). A run has exactly one
active setting:

    run.json "llc_setting"   {"id", "engine", "params": {...}, "source"}, written by
                             `devtms calibrate --auto` or `devtms llc --activate`
    absent                   the config's [llc] section with the batched engine

Changing it needs no retraining: `devtms llc RUN` computes the active setting at every
checkpoint, and `analyze` and `report` then show it. `--setting ID` on those commands reads
another setting of llc.csv instead (`choose`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd

from devtms.errors import UserError
from devtms.llc.params import SETTING_COLUMNS, LLCParams
from devtms.store import RunDir

KEY = "llc_setting"  # in run.json
CONFIG_SOURCE = "the config's [llc] section"


@dataclass(frozen=True)
class Setting:
    """An engine and its resolved hyperparameters, and where the choice came from."""

    params: LLCParams
    engine: str = "batched"
    source: str = CONFIG_SOURCE

    @property
    def id(self) -> str:
        return self.params.tag(self.engine)

    def describe(self) -> str:
        p = self.params
        return (f"{self.id} ({self.engine}: eps {p.eps:g}, gamma {p.gamma:g}, n_beta "
                f"{p.n_beta:.4g}, {p.chains} chains x {p.draws} draws after {p.burnin} burn-in, "
                f"minibatch {p.batch_size})")


def active_setting(run: RunDir) -> Setting:
    """The run's active setting (run.json's, else the config's [llc] section)."""
    record = run.meta.get(KEY)
    if not record:
        return Setting(LLCParams.of_run(run.config))
    return Setting(LLCParams(**record["params"]), record["engine"], record["source"])


def activate(run: RunDir, setting: Setting) -> None:
    """Make `setting` the run's active one (run.json, atomically). The caller holds the lock."""
    run.meta[KEY] = {"id": setting.id, "engine": setting.engine,
                     "params": asdict(setting.params), "source": setting.source}
    run.save_meta()


def settings_present(table: pd.DataFrame) -> pd.DataFrame:
    """One row per setting of llc.csv: setting, its SETTING_COLUMNS, estimates, healthy."""
    if table.empty or "setting" not in table:
        return pd.DataFrame(columns=["setting", *SETTING_COLUMNS, "estimates", "healthy"])
    cols = [c for c in SETTING_COLUMNS if c in table]
    first = table.drop_duplicates("setting").set_index("setting")[cols]
    counts = table.groupby("setting").agg(estimates=("instance", "size"),
                                          healthy=("healthy", "sum"))
    return first.join(counts).reset_index()


def setting_of_rows(table: pd.DataFrame, setting_id: str) -> Setting:
    """The Setting that made the rows of llc.csv with this id."""
    row = table[table["setting"] == setting_id].iloc[0]
    return Setting(LLCParams.from_identity(row), str(row["engine"]), "llc.csv")


def choose(run: RunDir, table: pd.DataFrame, setting_id: str | None = None
           ) -> tuple[Setting, pd.DataFrame]:
    """The setting a stage reads and its rows of llc.csv (possibly none).

    setting_id None: the active setting. Otherwise the setting of llc.csv with that id (or a
    unique prefix of it); UserError naming the settings present when there is none.
    """
    if setting_id is None:
        setting = active_setting(run)
        rows = table[table["setting"] == setting.id] if "setting" in table else table.iloc[:0]
        return setting, rows
    ids = sorted(set(table["setting"].astype(str))) if "setting" in table else []
    matches = [i for i in ids if i.startswith(setting_id)] if setting_id else []
    if len(matches) != 1:
        present = ", ".join(ids) if ids else "none (no llc.csv rows)"
        what = "names no setting" if not matches else "is ambiguous"
        raise UserError(f"--setting {setting_id!r} {what} of {run.path}/llc.csv; settings "
                        f"present: {present}")
    active = active_setting(run)
    setting = active if active.id == matches[0] else setting_of_rows(table, matches[0])
    return setting, table[table["setting"] == matches[0]]


def to_dict(setting: Setting) -> dict[str, Any]:
    """The setting as analyze records it in run.json."""
    return {"id": setting.id, "engine": setting.engine, **asdict(setting.params)}
