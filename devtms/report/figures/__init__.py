"""The report's figures: pure functions from tidy tables and weight arrays to matplotlib Figures.

Nothing here reads or writes files (devtms.report does); every builder takes plain data and
returns a `matplotlib.figure.Figure`, so a figure can be rebuilt in a notebook from the run's
CSVs. No pyplot, no backend, no global rcParams: each builder draws inside
`rc_context(style.RC)` and `render.figure_bytes` saves inside it.

    style         RC, a colour and marker per activation (by family), seed line styles
    axes          step, loss, LLC and octave axes; marks for outliers and divergence
    layout        grids of fixed-size panels, titles, legends; Panel (one small multiple)
    grids         loss_grid, llc_grid: small multiples on common axes
    trajectories  llc_vs_loss: LLC against loss along training
    geometry      k-gon and W^T W pictures, final_geometry_grid; Snapshot
    condition     condition_figure: one condition in detail; SeedTrack
    compare       runs_final_dotplot: several runs side by side, one row per condition
    calibration   calibration_figure: the eps x gamma grid of `devtms calibrate`
    render        figure_bytes (PNG / PDF), render (a report figure: both, with its caption)

    >>> fig = grids.loss_grid(curves, panels, max_step, "loss")
    >>> png = render.figure_bytes(fig, "png", creator="notebook")
"""
