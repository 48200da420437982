#!/usr/bin/env bash
# The GPU check, one call of at most 5 minutes on one GPU: the device-marked tests (the batched
# training and LLC on cuda agree with the CPU for every activation), then training and LLC
# throughput on cuda against the CPU in the same run. Without a GPU it says so in one line and
# exits 0, so it can run anywhere.
#
#     bash benchmarks/device_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "device_check: no GPU (torch.cuda.is_available() is False); nothing to check"
  exit 0
fi
python -c "import torch; print('device_check:', torch.cuda.get_device_name(), 'torch', torch.__version__)"
python -m pytest -q -m device tests/test_device.py
python benchmarks/device_throughput.py --device cuda
