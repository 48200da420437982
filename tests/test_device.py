"""The batched programs on an accelerator agree with the CPU, for every activation.

Marked `device`: they run where torch sees a CUDA device (`benchmarks/device_check.sh` runs
them on a GPU machine) and are skipped elsewhere. DEVTMS_TEST_DEVICE names the device to
compare against the CPU (default cuda); `DEVTMS_TEST_DEVICE=cpu` runs the same code paths on
the CPU against itself, which is how these tests are checked on machines without a GPU.

Every random stream devtms draws is made on the CPU (devtms.rng) and moved to the device, so
both sides see the same minibatches and noise; what differs is the kernels' float rounding.
"""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch

from devtms import llc
from devtms.activation_properties import ALL
from devtms.config import instance_table
from devtms.store import RunDir
from devtms.train import BatchTrainer

from .conftest import tiny_config, trained_run

DEVICE = os.environ.get("DEVTMS_TEST_DEVICE", "cuda")
pytestmark = [
    pytest.mark.device,
    pytest.mark.skipif(DEVICE.startswith("cuda") and not torch.cuda.is_available(),
                       reason="no CUDA device (set DEVTMS_TEST_DEVICE=cpu to run on the CPU)"),
]
EVERY = tiny_config(name="device", model={"activations": "all"},
                    train={"steps": 200, "seeds": [0]}, checkpoints={"linear_every": None},
                    llc={"chains": 4, "draws": 100, "burnin": 50})


def test_training_on_the_device_agrees_with_the_cpu_for_every_activation():
    config = EVERY.config
    instances = instance_table(config)
    on = {device: BatchTrainer(config, instances, device) for device in ("cpu", DEVICE)}
    for trainer in on.values():
        for _ in range(config.train.steps):
            trainer.train_step()
    W_cpu, W_dev = on["cpu"].W.detach(), on[DEVICE].W.detach().cpu()
    names = list(instances["activation"])
    assert sorted(names) == sorted(ALL)
    for i, name in enumerate(names):
        if torch.isfinite(W_cpu[i]).all():
            torch.testing.assert_close(W_dev[i], W_cpu[i], rtol=1e-4, atol=1e-5, msg=name)


def test_the_batched_llc_on_the_device_agrees_with_the_cpu_for_every_activation(tmp_path):
    run = RunDir.open(trained_run(tmp_path, EVERY))
    last = run.checkpoint_steps()[-1]
    request = llc.build_request(run, steps=str(last), compile_setting="off")
    inputs = llc.RunInputs(run, request.instances, request.steps)
    rows = {}
    for device in ("cpu", DEVICE):
        task = inputs.task(request.instances, request.steps,
                           dataclasses.replace(request, device=device))
        rows[device] = {row["instance"]: row for row in llc.estimate_chunk(task).rows}
    names = dict(zip(run.instances["instance"], run.instances["activation"], strict=True))
    for instance, cpu in rows["cpu"].items():
        dev = rows[DEVICE][instance]
        assert dev["state"] == cpu["state"], names[instance]
        assert dev["llc_mean"] == pytest.approx(cpu["llc_mean"], rel=1e-3, abs=1e-3), \
            names[instance]
