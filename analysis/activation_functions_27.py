"""Rares Baron, "Minor interpretability exploration #2: Extending superposition to different
activation functions" (2025): Lad & Kostolansky's activation-function study extended to all 27
variants (plus the controls `linear` and `solu_ln`), reproduced with devtms.

The same three experiments as analysis/activation_functions.py, for 29 activations:
  wtw/     n = 10, m = 5, importance 0.7^i, sparsities 0 ... 0.999: W^T W per activation and
           sparsity (AdamW 1e-3, batch 1024, 10,000 steps: the published setup)
  phase/   n = 2, m = 1 phase diagrams, an 8 x 8 grid (importance 10^[-1, 1] x density
           10^[-2, 0]), best of 2 initialisations per cell, 4,000 steps (default; --full:
           12 x 12, best of 3, 10,000 steps)
  sweep/   n = 200, m = 20, uniform importance: dimensions per feature against 1/(1-S) at 6
           densities, 2,000 steps at batch 512 (default; --full: 10 densities, 10,000 steps at
           batch 1024, several hours on 2 cores)

Figures (OUT/figures/, default OUT = runs/activation_functions_27): wtw_1..4.png (eight
activations per figure), phase_diagram.png, dims_per_feature.png (the 7 activations of Lad &
Kostolansky highlighted, the rest grey), dims_per_feature_grid.png, and the CSVs beside them.

Time on 2 shared CPU cores: default about 25 minutes; --small about a minute.
"""

from __future__ import annotations

from _common import LAD_KOSTOLANSKY
from activation_functions import run_study

from devtms.activations import ALL

SIZES = {
    "small": dict(wtw_steps=1000, wtw_batch=256, phase_grid=4, phase_steps=800, phase_seeds=1,
                  sweep_points=3, sweep_steps=200, sweep_batch=128, sweep_n=200, sweep_m=20),
    "default": dict(wtw_steps=10000, wtw_batch=1024, phase_grid=8, phase_steps=4000, phase_seeds=2,
                    sweep_points=6, sweep_steps=2000, sweep_batch=512, sweep_n=200, sweep_m=20),
    "full": dict(wtw_steps=10000, wtw_batch=1024, phase_grid=12, phase_steps=10000, phase_seeds=3,
                 sweep_points=10, sweep_steps=10000, sweep_batch=1024, sweep_n=200, sweep_m=20),
}


def main() -> None:
    run_study(__doc__, "activation_functions_27", ALL, SIZES, LAD_KOSTOLANSKY)


if __name__ == "__main__":
    main()
