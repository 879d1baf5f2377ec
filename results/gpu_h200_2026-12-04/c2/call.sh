#!/usr/bin/env bash
# fifteenth session, call 2 (tree: 10b1a9c + whole-block kernels and vector (c, h) pair
# loads; runs/undo.patch reverts the kernels to 10b1a9c): GPU tests of the fused kernels;
# shipped tiles, tree against base in turns (gpu_kernel_ab.sh); the tree's LM rows at
# T = 512 under CUDA graphs with pipelined timing and a cProfile of the host
set -uo pipefail
O=$OUT/c2; mkdir -p $O
export PYTHONUNBUFFERED=1
pack() { tar -czf $OUT/c2.tar.gz -C $OUT c2; }
date -u > $O/date.txt; nvidia-smi > $O/device.txt 2>&1
python -c "import torch, triton; print(torch.__version__, triton.__version__)" >> $O/device.txt
cp runs/s15_call2.sh runs/undo.patch $O/
PYTHONPATH=src timeout -s INT -k 10 70 python -m pytest -q -n 16 -p no:cacheprovider -rfE tests/kernels/test_fused_paragru.py \
  tests/kernels/test_fused_paralstm.py tests/kernels/test_head_major.py tests/kernels/test_kernel_writes.py > $O/tests.log 2>&1; tail -2 $O/tests.log; pack
RUN_SECONDS=65 TILES=gru_fwd=64/1/8/4+64/1/4/4,gru_bwd=64/1/4/4,lstm_fwd=64/1/4/4,lstm_bwd=64/1/4/3 \
  benchmarks/gpu_kernel_ab.sh $O/kab - runs/undo.patch > $O/kab.log 2>&1; tail -30 $O/kab.log; pack
for f in $O/kab/*.log; do echo "== $f"; grep "^| gru\|^| lstm" $f | cut -c1-150; done
PYTHONPATH=src timeout 170 python benchmarks/gpu_lm_speed.py --out $O/lm512 --seq-lens 512 --compile graphs --steps 10 --warmup 3 --host-profile 3 --models transformer,paragru,paralstm > $O/lm512.log 2>&1
grep -h "small" $O/lm512.log; pack
date -u >> $O/date.txt; pack
