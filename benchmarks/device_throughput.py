"""Training and LLC throughput on an accelerator against the CPU, in the same run.

    python benchmarks/device_throughput.py [--device cuda] [--steps 300]

Trains a shortened activations27 run (29 activations x 5 seeds) on the CPU, then times on
each device: the batched trainer (instance-steps/s, eager on both sides: torch.compile's
kernels differ by backend, C++ on the CPU and Triton on a GPU) and the batched LLC engine on
every instance at the run's last 4 checkpoints (chain-steps/s, the preset's chains). The CPU
side runs at devtms's default thread policy. Prints the ratio device / CPU for each.
`benchmarks/device_check.sh` runs it on a GPU machine; `--device cpu` checks the script.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import torch
from _shared import train_short

from devtms import llc
from devtms.store import RunDir
from devtms.threads import threads_for
from devtms.train import BatchTrainer


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def train_rate(run: RunDir, device: str, steps: int) -> float:
    config = dataclasses.replace(run.config, train=dataclasses.replace(run.config.train,
                                                                       compile="off"))
    trainer = BatchTrainer(config, run.instances, device)
    for _ in range(5):  # warm-up: allocator, kernels
        trainer.train_step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    sync(device)
    return len(run.instances) * steps / (time.perf_counter() - start)


def llc_rate(run: RunDir, device: str, draws: int) -> float:
    steps = ",".join(map(str, run.checkpoint_steps()[-4:]))
    request = llc.build_request(run, steps=steps, device=device, compile_setting="off",
                                overrides={"draws": draws, "burnin": 0})
    task = llc.RunInputs(run, request.instances, request.steps).task(
        request.instances, request.steps, request)
    llc.estimate_chunk(dataclasses.replace(task, params=dataclasses.replace(
        task.params, draws=10)))  # warm-up
    sync(device)
    start = time.perf_counter()
    llc.estimate_chunk(task)
    sync(device)
    return task.num_estimates * request.params.chains * draws / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--steps", type=int, default=300, help="training steps timed")
    ap.add_argument("--draws", type=int, default=300, help="SGLD steps per chain timed")
    args = ap.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("device_throughput: no CUDA device here")
        return
    with tempfile.TemporaryDirectory(prefix="device_bench_") as tmp:
        run = RunDir.open(train_short(Path(tmp) / "run", 1000, [0, 1, 2, 3, 4]))
        torch.set_num_threads(threads_for(len(run.instances) * run.config.train.batch_size
                                          * run.config.model.n_features))
        name = torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device
        print(f"{len(run.instances)} instances; device {name}; CPU at "
              f"{torch.get_num_threads()} torch thread(s); eager kernels on both sides")
        for what, rate, unit in (("training", train_rate, "instance-steps/s"),
                                 ("LLC", llc_rate, "chain-steps/s")):
            amount = args.steps if what == "training" else args.draws
            cpu, dev = rate(run, "cpu", amount), rate(run, args.device, amount)
            print(f"{what:8}: cpu {cpu:12,.0f}  {args.device} {dev:12,.0f} {unit}  "
                  f"ratio {dev / cpu:6.1f}x")


if __name__ == "__main__":
    main()
