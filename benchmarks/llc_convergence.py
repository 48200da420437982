"""Do a preset's LLC defaults converge? Estimates at (burn-in, draws) against (2 burn-in, 2 draws).

As docs/science.md says of the LLC in practice, a preset's defaults should give an estimate that
no longer moves when burn-in and draws are doubled. This runs the batched engine twice on the
same estimates (every instance at a few checkpoint steps of a trained run) and prints, over the
estimates:

- the mean change (doubled - default), relative to the mean LLC: a systematic drift, which is
  what too short a burn-in or too few draws produce (SGLD chains start at w* and rise);
- the median absolute relative change;
- the fraction of estimates whose change is within 2 combined standard errors.

    python benchmarks/llc_convergence.py runs/chen2023 --steps 4
    python benchmarks/llc_convergence.py runs/quick --eps 3e-4 --gamma 300 --burnin 400
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--steps", type=int, default=4, help="checkpoint steps (log-spread, last one "
                    "included)")
    ap.add_argument("--instances", default=None)
    for name in ("eps", "gamma", "n_beta"):
        ap.add_argument(f"--{name.replace('_', '-')}", type=float)
    for name in ("chains", "draws", "burnin", "batch_size"):
        ap.add_argument(f"--{name.replace('_', '-')}", type=int)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")
    torch.set_num_threads(args.threads)

    from devtms import llc
    from devtms.store import RunDir

    run = RunDir.open(args.run)
    available = run.checkpoint_steps()
    picks = np.unique(np.geomspace(max(available[1], 1), available[-1], args.steps).round())
    steps = sorted({min(available, key=lambda s, p=p: abs(s - p)) for p in picks})
    overrides = {k: getattr(args, k) for k in ("eps", "gamma", "n_beta", "chains", "draws",
                                                 "burnin", "batch_size") if getattr(args, k)}
    request = llc.build_request(run, instances=args.instances, steps=",".join(map(str, steps)),
                                overrides=overrides, compile_setting="off")
    inputs = llc.RunInputs(run, request.instances, request.steps)
    task = inputs.task(request.instances, request.steps, request)
    p = task.params
    doubled = dataclasses.replace(task, params=dataclasses.replace(p, burnin=2 * p.burnin,
                                                                   draws=2 * p.draws))
    t = time.perf_counter()
    a = pd.DataFrame(llc.estimate_chunk(task).rows).set_index(["instance", "step"])
    b = pd.DataFrame(llc.estimate_chunk(doubled).rows).set_index(["instance", "step"])
    ok = a["healthy"] & b["healthy"]
    change = (b["llc_mean"] - a["llc_mean"])[ok]
    se = np.sqrt(a["llc_sem"] ** 2 + b["llc_sem"] ** 2)[ok]
    rel = (change.abs() / a["llc_mean"][ok].abs().clip(lower=1e-3))
    print(f"{run.config.name}: {len(a)} estimates ({len(request.instances)} instances x steps "
          f"{steps}), eps={p.eps:g} gamma={p.gamma:g} n_beta={p.n_beta:.4g} {p.chains} chains, "
          f"burn-in/draws {p.burnin}/{p.draws} vs {2 * p.burnin}/{2 * p.draws} "
          f"({time.perf_counter() - t:.0f} s)")
    print(f"  healthy in both: {int(ok.sum())} of {len(a)}; unhealthy reasons: "
          f"{sorted(set(a['reason'][~a['healthy']]) | set(b['reason'][~b['healthy']]))[:3]}")
    print(f"  mean llc {a['llc_mean'][ok].mean():.4g} -> {b['llc_mean'][ok].mean():.4g}: "
          f"systematic change {change.mean() / a['llc_mean'][ok].mean():+.1%}")
    print(f"  median |relative change| {rel.median():.1%}; within 2 combined sem: "
          f"{(change.abs() <= 2 * se).mean():.0%}; mean MALA acceptance "
          f"{a['mala_acceptance'][ok].mean():.2f}")


if __name__ == "__main__":
    main()
