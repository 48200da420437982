"""Phase transitions along training: loss drops, LLC jumps, geometry changes, and their alignment.

Everything here is a pure function of one instance's curves at its checkpoint steps, taken
against x = log10(step) (step 0, the initialisation, has no log and is left out of the smooth
curves; it still starts the discrete geometry series).

Steps in a curve (loss drops, LLC jumps, D* plateaus) are found by devtms.smoothing:
smoothing against log10(step) and peaks of steepness that stand out from their surroundings;
its docstring gives the method and the defaults (`LOSS`, `LLC`, `DIMS`).

Geometry changes of discrete quantities (k-gon label, antipodal pairs, superposed features)
are the boundaries between runs of constant value after runs shorter than `min_persist`
checkpoints (default 2) are absorbed into the run before them (a short first run into the one
after it; a short last run is kept), so a one-checkpoint flicker is not a transition. The
change's step is the first checkpoint of the new run.

Alignment
---------
For each loss drop: the nearest LLC jump (rise or fall) and the nearest geometry change (a
structural one, k-gon / pairs / superposition, when one lies within the tolerance; D* moves
whenever norms grow, so it is the answer only when nothing structural happened), with
lag = log10(their step) - log10(drop step) in decades (positive: after the drop). A drop
"coincides" with an LLC rise / a geometry change when one lies within `tolerance` decades
(default: the larger of 0.2 -- a factor 1.6 in step -- and 2 checkpoint spacings; a k-gon
change is seen when the new vertex reaches half the longest norm, the loss falls fastest a
little later).

Across each loss drop, the LLC levels of the plateaus either side (`llc_across_drops`): the
mean of the last PLATEAU_ESTIMATES healthy estimates between the previous drop's end and this
drop's start, and between its end and the next drop's start. `llc_rises_across` is True when
the level after exceeds the level before by RISE_Z standard errors, None when a plateau has
no healthy estimate. It is the test theory asks for (the new critical point has the larger
learning coefficient); the nearest-jump alignment above asks that the rise be steep as well.

"Superposition emerges" at the first step of the final run of checkpoints in which more
features are represented than the model has hidden dimensions (n_represented > m: the
definition of superposition; D_i alone is not used, since random initialisations already share
dimensions); it is "only after the largest loss drop" when that step is not before the drop's
step minus the tolerance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from devtms.smoothing import DIMS, LLC, LOSS, StepParams, find_steps

# ---------------------------------------------------------------------------------------------
# Discrete series


def debounce(values: Sequence, min_persist: int = 2) -> list:
    """Absorb runs shorter than min_persist into the run before them (the first into the next).

    A run at the very end is kept however short: no later checkpoint can confirm or refute it.
    Returns the cleaned series (same length).
    """
    vals = list(values)
    runs: list[list] = []  # [value, length]
    for v in vals:
        if runs and _same(runs[-1][0], v):
            runs[-1][1] += 1
        else:
            runs.append([v, 1])
    if len(runs) > 1 and runs[0][1] < min_persist:  # a short start takes the next value
        runs[1][1] += runs[0][1]
        runs.pop(0)
    cleaned: list[list] = []
    for r, (value, length) in enumerate(runs):
        short = length < min_persist and r < len(runs) - 1
        if cleaned and (short or _same(cleaned[-1][0], value)):
            cleaned[-1][1] += length
        else:
            cleaned.append([value, length])
    return [value for value, length in cleaned for _ in range(length)]


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and np.isnan(a) and np.isnan(b):
        return True
    return a == b


def changes(steps: Sequence[int], values: Sequence, min_persist: int = 2) -> list[tuple[int, object,
                                                                                     object]]:
    """Changes of a debounced discrete series. -> [(step, old, new)] at the new run's first step"""
    clean = debounce(values, min_persist)
    return [(int(steps[i]), clean[i - 1], clean[i]) for i in range(1, len(clean))
            if not _same(clean[i - 1], clean[i])]


# ---------------------------------------------------------------------------------------------
# One instance


EVENT_COLUMNS = [
    "instance", "kind", "step", "size", "description", "llc_step", "llc_lag", "llc_size",
    "coincides_llc_rise", "llc_before", "llc_after", "llc_change_se", "llc_rises_across",
    "geometry_step", "geometry_lag", "geometry_description", "coincides_geometry",
]
PLATEAU_ESTIMATES = 3  # a plateau's LLC level: the mean of its last this many healthy estimates
RISE_Z = 2.0  # the LLC rises across a drop when after - before exceeds this many standard errors

# kinds, in the order a tie for "nearest" is resolved
GEOMETRY_KINDS = ["kgon_change", "antipodal_change", "superposition_change", "dims_plateau"]
KINDS = ["loss_drop", "llc_rise", "llc_fall", *GEOMETRY_KINDS]


@dataclass
class Settings:
    loss: StepParams = LOSS
    llc: StepParams = LLC
    dims: StepParams = DIMS
    min_persist: int = 2
    tolerance: float | None = None  # decades; None: max(0.2, 2 * median checkpoint spacing)

    def to_dict(self) -> dict:
        return {"loss": asdict(self.loss), "llc": asdict(self.llc), "dims": asdict(self.dims),
                "min_persist": self.min_persist, "tolerance": self.tolerance}


def default_tolerance(steps: Sequence[int]) -> float:
    x = np.log10(np.asarray([s for s in steps if s > 0], float))
    gaps = np.diff(np.sort(x))
    return float(max(0.2, 2.0 * np.median(gaps))) if len(gaps) else 0.2


def _positive(steps, *columns):
    steps = np.asarray(steps)
    keep = steps > 0
    for c in columns:
        if c is not None:
            keep &= np.isfinite(np.asarray(c, float))
    return keep


def loss_drops(steps: Sequence[int], loss: Sequence[float], params: StepParams = LOSS) -> list[dict]:
    """Steep falls of log10(loss) against log10(step). -> [{kind, step, size, description}]

    size: decades of loss fallen across the drop (> 0).
    """
    loss = np.asarray(loss, float)
    keep = _positive(steps, loss)
    st = np.asarray(steps)[keep]
    y = np.log10(np.maximum(loss[keep], 1e-30))
    out = []
    for s in find_steps(np.log10(st), y, -1, params):
        before, after = 10 ** y[s.start], 10 ** y[s.end]
        out.append(dict(kind="loss_drop", step=int(st[s.index]), size=-s.size,
                        description=f"loss {before:.3g} -> {after:.3g} "
                                    f"(steps {st[s.start]}-{st[s.end]})",
                        start=int(st[s.start]), end=int(st[s.end])))
    return out


def llc_jumps(steps: Sequence[int], llc: Sequence[float], sem: Sequence[float] | None = None,
              params: StepParams = LLC) -> list[dict]:
    """Rises and falls of the LLC against log10(step), judged against its error bars.

    size: change of the (smoothed) LLC across the jump, signed.
    """
    llc = np.asarray(llc, float)
    keep = _positive(steps, llc, sem)
    st, y = np.asarray(steps)[keep], llc[keep]
    err = None if sem is None else np.asarray(sem, float)[keep]
    out = []
    for direction, kind in ((1, "llc_rise"), (-1, "llc_fall")):
        for s in find_steps(np.log10(st), y, direction, params, err):
            out.append(dict(kind=kind, step=int(st[s.index]), size=s.size,
                            description=f"llc {y[s.start]:.3g} -> {y[s.end]:.3g} "
                                        f"(+-{s.se:.2g}, steps {st[s.start]}-{st[s.end]})"))
    return sorted(out, key=lambda e: e["step"])


def geometry_changes(geometry: pd.DataFrame, settings: Settings | None = None) -> list[dict]:
    """Geometry changes of one instance from its rows of geometry.csv (sorted by step).

    kgon_change: the k-gon label changes (size: change of k, 0 if only bias signs change);
    antipodal_change: the number of antipodal pairs changes; superposition_change: the number
    of superposed features changes;
    dims_plateau: a step of log2(dims per feature) (size: factor, as log2).
    """
    settings = settings or Settings()
    g = geometry.sort_values("step")
    steps = g["step"].to_numpy()
    out: list[dict] = []
    labels = g["k_gon_label"].astype(object).fillna("").astype(str).to_numpy()
    if (labels != "").any():
        k = g["k_gon"].to_numpy(dtype=float)
        k_by_label = dict(zip(labels, k, strict=True))
        for step, old, new in changes(steps, list(labels), settings.min_persist):
            out.append(dict(kind="kgon_change", step=step, size=k_by_label[new] - k_by_label[old],
                            description=f"k-gon {old} -> {new}"))
    for column, kind, what in (("n_antipodal_pairs", "antipodal_change", "antipodal pairs"),
                               ("n_superposed", "superposition_change", "superposed features")):
        values = [int(v) for v in g[column].to_numpy()]
        for step, old, new in changes(steps, values, settings.min_persist):
            out.append(dict(kind=kind, step=step, size=float(new - old),
                            description=f"{what} {old} -> {new}"))
    dims = g["dims_per_feature"].to_numpy(dtype=float)
    keep = _positive(steps, dims) & (dims > 0)
    st = steps[keep]
    y = np.log2(dims[keep])
    for direction in (-1, 1):
        for s in find_steps(np.log10(st), y, direction, settings.dims):
            out.append(dict(kind="dims_plateau", step=int(st[s.index]), size=s.size,
                            description=f"dims/feature {2 ** y[s.start]:.3g} -> "
                                        f"{2 ** y[s.end]:.3g}"))
    return sorted(out, key=lambda e: (e["step"], KINDS.index(e["kind"])))


def nearest(drop_step: int, events: list[dict]) -> tuple[dict | None, float]:
    """The event nearest a loss drop in log10 step. -> (event or None, lag in decades)"""
    best, lag = None, np.nan
    for e in events:
        d = float(np.log10(max(e["step"], 1)) - np.log10(max(drop_step, 1)))
        if best is None or abs(d) < abs(lag) - 1e-12:
            best, lag = e, d
    return best, lag


def nearest_geometry(drop_step: int, events: list[dict], tolerance: float) -> tuple[dict | None,
                                                                                   float]:
    """The nearest structural change (k-gon, pairs, superposition) if one is within tolerance,
    else the nearest geometry change of any kind (D* moves with every norm change, so it is
    only the answer when nothing structural happened)."""
    change, lag = nearest(drop_step, [e for e in events if e["kind"] != "dims_plateau"])
    if change is None or abs(lag) > tolerance:
        other, other_lag = nearest(drop_step, events)
        if other is not None and (change is None or abs(other_lag) < abs(lag)):
            return other, other_lag
    return change, lag


def plateau_level(steps: np.ndarray, llc: np.ndarray, sem: np.ndarray, lo: float, hi: float,
                  k: int = PLATEAU_ESTIMATES) -> tuple[float, float]:
    """The LLC level of the plateau between steps lo and hi (inclusive): the mean of its last k
    estimates, with a standard error that counts both the chains' sem and the spread of the
    estimates (the weights still move on a plateau). -> (level, se); (nan, nan) if none."""
    inside = (steps >= lo) & (steps <= hi)
    y, e = llc[inside][-k:], sem[inside][-k:]
    if not len(y):
        return np.nan, np.nan
    spread = np.var(y, ddof=1) if len(y) > 1 else np.mean(e**2)
    return float(np.mean(y)), float(np.sqrt((np.mean(e**2) + spread) / len(y)))


def llc_across_drops(drops: list[dict], steps: Sequence[int], llc: Sequence[float],
                     sem: Sequence[float]) -> list[dict]:
    """Each loss drop's LLC levels on the plateaus either side of it, and whether it rises.

    A drop's plateaus run from the end of the drop before it (or step 0) to its start, and
    from its end to the start of the next drop (or the end of training): the phases SGD sits in
    before and after the transition. The learning coefficient of a critical point is a level,
    not an event: on chen2023 the LLC climbs over the decade of steps in which the weights
    settle onto the new k-gon, so the smoothed-curve jumps (`llc_jumps`) miss most of these
    rises, while the plateau levels differ by 6-24 standard errors.
    -> per drop: llc_before, llc_after, llc_change_se, llc_rises_across (None when a plateau
       has no estimate: typically every checkpoint before the drop was not at a minimum)
    """
    st, y, e = (np.asarray(v, float) for v in (steps, llc, sem))
    order = sorted(range(len(drops)), key=lambda j: drops[j]["step"])
    out: list[dict] = [{} for _ in drops]
    for rank, j in enumerate(order):
        d = drops[j]
        lo = drops[order[rank - 1]]["end"] if rank else 0
        hi = drops[order[rank + 1]]["start"] if rank + 1 < len(order) else np.inf
        before, before_se = plateau_level(st, y, e, lo, d["start"])
        after, after_se = plateau_level(st, y, e, d["end"], hi)
        se = float(np.hypot(before_se, after_se))
        rises = None if np.isnan(before) or np.isnan(after) else bool(after - before > RISE_Z * se)
        out[j] = dict(llc_before=before, llc_after=after, llc_change_se=se,
                      llc_rises_across=rises)
    return out


def align(drops: list[dict], llc: list[dict], geometry: list[dict], tolerance: float,
          have_llc: bool) -> list[dict]:
    """Add to each loss drop the nearest LLC jump and geometry change (see module docstring)."""
    out = []
    rises = [e for e in llc if e["kind"] == "llc_rise"]
    for d in drops:
        row = dict(d)
        jump, lag = nearest(d["step"], llc)
        row.update(llc_step=jump["step"] if jump else np.nan, llc_lag=lag,
                   llc_size=jump["size"] if jump else np.nan)
        rise, rise_lag = nearest(d["step"], rises)
        row["coincides_llc_rise"] = (bool(rise is not None and abs(rise_lag) <= tolerance)
                                     if have_llc else None)
        change, glag = nearest_geometry(d["step"], geometry, tolerance)
        row.update(geometry_step=change["step"] if change else np.nan, geometry_lag=glag,
                   geometry_description=change["description"] if change else "",
                   coincides_geometry=bool(change is not None and abs(glag) <= tolerance))
        out.append(row)
    return out


def instance_events(steps: Sequence[int], loss: Sequence[float], geometry: pd.DataFrame,
                    llc: pd.DataFrame | None = None, settings: Settings | None = None) -> list[dict]:
    """All events of one instance, loss drops aligned. -> rows with EVENT_COLUMNS (no instance)

    steps, loss: the loss at the checkpoint steps; geometry: its geometry.csv rows; llc: its
    llc.csv rows (step, llc_mean, llc_sem) or None.
    """
    settings = settings or Settings()
    tolerance = settings.tolerance or default_tolerance(steps)
    drops = loss_drops(steps, loss, settings.loss)
    jumps = []
    if llc is not None and len(llc):
        llc = llc.sort_values("step")
        jumps = llc_jumps(llc["step"].to_numpy(), llc["llc_mean"].to_numpy(),
                          llc["llc_sem"].to_numpy() if "llc_sem" in llc else None, settings.llc)
    geo = geometry_changes(geometry, settings)
    aligned = align(drops, jumps, geo, tolerance, llc is not None and len(llc) > 0)
    if llc is not None and len(llc):
        across = llc_across_drops(drops, llc["step"].to_numpy(), llc["llc_mean"].to_numpy(),
                                  llc["llc_sem"].to_numpy() if "llc_sem" in llc else
                                  np.zeros(len(llc)))
        for row, levels in zip(aligned, across, strict=True):
            row.update(levels)
    rows = aligned + jumps + geo
    return sorted(rows, key=lambda e: (e["step"], KINDS.index(e["kind"])))


def superposition_onset(steps: Sequence[int], in_superposition: Sequence[bool],
                        min_persist: int = 2) -> float:
    """First step of the final run of checkpoints in superposition (nan if the run ends without)."""
    flags = debounce([bool(v) for v in in_superposition], min_persist)
    if not flags or not flags[-1]:
        return np.nan
    i = len(flags) - 1
    while i > 0 and flags[i - 1]:
        i -= 1
    return float(steps[i])
