#!/usr/bin/env bash
# (session 20) the gated norm's GPU tests at its new tile (2048 elements); the LM step at
# T = 4096 profiled (Transformer, pure recurrent ParaGRU); medium at T = 512; the fused
# kernels against their floors
set -uo pipefail
O=$OUT/c4; mkdir -p $O
export PYTHONUNBUFFERED=1
start=$(date +%s)
pack() { tar -czf $OUT/c4.tar.gz -C $OUT c4; }
date -u > $O/date.txt; nvidia-smi > $O/device.txt 2>&1
cp runs/s20_call4.sh $O/
PYTHONPATH=src timeout 100 python -m pytest -q -n 16 -p no:cacheprovider -rfE \
    tests/kernels/test_gated_norm.py tests/lm/test_gpu.py > $O/tests.log 2>&1
tail -3 $O/tests.log; pack
PYTHONPATH=src timeout 150 python benchmarks/gpu_lm_speed.py --out $O/lm4096 --seq-lens 4096 --compile graphs \
    --steps 10 --warmup 3 --models transformer,paragru:tuned --profile > $O/lm4096.log 2>&1
grep -v Warning $O/lm4096.log | grep -v "host:" | head -60; pack
PYTHONPATH=src timeout 150 python benchmarks/gpu_lm_speed.py --out $O/lm_medium --sizes medium --seq-lens 512 \
    --compile graphs --steps 10 --warmup 3 --models transformer,paragru > $O/lm_medium.log 2>&1
grep -v Warning $O/lm_medium.log | tail -4; pack
left=$(( 470 - ($(date +%s) - start) ))
echo "left for gpu_fused: $left s"
[ $left -gt 40 ] && PYTHONPATH=src timeout $left python benchmarks/gpu_fused.py --sections main \
    --json $O/gpu_fused.json > $O/gpu_fused.log 2>&1; tail -24 $O/gpu_fused.log
date -u >> $O/date.txt; pack
