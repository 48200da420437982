"""The posterior sampler's settings and the default grid of N (no torch: `--help` reads them)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

DEFAULT_GRID = (100, 200, 300, 500, 700, 1000, 1500, 2000, 3000, 5000)


@dataclass(frozen=True)
class SamplerSettings:
    """The sampler's hyperparameters (recorded with every result; devtms.bayes.posterior)."""

    chains: int = 8  # chains (each a ladder of rungs) per start
    steps: int = 8000  # SGLD steps, burn-in included
    burnin: int = 3000
    eps: float = 0.1  # step size x n_beta: rung r steps eps / (beta_r N)
    gamma: float = 1.0  # prior precision (a Normal(0, 1 / gamma) prior on every parameter)
    batch_size: int = 100  # minibatch of the SGLD gradient (min(this, N))
    hot_n: float = 100.0  # beta_0 N of the hottest rung
    rung_ratio: float = 1.5  # beta_{r+1} / beta_r (at most)
    swap_every: int = 50  # a swap costs a full-data loss of every rung
    thin: int = 25  # classify every thin-th state after burn-in
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    def betas(self, n: int) -> list[float]:
        """The rungs' inverse temperatures, hottest first, ending at exactly 1."""
        hottest = min(1.0, self.hot_n / n)
        rungs = 1 + math.ceil(math.log(1.0 / hottest) / math.log(self.rung_ratio) - 1e-9)
        if rungs == 1:
            return [1.0]
        return [hottest ** (1 - r / (rungs - 1)) for r in range(rungs)]

    def draws(self) -> int:
        """Classified states per chain."""
        return len(range(self.burnin, self.steps, self.thin))
