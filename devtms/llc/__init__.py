"""The local learning coefficient at every checkpoint: a batched SGLD estimator and devinterp's.

    lambda_hat(w*) = n_beta * (mean over draws of L_batch(w_t) - L_N(w*)),   per chain

averaged over chains (docs/science.md, "The local learning coefficient"). One *estimate* is one
(instance, checkpoint step) under one *setting* (the engine and its hyperparameters); llc.csv
holds one row per estimate.

One job a module:

    params.py     LLCParams: a setting's resolved hyperparameters; SETTING_COLUMNS, its name
    active.py     the run's active setting (run.json) and choosing a setting's rows of llc.csv
    sgld.py       the SGLD update rule and the fused, batched TMS step (compiled or eager)
    batched.py    the batched engine: chunk -> activation groups -> tiles of chains
    mala.py       the exact engine: full-batch Metropolis-adjusted Langevin, no step-size bias
    check.py      the self-check: each setting against the exact engine on its own run
    reference.py  devinterp's estimator, for cross-checks
    engines.py    estimate_chunk(task): either engine behind one call
    task.py       ChunkTask / ChunkResult: what an engine gets and gives; shared result assembly
    health.py     LLC statistics, diagnostics and the state of every estimate
    convergence.py  R-hat and ESS of loss traces (ArviZ)
    curvature.py  the loss's gradient and curvature at w*: what explains a descent below it
    plan.py       chunk sizes and cuts, and whether the job compiles
    table.py      llc.csv and llc_traces/: their only reader and writer
    request.py    a validated `devtms llc` job and the tensors its chunks are cut from
    run.py        the driver: pending estimates -> executor -> llc.csv, run.json

    >>> request = build_request(RunDir.open("runs/quick"), steps="last")
    >>> run_llc(run, request)                        # writes llc.csv, llc_traces/, run.json
"""

from devtms.llc.active import (
    ActivationSettings,
    Setting,
    activate,
    active_setting,
    choose,
    config_settings,
    settings_present,
)
from devtms.llc.batched import NOISE_BLOCK, noise_block, run_chains, tile_shape
from devtms.llc.curvature import Slopes, gradient_shift, hessian_min, slopes
from devtms.llc.engines import ENGINES, estimate_chunk
from devtms.llc.health import summarize, which_point
from devtms.llc.params import SETTING_COLUMNS, LLCParams, llc_dataset_size, num_parameters
from devtms.llc.plan import auto_chunk_size, plan_chunks, use_compile
from devtms.llc.request import LLCRequest, RunInputs, build_request
from devtms.llc.run import LLCSummary, check_lines, default_job_complete, run_llc
from devtms.llc.table import (
    COLUMNS,
    CONTRACT_COLUMNS,
    IDENTITY,
    done_mask,
    done_pairs,
    load_traces,
    read_llc_table,
)
from devtms.llc.task import ChunkResult, ChunkTask

__all__ = [
    "COLUMNS", "CONTRACT_COLUMNS", "ENGINES", "IDENTITY", "NOISE_BLOCK", "SETTING_COLUMNS",
    "ActivationSettings", "ChunkResult", "ChunkTask", "LLCParams", "LLCRequest",
    "LLCSummary", "Slopes",
    "RunInputs", "Setting", "activate", "active_setting", "choose", "config_settings",
    "settings_present",
    "auto_chunk_size", "build_request", "check_lines", "default_job_complete", "done_mask", "done_pairs",
    "estimate_chunk", "gradient_shift", "hessian_min", "llc_dataset_size", "load_traces",
    "noise_block", "num_parameters",
    "plan_chunks", "read_llc_table", "run_chains", "run_llc", "slopes", "summarize", "tile_shape",
    "use_compile", "which_point",
]
