"""The run's active LLC setting: the setting of llc.csv that analyze, report and study read.

llc.csv can hold estimates of many settings (each row names its own in the `setting` column, a
short stable id of the engine and hyperparameters: `LLCParams.tag`). A run has one active
setting, which may name another setting for some activations (`ActivationSettings`: where one
setting cannot serve every activation of a run):

    run.json "llc_setting"   {"id", "engine", "params": {...}, "source",
                              "by_activation": {NAME: {"id", "params", "source"}}}, written by
                             `devtms calibrate --auto` or `devtms llc --activate`
    absent                   the config's [llc] section (and its [llc.by_activation.NAME]
                             tables) with the batched engine

Changing it needs no retraining: `devtms llc RUN` computes the active setting at every
checkpoint, and `analyze` and `report` then show it. `--setting ID` on those commands reads
another setting of llc.csv, for every activation, instead (`choose`).
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd

from devtms.config import RunConfig
from devtms.errors import UserError
from devtms.llc.check import annotate
from devtms.llc.params import SETTING_COLUMNS, LLCParams, num_parameters
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
        precond = "" if p.precond == "none" else f"{p.precond}-preconditioned, "
        return (f"{self.id} ({self.engine}: {precond}eps {p.eps:g}, gamma {p.gamma:g}, n_beta "
                f"{p.n_beta:.4g}, {p.chains} chains x {p.draws} draws after {p.burnin} burn-in, "
                f"minibatch {p.batch_size})")


@dataclass(frozen=True)
class ActivationSettings:
    """The setting of each activation's estimates: `default`, except the activations of
    `by_activation` (where one setting cannot serve every activation of a run: a saturated
    activation's flat basin needs a larger eps than a stiff one tolerates). All share an engine.
    """

    default: Setting
    by_activation: dict[str, Setting] = field(default_factory=dict)

    @property
    def id(self) -> str:
        """The default's id; with overrides, "+" and a short hash of them (not an llc.csv id:
        each row names its own activation's setting)."""
        if not self.by_activation:
            return self.default.id
        pairs = repr(sorted((a, s.id) for a, s in self.by_activation.items())).encode()
        return f"{self.default.id}+{hashlib.blake2b(pairs, digest_size=3).hexdigest()}"

    @property
    def engine(self) -> str:
        return self.default.engine

    @property
    def source(self) -> str:
        return self.default.source

    def with_source(self, source: str) -> ActivationSettings:
        """The same settings, saying they came from `source`."""
        return ActivationSettings(
            dataclasses.replace(self.default, source=source),
            {a: dataclasses.replace(s, source=source) for a, s in self.by_activation.items()})

    def of(self, activation: str) -> Setting:
        return self.by_activation.get(activation, self.default)

    def settings(self) -> list[Setting]:
        """Each distinct setting once, the default first."""
        found = {self.default.id: self.default}
        for setting in self.by_activation.values():
            found.setdefault(setting.id, setting)
        return list(found.values())

    def groups(self, instances: pd.DataFrame) -> list[tuple[Setting, list[int]]]:
        """(setting, the instances it serves) for each setting that serves any of `instances`
        (rows of instances.csv)."""
        ids = instances["activation"].map(lambda a: self.of(a).id)
        return [(s, sorted(int(i) for i in instances.loc[ids == s.id, "instance"]))
                for s in self.settings() if (ids == s.id).any()]

    def rows(self, table: pd.DataFrame, instances: pd.DataFrame) -> pd.DataFrame:
        """The rows of llc.csv at their activation's setting (`instances`: instances.csv)."""
        if "setting" not in table:
            return table.iloc[:0]
        if not self.by_activation:
            return table[table["setting"] == self.default.id]
        setting_id = instances.set_index("instance")["activation"].map(lambda a: self.of(a).id)
        return table[table["setting"] == table["instance"].map(setting_id)]

    def describe(self) -> str:
        """The default's description and, per override, what differs from it."""
        text = self.default.describe()
        for activation, setting in sorted(self.by_activation.items()):
            text += f"; {activation}: {setting.id} ({_difference(self.default, setting)})"
        return text


def _difference(base: Setting, other: Setting) -> str:
    a, b = asdict(base.params), asdict(other.params)
    return ", ".join(f"{k} {b[k] if isinstance(b[k], str) else format(b[k], 'g')}"
                     for k in a if a[k] != b[k]) or "the same values"


def active_setting(run: RunDir) -> ActivationSettings:
    """The run's active settings (run.json's, else the config's [llc] section)."""
    record = run.meta.get(KEY)
    if not record:
        return config_settings(run.config)
    engine = record["engine"]
    default = Setting(LLCParams(**record["params"]), engine, record["source"])
    return ActivationSettings(default, {
        activation: Setting(LLCParams(**r["params"]), engine, r.get("source", record["source"]))
        for activation, r in record.get("by_activation", {}).items()})


def config_settings(config: RunConfig) -> ActivationSettings:
    """The settings of a config's [llc] section and its [llc.by_activation.NAME] tables (of
    the activations it trains)."""
    default = Setting(LLCParams.of_run(config))
    return ActivationSettings(default, {
        activation: Setting(dataclasses.replace(default.params, **override.values()),
                            source=f"the config's [llc.by_activation.{activation}]")
        for activation, override in config.llc.by_activation.items()
        if activation in config.model.activations})


def activate(run: RunDir, settings: ActivationSettings | Setting) -> None:
    """Make `settings` the run's active ones (run.json, atomically). The caller holds the lock."""
    if isinstance(settings, Setting):
        settings = ActivationSettings(settings)
    default = settings.default
    record = {"id": settings.id, "engine": default.engine, "params": asdict(default.params),
              "source": default.source}
    if settings.by_activation:
        record["by_activation"] = {
            activation: {"id": s.id, "params": asdict(s.params), "source": s.source}
            for activation, s in sorted(settings.by_activation.items())}
    run.meta[KEY] = record
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
           ) -> tuple[ActivationSettings, pd.DataFrame]:
    """The settings a stage reads and their rows of llc.csv (possibly none).

    setting_id None (or the active settings' id): the active settings. Otherwise the setting
    of llc.csv with that id (or a unique prefix of it), for every activation; UserError naming
    the settings present when there is none. The rows carry the self-check's columns
    (ref_llc, ref_sem, bias, biased, checked: devtms.llc.check.annotate).
    """
    active = active_setting(run)
    if setting_id is None or setting_id == active.id:
        return active, _annotated(run, table, active.rows(table, run.instances))
    ids = sorted(set(table["setting"].astype(str))) if "setting" in table else []
    matches = [i for i in ids if i.startswith(setting_id)] if setting_id else []
    if len(matches) != 1:
        present = ", ".join(ids) if ids else "none (no llc.csv rows)"
        what = "names no setting" if not matches else "is ambiguous"
        raise UserError(f"--setting {setting_id!r} {what} of {run.path}/llc.csv; settings "
                        f"present: {present}")
    known = {s.id: s for s in active.settings()}
    setting = known.get(matches[0]) or setting_of_rows(table, matches[0])
    return ActivationSettings(setting), _annotated(run, table,
                                                   table[table["setting"] == matches[0]])


def _annotated(run: RunDir, table: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
    """`rows` with the self-check's columns (devtms.llc.check.annotate)."""
    model = run.config.model
    d = num_parameters(model.n_hidden, model.n_features, model.bias)
    if "activation" in rows or rows.empty:
        return annotate(rows, table, d)
    activation = run.instances.set_index("instance")["activation"]
    out = annotate(rows.assign(activation=rows["instance"].map(activation).to_numpy()), table, d)
    return out.drop(columns="activation")


def to_dict(settings: ActivationSettings) -> dict[str, Any]:
    """The settings as analyze records them in run.json."""
    record = {"id": settings.id, "engine": settings.engine, **asdict(settings.default.params)}
    if settings.by_activation:
        record["by_activation"] = {a: {"id": s.id, **asdict(s.params)}
                                   for a, s in sorted(settings.by_activation.items())}
    return record
