"""Phase transitions along training: loss drops, LLC jumps, geometry changes, and their alignment.

Everything here is a pure function of one instance's curves at its checkpoint steps, taken
against x = log10(step) (step 0, the initialisation, has no log and is left out of the smooth
curves; it still starts the discrete geometry series).

Steps in a curve: smoothing + derivative peaks
----------------------------------------------
Checkpoints are log-spaced and few (20-100), transitions are sigmoid-like steps in log time,
and the curves sit on a moving background (loss keeps falling slowly, the LLC drifts). So a
transition is detected where the curve falls (or rises) *more steeply than around it*:

1. Smooth with a Gaussian-weighted local linear regression in x (bandwidth in decades;
   default: the larger of 0.05 and the median checkpoint spacing, twice that for the LLC,
   whose points are independent noisy estimates). The local slope is the derivative estimate,
   and both are linear in y, so the standard error of any combination of them is exact given
   the per-point error bars (the LLC's sem), or a robust noise estimate when a curve has none
   (the loss: 1.4826 * MAD of the residuals, corrected for what the smoother absorbs).
2. Candidates are the interior local maxima of the steepness u = -slope (drops) or +slope
   (rises) whose topographic prominence (as in scipy.signal.find_peaks) is at least
   `min_prominence`: a constant slope (a power law in loss, a steady drift) has no peak and so
   no event, however steep.
3. Each candidate spans from the lowest-steepness point on its left (its base, searched back to
   the previous higher peak and at most `max_width` decades, default 0.5) to the same on its
   right. Its size is the change of the smoothed curve across that span; its excess, the part
   of that change beyond the background: the slope at the gentler base (if it moves the same
   way, else 0) times the span.
4. It is kept when its prominence is at least `z` standard errors of (slope at the peak - slope
   at the steeper base) and |excess| >= `min_size` and >= `z` * (standard error of the excess):
   noise on a steep but steady decline is not an event, however much the curve falls.

The event's step is the checkpoint where the steepness peaks (the middle of the fall).

Defaults (`LOSS`, `LLC`, `DIMS` below):

| curve | y | min_size | min_prominence | z |
|---|---|---|---|---|
| loss | log10(loss) | 0.02 decades (a 4.5 % fall) | 0.1 decades/decade | 3 |
| LLC | llc_mean, error bars llc_sem | 5 % of the curve's median abs | 0 (left to the z tests) | 3 |
| D* | log2(dims per feature) | 0.25 (a factor 1.19) | 0.5 | 3 |

On synthetic curves with 55 checkpoints (tests/test_transitions.py): with 1 % loss noise, a
false drop on about 1 curve in 100 (plateau or power law) and 91 % of 0.05-decade drops found;
with 2.3 % noise about 1 in 9 power-law curves gets a false drop. An LLC step of 6.7 error
bars is found 99 % of the time within one checkpoint, one of 4 error bars half the time.

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

# ---------------------------------------------------------------------------------------------
# Smoothing


def local_linear(x: np.ndarray, y: np.ndarray, bandwidth: float, with_slope_matrix: bool = False):
    """Gaussian-weighted local linear regression at every x.

    x, y: (N,) -> value (N,), slope (N,), L (N, N) with value = L @ y (the smoother matrix),
    and with_slope_matrix: D (N, N) with slope = D @ y.
    """
    d = x[None, :] - x[:, None]  # (N, N): x_j - x_i
    w = np.exp(-0.5 * (d / bandwidth) ** 2)
    s0, s1, s2 = w.sum(1), (w * d).sum(1), (w * d * d).sum(1)  # (N,)
    det = s0 * s2 - s1 * s1
    flat = det <= 1e-12 * s0 * s0  # neighbours too far for a slope: a weighted mean, slope 0
    det = np.where(flat, 1.0, det)
    # weighted least squares of y on (1, d): intercept and slope, both linear maps of y
    L = np.where(flat[:, None], w / s0[:, None], w * (s2[:, None] - s1[:, None] * d) / det[:, None])
    D = np.where(flat[:, None], 0.0, w * (s0[:, None] * d - s1[:, None]) / det[:, None])
    return (L @ y, D @ y, L, D) if with_slope_matrix else (L @ y, D @ y, L)


def default_bandwidth(x: np.ndarray) -> float:
    """The larger of 0.05 decades and the median spacing of the checkpoints."""
    gaps = np.diff(np.sort(x))
    return float(max(0.05, np.median(gaps))) if len(gaps) else 0.05


def robust_noise(y: np.ndarray, L: np.ndarray) -> float:
    """The noise sd of a curve from its residuals r = (1 - L) y: 1.4826 * MAD(r), corrected for
    the part of the noise the smoother absorbs (E r_i^2 = sd^2 * ((1 - L)(1 - L)^T)_ii)."""
    if len(y) == 0:
        return 0.0
    r = y - L @ y
    R = np.eye(len(y)) - L
    shrink = float(np.sqrt(np.mean(np.sum(R * R, axis=1))))
    return float(1.4826 * np.median(np.abs(r - np.median(r))) / max(shrink, 1e-6))


# ---------------------------------------------------------------------------------------------
# Steps in a smooth curve


@dataclass(frozen=True)
class StepParams:
    min_size: float  # |change| across the event, in units of y
    min_prominence: float = 0.0  # of the steepness peak, in units of y per decade
    z: float = 3.0  # |change| >= z * its standard error
    max_width: float = 0.5  # each side of an event spans at most this many decades
    bandwidth: float | None = None  # smoothing bandwidth in decades; None: bandwidth_factor
    bandwidth_factor: float = 1.0  # ... times default_bandwidth (the checkpoint spacing)
    relative: bool = False  # min_size is a fraction of median |y| (for the LLC)


LOSS = StepParams(min_size=0.02, min_prominence=0.1)
LLC = StepParams(min_size=0.05, relative=True, bandwidth_factor=2.0)
DIMS = StepParams(min_size=0.25, min_prominence=0.5)


@dataclass(frozen=True)
class Step:
    index: int  # position of the steepest point in the curve
    start: int  # first and last position of the span
    end: int
    size: float  # y[end] - y[start] of the smoothed curve (negative for falls)
    excess: float  # the change beyond the background slope (what the test judges)
    se: float  # the standard error of the excess
    steepness: float  # |slope| at the peak, units of y per decade


def find_steps(x: np.ndarray, y: np.ndarray, direction: int, params: StepParams,
               err: np.ndarray | None = None) -> list[Step]:
    """Falls (direction = -1) or rises (+1) of y(x) that stand out from their surroundings.

    x: (N,) increasing log10 steps, y: (N,), err: (N,) standard errors of y or None (then a
    constant noise is estimated from the residuals of the smooth).
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 4:
        return []
    bandwidth = params.bandwidth or params.bandwidth_factor * default_bandwidth(x)
    smooth, slope, L, D = local_linear(x, y, bandwidth, with_slope_matrix=True)
    if err is None or not np.all(np.isfinite(err)):
        err = np.full(len(y), robust_noise(y, L))
    var = np.asarray(err, float) ** 2  # (N,)
    u = direction * slope  # steepness: positive where y moves in `direction`
    min_size = params.min_size * (np.median(np.abs(y)) if params.relative else 1.0)
    steps = []
    for i, prominence, left, right in _peaks(u, x, params.max_width):
        if u[i] <= 0 or prominence < params.min_prominence:
            continue
        # the peak must stand out from the steeper of its bases by z standard errors ...
        base = left if u[left] >= u[right] else right
        contrast = D[i] - D[base]  # (N,): direction * prominence = contrast @ y
        if prominence < params.z * float(np.sqrt(np.sum(contrast**2 * var))):
            continue
        # ... and the change across the span beyond the background must be big and significant;
        # the background is the slope at the gentler base when it moves the same way, else 0
        gentle = right if base == left else left
        background = D[gentle] if u[gentle] > 0 else np.zeros(len(y))
        contrast = L[right] - L[left] - (x[right] - x[left]) * background  # excess = c @ y
        excess = float(contrast @ y)
        se = float(np.sqrt(np.sum(contrast**2 * var)))
        if direction * excess >= max(min_size, params.z * se):
            size = float(smooth[right] - smooth[left])
            steps.append(Step(i, left, right, size, excess, se, float(u[i])))
    return steps


def _peaks(u: np.ndarray, x: np.ndarray, max_width: float) -> list[tuple[int, float, int, int]]:
    """Interior local maxima of u with their prominence and bases. -> [(i, prom, left, right)]

    A plateau of equal values counts once (its first point). The base on each side is the
    minimum of u between the peak and the nearest higher point (or the end, or max_width
    decades away); the prominence is the peak's height above the higher of the two bases.
    """
    out = []
    n = len(u)
    for i in range(1, n - 1):
        if not (u[i] > u[i - 1] and u[i] >= u[i + 1]):
            continue
        j = i + 1
        while j < n - 1 and u[j] == u[i]:
            j += 1
        if j < n and u[j] > u[i]:  # a shelf climbing further: not a peak
            continue
        left = i
        k = i - 1
        while k >= 0 and u[k] <= u[i] and x[i] - x[k] <= max_width:
            if u[k] < u[left]:
                left = k
            k -= 1
        right = i
        k = i + 1
        while k < n and u[k] <= u[i] and x[k] - x[i] <= max_width:
            if u[k] < u[right]:
                right = k
            k += 1
        out.append((i, float(u[i] - max(u[left], u[right])), left, right))
    return out


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
    "coincides_llc_rise", "geometry_step", "geometry_lag", "geometry_description",
    "coincides_geometry",
]

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
                                    f"(steps {st[s.start]}-{st[s.end]})"))
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
    rows = align(drops, jumps, geo, tolerance, llc is not None and len(llc) > 0) + jumps + geo
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
