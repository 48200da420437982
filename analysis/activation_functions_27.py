"""Rares Baron, "Minor interpretability exploration #2: Extending superposition to different
activation functions" (2025): Lad & Kostolansky's activation-function study extended to all 27
variants (plus the controls `linear` and `solu_ln`), reproduced with devtms.

The same three experiments as analysis/activation_functions.py, for 29 activations:
  wtw/     n = 10, m = 5, importance 0.7^i, sparsities 0 ... 0.999: W^T W per activation and
           sparsity, AdamW 1e-3, batch 1024, 4,000 steps (default; --full: the published 10,000)
  phase/   n = 2, m = 1 phase diagrams, a 6 x 6 grid (importance 10^[-1, 1] x density
           10^[-2, 0]), one initialisation per cell, 2,000 steps (default; --full: 12 x 12, best
           of 3, 10,000 steps)
  sweep/   n = 200, m = 20, uniform importance: dimensions per feature against 1/(1-S) at 4
           densities, 500 steps at batch 256 (default; --full: 10 densities, 10,000 steps at
           batch 1024, several hours on 2 cores)

Figures (OUT/figures/, default OUT = runs/activation_functions_27): wtw_1..4.png (eight
activations per figure), phase_diagram.png, dims_per_feature.png (the 7 activations of Lad &
Kostolansky highlighted, the rest grey), dims_per_feature_grid.png, and the CSVs beside them.

Time on 2 CPU cores shared with other jobs (load average ~9): default 13 minutes (wtw 5.5,
phase 4, sweep 2); --smoke (nine activations) about 20 s. The default is a reduced size: the
phase diagrams and the sweep are not converged (see analysis/README.md).
"""

from __future__ import annotations

from _common import LAD_KOSTOLANSKY
from activation_functions import run_study

from devtms.activations import ALL

SIZES = {
    "smoke": dict(wtw_steps=200, wtw_batch=128, phase_grid=2, phase_steps=200, phase_seeds=1,
                  sweep_points=2, sweep_steps=20, sweep_batch=64, sweep_n=200, sweep_m=20,
                  log_every=20),
    "small": dict(wtw_steps=1000, wtw_batch=256, phase_grid=4, phase_steps=800, phase_seeds=1,
                  sweep_points=3, sweep_steps=200, sweep_batch=128, sweep_n=200, sweep_m=20),
    "default": dict(wtw_steps=4000, wtw_batch=1024, phase_grid=6, phase_steps=2000, phase_seeds=1,
                    sweep_points=4, sweep_steps=500, sweep_batch=256, sweep_n=200, sweep_m=20),
    "full": dict(wtw_steps=10000, wtw_batch=1024, phase_grid=12, phase_steps=10000, phase_seeds=3,
                 sweep_points=10, sweep_steps=10000, sweep_batch=1024, sweep_n=200, sweep_m=20),
}


# --smoke trains nine activations of every kind (elementwise, over features, diverging, the
# controls): enough for two W^T W figures, in a fraction of the time of all 29
SMOKE = ("relu", "sigmoid", "hardshrink", "exp", "softmax", "solu", "softmin", "linear", "solu_ln")


def main() -> None:
    run_study(__doc__, "activation_functions_27", ALL, SIZES, LAD_KOSTOLANSKY, SMOKE)


if __name__ == "__main__":
    main()
