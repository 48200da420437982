"""LLC throughput: the batched engine against devinterp's estimator, on the same estimates.

    python benchmarks/llc_throughput.py                 # trains a shortened activations27 run
    python benchmarks/llc_throughput.py --run runs/activations27 --threads 2

The estimate set: every instance of a shortened activations27 run (29 activations x 5 seeds,
8 features, 2 hidden, 2000 training steps) at each of its 50 distinct checkpoints (58 log
points; the preset's own 50 log points over 20,000 steps are only 47 distinct steps), 8 chains
x 500 draws (+ 100 burn-in) each. The batched engine runs all of them (compiled, the default
for a job this size); devinterp runs one checkpoint at a time with a Python loop over chains
and steps, so it is timed on a sample of the same estimates: its cost per chain-step is the
same for every estimate (tiny model, fixed batch size).
Both run in this process with the same number of torch threads. The two are timed in turns,
several times, and the best of each is reported, because other processes on a shared machine
slow whichever happens to run with them.

Machine limit: the model's useful work per chain-step is about 10 B m n flops (forward
h = W x and W^T h, backward q = W g and dW = h g^T + q x^T). A plain batched matmul of the
forward's shapes, (tile instances, B, n) @ (n, m x tile chains), measured here gives the
flop rate this machine reaches on such skinny products; chain-steps/s at that rate is the
limit the batched engine is compared with.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _shared import train_short


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def matmul_rate(instances: int, B: int, n: int, cols: int, repeats: int = 30) -> float:
    """Best flop rate of torch.bmm on (instances, B, n) @ (instances, n, cols)."""
    a, b = torch.rand(instances, B, n), torch.rand(instances, n, cols)
    for _ in range(3):
        torch.bmm(a, b)
    best = math.inf
    for _ in range(7):
        t = time.perf_counter()
        for _ in range(repeats):
            torch.bmm(a, b)
        best = min(best, (time.perf_counter() - t) / repeats)
    return 2.0 * instances * B * n * cols / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, help="an activations27 run (default: train a short one)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads for both engines (default 1: devinterp's tiny ops "
                         "cannot use more, and both suffer from oversubscription on a busy box)")
    ap.add_argument("--steps", type=int, default=50,
                    help="checkpoint steps per instance (default 50; fewer if the run has fewer "
                         "distinct checkpoints)")
    ap.add_argument("--seeds", type=int, default=5,
                    help="seeds of the shortened run (default 5, the activations27 preset's)")
    ap.add_argument("--chains", type=int, default=8)
    ap.add_argument("--draws", type=int, default=500)
    ap.add_argument("--burnin", type=int, default=100)
    ap.add_argument("--sample", type=int, default=4, help="estimates devinterp is timed on")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--compile", choices=("on", "off"), default="on")
    ap.add_argument("--precond", choices=("none", "rmsprop", "curvature"), default="none",
                    help="the batched engine's SGLD preconditioner (devinterp's is always none; "
                         "curvature's time includes each checkpoint's Hessian)")
    args = ap.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")
    torch.set_num_threads(args.threads)

    from devtms import llc
    from devtms.store import RunDir

    tmp = None
    if args.run is None:
        tmp = tempfile.TemporaryDirectory(prefix="llc_bench_")
        args.run = train_short(Path(tmp.name) / "run", steps=2000,
                               seeds=list(range(args.seeds)), log_points=58)
    run = RunDir.open(args.run)
    cfg = run.config
    all_steps = run.checkpoint_steps()
    picks = np.linspace(0, len(all_steps) - 1, args.steps).round().astype(int)
    steps = sorted({all_steps[k] for k in picks})
    hp = dict(chains=args.chains, draws=args.draws, burnin=args.burnin)
    request = llc.build_request(run, steps=",".join(map(str, steps)),
                                overrides={**hp, "precond": args.precond},
                                compile_setting=args.compile)
    inputs = llc.RunInputs(run, request.instances, request.steps)
    full = inputs.task(request.instances, request.steps, request)
    n_est = full.num_estimates
    chain_steps = n_est * args.chains * (args.burnin + args.draws)
    B, m, n = request.params.batch_size, cfg.model.n_hidden, cfg.model.n_features
    print(f"estimates: {len(request.instances)} instances x {len(steps)} checkpoints = {n_est}, "
          f"{args.chains} chains x ({args.burnin} burn-in + {args.draws} draws) = "
          f"{chain_steps:,} chain-steps; B={B}, n={n}, m={m}; torch threads: {args.threads}; "
          f"compiled: {request.compiled}; precond: {args.precond}")

    # one-time compile (torch caches kernels on disk; a second run of this script skips most)
    warm = dataclasses.replace(full, steps=steps[:1], W0=full.W0[:, :1], b0=full.b0[:, :1],
                               params=dataclasses.replace(full.params, draws=2, burnin=0))
    _, compile_wall, _ = timed(lambda: llc.estimate_chunk(warm))
    print(f"warm-up (when compiled: one loss-and-gradient kernel per activation and the update "
          f"kernel they share, from torch's disk cache where it holds them): {compile_wall:.1f} s")

    # devinterp's sample: estimates spread over the activations, same hyperparameters
    k = np.linspace(0, len(request.instances) - 1, args.sample).round().astype(int)
    sample_instances = sorted({request.instances[j] for j in k})
    sample_req = dataclasses.replace(request, engine="devinterp",
                                     params=dataclasses.replace(request.params, precond="none"))
    sample = inputs.task(sample_instances, steps[-1:], sample_req)
    sample_steps = sample.num_estimates * args.chains * (args.burnin + args.draws)

    di_best = bt_best = math.inf
    di_cpu = bt_cpu = math.inf
    batched = di = None
    for r in range(args.repeats):
        di, wall, cpu = timed(lambda: llc.estimate_chunk(sample))
        di_best, di_cpu = min(di_best, wall), min(di_cpu, cpu)
        batched, wall, cpu = timed(lambda: llc.estimate_chunk(full))
        bt_best, bt_cpu = min(bt_best, wall), min(bt_cpu, cpu)
        print(f"  round {r + 1}: devinterp {sample_steps / di_best:,.0f}, batched "
              f"{chain_steps / bt_best:,.0f} chain-steps/s (best so far)")
    di_rate, bt_rate = sample_steps / di_best, chain_steps / bt_best
    print(f"\ndevinterp (timed on {sample.num_estimates} of the {n_est} estimates, "
          f"{sample_steps:,} chain-steps): {di_rate:,.0f} chain-steps/s "
          f"({sample_steps / di_cpu:,.0f} per CPU-second)")
    print(f"batched   (all {n_est} estimates): {bt_rate:,.0f} chain-steps/s "
          f"({chain_steps / bt_cpu:,.0f} per CPU-second)")
    print(f"ratio batched / devinterp: {bt_rate / di_rate:,.0f}x wall, "
          f"{(chain_steps / bt_cpu) / (sample_steps / di_cpu):,.0f}x per CPU-second; "
          f"compiling took {compile_wall:.1f} s before it")

    i_tile, s_tile = llc.tile_shape(len(request.instances), len(steps), args.chains,
                                    request.compiled)
    rate = matmul_rate(i_tile, B, n, m * s_tile * args.chains)
    flops = 10 * B * m * n
    limit = rate / flops
    print(f"machine limit: torch.bmm ({i_tile}, {B}, {n}) @ ({n}, {m * s_tile * args.chains}) runs "
          f"at {rate / 1e9:.1f} GFLOP/s; at {flops} flops per chain-step that is "
          f"{limit:,.0f} chain-steps/s; the batched engine reaches {bt_rate / limit:.1%} of it")

    # the sampled estimates from both engines, side by side (a sanity check, not a test)
    rows = {(r["instance"], r["step"]): r for r in batched.rows}
    print("\ninstance step    batched llc (sem)     devinterp llc (sem)")
    for r in di.rows:
        b = rows[(r["instance"], r["step"])]
        print(f"{r['instance']:8d} {r['step']:5d}   {b['llc_mean']:8.3f} ({b['llc_sem']:.3f})"
              f"      {r['llc_mean']:8.3f} ({r['llc_sem']:.3f})")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
