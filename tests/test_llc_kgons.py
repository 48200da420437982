"""The chen2023 preset's LLC, at its own [llc] defaults, against Chen et al.'s k-gon values.

Chen, Lau, Mendel, Wei, Murfet 2023: for c = 6 features in m = 2 dimensions with bias (d = 18),
the learning coefficient is 8.5 at the 6-gon and at 5+ (a 5-gon whose sixth feature has
W_i = 0 and a positive bias), and 7.0 at 5- (negative bias: that feature's 3 parameters are
locally irrelevant). docs/science.md, section 5.2 derives them. The preset trains 16 seeds for
20,000 steps; most end in 5+, one in the 6-gon. The test estimates every instance at the last
checkpoint with the preset's defaults, reads each final k-gon label from `devtms analyze`, and
requires every class with a known value to land within 15% of it (the issue's bar), healthy.
"""

from __future__ import annotations

import pandas as pd
import pytest

from .conftest import run_cli

THEORY = {"6": 8.5, "5+": 8.5, "5-": 7.0}
TOLERANCE = 0.15


@pytest.mark.slow
def test_chen2023_defaults_land_on_the_kgon_learning_coefficients(tmp_path):
    run = tmp_path / "chen2023"
    for argv in (["train", "chen2023", "--out", str(run)],
                 ["llc", str(run), "--steps", "last"],
                 ["analyze", str(run)]):
        result = run_cli(*argv, timeout=1800)
        assert result.returncode == 0, result.stderr
    table = pd.read_csv(run / "llc.csv")
    llc = table[table["engine"] == "batched"]
    geometry = pd.read_csv(run / "geometry.csv", dtype={"k_gon_label": str})
    last = llc["step"].max()
    final = llc[llc["step"] == last].merge(
        geometry[geometry["step"] == last][["instance", "k_gon_label"]], on="instance")
    known = final[final["k_gon_label"].isin(THEORY)]
    assert len(known) >= 8, final[["instance", "k_gon_label"]]  # most seeds end at a known k-gon
    assert known["healthy"].mean() >= 0.9, known[["instance", "state", "reason"]]
    by_class = known[known["healthy"]].groupby("k_gon_label")["llc_mean"].mean()
    for label, value in by_class.items():
        assert abs(value - THEORY[label]) <= TOLERANCE * THEORY[label], (label, value, by_class)
    # the self-check's exact engine at the preset's gamma: the 5+ and the 6-gon at N = 1000 lie
    # below 8.5 (measured 7.3-7.5 and 8.0): the estimator's value at this N, which SGLD's
    # step-size bias lifts by 5-8% (docs/science.md, section 4.9)
    reference = table[(table["engine"] == "mala") & (table["step"] == last)].merge(
        geometry[geometry["step"] == last][["instance", "k_gon_label"]], on="instance")
    reference = reference[reference["healthy"] & reference["k_gon_label"].isin(["5+", "6"])]
    assert len(reference) >= 4, reference
    assert (reference["llc_mean"] < 9.0).all() and reference["llc_mean"].mean() > 0.8 * 8.5
