#!/usr/bin/env bash
# What a benchmark ran on, printed and written to FILE: the GPU (name, driver, memory,
# SM clock; nothing on a machine without nvidia-smi) and the torch/triton versions.
# The GPU scripts call it as `benchmarks/device_info.sh OUTDIR/device.txt`.
set -uo pipefail
file=${1:?usage: benchmarks/device_info.sh FILE}
{
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv 2>/dev/null
    python3 -c "import importlib.util, torch
triton = importlib.util.find_spec('triton') and __import__('triton')
print('torch', torch.__version__, 'triton', triton.__version__ if triton else 'absent')"
} | tee "$file"
