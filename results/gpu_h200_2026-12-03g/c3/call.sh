#!/usr/bin/env bash
# fourteenth session, call 3 (tree: pipelined walks with the swept tiles; runs/base =
# 0f20e52): GPU tests of the fused kernels at the final tiles, the LM rows at T = 512 under
# CUDA graphs for the tree and the base in one call, the shipped kernels base/tree (bf16)
set -uo pipefail
O=$OUT/c3; mkdir -p $O
export PYTHONUNBUFFERED=1
pack() { tar -czf $OUT/c3.tar.gz -C $OUT c3; }
date -u > $O/date.txt; nvidia-smi > $O/device.txt 2>&1
python -c "import torch, triton; print(torch.__version__, triton.__version__)" >> $O/device.txt
cp runs/s14_call3.sh $O/call.sh
PYTHONPATH=src timeout 80 python -m pytest -q -n 16 -p no:cacheprovider -rfE tests/kernels/test_fused_paragru.py \
  tests/kernels/test_fused_paralstm.py tests/kernels/test_head_major.py > $O/tests.log 2>&1; tail -1 $O/tests.log; pack
PYTHONPATH=src timeout 140 python benchmarks/gpu_lm_speed.py --out $O/lm512_tree --seq-lens 512 --compile graphs --steps 10 --warmup 3 --models transformer,paragru,paralstm > $O/lm512_tree.log 2>&1
grep -h "small" $O/lm512_tree.log; pack
(cd runs/base && PYTHONPATH=src timeout 110 python benchmarks/gpu_lm_speed.py --out $O/lm512_base --seq-lens 512 --compile graphs --steps 10 --warmup 3 --models paragru,paralstm > $O/lm512_base.log 2>&1)
grep -h "small" $O/lm512_base.log; pack
B16="--sweep --shipped-tiles --segments shipped --bf16 --shapes 32x512x1024,4x4096x1024,16x512x512"
(PYTHONPATH=src timeout 45 python benchmarks/gpu_profile.py $B16 > $O/ab_bf16_tree.log 2>&1)
(cd runs/base && PYTHONPATH=src timeout 45 python benchmarks/gpu_profile.py $B16 > $O/ab_bf16_base.log 2>&1)
paste -d'#' <(grep "^| gru\|^| lstm" $O/ab_bf16_base.log) <(grep "^| gru\|^| lstm" $O/ab_bf16_tree.log) | awk -F'#' '{print $1 "  ->  " $2}' | cut -c1-200
date -u >> $O/date.txt; pack
