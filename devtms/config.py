"""Typed, validated run configs: TOML (or a packaged preset) in, a frozen `RunConfig` out.

A config has five sections. Fields marked "swept" take a list; a run trains the cross
product activation x sparsity x importance_ratio x seed, one TMS instance per combination.

    [model]        n_features, n_hidden, bias, reduction, activations (swept)
    [data]         kind, sparsity (swept), importance_ratio (swept), n_samples, eval_samples
    [train]        steps, batch_size, optimizer, lr, ..., init, seeds (swept)
    [checkpoints]  log_points, linear_every
    [llc]          eps, gamma, gamma_per_n_beta, n_beta, chains, draws, burnin, batch_size, seed,
                   n_samples, precond

Unknown keys, wrong types and out-of-range values are errors that name the field:

    >>> cfg = load_config("quick")            # a packaged preset
    >>> cfg = load_config("my_study.toml")    # or a file
    >>> instance_table(cfg)                   # one row per instance
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from devtms.activation_properties import ALL as ALL_ACTIVATIONS
from devtms.activation_properties import expand_activation_names
from devtms.errors import UserError

if TYPE_CHECKING:
    import pandas as pd

# pandas is imported where it is used, so that `devtms --help` and commands that only read
# configs start without it (and without torch: activation names come from activation_properties).

DataKind = Literal["sparse-uniform", "single-feature", "one-hot-binary"]
# SGLD's preconditioner (devtms.llc.sgld): none (plain SGLD), rmsprop (pSGLD, Li et al. 2016) or
# curvature (the Hessian at w*: eps is then dimensionless, relative to the posterior's width)
Precond = Literal["none", "rmsprop", "curvature"]


@dataclass(frozen=True)
class ModelConfig:
    n_features: int = 5  # n: input and output features
    n_hidden: int = 2  # m: hidden dimensions, m < n
    bias: bool = True  # learn the output bias b (else b stays 0)
    reduction: Literal["mean", "sum"] = "mean"  # per-sample squared error: mean or sum over features
    activations: tuple[str, ...] = ("relu",)  # swept; names or groups "all", "variants", "controls"

    def check(self) -> None:
        _require(self.n_features >= 2, "model.n_features", self.n_features, "an integer >= 2")
        _require(self.n_hidden >= 1, "model.n_hidden", self.n_hidden, "an integer >= 1")
        _require(
            self.n_hidden < self.n_features, "model.n_hidden", self.n_hidden,
            f"smaller than model.n_features = {self.n_features} (m < n: a bottleneck)",
        )
        _require(len(self.activations) > 0, "model.activations", [], "a non-empty list")


@dataclass(frozen=True)
class DataConfig:
    kind: DataKind = "sparse-uniform"  # see devtms.data
    sparsity: tuple[float, ...] = (0.0,)  # swept; S in [0, 1): a feature is 0 w.p. S (sparse-uniform)
    importance_ratio: tuple[float, ...] = (1.0,)  # swept; importance I_i = r^i
    n_samples: int = 0  # finite training set of N samples; 0: fresh samples every step
    eval_samples: int = 2048  # fresh-data runs: size of the fixed set the logged loss is measured on

    def check(self) -> None:
        _require(len(self.sparsity) > 0, "data.sparsity", [], "a non-empty list")
        for s in self.sparsity:
            _require(0.0 <= s < 1.0, "data.sparsity", s, "in [0, 1)")
        if self.kind != "sparse-uniform":
            _require(
                self.sparsity == (0.0,), "data.sparsity", list(self.sparsity),
                f"left out: {self.kind} data has a fixed sparsity (one feature per sample)",
            )
        _require(len(self.importance_ratio) > 0, "data.importance_ratio", [], "a non-empty list")
        for r in self.importance_ratio:
            _require(0.0 < r <= 1e6, "data.importance_ratio", r, "a positive number")
        _require(self.n_samples >= 0, "data.n_samples", self.n_samples, ">= 0 (0: fresh samples)")
        _require(self.eval_samples >= 1, "data.eval_samples", self.eval_samples, ">= 1")

    @property
    def finite(self) -> bool:
        return self.n_samples > 0


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 1000  # optimizer updates
    batch_size: int = 100
    optimizer: Literal["sgd", "adam", "adamw"] = "adamw"
    lr: float = 1e-3
    momentum: float = 0.0  # sgd only
    weight_decay: float = 0.0  # sgd/adam: L2 term; adamw: decoupled decay
    lr_schedule: Literal["constant", "linear", "cosine"] = "constant"  # decay to 0 at the last step
    init: Literal["xavier", "kgon"] = "xavier"
    init_kgon_k: int = 2  # kgon init: the columns start on a regular k-gon ...
    init_kgon_length: float = 1.0  # ... of this radius ...
    init_noise: float = 0.0  # ... plus Normal(0, init_noise) on every weight (xavier: ignored)
    init_bias_std: float = 0.0  # b starts at Normal(0, init_bias_std) (devinterp's example: 10)
    seeds: tuple[int, ...] = (0,)  # swept
    log_every: int = 0  # log the loss every this many steps (0: about 200 points) and at checkpoints
    shard_size: int = 0  # train instances in shards of this many (0: one shard); executors
    # (--scheduler dask) run shards in parallel; the shards, not the executor, fix the numbers
    compile: Literal["auto", "on", "off"] = "auto"  # fuse the activations' elementwise work
    # with torch.compile; auto: for runs of >= 10,000 steps and >= 4 activations (train.use_compile)

    def check(self) -> None:
        _require(self.steps >= 1, "train.steps", self.steps, "an integer >= 1")
        _require(self.batch_size >= 1, "train.batch_size", self.batch_size, "an integer >= 1")
        _require(self.lr > 0 and math.isfinite(self.lr), "train.lr", self.lr, "a positive number")
        _require(0.0 <= self.momentum < 1.0, "train.momentum", self.momentum, "in [0, 1)")
        _require(self.weight_decay >= 0, "train.weight_decay", self.weight_decay, ">= 0")
        if self.momentum and self.optimizer != "sgd":
            _require(False, "train.momentum", self.momentum, "0 unless train.optimizer = 'sgd'")
        _require(self.init_kgon_k >= 2, "train.init_kgon_k", self.init_kgon_k, "an integer >= 2")
        _require(self.init_kgon_length > 0, "train.init_kgon_length", self.init_kgon_length, "> 0")
        _require(self.init_noise >= 0, "train.init_noise", self.init_noise, ">= 0")
        _require(self.init_bias_std >= 0, "train.init_bias_std", self.init_bias_std, ">= 0")
        _require(len(self.seeds) > 0, "train.seeds", [], "a non-empty list")
        _require(len(set(self.seeds)) == len(self.seeds), "train.seeds", list(self.seeds),
                 "distinct integers")
        for s in self.seeds:
            _require(0 <= s < 2**63, "train.seeds", s, "integers in [0, 2^63)")
        _require(self.log_every >= 0, "train.log_every", self.log_every, ">= 0")
        _require(self.shard_size >= 0, "train.shard_size", self.shard_size, ">= 0 (0: one shard)")


@dataclass(frozen=True)
class CheckpointConfig:
    log_points: int = 50  # log-spaced steps in [1, steps], deduplicated (devinterp's schedule)
    linear_every: int = 0  # also every this many steps (0: none)

    def check(self) -> None:
        _require(self.log_points >= 0, "checkpoints.log_points", self.log_points, ">= 0")
        _require(self.linear_every >= 0, "checkpoints.linear_every", self.linear_every, ">= 0")


@dataclass(frozen=True)
class LLCOverride:
    """[llc.by_activation.NAME]: the SGLD values one activation's instances use instead of
    [llc]'s (unset ones are [llc]'s). `devtms calibrate --auto` writes these where one setting
    cannot serve every activation of a run (docs/science.md, section 4.8)."""

    eps: float | None = None
    gamma: float | None = None
    draws: int | None = None
    burnin: int | None = None
    # None: unset. Not `Precond | None`, which the parser would read "none" into (unset), so
    # that an activation could not go back to plain SGLD under [llc] precond = "rmsprop".
    precond: Literal[Precond, None] = None

    def values(self) -> dict[str, Any]:
        """The fields that are set."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass(frozen=True)
class LLCConfig:
    # The defaults are `devtms calibrate --auto`'s choice on chen2023 and quick (docs/science.md,
    # section 4.7); run `calibrate --auto` on a new setup.
    eps: float = 3e-3  # SGLD step size epsilon
    gamma: float = 5.0  # localization strength
    # gamma as a multiple of n_beta, replacing gamma where set: the localization then keeps its
    # width relative to the tempered posterior's when N changes (docs/science.md, section 4.10)
    gamma_per_n_beta: float | None = None
    n_beta: float | None = None  # inverse temperature; None: N / log N of the LLC dataset
    chains: int = 8
    draws: int = 1000  # recorded draws per chain, after burn-in
    burnin: int = 500  # steps discarded at the start of each chain
    batch_size: int = 100  # SGLD minibatch, drawn from the instance's training set
    seed: int = 0
    n_samples: int = 1000  # fresh-data runs only: size of the fixed set the LLC is measured on
    precond: Precond = "none"  # SGLD's preconditioner
    # activation name -> the values its instances use instead of the ones above
    by_activation: dict[str, LLCOverride] = field(default_factory=dict)

    def check(self) -> None:
        for name, override in self.by_activation.items():
            dataclasses.replace(self, by_activation={}, **override.values()).check_values(
                f"llc.by_activation.{name}.")
        self.check_values("llc.")

    def check_values(self, prefix: str) -> None:
        """The range checks, naming the fields with `prefix`."""
        _require(self.eps > 0 and math.isfinite(self.eps), prefix + "eps", self.eps,
                 "a positive number")
        _require(self.gamma >= 0 and math.isfinite(self.gamma), prefix + "gamma", self.gamma,
                 ">= 0")
        if self.gamma_per_n_beta is not None:
            _require(self.gamma_per_n_beta > 0 and math.isfinite(self.gamma_per_n_beta),
                     prefix + "gamma_per_n_beta", self.gamma_per_n_beta, "a positive number")
        if self.n_beta is not None:
            _require(self.n_beta > 0, prefix + "n_beta", self.n_beta, "a positive number")
        _require(self.chains >= 1, prefix + "chains", self.chains, "an integer >= 1")
        _require(self.draws >= 1, prefix + "draws", self.draws, "an integer >= 1")
        _require(self.burnin >= 0, prefix + "burnin", self.burnin, ">= 0")
        _require(self.batch_size >= 1, prefix + "batch_size", self.batch_size, "an integer >= 1")
        _require(self.n_samples >= 2, prefix + "n_samples", self.n_samples, "an integer >= 2")


@dataclass(frozen=True)
class RunConfig:
    name: str = "run"  # the default run directory is runs/<name>: one plain path component
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoints: CheckpointConfig = field(default_factory=CheckpointConfig)
    llc: LLCConfig = field(default_factory=LLCConfig)

    def check(self) -> None:
        _require(is_plain_name(self.name), "name", self.name,
                 "a plain name (it names the run directory): not empty, no / or \\, not . or ..")
        for section in (self.model, self.data, self.train, self.checkpoints, self.llc):
            section.check()
        if self.train.init == "kgon":
            _require(self.model.n_hidden == 2, "train.init", "kgon",
                     f"'xavier' when model.n_hidden = {self.model.n_hidden} (a k-gon lives in 2-d)")
            _require(self.train.init_kgon_k <= self.model.n_features, "train.init_kgon_k",
                     self.train.init_kgon_k, f"<= model.n_features = {self.model.n_features}")
        for name in self.llc.by_activation:  # one the run does not train is harmless (a
            # preset's activations narrowed), a name that is no activation is a mistake
            if name not in ALL_ACTIVATIONS:
                raise UserError(f"llc.by_activation.{name}: {name!r} is not an activation; "
                                f"choose from {', '.join(ALL_ACTIVATIONS)}")
        if self.train.init_bias_std > 0:
            _require(self.model.bias, "train.init_bias_std", self.train.init_bias_std,
                     "0 when model.bias = false")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples become lists); `config_from_dict` inverts it."""
        return _plain(dataclasses.asdict(self))

    def with_llc(self, **overrides: Any) -> RunConfig:
        """A copy with some [llc] fields replaced (command-line overrides), validated."""
        merged = {**self.to_dict()["llc"], **{k: v for k, v in overrides.items() if v is not None}}
        llc = _build(LLCConfig, merged, "llc")
        llc.check()
        return dataclasses.replace(self, llc=llc)


SECTIONS = {
    "model": ModelConfig,
    "data": DataConfig,
    "train": TrainConfig,
    "checkpoints": CheckpointConfig,
    "llc": LLCConfig,
}


# What a config file must say: the model, the data it learns, and how (and how long) it trains.
# [checkpoints] and [llc] have defaults worth taking; an empty file would train one instance on
# silent defaults, so it is an error that names these.
REQUIRED_SECTIONS = ("model", "data", "train")


def preset_names() -> list[str]:
    return sorted(p.name.removesuffix(".toml") for p in resources.files("devtms.presets").iterdir()
                  if p.name.endswith(".toml"))


def load_config(config_or_preset: str | Path) -> RunConfig:
    """Load a TOML file, or a packaged preset by name, and validate it. The file must have the
    sections REQUIRED_SECTIONS (config_from_dict, for dicts built in code, fills any in)."""
    path = Path(config_or_preset)
    if path.suffix == ".toml" or path.exists():
        if path.is_dir():
            raise UserError(f"{path} is a directory, not a config: give a TOML file, a preset "
                            "name, or a run directory (one holding run.json)")
        if not path.is_file():
            raise UserError(f"config file not found: {path}")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise UserError(f"{path} is not a config: TOML is UTF-8 text, and this file is not "
                            "(a binary file?)") from None
        except OSError as e:
            raise UserError(f"{path}: cannot read the config ({e.strerror})") from None
        source = str(path)
    else:
        name = str(config_or_preset)
        if name not in preset_names():
            raise UserError(
                f"unknown preset {name!r} (and no such file); presets: {', '.join(preset_names())}"
            )
        text = resources.files("devtms.presets").joinpath(f"{name}.toml").read_text()
        source = f"preset {name}"
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{source}: not valid TOML: {e}") from None
    config = config_from_dict(raw)
    missing = [f"[{name}]" for name in REQUIRED_SECTIONS if name not in raw]
    if missing:
        raise UserError(f"{source}: no {' or '.join(missing)} section; a config needs [model] "
                        "(sizes, activations), [data] (kind, sparsity, ...) and [train] (steps, "
                        "optimizer, lr, seeds, ...); [checkpoints] and [llc] are optional. Start "
                        "from a preset: devtms/presets/*.toml")
    return config


def config_from_dict(raw: dict[str, Any]) -> RunConfig:
    """Build and validate a RunConfig from a parsed TOML/JSON dict."""
    if not isinstance(raw, dict):
        raise UserError("config: expected a table of sections")
    unknown = set(raw) - set(SECTIONS) - {"name"}
    if unknown:
        raise UserError(
            f"config: unknown key {sorted(unknown)[0]!r}; allowed: name, {', '.join(SECTIONS)}"
        )
    name = raw.get("name", "run")
    if not isinstance(name, str):
        raise UserError(f"name: expected a string, got {name!r}")
    sections = {}
    for key, cls in SECTIONS.items():
        body = raw.get(key, {})
        if not isinstance(body, dict):
            raise UserError(f"{key}: expected a table [{key}], got {body!r}")
        sections[key] = _build(cls, body, key)
    model = sections["model"]
    sections["model"] = dataclasses.replace(
        model, activations=tuple(expand_activation_names(list(model.activations)))
    )
    config = RunConfig(name=name, **sections)
    config.check()
    return config


def instance_table(config: RunConfig) -> pd.DataFrame:
    """One row per instance: the cross product activation x sparsity x importance_ratio x seed.

    Activation is the outermost axis, so instances sharing an activation are contiguous
    (batched code applies each activation once, to a slice).
    """
    import pandas as pd

    m, d = config.model, config.data
    rows = [
        dict(
            activation=act,
            sparsity=s,
            feature_probability=1.0 - s if d.kind == "sparse-uniform" else 1.0 / m.n_features,
            importance_ratio=r,
            seed=seed,
        )
        for act, s, r, seed in itertools.product(
            m.activations, d.sparsity, d.importance_ratio, config.train.seeds
        )
    ]
    table = pd.DataFrame(rows)
    table.insert(0, "instance", range(len(table)))
    table.insert(2, "n_features", m.n_features)
    table.insert(3, "n_hidden", m.n_hidden)
    table["data"] = d.kind
    table["n_samples"] = d.n_samples
    return table


# ---------------------------------------------------------------------------------------------
# Parsing: a dict checked against a dataclass's type hints, naming the field on every error.


def is_plain_name(name: str) -> bool:
    """Whether `name` is one path component that stays where it is put: not empty, no path
    separator, not "." or "..", no NUL. (Without a separator it cannot be absolute.)"""
    return (bool(name.strip()) and name not in (".", "..")
            and not any(c in name for c in ("/", "\\", "\0")))


def _require(ok: bool, name: str, value: Any, allowed: str) -> None:
    if not ok:
        raise UserError(f"{name} = {value!r} is not allowed: must be {allowed}")


def _build(cls: type, body: dict[str, Any], section: str):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(body) - names
    if unknown:
        raise UserError(
            f"{section}.{sorted(unknown)[0]}: unknown key; allowed in [{section}]: "
            f"{', '.join(f.name for f in dataclasses.fields(cls))}"
        )
    values = {k: _coerce(v, hints[k], f"{section}.{k}") for k, v in body.items()}
    return cls(**values)


def _coerce(value: Any, hint: Any, name: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):  # a sub-table
        if not isinstance(value, dict):
            raise UserError(f"{name}: expected a table, got {value!r}")
        return _build(hint, value, name)
    if origin is dict:  # a table of sub-tables, keyed by name
        if not isinstance(value, dict):
            raise UserError(f"{name}: expected a table, got {value!r}")
        return {str(k): _coerce(v, args[1], f"{name}.{k}") for k, v in value.items()}
    if origin is tuple:  # swept field: a list, or one value
        items = value if isinstance(value, list) else [value]
        return tuple(_coerce(v, args[0], name) for v in items)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() == "none"):
            return None
        return _coerce(value, next(a for a in args if a is not type(None)), name)
    if origin is Literal:
        if value not in args:
            raise UserError(f"{name} = {value!r} is not allowed: must be one of {list(args)}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise UserError(f"{name}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{name}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise UserError(f"{name}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise UserError(f"{name}: expected a finite number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise UserError(f"{name}: expected a string, got {value!r}")
        return value
    raise TypeError(f"config field {name} has an unsupported type {hint!r}")  # a devtms bug


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    return obj
