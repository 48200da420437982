"""The reference engine: devinterp's own estimator, one checkpoint at a time.

devinterp's public `estimate_learning_coeff_with_summary` with its SGLD and MALA callback, the
same hyperparameters, a DataLoader over the same LLC dataset and the same init loss as the
batched engine. It exists for cross-checks (tests/test_llc.py, `devtms llc --engine devinterp`)
and is hundreds of times slower.
"""

from __future__ import annotations

import warnings

import torch

from devtms import model as tms
from devtms.llc.task import ChunkResult, ChunkTask, init_losses, make_result
from devtms.rng import derive_seed

Tensor = torch.Tensor


def devinterp_chunk(task: ChunkTask) -> ChunkResult:
    """Estimate every (instance, step) of the task with devinterp. No file I/O."""
    from devinterp.optim.sgld import SGLD
    from devinterp.slt.mala import MalaAcceptanceRate
    from devinterp.slt.sampler import estimate_learning_coeff_with_summary
    from torch.utils.data import DataLoader, TensorDataset

    p = task.params
    init = init_losses(task)
    I, S, m, n = task.W0.shape
    loss = torch.empty(I, S, p.chains, p.draws)
    mala = torch.full((I, S, p.chains), float("nan"))
    reported: dict[tuple[int, int], tuple[float, float, str]] = {}

    def evaluate(model: tms.TMS, batch: list[Tensor]) -> Tensor:
        return model.loss(batch[0])

    for i in range(I):
        dataset = TensorDataset(task.data[i])
        for s in range(S):
            model = tms.TMS(task.W0[i, s], task.b0[i, s], task.activations[i],
                            task.importance[i], task.reduction, task.bias)
            loader = DataLoader(dataset, batch_size=p.batch_size, shuffle=True)
            mask = None if task.bias else {"W": torch.ones(m, n), "b": torch.zeros(n)}
            callback = MalaAcceptanceRate(num_chains=p.chains, num_draws=p.draws,
                                          learning_rate=p.eps, nbeta=p.n_beta, device=task.device)
            # devinterp recomputes the init loss when it is falsy (exactly 0.0); the smallest
            # positive double changes no float32 number.
            init_loss = float(init[i, s]) or 5e-324
            key = derive_seed("llc-devinterp", task.instances[i], task.seeds[i], task.steps[s],
                              p.seed)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    res = estimate_learning_coeff_with_summary(
                        model, loader, evaluate=evaluate, sampling_method=SGLD,
                        optimizer_kwargs=dict(lr=p.eps, localization=p.gamma, nbeta=p.n_beta),
                        num_chains=p.chains, num_draws=p.draws, num_burnin_steps=p.burnin,
                        init_loss=init_loss, seed=key, device=task.device, verbose=False,
                        optimize_over_per_model_param=mask, callbacks=[callback])
            except RuntimeError as e:  # devinterp raises on a NaN loss
                loss[i, s] = float("nan")
                reported[(i, s)] = (float("nan"), float("nan"), f"devinterp: {e}")
                continue
            loss[i, s] = torch.as_tensor(res["loss/trace"]).float()
            reported[(i, s)] = (float(res["llc/mean"]), float(res["llc/std"]), "")
            # devinterp's trace leaves index 0 at 0 (it records from the second draw on)
            accept = torch.as_tensor(res["mala_accept/trace"]).float()[:, 1:]
            if accept.shape[1] > 0:
                mala[i, s] = accept.mean(1)
    return make_result(task, init, loss, mala, reported)
