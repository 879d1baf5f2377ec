#!/usr/bin/env bash
# fifteenth session, call 1 (tree 10b1a9c): GPU tests of the commits since the last GPU test
# run (declared kernels, packed reuse), profiled LM steps under CUDA graphs at T = 512 and
# 4096 (where the remaining gap goes), packed documents, per-call cost
set -uo pipefail
O=$OUT/c1; mkdir -p $O
export PYTHONUNBUFFERED=1
pack() { tar -czf $OUT/c1.tar.gz -C $OUT c1; }
date -u > $O/date.txt; nvidia-smi > $O/device.txt 2>&1
python -c "import torch, triton; print(torch.__version__, triton.__version__)" >> $O/device.txt
cp runs/s15_call1.sh $O/call.sh; git log -1 --format=%H > $O/commit.txt 2>/dev/null
PYTHONPATH=src timeout -s INT -k 10 150 python -m pytest -q -n 16 -p no:cacheprovider -rfE tests/kernels tests/test_layers.py tests/test_compile.py tests/test_cuda.py tests/test_reuse.py > $O/tests.log 2>&1; tail -3 $O/tests.log; pack
PYTHONPATH=src timeout 150 python benchmarks/gpu_lm_speed.py --out $O/lm512 --seq-lens 512 --compile graphs --steps 10 --warmup 3 --profile --models transformer,paragru,paralstm > $O/lm512.log 2>&1
grep -h "small\|GEMM\|solve" $O/lm512.log | head -20; pack
PYTHONPATH=src timeout 130 python benchmarks/gpu_lm_speed.py --out $O/lm4096 --seq-lens 4096 --compile graphs --steps 10 --warmup 3 --profile --models transformer,paragru,paralstm > $O/lm4096.log 2>&1
grep -h "small" $O/lm4096.log | head -20; pack
PYTHONPATH=src timeout 50 python benchmarks/gpu_packed.py --out $O/packed > $O/packed.log 2>&1; tail -12 $O/packed.log; pack
PYTHONPATH=src timeout 40 python benchmarks/gpu_overhead.py --out $O/overhead --sections per_call > $O/overhead.log 2>&1; tail -8 $O/overhead.log
date -u >> $O/date.txt; pack
