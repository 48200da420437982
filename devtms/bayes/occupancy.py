"""The sampled posterior's phases at each N, and the three journeys side by side.

records: the per-N results (devtms.bayes.stage.posterior_record): start_labels (S,), counts
(per chain: k-gon label -> classified draws), betas, swap_acceptance, diverged.

    occupancy(records)        -> N, k_gon_label, fraction (of all draws), chains (majority)
    by_start(records)         -> N, start, k_gon_label, fraction: the same per starting phase
    mixing(records)           -> N, rungs, swap_acceptance_min, chains, diverged,
                                 max_start_distance, start_p_value, agree
    with_sampled(pred, ...)   -> crossovers.csv: each predicted change with where the sampled
                                 occupancy changes, and the sampled changes not predicted
    sequences(...)            -> sequences.csv: each phase's place in the three journeys
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pandas as pd

from devtms.bayes import free_energy

PERMUTATIONS = 999  # reassignments of chains to starts in the agreement test
AGREE_P = 0.01  # chains from different starts agree unless their distance has p below this


def occupancy(records: list[dict]) -> pd.DataFrame:
    rows = []
    for rec in records:
        total: Counter = Counter()
        majority: Counter = Counter()
        for counts in rec["counts"]:
            total.update(counts)
            majority[max(sorted(counts), key=counts.get)] += 1
        draws = sum(total.values())
        for label in sorted(total):
            rows.append({"N": rec["N"], "k_gon_label": label, "fraction": total[label] / draws,
                         "chains": majority.get(label, 0)})
    return pd.DataFrame(rows, columns=["N", "k_gon_label", "fraction", "chains"])


def by_start(records: list[dict]) -> pd.DataFrame:
    rows = []
    for rec in records:
        per: dict[str, Counter] = {}
        for start, counts in zip(rec["start_labels"], rec["counts"], strict=True):
            per.setdefault(start, Counter()).update(counts)
        for start, total in per.items():
            draws = sum(total.values())
            rows.extend({"N": rec["N"], "start": start, "k_gon_label": label,
                         "fraction": total[label] / draws} for label in sorted(total))
    return pd.DataFrame(rows, columns=["N", "start", "k_gon_label", "fraction"])


def mixing(records: list[dict], starts: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per N: the ladder, and whether chains from different starts reached the same mixture.

    max_start_distance: the largest total variation distance between two starts' occupancies.
    Chains are the units of evidence (a chain holds its k-gon for long stretches), so whether
    that distance is more than chance is a permutation test over chains: under agreement the
    chains are exchangeable between starts. start_p_value: the share of PERMUTATIONS random
    reassignments of chains to starts with a distance at least as large; agree: p >= AGREE_P.
    """
    rows = []
    for rec in records:
        labels = sorted({label for counts in rec["counts"] for label in counts})
        shares = np.array([[c.get(s, 0) for s in labels] for c in rec["counts"]], float)
        shares /= shares.sum(1, keepdims=True)  # (chains, labels): each chain's occupancy
        starts_of = np.unique(rec["start_labels"], return_inverse=True)[1]
        observed = start_distance(shares, starts_of)
        rng = np.random.default_rng(int(rec["N"]))
        null = [start_distance(shares, rng.permutation(starts_of)) for _ in range(PERMUTATIONS)]
        p = (1 + sum(d >= observed - 1e-12 for d in null)) / (1 + PERMUTATIONS)
        rows.append({"N": rec["N"], "rungs": len(rec["betas"]),
                     "swap_acceptance_min": min(rec["swap_acceptance"], default=math.nan),
                     "chains": len(rec["counts"]), "diverged": rec["diverged"],
                     "max_start_distance": observed, "start_p_value": p, "agree": p >= AGREE_P})
    return pd.DataFrame(rows, columns=["N", "rungs", "swap_acceptance_min", "chains", "diverged",
                                       "max_start_distance", "start_p_value", "agree"])


def start_distance(shares: np.ndarray, starts_of: np.ndarray) -> float:
    """The largest total variation distance between two starts' mean occupancies.
    shares: (chains, labels); starts_of: (chains,) start index of each chain."""
    means = np.stack([shares[starts_of == k].mean(0) for k in np.unique(starts_of)])
    if len(means) < 2:
        return 0.0
    return float(0.5 * np.abs(means[:, None] - means[None]).sum(-1).max())


def fractions(occ: pd.DataFrame) -> pd.DataFrame:
    """occupancy as a wide table: N x label -> fraction (0 where a label has no draws)."""
    return occ.pivot_table(index="N", columns="k_gon_label", values="fraction", fill_value=0.0)


def crossing_n(wide: pd.DataFrame, a: str, b: str) -> tuple[float, str]:
    """Where b's sampled share first overtakes a's along the grid (log-linear interpolation).
    -> (N, how): how is "crosses", "before the grid" (b already ahead at the first N), "not
    within the grid"."""
    ns = wide.index.to_numpy(float)
    fa = wide[a].to_numpy() if a in wide else np.zeros(len(ns))
    fb = wide[b].to_numpy() if b in wide else np.zeros(len(ns))
    d = fb - fa
    if d[0] >= 0:
        return math.nan, "before the grid"
    for j in range(1, len(ns)):
        if d[j] >= 0:
            w = -d[j - 1] / (d[j] - d[j - 1])
            return float(np.exp(np.log(ns[j - 1]) + w * np.log(ns[j] / ns[j - 1]))), "crosses"
    return math.nan, "not within the grid"


def sampled_dominant(occ: pd.DataFrame) -> pd.Series:
    """The most occupied label at each N of the grid."""
    wide = fractions(occ)
    return wide.idxmax(axis=1)


def with_sampled(phases: pd.DataFrame, records: list[dict], mix: pd.DataFrame) -> pd.DataFrame:
    """crossovers.csv: the changes of the dominant phase predicted with the estimated LLCs,
    then those predicted with the parameter count's (`llc_count`), then those of the sampled
    dominant phase, each pair once (`found_by` says which found it first).

    n_star_free_energy, n_star_low, n_star_high: N* with the estimated LLCs (and one standard
    error of their gap either way); n_star_count: with the counts; n_star_sampled: where the
    sampled share of to_phase overtakes from_phase's (`sampled` says how it was found);
    chains_agree: whether the starts agreed at the grid points either side of it.
    """
    occ = occupancy(records)
    counted = phases.dropna(subset=["llc_count"]).assign(llc=lambda t: t["llc_count"],
                                                         llc_sem=0.0)
    pairs: dict[tuple[str, str], str] = {}
    for found_by, table in (("estimated LLC", free_energy.crossovers(phases)),
                            ("parameter count", free_energy.crossovers(counted))):
        for a, b in zip(table["from_phase"], table["to_phase"], strict=True):
            pairs.setdefault((a, b), found_by)
    if len(occ):
        dom = sampled_dominant(occ)
        for a, b in zip(dom.iloc[:-1], dom.iloc[1:], strict=True):
            if a != b:
                pairs.setdefault((a, b), "sampling")
    wide = fractions(occ) if len(occ) else pd.DataFrame()
    agree = mix.set_index("N")["agree"]
    rows = []
    for (a, b), found_by in pairs.items():
        n_star, low, high = free_energy.pair_n_stars(phases, a, b)
        sampled_n, how = crossing_n(wide, a, b) if len(occ) else (math.nan, "not sampled")
        spread = bootstrap_crossings(records, a, b) if how == "crosses" else np.array([])
        rows.append({"from_phase": a, "to_phase": b, "n_star_free_energy": n_star,
                     "n_star_low": low, "n_star_high": high, "n_star_sampled": sampled_n,
                     "n_star_sampled_low": np.percentile(spread, 16) if len(spread) else math.nan,
                     "n_star_sampled_high": np.percentile(spread, 84) if len(spread) else math.nan,
                     "sampled": how, "chains_agree": _agree_near(agree, sampled_n),
                     "n_star_count": (free_energy.pair_n_stars(counted, a, b)[0]
                                      if a in counted["k_gon_label"].values
                                      and b in counted["k_gon_label"].values else math.nan),
                     "found_by": found_by})
    return pd.DataFrame(rows, columns=CROSSOVER_COLUMNS)


CROSSOVER_COLUMNS = ["from_phase", "to_phase", "n_star_free_energy", "n_star_low",
                     "n_star_high", "n_star_sampled", "n_star_sampled_low",
                     "n_star_sampled_high", "sampled", "chains_agree", "n_star_count", "found_by"]
BOOTSTRAP = 200  # resamples of the chains behind n_star_sampled's range


def bootstrap_crossings(records: list[dict], a: str, b: str) -> np.ndarray:
    """n_star_sampled of a -> b over BOOTSTRAP resamples (with replacement) of each N's
    chains; the resamples where b never overtakes a within the grid are left out."""
    rng = np.random.default_rng(7)
    out = []
    for _ in range(BOOTSTRAP):
        resampled = [{**rec, "counts": [rec["counts"][j] for j in
                                        rng.integers(len(rec["counts"]), size=len(rec["counts"]))]}
                     for rec in records]
        n, how = crossing_n(fractions(occupancy(resampled)), a, b)
        if how == "crosses":
            out.append(n)
    return np.asarray(out)


def _agree_near(agree: pd.Series, n: float) -> object:
    if math.isnan(n) or agree.empty:
        return pd.NA
    ns = agree.index.to_numpy(float)
    below, above = ns[ns <= n], ns[ns >= n]
    near = [x for x in (below.max() if len(below) else None, above.min() if len(above) else None)
            if x is not None]
    return bool(all(agree.loc[x] for x in near))


def sequences(phases: pd.DataFrame, occ: pd.DataFrame, sgd: pd.DataFrame) -> pd.DataFrame:
    """One row per phase: where each journey reaches it.

    predicted_from_n: the first N (of free_energy.PREDICTION_RANGE) where the prediction makes
    it dominant; sampled_from_n: the first N of the grid where it is the most occupied;
    sampled_max_fraction; sgd_seeds_fraction, sgd_median_first_step (devtms.bayes.phases.
    sgd_order); and the rank of each in its journey (1 = reached first; empty: never)."""
    grid = np.geomspace(*free_energy.PREDICTION_RANGE, free_energy.GRID_POINTS)
    pred = pd.Series(free_energy.dominant(phases, grid), index=grid)
    dom = sampled_dominant(occ) if len(occ) else pd.Series(dtype=object)
    wide = fractions(occ) if len(occ) else pd.DataFrame()
    out = phases[["k_gon_label", "loss", "llc"]].copy()
    out["predicted_from_n"] = out["k_gon_label"].map(
        lambda s: float(pred.index[pred == s].min()) if (pred == s).any() else math.nan)
    out["sampled_from_n"] = out["k_gon_label"].map(
        lambda s: float(dom.index[dom == s].min()) if (dom == s).any() else math.nan)
    out["sampled_max_fraction"] = out["k_gon_label"].map(
        lambda s: float(wide[s].max()) if s in wide else 0.0)
    out = out.merge(sgd, on="k_gon_label", how="left")
    for journey, column in (("predicted", "predicted_from_n"), ("sampled", "sampled_from_n"),
                            ("sgd", "sgd_median_first_step")):
        out[f"{journey}_order"] = out[column].rank(method="min").astype("Int64")
    return out
