#!/usr/bin/env bash
# (prepared in session 18, when no GPU was lent; tree: main after the gated-norm kernel)
# GPU tests of the kernels (ParaGRU's bf16 copy, the gated norm), layers, compile paths
# and LM; the gated norm against the plain ops eager and compiled (+ its launch sweep);
# the LM step at T = 512 profiled, Transformer and ParaGRU in one run (kinds incl. "norm")
set -uo pipefail
O=$OUT/c1; mkdir -p $O
export PYTHONUNBUFFERED=1
pack() { tar -czf $OUT/c1.tar.gz -C $OUT c1; }
date -u > $O/date.txt; nvidia-smi > $O/device.txt 2>&1
python -c "import torch, triton; print(torch.__version__, triton.__version__)" >> $O/device.txt
cp runs/s19_call1.sh $O/
PYTHONPATH=src timeout -s INT -k 10 180 python -m pytest -q -n 16 -p no:cacheprovider -rfE \
    tests/kernels tests/test_layers.py tests/test_compile.py tests/test_cuda.py tests/lm/test_gpu.py \
    tests/lm/test_generation.py > $O/tests.log 2>&1
tail -6 $O/tests.log; pack
PYTHONPATH=src timeout 150 python benchmarks/gpu_gated_norm.py --out $O/norm --sweep > $O/norm.log 2>&1
cat $O/norm.log | grep -v Warning; pack
PYTHONPATH=src timeout 200 python benchmarks/gpu_lm_speed.py --out $O/lm512 --seq-lens 512 --compile graphs \
    --steps 10 --warmup 3 --models transformer,paragru --profile > $O/lm512.log 2>&1
grep -h -A3 "small" $O/lm512.log | head -40; pack
# the Triton scan kernels (user cells of block structure) on this device, last: the
# H100 table of 2026-11-25 had no raw JSON and was dropped
PYTHONPATH=src timeout 60 python benchmarks/gpu_scan.py --json $O/gpu_scan.json > $O/gpu_scan.log 2>&1; tail -14 $O/gpu_scan.log; pack
date -u >> $O/date.txt; pack
