"""Training throughput: the batched trainer against a per-instance loop of nn.Module models.

Both train the instances of a preset (default: activations27, 145 instances) for the same
number of steps, with the same minibatches, batch size, optimizer and torch thread count.
The loop is what one would write without devtms: one `devtms.model.TMS` module and one
torch optimizer per instance, stepped one instance at a time. Prints instance-steps per
second for both and their ratio; also checks that both reach the same weights.

The two are timed in turns, `--repeats` times from the same starting weights, and the best
of each is reported: on a shared machine other processes slow whichever runs with them
(single timings of either varied by 1.5x here).

The batched trainer runs as `devtms train` would run the preset: compiled when train.compile
decides so (activations27: yes). The compile happens in an untimed warm-up and is printed
on its own; `--compile off` times the eager trainer instead.

    python benchmarks/train_throughput.py [--preset activations27] [--steps 300] [--threads 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from devtms import model as tms
from devtms.config import instance_table, load_config
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="activations27")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds; the best counts")
    parser.add_argument("--compile", choices=("auto", "on", "off"), default=None,
                        help="override the preset's train.compile")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    config = load_config(args.preset)
    if args.compile is not None:
        config = dataclasses.replace(config, train=dataclasses.replace(config.train,
                                                                       compile=args.compile))
    instances = instance_table(config)
    trainer = BatchTrainer(config, instances)
    W0, b0 = trainer.W.detach().clone(), trainer.b.detach().clone()
    n_inst = len(instances)

    # warm-up (torch.compile, allocator), then restart from the same weights
    warmup = batched(trainer, 10)
    mode = (f"compiled (first steps incl. torch.compile: {warmup:.1f} s)"
            if trainer.compiled else "eager")
    t_batched = t_loop = float("inf")
    for _ in range(args.repeats):
        trainer = BatchTrainer(config, instances)
        t_batched = min(t_batched, batched(trainer, args.steps))
        seconds, W_loop = loop(trainer, W0, b0, args.steps)
        t_loop = min(t_loop, seconds)

    finite = torch.isfinite(W_loop).flatten(1).all(1) & torch.isfinite(trainer.W).flatten(1).all(1)
    gap = (W_loop[finite] - trainer.W.detach()[finite]).abs().max().item()
    rate_b = n_inst * args.steps / t_batched
    rate_l = n_inst * args.steps / t_loop
    print(f"preset {args.preset}: {n_inst} instances x {args.steps} steps, batch "
          f"{config.train.batch_size}, {config.train.optimizer}, torch threads {args.threads}, "
          f"best of {args.repeats} rounds")
    print(f"batched trainer: {mode}")
    print(f"batched : {rate_b:12,.0f} instance-steps/s  ({t_batched:.2f} s)")
    print(f"loop    : {rate_l:12,.0f} instance-steps/s  ({t_loop:.2f} s)")
    print(f"ratio   : {rate_b / rate_l:12.1f} x   (target >= 30x)")
    print(f"same weights: max |W_batched - W_loop| = {gap:.2e} over {int(finite.sum())} finite "
          "instances")


if __name__ == "__main__":
    main()
