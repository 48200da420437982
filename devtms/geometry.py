"""Superposition geometry of TMS weights (docs/science.md, geometry), batched over any leading axes.

Every function takes stacked weights in devtms's axis order (devtms/model.py):

    W: (..., m, n)      column W[..., :, i] is feature i's embedding in the m hidden dimensions
    b: (..., n)         output bias

so `W` of a whole run, (steps, instances, m, n), goes in at once. With `W_i` the i-th column,
`G = W^T W` its Gram matrix and `Wh_i = W_i / ||W_i||`:

    dimensions per feature   D* = m / ||W||_F^2
    feature dimensionality   D_i = ||W_i||^2 / sum_j (Wh_i . W_j)^2  = G_ii^2 / sum_j G_ij^2
    interference             sum_{j != i} (Wh_i . W_j)^2            (Anthropic shows its sqrt)

A feature with W_i = 0 has D_i = 0 and interference 0 (the limits Anthropic's eps gives).

Classifications, with every tolerance a field of `Thresholds` (defaults below):

- represented: ||W_i|| >= rel_norm * max_j ||W_j|| and ||W_i|| > abs_norm. Relative, so it
  works for every activation's weight scale; 0.5 means "at least half as long as the longest
  feature" (trained ReLU k-gons have unrepresented columns below 0.1 of the longest).
- superposed: represented with D_i <= superposed_dim (0.9): the feature shares its
  dimensions with others (two unit features closer than ~70 degrees, or an antipodal pair).
- antipodal pair (any m): two represented features with cosine <= antipodal_cos (-0.95,
  i.e. within ~18 degrees of opposite), shorter/longer norm >= antipodal_norm_ratio (0.8),
  and both D_i within antipodal_dim_tol (0.1) of 1/2: the pair owns a dimension, as in
  Anthropic's antipodal pairs. (A regular hexagon's opposite vertices have D_i = 1/3: they are
  part of the 6-gon, not pairs; a square is two antipodal pairs.)
- k-gon (m = 2): k = the number of vertices of the convex hull of the represented columns,
  made robust to small perturbations: starting from the exact hull, the vertex that sticks out
  least beyond the chord joining its two neighbours is dropped while that distance is below
  hull_tol * (largest norm) (0.05). This merges near-collinear vertices and near-duplicates (a
  point within tolerance of the hull of the others is not a vertex) and leaves a regular k-gon
  intact for k up to ~19 (a vertex of a regular k-gon of radius r sticks out r(1 - cos 2pi/k)).
  Regularity: `angle_dev` = max |angular gap - 2pi/k| / (2pi/k) over consecutive vertices
  (angles about the origin; 0 for a regular k-gon centred on the origin), `norm_spread` =
  (max - min) / max of the vertex norms.
- k-gon label (Chen et al. 2023's notation): k followed by one mark per feature off the
  polygon, from its output bias: "+" (positive), then "-" (negative), then "o" (exactly 0).
  "5+" is a 5-gon whose sixth feature has positive bias, "4+-" a 4-gon with one positive and
  one negative off-polygon bias, "3ooo" a 3-gon with three zero-bias features off it. No marks
  without a bias. The marks are never digits, so a label never reads as a number ("3ooo", not
  "3000"); store.TEXT_COLUMNS reads the column back as text.
- m = 1, n = 2 phase class (Anthropic's phase diagram; feature 1 is "the extra feature"):
  "not_learned" (feature 1 not represented: W = [a, 0]), "superposition" (both represented:
  W = [a, -a]), "dedicated" (only feature 1: W = [0, a]).

    >>> W, b = run.load_weights(run.checkpoint_steps())      # (S, I, m, n), (S, I, n)
    >>> dims_per_feature(W)                                  # (S, I)
    >>> kgon(W, b).label                                     # (S, I) strings like "5+"
    >>> geometry_table(W, b, steps, instance_ids)            # tidy, one row per (instance, step)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import torch

Tensor = torch.Tensor


@dataclass(frozen=True)
class Thresholds:
    rel_norm: float = 0.5  # represented: norm >= rel_norm * largest norm ...
    abs_norm: float = 1e-3  # ... and norm > abs_norm (an all-zero W represents nothing)
    superposed_dim: float = 0.9  # superposed: represented and D_i <= this
    antipodal_cos: float = -0.95  # antipodal pair: cosine <= this ...
    antipodal_norm_ratio: float = 0.8  # ... shorter / longer norm >= this ...
    antipodal_dim_tol: float = 0.1  # ... and |D_i - 1/2| <= this for both
    hull_tol: float = 0.05  # k-gon: drop hull vertices sticking out < hull_tol * largest norm

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


DEFAULT = Thresholds()


# ---------------------------------------------------------------------------------------------
# Continuous measures


def gram(W: Tensor) -> Tensor:
    """G = W^T W. (..., m, n) -> (..., n, n)"""
    return W.transpose(-1, -2) @ W


def feature_norms(W: Tensor) -> Tensor:
    """||W_i||. (..., m, n) -> (..., n)"""
    return torch.linalg.vector_norm(W, dim=-2)


def dims_per_feature(W: Tensor) -> Tensor:
    """D* = m / ||W||_F^2 (inf for W = 0). (..., m, n) -> (...)"""
    return W.shape[-2] / W.square().sum(dim=(-2, -1))


def feature_dimensionality(W: Tensor) -> Tensor:
    """D_i = G_ii^2 / sum_j G_ij^2 (0 for a zero column). (..., m, n) -> (..., n)"""
    G = gram(W)  # (..., n, n)
    diag = torch.diagonal(G, dim1=-2, dim2=-1)  # (..., n) = ||W_i||^2
    total = G.square().sum(-1)  # (..., n) = ||W_i||^2 * sum_j (Wh_i . W_j)^2
    return torch.where(total > 0, diag.square() / total.clamp_min(1e-300), torch.zeros_like(diag))


def interference(W: Tensor) -> Tensor:
    """sum_{j != i} (Wh_i . W_j)^2 (0 for a zero column). (..., m, n) -> (..., n)"""
    G = gram(W)
    diag = torch.diagonal(G, dim1=-2, dim2=-1)
    off = G.square().sum(-1) - diag.square()  # (..., n)
    return torch.where(diag > 0, off.clamp_min(0) / diag.clamp_min(1e-300), torch.zeros_like(diag))


def cosines(W: Tensor) -> Tensor:
    """cos(W_i, W_j) (0 where a column is zero). (..., m, n) -> (..., n, n)"""
    norms = feature_norms(W)
    outer = norms[..., :, None] * norms[..., None, :]
    return torch.where(outer > 0, gram(W) / outer.clamp_min(1e-300), torch.zeros_like(outer))


# ---------------------------------------------------------------------------------------------
# Classifications


def represented(W: Tensor, t: Thresholds = DEFAULT) -> Tensor:
    """Features whose norm is at least t.rel_norm of the largest. (..., m, n) -> bool (..., n)"""
    norms = feature_norms(W)
    largest = norms.max(-1, keepdim=True).values
    return (norms >= t.rel_norm * largest) & (norms > t.abs_norm)


def superposed(W: Tensor, t: Thresholds = DEFAULT) -> Tensor:
    """Represented features with D_i <= t.superposed_dim. (..., m, n) -> bool (..., n)"""
    return represented(W, t) & (feature_dimensionality(W) <= t.superposed_dim)


def antipodal_pairs(W: Tensor, t: Thresholds = DEFAULT) -> Tensor:
    """pairs[..., i, j] (i < j): features i and j form an antipodal pair. -> bool (..., n, n)"""
    n = W.shape[-1]
    norms, dim = feature_norms(W), feature_dimensionality(W)
    rep = represented(W, t)
    half = rep & ((dim - 0.5).abs() <= t.antipodal_dim_tol)  # (..., n)
    ratio = torch.minimum(norms[..., :, None], norms[..., None, :]) / torch.maximum(
        norms[..., :, None], norms[..., None, :]
    ).clamp_min(1e-300)  # (..., n, n)
    pair = ((cosines(W) <= t.antipodal_cos) & (ratio >= t.antipodal_norm_ratio)
            & half[..., :, None] & half[..., None, :])
    upper = torch.ones(n, n, dtype=torch.bool, device=W.device).triu(1)
    return pair & upper


def n_antipodal_pairs(W: Tensor, t: Thresholds = DEFAULT) -> Tensor:
    """(..., m, n) -> int (...)"""
    return antipodal_pairs(W, t).sum((-2, -1))


PHASES = ("not_learned", "superposition", "dedicated")


def phase_m1(W: Tensor, t: Thresholds = DEFAULT) -> np.ndarray:
    """The n = 2, m = 1 phase class of each instance. (..., 1, 2) -> str (...)

    "dedicated" when only feature 1 (the extra feature) is represented, "superposition" when
    both are, "not_learned" otherwise.
    """
    if W.shape[-2:] != (1, 2):
        raise ValueError(f"phase_m1 needs W of shape (..., 1, 2), got {tuple(W.shape)}")
    rep = represented(W, t).cpu().numpy()  # (..., 2)
    out = np.full(rep.shape[:-1], PHASES[0], dtype=object)
    out[rep[..., 1] & rep[..., 0]] = PHASES[1]
    out[rep[..., 1] & ~rep[..., 0]] = PHASES[2]
    return out


# ---------------------------------------------------------------------------------------------
# k-gons (m = 2)


def hull_vertices(P: np.ndarray, tol: float) -> list[int]:
    """Robust convex-hull vertices of 2-d points, counter-clockwise. P: (k, 2) -> indices

    The exact hull (Andrew's monotone chain, collinear points dropped), then while the least
    prominent vertex is closer than `tol` to the line through its two hull neighbours, drop
    it. Two points closer than `tol` count as one.
    """
    k = len(P)
    if k <= 1:
        return list(range(k))
    order = sorted(range(k), key=lambda i: (P[i, 0], P[i, 1]))

    def cross(o: int, a: int, c: int) -> float:
        return float((P[a, 0] - P[o, 0]) * (P[c, 1] - P[o, 1])
                     - (P[a, 1] - P[o, 1]) * (P[c, 0] - P[o, 0]))

    lower: list[int] = []
    for i in order:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], i) <= 0:
            lower.pop()
        lower.append(i)
    upper: list[int] = []
    for i in reversed(order):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], i) <= 0:
            upper.pop()
        upper.append(i)
    hull = lower[:-1] + upper[:-1]
    if len(hull) < 2:  # all points identical
        hull = [order[0]]

    while len(hull) >= 3:
        prominence = [
            _distance_to_line(P[hull[j]], P[hull[j - 1]], P[hull[(j + 1) % len(hull)]])
            for j in range(len(hull))
        ]
        j = int(np.argmin(prominence))
        if prominence[j] >= tol:
            break
        hull.pop(j)
    if len(hull) == 2 and np.linalg.norm(P[hull[0]] - P[hull[1]]) < tol:
        hull = hull[:1]
    return hull


def _distance_to_line(p: np.ndarray, a: np.ndarray, c: np.ndarray) -> float:
    d = c - a
    length = float(np.hypot(d[0], d[1]))
    if length == 0.0:
        return float(np.hypot(*(p - a)))
    return abs(float(d[0] * (p[1] - a[1]) - d[1] * (p[0] - a[0]))) / length


@dataclass
class KGon:
    """The polygon of each instance; every field has the batch shape (...) of W."""

    k: np.ndarray  # int: number of robust hull vertices of the represented columns
    # (k = -1, label and vertices "diverged": W holds nan or inf)
    label: np.ndarray  # str: k plus the bias marks of the off-polygon features, e.g. "5+", "3ooo"
    vertices: np.ndarray  # str: the vertex features counter-clockwise, e.g. "0 3 5 1" ("-": none)
    angle_dev: np.ndarray  # float: max |gap - 2pi/k| / (2pi/k) (nan for k < 3)
    norm_spread: np.ndarray  # float: (max - min) / max of the vertex norms (nan for k = 0)


def kgon(W: Tensor, b: Tensor | None = None, t: Thresholds = DEFAULT) -> KGon:
    """The k-gon of every instance. W: (..., 2, n), b: (..., n) or None -> KGon of shape (...)"""
    if W.shape[-2] != 2:
        raise ValueError(f"k-gons need m = 2 hidden dimensions, got W of shape {tuple(W.shape)}")
    batch = W.shape[:-2]
    Wn = W.detach().cpu().double().reshape(-1, 2, W.shape[-1]).numpy()  # (B, 2, n)
    rep = represented(W, t).cpu().reshape(-1, W.shape[-1]).numpy()  # (B, n)
    bn = None if b is None else b.detach().cpu().double().reshape(-1, W.shape[-1]).numpy()
    size = Wn.shape[0]
    k = np.zeros(size, dtype=np.int64)
    label = np.empty(size, dtype=object)
    vertices = np.empty(size, dtype=object)
    angle_dev = np.full(size, np.nan)
    norm_spread = np.full(size, np.nan)
    for s in range(size):
        points = Wn[s].T  # (n, 2)
        norms = np.hypot(points[:, 0], points[:, 1])
        if not np.all(np.isfinite(points)):
            label[s], vertices[s], k[s] = "diverged", "diverged", -1
            continue
        idx = np.flatnonzero(rep[s])
        verts = [int(idx[j]) for j in hull_vertices(points[idx], t.hull_tol * norms.max())]
        k[s] = len(verts)
        vertices[s] = " ".join(map(str, verts)) or "-"
        label[s] = f"{len(verts)}" + ("" if bn is None else _off_signs(bn[s], verts))
        if verts:
            vn = norms[verts]
            norm_spread[s] = (vn.max() - vn.min()) / vn.max()
        if len(verts) >= 3:
            angles = np.sort(np.arctan2(points[verts, 1], points[verts, 0]))
            gaps = np.diff(np.append(angles, angles[0] + 2 * math.pi))
            ideal = 2 * math.pi / len(verts)
            angle_dev[s] = np.abs(gaps - ideal).max() / ideal
    return KGon(*(a.reshape(batch) for a in (k, label, vertices, angle_dev, norm_spread)))


# The mark of an off-polygon feature by the sign of its bias, in the order a label writes them.
BIAS_MARKS = (("+", np.greater), ("-", np.less), ("o", np.equal))
# The notation in words, for figure captions and help texts.
LABEL_NOTATION = ('k-gon labels (Chen et al.\'s notation) give the vertex count, then one mark '
                  'per feature off the polygon from its bias: "+" positive, "-" negative, "o" '
                  'exactly zero; e.g. "5+", "4+-", "3ooo" (a triangle with three zero-bias '
                  'features off it)')


def bias_mark(bias: float) -> str:
    """"+", "-" or "o": how a label marks an off-polygon feature with this bias ("" for NaN)."""
    return next((mark for mark, test in BIAS_MARKS if test(bias, 0.0)), "")


def _off_signs(b: np.ndarray, verts: list[int]) -> str:
    """The marks of the features not among `verts`: "+" per positive bias, then "-" per
    negative, then "o" per bias exactly 0. b: (n,)"""
    off = b[np.setdiff1d(np.arange(len(b)), verts)]
    return "".join(mark * int(test(off, 0.0).sum()) for mark, test in BIAS_MARKS)


# ---------------------------------------------------------------------------------------------
# The tidy table


GEOMETRY_COLUMNS = [
    "instance", "step", "dims_per_feature", "n_represented", "n_superposed", "n_antipodal_pairs",
    "max_norm", "mean_dimensionality", "mean_sqrt_interference", "k_gon", "k_gon_label",
    "polygon", "angle_dev", "norm_spread", "phase",
]


def geometry_table(W: Tensor, b: Tensor | None, steps: Sequence[int], instances: Sequence[int],
                   t: Thresholds = DEFAULT) -> pd.DataFrame:
    """One row per (instance, step). W: (S, I, m, n), b: (S, I, n) or None (no bias).

    Columns (GEOMETRY_COLUMNS): dims_per_feature D*; n_represented, n_superposed,
    n_antipodal_pairs; max_norm; mean_dimensionality (mean D_i) and mean_sqrt_interference
    over the represented features; for m = 2 k_gon, k_gon_label, polygon (vertex features,
    counter-clockwise), angle_dev, norm_spread; for m = 1, n = 2 the phase class. Columns that
    do not apply to the run's (m, n) are empty. Floats are rounded to 6 significant digits
    (so the CSV round-trips exactly).
    """
    S, I, m, n = W.shape
    if len(steps) != S or len(instances) != I:
        raise ValueError(f"W has {S} steps x {I} instances, got {len(steps)} steps and "
                         f"{len(instances)} instance ids")
    W = W.detach().double()
    rep = represented(W, t)  # (S, I, n)
    count = rep.sum(-1).clamp_min(1)
    dim = feature_dimensionality(W)
    cols: dict[str, np.ndarray] = {
        "instance": np.tile(np.asarray(instances, dtype=np.int64), S),
        "step": np.repeat(np.asarray(steps, dtype=np.int64), I),
        "dims_per_feature": dims_per_feature(W),
        "n_represented": rep.sum(-1),
        "n_superposed": superposed(W, t).sum(-1),
        "n_antipodal_pairs": n_antipodal_pairs(W, t),
        "max_norm": feature_norms(W).max(-1).values,
        "mean_dimensionality": (dim * rep).sum(-1) / count,
        "mean_sqrt_interference": (interference(W).sqrt() * rep).sum(-1) / count,
    }
    cols = {k: v.reshape(-1).cpu().numpy() if isinstance(v, Tensor) else v for k, v in cols.items()}
    empty = np.full(S * I, "", dtype=object)
    nan = np.full(S * I, np.nan)
    if m == 2:
        poly = kgon(W, b, t)
        k = pd.Series(poly.k.reshape(-1), dtype="Int64")
        cols.update(k_gon=k.mask(k < 0).to_numpy(), k_gon_label=poly.label.reshape(-1),
                    polygon=poly.vertices.reshape(-1), angle_dev=poly.angle_dev.reshape(-1),
                    norm_spread=poly.norm_spread.reshape(-1))
    else:
        cols.update(k_gon=pd.array([pd.NA] * (S * I), dtype="Int64"), k_gon_label=empty,
                    polygon=empty, angle_dev=nan, norm_spread=nan)
    cols["phase"] = phase_m1(W, t).reshape(-1) if (m, n) == (1, 2) else empty
    table = pd.DataFrame(cols)[GEOMETRY_COLUMNS]
    for name in ("dims_per_feature", "max_norm", "mean_dimensionality", "mean_sqrt_interference",
                 "angle_dev", "norm_spread"):
        table[name] = round_sig(table[name].to_numpy(dtype=float))
    return table.sort_values(["instance", "step"], kind="stable").reset_index(drop=True)


def round_sig(x: np.ndarray, digits: int = 6) -> np.ndarray:
    """Round to `digits` significant digits (inf and nan pass through)."""
    x = np.asarray(x, dtype=float)
    out = x.copy()
    ok = np.isfinite(x) & (x != 0)
    mag = np.floor(np.log10(np.abs(x[ok])))
    scale = 10.0 ** (digits - 1 - mag)
    out[ok] = np.round(x[ok] * scale) / scale
    return out
