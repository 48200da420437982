"""devtms.geometry against hand-built weights whose geometry is known in closed form."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from devtms import geometry as g


def polygon(k: int, radius: float = 1.0, rotation: float = 0.3, extra: int = 0) -> torch.Tensor:
    """A regular k-gon's vertices as the first k columns of W: (2, k + extra), extra columns 0."""
    angles = torch.arange(k, dtype=torch.float64) * (2 * math.pi / k) + rotation
    W = torch.zeros(2, k + extra, dtype=torch.float64)
    W[0, :k], W[1, :k] = radius * torch.cos(angles), radius * torch.sin(angles)
    return W


def axes(m: int, signs_per_axis: list[int]) -> torch.Tensor:
    """Columns +-e_d: signs_per_axis[d] = 2 gives an antipodal pair on axis d, 1 a lone feature."""
    cols = []
    for d, count in enumerate(signs_per_axis):
        for sign in (1.0, -1.0)[:count]:
            col = torch.zeros(m, dtype=torch.float64)
            col[d] = sign
            cols.append(col)
    return torch.stack(cols, dim=1)


# ---------------------------------------------------------------------------------------------
# Continuous measures


def test_dims_per_feature_of_known_matrices():
    assert g.dims_per_feature(axes(2, [1, 1])).item() == pytest.approx(1.0)  # identity
    assert g.dims_per_feature(2 * axes(2, [1, 1])).item() == pytest.approx(0.25)
    assert g.dims_per_feature(polygon(5)).item() == pytest.approx(2 / 5)  # 5 unit features in 2-d
    assert g.dims_per_feature(axes(3, [2, 2, 2])).item() == pytest.approx(0.5)  # 3 antipodal pairs
    # m / ||W||_F^2 with m = 3, ||W||_F^2 = 1 + 4 + 9 + 0 = 14
    W = torch.tensor([[1.0, 0, 0, 0], [0, 2.0, 0, 0], [0, 0, 3.0, 0]])
    assert g.dims_per_feature(W).item() == pytest.approx(3 / 14)


@pytest.mark.parametrize("k", [3, 4, 5, 6, 7, 8])
def test_feature_dimensionality_of_a_regular_k_gon_is_2_over_k(k):
    # sum_j cos^2(theta_ij) = k / 2 for a regular k-gon (k >= 3): D_i = 1 / (k / 2)
    W = polygon(k, radius=1.7)
    assert torch.allclose(g.feature_dimensionality(W), torch.full((k,), 2 / k, dtype=W.dtype))
    assert torch.allclose(g.interference(W), torch.full((k,), 1.7**2 * (k / 2 - 1), dtype=W.dtype))


def test_feature_dimensionality_of_known_matrices():
    W = torch.tensor([[1.0, -1.0, 0.0, 0.0], [0.0, 0.0, 2.0, 0.0]])  # pair, dedicated, zero column
    assert g.feature_dimensionality(W).tolist() == pytest.approx([0.5, 0.5, 1.0, 0.0])
    assert g.interference(W).tolist() == pytest.approx([1.0, 1.0, 0.0, 0.0])
    assert g.feature_norms(W).tolist() == pytest.approx([1.0, 1.0, 2.0, 0.0])


def test_feature_dimensionality_matches_a_loop_over_the_definition():
    W = torch.randn(3, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = []
    for i in range(7):
        wi = W[:, i]
        hat = wi / wi.norm()
        expected.append(float(wi.norm() ** 2 / sum((hat @ W[:, j]) ** 2 for j in range(7))))
    assert g.feature_dimensionality(W).tolist() == pytest.approx(expected)


def test_functions_are_batched_over_leading_axes():
    Ws = torch.stack([torch.stack([polygon(k, extra=8 - k) for k in (3, 5, 8)])] * 2)  # (2, 3, 2, 8)
    assert g.dims_per_feature(Ws).shape == (2, 3)
    assert g.feature_dimensionality(Ws).shape == (2, 3, 8)
    assert g.kgon(Ws).k.tolist() == [[3, 5, 8], [3, 5, 8]]
    assert g.dims_per_feature(Ws)[1].tolist() == pytest.approx([2 / 3, 2 / 5, 2 / 8])


# ---------------------------------------------------------------------------------------------
# k-gons


@pytest.mark.parametrize("k", [3, 4, 5, 6, 7, 8])
def test_regular_k_gon_is_found_exactly(k):
    poly = g.kgon(polygon(k, radius=1.2))
    assert poly.k.item() == k
    assert poly.angle_dev.item() == pytest.approx(0.0, abs=1e-9)
    assert poly.norm_spread.item() == pytest.approx(0.0, abs=1e-9)
    assert poly.label.item() == str(k)  # no bias: no signs
    assert sorted(map(int, poly.vertices.item().split())) == list(range(k))


@pytest.mark.parametrize("k", [3, 4, 5, 6, 7, 8])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_regular_k_gon_with_small_noise(k, seed):
    gen = torch.Generator().manual_seed(seed)
    W = polygon(k) + 0.02 * torch.randn(2, k, generator=gen, dtype=torch.float64)
    poly = g.kgon(W)
    assert poly.k.item() == k
    assert poly.angle_dev.item() < 0.15  # noise of 0.02 moves a vertex by ~1 degree
    assert poly.norm_spread.item() < 0.1


@pytest.mark.parametrize("k", [3, 4, 5, 6, 7, 8])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_k_gon_with_an_extra_small_feature_and_its_bias_sign(k, sign):
    W = polygon(k, extra=1)
    W[:, k] = torch.tensor([0.03, -0.02])  # an unrepresented feature, off the polygon
    b = torch.full((k + 1,), -0.3, dtype=torch.float64)
    b[k] = 0.1 * sign
    poly = g.kgon(W, b)
    assert poly.k.item() == k
    assert g.represented(W).sum().item() == k
    assert poly.label.item() == f"{k}{'+' if sign > 0 else '-'}"


def test_five_plus_label_and_two_off_polygon_features():
    W = polygon(5, extra=1)
    b = torch.tensor([-0.3, -0.3, -0.3, -0.3, -0.3, 0.08], dtype=torch.float64)
    assert g.kgon(W, b).label.item() == "5+"
    W4 = polygon(4, extra=2)
    assert g.kgon(W4, torch.tensor([-0.2, -0.2, -0.2, -0.2, 0.1, -0.1])).label.item() == "4+-"
    assert g.kgon(W4, torch.tensor([-0.2, -0.2, -0.2, -0.2, 0.1, 0.1])).label.item() == "4++"


def test_zero_bias_features_off_the_polygon_are_marked_o_never_a_digit():
    """hardshrink and softshrink end like this: a triangle, three features at W_i = 0 whose
    bias never moved from 0."""
    W = polygon(3, extra=3)
    b = torch.tensor([-0.2, -0.2, -0.2, 0.0, 0.0, 0.0], dtype=torch.float64)
    poly = g.kgon(W, b)
    assert poly.k.item() == 3 and sorted(poly.vertices.item().split()) == ["0", "1", "2"]
    assert poly.label.item() == "3ooo"
    # every mark in its place: +, then -, then o, whatever the features' order
    b = torch.tensor([-0.2, -0.2, -0.2, 0.0, -0.1, 0.3], dtype=torch.float64)
    assert g.kgon(W, b).label.item() == "3+-o"
    assert g.kgon(W, -0.0 * b).label.item() == "3ooo"  # -0.0 is a zero bias too


@pytest.mark.parametrize("k", [3, 4, 5, 6])
def test_a_label_is_its_vertex_count_then_only_non_digit_marks(k):
    W = polygon(k, extra=6 - k)
    for b in (torch.zeros(6), torch.full((6,), 0.1), torch.full((6,), -0.1)):
        label = g.kgon(W, b).label.item()
        assert label[:1] == str(k) and not any(ch.isdigit() for ch in label[1:])
        assert len(label) == 1 + (6 - k)


def test_k_gon_labels_read_back_as_text(tmp_path):
    """A label "6" or a one-vertex polygon "2" would otherwise load as an int column."""
    from devtms.store import read_csv, write_csv_atomic

    W = torch.stack([torch.stack([polygon(6), polygon(3, extra=3)])])  # (S=1, I=2, 2, 6)
    b = torch.zeros(1, 2, 6)
    single = torch.zeros(1, 1, 2, 6)
    single[0, 0, 0, 2] = 1.0  # one represented feature: a 1-gon whose polygon is "2"
    for weights, bias, labels in ((W, b, ["6", "3ooo"]), (W, None, ["6", "3"]),
                                  (single, None, ["1"])):
        table = g.geometry_table(weights, bias, steps=[0], instances=range(weights.shape[1]))
        write_csv_atomic(tmp_path / "geometry.csv", table)
        back = read_csv(tmp_path / "geometry.csv", "geometry", "devtms analyze")
        assert back["k_gon_label"].tolist() == labels
        assert all(pd.api.types.is_string_dtype(back[c]) for c in ("k_gon_label", "polygon"))
    assert back["polygon"].tolist() == ["2"]


def test_represented_feature_inside_the_polygon_is_off_it():
    W = polygon(6, extra=1)
    W[:, 6] = torch.tensor([0.6, 0.0])  # inside: the hexagon's inradius is cos(30 deg) = 0.87
    poly = g.kgon(W, torch.tensor([-0.3] * 6 + [0.2]))
    assert g.represented(W).sum().item() == 7
    assert poly.k.item() == 6
    assert poly.label.item() == "6+"


def test_near_collinear_and_near_duplicate_vertices_are_merged():
    square = polygon(4, rotation=0.0)  # vertices (1,0), (0,1), (-1,0), (0,-1)
    edge_mid = torch.tensor([[0.5 + 0.01], [0.5 + 0.01]], dtype=torch.float64)  # 0.014 outside
    duplicate = square[:, :1] + 0.005
    W = torch.cat([square, edge_mid, duplicate], dim=1)
    assert g.kgon(W).k.item() == 4
    # the same point pushed well outside the edge is a genuine fifth vertex
    W[:, 4] = torch.tensor([0.8, 0.8], dtype=torch.float64)
    assert g.kgon(W).k.item() == 5


def test_degenerate_polygons():
    assert g.kgon(axes(2, [2])).k.item() == 2  # an antipodal pair: a 2-gon
    assert g.kgon(torch.zeros(2, 4)).k.item() == 0
    assert g.kgon(torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])).k.item() == 1
    assert g.kgon(torch.full((2, 3), float("nan"))).label.item() == "diverged"


# ---------------------------------------------------------------------------------------------
# Antipodal pairs


@pytest.mark.parametrize(("m", "layout", "pairs"), [
    (2, [2], 1),                 # W = [e1, -e1]
    (2, [2, 2], 2),              # a square: two antipodal pairs
    (3, [2, 2, 2], 3),           # +-e1, +-e2, +-e3
    (3, [2, 1, 1], 1),           # one pair and two dedicated features
    (5, [2, 2, 1, 1, 0], 2),     # two pairs and two dedicated features in 5-d
    (5, [2, 2, 2, 2, 2], 5),
])
def test_antipodal_pairs_of_known_layouts(m, layout, pairs):
    W = axes(m, layout)
    assert g.n_antipodal_pairs(W).item() == pairs


def test_antipodal_pair_tolerances():
    # slightly rotated and rescaled partners still pair; a short partner or a hexagon does not
    W = axes(3, [2, 1, 1])
    W[:, 1] = torch.tensor([-0.95, 0.15, 0.0], dtype=torch.float64)  # 171 deg away, norm 0.96
    assert g.n_antipodal_pairs(W).item() == 1
    W[:, 1] = torch.tensor([-0.6, 0.0, 0.0], dtype=torch.float64)  # norm ratio 0.6
    assert g.n_antipodal_pairs(W).item() == 0
    assert g.n_antipodal_pairs(polygon(6)).item() == 0  # opposite vertices but D_i = 1/3
    small = axes(5, [2, 1, 1, 1, 0])
    small = torch.cat([small, torch.full((5, 1), 0.05, dtype=torch.float64)], dim=1)
    assert g.n_antipodal_pairs(small).item() == 1  # a tiny extra feature changes nothing
    pairs = g.antipodal_pairs(small)
    assert pairs[0, 1].item() and pairs.sum().item() == 1


# ---------------------------------------------------------------------------------------------
# The m = 1, n = 2 phase diagram


def test_the_three_phase_classes_for_one_hidden_dimension():
    W = torch.tensor([
        [[1.0, 0.0]],    # the extra feature is not learned
        [[0.9, -0.9]],   # both, antipodal: superposition
        [[0.0, 1.1]],    # the extra feature alone gets the dimension
        [[1.0, 0.02]],   # a trace of feature 1: still not learned
    ])  # (4, 1, 2)
    assert g.phase_m1(W).tolist() == ["not_learned", "superposition", "dedicated", "not_learned"]
    assert g.n_antipodal_pairs(W[1]).item() == 1


# ---------------------------------------------------------------------------------------------
# The tidy table


def test_geometry_table_rows_and_columns():
    W = torch.stack([torch.stack([polygon(4, extra=2), polygon(5, extra=1)]),
                     torch.stack([polygon(5, extra=1), polygon(6)])])  # (S=2, I=2, 2, 6)
    b = torch.full((2, 2, 6), 0.1)
    table = g.geometry_table(W, b, steps=[0, 10], instances=[7, 8])
    assert list(table.columns) == g.GEOMETRY_COLUMNS
    assert list(zip(table["instance"], table["step"], strict=True)) == [(7, 0), (7, 10), (8, 0),
                                                                         (8, 10)]
    assert table["k_gon"].tolist() == [4, 5, 5, 6]
    assert table["k_gon_label"].tolist() == ["4++", "5+", "5+", "6"]
    assert table["n_antipodal_pairs"].tolist() == [2, 0, 0, 0]
    assert table["dims_per_feature"].tolist() == pytest.approx([0.5, 0.4, 0.4, 1 / 3], rel=1e-5)
    assert table["mean_dimensionality"].tolist() == pytest.approx([0.5, 0.4, 0.4, 1 / 3], rel=1e-5)
    assert (table["phase"] == "").all()


def test_round_sig():
    assert g.round_sig(np.array([0.123456789, 123456.789, -1.0e-7 / 3, np.inf, 0.0])).tolist() == [
        0.123457, 123457.0, pytest.approx(-3.33333e-8, rel=1e-9), np.inf, 0.0]
