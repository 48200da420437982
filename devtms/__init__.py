"""devtms: developmental interpretability for toy models of superposition.

Train batches of TMS instances across activations, sparsities and seeds; estimate the
local learning coefficient at every checkpoint with batched SGLD; analyze superposition
geometry and phase transitions; report. See README.md.
"""

__version__ = "0.1.0"
