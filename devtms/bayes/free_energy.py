"""Which phase the posterior prefers at each training-set size N, predicted from loss and LLC.

To leading order the free energy of a phase (its share of the posterior's mass is exp(-F_N)) is

    F_N(phase) = N L(phase) + lambda(phase) log N

with L the phase's population loss (on the likelihood's scale: the summed squared error is
the negative log likelihood of unit-variance-1/2 Gaussian noise) and lambda its learning
coefficient. The phase of least F_N dominates. Between two phases a (higher loss) and b
(lower loss, higher lambda) the crossover N* solves N (L_a - L_b) = (lambda_b - lambda_a) log N.

`dominant(phases, n)` is the predicted phase at each N; `crossovers(...)` the changes of it
over a range of N, each with N* and the range N* spans when the LLC difference moves by one
standard error either way.

phases: a DataFrame with columns k_gon_label, loss, llc, llc_sem (one row per phase).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy.optimize import brentq

PREDICTION_RANGE = (10.0, 1e5)  # N over which crossovers are predicted
GRID_POINTS = 4000  # log-spaced N of the search for changes of the dominant phase


def free_energy(loss: np.ndarray, llc: np.ndarray, n: np.ndarray) -> np.ndarray:
    """F_N = N L + lambda log N. loss, llc: (phases,), n: (grid,) -> (phases, grid)"""
    n = np.asarray(n, dtype=float)[None, :]
    return np.asarray(loss, float)[:, None] * n + np.asarray(llc, float)[:, None] * np.log(n)


def dominant(phases: pd.DataFrame, n: np.ndarray) -> np.ndarray:
    """The k_gon_label of least F_N at each N. -> (grid,) of labels"""
    F = free_energy(phases["loss"].to_numpy(), phases["llc"].to_numpy(), n)
    return phases["k_gon_label"].to_numpy()[np.argmin(F, axis=0)]


def crossing(loss_gap: float, llc_gap: float, lo: float, hi: float) -> float:
    """The N in (lo, hi] where a phase of loss L + loss_gap and LLC lambda - llc_gap stops
    beating one of loss L and LLC lambda: the larger root of N loss_gap = llc_gap log N.
    lo where the lower-loss phase already wins at lo, hi-side NaN where it never wins by hi."""
    def gap(log_n: float) -> float:  # F(higher loss) - F(lower loss), in units of log N
        return loss_gap * math.exp(log_n) - llc_gap * log_n

    a, b = math.log(lo), math.log(hi)
    if gap(a) >= 0 and (llc_gap <= 0 or llc_gap / max(loss_gap, 1e-300) <= lo):
        return lo  # already past its minimum and winning: the lower-loss phase dominates
    if gap(b) <= 0:
        return math.nan
    # g is convex in N: past its minimum (N = llc_gap / loss_gap) it rises through 0 once
    start = max(a, math.log(max(llc_gap / loss_gap, lo))) if loss_gap > 0 else a
    return math.exp(brentq(gap, start, b, xtol=1e-12))


def crossovers(phases: pd.DataFrame, n_range: tuple[float, float] = PREDICTION_RANGE,
               z: float = 1.0) -> pd.DataFrame:
    """The changes of the dominant phase over n_range, in order of N.

    -> from_phase, to_phase, n_star_free_energy, n_star_low, n_star_high (`pair_n_stars`)
    """
    grid = np.geomspace(*n_range, GRID_POINTS)
    labels = dominant(phases, grid)
    rows = []
    for j in np.flatnonzero(labels[1:] != labels[:-1]):
        a, b = labels[j], labels[j + 1]
        n_star, low, high = pair_n_stars(phases, a, b, n_range, z)
        rows.append({"from_phase": a, "to_phase": b, "n_star_free_energy": n_star,
                     "n_star_low": low, "n_star_high": high})
    return pd.DataFrame(rows, columns=["from_phase", "to_phase", "n_star_free_energy",
                                       "n_star_low", "n_star_high"])


def pair_n_stars(phases: pd.DataFrame, a: str, b: str,
                 n_range: tuple[float, float] = PREDICTION_RANGE, z: float = 1.0
                 ) -> tuple[float, float, float]:
    """N* where b takes over from a, and N* with their LLC gap shrunk / grown by z standard
    errors (sqrt(sem_a^2 + sem_b^2)). A bound is n_range's end where the crossing leaves the
    range; all NaN where b's loss is not lower than a's or either lacks an LLC."""
    rows = phases.set_index("k_gon_label")
    if a not in rows.index or b not in rows.index:
        return math.nan, math.nan, math.nan
    pa, pb = rows.loc[a], rows.loc[b]
    loss_gap, llc_gap = float(pa["loss"] - pb["loss"]), float(pb["llc"] - pa["llc"])
    if not (loss_gap > 0 and math.isfinite(llc_gap)):
        return math.nan, math.nan, math.nan
    se = z * math.hypot(_sem(pa), _sem(pb))
    return (crossing(loss_gap, llc_gap, *n_range), crossing(loss_gap, llc_gap - se, *n_range),
            crossing(loss_gap, llc_gap + se, *n_range))


def _sem(row: pd.Series) -> float:
    sem = float(row.get("llc_sem", 0.0))
    return 0.0 if math.isnan(sem) else sem


def curves(phases: pd.DataFrame, n: np.ndarray) -> pd.DataFrame:
    """Long table of F_N - min over phases F_N (what the figure plots): N, k_gon_label,
    free_energy, relative_free_energy, dominant."""
    F = free_energy(phases["loss"].to_numpy(), phases["llc"].to_numpy(), n)
    best = F.min(axis=0)
    labels = phases["k_gon_label"].to_numpy()
    return pd.DataFrame({
        "N": np.tile(np.asarray(n, float), len(labels)),
        "k_gon_label": np.repeat(labels, len(n)),
        "free_energy": F.ravel(),
        "relative_free_energy": (F - best).ravel(),
        "dominant": (best == F).ravel(),
    })
