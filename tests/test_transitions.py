"""devtms.transitions and devtms.smoothing on synthetic curves with planted drops and jumps at known
checkpoints."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from devtms import transitions as tr
from devtms.schedule import checkpoint_steps
from devtms.smoothing import local_linear

STEPS = np.array(checkpoint_steps(20000, log_points=60))  # 0, 1, 2, ..., 20000: 55 checkpoints
X = np.log10(np.maximum(STEPS, 1))


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def planted_loss(drops: list[tuple[int, float]], seed: int, noise: float = 0.004,
                 width: float = 0.06, background: float = -0.03) -> np.ndarray:
    """log10 loss = -1.5 + background * x - sum_k size_k * sigmoid((x - x_k) / width) + noise."""
    rng = np.random.default_rng(seed)
    y = -1.5 + background * X + rng.normal(0, noise, len(X))
    for step, size in drops:
        y -= size * sigmoid((X - np.log10(step)) / width)
    return 10**y


def position(step: int) -> int:
    return int(np.searchsorted(STEPS, step))


def within_one_checkpoint(found: int, planted: int) -> bool:
    return abs(position(found) - position(planted)) <= 1


# ---------------------------------------------------------------------------------------------
# Loss drops


@pytest.mark.parametrize("seed", range(5))
def test_planted_loss_drops_are_found_within_one_checkpoint(seed):
    planted = [(int(STEPS[20]), 0.25), (int(STEPS[32]), 0.15), (int(STEPS[44]), 0.3)]
    drops = tr.loss_drops(STEPS, planted_loss(planted, seed))
    assert len(drops) == 3
    for drop, (step, size) in zip(drops, planted, strict=True):
        assert within_one_checkpoint(drop["step"], step), (drop, step)
        assert drop["size"] == pytest.approx(size, abs=0.06)  # decades of loss fallen


def test_a_sharp_drop_between_two_checkpoints_is_found_at_one_of_them():
    step = int(STEPS[30])
    loss = planted_loss([(step, 0.3)], seed=0, width=0.005, noise=0.0)
    (drop,) = tr.loss_drops(STEPS, loss)
    assert within_one_checkpoint(drop["step"], step)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("background", [0.0, -0.3, -1.0])
def test_no_loss_drops_on_smooth_curves_with_noise(seed, background):
    # a plateau, a gentle power law and a steep power law (10x per decade), 1 % noise: no event
    loss = planted_loss([], seed, noise=0.004, background=background)
    assert tr.loss_drops(STEPS, loss) == []


def test_no_loss_drops_on_a_noiseless_plateau():
    assert tr.loss_drops(STEPS, np.full(len(STEPS), 0.03)) == []


# ---------------------------------------------------------------------------------------------
# LLC jumps


def planted_llc(jumps: list[tuple[int, float]], seed: int, sem: float = 0.15,
                drift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    llc = 2.0 + drift * X + rng.normal(0, sem, len(X))
    for step, size in jumps:
        llc += size * sigmoid((X - np.log10(step)) / 0.04)
    return llc, np.full(len(X), sem)


@pytest.mark.parametrize("seed", range(5))
def test_planted_llc_rises_and_falls_are_found_within_one_checkpoint(seed):
    planted = [(int(STEPS[22]), 1.5), (int(STEPS[34]), -1.0), (int(STEPS[46]), 2.0)]
    llc, sem = planted_llc(planted, seed)
    jumps = tr.llc_jumps(STEPS, llc, sem)
    assert [j["kind"] for j in jumps] == ["llc_rise", "llc_fall", "llc_rise"]
    for jump, (step, size) in zip(jumps, planted, strict=True):
        assert within_one_checkpoint(jump["step"], step), (jump, step)
        assert jump["size"] == pytest.approx(size, abs=0.5)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("drift", [0.0, 0.5])
def test_no_llc_jumps_on_smooth_curves_with_noise_at_their_error_bars(seed, drift):
    llc, sem = planted_llc([], seed, drift=drift)
    assert tr.llc_jumps(STEPS, llc, sem) == []


def test_a_jump_smaller_than_its_error_bars_is_not_reported():
    llc, _ = planted_llc([(int(STEPS[30]), 1.0)], seed=0, sem=0.01)
    assert len(tr.llc_jumps(STEPS, llc, np.full(len(llc), 0.01))) == 1
    assert tr.llc_jumps(STEPS, llc, np.full(len(llc), 2.0)) == []  # same curve, huge error bars


# ---------------------------------------------------------------------------------------------
# Discrete geometry series


def test_debounce_absorbs_flickers_but_keeps_the_end():
    assert tr.debounce([4, 4, 5, 4, 4, 5, 5, 6]) == [4, 4, 4, 4, 4, 5, 5, 6]
    assert tr.debounce([3, 4, 4, 4]) == [4, 4, 4, 4]  # a one-checkpoint start joins the next
    assert tr.debounce(["4++", "4++", "5+", "5+", "5+"], min_persist=3) == ["5+"] * 5


def test_changes_report_the_first_step_of_each_new_run():
    steps = [0, 1, 2, 5, 10, 20, 50, 100]
    assert tr.changes(steps, [4, 4, 5, 4, 4, 5, 5, 6]) == [(20, 4, 5), (100, 5, 6)]


def geometry_rows(steps, labels, pairs=None, superposed=None, dims=None) -> pd.DataFrame:
    n = len(steps)
    k = [int(lab.rstrip("+-0")) for lab in labels]
    return pd.DataFrame({
        "step": steps, "k_gon": k, "k_gon_label": labels,
        "n_antipodal_pairs": pairs or [0] * n, "n_superposed": superposed or k,
        "dims_per_feature": dims or [2 / kk for kk in k],
    })


def test_geometry_changes_of_a_planted_k_gon_sequence():
    steps = list(STEPS)
    labels = ["4++"] * 25 + ["5+"] * 1 + ["4++"] * 4 + ["5+"] * 15 + ["6"] * 10  # one flicker
    events = tr.geometry_changes(geometry_rows(steps, labels))
    kgon = [(e["step"], e["description"], e["size"]) for e in events if e["kind"] == "kgon_change"]
    assert kgon == [(steps[30], "k-gon 4++ -> 5+", 1.0), (steps[45], "k-gon 5+ -> 6", 1.0)]
    sup = [e["step"] for e in events if e["kind"] == "superposition_change"]
    assert sup == [steps[30], steps[45]]


def test_superposition_onset_is_the_start_of_the_final_run():
    steps = [0, 1, 2, 5, 10, 20, 50, 100]
    assert tr.superposition_onset(steps, [True, True, False, False, False, True, True, True]) == 20
    assert tr.superposition_onset(steps, [True] * 8) == 0
    assert np.isnan(tr.superposition_onset(steps, [True] * 3 + [False] * 5))


# ---------------------------------------------------------------------------------------------
# Alignment


def test_nearest_event_and_its_lag_in_decades():
    events = [dict(kind="llc_rise", step=500, size=1.0), dict(kind="llc_fall", step=3000, size=-1.0)]
    event, lag = tr.nearest(1000, events)
    assert event["step"] == 500 and lag == pytest.approx(-np.log10(2))
    event, lag = tr.nearest(2000, events)
    assert event["step"] == 3000 and lag == pytest.approx(np.log10(1.5))


@pytest.mark.parametrize("offset", [-3, -1, 0, 2, 4])
def test_alignment_lags_of_planted_offsets(offset):
    drop_at, jump_at = 30, 30 + offset
    loss = planted_loss([(int(STEPS[drop_at]), 0.3)], seed=offset + 10)
    llc, sem = planted_llc([(int(STEPS[jump_at]), 1.5)], seed=offset + 10)
    labels = ["4++"] * (drop_at + 1) + ["5+"] * (len(STEPS) - drop_at - 1)
    llc_table = pd.DataFrame({"step": STEPS, "llc_mean": llc, "llc_sem": sem})
    events = tr.instance_events(STEPS, loss, geometry_rows(list(STEPS), labels), llc_table)
    (drop,) = [e for e in events if e["kind"] == "loss_drop"]
    spacing = np.median(np.diff(X[10:]))
    planted_lag = X[jump_at] - X[drop_at]
    assert drop["llc_lag"] == pytest.approx(planted_lag, abs=1.01 * 2 * spacing)
    assert drop["llc_step"] > 0 and drop["llc_size"] > 0
    assert drop["geometry_description"] == "k-gon 4++ -> 5+"
    assert drop["geometry_lag"] == pytest.approx(X[drop_at + 1] - X[drop_at], abs=1.01 * spacing)
    tolerance = tr.default_tolerance(STEPS)
    assert drop["coincides_llc_rise"] == (abs(drop["llc_lag"]) <= tolerance)
    assert drop["coincides_geometry"] is True
    if abs(offset) <= 1:
        assert drop["coincides_llc_rise"] is True
    if abs(offset) >= 3:
        assert drop["coincides_llc_rise"] is False


def test_local_linear_recovers_a_line_exactly():
    x = np.log10(STEPS[1:].astype(float))
    value, slope, L = local_linear(x, 2.0 - 0.7 * x, bandwidth=0.1)
    assert np.allclose(value, 2.0 - 0.7 * x) and np.allclose(slope, -0.7)
    assert np.allclose(L.sum(1), 1.0)


# ---------------------------------------------------------------------------------------------
# The LLC across a loss drop: plateau levels


def gradual_llc(levels: list[tuple[int, float]], settle: float, seed: int, sem: float = 0.1):
    """An LLC that climbs to each new level over `settle` decades after its step (linearly in
    log step, as on chen2023, where it takes about a decade), plus noise of sd `sem`."""
    rng = np.random.default_rng(seed)
    y = np.full(len(X), levels[0][1])
    for (_, old), (step, new) in zip(levels, levels[1:], strict=False):
        y += (new - old) * np.clip((X - np.log10(step)) / settle, 0, 1)
    return y + rng.normal(0, sem, len(X)), np.full(len(X), sem)


@pytest.mark.parametrize("seed", range(4))
def test_a_gradual_llc_rise_is_found_as_a_higher_plateau_level(seed):
    """The LLC rises 4 -> 7.5 over a decade after a drop at step ~300, then 7.5 -> 8.5 after a
    drop at ~5000: the plateau levels are the planted ones, both rises are found."""
    drops_at = [int(STEPS[28]), int(STEPS[44])]
    loss = planted_loss([(drops_at[0], 0.3), (drops_at[1], 0.2)], seed=seed)
    llc, sem = gradual_llc([(0, 4.0), (drops_at[0], 7.5), (drops_at[1], 8.5)], settle=0.5,
                           seed=seed)
    table = pd.DataFrame({"step": STEPS, "llc_mean": llc, "llc_sem": sem})
    events = tr.instance_events(STEPS, loss, geometry_rows(list(STEPS), ["5+"] * len(STEPS)),
                                table)
    first, second = sorted((e for e in events if e["kind"] == "loss_drop"),
                           key=lambda e: e["step"])
    assert first["llc_before"] == pytest.approx(4.0, abs=0.3)
    assert first["llc_after"] == pytest.approx(7.5, abs=0.3)
    assert second["llc_after"] == pytest.approx(8.5, abs=0.3)
    assert first["llc_rises_across"] is True and second["llc_rises_across"] is True
    assert 0 < first["llc_change_se"] < 0.5


@pytest.mark.parametrize("seed", range(4))
def test_a_flat_llc_rises_across_no_drop(seed):
    """Loss drops with an LLC that does not move: no rise is invented (the levels' difference
    stays within RISE_Z standard errors)."""
    drops_at = [int(STEPS[28]), int(STEPS[44])]
    loss = planted_loss([(drops_at[0], 0.3), (drops_at[1], 0.2)], seed=seed)
    llc, sem = gradual_llc([(0, 6.0)], settle=0.5, seed=seed, sem=0.3)
    table = pd.DataFrame({"step": STEPS, "llc_mean": llc, "llc_sem": sem})
    events = tr.instance_events(STEPS, loss, geometry_rows(list(STEPS), ["5+"] * len(STEPS)),
                                table)
    drops = [e for e in events if e["kind"] == "loss_drop"]
    assert len(drops) == 2
    assert all(d["llc_rises_across"] is False for d in drops)


def test_a_plateau_without_estimates_leaves_the_rise_unmeasured():
    """No healthy estimate before the drop (every checkpoint there not at a minimum): None,
    neither a rise nor its absence."""
    drop_at = int(STEPS[30])
    loss = planted_loss([(drop_at, 0.3)], seed=1)
    keep = 2 * drop_at < STEPS
    table = pd.DataFrame({"step": STEPS[keep], "llc_mean": np.full(keep.sum(), 8.0),
                          "llc_sem": np.full(keep.sum(), 0.2)})
    events = tr.instance_events(STEPS, loss, geometry_rows(list(STEPS), ["5+"] * len(STEPS)),
                                table)
    (drop,) = [e for e in events if e["kind"] == "loss_drop"]
    assert np.isnan(drop["llc_before"]) and drop["llc_after"] == pytest.approx(8.0)
    assert drop["llc_rises_across"] is None
