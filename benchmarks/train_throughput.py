"""Training throughput: the batched trainer against a per-instance loop of nn.Module models.

Both train the instances of a preset (default: activations27, 145 instances) for the same
number of steps, with the same minibatches, batch size and optimizer.
The loop is what one would write without devtms: one `devtms.model.TMS` module and one
torch optimizer per instance, stepped one instance at a time. Prints instance-steps per
second for both and their ratio; also checks that both reach the same weights.

The two are timed in turns, `--repeats` times from the same starting weights, and the best
of each is reported: on a shared machine other processes slow whichever runs with them
(single timings of either varied by 1.5x here).

The batched trainer runs as `devtms train` would run the preset: compiled when train.compile
decides so (activations27: yes). The compile happens in an untimed warm-up and is printed
on its own; `--compile off` times the eager trainer instead.

    python benchmarks/train_throughput.py [--preset activations27] [--steps 300] [--threads 1 2]

With no --threads it times three rows in one run: 1 thread on both sides, one thread per
core on both sides, and the defaults a user gets (devtms's thread policy for the batched
trainer, devtms.threads; torch's default for the loop).
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from devtms import model as tms
from devtms.config import instance_table, load_config
from devtms.threads import threads_for, usable_cores
from devtms.train import BatchTrainer


def batched(trainer: BatchTrainer, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    return time.perf_counter() - start


def loop(trainer: BatchTrainer, W0: torch.Tensor, b0: torch.Tensor, steps: int):
    """The reference: one nn.Module and one optimizer per instance, same batches."""
    config, instances = trainer.config, trainer.instance_ids
    t = config.train
    names = [act.name for act, start, stop in trainer.groups for _ in range(start, stop)]
    batches = [trainer.batches.batch(step) for step in range(steps)]  # (I, B, n) each, untimed
    models = [
        tms.TMS(W0[i], b0[i], names[i], trainer.importance[i], config.model.reduction,
                bias=config.model.bias)
        for i in range(len(instances))
    ]
    optimizers = [
        torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=t.lr,
                        momentum=t.momentum)
        if t.optimizer == "sgd" else torch.optim.AdamW(m.parameters(), lr=t.lr)
        for m in models
    ]
    start = time.perf_counter()
    for i, (model, opt) in enumerate(zip(models, optimizers, strict=True)):
        for step in range(steps):
            loss = model.loss(batches[step][i])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    seconds = time.perf_counter() - start
    W = torch.stack([m.W.detach() for m in models])
    return seconds, W


def measure(config, instances, steps: int, repeats: int, threads: int, loop_threads: int):
    """Best of `repeats` rounds of both: (batched s, loop s, loop weights, trainer)."""
    trainer = BatchTrainer(config, instances)
    W0, b0 = trainer.W.detach().clone(), trainer.b.detach().clone()
    t_batched = t_loop = float("inf")
    for _ in range(repeats):
        torch.set_num_threads(threads)
        trainer = BatchTrainer(config, instances)
        t_batched = min(t_batched, batched(trainer, steps))
        torch.set_num_threads(loop_threads)
        seconds, W_loop = loop(trainer, W0, b0, steps)
        t_loop = min(t_loop, seconds)
    return t_batched, t_loop, W_loop, trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="activations27")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--threads", type=int, nargs="+",
                        help="torch thread counts to time (default: 1, every core, and the "
                             "default: devtms's policy for the trainer, torch's for the loop)")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds; the best counts")
    parser.add_argument("--compile", choices=("auto", "on", "off"), default=None,
                        help="override the preset's train.compile")
    args = parser.parse_args()

    config = load_config(args.preset)
    if args.compile is not None:
        config = dataclasses.replace(config, train=dataclasses.replace(config.train,
                                                                       compile=args.compile))
    instances = instance_table(config)
    n_inst = len(instances)
    torch_default = torch.get_num_threads()
    policy = threads_for(n_inst * config.train.batch_size * config.model.n_features)
    # (label, trainer threads, loop threads)
    rows = ([(f"{t} thread{'s' * (t > 1)}", t, t) for t in args.threads] if args.threads else
            [("1 thread", 1, 1), (f"{usable_cores()} threads (cores)", usable_cores(),
                                  usable_cores()),
             ("default", policy, torch_default)])

    # warm-up (torch.compile, allocator), then restart from the same weights
    torch.set_num_threads(rows[0][1])
    warmup = batched(BatchTrainer(config, instances), 10)
    trainer = BatchTrainer(config, instances)
    mode = (f"compiled (first steps incl. torch.compile: {warmup:.1f} s)"
            if trainer.compiled else "eager")
    print(f"preset {args.preset}: {n_inst} instances x {args.steps} steps, batch "
          f"{config.train.batch_size}, {config.train.optimizer}, best of {args.repeats} rounds; "
          f"batched trainer {mode}")
    print(f"default threads: devtms {policy} (devtms.threads policy), torch {torch_default} "
          "(the loop)")
    print(f"{'threads':24} {'batched inst-steps/s':>21} {'loop inst-steps/s':>18} {'ratio':>7}")
    for label, threads, loop_threads in rows:
        t_batched, t_loop, W_loop, trainer = measure(config, instances, args.steps, args.repeats,
                                                     threads, loop_threads)
        rate_b = n_inst * args.steps / t_batched
        rate_l = n_inst * args.steps / t_loop
        shown = label if threads == loop_threads else f"{label} ({threads} / {loop_threads})"
        print(f"{shown:24} {rate_b:21,.0f} {rate_l:18,.0f} {rate_b / rate_l:6.1f}x")
    finite = torch.isfinite(W_loop).flatten(1).all(1) & torch.isfinite(trainer.W).flatten(1).all(1)
    gap = (W_loop[finite] - trainer.W.detach()[finite]).abs().max().item()
    print("target: >= 30x at the default, and the batched trainer at the default at least as "
          "fast as at 1 thread")
    print(f"same weights: max |W_batched - W_loop| = {gap:.2e} over {int(finite.sum())} finite "
          "instances")


if __name__ == "__main__":
    main()
