#!/usr/bin/env bash
# Everything this project checks and measures on one CUDA machine, in one go, from the
# source tree: the GPU tests, the fused-kernel and layer benchmarks, decode speed and
# memory. Each stage has a time limit and writes its log (and JSON) into OUTDIR, so a run
# cut short keeps what finished.
#
#   benchmarks/gpu_all.sh OUTDIR [test-seconds] [bench-seconds] [decode-seconds]
set -uo pipefail
out=${1:?usage: benchmarks/gpu_all.sh OUTDIR [test-s] [bench-s] [decode-s]}
mkdir -p "$out"
cd "$(dirname "$0")/.."
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv | tee "$out/device.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" \
    | tee -a "$out/device.txt"

# GPU tests (kernels at real sizes, the PyTorch path on CUDA, LM kernels and decoding);
# xdist workers compile Triton kernels in parallel.
workers=$(( $(nproc) > 12 ? 12 : $(nproc) ))
timeout "${2:-150}" python3 -m pytest -v -n "$workers" -p no:cacheprovider -rfE \
    tests/kernels tests/test_cuda.py tests/test_backends.py tests/lm/test_gpu.py \
    2>&1 | tee "$out/gpu_tests.log" | tail -25

timeout "${3:-200}" python3 benchmarks/gpu_fused.py --sections main,layers,narrow,baselines,sweep \
    --json "$out/gpu_fused.json" > "$out/gpu_fused.log" 2>&1
tail -60 "$out/gpu_fused.log"

for model in paragru paralstm transformer; do
    timeout "${4:-35}" python3 -m pararnn bench-decode --model "$model" --size small \
        --contexts 512,512,2048,8192 --new-tokens 64 --json "$out/decode_$model.json" \
        2>&1 | tee "$out/decode_$model.log" | tail -6
done
