"""The report's figures on a run that sweeps sparsity, and on two runs compared: every condition
has a style of its own, comparisons go condition by condition, and every axis has at least two
labelled ticks. Checked on the built matplotlib figures, not by eye."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from devtms.report.figures.axes import log_ticks, loss_axis
from devtms.report.figures.compare import runs_final_dotplot
from devtms.report.figures.grids import llc_grid, loss_grid
from devtms.report.figures.style import MARKERS, condition_styles, style
from devtms.report.figures.trajectories import llc_vs_loss
from devtms.report.load import load_run
from devtms.report.tables import (
    compared_finals,
    compared_llcs,
    compared_losses,
    compared_panels,
    loss_curves,
    shared_conditions,
    trajectories,
)

from .conftest import STUDY, after_stages, run_cli, trained_run

# 2 activations x 2 sparsities x 2 seeds; the second run has one of those sparsities only
SWEEP = STUDY.but(name="sweep", data={"kind": "sparse-uniform", "sparsity": [0.5, 0.9],
                                      "n_samples": 100})
ONE = SWEEP.but(name="one", data={"sparsity": [0.9]}, train={"lr": 0.05})


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> list[Path]:
    out = []
    for config in (SWEEP, ONE):
        root = tmp_path_factory.mktemp(config.raw["name"])
        out.append(after_stages(trained_run(root, config), root / "studied", "llc", "analyze"))
    return out


def labelled_ticks(ax: Axes, which: str) -> list[str]:
    """The non-empty tick labels of one axis inside its view (the figure drawn first)."""
    axis = ax.xaxis if which == "x" else ax.yaxis
    lo, hi = sorted(axis.get_view_interval())
    labels = []
    for tick in [*axis.get_major_ticks(), *axis.get_minor_ticks()]:
        text = tick.label1.get_text() if tick.label1.get_visible() else ""
        if text and lo <= tick.get_loc() <= hi:
            labels.append(text)
    return labels


def assert_two_labels_on_every_axis(fig: Figure) -> int:
    """Every axis showing tick labels shows at least two. -> how many axes were checked"""
    FigureCanvasAgg(fig).draw()
    checked = 0
    for ax in fig.axes:
        if not ax.axison:
            continue
        for which in ("x", "y"):
            labels = labelled_ticks(ax, which)
            if labels:  # shared axes hide their labels on inner panels
                assert len(labels) >= 2, f"{ax.get_title()!r} {which}: {labels}"
                checked += 1
    return checked


# ---------------------------------------------------------------------------------------------
# Ticks


@pytest.mark.parametrize(("lo", "hi"), [(0.031, 0.038), (0.021, 0.048), (0.02, 0.3),
                                        (1e-3, 1.0), (5e-6, 3e-5), (0.0311, 0.0312), (2, 2000)])
def test_a_log_axis_over_any_range_has_two_labelled_ticks_inside_it(lo, hi):
    ticks = log_ticks(lo, hi)
    assert len(ticks) >= 2 and all(lo <= t <= hi for t in ticks)
    fig = Figure()
    ax = fig.add_subplot()
    ax.plot([0, 1], [lo, hi])
    loss_axis(ax, limits=(lo, hi))
    FigureCanvasAgg(fig).draw()
    labels = labelled_ticks(ax, "y")
    assert len(labels) >= 2 and len(set(labels)) == len(labels), labels


def test_log_ticks_prefer_powers_of_ten_then_two_and_five():
    assert log_ticks(1e-3, 1.0) == [1e-3, 1e-2, 0.1, 1.0]
    assert log_ticks(0.02, 0.3) == [0.02, 0.05, 0.1, 0.2]
    assert log_ticks(0.021, 0.048) == [0.03, 0.04]
    assert log_ticks(0.0, 1.0) == []


def test_every_figure_of_a_sweep_has_two_labelled_ticks_per_axis(runs):
    data = load_run(runs[0])
    figures = [loss_grid(loss_curves(data), data.panels, data.max_step, "loss"),
               llc_vs_loss(trajectories(data), data.panels, "llc vs loss")]
    assert sum(assert_two_labels_on_every_axis(f) for f in figures) >= 4


# ---------------------------------------------------------------------------------------------
# Conditions distinguishable


def test_every_condition_of_a_sweep_has_its_own_colour_and_marker(runs):
    data = load_run(runs[0])
    assert [p.title for p in data.panels] == ["relu S=0.5", "relu S=0.9", "tanh S=0.5",
                                              "tanh S=0.9"]
    styles = condition_styles(data.panels)
    pairs = {(styles[p.key].color, styles[p.key].marker) for p in data.panels}
    assert len(pairs) == len(data.panels)
    # one marker per sparsity, the same for both activations; one colour per activation
    assert [styles[p.key].marker for p in data.panels] == [MARKERS[0], MARKERS[1]] * 2
    assert len({styles[p.key].color for p in data.panels}) == 2


def test_llc_vs_loss_draws_each_condition_in_its_own_style(runs):
    data = load_run(runs[0])
    fig = llc_vs_loss(trajectories(data), data.panels, "llc vs loss")
    legend = fig.axes[1].get_legend()
    entries = {t.get_text(): h for t, h in zip(legend.get_texts(), legend.legend_handles,
                                                strict=True)}
    drawn = {(entries[p.title].get_color(), entries[p.title].get_marker(),
              str(entries[p.title].get_linestyle())) for p in data.panels}
    assert len(drawn) == len(data.panels)


def test_a_run_without_a_sweep_keeps_each_activations_own_marker(runs):
    data = load_run(runs[1])
    styles = condition_styles(data.panels)
    assert [p.title for p in data.panels] == ["relu", "tanh"]
    assert [styles[p.key] for p in data.panels] == [style("relu"), style("tanh")]


# ---------------------------------------------------------------------------------------------
# Comparing runs


def test_a_comparison_matches_conditions_across_runs_and_keeps_sparsities_apart(runs):
    data = [load_run(r) for r in runs]
    shared = shared_conditions(data)
    panels = compared_panels(shared)
    assert [p.title for p in panels] == ["relu S=0.5", "relu S=0.9", "tanh S=0.5", "tanh S=0.9"]
    assert [p.seeds for p in panels] == [[0], [0, 1], [0], [0, 1]]  # the runs that have each
    losses = compared_losses(data, shared)
    assert set(losses["condition"]) == {p.key for p in panels}
    # the oracle: run 1's median loss at its last step, straight from train_log.csv
    log = data[1].train_log
    last = log[log["step"] == log["step"].max()].merge(data[1].instances, on="instance")
    want = last.groupby("activation")["loss"].median()
    got = losses[(losses["seed"] == 1) & (losses["step"] == log["step"].max())]
    assert got.set_index("condition")["loss"].to_dict() == pytest.approx(
        {f"{a} S=0.9": v for a, v in want.items()})
    llc = compared_llcs(data, shared)
    assert llc is not None and set(llc["seed"]) == {0, 1}
    finals = compared_finals(data, shared)
    assert len(finals) == 8 + 4
    fig = runs_final_dotplot(finals, panels, [d.name for d in data], "finals")
    FigureCanvasAgg(fig).draw()
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == [p.title for p in panels]
    # each instance sits on its condition's row, run 0 a quarter above it, run 1 below
    points = np.concatenate([c.get_offsets() for c in fig.axes[0].collections])
    assert set(np.round(points[:, 1], 2)) == {-0.25, 0.75, 1.75, 2.75, 1.25, 3.25}
    assert len({tuple(p) for p in np.round(points, 9)}) == 12
    grid = llc_grid(llc, panels, max(d.max_step for d in data), "llc",
                    series_names={0: "sweep", 1: "one"})
    assert [ax.get_title(loc="left") for ax in grid.axes[:4]] == [p.title for p in panels]
    assert assert_two_labels_on_every_axis(fig) >= 3 and assert_two_labels_on_every_axis(grid)


def test_the_report_of_two_runs_overlays_loss_and_llc_per_condition(runs, tmp_path):
    out = tmp_path / "compare.html"
    result = run_cli("report", *runs, "--out", out)
    assert result.returncode == 0, result.stderr
    figures = {p.stem for p in (tmp_path / "compare_figures").glob("*.png")}
    assert {"compare_finals", "compare_loss_grid", "compare_llc_grid"} <= figures


def test_a_pdf_embeds_one_truetype_subset_and_no_type3_font():
    """Journals refuse Type 3 fonts; a second subset of the same font (glyphs past the first 256
    codes, or ligatures) costs a second fontTools pass. Text with ligature pairs (ff, fi), a
    unicode minus, an arrow and superscripts embeds DejaVu Sans once, as TrueType."""
    from devtms.report.figures.render import figure_bytes
    from devtms.report.figures.style import styled

    @styled
    def build() -> Figure:
        fig = Figure(figsize=(3, 2))
        ax = fig.add_subplot()
        ax.plot([-1, 1], [-2, 3])
        ax.set_title("off the final fit: 4 → 5, 10³, −0.5")
        ax.legend(["flagged"])
        return fig

    pdf = figure_bytes(build(), "pdf", creator="test")
    assert b"/Type3" not in pdf
    assert pdf.count(b"/FontFile2") == 1  # one embedded TrueType program


def _ink_box(fig: Figure) -> tuple[int, int, int, int]:
    """The bounding box (rows, columns) of the non-white pixels of a drawn figure."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    rgb = np.asarray(canvas.buffer_rgba())[..., :3]
    rows, cols = np.nonzero((rgb < 200).any(axis=-1))
    return rows.min(), rows.max(), cols.min(), cols.max()


@pytest.mark.parametrize("text", ["3", "11", "−", "o"])
def test_a_glyph_marker_draws_its_text_at_the_text_size_and_place(text):
    """Feature numbers and bias marks are markers shaped like their text (one artist for many):
    each must cover the same pixels as the text drawn centred there, within a pixel."""
    from devtms.report.figures.geometry import Glyph, draw_glyphs

    def one(draw) -> tuple[int, int, int, int]:
        fig = Figure(figsize=(1, 1), dpi=200)
        ax = fig.add_axes((0, 0, 1, 1))
        ax.set_axis_off()
        ax.set_xlim(-1, 1)
        ax.set_ylim(-1, 1)
        draw(ax)
        return _ink_box(fig)

    # the text's ink centred on (0, 0): centre its box, as the marker centres its path
    text_box = one(lambda ax: ax.text(0, 0, text, fontsize=14, color="black", ha="center",
                                      va="center"))
    marker_box = one(lambda ax: draw_glyphs(ax, [Glyph(text, 0.0, 0.0, "black", 14, 1)]))
    text_h, text_w = text_box[1] - text_box[0], text_box[3] - text_box[2]
    marker_h, marker_w = marker_box[1] - marker_box[0], marker_box[3] - marker_box[2]
    assert abs(marker_h - text_h) <= 1 and abs(marker_w - text_w) <= 1
    # in the same place across: the text centres its advance box and Agg snaps a marker to a
    # pixel centre, so a pixel or two apart at this size (under one at the report's 7 pt)
    assert abs((marker_box[2] + marker_box[3]) / 2 - (text_box[2] + text_box[3]) / 2) <= 3


def test_a_row_of_snapshots_draws_each_as_it_looks_on_axes_of_its_own():
    """A condition figure draws a seed's k-gon snapshots on one axes (one axes per snapshot
    was half its drawing time): each must look as on its own axes of the same size."""
    from devtms.report.figures.geometry import (
        Snapshot,
        kgon_axes,
        kgon_row_axes,
        snapshot_radius,
    )

    angles = np.linspace(0, 2 * np.pi, 6, endpoint=False)
    pentagon = np.stack([np.cos(angles), np.sin(angles)])
    pentagon[:, 5] *= 0.2  # feature 5 inside the hull
    snaps = [Snapshot(0, 0.5 * pentagon, np.full(6, -0.1), "init"),
             Snapshot(10, pentagon, np.array([-0.1] * 5 + [0.3]), "end")]
    radius = snapshot_radius(snaps)
    size, gap, dpi = 1.5, 0.5, 100
    pitch = (size + gap) * 2 * radius / size  # data units between snapshot centres

    row = Figure(figsize=(2 * size + gap, size), dpi=dpi)
    labels = kgon_row_axes(row.add_axes((0, 0, 1, 1)), snaps, "C0", radius, pitch)
    row_canvas = FigureCanvasAgg(row)
    row_canvas.draw()
    row_px = np.asarray(row_canvas.buffer_rgba())[..., :3].astype(int)
    assert len(row.axes) == 1

    for c, snap in enumerate(snaps):
        alone = Figure(figsize=(size, size), dpi=dpi)
        assert kgon_axes(alone.add_axes((0, 0, 1, 1)), snap.W, snap.b, "C0", radius) == labels[c]
        canvas = FigureCanvasAgg(alone)
        canvas.draw()
        alone_px = np.asarray(canvas.buffer_rgba())[..., :3].astype(int)
        x0 = round(c * (size + gap) * dpi)
        part = row_px[:, x0 : x0 + alone_px.shape[1]]
        differs = (np.abs(part - alone_px).max(axis=-1) > 60).mean()
        assert differs < 0.01, f"snapshot {c}: {differs:.1%} of its pixels differ"


@pytest.mark.parametrize("m", [2, 3])
def test_every_text_of_a_condition_figure_lies_inside_it(m):
    """Snapshot rows end at the figure's bottom edge: for m > 2 the norm bars' tick labels
    under the last row were cut off. Every visible text must lie inside the figure."""
    import pandas as pd
    from matplotlib.text import Text

    from devtms.report.figures.condition import SeedTrack, condition_figure
    from devtms.report.figures.geometry import Snapshot

    rng = np.random.default_rng(0)
    steps = np.array([0, 10, 100, 1000])
    events = pd.DataFrame(columns=["kind", "step", "size", "description"])
    tracks = [SeedTrack(seed, seed, pd.DataFrame({"step": steps, "loss": [0.05, 0.04, 0.02, 0.01]}),
                        None, pd.DataFrame({"step": steps, "k_gon": np.nan, "k_gon_label": "",
                                            "dims_per_feature": [1, 0.8, 0.6, 0.5]}),
                        events, [Snapshot(int(s), rng.normal(size=(m, 6)), rng.normal(size=6),
                                          "caption") for s in steps])
              for seed in range(2)]
    fig = condition_figure("test", "relu", tracks, 1000, m)
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    box = fig.bbox
    for text in fig.findobj(Text):
        if text.get_visible() and text.get_text():
            extent = text.get_window_extent(renderer)
            assert (extent.x0 >= box.x0 - 1 and extent.y0 >= box.y0 - 1
                    and extent.x1 <= box.x1 + 1 and extent.y1 <= box.y1 + 1), (
                f"{text.get_text()!r} at {extent.bounds} lies outside the figure")


@pytest.mark.parametrize("m", [2, 3])
def test_snapshot_captions_of_a_full_row_do_not_run_into_each_other(m):
    """Seven snapshots a row (the most there are) with long captions: each caption stays left
    of the next one's start."""
    import pandas as pd
    from matplotlib.text import Text

    from devtms.report.figures.condition import SeedTrack, condition_figure
    from devtms.report.figures.geometry import Snapshot
    from devtms.report.snapshots import MAX_SNAPSHOTS

    rng = np.random.default_rng(1)
    steps = np.unique(np.geomspace(1, 3000, MAX_SNAPSHOTS).astype(int))
    caption = "k-gon 3+++→4++; loss drop; superposed features 3→4"
    track = SeedTrack(0, 0, pd.DataFrame({"step": steps, "loss": np.linspace(0.05, 0.01, len(steps))}),
                      None, pd.DataFrame({"step": steps, "k_gon": 4.0, "k_gon_label": "4++",
                                          "dims_per_feature": 0.5}),
                      pd.DataFrame(columns=["kind", "step", "size", "description"]),
                      [Snapshot(int(s), rng.normal(size=(m, 6)), rng.normal(size=6), caption)
                       for s in steps])
    fig = condition_figure("test", "relu", [track], 3000, m)
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    captions = sorted((t.get_window_extent(renderer) for t in fig.findobj(Text)
                       if t.get_visible() and t.get_text().startswith("step ")),
                      key=lambda box: box.x0)
    assert len(captions) == len(steps)
    for left, right in zip(captions, captions[1:], strict=False):
        assert left.x1 < right.x0, f"a caption ends at {left.x1:.0f} px, the next at {right.x0:.0f}"
