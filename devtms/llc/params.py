"""An LLC setting: the resolved SGLD hyperparameters of a set of estimates, and its name.

A *setting* is everything that fixes an estimate's numbers besides the checkpoint: the engine
and the hyperparameters below. llc.csv can hold several settings side by side; the columns
that name one are `SETTING_COLUMNS`, in the order llc.csv is sorted by.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

from devtms.config import LLCConfig, RunConfig

# llc.csv's columns that identify a setting (with instance and step: an estimate), in the
# order the table is sorted by. `LLCParams.identity` fills them, in this order. The SGLD seed
# and the LLC dataset's size are `llc_seed` and `llc_n_samples`: llc.csv also carries the
# instance's own `seed` and `n_samples` (training set size) from instances.csv.
SETTING_COLUMNS = ("engine", "eps", "gamma", "n_beta", "num_chains", "num_draws", "burnin",
                   "batch_size", "llc_seed", "llc_n_samples", "loss_reduction", "precond")
# Their names in llc.csv files written before the instance's conditions were added to it; the
# setting id (`LLCParams.tag`) still hashes these names, so ids do not change.
LEGACY_NAMES = {"llc_seed": "seed", "llc_n_samples": "n_samples"}
FLOAT_SETTING_COLUMNS = ("eps", "gamma", "n_beta")  # compared within rounding

# The loss the sampler sees and the LLC is measured on: the per-sample squared error SUMMED over
# features (the negative log-likelihood of a Gaussian output-noise model, up to constants),
# whatever `model.reduction` the run trained with. The learning coefficient does not depend on
# how the loss is reduced, but an estimate at finite n_beta does: averaging over n features makes
# the posterior n times hotter, and the localization then pins the chains (docs/science.md,
# "The temperature convention"). llc.csv records it in the column `loss_reduction`.
LLC_REDUCTION = "sum"


@dataclass(frozen=True)
class LLCParams:
    """Resolved hyperparameters of a set of estimates (n_beta is a number here, never None)."""

    eps: float
    gamma: float
    n_beta: float
    chains: int
    draws: int
    burnin: int
    batch_size: int
    seed: int
    n_samples: int  # N: the size of the LLC dataset the losses are measured on
    precond: str = "none"  # config.Precond: plain SGLD, "rmsprop" or "curvature" (llc.sgld)

    @classmethod
    def resolve(cls, llc: LLCConfig, n_samples: int) -> LLCParams:
        """n_beta None -> N / log N of the LLC dataset (devtms's default; devinterp's is B / log B),
        on the scale of LLC_REDUCTION's loss; gamma_per_n_beta set -> gamma = it x n_beta."""
        n_beta = llc.n_beta if llc.n_beta is not None else n_samples / math.log(n_samples)
        gamma = llc.gamma if llc.gamma_per_n_beta is None else llc.gamma_per_n_beta * n_beta
        return cls(eps=float(llc.eps), gamma=float(gamma), n_beta=float(n_beta),
                   chains=llc.chains, draws=llc.draws, burnin=llc.burnin,
                   batch_size=llc.batch_size, seed=llc.seed, n_samples=n_samples,
                   precond=llc.precond)

    @classmethod
    def of_run(cls, config: RunConfig) -> LLCParams:
        """The setting of a run's own [llc] section."""
        return cls.resolve(config.llc, llc_dataset_size(config))

    def identity(self, engine: str) -> dict[str, Any]:
        """The values of SETTING_COLUMNS for these hyperparameters and `engine`."""
        return dict(engine=engine, eps=self.eps, gamma=self.gamma, n_beta=self.n_beta,
                    num_chains=self.chains, num_draws=self.draws, burnin=self.burnin,
                    batch_size=self.batch_size, llc_seed=self.seed,
                    llc_n_samples=self.n_samples, loss_reduction=LLC_REDUCTION,
                    precond=self.precond)

    @classmethod
    def from_identity(cls, row: Any) -> LLCParams:
        """The inverse of `identity`: the hyperparameters of a row of llc.csv (any mapping of
        SETTING_COLUMNS to values)."""
        return cls(eps=float(row["eps"]), gamma=float(row["gamma"]), n_beta=float(row["n_beta"]),
                   chains=int(row["num_chains"]), draws=int(row["num_draws"]),
                   burnin=int(row["burnin"]), batch_size=int(row["batch_size"]),
                   seed=int(row["llc_seed"]), n_samples=int(row["llc_n_samples"]),
                   precond=str(row["precond"]))

    def tag(self, engine: str) -> str:
        """A short stable name for these hyperparameters and engine: the `setting` column of
        llc.csv, `--setting ID`, and the trace file names.

        precond "none" is left out of what is hashed, so the ids of plain SGLD settings are
        those of the llc.csv files written before the preconditioner was a setting."""
        named = {LEGACY_NAMES.get(k, k): v for k, v in self.identity(engine).items()
                 if not (k == "precond" and v == "none")}
        return hashlib.blake2b(repr(sorted(named.items())).encode(), digest_size=5).hexdigest()


def llc_dataset_size(config: RunConfig) -> int:
    """N: the training set of a finite-data run, else the fixed set of llc.n_samples."""
    return config.data.n_samples if config.data.finite else config.llc.n_samples


def num_parameters(m: int, n: int, bias: bool) -> int:
    """d: the number of sampled parameters of one TMS instance."""
    return m * n + (n if bias else 0)
