"""The self-check (devtms.llc.check): which estimates it samples, and the flag it derives.

Hand-built llc.csv tables with known differences between an SGLD setting and its reference
setting are the oracle: the rule (more than 5% and 2 combined standard errors, and more than
2% of d/2) must flag exactly the estimates built to break it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from devtms.llc import check
from devtms.llc.params import LLCParams

D = 18  # chen2023's d: d/2 = 9, the floor 0.18
SGLD = LLCParams(eps=3e-3, gamma=5.0, n_beta=144.8, chains=8, draws=1000, burnin=500,
                 batch_size=100, seed=0, n_samples=1000)


def rows(params: LLCParams, engine: str, values: dict[tuple[int, int], tuple[float, float]],
         activation: dict[int, str], state: str = "healthy") -> pd.DataFrame:
    """llc.csv rows of one setting: (instance, step) -> (llc_mean, llc_sem)."""
    return pd.DataFrame([dict(instance=i, step=s, activation=activation[i],
                              setting=params.tag(engine), **params.identity(engine),
                              llc_mean=m, llc_sem=se, state=state, healthy=state == "healthy")
                         for (i, s), (m, se) in values.items()])


ACT = {0: "relu", 1: "relu", 2: "tanh", 3: "tanh"}


def test_the_reference_setting_samples_the_same_posterior_on_the_whole_batch():
    ref = check.reference_params(SGLD)
    assert (ref.gamma, ref.n_beta, ref.seed, ref.n_samples) == (5.0, 144.8, 0, 1000)
    assert ref.batch_size == ref.n_samples and ref.precond == "none"
    assert check.reference_params(SGLD, gamma=10.0).gamma == 10.0
    # every SGLD setting with the same posterior shares one reference
    other = check.reference_params(LLCParams(**{**SGLD.__dict__, "eps": 1e-4, "draws": 50}))
    assert other.tag("mala") == ref.tag("mala")


def test_an_estimate_is_flagged_only_beyond_5_percent_and_2_standard_errors():
    sgld = rows(SGLD, "batched", {
        (0, 100): (8.6, 0.05),  # +7.5%, z = 8.5: biased
        (1, 100): (8.3, 0.05),  # +3.8%: within 5%
        (2, 100): (8.6, 0.40),  # +7.5% but z = 1.3: within the errors
        (3, 100): (0.30, 0.01),  # +50% of an llc near 0, but 0.1 < 2% of d/2: not biased
    }, ACT)
    ref = rows(check.reference_params(SGLD), "mala", {
        (0, 100): (8.0, 0.05), (1, 100): (8.0, 0.05), (2, 100): (8.0, 0.40),
        (3, 100): (0.20, 0.01)}, ACT)
    table = pd.concat([sgld, ref], ignore_index=True)
    out = check.annotate(sgld, table, D).set_index("instance")
    assert out["biased"].tolist() == [True, False, False, False]
    assert (out["checked"] == "own").all()
    np.testing.assert_allclose(out["ref_llc"], [8.0, 8.0, 8.0, 0.2])
    np.testing.assert_allclose(out.loc[0, "bias"], 0.075)


def test_an_estimate_without_its_own_comparison_takes_its_activations_bias_at_its_setting():
    values = {(i, s): (8.6, 0.05) for i in (0, 1) for s in (100, 1000)}  # relu: +7.5%
    values |= {(i, s): (8.1, 0.05) for i in (2, 3) for s in (100, 1000)}  # tanh: +1.3%
    sgld = rows(SGLD, "batched", values, ACT)
    ref = rows(check.reference_params(SGLD), "mala",
               {(0, 1000): (8.0, 0.05), (2, 1000): (8.0, 0.05)}, ACT)
    table = pd.concat([sgld, ref], ignore_index=True)
    out = check.annotate(sgld, table, D)
    own = out["checked"] == "own"
    assert own.sum() == 2
    relu, tanh = out["activation"] == "relu", out["activation"] == "tanh"
    assert out.loc[relu, "biased"].all() and not out.loc[tanh, "biased"].any()
    assert (out.loc[~own, "checked"] == "activation").all()
    summary = check.summarize_check(check.compare(sgld, table), D)[SGLD.tag("batched")]
    # the setting as a whole: +4.4%, within tolerance; relu alone is not
    assert not summary["biased"] and summary["bias"] == pytest.approx(0.04375)
    assert summary["by_activation"]["relu"]["biased"]
    assert not summary["by_activation"]["tanh"]["biased"]
    assert summary["n"] == 2


def test_a_reference_that_is_not_healthy_checks_nothing():
    sgld = rows(SGLD, "batched", {(0, 100): (8.6, 0.05)}, ACT)
    ref = rows(check.reference_params(SGLD), "mala", {(0, 100): (8.0, 0.05)}, ACT,
               state="unconverged")
    out = check.annotate(sgld, pd.concat([sgld, ref], ignore_index=True), D)
    assert not out["biased"].any() and out["checked"].tolist() == [""]
    assert out["ref_llc"].tolist() == [8.0]  # shown, but not counted


def test_the_sample_is_spread_over_conditions_and_log_spread_steps_ending_at_the_last():
    steps = [0, 1, 2, 5, 10, 30, 100, 300, 1000, 3000]
    acts = {i: a for i, a in enumerate(["relu"] * 4 + ["tanh"] * 4)}
    table = rows(SGLD, "batched", {(i, s): (5.0, 0.1) for i in acts for s in steps}, acts)
    table.loc[table["step"] < 10, "state"] = "not_at_minimum"
    instances = pd.DataFrame({"instance": list(acts), "activation": list(acts.values()),
                              "seed": [0, 1, 2, 3] * 2})
    pairs = check.check_pairs(table, instances, max_instances=4, steps=3)
    chosen = sorted({i for i, _ in pairs})
    assert chosen == [0, 1, 4, 5]  # two of each activation, the first seeds
    picked = sorted({s for _, s in pairs})
    assert picked[-1] == 3000 and len(picked) == 3 and min(picked) >= 10  # at a minimum only
    assert check.log_spread([10, 30, 100, 300, 1000, 3000], 3) == [10, 300, 3000]  # log(1+s)


@pytest.mark.parametrize("state", ["not_at_minimum", "diverged"])
def test_an_estimate_with_no_basin_is_neither_sampled_nor_flagged(state):
    sgld = rows(SGLD, "batched", {(0, 100): (8.6, 0.05)}, ACT, state=state)
    assert check.check_pairs(sgld, pd.DataFrame({"instance": [0], "activation": ["relu"],
                                                 "seed": [0]})) == []
    ref = rows(check.reference_params(SGLD), "mala", {(0, 100): (8.0, 0.05)}, ACT)
    out = check.annotate(sgld, pd.concat([sgld, ref], ignore_index=True), D)
    assert not out["biased"].any()


def test_a_single_comparison_is_judged_by_students_t_with_welchs_degrees_of_freedom():
    """Two 4-chain estimates of equal sem: 6 degrees of freedom, t = 2.447; one sem dominating:
    the 4-chain side's 3, t -> 3.18; many chains: the normal's 1.96, floored at 2. A 6% difference
    at z = 2.3 between 4-chain estimates is then no evidence of bias (it was at z > 2); at z = 3.5
    it is."""
    import numpy as np

    limit = check.welch_limit(np.array([0.1, 0.1, 0.1]), np.array([4, 4, 1000]),
                              np.array([0.1, 1e-6, 0.1]), np.array([4, 4, 1000]))
    np.testing.assert_allclose(limit, [2.4469, 3.1824, 2.0], atol=1e-3)
    flags = check.is_biased(np.array([0.3, 0.3]), np.array([0.06, 0.06]), np.array([2.3, 3.5]),
                            0.1, np.array([limit[0], limit[0]]))
    assert flags.tolist() == [False, True]
