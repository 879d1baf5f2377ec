#!/usr/bin/env bash
# sixteenth session, call 1 (tree: 8ee34b0): GPU tests on the in-kernel clip change; per-call
# cost (interleaved rounds); LM step at T = 512 under CUDA graphs, pipelined, 3 models
set -uo pipefail
O=$OUT/c1; mkdir -p $O
export PYTHONUNBUFFERED=1
pack() { tar -czf $OUT/c1.tar.gz -C $OUT c1; }
date -u > $O/date.txt; nvidia-smi > $O/device.txt 2>&1
python -c "import torch, triton; print(torch.__version__, triton.__version__)" >> $O/device.txt
git log --oneline -1 >> $O/device.txt 2>/dev/null
cp runs/s16_call1.sh $O/call.sh
PYTHONPATH=src timeout -s INT -k 10 150 python -m pytest -q -n 16 -p no:cacheprovider -rfE tests/kernels tests/test_layers.py tests/test_compile.py tests/test_cuda.py tests/test_reuse.py > $O/tests.log 2>&1; tail -4 $O/tests.log; pack
PYTHONPATH=src timeout 50 python benchmarks/gpu_overhead.py --out $O/overhead --sections per_call > $O/overhead.log 2>&1; grep "^| Para" $O/overhead.log; pack
PYTHONPATH=src timeout 280 python benchmarks/gpu_lm_speed.py --out $O/lm512 --seq-lens 512 --compile graphs --steps 10 --warmup 3 --models transformer,paragru,paralstm > $O/lm512.log 2>&1
grep -h "small" $O/lm512.log; pack
date -u >> $O/date.txt; pack
