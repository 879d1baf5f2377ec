#!/usr/bin/env bash
# thirteenth session, call 3: the write-analysis test on the GPU (call 2's one failure is
# unnamed: the run was cut), the conv backward A/B 2 (whole columns per thread, dz in x's
# dtype), packed documents (cu_seqlens) on the fused kernels, and a profiled compiled
# ParaGRU step with its Chrome trace (where the compiled step's host time goes)
set -uo pipefail
O=$OUT/c3; mkdir -p $O
export PYTHONUNBUFFERED=1
pack() { tar -czf $OUT/c3.tar.gz -C $OUT c3; }
date -u > $O/date.txt; nvidia-smi > $O/device.txt 2>&1
python -c "import torch, triton; print(torch.__version__, triton.__version__)" >> $O/device.txt
cp runs/s13_call3.sh runs/conv_ab2.py $O/
PYTHONPATH=src timeout 100 python -m pytest -q -p no:cacheprovider -rfE tests/kernels/test_kernel_writes.py > $O/writes_test.log 2>&1; tail -25 $O/writes_test.log; pack
PYTHONPATH=src timeout 130 python runs/conv_ab2.py $O/conv_ab2.json > $O/conv_ab2.log 2>&1; cat $O/conv_ab2.log | tail -10; pack
PYTHONPATH=src timeout 120 python benchmarks/gpu_packed.py --out $O/packed > $O/packed.log 2>&1; tail -20 $O/packed.log; pack
PYTHONPATH=src timeout 120 python benchmarks/gpu_lm_speed.py --out $O/trace --seq-lens 512 --compile on --steps 4 --warmup 3 --profile --save-traces --models paragru,transformer > $O/trace.log 2>&1
grep -h "small\|profile:" $O/trace.log; ls -la $O/trace; date -u >> $O/date.txt; pack
