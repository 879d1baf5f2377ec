#!/usr/bin/env bash
# thirteenth session, call 4 (final tree): GPU tests of the changed kernels (head_offsets,
# the conv backward's whole-column tile) and the write analysis, the LM rows at T = 512
# under CUDA graphs with the Transformer
set -uo pipefail
O=$OUT/c4; mkdir -p $O
export PYTHONUNBUFFERED=1
pack() { tar -czf $OUT/c4.tar.gz -C $OUT c4; }
date -u > $O/date.txt; nvidia-smi > $O/device.txt 2>&1
python -c "import torch, triton; print(torch.__version__, triton.__version__)" >> $O/device.txt
cp runs/s13_call4.sh $O/call.sh
PYTHONPATH=src timeout 120 python -m pytest -q -n 16 -p no:cacheprovider -rfE tests/kernels/test_kernel_writes.py \
  tests/kernels/test_causal_conv.py tests/kernels/test_head_major.py tests/kernels/test_fused_compile.py \
  tests/kernels/test_fused_paragru.py tests/kernels/test_fused_paralstm.py > $O/tests.log 2>&1; grep -v "Benchmark\|warner" $O/tests.log | tail -8; pack
PYTHONPATH=src timeout 130 python benchmarks/gpu_lm_speed.py --out $O/lm512g --seq-lens 512 --compile graphs --steps 10 --warmup 3 --models transformer,paragru,paralstm > $O/lm512g.log 2>&1
grep -h "small" $O/lm512g.log; pack
date -u >> $O/date.txt; pack
