"""Steps in a curve: sigmoid-like falls or rises of a quantity against log10(step).

Used by devtms.transitions for loss drops, LLC jumps and plateaus of dims per feature.

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
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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
